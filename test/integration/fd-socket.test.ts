// startFdSocket (spec §13) with the compiled binary: the slot store, the SEQPACKET protocol seen
// from a raw socket and through our client, fd ownership in the server (read from /proc), and
// createContainer's additionalFds / leakFds with real runc and crun.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import { CgroupManager, ConmonClient } from "../../src/client/index.ts";
import type { RemoteFDs } from "../../src/client/remote-fds.ts";
import { decodeReply, encodeRequest } from "../../src/fd-socket.ts";
import { closeFd, closeQuietly, fdTarget, pipe, readFd, setNonBlocking } from "../../ffi/fd.ts";
import { connectUnix, recvMsg, sendMsg } from "../../ffi/socket.ts";
import { makeBundle } from "../helpers/bundle.ts";
import { openFdCount, removeDir, tmpDir, uniqueId, waitFor, waitForFile } from "../helpers/proc.ts";
import { runtimes, spawnPrefix, type Runtime } from "../helpers/runtimes.ts";
import { BINARY, startServer, type TestServer } from "../helpers/server.ts";

/** How long "no reply" is waited for: the server answers a valid request in well under 10 ms. */
const SILENCE_MS = 200;

/** A raw SEQPACKET connection to the fd socket, for what our client would never send. */
class RawConn {
  readonly fd: number;
  private readonly buf = new Uint8Array(64 * 1024);

  constructor(path: string) {
    this.fd = connectUnix(path, "seqpacket");
  }

  send(data: Uint8Array, fds: number[] = []): void {
    expect(sendMsg(this.fd, data, fds)).toBe(data.length);
  }

  /** The next reply, polling the non-blocking socket. */
  async reply(timeoutMs = 5000): Promise<Uint8Array> {
    return waitFor(() => {
      const msg = recvMsg(this.fd, this.buf);
      return msg !== null && this.buf.slice(0, msg.n);
    }, timeoutMs, "fd socket reply");
  }

  /** Asserts that nothing arrives for a while. */
  async expectSilence(): Promise<void> {
    await Bun.sleep(SILENCE_MS);
    expect(recvMsg(this.fd, this.buf)).toBeNull();
  }

  close(): void {
    closeQuietly(this.fd);
  }
}

/** A fresh pipe; `target` ("pipe:[ino]") identifies its copies in any process's /proc/<pid>/fd. */
function newPipe(): { r: number; w: number; target: string; close(): void } {
  const [r, w] = pipe();
  let open = [r, w];
  return {
    r,
    w,
    target: fdTarget(w),
    close() {
      for (const fd of open) closeQuietly(fd);
      open = [];
    },
  };
}

/** How many fds of `pid` point at `target`. */
function copiesIn(pid: number, target: string): number {
  let count = 0;
  for (const name of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${name}`) === target) count++;
    } catch {
      // closed while we looked
    }
  }
  return count;
}

/** Reads `fd` (made non-blocking) until EOF; the writers must all close for this to end. */
async function readToEof(fd: number, timeoutMs: number): Promise<string> {
  setNonBlocking(fd);
  const chunks: Buffer[] = [];
  const buf = new Uint8Array(4096);
  await waitFor(() => {
    for (;;) {
      const n = readFd(fd, buf);
      if (n < 0) return false;
      if (n === 0) return true;
      chunks.push(Buffer.from(buf.subarray(0, n)));
    }
  }, timeoutMs, `EOF on fd ${fd}`);
  return Buffer.concat(chunks).toString("utf8");
}

/** RLIMIT_NOFILE of `pid` as [soft, hard] (strings: "unlimited" is possible). */
function nofileLimit(pid: number): [string, string] {
  const line = readFileSync(`/proc/${pid}/limits`, "utf8").split("\n").find((l) => l.startsWith("Max open files"));
  const m = line && /^Max open files\s+(\S+)\s+(\S+)/.exec(line);
  if (!m) throw new Error(`no open-files limit in /proc/${pid}/limits`);
  return [m[1]!, m[2]!];
}

function setNofileLimit(pid: number, soft: string, hard: string): void {
  const r = Bun.spawnSync(["prlimit", "--pid", String(pid), `--nofile=${soft}:${hard}`], { stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`prlimit failed: ${r.stderr.toString()}`);
}

describe.each(runtimes())("fd socket with $name", (rt: Runtime) => {
  let server: TestServer;
  let work: string;
  let serverPid: number;
  const runtimeRoot = () => join(work, "root");

  async function runtime(...args: string[]): Promise<{ code: number; stderr: string }> {
    const proc = Bun.spawn([...spawnPrefix(rt), rt.path, `--root=${runtimeRoot()}`, ...args], { stdout: "ignore", stderr: "pipe" });
    const code = await proc.exited;
    return { code, stderr: await new Response(proc.stderr).text() };
  }

  /** A busybox container created through the RPC with the given fd slots. */
  async function create(opts: { args: string[]; additionalFds?: bigint[]; leakFds?: bigint[]; commandArgs?: string[] }) {
    const id = uniqueId(`${rt.name}-fd-`);
    const bundle = await makeBundle({ args: opts.args });
    const exitFile = join(bundle.dir, "exit");
    const remove = async () => {
      await runtime("delete", "--force", id);
      await bundle.cleanup();
    };
    try {
      const { pid } = await server.client.createContainer({
        id,
        bundlePath: bundle.dir,
        exitPaths: [exitFile],
        cgroupManager: CgroupManager.cgroupfs,
        additionalFds: opts.additionalFds,
        leakFds: opts.leakFds,
        commandArgs: opts.commandArgs,
      });
      return { id, pid, exitFile, bundle, remove };
    } catch (err) {
      await remove();
      throw err;
    }
  }

  async function start(id: string): Promise<void> {
    const r = await runtime("start", id);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
  }

  beforeAll(async () => {
    work = tmpDir(`fdsock-${rt.name}`);
    server = await startServer(rt, { runtimeRoot: join(work, "root"), logLevel: "info" });
    serverPid = server.client.pid;
  });
  afterAll(async () => {
    await server?.stop();
    removeDir(work);
  });

  test("startFdSocket answers <run dir>/conmon-fd.sock, the same path on every call", async () => {
    const a = await server.client.remoteFds();
    const b = await server.client.remoteFds();
    try {
      expect(a.path).toBe(join(server.runDir, "conmon-fd.sock"));
      expect(b.path).toBe(a.path);
      expect(lstatSync(a.path).isSocket()).toBe(true);
    } finally {
      a.close();
      b.close();
    }
  });

  test("2 fds → 2 distinct slots held by the server; queued sends get increasing slots; close releases them", async () => {
    const p = newPipe();
    const remote = await server.client.remoteFds();
    try {
      const slots = await remote.send(p.r, p.w);
      expect(slots).toHaveLength(2);
      expect(slots[0]).not.toBe(slots[1]!);
      expect(copiesIn(serverPid, p.target)).toBe(2);
      // Several sends in flight: answered in order, slots keep counting up.
      const more = await Promise.all([remote.send(p.w), remote.send(p.r), remote.send(p.w)]);
      const flat = more.flat();
      expect(new Set([...slots, ...flat]).size).toBe(5);
      expect([...flat].sort((x, y) => (x < y ? -1 : 1))).toEqual(flat);
      expect(flat[0]! > slots[1]!).toBe(true);
      expect(copiesIn(serverPid, p.target)).toBe(5);
      expect(await remote.send()).toEqual([]);
    } finally {
      remote.close();
      p.close();
    }
    // The client went away: every fd it passed and nobody took is closed.
    await waitFor(() => copiesIn(serverPid, p.target) === 0, 5000, "server to close the disconnected client's fds");
  });

  test("numFds disagreeing with the fds sent → error reply with the text, the fd is closed", async () => {
    const p = newPipe();
    const remote = await server.client.remoteFds();
    const conn = new RawConn(remote.path);
    remote.close();
    try {
      conn.send(encodeRequest(1, 2), [p.w]);
      const reply = await conn.reply();
      expect(Buffer.from(reply.subarray(0, 8)).toString("hex")).toBe("ffffffff01000000");
      expect(decodeReply(reply)).toEqual({ kind: "error", requestId: 1, message: "received 1 fds, but expected 2 fds" });
      conn.send(encodeRequest(2, 1), [p.w, p.r]);
      expect(decodeReply(await conn.reply())).toEqual({ kind: "error", requestId: 2, message: "received 2 fds, but expected 1 fds" });
      // Upstream reads only the low 8 bits and would call this 0 fds, a success.
      conn.send(encodeRequest(3, 256));
      expect(decodeReply(await conn.reply())).toEqual({ kind: "error", requestId: 3, message: "received 0 fds, but expected 256 fds" });
      await waitFor(() => copiesIn(serverPid, p.target) === 0, 5000, "rejected fds closed");
      // The connection still works.
      conn.send(encodeRequest(4, 1), [p.w]);
      const ok = decodeReply(await conn.reply());
      expect(ok).toMatchObject({ kind: "slots", requestId: 4 });
      expect(copiesIn(serverPid, p.target)).toBe(1);
    } finally {
      conn.close();
      p.close();
    }
    await waitFor(() => copiesIn(serverPid, p.target) === 0, 5000, "fds of the closed connection closed");
  });

  test("short, long and random messages are ignored silently (their fds closed); the connection keeps working", async () => {
    const p = newPipe();
    const remote = await server.client.remoteFds();
    const conn = new RawConn(remote.path);
    remote.close();
    try {
      const random = new Uint8Array(100);
      crypto.getRandomValues(random);
      conn.send(Uint8Array.of(1));
      conn.send(new Uint8Array(7), [p.w]);
      conn.send(new Uint8Array(9).fill(1), [p.w, p.r]);
      conn.send(new Uint8Array(16).fill(0xff));
      conn.send(random, [p.r]);
      await conn.expectSilence();
      await waitFor(() => copiesIn(serverPid, p.target) === 0, 5000, "fds of ignored messages closed");
      conn.send(encodeRequest(5, 1), [p.w]);
      expect(decodeReply(await conn.reply())).toMatchObject({ kind: "slots", requestId: 5 });
    } finally {
      conn.close();
      p.close();
    }
  });

  test("header 0 closes this connection's untaken fds without a reply (fd count back to before)", async () => {
    const p = newPipe();
    const other = newPipe();
    const remote = await server.client.remoteFds();
    const conn = new RawConn(remote.path);
    try {
      // Another connection's fds must survive this connection's release.
      await remote.send(other.w);
      const before = openFdCount(serverPid);
      conn.send(encodeRequest(1, 2), [p.r, p.w]);
      const reply = decodeReply(await conn.reply());
      expect(reply).toMatchObject({ kind: "slots", requestId: 1 });
      expect(openFdCount(serverPid)).toBe(before + 2);
      expect(copiesIn(serverPid, p.target)).toBe(2);

      conn.send(new Uint8Array(8));
      await conn.expectSilence();
      expect(openFdCount(serverPid)).toBe(before);
      expect(copiesIn(serverPid, p.target)).toBe(0);
      expect(copiesIn(serverPid, other.target)).toBe(1);

      // The released slots are gone: a container cannot take them any more.
      const released = (reply as { slots: bigint[] }).slots[0]!;
      const attempt = server.client.createContainer({
        id: uniqueId("fd-gone-"),
        bundlePath: work,
        cgroupManager: CgroupManager.cgroupfs,
        additionalFds: [released],
      });
      await expect(attempt).rejects.toThrow(`no file descriptor in slot ${released}`);

      // Still usable after a release.
      conn.send(encodeRequest(2, 1), [p.w]);
      expect(decodeReply(await conn.reply())).toMatchObject({ kind: "slots", requestId: 2 });
    } finally {
      conn.close();
      remote.close();
      p.close();
      other.close();
    }
  });

  test("a client that disconnects mid-way loses only its own fds", async () => {
    const mine = newPipe();
    const theirs = newPipe();
    const remote = await server.client.remoteFds();
    try {
      const [kept] = await remote.send(theirs.w);
      // Sends a request and leaves without reading the reply.
      const leaver = new RawConn(remote.path);
      leaver.send(encodeRequest(1, 2), [mine.r, mine.w]);
      leaver.close();
      await waitFor(() => copiesIn(serverPid, mine.target) === 0, 5000, "the leaver's fds closed");
      expect(copiesIn(serverPid, theirs.target)).toBe(1);
      // ...and the other connection's slot is intact and still takeable.
      expect(await remote.send(theirs.r)).toHaveLength(1);
      expect(kept).toBeDefined();
    } finally {
      remote.close();
      mine.close();
      theirs.close();
    }
  });

  test("253 fds in one message work; 254 are refused with a clear error", async () => {
    const p = newPipe();
    const remote = await server.client.remoteFds();
    try {
      const slots = await remote.send(...Array<number>(253).fill(p.w));
      expect(new Set(slots).size).toBe(253);
      expect(copiesIn(serverPid, p.target)).toBe(253);
      await expect(remote.send(...Array<number>(254).fill(p.w))).rejects.toThrow(
        "too many file descriptors: 254 (at most 253 per send)",
      );
      // The kernel refuses more than 253 in one message too (SCM_MAX_FD), so a raw client cannot either.
      const raw = new RawConn(remote.path);
      try {
        expect(() => raw.send(encodeRequest(1, 254), Array<number>(254).fill(p.w))).toThrow(/254 fds in one message/);
      } finally {
        raw.close();
      }
      // The connection survived the refused call.
      expect(await remote.send(p.r)).toHaveLength(1);
    } finally {
      remote.close();
      p.close();
    }
    await waitFor(() => copiesIn(serverPid, p.target) === 0, 5000, "253 fds closed on disconnect");
  });

  test("fds cut off by the server's fd limit (MSG_CTRUNC) → clear error, the ones that arrived are closed", async () => {
    const p = newPipe();
    const remote = await server.client.remoteFds();
    const [soft, hard] = nofileLimit(serverPid);
    try {
      setNofileLimit(serverPid, String(openFdCount(serverPid) + 3), hard);
      let error: Error | undefined;
      try {
        await remote.send(...Array<number>(20).fill(p.w));
      } catch (err) {
        error = err as Error;
      } finally {
        setNofileLimit(serverPid, soft, hard);
      }
      expect(error?.message).toMatch(/^too many file descriptors in one message \(max 253\)/);
      expect(copiesIn(serverPid, p.target)).toBe(0);
      expect(await remote.send(p.w, p.r)).toHaveLength(2);
    } finally {
      setNofileLimit(serverPid, soft, hard);
      remote.close();
      p.close();
    }
  });

  test("a pipe's write end passed as additionalFds is the container's fd 3", async () => {
    const p = newPipe();
    const remote = await server.client.remoteFds();
    let container: Awaited<ReturnType<typeof create>> | undefined;
    try {
      const [slot] = await remote.send(p.w);
      // Our copy goes, so EOF arrives once the container (the last writer) exits.
      closeFd(p.w);
      container = await create({
        args: ["sh", "-c", "echo via-fd3 >&3"],
        additionalFds: [slot!],
        commandArgs: ["--preserve-fds", "1"],
      });
      // The server closed its copy right after spawning the runtime.
      expect(copiesIn(serverPid, p.target)).toBe(0);
      remote.close();
      await start(container.id);
      expect(await readToEof(p.r, 10_000)).toBe("via-fd3\n");
      expect(await waitForFile(container.exitFile, 10_000)).toBe("0");
    } finally {
      remote.close();
      closeQuietly(p.r);
      await container?.remove();
    }
  });

  test("a leakFds slot stays open in the server until the container exits, then it is closed", async () => {
    const p = newPipe();
    const remote = await server.client.remoteFds();
    let container: Awaited<ReturnType<typeof create>> | undefined;
    try {
      const [slot] = await remote.send(p.w);
      closeFd(p.w);
      container = await create({ args: ["sh", "-c", "sleep 1"], leakFds: [slot!] });
      // Taken from the store: closing the fd socket connection no longer affects it.
      remote.close();
      await Bun.sleep(50);
      expect(copiesIn(serverPid, p.target)).toBe(1);
      // Kept in the server only: the runtime did not pass it on.
      expect(copiesIn(container.pid, p.target)).toBe(0);
      await start(container.id);
      expect(copiesIn(serverPid, p.target)).toBe(1);
      expect(await waitForFile(container.exitFile, 10_000)).toBe("0");
      await waitFor(() => copiesIn(serverPid, p.target) === 0, 5000, "leaked fd closed after the exit");
      // The server's copy was the last writer.
      expect(await readToEof(p.r, 5000)).toBe("");
    } finally {
      remote.close();
      closeQuietly(p.r);
      await container?.remove();
    }
  });

  test("an unknown slot fails createContainer with `no file descriptor in slot 99` and nothing runs", async () => {
    const p = newPipe();
    const remote = await server.client.remoteFds();
    const bundle = await makeBundle({ args: ["sh", "-c", "exit 0"] });
    const id = uniqueId(`${rt.name}-fd-bad-`);
    try {
      const request = { id, bundlePath: bundle.dir, cgroupManager: CgroupManager.cgroupfs };
      await expect(server.client.createContainer({ ...request, additionalFds: [99n] })).rejects.toThrow(
        /^no file descriptor in slot 99$/,
      );
      // A valid slot taken before the failing one is closed with the failure (as upstream).
      const [slot] = await remote.send(p.w);
      await expect(server.client.createContainer({ ...request, additionalFds: [slot!], leakFds: [99n] })).rejects.toThrow(
        "no file descriptor in slot 99",
      );
      expect(copiesIn(serverPid, p.target)).toBe(0);
      await expect(server.client.createContainer({ ...request, additionalFds: [slot!] })).rejects.toThrow(
        `no file descriptor in slot ${slot}`,
      );
      // The runtime never ran: no pid file, no container state.
      expect(existsSync(join(bundle.dir, "pidfile"))).toBe(false);
      expect((await runtime("state", id)).code).not.toBe(0);
      expect((await server.client.version()).processId).toBe(serverPid);
    } finally {
      remote.close();
      p.close();
      await runtime("delete", "--force", id);
      await bundle.cleanup();
    }
  });
});

describe("fd socket of a server in a run dir longer than sun_path", () => {
  const runc = runtimes().find((r) => r.name === "runc");

  test.if(runc !== undefined)("startFdSocket binds and the client connects through the long path", async () => {
    const base = tmpDir("fdsock-long");
    const runDir = join(base, "a".repeat(60), "b".repeat(60));
    expect(join(runDir, "conmon-fd.sock").length).toBeGreaterThan(108);
    let client: ConmonClient | undefined;
    let remote: RemoteFDs | undefined;
    const p = newPipe();
    try {
      client = await ConmonClient.new({ conmonServerPath: BINARY, runtime: runc!.path, serverRunDir: runDir, logDriver: "none" });
      remote = await client.remoteFds();
      expect(remote.path).toBe(join(runDir, "conmon-fd.sock"));
      expect(await remote.send(p.r, p.w)).toEqual([1n, 2n]);
      expect(copiesIn(client.pid, p.target)).toBe(2);
      remote.close();
      await client.shutdown();
      // Shutdown closed everything and removed the socket file.
      expect(existsSync(join(runDir, "conmon-fd.sock"))).toBe(false);
    } finally {
      remote?.close();
      await client?.shutdown().catch(() => {});
      p.close();
      removeDir(base);
    }
  });
});
