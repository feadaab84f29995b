// systemd Type=notify: the compiled server, started with --skip-fork as the unit starts it, tells a
// datagram socket standing in for systemd's NOTIFY_SOCKET that it is ready (once conmon.sock
// accepts) and that it is stopping, on a filesystem path and on an abstract address; and it
// keeps NOTIFY_SOCKET from its children (runc would otherwise proxy the container's readiness).
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { CgroupManager, ConmonClient } from "../../src/client/index.ts";
import { abstractSockaddr } from "../../ffi/notify.ts";
import { bindDgram, closeFd, recvMsg } from "../../ffi/index.ts";
import { SdNotifier, sendNotification } from "../../src/sd-notify.ts";
import { errorChain } from "../../src/errors.ts";
import type { Logger } from "../../src/logger.ts";
import { makeBundle } from "../helpers/bundle.ts";
import { removeDir, tmpDir, uniqueId, waitFor, waitForFile } from "../helpers/proc.ts";
import { runtime } from "../helpers/runtimes.ts";
import { requireBinary } from "../helpers/server.ts";

// Real processes and runc: keep clear of bun's 5 s default when the machine is busy.
setDefaultTimeout(30_000);

const PYTHON = "/usr/bin/python3";
const RUNC = runtime("runc");
const decoder = new TextDecoder();

/** Parses one notification ("A=1\nB=2\n") into its assignments. */
function parseNotification(text: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const eq = line.indexOf("=");
    fields[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return fields;
}

interface Receiver {
  /** Notifications received so far, in order. */
  readonly messages: Record<string, string>[];
  next(what: string, timeoutMs?: number): Promise<Record<string, string>>;
  close(): void;
}

/** A datagram socket bound at a filesystem path, read through our own ffi. */
function pathReceiver(path: string): Receiver {
  const fd = bindDgram(path);
  const buf = new Uint8Array(4096);
  const messages: Record<string, string>[] = [];
  let consumed = 0;
  const drain = () => {
    for (let m = recvMsg(fd, buf); m !== null; m = recvMsg(fd, buf)) messages.push(parseNotification(decoder.decode(buf.subarray(0, m.n))));
  };
  return {
    messages,
    async next(what, timeoutMs = 10_000) {
      await waitFor(() => (drain(), messages.length > consumed), timeoutMs, what);
      return messages[consumed++]!;
    },
    close: () => closeFd(fd),
  };
}

// An independent implementation of the receiving side: if our sockaddr for "@name" were off by
// the trailing NUL, python's bind of "\0name" would be a different address and nothing would arrive.
const PY_RECEIVER = `
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\\0" + sys.argv[1])
print(json.dumps("bound"), flush=True)
while True:
    print(json.dumps(s.recv(4096).decode()), flush=True)
`;

/** A python3 process bound to the abstract address "@<name>", printing what it receives. */
async function abstractReceiver(name: string): Promise<Receiver> {
  const proc = Bun.spawn([PYTHON, "-u", "-c", PY_RECEIVER, name], { stdout: "pipe", stderr: "inherit" });
  const messages: Record<string, string>[] = [];
  let consumed = 0;
  let bound = false;
  void (async () => {
    let pending = "";
    for await (const chunk of proc.stdout) {
      pending += decoder.decode(chunk);
      for (let nl = pending.indexOf("\n"); nl !== -1; nl = pending.indexOf("\n")) {
        const value = JSON.parse(pending.slice(0, nl)) as string;
        pending = pending.slice(nl + 1);
        if (value === "bound") bound = true;
        else messages.push(parseNotification(value));
      }
    }
  })();
  await waitFor(() => bound || proc.exitCode !== null, 10_000, "python receiver to bind");
  if (!bound) throw new Error(`python receiver exited with ${proc.exitCode} before binding @${name}`);
  return {
    messages,
    async next(what, timeoutMs = 10_000) {
      await waitFor(() => messages.length > consumed, timeoutMs, what);
      return messages[consumed++]!;
    },
    close: () => proc.kill(),
  };
}

/** The compiled server as the unit starts it: --skip-fork, log to journald (or nowhere), NOTIFY_SOCKET set. */
function startNotifyingServer(notifySocket: string, runDir: string, runtimeRoot: string) {
  return Bun.spawn(
    [requireBinary(), "--runtime", RUNC!.path, "--runtime-dir", runDir, "--runtime-root", runtimeRoot, "--skip-fork", "--log-driver", "none"],
    { env: { PATH: process.env.PATH!, NOTIFY_SOCKET: notifySocket }, stdio: ["ignore", "ignore", "inherit"] },
  );
}

function silentLogger(): Logger & { warnings: string[] } {
  const warnings: string[] = [];
  const noop = () => {};
  return { level: "info", trace: noop, debug: noop, info: noop, error: noop, warn: (m: string) => warnings.push(m), warnings };
}

describe.skipIf(RUNC === undefined)("server notifies NOTIFY_SOCKET", () => {
  let work: string;
  beforeAll(() => {
    work = tmpDir("sdnotify");
  });
  afterAll(() => removeDir(work));

  test("path socket: READY=1 and MAINPID once conmon.sock accepts, no NOTIFY_SOCKET for runc or the container, STOPPING=1 on SIGTERM", async () => {
    const receiver = pathReceiver(join(work, "notify.sock"));
    const runDir = join(work, "run-path");
    const root = join(work, "root");
    const server = startNotifyingServer(join(work, "notify.sock"), runDir, root);
    const bundle = await makeBundle({ args: ["env"] });
    const id = uniqueId("notify-");
    try {
      const ready = await receiver.next("READY=1");
      expect(ready.READY).toBe("1");
      expect(ready.MAINPID).toBe(String(server.pid));
      expect(ready.STATUS).toBe(`Serving ${join(runDir, "conmon.sock")}`);
      // Ready means accepting: a client that did not find a server would start its own one, so
      // the pid it reports proves it talked to this server.
      const client = await ConmonClient.new({ runtime: RUNC!.path, serverRunDir: runDir });
      expect(client.pid).toBe(server.pid);

      const exitFile = join(work, `${id}.exit`);
      const logFile = join(work, `${id}.log`);
      await client.createContainer({
        id, bundlePath: bundle.dir, exitPaths: [exitFile], logDrivers: [{ type: "cri", path: logFile }], cgroupManager: CgroupManager.cgroupfs,
      });
      // runc sets up notify-socket proxying (a socket in its state dir) only when it inherits NOTIFY_SOCKET.
      expect(existsSync(join(root, id, "notify"))).toBe(false);
      const start = Bun.spawnSync([RUNC!.path, `--root=${root}`, "start", id], { stderr: "pipe", timeout: 10_000 });
      expect(start.stderr.toString()).toBe("");
      expect(start.exitCode).toBe(0);
      expect(await waitForFile(exitFile, 10_000)).toBe("0");
      const log = readFileSync(logFile, "utf8");
      expect(log).toContain("PATH=/bin:/sbin:/usr/bin:/usr/sbin");
      expect(log).not.toContain("NOTIFY_SOCKET");
      client.resetConnection();

      server.kill("SIGTERM");
      const stopping = await receiver.next("STOPPING=1");
      expect(stopping.STOPPING).toBe("1");
      expect(await server.exited).toBe(0);
      // Exactly the two notifications, nothing from runc in between.
      expect(receiver.messages.map((m) => Object.keys(m)[0])).toEqual(["READY", "STOPPING"]);
    } finally {
      server.kill("SIGKILL");
      Bun.spawnSync([RUNC!.path, `--root=${root}`, "delete", "--force", id], { stderr: "ignore" });
      receiver.close();
      await bundle.cleanup();
    }
  });

  test.skipIf(!existsSync(PYTHON))("abstract socket (@name): READY=1, MAINPID and STOPPING=1 reach a python3 receiver", async () => {
    const name = `conmon-ts-test-${uniqueId().slice(0, 16)}`;
    const receiver = await abstractReceiver(name);
    const server = startNotifyingServer(`@${name}`, join(work, "run-abstract"), join(work, "root"));
    try {
      const ready = await receiver.next("READY=1");
      expect(ready).toMatchObject({ READY: "1", MAINPID: String(server.pid) });
      expect(existsSync(join(work, "run-abstract", "conmon.sock"))).toBe(true);
      server.kill("SIGTERM");
      expect((await receiver.next("STOPPING=1")).STOPPING).toBe("1");
      expect(await server.exited).toBe(0);
    } finally {
      server.kill("SIGKILL");
      receiver.close();
    }
  });
});

describe("sd-notify module", () => {
  test("fromEnv takes NOTIFY_SOCKET out of the environment it reads", () => {
    const env: Record<string, string | undefined> = { NOTIFY_SOCKET: "/run/systemd/notify", OTHER: "x" };
    const notifier = SdNotifier.fromEnv(silentLogger(), env);
    expect(notifier?.address).toBe("/run/systemd/notify");
    expect(env).toEqual({ OTHER: "x" });
    expect(SdNotifier.fromEnv(silentLogger(), {})).toBeUndefined();
  });

  test("an unsupported address is logged, removed from the env, and not used", () => {
    for (const address of ["relative/notify", "vsock:2:1234", "@"]) {
      const log = silentLogger();
      const env: Record<string, string | undefined> = { NOTIFY_SOCKET: address };
      expect(SdNotifier.fromEnv(log, env)).toBeUndefined();
      expect(env.NOTIFY_SOCKET).toBeUndefined();
      expect(log.warnings.join("\n")).toContain(`unsupported NOTIFY_SOCKET '${address}'`);
    }
  });

  test("the abstract address is NUL + name, its length counting no terminator", () => {
    const { addr, len } = abstractSockaddr("abc");
    expect(len).toBe(2 + 1 + 3);
    expect([...addr.subarray(0, len)]).toEqual([1, 0, 0, 0x61, 0x62, 0x63]);
  });

  test("a send to a path nobody listens on fails with the address and the errno", async () => {
    const dir = tmpDir("sdnotify-none");
    try {
      const chain = (p: Promise<void>) => p.then(() => "sent", errorChain);
      expect(await chain(sendNotification(join(dir, "absent.sock"), ["READY=1"]))).toMatch(/^notify '.*absent\.sock' \(READY=1\): .*(ENOENT|ECONNREFUSED)/);
      expect(await chain(sendNotification("@conmon-ts-nobody-listens-here", ["READY=1"]))).toMatch(/^notify '@conmon-ts-nobody-listens-here' \(READY=1\): .*ECONNREFUSED/);
    } finally {
      removeDir(dir);
    }
  });

  test("a socket path longer than sun_path still receives (sent through its directory)", async () => {
    const base = tmpDir("sdnotify-long");
    try {
      const deep = join(base, "d".repeat(60), "e".repeat(60));
      const receiver = pathReceiver(join(deep, "notify.sock"));
      try {
        expect(join(deep, "notify.sock").length).toBeGreaterThan(108);
        await sendNotification(join(deep, "notify.sock"), ["READY=1", "MAINPID=42"]);
        expect(await receiver.next("long-path notification")).toEqual({ READY: "1", MAINPID: "42" });
      } finally {
        receiver.close();
      }
    } finally {
      removeDir(base);
    }
  });
});
