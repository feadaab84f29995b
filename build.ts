// Builds the single-file `conmonrs` executable with `bun build --compile`.
//   bun build.ts            → dist/conmonrs for this machine
//   bun build.ts --release  → dist/conmonrs-<version>-linux-{amd64,arm64} and dist/SHA256SUMS
// Build information (version, git tag and commit, date, target) is baked in with --define.

import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import pkg from "./package.json" with { type: "json" };
import { dependencyTree } from "./src/version.ts";

const root = import.meta.dir;
const dist = join(root, "dist");

function git(...args: string[]): string {
  const result = Bun.spawnSync(["git", ...args], { cwd: root, stderr: "ignore" });
  return result.success ? result.stdout.toString().trim() : "";
}

const TARGETS = {
  amd64: { bun: "bun-linux-x64", triple: "x86_64-unknown-linux-gnu" },
  arm64: { bun: "bun-linux-arm64", triple: "aarch64-unknown-linux-gnu" },
} as const;
type Arch = keyof typeof TARGETS;

function hostArch(): Arch {
  return process.arch === "arm64" ? "arm64" : "amd64";
}

function compile(arch: Arch, outfile: string): void {
  const info = {
    tag: git("describe", "--tags", "--always", "--dirty"),
    commit: git("rev-parse", "HEAD") || "unknown",
    buildDate: new Date().toISOString().replace("T", " ").slice(0, 19),
    target: TARGETS[arch].triple,
    cargoVersion: `bun install ${Bun.version}`,
    cargoTree: dependencyTree(),
  };
  const argv = [
    process.execPath, "build", join(root, "src/main.ts"),
    "--compile", `--target=${TARGETS[arch].bun}`,
    // Split chunks: what only later calls need (containers, exec, streaming, the client CLI) is
    // loaded from the executable on first use instead of being declared at start-up. That takes
    // about 0.8 MB off an idle monitor's RssAnon (docs/performance.md). Splitting needs ESM.
    "--minify", "--bytecode", "--format=esm", "--splitting",
    // A monitor runs most of its code a handful of times per container (create, exit, an exec
    // now and then). At the normal tier-up thresholds the JIT compiled much of it anyway, ~1.8 ms
    // of CPU per container on the cores the runtime needs; 16× the thresholds cut that to 0.3 ms
    // with no change measured in create or exec latency, log throughput or RPC rates, and
    // ~0.2 MB less idle memory (docs/performance.md). Hot loops still tier up within milliseconds.
    "--compile-jit-policy=16",
    "--define", `CONMON_BUILD_INFO=${JSON.stringify(info)}`,
    "--outfile", outfile,
  ];
  const result = Bun.spawnSync(argv, { cwd: root, stdout: "inherit", stderr: "inherit" });
  if (!result.success) throw new Error(`bun build for ${arch} failed with status ${result.exitCode}`);
}

mkdirSync(dist, { recursive: true });
if (process.argv.includes("--release")) {
  const sums: string[] = [];
  for (const arch of Object.keys(TARGETS) as Arch[]) {
    const name = `conmonrs-${pkg.version}-linux-${arch}`;
    compile(arch, join(dist, name));
    const digest = new Bun.CryptoHasher("sha256").update(readFileSync(join(dist, name))).digest("hex");
    sums.push(`${digest}  ${name}`);
  }
  writeFileSync(join(dist, "SHA256SUMS"), `${sums.join("\n")}\n`);
  console.log(sums.join("\n"));
} else {
  compile(hostArch(), join(dist, "conmonrs"));
}
