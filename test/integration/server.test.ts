// The compiled binary as engines start it: launcher, pidfile, version over RPC, the process setup
// upstream's init() does, hostile peers, shutdown.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { closeSync, existsSync, openSync, readFileSync, readdirSync, readlinkSync, statSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { Message } from "capnp-es";
import { Message as RpcMessage } from "capnp-es/capnp/rpc";
import { ConmonClient } from "../../src/client/index.ts";
import { BINARY, requireBinary, startServer, type TestServer } from "../helpers/server.ts";
import { pidExists, removeDir, tmpDir, waitFor } from "../helpers/proc.ts";

const RUNC = { name: "runc" as const, path: "/usr/sbin/runc" };

function run(args: string[], env: Record<string, string> = {}) {
  const result = Bun.spawnSync([requireBinary(), ...args], { env: { PATH: process.env.PATH!, ...env } });
  return { code: result.exitCode, stdout: result.stdout.toString(), stderr: result.stderr.toString() };
}

/** Sends raw bytes on a fresh connection and waits until the server closes it (or 1 s). */
function sendRaw(socketPath: string, bytes: Uint8Array, closeAfterWrite = false): Promise<void> {
  return new Promise((resolve) => {
    const socket = connect(socketPath, () => {
      socket.write(bytes);
      if (closeAfterWrite) socket.destroy();
    });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve();
    }, 1000);
    socket.on("data", () => {});
    socket.on("close", () => {
      clearTimeout(timer);
      resolve();
    });
    socket.on("error", () => {});
  });
}

describe("conmonrs binary", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startServer(RUNC);
  });
  afterAll(async () => {
    await server?.stop();
  });

  test("starts like upstream's fork: pidfile consumed, version answers with the server's pid", async () => {
    const v = await server.client.version();
    expect(v.processId).toBe(server.client.pid);
    expect(pidExists(v.processId)).toBe(true);
    expect(v.version).toMatch(/^\d+\.\d+\.\d+/);
    for (const key of ["commit", "buildDate", "target", "rustVersion", "cargoVersion"] as const) expect(v[key]).not.toBe("");
    expect(v.cargoTree).toBe("");
    expect((await server.client.version(true)).cargoTree).toContain("capnp-es");
    // ConmonClient.new removes the pidfile, as the Go client does.
    expect(existsSync(join(server.runDir, "pidfile"))).toBe(false);
  });

  test("the server process is set up as upstream's init() does", () => {
    const pid = server.client.pid;
    expect(readFileSync(`/proc/${pid}/comm`, "utf8").trim()).toBe("conmonrs");
    const adj = readFileSync(`/proc/${pid}/oom_score_adj`, "utf8").trim();
    // -1000 needs CAP_SYS_RESOURCE; without it the server says so and goes on.
    expect(["-1000", "0"]).toContain(adj);
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    expect(status).toMatch(/Umask:\s+0022/);
    const sock = statSync(join(server.runDir, "conmon.sock"));
    expect(sock.isSocket()).toBe(true);
  });

  test("a second client on the same run dir reuses the running server", async () => {
    const second = await ConmonClient.new({ conmonServerPath: BINARY, runtime: RUNC.path, serverRunDir: server.runDir });
    expect(second.pid).toBe(server.client.pid);
    second.resetConnection();
  });

  test("many clients and many calls in flight at once", async () => {
    const clients = await Promise.all(
      Array.from({ length: 10 }, () => ConmonClient.new({ conmonServerPath: BINARY, runtime: RUNC.path, serverRunDir: server.runDir })),
    );
    const results = await Promise.all(clients.flatMap((c) => Array.from({ length: 20 }, () => c.version())));
    expect(results.length).toBe(200);
    expect(new Set(results.map((r) => r.processId))).toEqual(new Set([server.client.pid]));
    for (const c of clients) c.resetConnection();
  });

  test.each([
    ["random bytes", () => crypto.getRandomValues(new Uint8Array(8192)), false],
    ["a huge segment count", () => new Uint8Array([0xff, 0xff, 0x00, 0x00, 1, 0, 0, 0]), false],
    ["a segment over 64 MiB", () => new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0x10]), false],
    ["a truncated frame, then EOF", () => new Uint8Array([0, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3]), true],
  ])("hostile peer (%s) loses only its own connection", async (_name, bytes, closeAfterWrite) => {
    await sendRaw(join(server.runDir, "conmon.sock"), bytes(), closeAfterWrite);
    const v = await server.client.version();
    expect(v.processId).toBe(server.client.pid);
  });

  test("a message kind the server does not handle is answered with Unimplemented carrying it", async () => {
    // Resolve (kind 5) is level 1; the reply is read with capnp-es's rpc.capnp classes, which the
    // server itself loads only on this rare path.
    const msg = new Message();
    msg.initRoot(RpcMessage)._initResolve().promiseId = 77;
    const reply = await new Promise<Uint8Array>((resolve, reject) => {
      const chunks: Buffer[] = [];
      const socket = connect(join(server.runDir, "conmon.sock"), () => socket.write(new Uint8Array(msg.toArrayBuffer())));
      const timer = setTimeout(() => socket.destroy(new Error("no reply within 2 s")), 2000);
      socket.on("data", (chunk) => {
        chunks.push(chunk as Buffer);
        const bytes = Buffer.concat(chunks);
        if (bytes.byteLength >= 8 && bytes.byteLength >= 8 + 8 * bytes.readUInt32LE(4)) {
          clearTimeout(timer);
          socket.destroy();
          resolve(new Uint8Array(bytes));
        }
      });
      socket.on("error", reject);
    });
    const root = new Message(reply, false).getRoot(RpcMessage);
    expect(root.which()).toBe(RpcMessage.UNIMPLEMENTED);
    expect(root.unimplemented.which()).toBe(RpcMessage.RESOLVE);
    expect(root.unimplemented.resolve.promiseId).toBe(77);
    expect((await server.client.version()).processId).toBe(server.client.pid);
  });

  test("a client that disconnects with calls in flight does not hurt the server", async () => {
    for (let i = 0; i < 5; i++) {
      const c = await ConmonClient.new({ conmonServerPath: BINARY, runtime: RUNC.path, serverRunDir: server.runDir });
      const rpc = await c.connection();
      const pending = Array.from({ length: 50 }, () => rpc.call(0, (p) => p._initRequest()).catch(() => "dropped"));
      rpc.close();
      await Promise.all(pending);
    }
    expect((await server.client.version()).processId).toBe(server.client.pid);
  });
});

describe("process start", () => {
  test("fds left open by the caller are not kept by the server", async () => {
    const runDir = tmpDir("conmon-fds");
    const leakedPath = join(runDir, "leaked-file");
    const leaked = openSync(leakedPath, "w");
    try {
      const proc = Bun.spawn([requireBinary(), "--runtime", RUNC.path, "--runtime-dir", runDir, "--log-driver", "none", "--skip-fork"], {
        stdio: ["ignore", "ignore", "inherit", leaked],
      });
      try {
        await waitFor(() => existsSync(join(runDir, "conmon.sock")), 5000, "server socket");
        const targets = readdirSync(`/proc/${proc.pid}/fd`).map((fd) => {
          try {
            return readlinkSync(`/proc/${proc.pid}/fd/${fd}`);
          } catch {
            return "";
          }
        });
        expect(targets).not.toContain(leakedPath);
        // --skip-fork writes no pidfile.
        expect(existsSync(join(runDir, "pidfile"))).toBe(false);
      } finally {
        proc.kill("SIGTERM");
        expect(await proc.exited).toBe(0);
      }
      // Graceful shutdown removes the socket.
      expect(existsSync(join(runDir, "conmon.sock"))).toBe(false);
    } finally {
      closeSync(leaked);
      removeDir(runDir);
    }
  });

  test("a runtime dir longer than sun_path works, configured through env vars only", async () => {
    const base = tmpDir("conmon-long");
    const runDir = join(base, "a".repeat(60), "b".repeat(60), "c".repeat(20));
    expect(join(runDir, "conmon.sock").length).toBeGreaterThan(108);
    try {
      const launcher = Bun.spawn([requireBinary()], {
        env: { PATH: process.env.PATH!, CONMON_RUNTIME: RUNC.path, CONMON_RUNTIME_DIR: runDir, CONMON_LOG_DRIVER: "none" },
        stdio: ["ignore", "inherit", "inherit"],
      });
      expect(await launcher.exited).toBe(0);
      const pid = Number(readFileSync(join(runDir, "pidfile"), "utf8"));
      expect(readFileSync(join(runDir, "pidfile"), "utf8")).toMatch(/^\d+$/);
      const client = await ConmonClient.new({ conmonServerPath: BINARY, runtime: RUNC.path, serverRunDir: runDir });
      expect(client.pid).toBe(pid);
      await client.shutdown();
      // Its parent (the launcher) is gone, so init reaps it: a zombie is already dead.
      expect(pidExists(pid) ? readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]![0] : "gone").toMatch(/gone|Z/);
    } finally {
      removeDir(base);
    }
  });

  test("SIGTERM sent the moment the socket appears still shuts down cleanly (exit 0, socket removed), 15 times", async () => {
    const codes: (number | null)[] = [];
    for (let i = 0; i < 15; i++) {
      const runDir = tmpDir("conmon-early-signal");
      try {
        const proc = Bun.spawn([requireBinary(), "--runtime", RUNC.path, "--runtime-dir", runDir, "--skip-fork", "--log-driver", "none"], { stdout: "ignore" });
        const socket = join(runDir, "conmon.sock");
        while (!existsSync(socket) && proc.exitCode === null) await Bun.sleep(0);
        proc.kill("SIGTERM");
        codes.push(await proc.exited);
        expect(existsSync(socket)).toBe(false);
      } finally {
        removeDir(runDir);
      }
    }
    expect(codes).toEqual(Array(15).fill(0));
  });

  test("--log-driver stdout logs timestamped lines to stdout", async () => {
    const runDir = tmpDir("conmon-stdout");
    try {
      const proc = Bun.spawn([requireBinary(), "--runtime", RUNC.path, "--runtime-dir", runDir, "--log-driver", "stdout", "--skip-fork", "--log-level", "debug"], {
        stdout: "pipe",
      });
      await waitFor(() => existsSync(join(runDir, "conmon.sock")), 5000, "server socket");
      proc.kill("SIGINT");
      expect(await proc.exited).toBe(0);
      const out = await new Response(proc.stdout).text();
      expect(out).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z +INFO Using stdout logger$/m);
      expect(out).toContain("Set log level to: debug");
    } finally {
      removeDir(runDir);
    }
  });
});

describe("command line", () => {
  test("a usage error exits 2 with clap's text", () => {
    const r = run(["--x"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toStartWith("error: unexpected argument '--x' found");
  });

  test("--version-json carries upstream's keys", () => {
    const r = run(["--version-json", "full"]);
    expect(r.code).toBe(0);
    const json = JSON.parse(r.stdout);
    expect(Object.keys(json)).toEqual(["verbose", "version", "tag", "commit", "build_date", "target", "rust_version", "cargo_version", "cargo_tree"]);
    expect(json.verbose).toBe(true);
    expect(json.cargo_tree).toContain("citty");
    expect(JSON.parse(run(["-j"]).stdout).cargo_tree).toBe("");
  });

  test("--version prints one item per line", () => {
    const r = run(["-v"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^version: \d+\.\d+\.\d+\ntag: .+\ncommit: \w+\nbuild: [\d-]+ [\d:]+\ntarget: .+\nbun .+\nbun install .+\n$/);
  });

  test.each([
    [[], "--runtime flag not set"],
    [["--runtime", "/usr/sbin/runc"], "--runtime-dir flag not set"],
    [["--runtime", "/no/such/runtime", "--runtime-dir", "/tmp/x"], "--runtime '/no/such/runtime' does not exist"],
  ])("validation error %p", (args, message) => {
    const r = run(args);
    expect(r.code).toBe(1);
    expect(r.stderr).toStartWith("Error: create server");
    expect(r.stderr).toContain(message);
  });
});
