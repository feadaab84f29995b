// Build information, baked in by build.ts (`--define`), printed by `--version[-json]` and returned
// by the `version` RPC. Upstream's rustc/cargo fields carry the Bun runtime and package manager.

import pkg from "../package.json" with { type: "json" };
import { EncodedResults, replyWith } from "./rpc/results.ts";
import { type FrameReader, StructRef } from "./rpc/wire.ts";

export interface BuildInfo {
  version: string;
  tag: string;
  commit: string;
  buildDate: string;
  target: string;
  rustVersion: string;
  cargoVersion: string;
  cargoTree: string;
}

declare const CONMON_BUILD_INFO: Omit<BuildInfo, "version" | "rustVersion"> | undefined;

function targetTriple(): string {
  const arch = process.arch === "arm64" ? "aarch64" : process.arch === "x64" ? "x86_64" : process.arch;
  return `${arch}-unknown-linux-gnu`;
}

/** Dependencies as a `cargo tree`-like listing (only sent when verbose). */
export function dependencyTree(): string {
  const deps = Object.entries(pkg.dependencies as Record<string, string>);
  const lines = deps.map(([name, version], i) => `${i === deps.length - 1 ? "└──" : "├──"} ${name} v${version}`);
  return [`${pkg.name} v${pkg.version}`, ...lines].join("\n");
}

function gitOutput(args: string[]): string {
  try {
    const result = Bun.spawnSync(["git", ...args], { cwd: import.meta.dir, stderr: "ignore" });
    return result.success ? result.stdout.toString().trim() : "";
  } catch {
    return "";
  }
}

let cached: BuildInfo | undefined;

export function buildInfo(): BuildInfo {
  if (cached) return cached;
  const baked = typeof CONMON_BUILD_INFO === "undefined" ? undefined : CONMON_BUILD_INFO;
  // Running from source (tests of pure modules, `bun src/main.ts`): ask git now.
  const info = baked ?? {
    tag: gitOutput(["describe", "--tags", "--always", "--dirty"]),
    commit: gitOutput(["rev-parse", "HEAD"]) || "unknown",
    buildDate: new Date().toISOString().replace("T", " ").slice(0, 19),
    target: targetTriple(),
    cargoVersion: `bun install ${Bun.version}`,
    cargoTree: dependencyTree(),
  };
  cached = { version: pkg.version, rustVersion: `bun ${Bun.version} (${Bun.revision.slice(0, 8)})`, ...info };
  return cached;
}

/** Text form of `--version`, one item per line as upstream. */
export function versionText(full: boolean, v: BuildInfo = buildInfo()): string {
  const lines = [
    `version: ${v.version}`,
    `tag: ${v.tag || "none"}`,
    `commit: ${v.commit}`,
    `build: ${v.buildDate}`,
    `target: ${v.target}`,
    v.rustVersion,
    v.cargoVersion,
  ];
  if (full) lines.push("", `cargo tree: ${v.cargoTree}`);
  return lines.join("\n");
}

/** JSON form of `--version-json`, keys in upstream's (serde) order. */
export function versionJson(full: boolean): string {
  const v = buildInfo();
  return JSON.stringify({
    verbose: full,
    version: v.version,
    tag: v.tag,
    commit: v.commit,
    build_date: v.buildDate,
    target: v.target,
    rust_version: v.rustVersion,
    cargo_version: v.cargoVersion,
    cargo_tree: full ? v.cargoTree : "",
  });
}

/**
 * The `version` RPC (ordinal 0): `processId` is the long-lived server's pid. Nothing in the answer
 * changes during the process's life, so each variant (verbose or not) is encoded on its first
 * call and those bytes are sent again afterwards (version is what health checks call).
 */
export function handleVersion(params: VersionParams, results: any): void {
  const verbose: boolean = params.request.verbose;
  const cached = versionReplies[verbose ? 1 : 0];
  if (cached) {
    replyWith(results, cached);
    return;
  }
  fillVersion(results._initResponse(), verbose);
  versionReplies[verbose ? 1 : 0] = EncodedResults.capture(results);
}

/** What handleVersion reads of its params; capnp-es's VersionParams struct has the same shape. */
export interface VersionParams {
  readonly request: { readonly verbose: boolean };
}

const PLAIN_PARAMS: VersionParams = Object.freeze({ request: Object.freeze({ verbose: false }) });
const VERBOSE_PARAMS: VersionParams = Object.freeze({ request: Object.freeze({ verbose: true }) });

/**
 * Reads version's params (`request: VersionRequest`, pointer 0; `verbose`, bit 0 of the
 * request) from the received frame. Health checks call version over and over; this spares each
 * call a copy of the frame and the capnp-es objects around it. Null pointers read as defaults.
 */
export function readVersionParams(reader: FrameReader, seg: number, at: number): VersionParams {
  if (!reader.readWrapped(seg, at, paramsRef, requestRef)) return PLAIN_PARAMS;
  return reader.bit(requestRef, 0) ? VERBOSE_PARAMS : PLAIN_PARAMS;
}

// Scratch: reading is synchronous and never re-entered.
const paramsRef = new StructRef();
const requestRef = new StructRef();

/** Encoded version results: [plain, verbose]. */
const versionReplies: [EncodedResults | undefined, EncodedResults | undefined] = [undefined, undefined];

function fillVersion(response: any, verbose: boolean): void {
  const v = buildInfo();
  response.processId = process.pid;
  response.version = v.version;
  response.tag = v.tag;
  response.commit = v.commit;
  response.buildDate = v.buildDate;
  response.target = v.target;
  response.rustVersion = v.rustVersion;
  response.cargoVersion = v.cargoVersion;
  response.cargoTree = verbose ? v.cargoTree : "";
}
