import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type ReceivedMessage, SysError, acceptConn, bindDgram, closeFd, closeQuietly, connectUnix,
  dgramSocket, dupFd, fdTarget, isCloexec, isNonBlocking, listOpenFds, listenUnix, memfdCreate,
  pipe, readFd, recvMsg, sealFd, sendDatagram, sendMsg, setNonBlocking, shutdownFd, socketPair,
  writeAll, writeFd,
} from "../../ffi/index.ts";
import { leakedFds, thrown } from "../helpers/fds.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

let dir: string;
let fdsBefore: number[];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "ffi-socket-"));
  fdsBefore = listOpenFds();
});
afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
  expect(await leakedFds(fdsBefore)).toEqual([]);
});

/** Closes every fd on every path out of `body`. */
function withFds<T>(fds: number[], body: () => T): T {
  try {
    return body();
  } finally {
    for (const fd of fds) closeQuietly(fd);
  }
}

function text(buf: Uint8Array, msg: ReceivedMessage | null): string {
  if (msg === null) throw new Error("expected a message, got EAGAIN");
  return dec.decode(buf.subarray(0, msg.n));
}

/** Connects a client to `listenFd` at `path` and accepts it: [client, server side]. */
function connectedPair(path: string, listenFd: number, type: "stream" | "seqpacket"): [number, number] {
  const client = connectUnix(path, type);
  const server = acceptConn(listenFd);
  if (server === null) {
    closeFd(client);
    throw new Error("accept found no connection");
  }
  return [client, server];
}

describe("listen, connect, accept", () => {
  test("seqpacket keeps message boundaries; EAGAIN is null; EOF is n = 0", () => {
    const path = join(dir, "seq.sock");
    const listener = listenUnix(path, "seqpacket");
    withFds([listener], () => {
      expect(statSync(path).isSocket()).toBe(true);
      expect(isNonBlocking(listener) && isCloexec(listener)).toBe(true);
      expect(acceptConn(listener)).toBeNull();
      const [client, server] = connectedPair(path, listener, "seqpacket");
      withFds([client, server], () => {
        expect(isNonBlocking(client) && isNonBlocking(server)).toBe(true);
        expect(sendMsg(client, enc.encode("one"))).toBe(3);
        expect(sendMsg(client, enc.encode("two!"))).toBe(4);
        expect(sendMsg(client, new Uint8Array(0))).toBe(0);
        const buf = new Uint8Array(64);
        expect(text(buf, recvMsg(server, buf))).toBe("one");
        expect(text(buf, recvMsg(server, buf))).toBe("two!");
        expect(recvMsg(server, buf)!.n).toBe(0); // the empty message
        expect(recvMsg(server, buf)).toBeNull();
        sendMsg(client, enc.encode("0123456789"));
        const cut = recvMsg(server, buf.subarray(0, 4))!;
        expect(cut).toMatchObject({ n: 4, truncated: true, dataTruncated: true, fdsTruncated: false });
        closeFd(client);
        expect(recvMsg(server, buf)).toMatchObject({ n: 0, fds: [], truncated: false });
      });
    });
  });

  test("stream: bytes flow both ways; a shut-down writer reads as EOF", () => {
    const path = join(dir, "stream.sock");
    const listener = listenUnix(path, "stream");
    withFds([listener], () => {
      const [client, server] = connectedPair(path, listener, "stream");
      withFds([client, server], () => {
        sendMsg(client, enc.encode("ab"));
        sendMsg(client, enc.encode("cd"));
        const buf = new Uint8Array(64);
        expect(text(buf, recvMsg(server, buf))).toBe("abcd"); // no boundaries on a stream
        writeFd(server, enc.encode("back"));
        expect(readFd(client, buf)).toBe(4);
        shutdownFd(client, "write");
        expect(recvMsg(server, buf)!.n).toBe(0);
      });
    });
  });

  test("an existing socket file is not replaced: EADDRINUSE", () => {
    const path = join(dir, "busy.sock");
    const listener = listenUnix(path, "stream");
    withFds([listener], () => {
      const err = thrown(() => listenUnix(path, "stream")) as SysError;
      expect(err.code).toBe("EADDRINUSE");
      expect(err.message).toBe(`bind '${path}': EADDRINUSE (Address already in use)`);
    });
  });

  test("errors name the errno: ENOTDIR, ENOENT, ECONNREFUSED", () => {
    const file = join(dir, "plain-file");
    writeFileSync(file, "");
    expect((thrown(() => listenUnix(join(file, "x.sock"), "stream")) as SysError).code).toBe("ENOTDIR");
    expect((thrown(() => listenUnix(join(file, "sub/x.sock"), "stream")) as SysError).code).toBe("ENOTDIR");
    expect((thrown(() => connectUnix(join(dir, "missing.sock"), "stream")) as SysError).code).toBe("ENOENT");
    const stale = join(dir, "stale.sock");
    closeFd(listenUnix(stale, "stream")); // the file stays, nobody listens
    expect((thrown(() => connectUnix(stale, "stream")) as SysError).code).toBe("ECONNREFUSED");
    const seq = join(dir, "type.sock");
    const listener = listenUnix(seq, "seqpacket");
    withFds([listener], () => {
      expect((thrown(() => connectUnix(seq, "stream")) as SysError).code).toBe("EPROTOTYPE");
    });
  });

  test("paths longer than sockaddr_un allows bind and connect (parent creation included)", () => {
    const deep = join(dir, "d".repeat(60), "e".repeat(60));
    const path = join(deep, "conmon.sock");
    expect(Buffer.byteLength(path)).toBeGreaterThan(108);
    const listener = listenUnix(path, "stream");
    withFds([listener], () => {
      expect(existsSync(path)).toBe(true);
      const [client, server] = connectedPair(path, listener, "stream");
      withFds([client, server], () => {
        sendMsg(client, enc.encode("deep"));
        const buf = new Uint8Array(8);
        expect(text(buf, recvMsg(server, buf))).toBe("deep");
      });
    });
    // sendDatagram takes the same detour for long destinations
    const dgramPath = join(deep, "journal.sock");
    const receiver = bindDgram(dgramPath);
    const sender = dgramSocket();
    withFds([receiver, sender], () => {
      expect(sendDatagram(sender, dgramPath, enc.encode("far"))).toBe(3);
      const buf = new Uint8Array(8);
      expect(text(buf, recvMsg(receiver, buf))).toBe("far");
    });
  });

  test("a basename that alone is too long fails with ENAMETOOLONG", () => {
    const err = thrown(() => listenUnix(join(dir, "n".repeat(100)), "stream")) as SysError;
    expect(err.code).toBe("ENAMETOOLONG");
  });
});

describe("SCM_RIGHTS", () => {
  test("three pipe ends cross a socketpair and work on the other side", () => {
    const [a, b] = socketPair("stream");
    const pipes = [pipe(), pipe(), pipe()];
    withFds([a, b, ...pipes.flat()], () => {
      expect(sendMsg(a, enc.encode("fds"), pipes.map(([, w]) => w))).toBe(3);
      for (const [, w] of pipes) closeFd(w); // only the received copies remain
      const buf = new Uint8Array(16);
      const got = recvMsg(b, buf, 8)!;
      expect(text(buf, got)).toBe("fds");
      expect(got.fds).toHaveLength(3);
      expect(got.truncated).toBe(false);
      withFds(got.fds, () => {
        got.fds.forEach((fd, i) => {
          expect(isCloexec(fd)).toBe(true); // MSG_CMSG_CLOEXEC
          writeAll(fd, enc.encode(`pipe ${i}`));
        });
      });
      pipes.forEach(([r], i) => {
        expect(readFd(r, buf)).toBe(6);
        expect(dec.decode(buf.subarray(0, 6))).toBe(`pipe ${i}`);
        expect(readFd(r, buf)).toBe(0); // every writer, including the passed one, is closed
      });
    });
  });

  test("250 fds in one message", () => {
    const [a, b] = socketPair("seqpacket");
    const [r, w] = pipe();
    const copies = Array.from({ length: 250 }, () => dupFd(w));
    withFds([a, b, r, w, ...copies], () => {
      sendMsg(a, new Uint8Array([1]), copies);
      const got = recvMsg(b, new Uint8Array(4), 253)!;
      withFds(got.fds, () => {
        expect(got.n).toBe(1);
        expect(got.fdsTruncated).toBe(false);
        expect(got.fds).toHaveLength(250);
        expect(new Set(got.fds.map(fdTarget))).toEqual(new Set([fdTarget(w)]));
      });
    });
  });

  test("fds beyond maxFds are closed by the kernel and reported as fdsTruncated", () => {
    const [a, b] = socketPair("seqpacket");
    const [r, w] = pipe();
    withFds([a, b, r, w], () => {
      const before = listOpenFds().length;
      sendMsg(a, new Uint8Array([1]), [r, w]);
      const none = recvMsg(b, new Uint8Array(4))!;
      expect(none).toMatchObject({ n: 1, fds: [], truncated: true, fdsTruncated: true });
      sendMsg(a, new Uint8Array([2]), [r, w, r]);
      const some = recvMsg(b, new Uint8Array(4), 2)!;
      withFds(some.fds, () => {
        expect(some.fdsTruncated).toBe(true);
        expect(some.fds.length).toBeLessThanOrEqual(2);
      });
      expect(listOpenFds().length).toBe(before);
    });
  });

  test("more than 253 fds is refused before reaching the kernel", () => {
    const [a, b] = socketPair("stream");
    withFds([a, b], () => {
      expect(() => sendMsg(a, new Uint8Array([1]), new Array(254).fill(a))).toThrow(RangeError);
    });
  });
});

describe("datagrams and send errors", () => {
  test("sendDatagram reaches a bound dgram socket, with a sealed memfd as journald's fallback", () => {
    const path = join(dir, "journal", "socket");
    const receiver = bindDgram(path);
    const sender = dgramSocket();
    const memfd = memfdCreate("journal-entry");
    withFds([receiver, sender, memfd], () => {
      expect(isNonBlocking(sender) && isCloexec(sender)).toBe(true);
      const entry = enc.encode("PRIORITY=5\nMESSAGE=hello\n");
      expect(sendDatagram(sender, path, entry)).toBe(entry.length);
      const buf = new Uint8Array(256);
      expect(text(buf, recvMsg(receiver, buf))).toBe("PRIORITY=5\nMESSAGE=hello\n");
      writeAll(memfd, entry);
      sealFd(memfd);
      expect(sendDatagram(sender, path, new Uint8Array(0), [memfd])).toBe(0);
      const got = recvMsg(receiver, buf, 1)!;
      withFds(got.fds, () => {
        expect(got.n).toBe(0);
        expect(got.fds).toHaveLength(1);
        expect(fdTarget(got.fds[0]!)).toBe("/memfd:journal-entry (deleted)");
      });
      expect((thrown(() => sendDatagram(sender, join(dir, "nobody"), entry)) as SysError).code).toBe("ENOENT");
    });
  });

  test("sendMsg: null when the buffer is full, EPIPE (not SIGPIPE) after the peer closed", () => {
    const [a, b] = socketPair("stream");
    withFds([a, b], () => {
      const chunk = new Uint8Array(65536);
      let sent: number | null;
      let total = 0;
      while ((sent = sendMsg(a, chunk)) !== null) total += sent;
      expect(total).toBeGreaterThan(0);
      closeFd(b);
      const err = thrown(() => sendMsg(a, chunk)) as SysError;
      expect(err.code).toBe("EPIPE");
      expect(err.syscall).toBe("sendmsg");
    });
  });

  test("socketPair can hand out blocking ends; shutdownFd validates", () => {
    const [a, b] = socketPair("seqpacket", false);
    withFds([a, b], () => {
      expect(isNonBlocking(a) || isNonBlocking(b)).toBe(false);
      setNonBlocking(b);
      expect(recvMsg(b, new Uint8Array(4))).toBeNull();
      shutdownFd(a, "both");
      expect(recvMsg(b, new Uint8Array(4))!.n).toBe(0);
    });
    const [r, w] = pipe();
    withFds([r, w], () => {
      expect((thrown(() => shutdownFd(r, "read")) as SysError).code).toBe("ENOTSOCK");
    });
  });
});
