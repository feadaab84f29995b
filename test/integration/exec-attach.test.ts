// execSyncContainer, attachContainer and setWindowSizeContainer through the compiled binary, our
// client, and real runc and crun: upstream's Go suite cases plus the (binary stdin, slow
// attach client, exec memory, exec never shadowing or logging into the container).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CgroupManager } from "../../src/client/index.ts";
import { DetachError, DetachScanner, closeAttaches, type AttachConfig } from "../../src/client/attach.ts";
import type { ExecContainerResult, ExecSyncConfig } from "../../src/client/exec.ts";
import { closeQuietly, listOpenFds } from "../../ffi/fd.ts";
import { watchedCount } from "../../ffi/poller.ts";
import { connectUnix, recvMsg, sendMsg } from "../../ffi/socket.ts";
import { makeBundle, type BundleOptions } from "../helpers/bundle.ts";
import { childrenOf, procState, removeDir, rssAnonKiB, tmpDir, uniqueId, waitFor, waitForFile } from "../helpers/proc.ts";
import { runtimes, spawnPrefix, type Runtime } from "../helpers/runtimes.ts";
import { startServer, type TestServer } from "../helpers/server.ts";

const decoder = new TextDecoder();
const text = (bytes: Uint8Array) => decoder.decode(bytes);
const CTRL_P = 16;
const CTRL_Q = 17;
/** Per-case limit: runc execs take ~55 ms each, and a 2-core box may be busy. */
const CASE_MS = 20_000;

/** stdin for attachContainer: chunks pushed by the test, ended by it. */
class Pushable implements AsyncIterable<Uint8Array> {
  private readonly queue: Uint8Array[] = [];
  private ended = false;
  private wake: (() => void) | null = null;

  push(chunk: Uint8Array | string): void {
    this.queue.push(typeof chunk === "string" ? new TextEncoder().encode(chunk) : chunk);
    this.wake?.();
  }

  end(): void {
    this.ended = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    for (;;) {
      while (this.queue.length > 0) yield this.queue.shift()!;
      if (this.ended) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = null;
    }
  }
}

/** Collects one output stream of an attach. */
class Sink {
  private readonly chunks: Uint8Array[] = [];
  readonly write = (chunk: Uint8Array) => void this.chunks.push(chunk);
  text(): string {
    return text(Buffer.concat(this.chunks));
  }
  waitFor(needle: string | RegExp, what: string, timeoutMs = 10_000): Promise<unknown> {
    return waitFor(() => (typeof needle === "string" ? this.text().includes(needle) : needle.test(this.text())), timeoutMs, `${what}; got ${JSON.stringify(this.text().slice(-300))}`);
  }
}

/** A promise the test awaits only later: its rejection meanwhile must not count as unhandled
 * (Bun then fails the test at once, and its `finally` cleanup may never run). */
function awaitedLater<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {});
  return p;
}

const CRI_LINE = /^\S+ (stdout|stderr) ([FP]) ([^\n]*)$/;

/** The stream's text reassembled from a CRI log (P records joined, F records end a line). */
function criText(path: string, stream: "stdout" | "stderr" = "stdout"): string {
  let out = "";
  for (const line of readFileSync(path, "utf8").split("\n")) {
    if (line === "") continue;
    const m = CRI_LINE.exec(line);
    if (!m) throw new Error(`not a CRI record: ${JSON.stringify(line.slice(0, 200))}`);
    if (m[1] !== stream) continue;
    out += m[3]! + (m[2] === "F" ? "\n" : "");
  }
  return out;
}

describe.each(runtimes())("exec-sync and attach with $name", (rt: Runtime) => {
  let server: TestServer;
  let work: string;
  /** A running `sleep` container for the exec cases. */
  let sleeper: Awaited<ReturnType<typeof create>>;
  const runtimeRoot = () => join(work, "root");

  /** `runtime <args>` as the engine runs it (crun in the same private mount namespace as the server). */
  async function runtime(...args: string[]): Promise<{ code: number; stderr: string }> {
    const proc = Bun.spawn([...spawnPrefix(rt), rt.path, `--root=${runtimeRoot()}`, ...args], { stdout: "ignore", stderr: "pipe" });
    const code = await proc.exited;
    return { code, stderr: await new Response(proc.stderr).text() };
  }

  async function create(opts: BundleOptions & { stdin?: boolean; start?: boolean }) {
    const id = uniqueId(`${rt.name}-`);
    const bundle = await makeBundle(opts);
    const dir = join(work, id.slice(0, 24));
    const exitFile = join(dir, "exit");
    const log = join(dir, "ctr.log");
    Bun.spawnSync(["mkdir", "-p", dir]);
    let created = false;
    const c = {
      id,
      dir,
      exitFile,
      log,
      attachPath: join(dir, "attach"),
      async start() {
        const r = await runtime("start", id);
        expect(r.stderr).toBe("");
        expect(r.code).toBe(0);
      },
      exitCode(timeoutMs = 10_000): Promise<string> {
        return waitForFile(exitFile, timeoutMs);
      },
      async remove() {
        if (created) await runtime("delete", "--force", id);
        await bundle.cleanup();
      },
    };
    try {
      await server.client.createContainer({
        id,
        bundlePath: bundle.dir,
        terminal: opts.terminal,
        stdin: opts.stdin,
        exitPaths: [exitFile],
        logDrivers: [{ type: "cri", path: log }],
        cgroupManager: CgroupManager.cgroupfs,
      });
      created = true;
      if (opts.start ?? true) await c.start();
    } catch (err) {
      await c.remove();
      throw err;
    }
    return c;
  }

  function exec(cfg: Partial<ExecSyncConfig> & { command: string[] }): Promise<ExecContainerResult> {
    return server.client.execSyncContainer({ id: sleeper.id, cgroupManager: CgroupManager.cgroupfs, ...cfg });
  }

  beforeAll(async () => {
    work = tmpDir(`exat-${rt.name}`);
    // crun 1.8.1 has no --log-level: keep the server at info.
    server = await startServer(rt, { runtimeRoot: join(work, "root"), logLevel: "info" });
    sleeper = await create({ args: ["sleep", "1000"] });
  });
  afterAll(async () => {
    await sleeper?.remove();
    await server?.stop();
    removeDir(work);
  });

  // ---- exec ------------------------------------------------------------------------------------

  for (const terminal of [false, true]) {
    for (const timeoutSec of [0, 10]) {
      test(`exec \`echo -n hello world\` (terminal ${terminal}, timeout ${timeoutSec})`, async () => {
        const res = await exec({ command: ["/busybox", "echo", "-n", "hello world"], terminal, timeoutSec });
        expect(text(res.stdout)).toBe("hello world");
        expect(text(res.stderr)).toBe("");
        expect(res.exitCode).toBe(0);
        expect(res.timedOut).toBe(false);
      }, CASE_MS);
    }
  }

  test("exec `/busybox invalid`: 127 with the error on stderr, or on stdout with \\r\\n on a terminal", async () => {
    const plain = await exec({ command: ["/busybox", "invalid"] });
    expect(plain.exitCode).toBe(127);
    expect(text(plain.stderr)).toBe("invalid: applet not found\n");
    expect(text(plain.stdout)).toBe("");
    const tty = await exec({ command: ["/busybox", "invalid"], terminal: true });
    expect(tty.exitCode).toBe(127);
    expect(text(tty.stdout)).toBe("invalid: applet not found\r\n");
    expect(text(tty.stderr)).toBe("");
  }, CASE_MS);

  // The deadline starts when `runtime exec -d` has returned (as upstream), and on a busy 2-core box
  // the runtime alone can take more than 0.5 s. So the upper bound is measured from the moment the
  // runtime was gone: that is when the exec'd `sleep 5` is re-parented to the server (its
  // subreaper), seen by polling the server's children every 5 ms. (Watching the runtime process
  // itself missed crun, which can come and go between two polls.) The lower bound is from the call.
  test("exec `sleep 5` with timeout 3: timedOut, -3, answered 3 s after the runtime returned, the process is gone", async () => {
    const serverPid = server.client.pid;
    let runtimeGoneAt: number | undefined;
    const spy = setInterval(() => {
      if (runtimeGoneAt !== undefined) return;
      for (const child of childrenOf(serverPid)) {
        let argv: string[];
        try {
          argv = readFileSync(`/proc/${child}/cmdline`, "utf8").split("\0");
        } catch {
          continue;
        }
        if (argv.length === 3 && argv[0]!.endsWith("sleep") && argv[1] === "5") runtimeGoneAt = performance.now();
      }
    }, 5);
    const started = performance.now();
    const res = await exec({ command: ["sleep", "5"], timeoutSec: 3 }).finally(() => clearInterval(spy));
    const answeredAt = performance.now();
    expect(res.timedOut).toBe(true);
    expect(res.exitCode).toBe(-3);
    expect(answeredAt - started).toBeGreaterThanOrEqual(3000);
    expect(runtimeGoneAt).toBeDefined();
    const sinceRuntimeDone = answeredAt - runtimeGoneAt!;
    expect(sinceRuntimeDone).toBeGreaterThanOrEqual(3000 - 10); // the 5 ms polling
    expect(sinceRuntimeDone).toBeLessThan(3500);
    const ps = await exec({ command: ["ps", "-o", "pid,args"] });
    expect(ps.exitCode).toBe(0);
    expect(text(ps.stdout)).toMatch(/ sleep 1000$/m);
    expect(text(ps.stdout)).not.toMatch(/ sleep 5$/m);
  }, CASE_MS);

  test("exec in an unknown container answers -2 (not an RPC error)", async () => {
    const res = await exec({ id: uniqueId("missing-"), command: ["true"] });
    expect(res).toEqual({ exitCode: -2, stdout: new Uint8Array(), stderr: new Uint8Array(), timedOut: false });
  }, CASE_MS);

  test("10 parallel execs each get their own output", async () => {
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => exec({ command: ["/busybox", "echo", "-n", `hello world ${i}`] })));
    results.forEach((res, i) => {
      expect(res.exitCode).toBe(0);
      expect(text(res.stdout)).toBe(`hello world ${i}`);
    });
  }, CASE_MS);

  test("50 parallel execs on one container, and 10 on each of 10 containers", async () => {
    const one = await Promise.all(
      Array.from({ length: 50 }, (_, i) => exec({ command: ["sh", "-c", `echo out-${i}; echo err-${i} >&2; exit ${i % 7}`] })),
    );
    one.forEach((res, i) => {
      expect({ i, code: res.exitCode, out: text(res.stdout), err: text(res.stderr) }).toEqual({ i, code: i % 7, out: `out-${i}\n`, err: `err-${i}\n` });
    });
    const containers = await Promise.all(Array.from({ length: 10 }, () => create({ args: ["sleep", "1000"] })));
    try {
      const results = await Promise.all(
        containers.flatMap((c, ci) =>
          Array.from({ length: 10 }, (_, i) =>
            server.client
              .execSyncContainer({ id: c.id, command: ["sh", "-c", `echo ${ci}-${i}`], cgroupManager: CgroupManager.cgroupfs })
              .then((res) => ({ ci, i, res })),
          ),
        ),
      );
      for (const { ci, i, res } of results) {
        expect({ ci, i, code: res.exitCode, out: text(res.stdout) }).toEqual({ ci, i, code: 0, out: `${ci}-${i}\n` });
      }
      expect(results.length).toBe(100);
    } finally {
      await Promise.all(containers.map((c) => c.remove()));
    }
  }, 60_000);

  // Under load `runtime exec -d` can exit long after the exec'd process: that process is then our
  // zombie before the server has read the pid file. The child reaper sweeps unwatched zombies
  // after a grace period (1 s), and its exit status would be lost (answered as -1). A runtime that
  // lingers 1.5 s after every exec makes this deterministic.
  test("an exec whose runtime lingers after the process exited still answers its exit code", async () => {
    const wrapper = join(work, `${rt.name}-lingering`);
    writeFileSync(wrapper, `#!/bin/sh\n"${rt.path}" "$@"\nrc=$?\ncase " $* " in *" exec "*) sleep 1.5;; esac\nexit $rc\n`, { mode: 0o755 });
    const own = await startServer({ name: rt.name, path: wrapper }, { runtimeRoot: runtimeRoot(), logLevel: "info" });
    const bundle = await makeBundle({ args: ["sleep", "1000"] });
    const id = uniqueId(`${rt.name}-linger-`);
    try {
      await own.client.createContainer({ id, bundlePath: bundle.dir, cgroupManager: CgroupManager.cgroupfs });
      expect((await runtime("start", id)).code).toBe(0);
      const results = await Promise.all(
        [3, 0, 7].map((code) => own.client.execSyncContainer({ id, command: ["sh", "-c", `echo x${code}; exit ${code}`], cgroupManager: CgroupManager.cgroupfs })),
      );
      expect(results.map((r) => [r.exitCode, text(r.stdout)])).toEqual([[3, "x3\n"], [0, "x0\n"], [7, "x7\n"]]);
    } finally {
      await runtime("delete", "--force", id);
      await bundle.cleanup();
      await own.stop();
    }
  }, CASE_MS);

  test("exec output never reaches the container's log, and the container is not shadowed by an exec", async () => {
    const c = await create({ args: ["sh", "-c", "echo container-line; sleep 1000"] });
    try {
      await waitFor(() => existsSync(c.log) && readFileSync(c.log, "utf8").includes("container-line"), 5000, "the container's own line");
      const running = server.client.execSyncContainer({ id: c.id, command: ["sh", "-c", "echo exec-out; echo exec-err >&2; sleep 1"], cgroupManager: CgroupManager.cgroupfs });
      await Bun.sleep(300); // the exec is running now
      // Upstream's registry returns the newest entry for an id (Q6): reopen would hit the exec.
      await server.client.reopenLogContainer({ id: c.id });
      const res = await running;
      expect(text(res.stdout)).toBe("exec-out\n");
      expect(text(res.stderr)).toBe("exec-err\n");
      await server.client.reopenLogContainer({ id: c.id });
      const tty = await server.client.execSyncContainer({ id: c.id, command: ["echo", "tty-exec"], terminal: true, cgroupManager: CgroupManager.cgroupfs });
      expect(text(tty.stdout)).toBe("tty-exec\r\n");
      await Bun.sleep(100);
      // Reopen truncated the log (upstream Q3); either way no exec output may be in it.
      const log = readFileSync(c.log, "utf8");
      expect(log).not.toContain("exec-out");
      expect(log).not.toContain("exec-err");
      expect(log).not.toContain("tty-exec");
    } finally {
      await c.remove();
    }
  }, CASE_MS);

  test("exec pid files are removed from the runtime dir", async () => {
    const pidFiles = () => readdirSync(server.runDir).filter((f) => /^exec_sync.*pid$/.test(f));
    await Promise.all([exec({ command: ["true"] }), exec({ command: ["false"] }), exec({ command: ["true"], terminal: true })]);
    await exec({ command: ["sleep", "5"], timeoutSec: 1 });
    await exec({ id: uniqueId("missing-"), command: ["true"] });
    // The server removes them just after answering.
    await waitFor(() => pidFiles().length === 0, 2000, "exec pid files removed");
    expect(pidFiles()).toEqual([]);
  }, CASE_MS);

  // What this measures, and why so: RssAnon of a Bun process is not monotonic. (1) A fresh
  // server's first ~50 execs add ~2 MB (JIT tiers, heap sizing) and then it plateaus, so 20
  // warm-up execs are not enough when the case runs alone. (2) Garbage collection makes a
  // sawtooth of ~1.5 MB over ~50-100 execs; a single sample before and after can land on a trough
  // and a peak. Measured with a preload that forces a full GC every 200 execs: the JS heap and its
  // object counts stay flat over 3000 execs (no JS leak). So: 100 warm-up execs, then one sample
  // after every exec, and the floor (min) of the first 80 samples is compared with the floor of
  // the 80 samples that come 200 execs later. A leak of 10 KB per exec still fails this.
  test("200 sequential execs of `true` grow the server's RssAnon by less than 2 MB", async () => {
    const pid = server.client.pid;
    const WARMUP = 100;
    const WINDOW = 80;
    const execTrue = async () => expect((await exec({ command: ["true"] })).exitCode).toBe(0);
    for (let i = 0; i < WARMUP; i++) await execTrue();
    const samples: number[] = [];
    for (let i = 0; i < 200 + WINDOW; i++) {
      await execTrue();
      samples.push(rssAnonKiB(pid));
    }
    const before = Math.min(...samples.slice(0, WINDOW));
    const after = Math.min(...samples.slice(200));
    console.log(`[${rt.name}] server RssAnon floor: ${before} KiB, 200 execs later ${after} KiB (${after - before >= 0 ? "+" : ""}${after - before} KiB)`);
    expect(after - before).toBeLessThan(2048);
  }, 90_000);

  // ---- attach ----------------------------------------------------------------------------------

  test("terminal `sh`: attach, see the prompt, `echo hi` comes back, detach with ctrl-p ctrl-q", async () => {
    const c = await create({ args: ["sh"], terminal: true, stdin: true, start: false });
    try {
      const stdin = new Pushable();
      const stdout = new Sink();
      const attached = awaitedLater(server.client.attachContainer({
        id: c.id,
        socketPath: c.attachPath,
        tty: true,
        containerStdin: true,
        streams: { stdin, stdout: stdout.write },
        // Output produced before the client connected is not replayed: start once connected.
        preAttach: () => c.start(),
      }));
      await stdout.waitFor("/ # ", "the shell prompt");
      stdin.push("echo hi\n");
      await stdout.waitFor(/\r\nhi\r\n/, "`hi` echoed back");
      stdin.push(Uint8Array.of(CTRL_P));
      stdin.push(Uint8Array.of(CTRL_Q));
      await expect(attached).rejects.toBeInstanceOf(DetachError);
      // Detaching leaves the container running, and the last attach removed the socket path.
      expect(existsSync(c.exitFile)).toBe(false);
      expect(existsSync(c.attachPath)).toBe(false);
    } finally {
      await c.remove();
    }
  }, CASE_MS);

  test("non-terminal: two attaches in sequence, stdout and stderr on their own callbacks", async () => {
    const c = await create({ args: ["sh", "-c", 'while read l; do echo "o $l"; echo "e $l" >&2; done'], stdin: true });
    try {
      for (const round of ["first", "second"]) {
        const stdin = new Pushable();
        const stdout = new Sink();
        const stderr = new Sink();
        const attached = awaitedLater(server.client.attachContainer({
          id: c.id,
          socketPath: c.attachPath,
          containerStdin: true,
          streams: { stdin, stdout: stdout.write, stderr: stderr.write },
        }));
        stdin.push(`${round}\n`);
        await stdout.waitFor(`o ${round}\n`, `${round} stdout`);
        await stderr.waitFor(`e ${round}\n`, `${round} stderr`);
        expect(stdout.text()).toBe(`o ${round}\n`);
        expect(stderr.text()).toBe(`e ${round}\n`);
        // Both keys in one chunk detach too.
        stdin.push(Uint8Array.of(CTRL_P, CTRL_Q));
        await expect(attached).rejects.toThrow("detached from container");
        expect(existsSync(c.attachPath)).toBe(false);
      }
      expect(existsSync(c.exitFile)).toBe(false);
      // The container's log got everything as well.
      await waitFor(() => criText(c.log).includes("o second\n"), 5000, "log of the second round");
      expect(criText(c.log)).toBe("o first\no second\n");
      expect(criText(c.log, "stderr")).toBe("e first\ne second\n");
    } finally {
      await c.remove();
    }
  }, CASE_MS);

  test("every way an attach ends releases its socket, its watch and the socket path", async () => {
    const c = await create({ args: ["sh", "-c", 'while read l; do echo "o $l"; [ "$l" = exit ] && exit 0; done; echo never'], stdin: true });
    try {
      // The RPC connection is opened lazily: open it before counting fds.
      await server.client.version();
      const fdsBefore = listOpenFds();
      const watchesBefore = watchedCount();
      const attach = (over: Partial<AttachConfig>) =>
        server.client.attachContainer({ id: c.id, socketPath: c.attachPath, containerStdin: true, ...over });
      const released = async (what: string) => {
        await waitFor(() => watchedCount() === watchesBefore, 2000, `${what}: watches back to ${watchesBefore}`);
        expect({ what, newFds: listOpenFds().filter((fd) => !fdsBefore.includes(fd)) }).toEqual({ what, newFds: [] });
        expect({ what, socketPath: existsSync(c.attachPath) }).toEqual({ what, socketPath: false });
      };

      await expect(attach({ preAttach: () => Promise.reject(new Error("pre-attach failed")) })).rejects.toThrow("pre-attach failed");
      await released("preAttach throws");

      await expect(attach({ postAttach: () => { throw new Error("post-attach failed"); } })).rejects.toThrow("post-attach failed");
      await released("postAttach throws");

      const throwingStdin = (async function* () {
        yield new TextEncoder().encode("a\n");
        throw new Error("stdin source broke");
      })();
      await expect(attach({ streams: { stdin: throwingStdin, stdout: () => {} } })).rejects.toThrow("stdin source broke");
      await released("stdin source throws");
      // What it sent before the source broke still reaches the container.
      await waitFor(() => criText(c.log) === "o a\n", 5000, "`o a` in the log");

      const stdin = new Pushable();
      const failing = awaitedLater(attach({ streams: { stdin, stdout: () => { throw new Error("stdout sink broke"); } } }));
      stdin.push("b\n");
      await expect(failing).rejects.toThrow("stdout sink broke");
      await released("stdout callback throws");
      await waitFor(() => criText(c.log) === "o a\no b\n", 5000, "`o b` in the log");

      // No stdin and no output stream: returns at once (after shutting its write side).
      await attach({});
      await released("nothing to copy");

      // The client ending its attaches (the first thing shutdown() does, as in Go) ends a running one.
      const idle = new Pushable();
      const running = awaitedLater(attach({ streams: { stdin: idle, stdout: () => {} } }));
      await waitFor(() => watchedCount() > watchesBefore, 2000, "the attach to be running");
      closeAttaches(server.client);
      await running;
      await released("closed by the client");

      // The container ends while stdin is still open: `[0]` ends the attach.
      const open = new Pushable();
      const stdout = new Sink();
      const ended = awaitedLater(attach({ streams: { stdin: open, stdout: stdout.write } }));
      open.push("exit\n");
      await ended;
      expect(stdout.text()).toBe("o exit\n");
      expect(await c.exitCode()).toBe("0");
      await released("output done");
      expect(criText(c.log)).toBe("o a\no b\no exit\n");
    } finally {
      await c.remove();
    }
  }, CASE_MS);

  test("stopAfterStdinEof: the end of the client's stdin closes the container's stdin", async () => {
    const c = await create({ args: ["sh", "-c", "cat; echo cat-done"], stdin: true });
    try {
      const stdin = new Pushable();
      const stdout = new Sink();
      const attached = awaitedLater(server.client.attachContainer({
        id: c.id,
        socketPath: c.attachPath,
        containerStdin: true,
        stopAfterStdinEof: true,
        streams: { stdin, stdout: stdout.write },
      }));
      stdin.push("line one\n");
      await stdout.waitFor("line one\n", "cat's echo");
      stdin.push("partial"); // no newline: only the EOF flushes it out of `cat`
      stdin.end();
      await attached; // returns at stdin EOF without waiting for output
      expect(await c.exitCode()).toBe("0");
      await waitFor(() => criText(c.log).includes("cat-done"), 5000, "cat-done in the log");
      expect(criText(c.log)).toBe("line one\npartialcat-done\n");
    } finally {
      await c.remove();
    }
  }, CASE_MS);

  test("a client that leaves with output unread still delivers its last input and its EOF", async () => {
    const c = await create({ args: ["sh", "-c", "while :; do echo tick; sleep 0.02; done & cat > /tmp/got; echo saved; sleep 1000"], stdin: true });
    let raw: number | null = null;
    try {
      await server.client.attachContainer({ id: c.id, socketPath: c.attachPath, stopAfterStdinEof: true, passthrough: true });
      raw = connectUnix(c.attachPath, "seqpacket");
      await waitFor(() => criText(c.log).split("tick").length > 5, 5000, "ticks while connected");
      await Bun.sleep(100); // more packets queued for us, never read
      expect(sendMsg(raw, new TextEncoder().encode("last words"))).toBe(10);
      // Closing with unread packets makes the kernel report ECONNRESET to the server first.
      closeQuietly(raw);
      raw = null;
      await waitFor(() => criText(c.log).includes("saved"), 5000, "the container's stdin to be closed (stopAfterStdinEof)");
      const got = await server.client.execSyncContainer({ id: c.id, command: ["cat", "/tmp/got"], cgroupManager: CgroupManager.cgroupfs });
      expect(text(got.stdout)).toBe("last words");
    } finally {
      closeQuietly(raw);
      await c.remove();
    }
  }, CASE_MS);

  test("a 200 KiB binary blob with NUL bytes arrives byte-exact through attach stdin", async () => {
    const c = await create({ args: ["sh", "-c", "cat > /tmp/blob; echo written; sleep 1000"], stdin: true });
    try {
      const blob = randomBytes(200 * 1024);
      for (let i = 0; i < blob.length; i += 7) blob[i] = 0; // many NULs (upstream drops them, Q9)
      const stdin = new Pushable();
      // Uneven chunks, one larger than the 32 KiB message limit, one larger than the server's buffer.
      const cuts = [0, 1, 4096, 4097 + 40_000, 4097 + 40_000 + 70_000, blob.length];
      for (let i = 0; i + 1 < cuts.length; i++) stdin.push(blob.subarray(cuts[i], cuts[i + 1]));
      stdin.end();
      await server.client.attachContainer({
        id: c.id,
        socketPath: c.attachPath,
        containerStdin: true,
        stopAfterStdinEof: true,
        streams: { stdin },
        detachKeys: new Uint8Array(0), // binary data: ctrl-p ctrl-q may well occur in it
      });
      await waitFor(() => criText(c.log).includes("written"), 10_000, "cat to finish");
      const sum = await server.client.execSyncContainer({ id: c.id, command: ["md5sum", "/tmp/blob"], cgroupManager: CgroupManager.cgroupfs });
      expect(sum.exitCode).toBe(0);
      expect(text(sum.stdout)).toBe(`${createHash("md5").update(blob).digest("hex")}  /tmp/blob\n`);
    } finally {
      await c.remove();
    }
  }, CASE_MS);

  test("a stalled attach client does not stall the container's log (20 MB of output)", async () => {
    const lines = 2_500_000; // `seq` prints ~18.9 MB
    const c = await create({ args: ["seq", "1", String(lines)], start: false });
    let stalled: number | null = null;
    try {
      // passthrough: only the RPC; the "client" connects and then never reads.
      await server.client.attachContainer({ id: c.id, socketPath: c.attachPath, passthrough: true });
      stalled = connectUnix(c.attachPath, "seqpacket");
      await c.start();
      expect(await c.exitCode(60_000)).toBe("0");
      const out = criText(c.log);
      expect(out.length).toBeGreaterThan(18_000_000);
      const numbers = out.split("\n");
      expect(numbers.length).toBe(lines + 1);
      for (let i = 0; i < lines; i++) if (numbers[i] !== String(i + 1)) throw new Error(`line ${i + 1} is ${numbers[i]}`);
      // It really was sent output that it never read.
      const packet = new Uint8Array(8193);
      const first = recvMsg(stalled, packet);
      expect(first?.n).toBeGreaterThan(1);
      expect(packet[0]).toBe(2);
    } finally {
      closeQuietly(stalled);
      await c.remove();
    }
  }, 90_000);

  test("setWindowSizeContainer: the container's terminal sees 20 rows x 10 cols; resize through attach", async () => {
    const c = await create({ args: ["sh", "-c", "while :; do stty size; sleep 0.1; done"], terminal: true, stdin: true });
    try {
      await server.client.setWindowSizeContainer({ id: c.id, size: { width: 10, height: 20 } });
      await waitFor(() => criText(c.log).includes("20 10\r\n"), 5000, "`stty size` printing 20 10");
      // The attach's resize forwarder sends each size it gets while attached.
      const stdin = new Pushable();
      const stdout = new Sink();
      async function* sizes() {
        yield { width: 33, height: 44 };
      }
      const attached = awaitedLater(server.client.attachContainer({
        id: c.id,
        socketPath: c.attachPath,
        tty: true,
        containerStdin: true,
        resize: sizes(),
        streams: { stdin, stdout: stdout.write },
      }));
      await stdout.waitFor("44 33\r\n", "`stty size` printing 44 33 through the attach");
      stdin.push(Uint8Array.of(CTRL_P, CTRL_Q));
      await expect(attached).rejects.toBeInstanceOf(DetachError);
    } finally {
      await c.remove();
    }
  }, CASE_MS);

  test("setWindowSizeContainer fails without a terminal, and for an unknown id", async () => {
    await expect(server.client.setWindowSizeContainer({ id: sleeper.id, size: { width: 10, height: 20 } })).rejects.toThrow("container has no terminal");
    await expect(server.client.setWindowSizeContainer({ id: uniqueId("missing-"), size: { width: 10, height: 20 } })).rejects.toThrow("child not available");
    await expect(server.client.attachContainer({ id: uniqueId("missing-"), socketPath: join(work, "nope"), streams: {} })).rejects.toThrow("child not available");
  }, CASE_MS);
});

describe("DetachScanner", () => {
  const keys = Uint8Array.of(CTRL_P, CTRL_Q);
  const feed = (scanner: DetachScanner, ...chunks: number[][]) =>
    chunks.map((c) => {
      const r = scanner.feed(Uint8Array.from(c));
      return [[...r.data], r.detached];
    });

  test("passes data through, holds a trailing first key, detaches across chunks", () => {
    const s = new DetachScanner(keys);
    expect(feed(s, [1, 2, 3], [4, CTRL_P], [CTRL_Q, 9])).toEqual([
      [[1, 2, 3], false],
      [[4], false],
      [[], true],
    ]);
  });

  test("a first key not followed by the second is forwarded, also at the end", () => {
    const s = new DetachScanner(keys);
    expect(feed(s, [CTRL_P], [5], [CTRL_P, CTRL_P], [CTRL_P, 6, CTRL_P])).toEqual([
      [[], false],
      [[CTRL_P, 5], false],
      [[CTRL_P], false],
      [[CTRL_P, CTRL_P, 6], false],
    ]);
    expect([...s.flush()]).toEqual([CTRL_P]);
    expect([...s.flush()]).toEqual([]);
  });

  test("no keys: nothing is held or detected", () => {
    const s = new DetachScanner(new Uint8Array(0));
    expect(feed(s, [CTRL_P, CTRL_Q])).toEqual([[[CTRL_P, CTRL_Q], false]]);
  });
});
