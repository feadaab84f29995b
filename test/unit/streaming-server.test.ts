// StreamingServer in this process: the HTTP rules around the tokens, attach fan-out over a real
// ContainerIO (a Bun.spawn'd shell instead of a container), port-forward in the host network
// namespace against local TCP servers, and shutdown. Exec needs a runtime: the integration suite.
import { afterEach, describe, expect, test } from "bun:test";
import { randomBytes, randomUUID } from "node:crypto";
import { createServer, type Server as NetServer } from "node:net";
import type { Subprocess } from "bun";
import { StreamingServer } from "../../src/streaming-server.ts";
import { ContainerIO } from "../../src/container-io.ts";
import type { Container } from "../../src/containers.ts";
import type { Logger } from "../../src/logger.ts";
import { SESSION_MAX_AGE_MS } from "../../src/streaming/sessions.ts";

const noop = () => {};
const log: Logger = { level: "off", trace: noop, debug: noop, info: noop, warn: noop, error: noop };
const decoder = new TextDecoder();

class ChildNotAvailable extends Error {
  constructor() {
    super("child not available");
  }
}

/** A "container": a shell on a real ContainerIO (pipes), as the attach tests of src/attach.ts do. */
function fakeContainer(id: string, script: string): { container: Container; proc: Subprocess } {
  const io = ContainerIO.streams({ stdin: true, log });
  const proc = Bun.spawn(["sh", "-c", script], { stdio: io.childStdio as any });
  io.afterSpawn();
  io.start();
  // As Containers.supervise: `exited` settles once the output drained (or briefly after the exit).
  const exited = proc.exited.then(async (code) => {
    await Promise.race([io.ended, Bun.sleep(200)]);
    return { code };
  });
  void exited.then(() => Promise.race([io.ended, Bun.sleep(500)])).then(() => io.close());
  return { container: { id, pid: proc.pid, io, log: {} as any, stdin: true, attachServers: new Set(), exited }, proc };
}

let now = 0;
let registry = new Map<string, Container>();
let streaming: StreamingServer;
const cleanups: (() => void | Promise<void>)[] = [];

function newServer(): StreamingServer {
  now = 0;
  registry = new Map();
  const containers = {
    get(id: string): Container {
      const c = registry.get(id);
      if (!c) throw new ChildNotAvailable();
      return c;
    },
  };
  streaming = new StreamingServer({ runtimeDir: "/nonexistent", runtime: "/bin/false" } as any, containers as any, { watch: async () => ({ code: 0 }) }, log, {
    sessions: { now: () => now },
  });
  cleanups.push(() => streaming.shutdown());
  return streaming;
}

afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

function call(handler: (params: any, results: any) => void, request: Record<string, unknown>): string {
  let response: any;
  handler({ request: { command: { length: 0, get: noop }, ...request } }, { _initResponse: () => (response = {}) });
  return response.url;
}

const serveAttach = (id: string) => call(streaming.handleServeAttach, { id, stdin: true, stdout: true, stderr: true });
const servePortForward = (netNsPath = "") => call(streaming.handleServePortForward, { netNsPath });

/** A channel-protocol client on Bun's WebSocket. */
class Client {
  readonly ws: WebSocket;
  readonly messages: Array<{ channel: number; payload: Uint8Array }> = [];
  readonly opened: Promise<void>;
  readonly closed: Promise<{ code: number; reason: string }>;
  private bytesOn = new Map<number, number>();

  constructor(url: string, protocols: string[] = ["v5.channel.k8s.io"], opts: { keep?: boolean } = {}) {
    this.ws = new WebSocket(url.replace(/^http:/, "ws:"), protocols);
    this.ws.binaryType = "arraybuffer";
    this.opened = new Promise((resolve, reject) => {
      this.ws.onopen = () => resolve();
      this.ws.onerror = () => reject(new Error("WebSocket failed"));
    });
    this.closed = new Promise((resolve) => (this.ws.onclose = (e) => resolve({ code: e.code, reason: e.reason })));
    this.ws.onmessage = (e) => {
      const bytes = new Uint8Array(e.data as ArrayBuffer);
      this.bytesOn.set(bytes[0]!, (this.bytesOn.get(bytes[0]!) ?? 0) + bytes.length - 1);
      if (opts.keep ?? true) this.messages.push({ channel: bytes[0]!, payload: bytes.subarray(1) });
    };
  }

  send(channel: number, data: string | Uint8Array): void {
    const payload = typeof data === "string" ? new TextEncoder().encode(data) : data;
    const frame = new Uint8Array(payload.length + 1);
    frame[0] = channel;
    frame.set(payload, 1);
    this.ws.send(frame);
  }

  bytes(channel: number): number {
    return this.bytesOn.get(channel) ?? 0;
  }

  text(channel: number): string {
    return decoder.decode(Buffer.concat(this.messages.filter((m) => m.channel === channel).map((m) => m.payload)));
  }

  /** Port-forward: what a channel carried after its port announcement (checked here). */
  afterPort(channel: number, port: number): string {
    const [first, ...rest] = this.messages.filter((m) => m.channel === channel);
    expect([...first!.payload]).toEqual([port & 0xff, port >> 8]);
    return decoder.decode(Buffer.concat(rest.map((m) => m.payload)));
  }

  async waitFor(predicate: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (!predicate()) {
      if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await Bun.sleep(5);
    }
  }
}

async function status(url: string, init: { method?: string; upgrade?: boolean; protocol?: string } = {}): Promise<number> {
  const headers: Record<string, string> = {};
  if (init.upgrade ?? true) {
    Object.assign(headers, { Connection: "Upgrade", Upgrade: "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": randomBytes(16).toString("base64") });
  }
  if (init.protocol) headers["Sec-WebSocket-Protocol"] = init.protocol;
  // Raw HTTP: fetch() does not let a request ask for an upgrade.
  const u = new URL(url);
  const head = [`${init.method ?? "GET"} ${u.pathname}${u.search} HTTP/1.1`, `Host: ${u.host}`, "Content-Length: 0", ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
  if (!(init.upgrade ?? true)) head.push("Connection: close");
  const socket = await Bun.connect({
    hostname: u.hostname,
    port: Number(u.port),
    socket: {
      data(s, chunk) {
        (s.data as any).received += chunk.toString();
      },
    },
    data: { received: "" } as any,
  });
  socket.write(head.join("\r\n") + "\r\n\r\n");
  for (let i = 0; i < 500 && !/^HTTP\/1\.1 \d{3}/.test((socket.data as any).received); i++) await Bun.sleep(2);
  socket.end();
  const m = /^HTTP\/1\.1 (\d{3})/.exec((socket.data as any).received);
  if (!m) throw new Error(`no status line: ${(socket.data as any).received}`);
  return Number(m[1]);
}

function tcpServer(onConnection: (socket: import("node:net").Socket) => void, host = "127.0.0.1"): Promise<{ port: number; server: NetServer }> {
  const server = createServer({ allowHalfOpen: true }, onConnection);
  cleanups.push(() => void server.close());
  return new Promise((resolve) => server.listen(0, host, () => resolve({ port: (server.address() as any).port, server })));
}

describe("RPC and HTTP rules", () => {
  test("the server starts with the first serve* call; urls name the kind and a fresh UUID", async () => {
    newServer();
    expect(streaming.origin).toBeUndefined();
    const url = servePortForward();
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/port-forward\/[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(url.startsWith(streaming.origin!)).toBe(true);
    expect(servePortForward()).not.toBe(url);
  });

  test("unknown container → child not available; bad network namespace path → RPC error", () => {
    newServer();
    expect(() => serveAttach("nope")).toThrow("child not available");
    expect(() => call(streaming.handleServeExec, { id: "nope", tty: false })).toThrow("child not available");
    expect(() => servePortForward("/nonexistent/netns")).toThrow(/network namespace '\/nonexistent\/netns'/);
  });

  test("404 / 400 / 405 before the token is claimed; expired after an hour", async () => {
    newServer();
    const url = servePortForward();
    const origin = streaming.origin!;
    expect(await status(`${origin}/`)).toBe(404);
    expect(await status(`${origin}/port-forward/${randomUUID()}?port=1`)).toBe(404);
    expect(await status(`${url}?port=1`, { upgrade: false })).toBe(400);
    expect(await status(`${url}?port=1`, { method: "POST" })).toBe(405);
    expect(await status(`${url}?port=1`, { method: "PUT" })).toBe(405);
    expect(await status(url)).toBe(400); // no port
    expect(await status(`${url}?port=99999`)).toBe(400);
    expect(await status(`${url}?port=1`, { protocol: "SPDY/3.1+portforward.k8s.io" })).toBe(400);
    expect(await status(url.replace("port-forward", "exec") + "?port=1")).toBe(404); // wrong kind
    now += SESSION_MAX_AGE_MS - 1;
    expect(await status(`${url}?port=1`, { protocol: "portforward.k8s.io" })).toBe(101);
    expect(await status(`${url}?port=1`)).toBe(404); // single use

    const late = servePortForward();
    now += SESSION_MAX_AGE_MS;
    expect(await status(`${late}?port=1`)).toBe(404);
  });
});

describe("attach", () => {
  test("every session gets every chunk; stdin and the v5 close; Success at the end", async () => {
    newServer();
    const { container } = fakeContainer("c1", 'while read line; do echo "out $line"; echo "err $line" >&2; done; echo bye');
    registry.set("c1", container);
    const clients = [new Client(serveAttach("c1")), new Client(serveAttach("c1"), ["v4.channel.k8s.io"])];
    await Promise.all(clients.map((c) => c.opened));
    expect(clients[1]!.ws.protocol).toBe("v4.channel.k8s.io");
    clients[0]!.send(0, "one\n");
    await Promise.all(clients.map((c) => c.waitFor(() => c.text(1) === "out one\n" && c.text(2) === "err one\n", "output of one")));
    clients[1]!.send(0, "two\n");
    await Promise.all(clients.map((c) => c.waitFor(() => c.text(1) === "out one\nout two\n", "output of two")));
    // v4 has no close channel: ignored. v5 closes this session's stdin only.
    clients[1]!.ws.send(new Uint8Array([255, 0]));
    clients[0]!.ws.send(new Uint8Array([255, 0]));
    clients[0]!.send(0, "ignored\n");
    clients[1]!.send(0, "three\n");
    await Promise.all(clients.map((c) => c.waitFor(() => c.text(1).includes("out three"), "output of three")));
    expect(clients[0]!.text(1)).not.toContain("ignored");
    container.io.closeStdin();
    for (const c of clients) {
      expect(await c.closed).toEqual({ code: 1000, reason: "done" });
      expect(c.text(1)).toBe("out one\nout two\nout three\nbye\n");
      expect(c.messages.at(-1)).toEqual({ channel: 3, payload: new TextEncoder().encode('{"metadata":{},"status":"Success"}') });
    }
  });

  test("only the requested streams are sent; a session to a container that is gone fails with a status", async () => {
    newServer();
    const { container, proc } = fakeContainer("c2", "read x; echo out; echo err >&2");
    registry.set("c2", container);
    const stderrOnly = new Client(call(streaming.handleServeAttach, { id: "c2", stdin: false, stdout: false, stderr: true }));
    const late = serveAttach("c2");
    await stderrOnly.opened;
    container.io.writeStdin(new TextEncoder().encode("go\n"));
    await proc.exited;
    expect((await stderrOnly.closed).code).toBe(1000);
    expect(stderrOnly.text(1)).toBe("");
    expect(stderrOnly.text(2)).toBe("err\n");
    registry.delete("c2");
    const gone = new Client(late);
    expect((await gone.closed).code).toBe(1000);
    expect(JSON.parse(gone.text(3))).toMatchObject({ status: "Failure", reason: "InternalError", message: "Internal error occurred: error attaching to container: child not available" });
  });

  test("a client that stops reading loses its own data, not the container's pace nor other sessions' status", async () => {
    newServer();
    // ~48 MiB of output as fast as the pipe takes it.
    const { container, proc } = fakeContainer("c3", "read x; head -c 50000000 /dev/zero; echo end >&2");
    registry.set("c3", container);
    const reader = new Client(serveAttach("c3"), undefined, { keep: false });
    // The stalled client: a raw TCP connection that completes the handshake and never reads again.
    const stalledUrl = new URL(serveAttach("c3"));
    const stalled = await Bun.connect({ hostname: stalledUrl.hostname, port: Number(stalledUrl.port), socket: { data() {} } });
    cleanups.push(() => void stalled.end());
    stalled.write(
      `GET ${stalledUrl.pathname} HTTP/1.1\r\nHost: ${stalledUrl.host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
        `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\n\r\n`,
    );
    stalled.pause(); // stop reading: the kernel buffers fill, then the server's queue, then it drops
    await reader.opened;
    await Bun.sleep(50);
    const started = performance.now();
    container.io.writeStdin(new TextEncoder().encode("go\n"));
    expect(await proc.exited).toBe(0);
    expect(performance.now() - started).toBeLessThan(10_000);
    expect((await reader.closed).code).toBe(1000);
    expect(reader.bytes(2)).toBe(4);
  }, 30_000);
});

describe("port-forward (host network namespace)", () => {
  test("echo of 8 MiB both ways with a half-close; port announcements; close 1000 when the port ends", async () => {
    newServer();
    const { port } = await tcpServer((socket) => {
      socket.pipe(socket); // echo; ends our side when the client's FIN arrives
    });
    const client = new Client(`${servePortForward()}?port=${port}`, ["v4.channel.k8s.io"], { keep: false });
    await client.opened;
    const chunk = new Uint8Array(64 * 1024).fill(0x61);
    const total = 128 * chunk.length;
    for (let sent = 0; sent < total; sent += chunk.length) client.send(0, chunk);
    client.ws.send(new Uint8Array([255, 0])); // half-close towards the pod
    expect((await client.closed).code).toBe(1000);
    expect(client.bytes(0)).toBe(total + 2);
    expect(client.bytes(1)).toBe(2);
  }, 30_000);

  test("IPv6-only listener through the ::1 fallback; a refused port reports on its error channel", async () => {
    newServer();
    const v6 = await tcpServer((socket) => socket.end("hello over v6"), "::1");
    const refused = await tcpServer(() => {});
    const refusedPort = refused.port;
    await new Promise((resolve) => refused.server.close(resolve));
    const client = new Client(`${servePortForward()}?port=${v6.port}&port=${refusedPort}`, ["v4.channel.k8s.io"]);
    expect((await client.closed).code).toBe(1000);
    expect(client.afterPort(0, v6.port)).toBe("hello over v6");
    expect(client.afterPort(1, v6.port)).toBe("");
    expect(client.afterPort(2, refusedPort)).toBe("");
    expect(client.afterPort(3, refusedPort)).toBe(
      `error forwarding port ${refusedPort}: connect to 127.0.0.1:${refusedPort}: ECONNREFUSED (Connection refused); ` +
        `connect to [::1]:${refusedPort}: ECONNREFUSED (Connection refused)`,
    );
  });

  test("the client closing the WebSocket closes the TCP connection", async () => {
    newServer();
    let closedByServer!: () => void;
    const tcpClosed = new Promise<void>((resolve) => (closedByServer = resolve));
    const { port } = await tcpServer((socket) => {
      socket.on("end", () => closedByServer());
      socket.on("close", () => closedByServer());
      socket.write("hi");
    });
    const client = new Client(`${servePortForward()}?port=${port}`, ["v4.channel.k8s.io"]);
    await client.waitFor(() => client.messages.filter((m) => m.channel === 0).length > 1, "data from the port");
    client.ws.close();
    await tcpClosed;
  });
});

test("shutdown closes open sessions with 1001 and stops listening", async () => {
  newServer();
  const { port } = await tcpServer(() => {});
  const client = new Client(`${servePortForward()}?port=${port}`, ["v4.channel.k8s.io"]);
  await client.opened;
  const origin = streaming.origin!;
  await streaming.shutdown();
  expect((await client.closed).code).toBe(1001);
  await expect(status(`${origin}/x`)).rejects.toThrow();
  expect(() => servePortForward()).toThrow("start streaming server if required: the server is shutting down");
});
