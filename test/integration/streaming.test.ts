// serveExecContainer / serveAttachContainer / servePortForwardContainer through the compiled
// binary, real runc and crun, busybox containers, WebSocket clients in TypeScript (Bun's) and in
// Python (Debian's python3-websockets, test/integration/streaming_client.py), and a network
// namespace made for the port-forward cases.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes, randomUUID } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { CgroupManager } from "../../src/client/index.ts";
import { makeBundle, type BundleOptions } from "../helpers/bundle.ts";
import { removeDir, tmpDir, uniqueId, waitFor } from "../helpers/proc.ts";
import { runtimes, spawnPrefix, type Runtime } from "../helpers/runtimes.ts";
import { startServer, type TestServer } from "../helpers/server.ts";

const CASE_MS = 30_000;
const PYTHON = "/usr/bin/python3";
const PY_CLIENT = join(import.meta.dir, "streaming_client.py");
const decoder = new TextDecoder();
const encoder = new TextEncoder();

const SUCCESS = '{"metadata":{},"status":"Success"}';
const exitStatus = (code: number) =>
  `{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status ${code}",` +
  `"reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"${code}"}]}}`;

/** A Kubernetes channel-protocol client on Bun's WebSocket. */
class ChannelClient {
  readonly ws: WebSocket;
  readonly messages: Array<{ channel: number; payload: Uint8Array }> = [];
  readonly opened: Promise<void>;
  readonly closed: Promise<{ code: number; reason: string }>;

  constructor(url: string, protocols: string[] = ["v5.channel.k8s.io", "v4.channel.k8s.io"]) {
    this.ws = new WebSocket(url.replace(/^http:/, "ws:"), protocols);
    this.ws.binaryType = "arraybuffer";
    this.opened = new Promise((resolve, reject) => {
      this.ws.addEventListener("open", () => resolve(), { once: true });
      this.ws.addEventListener("error", () => reject(new Error(`WebSocket to ${url} failed`)), { once: true });
    });
    this.closed = new Promise((resolve) => this.ws.addEventListener("close", (e) => resolve({ code: e.code, reason: e.reason }), { once: true }));
    this.ws.addEventListener("message", (e) => {
      const bytes = new Uint8Array(e.data as ArrayBuffer);
      this.messages.push({ channel: bytes[0]!, payload: bytes.subarray(1) });
    });
  }

  send(channel: number, data: string | Uint8Array = new Uint8Array()): void {
    const payload = typeof data === "string" ? encoder.encode(data) : data;
    const frame = new Uint8Array(payload.length + 1);
    frame[0] = channel;
    frame.set(payload, 1);
    this.ws.send(frame);
  }

  resize(width: number, height: number): void {
    this.send(4, JSON.stringify({ Width: width, Height: height }));
  }

  /** v5: no more stdin. */
  closeStdin(): void {
    this.ws.send(new Uint8Array([255, 0]));
  }

  text(channel: number): string {
    return decoder.decode(Buffer.concat(this.messages.filter((m) => m.channel === channel).map((m) => m.payload)));
  }

  channels(): number[] {
    return [...new Set(this.messages.map((m) => m.channel))].sort((a, b) => a - b);
  }

  /** The status (channel 3) as sent, or undefined. */
  status(): string | undefined {
    const m = this.messages.find((m) => m.channel === 3);
    return m && decoder.decode(m.payload);
  }

  waitForText(channel: number, needle: string, timeoutMs = 10_000): Promise<true> {
    return waitFor(() => this.text(channel).includes(needle), timeoutMs, `${JSON.stringify(needle)} on channel ${channel}`);
  }
}

/** The status line of a raw HTTP/1.1 request (the handshake headers are ours to choose). */
async function httpStatus(url: string, method: string, opts: { upgrade: boolean; protocol?: string }): Promise<number> {
  const u = new URL(url);
  const lines = [`${method} ${u.pathname}${u.search} HTTP/1.1`, `Host: ${u.host}`, "Content-Length: 0"];
  if (opts.upgrade) {
    lines.push("Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13", `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}`);
  } else {
    lines.push("Connection: close");
  }
  if (opts.protocol) lines.push(`Sec-WebSocket-Protocol: ${opts.protocol}`);
  const request = lines.join("\r\n") + "\r\n\r\n";
  return new Promise<number>((resolve, reject) => {
    let received = "";
    let settled = false;
    Bun.connect({
      hostname: u.hostname,
      port: Number(u.port),
      socket: {
        open: (s) => void s.write(request),
        data: (s, chunk) => {
          received += chunk.toString();
          const m = /^HTTP\/1\.1 (\d{3})/.exec(received);
          if (m && !settled) {
            settled = true;
            resolve(Number(m[1]));
            s.end();
          }
        },
        close: () => {
          if (!settled) reject(new Error(`connection closed before a status line: ${JSON.stringify(received)}`));
        },
        error: (_s, err) => {
          if (!settled) reject(err);
        },
      },
    }).catch(reject);
  });
}

/** Host pids whose argv is exactly `argv` (container processes are visible from the host). */
function pidsRunning(argv: string[]): number[] {
  const want = argv.join("\0") + "\0";
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, "utf8") === want) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

function run(argv: string[]): string {
  const r = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${argv.join(" ")} exited with ${r.exitCode}: ${r.stderr.toString().trim()}`);
  return r.stdout.toString();
}

async function pythonClient(args: string[]): Promise<any> {
  const proc = Bun.spawn([PYTHON, PY_CLIENT, ...args], { stdout: "pipe", stderr: "pipe" });
  const [code, out, err] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  if (code !== 0) throw new Error(`streaming_client.py exited with ${code}: ${err.trim()}`);
  return JSON.parse(out);
}

describe.each(runtimes())("streaming server with $name", (rt: Runtime) => {
  let server: TestServer;
  let work: string;
  /** A network namespace for the port-forward pod (made before the server, which crun runs in a
   * private mount namespace that must already see it). */
  const netns = `conmon-ts-pf-${randomBytes(4).toString("hex")}`;
  const netnsPath = `/var/run/netns/${netns}`;
  const containers: Array<{ remove(): Promise<void> }> = [];
  /** Runs `sleep` for the exec cases. */
  let sleeper: Awaited<ReturnType<typeof create>>;

  async function runtime(...args: string[]): Promise<number> {
    const proc = Bun.spawn([...spawnPrefix(rt), rt.path, `--root=${join(work, "root")}`, ...args], { stdout: "ignore", stderr: "ignore" });
    return proc.exited;
  }

  async function create(opts: BundleOptions & { stdin?: boolean }) {
    const id = uniqueId(`${rt.name}-st-`);
    const bundle = await makeBundle(opts);
    let created = false;
    const c = {
      id,
      async remove() {
        if (created) await runtime("delete", "--force", id);
        await bundle.cleanup();
      },
    };
    containers.push(c);
    await server.client.createContainer({
      id,
      bundlePath: bundle.dir,
      terminal: opts.terminal,
      stdin: opts.stdin,
      cgroupManager: CgroupManager.cgroupfs,
    });
    created = true;
    expect(await runtime("start", id)).toBe(0);
    return c;
  }

  function serveExec(command: string[], opts: { tty?: boolean; stdin?: boolean; stdout?: boolean; stderr?: boolean; id?: string } = {}) {
    return server.client.serveExecContainer({
      id: opts.id ?? sleeper.id,
      command,
      tty: opts.tty,
      stdin: opts.stdin,
      stdout: opts.stdout ?? true,
      stderr: opts.stderr ?? !opts.tty,
      cgroupManager: CgroupManager.cgroupfs,
    });
  }

  /** Runs an exec session to its end; returns the client. */
  async function execSession(command: string[], opts: Parameters<typeof serveExec>[1] & { protocols?: string[] } = {}) {
    const { url } = await serveExec(command, opts);
    const client = new ChannelClient(url, opts.protocols);
    await client.opened;
    return client;
  }

  beforeAll(async () => {
    work = tmpDir(`streaming-${rt.name}`);
    run(["ip", "netns", "add", netns]);
    run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"]);
    server = await startServer(rt, { runtimeRoot: join(work, "root"), logLevel: "info" });
    sleeper = await create({ args: ["sleep", "1000"] });
  });

  afterAll(async () => {
    try {
      for (const c of containers) await c.remove().catch(() => {});
      await server?.stop();
    } finally {
      Bun.spawnSync(["ip", "netns", "delete", netns]);
      removeDir(work);
    }
  });

  // ---- exec -------------------------------------------------------------------------------------

  test(
    "exec stdout/stderr without a tty, checked by the independent Python client",
    async () => {
      const { url } = await serveExec(["sh", "-c", "echo -n stdout && echo -n stderr >&2"]);
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/exec\/[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      const result = await pythonClient([
        "exec", url,
        "--protocol", "v5.channel.k8s.io", "--protocol", "v4.channel.k8s.io",
        "--expect-stdout", "stdout", "--expect-stderr", "stderr", "--expect-exit", "0",
      ]);
      expect(result.protocol).toBe("v5.channel.k8s.io");
      expect(result.stdout).toBe("stdout");
      expect(result.stderr).toBe("stderr");
      expect(result.status).toEqual({ metadata: {}, status: "Success" });
      expect(result.channels.at(-1)).toBe(3);
      expect(result.closeCode).toBe(1000);
    },
    CASE_MS,
  );

  test(
    "exec with a tty: everything on channel 1",
    async () => {
      const client = await execSession(["sh", "-c", "echo -n stdout && echo -n stderr >&2"], { tty: true, stderr: true });
      expect(await client.closed).toEqual({ code: 1000, reason: "done" });
      expect(client.text(1)).toBe("stdoutstderr");
      expect(client.channels()).toEqual([1, 3]);
      expect(client.status()).toBe(SUCCESS);
    },
    CASE_MS,
  );

  test(
    "exec stdin round trip through `cat`, ended by the v5 close of stdin",
    async () => {
      const client = await execSession(["cat"], { stdin: true });
      client.send(0, "hello ");
      client.send(0, "world\n");
      client.closeStdin();
      expect((await client.closed).code).toBe(1000);
      expect(client.text(1)).toBe("hello world\n");
      expect(client.status()).toBe(SUCCESS);
    },
    CASE_MS,
  );

  test(
    "exit status frames: 3 → NonZeroExitCode with cause ExitCode \"3\" (v5 and v4); 0 → Success",
    async () => {
      for (const protocols of [["v5.channel.k8s.io"], ["v4.channel.k8s.io"]]) {
        const failing = await execSession(["sh", "-c", "exit 3"], { protocols });
        expect(failing.ws.protocol).toBe(protocols[0]!);
        expect((await failing.closed).code).toBe(1000);
        expect(failing.status()).toBe(exitStatus(3));
      }
      const ok = await execSession(["true"]);
      expect((await ok.closed).code).toBe(1000);
      expect(ok.status()).toBe(SUCCESS);
    },
    CASE_MS,
  );

  test(
    "all output arrives before the status, also when there is a lot of it",
    async () => {
      const client = await execSession(["sh", "-c", "seq 1 100000; echo end >&2"]);
      expect((await client.closed).code).toBe(1000);
      const lines = client.text(1).split("\n");
      expect(lines.length).toBe(100001);
      expect(lines[99999]).toBe("100000");
      expect(client.text(2)).toBe("end\n");
      expect(client.messages.at(-1)!.channel).toBe(3);
    },
    CASE_MS,
  );

  test(
    "resize on a tty exec is seen by `stty size`",
    async () => {
      const client = await execSession(["sh", "-c", "read x; stty size"], { tty: true, stdin: true });
      client.resize(123, 45);
      client.send(0, "go\n");
      expect((await client.closed).code).toBe(1000);
      expect(client.text(1)).toContain("45 123");
    },
    CASE_MS,
  );

  test(
    "an exec whose client disconnects early is killed",
    async () => {
      const argv = ["sleep", String(900000 + Math.floor(Math.random() * 90000))];
      const client = await execSession(argv);
      await waitFor(() => pidsRunning(argv).length > 0, 10_000, "the exec'd sleep");
      client.ws.close();
      await waitFor(() => pidsRunning(argv).length === 0, 10_000, "the exec'd sleep to be killed");
      // Once it is reaped, the exec's pid file goes too.
      await waitFor(() => !readdirSync(server.runDir).some((f) => f.startsWith("exec_streaming")), 5_000, "the pid file to be removed");
    },
    CASE_MS,
  );

  test(
    "an exec the runtime cannot start: its complaint on channel 2, an InternalError status",
    async () => {
      const client = await execSession(["/no/such/binary"]);
      expect((await client.closed).code).toBe(1000);
      const status = JSON.parse(client.status()!);
      expect(status).toMatchObject({ metadata: {}, status: "Failure", reason: "InternalError", code: 500 });
      expect(status.message).toContain("runtime exec exited with");
      expect(client.text(2)).toContain("/no/such/binary");
    },
    CASE_MS,
  );

  test(
    "server shutdown ends a running exec session: close 1001 and the process killed",
    async () => {
      const second = await startServer(rt, { runtimeRoot: join(work, "root2"), logLevel: "info" });
      const id = uniqueId(`${rt.name}-sd-`);
      const bundle = await makeBundle({ args: ["sleep", "1000"] });
      const root2 = (...args: string[]) =>
        Bun.spawn([...spawnPrefix(rt), rt.path, `--root=${join(work, "root2")}`, ...args], { stdout: "ignore", stderr: "ignore" }).exited;
      try {
        await second.client.createContainer({ id, bundlePath: bundle.dir, cgroupManager: CgroupManager.cgroupfs });
        expect(await root2("start", id)).toBe(0);
        const argv = ["sleep", String(800000 + Math.floor(Math.random() * 90000))];
        const { url } = await second.client.serveExecContainer({ id, command: argv, stdout: true, cgroupManager: CgroupManager.cgroupfs });
        const client = new ChannelClient(url);
        await client.opened;
        await waitFor(() => pidsRunning(argv).length > 0, 10_000, "the exec'd sleep");
        await second.stop();
        expect((await client.closed).code).toBe(1001);
        await waitFor(() => pidsRunning(argv).length === 0, 10_000, "the exec'd sleep to be killed");
      } finally {
        await second.stop().catch(() => {});
        await root2("delete", "--force", id);
        await bundle.cleanup();
      }
    },
    CASE_MS,
  );

  test("exec and attach in an unknown container fail at RPC time", async () => {
    const id = uniqueId("missing-");
    await expect(serveExec(["true"], { id })).rejects.toThrow("child not available");
    await expect(server.client.serveAttachContainer({ id, stdout: true })).rejects.toThrow("child not available");
  });

  // ---- attach -----------------------------------------------------------------------------------

  test(
    "attach: two sessions each receive the live output of `watch -n0.5 echo test`",
    async () => {
      const c = await create({ args: ["watch", "-n0.5", "echo", "test"] });
      const sessions = await Promise.all([1, 2].map(() => server.client.serveAttachContainer({ id: c.id, stdout: true, stderr: true })));
      const clients = sessions.map(({ url }) => new ChannelClient(url));
      await Promise.all(clients.map((cl) => cl.opened));
      await Promise.all(clients.map((cl) => cl.waitForText(1, "test")));
      for (const cl of clients) cl.ws.close();
      await c.remove();
    },
    CASE_MS,
  );

  test(
    "attach: stdin reaches the container, and the session ends with Success when it exits",
    async () => {
      const c = await create({ args: ["sh", "-c", "read line; echo got $line"], stdin: true });
      const { url } = await server.client.serveAttachContainer({ id: c.id, stdin: true, stdout: true, stderr: true });
      const client = new ChannelClient(url);
      await client.opened;
      client.send(0, "bye\n");
      expect(await client.closed).toEqual({ code: 1000, reason: "done" });
      expect(client.text(1)).toBe("got bye\n");
      expect(client.status()).toBe(SUCCESS);
      await c.remove();
    },
    CASE_MS,
  );

  test(
    "attach: resize of a tty container is seen by `stty size`",
    async () => {
      const c = await create({ args: ["sh", "-c", "while true; do stty size; sleep 0.2; done"], terminal: true });
      const { url } = await server.client.serveAttachContainer({ id: c.id, stdout: true });
      const client = new ChannelClient(url);
      await client.opened;
      client.resize(132, 43);
      await client.waitForText(1, "43 132");
      client.ws.close();
      await c.remove();
    },
    CASE_MS,
  );

  // ---- tokens -----------------------------------------------------------------------------------

  test(
    "unknown and reused tokens → 404; a plain GET → 400 and a POST → 405 leave the token usable",
    async () => {
      const { url } = await serveExec(["echo", "ok"]);
      const origin = new URL(url).origin;
      expect(await httpStatus(`${origin}/exec/${randomUUID()}`, "GET", { upgrade: true })).toBe(404);
      expect(await httpStatus(`${origin}/nothing/here`, "GET", { upgrade: true })).toBe(404);
      expect(await httpStatus(url, "GET", { upgrade: false })).toBe(400);
      expect(await httpStatus(url, "POST", { upgrade: true })).toBe(405);
      // A token of another kind is unknown on this path.
      expect(await httpStatus(url.replace("/exec/", "/attach/"), "GET", { upgrade: true })).toBe(404);
      // Only SPDY offered: refused before the token is claimed.
      expect(await httpStatus(url, "GET", { upgrade: true, protocol: "SPDY/3.1+portforward.k8s.io" })).toBe(400);

      const client = new ChannelClient(url);
      await client.opened;
      expect((await client.closed).code).toBe(1000);
      expect(client.text(1)).toBe("ok\n");
      expect(await httpStatus(url, "GET", { upgrade: true })).toBe(404);
    },
    CASE_MS,
  );

  test(
    "at most 25 sessions wait: the 26th evicts the oldest",
    async () => {
      const urls: string[] = [];
      for (let i = 0; i < 26; i++) urls.push((await server.client.servePortForwardContainer({ netNsPath: "" })).url);
      expect(new Set(urls).size).toBe(26);
      expect(await httpStatus(`${urls[0]}?port=1`, "GET", { upgrade: true })).toBe(404);
      expect(await httpStatus(`${urls[1]}?port=1`, "GET", { upgrade: true })).toBe(101);
      // Without ports the request is refused before the token is claimed.
      expect(await httpStatus(urls[2]!, "GET", { upgrade: true })).toBe(400);
      expect(await httpStatus(`${urls[2]}?port=1`, "GET", { upgrade: true })).toBe(101);
    },
    CASE_MS,
  );

  // ---- port-forward -----------------------------------------------------------------------------

  describe("port-forward into the pod's network namespace", () => {
    let pod: Awaited<ReturnType<typeof create>>;
    const REQUEST = "GET / HTTP/1.0\r\n\r\n";

    beforeAll(async () => {
      // 8080: IPv4 only, 8081: IPv6 only (reached by the ::1 fallback), 8082: both.
      const script = [
        "mkdir -p /www && echo hello-from-the-pod > /www/index.html",
        "httpd -f -p 127.0.0.1:8080 -h /www &",
        "httpd -f -p [::1]:8081 -h /www &",
        "exec httpd -f -p 8082 -h /www",
      ].join("\n");
      pod = await create({ args: ["sh", "-c", script], namespaces: [{ type: "network", path: netnsPath }] });
      await waitFor(
        () => {
          const listening = run(["ip", "netns", "exec", netns, "ss", "-ltnH"]);
          return [":8080", ":8081", ":8082"].every((p) => listening.includes(p));
        },
        10_000,
        "httpd listening in the pod",
      );
    }, CASE_MS);

    test(
      "three ports in one session: IPv4-only, IPv6-only and dual-stack listeners",
      async () => {
        const { url } = await server.client.servePortForwardContainer({ netNsPath: netnsPath });
        expect(url).toMatch(/\/port-forward\/[0-9a-f-]{36}$/);
        const client = new ChannelClient(`${url}?port=8080&port=8081,8082`, ["v4.channel.k8s.io"]);
        await client.opened;
        expect(client.ws.protocol).toBe("v4.channel.k8s.io");
        for (const channel of [0, 2, 4]) client.send(channel, REQUEST);
        expect((await client.closed).code).toBe(1000);
        [8080, 8081, 8082].forEach((port, i) => {
          const prefix = [port & 0xff, port >> 8];
          const onData = client.messages.filter((m) => m.channel === 2 * i);
          const onError = client.messages.filter((m) => m.channel === 2 * i + 1);
          expect([...onData[0]!.payload]).toEqual(prefix);
          expect(onError.map((m) => [...m.payload])).toEqual([prefix]);
          const body = decoder.decode(Buffer.concat(onData.slice(1).map((m) => m.payload)));
          expect(body).toStartWith("HTTP/1.");
          expect(body).toContain("hello-from-the-pod");
        });
      },
      CASE_MS,
    );

    test(
      "IPv6-only port through the independent Python client",
      async () => {
        const { url } = await server.client.servePortForwardContainer({ netNsPath: netnsPath });
        const result = await pythonClient(["port-forward", url, "--port", "8081", "--protocol", "v4.channel.k8s.io", "--send", REQUEST]);
        expect(result.protocol).toBe("v4.channel.k8s.io");
        expect(result.data).toContain("hello-from-the-pod");
        expect(result.error).toBe("");
      },
      CASE_MS,
    );

    test(
      "a port nobody listens on in the pod (but the host does) → message on its error channel, close 1000",
      async () => {
        // Listening on the host proves the connection is made inside the pod's namespace.
        const host = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
        try {
          const { url } = await server.client.servePortForwardContainer({ netNsPath: netnsPath });
          const client = new ChannelClient(`${url}?port=${host.port}`, ["v4.channel.k8s.io"]);
          expect((await client.closed).code).toBe(1000);
          const error = decoder.decode(Buffer.concat(client.messages.filter((m) => m.channel === 1).slice(1).map((m) => m.payload)));
          expect(error).toContain(`error forwarding port ${host.port} in network namespace ${netnsPath}`);
          expect(error).toContain(`127.0.0.1:${host.port}: ECONNREFUSED`);
          expect(error).toContain(`[::1]:${host.port}: ECONNREFUSED`);
        } finally {
          host.stop(true);
        }
      },
      CASE_MS,
    );

    test("a network namespace path that does not exist fails the RPC", async () => {
      await expect(server.client.servePortForwardContainer({ netNsPath: `/var/run/netns/${netns}-missing` })).rejects.toThrow(
        /network namespace '.*-missing': .*no such file/i,
      );
    });
  });
});
