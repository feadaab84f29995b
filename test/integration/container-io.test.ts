// ContainerIO against real fds: pipes fed by Bun.spawn'd processes, a pty handed over a console
// socket by an in-process fake runtime, and (when installed) runc with a terminal bundle.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, statSync } from "node:fs";
import { BUSY_PIPE_SIZE, ContainerIO, STDIN_BACKLOG_LIMIT, type OutputSubscriber, type StreamName } from "../../src/container-io.ts";
import { closeQuietly, dupFd, fdTarget, getPipeSize, listOpenFds, readFd, setNonBlocking, writeAll } from "../../ffi/fd.ts";
import { connectUnix, sendMsg } from "../../ffi/socket.ts";
import { watchedCount } from "../../ffi/poller.ts";
import { getWindowSize, openPty } from "../../ffi/tty.ts";
import { makeBundle } from "../helpers/bundle.ts";
import { removeDir, tmpDir, uniqueId, waitFor } from "../helpers/proc.ts";
import { runtime } from "../helpers/runtimes.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Collects everything a ContainerIO emits (copies: chunks are only lent). */
class Collector implements OutputSubscriber {
  readonly chunks: Record<StreamName, Uint8Array[]> = { stdout: [], stderr: [] };
  readonly ends: StreamName[] = [];
  onData(stream: StreamName, chunk: Uint8Array): void {
    this.chunks[stream].push(chunk.slice());
  }
  onEnd(stream: StreamName): void {
    this.ends.push(stream);
  }
  text(stream: StreamName): string {
    return decoder.decode(Buffer.concat(this.chunks[stream]));
  }
}

function spawnWith(io: ContainerIO, argv: string[]) {
  const proc = Bun.spawn(argv, { stdio: io.childStdio });
  io.afterSpawn();
  return proc;
}

/** Fails with the leaked fds' targets if any fd opened since `before` is still open, or if a
 * poller watch is left over. */
async function expectNoFdLeak(before: number[]): Promise<void> {
  expect(watchedCount()).toBe(0);
  const leaked = () => listOpenFds().filter((fd) => !before.includes(fd));
  try {
    await waitFor(() => leaked().length === 0, 2000, "fds to be released");
  } catch {
    const detail = leaked().map((fd) => `${fd} → ${safeTarget(fd)}`);
    throw new Error(`leaked fds: ${detail.join(", ")}`);
  }
}

function safeTarget(fd: number): string {
  try {
    return fdTarget(fd);
  } catch {
    return "?";
  }
}

let fdsBefore: number[];

beforeAll(async () => {
  // Warm up whatever Bun opens lazily on the first spawn, so it is not counted as a leak.
  await Bun.spawn(["true"]).exited;
});

describe("streams mode", () => {
  beforeAll(() => {
    fdsBefore = listOpenFds();
  });
  afterAll(async () => {
    await expectNoFdLeak(fdsBefore);
  });

  test("stdout and stderr arrive through real pipes; echo > /dev/stdout works (no ENXIO)", async () => {
    const io = ContainerIO.streams({ stdin: false });
    expect(io.terminal).toBe(false);
    const [, outFd, errFd] = io.childStdio;
    expect(fdTarget(outFd as number)).toStartWith("pipe:");
    expect(fdTarget(errFd as number)).toStartWith("pipe:");
    const seen = new Collector();
    io.subscribe(seen);
    const logged: string[] = [];
    io.start({ write: (stream, chunk) => logged.push(`${stream}:${decoder.decode(chunk)}`) });
    const proc = spawnWith(io, ["sh", "-c", "echo x > /dev/stdout; echo y >&2"]);
    expect(await proc.exited).toBe(0);
    await io.ended;
    expect(seen.text("stdout")).toBe("x\n");
    expect(seen.text("stderr")).toBe("y\n");
    expect(seen.ends.sort()).toEqual(["stderr", "stdout"]);
    expect(logged.sort()).toEqual(["stderr:y\n", "stdout:x\n"]);
    io.close();
  });

  test("a stream that fills its pipe gets a bigger pipe; a quiet one keeps the default", async () => {
    const io = ContainerIO.streams({ stdin: false });
    const [, outFd, errFd] = io.childStdio;
    // Our own references to the pipes (closed below, so the streams still end).
    const out = dupFd(outFd as number);
    const err = dupFd(errFd as number);
    let received = 0;
    io.subscribe({ onData: (_s, chunk) => void (received += chunk.length), onEnd() {} });
    io.start();
    const proc = spawnWith(io, ["head", "-c", "4000000", "/dev/zero"]);
    try {
      expect(await proc.exited).toBe(0);
      await waitFor(() => received === 4_000_000, 5000, "all output");
      expect(getPipeSize(out)).toBe(BUSY_PIPE_SIZE);
      expect(getPipeSize(err)).toBe(64 * 1024);
    } finally {
      closeQuietly(out);
      closeQuietly(err);
    }
    await io.ended;
    io.close();
  });

  test("50 MB of output arrives complete with bounded RSS", async () => {
    const total = 50_000_000;
    const io = ContainerIO.streams({ stdin: false });
    let received = 0;
    let nonZero = 0;
    let peakRss = 0;
    let chunks = 0;
    io.subscribe({
      onData(_stream, chunk) {
        received += chunk.length;
        if (chunk[0] !== 0 || chunk[chunk.length - 1] !== 0) nonZero++;
        if (++chunks % 64 === 0) peakRss = Math.max(peakRss, process.memoryUsage().rss);
      },
      onEnd() {},
    });
    Bun.gc(true);
    const rssBefore = process.memoryUsage().rss;
    io.start();
    const started = performance.now();
    const proc = spawnWith(io, ["head", "-c", String(total), "/dev/zero"]);
    await io.ended;
    const seconds = (performance.now() - started) / 1000;
    expect(await proc.exited).toBe(0);
    expect(received).toBe(total);
    expect(nonZero).toBe(0);
    const growthMiB = (peakRss - rssBefore) / 2 ** 20;
    console.log(
      `read path: ${(total / 1e6 / seconds).toFixed(0)} MB/s, ${chunks} chunks (avg ${(total / chunks / 1024).toFixed(1)} KiB), RSS growth ${growthMiB.toFixed(1)} MiB`,
    );
    expect(growthMiB).toBeLessThan(32); // the payload is 48 MiB: nothing may accumulate
    io.close();
  }, 30_000);

  test("stdin: cat echoes what writeStdin sent; closeStdin gives EOF", async () => {
    const io = ContainerIO.streams({ stdin: true });
    expect(fdTarget(io.childStdio[0] as number)).toStartWith("pipe:");
    const seen = new Collector();
    io.subscribe(seen);
    io.start();
    const proc = spawnWith(io, ["cat"]);
    const blob = new Uint8Array(300_000).map((_, i) => (i * 7) % 256); // more than a pipe holds
    expect(io.writeStdin(encoder.encode("hello\n"))).toBe(true);
    expect(io.writeStdin(blob)).toBe(true);
    io.closeStdin();
    expect(io.writeStdin(encoder.encode("late"))).toBe(false);
    expect(await proc.exited).toBe(0);
    await io.ended;
    const out = Buffer.concat(seen.chunks.stdout);
    expect(out.subarray(0, 6).toString()).toBe("hello\n");
    expect(new Uint8Array(out.subarray(6))).toEqual(blob);
    io.close();
  });

  test("stdin backlog is bounded when the process never reads", async () => {
    const io = ContainerIO.streams({ stdin: true });
    io.start();
    const proc = spawnWith(io, ["sleep", "30"]);
    const piece = new Uint8Array(64 * 1024);
    let accepted = 0;
    while (io.writeStdin(piece)) {
      accepted += piece.length;
      if (accepted > 4 * STDIN_BACKLOG_LIMIT) break;
    }
    expect(accepted).toBeGreaterThanOrEqual(STDIN_BACKLOG_LIMIT - piece.length);
    expect(accepted).toBeLessThanOrEqual(STDIN_BACKLOG_LIMIT + 1024 * 1024); // backlog + pipe buffer
    expect(io.stdinBacklog).toBeLessThanOrEqual(STDIN_BACKLOG_LIMIT);
    proc.kill("SIGKILL");
    await proc.exited;
    await io.ended;
    io.close();
  });

  test("writeStdin without stdin, and after the process exited, returns false", async () => {
    const none = ContainerIO.streams({ stdin: false });
    expect(none.childStdio[0]).toBe("inherit");
    expect(none.writeStdin(encoder.encode("x"))).toBe(false);
    none.close();

    const io = ContainerIO.streams({ stdin: true });
    io.start();
    const proc = spawnWith(io, ["true"]);
    await proc.exited;
    await io.ended;
    // The first write may still fit into the pipe; once the reader is gone EPIPE ends stdin.
    let refused = false;
    for (let i = 0; i < 3 && !refused; i++) refused = !io.writeStdin(encoder.encode("x"));
    expect(refused).toBe(true);
    io.close();
  });

  test("setWindowSize on streams: container has no terminal", () => {
    const io = ContainerIO.streams({ stdin: false });
    expect(() => io.setWindowSize(20, 10)).toThrow("container has no terminal");
    io.close();
  });

  test("a late subscriber learns about ends that already happened; close() ends the rest", async () => {
    const io = ContainerIO.streams({ stdin: false });
    io.start();
    const proc = spawnWith(io, ["true"]);
    await proc.exited;
    await io.ended;
    const late = new Collector();
    io.subscribe(late);
    await Bun.sleep(0);
    expect(late.ends.sort()).toEqual(["stderr", "stdout"]);
    io.close();

    const never = ContainerIO.streams({ stdin: true });
    const seen = new Collector();
    never.subscribe(seen);
    never.close(); // never spawned: the child ends are released too
    await never.ended;
    expect(seen.ends.sort()).toEqual(["stderr", "stdout"]);
  });
});

/** What a runtime does with --console-socket: connect, send the pty master with a name, hang up. */
function fakeRuntimeSendsPty(socketPath: string, greeting = "/dev/ptmx") {
  const pty = openPty();
  const conn = connectUnix(socketPath, "stream");
  try {
    expect(sendMsg(conn, encoder.encode(greeting), [pty.master])).toBe(greeting.length);
  } finally {
    closeQuietly(conn);
    closeQuietly(pty.master); // the receiver has its own copy now
  }
  return pty;
}

/** Reads what is available on a non-blocking fd, polling until `predicate` holds. */
async function readUntil(fd: number, predicate: (text: string) => boolean, what: string): Promise<string> {
  const buf = new Uint8Array(4096);
  let text = "";
  await waitFor(() => {
    for (;;) {
      const n = readFd(fd, buf);
      if (n <= 0) break;
      text += decoder.decode(buf.subarray(0, n));
    }
    return predicate(text);
  }, 3000, what);
  return text;
}

const never = new Promise<never>(() => {});

describe("terminal mode", () => {
  beforeAll(() => {
    fdsBefore = listOpenFds();
  });
  afterAll(async () => {
    await expectNoFdLeak(fdsBefore);
  });

  test("pty over the console socket: ONLCR output, stdin, window size, EIO end", async () => {
    const io = await ContainerIO.terminal({ stdin: true });
    expect(io.terminal).toBe(true);
    const path = io.consoleSocketPath!;
    expect(path).toMatch(/\/conmon-term-[0-9a-f-]{36}\.sock$/);
    const st = statSync(path);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o700);
    expect(io.childStdio).toEqual(["ignore", "ignore", "ignore"]);
    expect(() => io.setWindowSize(20, 10)).toThrow("terminal not connected");
    expect(io.writeStdin(encoder.encode("early"))).toBe(false);

    const seen = new Collector();
    io.subscribe(seen);
    io.start(); // before the pty: reading begins once it arrives

    const { slave } = fakeRuntimeSendsPty(path);
    await io.waitForPty(never);
    expect(existsSync(path)).toBe(false); // removed once the runtime connected

    writeAll(slave, encoder.encode("a\n"));
    await waitFor(() => seen.text("stdout") === "a\r\n", 3000, "a\\r\\n from the pty");

    io.setWindowSize(20, 10);
    expect(getWindowSize(slave)).toEqual({ rows: 20, cols: 10 });

    setNonBlocking(slave);
    expect(io.writeStdin(encoder.encode("typed\n"))).toBe(true);
    expect(await readUntil(slave, (t) => t.includes("typed\n"), "stdin on the slave")).toBe("typed\n");

    closeQuietly(slave); // the container's side is gone: the master reads EIO
    await io.ended;
    expect(seen.ends.sort()).toEqual(["stderr", "stdout"]);
    expect(seen.chunks.stderr).toEqual([]);
    io.setWindowSize(30, 40); // the master stays usable until close()
    io.close();
  });

  test("a pty's hang-up is seen on the next SIGCHLD, not after the 1 s safety poll", async () => {
    const io = await ContainerIO.terminal({ stdin: false });
    io.start();
    const { slave } = fakeRuntimeSendsPty(io.consoleSocketPath!);
    await io.waitForPty(never);
    await Bun.sleep(50); // let the poller settle: no re-poll is pending any more
    closeQuietly(slave); // no SIGIO for this on a pty master
    const started = performance.now();
    await Bun.spawn(["true"]).exited; // a child exit: SIGCHLD, as a container exit gives the server
    await io.ended;
    expect(performance.now() - started).toBeLessThan(500);
    io.close();
  });

  test("drainNow() finds the hang-up at once", async () => {
    const io = await ContainerIO.terminal({ stdin: false });
    io.start();
    const { slave } = fakeRuntimeSendsPty(io.consoleSocketPath!);
    await io.waitForPty(never);
    await Bun.sleep(50);
    closeQuietly(slave);
    io.drainNow();
    expect(await Promise.race([io.ended.then(() => "ended"), Bun.sleep(0).then(() => "pending")])).toBe("ended");
    io.close();
  });

  test("crun's greeting (a single space) is accepted too", async () => {
    const io = await ContainerIO.terminal({ stdin: false });
    const { slave } = fakeRuntimeSendsPty(io.consoleSocketPath!, " ");
    await io.waitForPty(never);
    expect(io.writeStdin(encoder.encode("x"))).toBe(false); // no stdin asked for
    closeQuietly(slave);
    io.close();
  });

  test("waitForPty rejects when the runtime exits without connecting", async () => {
    const io = await ContainerIO.terminal({ stdin: false });
    const path = io.consoleSocketPath!;
    const runtimeProc = Bun.spawn(["sh", "-c", "echo 'bad bundle' >&2; exit 1"], { stderr: "ignore" });
    await expect(io.waitForPty(runtimeProc.exited)).rejects.toThrow(
      "runtime exited without connecting to the console socket",
    );
    io.close();
    expect(existsSync(path)).toBe(false);
  });

  test("fd sent right before the runtime exited is still picked up", async () => {
    const io = await ContainerIO.terminal({ stdin: false });
    const { slave } = fakeRuntimeSendsPty(io.consoleSocketPath!);
    // The poller has not run yet: only the synchronous last look can find the fd.
    await io.waitForPty(Promise.resolve());
    io.setWindowSize(5, 6);
    expect(getWindowSize(slave)).toEqual({ rows: 5, cols: 6 });
    closeQuietly(slave);
    io.close();
  });

  test("a runtime that connects and hangs up without an fd: got no file descriptor", async () => {
    const io = await ContainerIO.terminal({ stdin: false });
    closeQuietly(connectUnix(io.consoleSocketPath!, "stream"));
    await expect(io.waitForPty(never)).rejects.toThrow("got no file descriptor");
    io.close();
  });

  test("close() before the runtime connects releases the socket and rejects waiters", async () => {
    const io = await ContainerIO.terminal({ stdin: true });
    const path = io.consoleSocketPath!;
    const waiting = io.waitForPty(never);
    io.close();
    await expect(waiting).rejects.toThrow("closed");
    expect(existsSync(path)).toBe(false);
    await io.ended;
  });

  test("the console socket honours $TMPDIR", async () => {
    const dir = tmpDir("cio-tmpdir");
    const saved = process.env.TMPDIR;
    process.env.TMPDIR = dir;
    try {
      const io = await ContainerIO.terminal({ stdin: false });
      expect(io.consoleSocketPath!.startsWith(`${dir}/conmon-term-`)).toBe(true);
      io.close();
    } finally {
      if (saved === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = saved;
      removeDir(dir);
    }
  });
});

const runc = runtime("runc");

describe.skipIf(runc === undefined)("with runc", () => {
  const root = tmpDir("cio-runc");
  afterAll(() => removeDir(root));

  async function runcState(id: string): Promise<string> {
    const proc = Bun.spawn([runc!.path, `--root=${root}`, "state", id], { stdio: ["ignore", "pipe", "ignore"] });
    const [text] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
    return (JSON.parse(text) as { status: string }).status;
  }

  async function runcCmd(args: string[]): Promise<number> {
    return Bun.spawn([runc!.path, `--root=${root}`, ...args], { stdio: ["ignore", "ignore", "ignore"] }).exited;
  }

  test("terminal container: output via the pty, resize, stdin", async () => {
    const bundle = await makeBundle({
      args: ["sh", "-c", "echo ready; read line; stty size; echo got $line"],
      terminal: true,
    });
    const id = uniqueId("cio-");
    const io = await ContainerIO.terminal({ stdin: true });
    try {
      const seen = new Collector();
      io.subscribe(seen);
      io.start();
      const proc = Bun.spawn(
        [runc!.path, `--root=${root}`, "run", "-d", "--console-socket", io.consoleSocketPath!, "--bundle", bundle.dir, id],
        { stdio: ["ignore", "ignore", "pipe"] },
      );
      io.afterSpawn();
      await io.waitForPty(proc.exited);
      expect(await proc.exited).toBe(0);
      await waitFor(() => seen.text("stdout").includes("ready\r\n"), 10_000, "ready");
      io.setWindowSize(20, 10);
      expect(io.writeStdin(encoder.encode("go\n"))).toBe(true);
      await waitFor(async () => (await runcState(id)) === "stopped", 10_000, "container stopped");
      // The test process is not the container's subreaper, so no SIGCHLD: ask explicitly.
      io.drainNow();
      expect(await Promise.race([io.ended.then(() => "ended"), Bun.sleep(200).then(() => "pending")])).toBe("ended");
      const out = seen.text("stdout");
      expect(out).toContain("20 10\r\n");
      expect(out).toContain("got go\r\n");
    } finally {
      io.close();
      await runcCmd(["delete", "-f", id]);
      await bundle.cleanup();
    }
  }, 30_000);

  test("streams container: /dev/stdout works inside the container", async () => {
    const bundle = await makeBundle({ args: ["sh", "-c", "echo x > /dev/stdout; echo y > /dev/stderr"] });
    const id = uniqueId("cio-");
    const io = ContainerIO.streams({ stdin: false });
    try {
      const seen = new Collector();
      io.subscribe(seen);
      io.start();
      // Without a terminal, `run -d` hands its own stdio (our pipes) to the container.
      const proc = spawnWith(io, [runc!.path, `--root=${root}`, "run", "-d", "--bundle", bundle.dir, id]);
      expect(await proc.exited).toBe(0);
      await io.ended;
      expect(seen.text("stdout")).toBe("x\n");
      expect(seen.text("stderr")).toBe("y\n");
    } finally {
      io.close();
      await runcCmd(["delete", "-f", id]);
      await bundle.cleanup();
    }
  }, 30_000);
});
