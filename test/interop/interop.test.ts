// Our compiled server against the reference C++ Cap'n Proto implementation (Debian's libcapnp-rpc),
// the same RPC stack family as upstream's Rust capnp-rpc peers and go-capnp's wire behaviour.
//
// INTEROP_SERVER=ref runs the same assertions against test/interop/ref_server.cpp instead, to
// validate the client side without our server.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  buildInteropClient,
  interopLine,
  REPO_ROOT,
  runInterop,
  startRefServer,
  startServer,
  type InteropLine,
  type RunningServer,
} from "../helpers/interop.ts";
import { makeBundle, type Bundle } from "../helpers/bundle.ts";

const CONMONRS = join(REPO_ROOT, "dist/conmonrs");
const useRef = process.env.INTEROP_SERVER === "ref";

let dir: string;
let sock: string;
let server: RunningServer;

beforeAll(async () => {
  await buildInteropClient();
  dir = await mkdtemp(join(tmpdir(), "conmon-interop-"));
  sock = join(dir, "conmon.sock");
  if (useRef) {
    server = await startRefServer(sock);
    return;
  }
  if (!existsSync(CONMONRS)) throw new Error(`${CONMONRS} is missing: run \`bun build.ts\` (make test does)`);
  server = await startServer(
    [CONMONRS, "--skip-fork", "--runtime", "/usr/sbin/runc", "--runtime-dir", dir, "--log-driver", "stdout"],
    sock,
  );
}, 120_000);

afterAll(async () => {
  await server?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const NON_EMPTY = ["version", "commit", "buildDate", "target", "rustVersion", "cargoVersion"] as const;

function expectVersion(line: InteropLine) {
  expect(line).toMatchObject({ ok: true, processId: server.pid });
  for (const k of NON_EMPTY) expect(line[k], k).toBeString();
  for (const k of NON_EMPTY) expect((line[k] as string).length, `${k} is empty`).toBeGreaterThan(0);
  // upstream's Go client semver-parses the version on every call
  expect(line.version).toMatch(/^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$/);
  expect(line.tag).toBeString(); // may legitimately be empty (no git tag)
}

describe("C++ libcapnp-rpc client", () => {
  test("version: every field filled, processId is the server's pid, cargoTree empty", async () => {
    const line = await interopLine(["version", sock]);
    expect(line.step).toBe("version");
    expectVersion(line);
    expect(line.cargoTree).toBe("");
  });

  test("version --verbose: cargoTree filled", async () => {
    const line = await interopLine(["version", sock, "--verbose"]);
    expectVersion(line);
    expect((line.cargoTree as string).length).toBeGreaterThan(0);
  });

  test("a call pipelined on the unresolved bootstrap promise is answered", async () => {
    const line = await interopLine(["pipeline", sock]);
    expect(line.step).toBe("pipeline");
    expectVersion(line);
  });

  test("an unknown method gets an UNIMPLEMENTED exception and the connection keeps working", async () => {
    for (const args of [["42"], ["11"], ["0", "0x1234567890abcdef"]]) {
      const r = await runInterop(["unknown-method", sock, ...args]);
      expect(r.exitCode, r.stdout + r.stderr).toBe(0);
      const [unknown, after] = r.lines;
      expect(unknown).toMatchObject({ step: "unknown-method", ok: false, error: "UNIMPLEMENTED", remote: true });
      expect(after!.step).toBe("version-after");
      expectVersion(after!);
      expect(r.lines.length).toBe(2);
    }
  });

  test("20 calls in flight on one connection all succeed", async () => {
    const line = await interopLine(["inflight", sock, "20"]);
    expect(line).toMatchObject({ step: "inflight", sent: 20, ok: 20, failed: 0 });
  });

  test("two clients at once both succeed", async () => {
    const lines = await Promise.all([interopLine(["inflight", sock, "50"]), interopLine(["inflight", sock, "50"])]);
    for (const line of lines) expect(line).toMatchObject({ ok: 50, failed: 0 });
    const both = await Promise.all([interopLine(["version", sock]), interopLine(["pipeline", sock])]);
    for (const line of both) expectVersion(line);
  });

  test("half a second of sustained load with 4 calls in flight has no errors", async () => {
    const line = await interopLine(["bench", sock, "0.5", "4"]);
    expect(line).toMatchObject({ step: "bench", inflight: 4, errors: 0 });
    expect(line.calls as number).toBeGreaterThan(0);
  });
});

// The container methods from the reference implementation: what CRI-O's client sends, encoded by
// libcapnp instead of capnp-es, decoded by our server, and our answers decoded by libcapnp.
describe.skipIf(useRef)("C++ libcapnp-rpc client: container methods (runc)", () => {
  let bundle: Bundle;
  const id = `interop-${process.pid}`;
  const call = (...args: string[]) => interopLine(["call", sock, ...args], { timeoutMs: 30_000 });

  beforeAll(async () => {
    bundle = await makeBundle({ args: ["/busybox", "sh", "-c", "echo started; exec sleep 1000"] });
  });
  afterAll(async () => {
    Bun.spawnSync(["runc", "delete", "--force", id], { stdout: "ignore", stderr: "ignore" });
    await bundle?.cleanup();
  });

  test("createContainer with a CRI log, then execSync with output on both streams and an exit code", async () => {
    const logPath = join(dir, `${id}.log`);
    const created = await call("create", id, bundle.dir, join(dir, `${id}.exit`), logPath);
    expect(created).toMatchObject({ step: "create", ok: true });
    expect(created.containerPid as number).toBeGreaterThan(1);
    expect(existsSync(`/proc/${created.containerPid}`)).toBe(true);
    expect(Bun.spawnSync(["runc", "start", id]).exitCode).toBe(0);

    const exec = await call("execSync", id, "/busybox", "sh", "-c", "printf out; printf err >&2; exit 3");
    expect(exec).toMatchObject({ step: "execSync", ok: true, exitCode: 3, timedOut: false, stdout: "out", stderr: "err" });
    // The container's own output reached its CRI log; the exec's did not.
    const log = await Bun.file(logPath).text();
    expect(log).toMatch(/^\S+ stdout F started\n$/);
  });

  test("execSync on an unknown container answers exitCode -2, not an exception", async () => {
    expect(await call("execSync", "no-such-container", "true")).toMatchObject({ ok: true, exitCode: -2, stdout: "", stderr: "" });
  });

  test("reopen and setWindowSize on that container; setWindowSize fails on a non-terminal one", async () => {
    expect(await call("reopen", id)).toMatchObject({ step: "reopen", ok: true });
    const resize = await call("setWindowSize", id, "80", "24");
    expect(resize).toMatchObject({ step: "setWindowSize", ok: false });
    expect(resize.reason as string).toContain("container has no terminal");
  });
});
