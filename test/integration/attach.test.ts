// AttachServer over a ContainerIO fed by a Bun.spawn'd process (streams mode), with clients on
// real SOCK_SEQPACKET connections driven by the same poller as the server.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { AttachServer, CLIENT_BACKLOG_LIMIT, decodeAttachPacket, type AttachOptions } from "../../src/attach.ts";
import { ContainerIO } from "../../src/container-io.ts";
import type { Logger } from "../../src/logger.ts";
import { closeQuietly, fdTarget, listOpenFds } from "../../ffi/fd.ts";
import { connectUnix, listenUnix, recvMsg, sendMsg, shutdownFd } from "../../ffi/socket.ts";
import { watch, watchedCount, type Watch } from "../../ffi/poller.ts";
import { pidExists, removeDir, tmpDir, waitFor } from "../helpers/proc.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const noop = () => {};
const silentLogger: Logger = { level: "off", trace: noop, debug: noop, info: noop, warn: noop, error: noop };
const ECHO_BOTH = `while read l; do echo "out $l"; echo "err $l" >&2; done`;

/** A client as the Go one: dial unixpacket, read packets with an 8193-byte buffer. */
class TestClient {
  readonly fd: number;
  readonly packets: Uint8Array[] = [];
  stdoutBytes = 0;
  stderrBytes = 0;
  private readonly stdout: Uint8Array[] = [];
  private readonly stderr: Uint8Array[] = [];
  private watch: Watch | null = null;
  private readonly buf = new Uint8Array(8193);
  /** False: count stdout bytes only (big transfers). */
  private readonly keepStdout: boolean;
  /** Set when the server closed the connection. */
  eof = false;

  constructor(path: string, opts: { keepStdout?: boolean; read?: boolean } = {}) {
    this.fd = connectUnix(path, "seqpacket");
    this.keepStdout = opts.keepStdout ?? true;
    if (opts.read ?? true) this.startReading();
  }

  startReading(): void {
    this.watch ??= watch(this.fd, { read: true }, () => this.drain());
  }

  get done(): boolean {
    return this.packets.length > 0 && this.packets.at(-1)![0] === 0;
  }

  text(stream: "stdout" | "stderr"): string {
    return decoder.decode(Buffer.concat(stream === "stdout" ? this.stdout : this.stderr));
  }

  stdoutBytesJoined(): Uint8Array {
    return new Uint8Array(Buffer.concat(this.stdout));
  }

  send(data: Uint8Array): void {
    expect(sendMsg(this.fd, data)).toBe(data.length);
  }

  close(): void {
    this.watch?.close();
    this.watch = null;
    closeQuietly(this.fd);
  }

  private drain(): void {
    for (;;) {
      const msg = recvMsg(this.fd, this.buf);
      if (msg === null) return;
      expect(msg.dataTruncated).toBe(false);
      if (msg.n === 0) {
        this.eof = true;
        this.watch?.close();
        this.watch = null;
        return;
      }
      const raw = this.buf.subarray(0, msg.n);
      const packet = decodeAttachPacket(raw);
      if (packet.kind === "stdout") {
        this.stdoutBytes += packet.data.length;
        if (this.keepStdout) this.stdout.push(packet.data.slice());
        this.packets.push(raw.slice(0, 1)); // the tag is enough to check the order
      } else if (packet.kind === "stderr") {
        this.stderrBytes += packet.data.length;
        this.stderr.push(packet.data.slice());
        this.packets.push(raw.slice(0, 1));
      } else {
        this.packets.push(raw.slice());
      }
    }
  }
}

type Running = { io: ContainerIO; proc: Subprocess; server: AttachServer };

const cleanups: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

let dir: string;
let fdsBefore: number[];
beforeAll(async () => {
  await Bun.spawn(["true"]).exited; // Bun opens some fds lazily on its first spawn
  dir = tmpDir("attach");
  fdsBefore = listOpenFds();
});
afterAll(async () => {
  expect(watchedCount()).toBe(0);
  const leaked = () => listOpenFds().filter((fd) => !fdsBefore.includes(fd));
  await waitFor(() => leaked().length === 0, 2000, "fds to be released").catch(() => {
    throw new Error(`leaked fds: ${leaked().map((fd) => `${fd} → ${fdTarget(fd)}`).join(", ")}`);
  });
  removeDir(dir);
});

let counter = 0;
const socketPath = () => join(dir, `c${++counter}`, "attach");

function options(overrides: Partial<AttachOptions> = {}): AttachOptions {
  return { stopAfterStdinEof: false, acceptsStdin: true, onStdinEof: () => {}, ...overrides };
}

/** A process whose stdio is a ContainerIO with an AttachServer; cleaned up after the test. */
async function setup(
  argv: string[],
  opts: { stdin?: boolean; attach?: Partial<AttachOptions>; path?: string } = {},
): Promise<Running> {
  const io = ContainerIO.streams({ stdin: opts.stdin ?? true });
  io.start();
  const server = await AttachServer.create(opts.path ?? socketPath(), io, options(opts.attach), silentLogger);
  const proc = Bun.spawn(argv, { stdio: io.childStdio });
  io.afterSpawn();
  cleanups.push(async () => {
    proc.kill("SIGKILL");
    await proc.exited;
    server.close();
    io.close();
  });
  return { io, proc, server };
}

async function connected(server: AttachServer, count: number): Promise<void> {
  await waitFor(() => server.clientCount === count, 3000, `${count} attach clients`);
}

function client(path: string, opts?: { keepStdout?: boolean; read?: boolean }): TestClient {
  const c = new TestClient(path, opts);
  cleanups.push(() => c.close());
  return c;
}

describe("attach socket", () => {
  test("stdin line → [2]'out hi\\n' and [3]'err hi\\n'", async () => {
    const { server } = await setup(["sh", "-c", ECHO_BOTH]);
    const c = client(server.socketPath);
    await connected(server, 1);
    c.send(encoder.encode("hi\n"));
    await waitFor(() => c.text("stdout") === "out hi\n" && c.text("stderr") === "err hi\n", 3000, "echo");
    expect(c.packets.map((p) => p[0]).sort()).toEqual([2, 3]);
  });

  test("packets are exactly 1 + payload bytes, at most 8192", async () => {
    const { server, io } = await setup(["sh", "-c", "read l; head -c 20000 /dev/zero | tr '\\0' a"]);
    const sizes: number[] = [];
    const c = client(server.socketPath, { read: false });
    await connected(server, 1);
    c.send(encoder.encode("go\n"));
    await io.ended;
    const buf = new Uint8Array(65536);
    for (;;) {
      const msg = recvMsg(c.fd, buf);
      if (msg === null || msg.n === 0) break;
      sizes.push(msg.n);
      if (buf[0] === 0) break;
    }
    expect(sizes.at(-1)).toBe(1); // [0]
    expect(sizes.every((n) => n <= 8192)).toBe(true);
    expect(sizes.slice(0, -1).reduce((a, b) => a + b - 1, 0)).toBe(20000);
  });

  test("binary stdin with NUL bytes arrives byte-exact (quirk Q9 fixed)", async () => {
    const { server, io } = await setup(["cat"], { attach: { stopAfterStdinEof: true } });
    const c = client(server.socketPath);
    await connected(server, 1);
    const blob = new Uint8Array(256 * 1024);
    crypto.getRandomValues(blob);
    blob.fill(0, 1000, 3000); // runs of NULs, and NULs at message boundaries
    blob[0] = 0;
    for (let off = 0; off < blob.length; off += 32 * 1024) {
      const piece = blob.subarray(off, off + 32 * 1024);
      while (sendMsg(c.fd, piece) === null) await Bun.sleep(1); // the client side may fill up
    }
    shutdownFd(c.fd, "write");
    await io.ended;
    await waitFor(() => c.done, 3000, "done packet");
    expect(c.stdoutBytesJoined()).toEqual(blob);
  }, 30_000);

  test("a 64 KiB stdin message is not truncated", async () => {
    const { server, io } = await setup(["cat"], { attach: { stopAfterStdinEof: true } });
    const c = client(server.socketPath);
    await connected(server, 1);
    const blob = new Uint8Array(64 * 1024).map((_, i) => i & 0xff);
    c.send(blob);
    shutdownFd(c.fd, "write");
    await io.ended;
    await waitFor(() => c.done, 3000, "done packet");
    expect(c.stdoutBytesJoined()).toEqual(blob);
  });

  test("a container slow to read stdin pauses the client instead of losing its input", async () => {
    const { server, io, proc } = await setup(["sh", "-c", "sleep 0.5; exec cat"], { attach: { stopAfterStdinEof: true } });
    // Count the echo on the io itself: this test is about stdin, not about a client keeping up.
    let echoed = 0;
    let sum = 0;
    io.subscribe({
      onData(stream, chunk) {
        if (stream !== "stdout") return;
        echoed += chunk.length;
        for (const byte of chunk) sum = (sum + byte) % 1_000_003;
      },
      onEnd() {},
    });
    const c = client(server.socketPath);
    await connected(server, 1);
    const total = 8 * 1024 * 1024; // twice the container stdin backlog
    const piece = new Uint8Array(64 * 1024);
    let expectedSum = 0;
    for (let off = 0; off < total; off += piece.length) {
      piece.fill((off / piece.length) % 251);
      for (const byte of piece) expectedSum = (expectedSum + byte) % 1_000_003;
      while (sendMsg(c.fd, piece) === null) await Bun.sleep(2);
    }
    shutdownFd(c.fd, "write");
    expect(await proc.exited).toBe(0);
    await io.ended;
    expect(echoed).toBe(total);
    expect(sum).toBe(expectedSum);
  }, 30_000);

  test("two clients both get every chunk", async () => {
    const { server } = await setup(["sh", "-c", ECHO_BOTH]);
    const a = client(server.socketPath);
    const b = client(server.socketPath);
    await connected(server, 2);
    const lines = Array.from({ length: 200 }, (_, i) => `line ${i}\n`);
    a.send(encoder.encode(lines.join("")));
    const expected = lines.map((l) => `out ${l}`).join("");
    await waitFor(() => a.text("stdout") === expected && b.text("stdout") === expected, 5000, "both clients");
    expect(b.text("stderr")).toBe(a.text("stderr"));
  });

  test("a client that never reads stalls neither the process nor a reading client", async () => {
    // 20 MB through `cat` in 100 KB bursts, each sent once the reading client has the previous
    // one: a pace a reader keeps up with, far more than the sleeper's bounded backlog holds.
    const bursts = 200;
    const burst = new Uint8Array(100_000).fill(0x61);
    const { server, proc, io } = await setup(["cat"]);
    const slow = client(server.socketPath, { read: false });
    const fast = client(server.socketPath, { keepStdout: false });
    await connected(server, 2);
    const rssBefore = process.memoryUsage().rss;
    for (let i = 1; i <= bursts; i++) {
      expect(io.writeStdin(burst)).toBe(true);
      await waitFor(() => fast.stdoutBytes === i * burst.length, 5000, `burst ${i} at the reading client`);
    }
    io.closeStdin();
    expect(await proc.exited).toBe(0);
    await io.ended;
    await waitFor(() => fast.done, 5000, "done packet for the reading client");
    const growthMiB = (process.memoryUsage().rss - rssBefore) / 2 ** 20;
    expect(fast.stdoutBytes).toBe(bursts * burst.length);
    expect(growthMiB).toBeLessThan(64);

    // The sleeper wakes up: it gets what fitted (its bounded backlog plus the socket buffer), then [0].
    slow.startReading();
    await waitFor(() => slow.done, 5000, "done packet for the slow client");
    expect(slow.stdoutBytes).toBeGreaterThan(0);
    expect(slow.stdoutBytes).toBeLessThan(CLIENT_BACKLOG_LIMIT + 2 * 1024 * 1024);
  }, 30_000);

  test("a firehose producer is never slowed: the process finishes, every client gets [0], memory stays bounded", async () => {
    const total = 20_000_000;
    const { server, proc, io } = await setup(["sh", "-c", `read l; head -c ${total} /dev/zero; echo end >&2`]);
    const slow = client(server.socketPath, { read: false });
    const fast = client(server.socketPath, { keepStdout: false });
    await connected(server, 2);
    const rssBefore = process.memoryUsage().rss;
    fast.send(encoder.encode("go\n"));
    expect(await proc.exited).toBe(0);
    await io.ended;
    await waitFor(() => fast.done, 10_000, "done packet for the reading client");
    const growthMiB = (process.memoryUsage().rss - rssBefore) / 2 ** 20;
    // The reading client shares this event loop with the server, so it cannot keep up with
    // `head` and loses what exceeds its backlog: by design the container never waits.
    console.log(`firehose: reading client got ${fast.stdoutBytes} of ${total} bytes; RSS growth ${growthMiB.toFixed(1)} MiB`);
    expect(fast.stdoutBytes).toBeGreaterThan(0);
    expect(fast.stdoutBytes).toBeLessThanOrEqual(total);
    expect(growthMiB).toBeLessThan(64);
    slow.startReading();
    await waitFor(() => slow.done, 5000, "done packet for the slow client");
    expect(slow.stdoutBytes).toBeLessThan(CLIENT_BACKLOG_LIMIT + 2 * 1024 * 1024);
  }, 30_000);

  test("stopAfterStdinEof: shutdown(SHUT_WR) closes the process's stdin", async () => {
    let eofs = 0;
    const { server, proc } = await setup(["cat"], { attach: { stopAfterStdinEof: true, onStdinEof: () => eofs++ } });
    const c = client(server.socketPath);
    await connected(server, 1);
    c.send(encoder.encode("abc"));
    shutdownFd(c.fd, "write");
    expect(await proc.exited).toBe(0);
    await waitFor(() => c.done, 3000, "done packet");
    expect(c.text("stdout")).toBe("abc");
    expect(eofs).toBe(1);
    // Sent EOF and got [0]: the server lets the connection go.
    await waitFor(() => server.clientCount === 0, 3000, "client released");
  });

  test("without stopAfterStdinEof a client's EOF leaves stdin open", async () => {
    let eofs = 0;
    const { server, proc } = await setup(["cat"], { attach: { onStdinEof: () => eofs++ } });
    const c = client(server.socketPath);
    await connected(server, 1);
    c.send(encoder.encode("abc"));
    shutdownFd(c.fd, "write");
    await waitFor(() => c.text("stdout") === "abc", 3000, "echo");
    await Bun.sleep(100);
    expect(pidExists(proc.pid) && proc.exitCode === null).toBe(true);
    expect(eofs).toBe(0);
    // A second client can still type.
    const d = client(server.socketPath);
    await waitFor(() => server.clientCount === 2, 3000, "second client");
    d.send(encoder.encode("def"));
    await waitFor(() => c.text("stdout") === "abcdef", 3000, "second echo");
  });

  test("acceptsStdin false: client input is discarded", async () => {
    const { server, proc } = await setup(["sh", "-c", "echo started; sleep 0.3; echo bye"], {
      stdin: false,
      attach: { acceptsStdin: false },
    });
    const c = client(server.socketPath);
    await connected(server, 1);
    c.send(encoder.encode("ignored\n"));
    expect(await proc.exited).toBe(0);
    await waitFor(() => c.done, 3000, "done packet");
    expect(c.text("stdout")).toContain("bye\n");
  });

  test("[0] comes after the process ends, after the rest of both streams (quirk Q10 fixed)", async () => {
    const { server } = await setup(["sh", "-c", "read l; echo a; exec 1>&-; sleep 0.2; echo late >&2"]);
    const c = client(server.socketPath);
    await connected(server, 1);
    c.send(encoder.encode("go\n"));
    await waitFor(() => c.done, 3000, "done packet");
    expect(c.text("stdout")).toBe("a\n");
    expect(c.text("stderr")).toBe("late\n"); // upstream sent [0] at stdout's EOF and lost this
    expect(c.packets.map((p) => p[0])).toEqual([2, 3, 0]);
    expect(c.packets.at(-1)!.length).toBe(1);
  });

  test("a client connecting after the output ended gets [0] at once, and no replay", async () => {
    const { server, io } = await setup(["sh", "-c", "echo before"], { stdin: false });
    await io.ended;
    const c = client(server.socketPath);
    await waitFor(() => c.done, 3000, "done packet");
    expect(c.packets.map((p) => p[0])).toEqual([0]);
  });

  test("the socket file is mode 0700", async () => {
    const { server } = await setup(["sleep", "5"]);
    const st = statSync(server.socketPath);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o700);
  });

  test("an existing socket path returns the server already listening there", async () => {
    const { server, io } = await setup(["sleep", "5"]);
    const again = await AttachServer.create(server.socketPath, io, options({ stopAfterStdinEof: true }), silentLogger);
    expect(again).toBe(server);
  });

  test("a stale socket file is replaced; a non-socket file is an error", async () => {
    const stale = socketPath();
    closeQuietly(listenUnix(stale, "seqpacket")); // bound, then nobody listens
    expect(existsSync(stale)).toBe(true);
    const { server } = await setup(["sh", "-c", ECHO_BOTH], { path: stale });
    const c = client(stale);
    await connected(server, 1);
    c.send(encoder.encode("x\n"));
    await waitFor(() => c.text("stdout") === "out x\n", 3000, "echo");

    const file = join(dir, "plain-file");
    writeFileSync(file, "");
    const io = ContainerIO.streams({ stdin: false });
    cleanups.push(() => io.close());
    await expect(AttachServer.create(file, io, options(), silentLogger)).rejects.toThrow("not a socket");
  });

  test("a socket path longer than 108 bytes works", async () => {
    const deep = join(dir, "d".repeat(60), "e".repeat(60));
    mkdirSync(deep, { recursive: true });
    const path = join(deep, "attach");
    expect(Buffer.byteLength(path)).toBeGreaterThan(108);
    const { server } = await setup(["sh", "-c", ECHO_BOTH], { path });
    expect(statSync(path).mode & 0o777).toBe(0o700);
    const c = client(path);
    await connected(server, 1);
    c.send(encoder.encode("long\n"));
    await waitFor(() => c.text("stdout") === "out long\n", 3000, "echo");
  });

  test("parent directories are created", async () => {
    const path = join(dir, "x", "y", "z", "attach");
    const { server } = await setup(["sleep", "5"], { path });
    expect(server.socketPath).toBe(path);
    expect(statSync(path).isSocket()).toBe(true);
  });

  test("close() removes the socket file and disconnects clients", async () => {
    const { server } = await setup(["sleep", "5"]);
    const c = client(server.socketPath);
    await connected(server, 1);
    server.close();
    expect(existsSync(server.socketPath)).toBe(false);
    expect(server.clientCount).toBe(0);
    await waitFor(() => c.eof, 3000, "client EOF");
    // The path is free again for a new server.
    const io = ContainerIO.streams({ stdin: false });
    const again = await AttachServer.create(server.socketPath, io, options(), silentLogger);
    expect(again).not.toBe(server);
    again.close();
    io.close();
  });

  test("a client that disconnects is released", async () => {
    const { server } = await setup(["sh", "-c", ECHO_BOTH]);
    const a = client(server.socketPath);
    const b = client(server.socketPath);
    await connected(server, 2);
    a.close();
    b.send(encoder.encode("1\n")); // output for a: the send fails (EPIPE) and a is dropped
    await waitFor(() => b.text("stdout") === "out 1\n", 3000, "echo");
    await connected(server, 1);
  });
});
