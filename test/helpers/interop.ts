// Builds and drives the C++ interop programs in test/interop/ (Debian's libcapnp-rpc, the reference
// Cap'n Proto implementation): the client, and a reference server for development and benchmarks.
// Binaries live in .cache/interop/ (gitignored), named by a hash of everything that goes into
// them, so a changed source, schema, compiler or capnp version means a rebuild and nothing else does.
import type { Subprocess } from "bun";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rename, rm } from "node:fs/promises";
import { join } from "node:path";

export const REPO_ROOT = join(import.meta.dir, "../..");
const SCHEMA = join(REPO_ROOT, "schema/conmon.capnp");
const CACHE_DIR = join(REPO_ROOT, ".cache/interop");
const CXXFLAGS = ["-O2", "-std=c++17", "-Wall", "-Wextra"];

function run(cmd: string[], cwd = REPO_ROOT): string {
  const r = Bun.spawnSync(cmd, { cwd, stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) {
    throw new Error(`${cmd.join(" ")} failed (exit ${r.exitCode}):\n${r.stdout.toString()}${r.stderr.toString()}`);
  }
  return r.stdout.toString();
}

// Concurrent builders (two test processes) each build in their own temp dir and rename into
// place; rename is atomic, so a reader never sees a half-written binary.
async function buildProgram(name: string, source: string): Promise<string> {
  const pkg = run(["pkg-config", "--cflags", "--libs", "capnp-rpc"]).trim().split(/\s+/);
  const hash = createHash("sha256");
  for (const part of [
    await readFile(source),
    await readFile(SCHEMA),
    run(["capnp", "--version"]),
    run(["g++", "--version"]),
    CXXFLAGS.join(" "),
    pkg.join(" "),
  ]) {
    hash.update(part).update("\0");
  }
  const prefix = `${name}-`;
  const binary = join(CACHE_DIR, prefix + hash.digest("hex").slice(0, 16));
  if (existsSync(binary)) return binary;

  await mkdir(CACHE_DIR, { recursive: true });
  const work = await mkdtemp(join(CACHE_DIR, "build-"));
  try {
    run(["capnp", "compile", `-oc++:${work}`, `--src-prefix=${join(REPO_ROOT, "schema")}`, SCHEMA]);
    const out = join(work, name);
    run(["g++", ...CXXFLAGS, "-I", work, source, join(work, "conmon.capnp.c++"), "-o", out, ...pkg]);
    await rename(out, binary);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  for (const f of await readdir(CACHE_DIR)) {
    if (f.startsWith(prefix) && join(CACHE_DIR, f) !== binary) await rm(join(CACHE_DIR, f), { force: true });
  }
  return binary;
}

/** Path to the C++ interop client (test/interop/client.cpp), built if needed. */
export function buildInteropClient(): Promise<string> {
  return buildProgram("conmon-interop-client", join(REPO_ROOT, "test/interop/client.cpp"));
}

/** Path to the C++ reference server (test/interop/ref_server.cpp), built if needed. */
export function buildRefServer(): Promise<string> {
  return buildProgram("conmon-ref-server", join(REPO_ROOT, "test/interop/ref_server.cpp"));
}

export type InteropLine = Record<string, unknown> & {
  step?: string;
  ok?: boolean;
  error?: string;
  reason?: string;
};

export interface InteropResult {
  exitCode: number | null;
  lines: InteropLine[];
  stdout: string;
  stderr: string;
}

/** Runs the client (`version <sock>`, `inflight <sock> 20`, `call <sock> reopen <id>`, ...) and
 * parses its JSON lines. The client exits 0 whenever the command ran, RPC exceptions included;
 * a hung server is cut off after `timeoutMs`. */
export async function runInterop(args: string[], { timeoutMs = 30_000 } = {}): Promise<InteropResult> {
  const proc = Bun.spawn([await buildInteropClient(), ...args], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    timeout: timeoutMs,
    killSignal: "SIGKILL",
  });
  const [stdout, stderr, exitCode] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  const lines = stdout
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => {
      try {
        return JSON.parse(l) as InteropLine;
      } catch {
        throw new Error(`interop client printed a non-JSON line ${JSON.stringify(l)}; stderr:\n${stderr}`);
      }
    });
  return { exitCode: proc.signalCode ? null : exitCode, lines, stdout, stderr };
}

/** Runs the client and returns its single output line, failing loudly on anything else. */
export async function interopLine(args: string[], opts?: { timeoutMs?: number }): Promise<InteropLine> {
  const r = await runInterop(args, opts);
  if (r.exitCode !== 0 || r.lines.length !== 1) {
    throw new Error(`interop ${args.join(" ")}: exit ${r.exitCode}, output:\n${r.stdout}${r.stderr}`);
  }
  return r.lines[0]!;
}

/** Resolves once `path` exists and accepts a connection; rejects if `proc` exits first. */
export async function waitForSocket(path: string, proc: Subprocess, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(`server exited (${proc.exitCode ?? proc.signalCode}) before ${path} accepted connections`);
    }
    if (existsSync(path)) {
      const accepted = await new Promise<boolean>((resolve) => {
        Bun.connect({
          unix: path,
          socket: {
            open(s) {
              s.end();
              resolve(true);
            },
            data() {},
            connectError: () => resolve(false),
          },
        }).catch(() => resolve(false));
      });
      if (accepted) return;
    }
    await Bun.sleep(20);
  }
  throw new Error(`${path} did not accept connections within ${timeoutMs} ms`);
}

export interface RunningServer {
  proc: Subprocess;
  pid: number;
  socket: string;
  /** SIGTERM, then SIGKILL if still alive after `graceMs`; resolves with the exit code (null if killed by a signal). */
  stop(graceMs?: number): Promise<number | null>;
  /** Everything the server wrote; settles once it has exited. */
  output: Promise<{ stdout: string; stderr: string }>;
}

/** Starts a server command and waits until `socket` accepts connections. */
export async function startServer(cmd: string[], socket: string, env?: Record<string, string>): Promise<RunningServer> {
  const proc = Bun.spawn(cmd, { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, ...env } });
  // Drain both pipes from the start: a server logging to stdout would block on a full pipe.
  const output = Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]).then(
    ([stdout, stderr]) => ({ stdout, stderr }),
  );
  try {
    await waitForSocket(socket, proc);
  } catch (e) {
    proc.kill("SIGKILL");
    await proc.exited;
    const { stdout, stderr } = await output;
    throw new Error(`${(e as Error).message}\n$ ${cmd.join(" ")}\nstdout:\n${stdout}\nstderr:\n${stderr}`);
  }
  return {
    proc,
    pid: proc.pid,
    socket,
    output,
    async stop(graceMs = 10_000) {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill("SIGTERM");
        const timer = setTimeout(() => proc.kill("SIGKILL"), graceMs);
        await proc.exited;
        clearTimeout(timer);
      }
      return proc.signalCode ? null : proc.exitCode;
    },
  };
}

/** Starts the C++ reference server on `socket`. */
export async function startRefServer(socket: string): Promise<RunningServer> {
  return startServer([await buildRefServer(), socket], socket);
}
