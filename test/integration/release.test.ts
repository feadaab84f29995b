// The release: `make release` artifacts, installed by scripts/get from a local HTTP server laid
// out like the GitHub release page (curl | bash, as users run it), and the binary's
// self-containedness (no bun, no source tree, a minimal environment, a real container).
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Server } from "bun";
import pkg from "../../package.json" with { type: "json" };
import { CgroupManager, ConmonClient } from "../../src/client/index.ts";
import { makeBundle } from "../helpers/bundle.ts";
import { removeDir, tmpDir, uniqueId, waitFor, waitForFile } from "../helpers/proc.ts";
import { runtime } from "../helpers/runtimes.ts";

// Installs move ~110 MB through curl, sha256sum and a qemu-run binary; under load that exceeds bun's 5 s.
setDefaultTimeout(60_000);
/** `make release` when dist/ is stale: two compiles, the arm64 runtime downloaded on first use. */
const BUILD_TIMEOUT_MS = 600_000;

const ROOT = join(import.meta.dir, "../..");
const DIST = join(ROOT, "dist");
const GET_SCRIPT = join(ROOT, "scripts/get");
const VERSION = pkg.version;
const TAG = `v${VERSION}`;
type Arch = "amd64" | "arm64";
const HOST_ARCH: Arch = process.arch === "arm64" ? "arm64" : "amd64";
const OTHER_ARCH: Arch = HOST_ARCH === "amd64" ? "arm64" : "amd64";
const TRIPLE: Record<Arch, string> = { amd64: "x86_64-unknown-linux-gnu", arm64: "aarch64-unknown-linux-gnu" };
/** ELF e_machine of each architecture. */
const ELF_MACHINE: Record<Arch, number> = { amd64: 0x3e, arm64: 0xb7 };
/** What the installer and the isolated binary get: no /usr/local/bin, no ~/.bun. */
const MIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin";
const RUNC = runtime("runc");
/** Running the foreign-architecture binary, when Debian's qemu-user-static and arm64 libc are installed. */
const QEMU = { arm64: ["/usr/bin/qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu"], amd64: ["/usr/bin/qemu-x86_64-static", "-L", "/usr/x86_64-linux-gnu"] }[OTHER_ARCH];
const canEmulate = existsSync(QEMU[0]!) && existsSync(QEMU[2]!);

const artifactName = (arch: Arch) => `conmonrs-${VERSION}-linux-${arch}`;
const artifact = (arch: Arch) => join(DIST, artifactName(arch));

function sha256(path: string): string {
  return new Bun.CryptoHasher("sha256").update(readFileSync(path)).digest("hex");
}

/** Newest mtime of the files a release is built from. */
function newestInput(): number {
  let newest = 0;
  const visit = (path: string) => {
    const st = statSync(path);
    if (st.isDirectory()) for (const entry of readdirSync(path)) visit(join(path, entry));
    else newest = Math.max(newest, st.mtimeMs);
  };
  for (const input of ["src", "ffi", "schema", "build.ts", "package.json", "bun.lock"]) {
    if (existsSync(join(ROOT, input))) visit(join(ROOT, input));
  }
  return newest;
}

/** dist/ holds a complete release built after the last source change. */
function releaseIsFresh(): boolean {
  const sums = join(DIST, "SHA256SUMS");
  if (!existsSync(sums) || !existsSync(artifact("amd64")) || !existsSync(artifact("arm64"))) return false;
  return statSync(sums).mtimeMs >= newestInput();
}

/** Runs `make release` unless dist/ already holds a fresh one (building takes ~5 s, arm64 runtime cached). */
function ensureRelease(): void {
  if (releaseIsFresh()) return;
  const make = Bun.spawnSync(["make", "-C", ROOT, "release"], { stdout: "pipe", stderr: "pipe", timeout: 600_000 });
  if (make.exitCode !== 0) {
    throw new Error(`make release failed (exit ${make.exitCode}):\n${make.stdout}\n${make.stderr}`);
  }
}

function run(argv: string[], env?: Record<string, string>) {
  const r = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe", env, timeout: 60_000 });
  return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

// ---- the release page ------------------------------------------------------------------------

type Release = Record<string, string | Uint8Array | (() => Blob)>;

/**
 * Releases served under /releases/download/<tag>/ (and /releases/latest/download/ for TAG):
 * the real one, and broken variants of it.
 */
function releases(): Record<string, Release> {
  const sums = readFileSync(join(DIST, "SHA256SUMS"), "utf8");
  const binaries: Release = {
    [artifactName("amd64")]: () => Bun.file(artifact("amd64")),
    [artifactName("arm64")]: () => Bun.file(artifact("arm64")),
  };
  const hostLine = sums.split("\n").find((l) => l.endsWith(artifactName(HOST_ARCH)))!;
  const digest = hostLine.slice(0, 64);
  const otherDigit = digest[0] === "0" ? "1" : "0";
  return {
    [TAG]: { SHA256SUMS: sums, ...binaries },
    "v0.0.0-badsum": { SHA256SUMS: sums.replace(digest, otherDigit + digest.slice(1)), ...binaries },
    // A download that curl sees as complete but is not the release's file.
    "v0.0.0-truncated": { SHA256SUMS: sums, ...binaries, [artifactName(HOST_ARCH)]: readFileSync(artifact(HOST_ARCH)).subarray(0, 1 << 20) },
    "v0.0.0-nohost": { SHA256SUMS: sums.split("\n").filter((l) => !l.endsWith(artifactName(HOST_ARCH))).join("\n"), ...binaries },
  };
}

function serveReleases(): { server: Server<undefined>; base: string; requests: string[] } {
  const table = releases();
  const requests: string[] = [];
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const path = new URL(req.url).pathname;
      requests.push(path);
      if (path === "/get") return new Response(Bun.file(GET_SCRIPT));
      const m = /^\/releases\/(?:download\/([^/]+)|latest\/download)\/([^/]+)$/.exec(path);
      const file = m ? table[m[1] ?? TAG]?.[m[2]!] : undefined;
      if (file === undefined) return new Response("Not Found", { status: 404 });
      return new Response(typeof file === "function" ? file() : file);
    },
  });
  return { server, base: `http://127.0.0.1:${server.port}/releases`, requests };
}

/** A port on which nothing listens (bound, then closed). */
function closedPort(): number {
  const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = listener.port;
  listener.stop(true);
  return port;
}

// ---- running the installer as users do -------------------------------------------------------

type Result = { code: number; stdout: string; stderr: string };

/** `curl -fsSL <site>/get | bash -s -- <args>` with a minimal environment. Async: the HTTP server runs on this event loop. */
async function curlPipeBash(site: string, args: string[], env: Record<string, string> = {}): Promise<Result> {
  const quoted = args.map((a) => `'${a.replaceAll("'", `'\\''`)}'`).join(" ");
  const proc = Bun.spawn(["/bin/bash", "-o", "pipefail", "-c", `curl -fsSL '${site}/get' | bash -s -- ${quoted}`], {
    env: { PATH: MIN_PATH, ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, stdout, stderr };
}

describe("make release", () => {
  beforeAll(ensureRelease, BUILD_TIMEOUT_MS);

  test("dist/ has both binaries and a SHA256SUMS that matches them", () => {
    const lines = readFileSync(join(DIST, "SHA256SUMS"), "utf8").trimEnd().split("\n");
    expect(lines).toEqual([`${sha256(artifact("amd64"))}  ${artifactName("amd64")}`, `${sha256(artifact("arm64"))}  ${artifactName("arm64")}`]);
    for (const arch of ["amd64", "arm64"] as const) {
      const elf = readFileSync(artifact(arch)).subarray(0, 20);
      expect(elf.readUInt32BE(0)).toBe(0x7f454c46);
      expect(elf.readUInt16LE(18)).toBe(ELF_MACHINE[arch]);
      expect(statSync(artifact(arch)).mode & 0o111).toBe(0o111);
    }
  });

  test("version, tag and commit are baked in", () => {
    const r = run([artifact(HOST_ARCH), "--version-json"], { PATH: MIN_PATH });
    expect(r.code).toBe(0);
    const info = JSON.parse(r.stdout);
    expect(info.version).toBe(VERSION);
    expect(info.target).toBe(TRIPLE[HOST_ARCH]);
    expect(info.commit).toMatch(/^[0-9a-f]{40}$/);
    expect(info.tag).not.toBe("");
    // A commit of this repository (HEAD moves while others commit, so not necessarily HEAD).
    expect(run(["git", "-C", ROOT, "cat-file", "-e", `${info.commit}^{commit}`]).code).toBe(0);
  });

  test.skipIf(!canEmulate)(`the ${OTHER_ARCH} binary runs (under qemu-user) and carries the same build information`, () => {
    const host = JSON.parse(run([artifact(HOST_ARCH), "--version-json"]).stdout);
    const r = run([...QEMU, artifact(OTHER_ARCH), "--version-json"]);
    expect(r.code).toBe(0);
    const info = JSON.parse(r.stdout);
    expect(info.target).toBe(TRIPLE[OTHER_ARCH]);
    expect({ version: info.version, tag: info.tag, commit: info.commit }).toEqual({ version: host.version, tag: host.tag, commit: host.commit });
  });
});

describe("scripts/get against a local release page", () => {
  let site: ReturnType<typeof serveReleases>;
  let work: string;
  let origin: string;
  beforeAll(() => {
    ensureRelease();
    site = serveReleases();
    origin = site.base.replace(/\/releases$/, "");
    work = tmpDir("get");
  }, BUILD_TIMEOUT_MS);
  afterAll(() => {
    site?.server.stop(true);
    removeDir(work);
  });

  const env = () => ({ CONMONRS_BASE_URL: site.base });
  /** A fresh directory for one install target. */
  const target = (name: string) => join(work, name, "bin", "conmonrs");

  test("installs this machine's binary for a tag: verified, mode 0755, prints --version", async () => {
    const out = target("ok");
    const r = await curlPipeBash(origin, ["-l", TAG, "-o", out], env());
    expect(r.stderr).toContain(`verified sha256 ${sha256(artifact(HOST_ARCH))}`);
    expect(r.code).toBe(0);
    expect(r.stdout).toStartWith(`version: ${VERSION}\n`);
    expect(sha256(out)).toBe(sha256(artifact(HOST_ARCH)));
    expect(statSync(out).mode & 0o777).toBe(0o755);
    // Nothing else left beside it (no partial download).
    expect(readdirSync(join(work, "ok", "bin"))).toEqual(["conmonrs"]);
    expect(site.requests).toContain(`/releases/download/${TAG}/SHA256SUMS`);
    expect(site.requests).toContain(`/releases/download/${TAG}/${artifactName(HOST_ARCH)}`);
    const installed = run([out, "--version-json"], { PATH: MIN_PATH });
    expect(installed.code).toBe(0);
    expect(JSON.parse(installed.stdout).version).toBe(VERSION);
  });

  test("without -l: the latest release, base URL from -b, replacing an existing install", async () => {
    const out = target("latest");
    mkdirSync(join(work, "latest", "bin"), { recursive: true });
    writeFileSync(out, "old install\n");
    const r = await curlPipeBash(origin, ["-b", site.base, "-o", out]);
    expect(r.code).toBe(0);
    expect(sha256(out)).toBe(sha256(artifact(HOST_ARCH)));
    expect(site.requests).toContain(`/releases/latest/download/${artifactName(HOST_ARCH)}`);
  });

  test.each([
    ["SHA256SUMS lists another digest", "v0.0.0-badsum"],
    ["the download is cut short", "v0.0.0-truncated"],
  ])("refuses a binary whose checksum does not match (%s): partial file removed, old install untouched", async (_what, tag) => {
    const dir = join(work, tag, "bin");
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "conmonrs"), "old install\n");
    const r = await curlPipeBash(origin, ["-l", tag, "-o", join(dir, "conmonrs")], env());
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`error: checksum mismatch for ${artifactName(HOST_ARCH)}`);
    expect(r.stderr).toContain("removed the download, nothing installed");
    expect(readdirSync(dir)).toEqual(["conmonrs"]);
    expect(readFileSync(join(dir, "conmonrs"), "utf8")).toBe("old install\n");
  });

  test("a release without this machine's architecture: clear error, nothing written", async () => {
    const out = target("nohost");
    const r = await curlPipeBash(origin, ["-l", "v0.0.0-nohost", "-o", out], env());
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${site.base}/download/v0.0.0-nohost/SHA256SUMS lists no binary for linux-${HOST_ARCH} (it has: ${OTHER_ARCH})`);
    expect(existsSync(join(work, "nohost"))).toBe(false);
  });

  test("no network (nothing listens at the base URL): curl's exit status and what it means", async () => {
    const base = `http://127.0.0.1:${closedPort()}/releases`;
    const out = target("offline");
    const r = await curlPipeBash(origin, ["-l", TAG, "-o", out], { CONMONRS_BASE_URL: base });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`error: downloading ${base}/download/${TAG}/SHA256SUMS failed: curl exit status 7: could not connect`);
    expect(existsSync(join(work, "offline"))).toBe(false);
  });

  test("an unknown tag: the HTTP error, not a half-done install", async () => {
    const r = await curlPipeBash(origin, ["-l", "v9.9.9", "-o", target("missing")], env());
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`downloading ${site.base}/download/v9.9.9/SHA256SUMS failed: curl exit status 22`);
  });

  test(`-a ${OTHER_ARCH}: installs the other architecture's binary, does not try to run it`, async () => {
    const out = target("other");
    const r = await curlPipeBash(origin, ["-l", TAG, "-a", OTHER_ARCH, "-o", out], env());
    expect(r.code).toBe(0);
    expect(sha256(out)).toBe(sha256(artifact(OTHER_ARCH)));
    expect(r.stderr).toContain(`it is a linux-${OTHER_ARCH} binary and this machine is linux-${HOST_ARCH}`);
    if (canEmulate) {
      const v = run([...QEMU, out, "--version"]);
      expect(v.code).toBe(0);
      expect(v.stdout).toContain(`target: ${TRIPLE[OTHER_ARCH]}`);
    }
  });

  test.each([
    [["-x"], "unknown option -x"],
    [["-a", "sparc"], "unsupported architecture 'sparc' (releases exist for amd64 and arm64)"],
    [["-l"], "option -l needs a value"],
    [["-o", ""], "option -o needs a non-empty value"],
    [["-l", TAG, "extra"], "unexpected argument 'extra'"],
  ])("bad arguments %p: exit 2, the reason and the usage, nothing downloaded", (args, message) => {
    const before = site.requests.length;
    const r = run(["/bin/bash", GET_SCRIPT, ...args], { PATH: MIN_PATH, CONMONRS_BASE_URL: site.base });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`error: ${message}`);
    expect(r.stderr).toContain("Usage: get [-l TAG] [-a ARCH] [-o PATH] [-b BASE_URL] [-h]");
    expect(site.requests.length).toBe(before);
  });

  test("-h prints the usage with the defaults and exits 0", () => {
    const r = run(["/bin/bash", GET_SCRIPT, "-h"], { PATH: MIN_PATH });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("default: /usr/local/bin/conmonrs");
    expect(r.stdout).toContain("https://github.com/conmon-ts/conmon-ts/releases");
  });
});

// ---- self-contained ----------------------------------------------------------------------------

/**
 * argv prefix: a private mount namespace in which every bun the binary could reach (on MIN_PATH,
 * and the one running this test) is masked by /dev/null, then `env -i PATH=MIN_PATH`. It exits
 * 125 if `bun` is still found. bun sits in /usr/bin here, so a bare `env -i` would not hide it.
 */
function isolatedPrefix(): string[] {
  const candidates = [process.execPath, ...MIN_PATH.split(":").map((dir) => join(dir, "bun"))].filter((p) => existsSync(p));
  const masks = [...new Set(candidates.map((p) => realpathSync(p)))];
  const mount = masks.map((m) => `mount --bind /dev/null '${m}'`).join(" && ");
  const check = `if command -v bun >/dev/null; then echo "isolated: bun still on PATH: $(command -v bun)" >&2; exit 125; fi; exec "$@"`;
  const outer = `${mount || "true"} && exec env -i PATH=${MIN_PATH} /bin/sh -c '${check}' isolated "$@"`;
  return ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", outer, "isolated"];
}

const SELF_CONTAINED_BINARIES: Array<[string, string]> = [
  ["dist/conmonrs", join(DIST, "conmonrs")],
  [`release ${artifactName(HOST_ARCH)}`, artifact(HOST_ARCH)],
];

describe.each(SELF_CONTAINED_BINARIES)("self-contained: %s copied alone into an empty directory", (_name, source) => {
  let dir: string;
  let binary: string;
  beforeAll(() => {
    ensureRelease();
    if (!existsSync(source)) throw new Error(`${source} missing: run \`bun build.ts\` (make build)`);
    dir = tmpDir("alone");
    binary = join(dir, "conmonrs");
    copyFileSync(source, binary);
  }, BUILD_TIMEOUT_MS);
  afterAll(() => removeDir(dir));

  test("the isolation holds: no bun on PATH, only PATH in the environment", () => {
    const r = run([...isolatedPrefix(), "/bin/sh", "-c", "command -v bun; echo \"bun:$?\"; env"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("bun:127");
    const vars = r.stdout.split("\n").filter((l) => l.includes("=")).map((l) => l.slice(0, l.indexOf("=")));
    expect(vars.filter((v) => v !== "PWD").sort()).toEqual(["PATH"]);
  });

  test("--version-json works with nothing but the binary", () => {
    const proc = Bun.spawnSync([...isolatedPrefix(), "./conmonrs", "--version-json"], { cwd: dir, stdout: "pipe", stderr: "pipe" });
    expect(proc.stderr.toString()).toBe("");
    expect(proc.exitCode).toBe(0);
    const info = JSON.parse(proc.stdout.toString());
    expect(info.version).toBe(VERSION);
    expect(readdirSync(dir)).toEqual(["conmonrs"]);
  });

  test.skipIf(RUNC === undefined)("a server started there runs a busybox container through runc", async () => {
    const runDir = join(dir, "run");
    const root = join(dir, "root");
    const server = Bun.spawn(
      [...isolatedPrefix(), "./conmonrs", "--runtime", RUNC!.path, "--runtime-dir", runDir, "--runtime-root", root, "--skip-fork", "--log-driver", "none"],
      { cwd: dir, stdio: ["ignore", "ignore", "pipe"] },
    );
    const bundle = await makeBundle({ args: ["sh", "-c", "echo self-contained; exit 0"] });
    const id = uniqueId("alone-");
    try {
      await waitFor(() => existsSync(join(runDir, "conmon.sock")) || server.exitCode !== null, 10_000, "conmon.sock");
      expect(server.exitCode).toBeNull();
      // The server is the copied binary itself (unshare, sh and env all exec'ed into it).
      expect(realpathSync(`/proc/${server.pid}/exe`)).toBe(realpathSync(binary));
      const client = await ConmonClient.new({ runtime: RUNC!.path, serverRunDir: runDir });
      expect(client.pid).toBe(server.pid);
      const exitFile = join(dir, "exit");
      const logFile = join(dir, "ctr.log");
      await client.createContainer({
        id, bundlePath: bundle.dir, exitPaths: [exitFile], logDrivers: [{ type: "cri", path: logFile }], cgroupManager: CgroupManager.cgroupfs,
      });
      const start = run([RUNC!.path, `--root=${root}`, "start", id]);
      expect(start.stderr).toBe("");
      expect(start.code).toBe(0);
      expect(await waitForFile(exitFile, 10_000)).toBe("0");
      expect(readFileSync(logFile, "utf8")).toMatch(/ stdout F self-contained\n$/);
      client.resetConnection();
      server.kill("SIGTERM");
      expect(await server.exited).toBe(0);
    } finally {
      server.kill("SIGKILL");
      run([RUNC!.path, `--root=${root}`, "delete", "--force", id]);
      await bundle.cleanup();
    }
  });
});
