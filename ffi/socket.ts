// AF_UNIX sockets: stream, seqpacket and datagram, with SCM_RIGHTS fd passing.
//
// Paths: sockaddr_un holds at most 107 path bytes. bind and connect therefore always go through
// the parent directory: open it (O_PATH) and use "/proc/self/fd/<dirfd>/<basename>", which stays
// short however deep the directory is (the basename alone must still fit).
//
// All sockets returned here are non-blocking and close-on-exec.
import { basename, dirname } from "node:path";
import { ptr } from "bun:ffi";
import { addressOf, getSize, lastErrno, libc, putPointer, putSize } from "./libc.ts";
import { ERRNO, SysError, sysError } from "./errors.ts";
import { O, closeQuietly, mkdirP, openFd } from "./fd.ts";

const AF_UNIX = 1;
export const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SOCK_SEQPACKET = 5;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;

export const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;

const MSG_CTRUNC = 0x8;
const MSG_TRUNC = 0x20;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;

/** The kernel's limit of fds in one SCM_RIGHTS message (SCM_MAX_FD). */
export const MAX_FDS_PER_MESSAGE = 253;

export type UnixSocketType = "stream" | "seqpacket" | "dgram";

function socketTypeNumber(type: UnixSocketType): number {
  switch (type) {
    case "stream":
      return SOCK_STREAM;
    case "seqpacket":
      return SOCK_SEQPACKET;
    case "dgram":
      return SOCK_DGRAM;
    default:
      throw new TypeError(`unknown unix socket type ${String(type)}`);
  }
}

function newSocket(type: UnixSocketType): number {
  const fd = libc.socket(AF_UNIX, socketTypeNumber(type) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw sysError("socket", `AF_UNIX ${type}`);
  return fd;
}

// ---- sockaddr_un -----------------------------------------------------------------------------

const SUN_PATH_OFFSET = 2;
const SUN_PATH_MAX = 108; // including the terminating NUL
const encoder = new TextEncoder();

/** Fills `out` with a sockaddr_un for `path`; returns the address length to pass to the kernel.
 * `syscall` and `original` only serve the error message. */
function encodeSockaddr(out: Uint8Array, path: string, syscall: string, original: string): number {
  const bytes = encoder.encode(path);
  if (bytes.includes(0)) throw new TypeError(`socket path contains a NUL byte: ${JSON.stringify(original)}`);
  if (bytes.length >= SUN_PATH_MAX) throw new SysError(ERRNO.ENAMETOOLONG, syscall, original);
  out.fill(0);
  out[0] = AF_UNIX & 0xff;
  out[1] = AF_UNIX >> 8;
  out.set(bytes, SUN_PATH_OFFSET);
  return SUN_PATH_OFFSET + bytes.length + 1;
}

const sockaddr = new Uint8Array(SUN_PATH_OFFSET + SUN_PATH_MAX);

/** Runs `use` with a short alias of `path` that goes through an O_PATH fd of its directory. */
function viaParentDir<T>(path: string, use: (shortPath: string) => T): T {
  const name = basename(path);
  if (name === "" || name === "." || name === "..") throw new TypeError(`not a socket path: ${JSON.stringify(path)}`);
  const dirFd = openFd(dirname(path), O.PATH | O.DIRECTORY);
  try {
    return use(`/proc/self/fd/${dirFd}/${name}`);
  } finally {
    closeQuietly(dirFd);
  }
}

function bindAt(fd: number, path: string): void {
  viaParentDir(path, (shortPath) => {
    const len = encodeSockaddr(sockaddr, shortPath, "bind", path);
    if (libc.bind(fd, sockaddr, len) < 0) throw sysError("bind", path);
  });
}

function connectAt(fd: number, path: string): void {
  viaParentDir(path, (shortPath) => {
    const len = encodeSockaddr(sockaddr, shortPath, "connect", path);
    while (libc.connect(fd, sockaddr, len) < 0) {
      const errno = lastErrno();
      if (errno !== ERRNO.EINTR) throw new SysError(errno, "connect", path);
    }
  });
}

// ---- listening, accepting, connecting --------------------------------------------------------

/**
 * A listening socket bound at `path` (parent directories are created, mode 0777 & ~umask).
 * An existing file at `path` is NOT removed: bind then fails with EADDRINUSE and the caller
 * decides whether to unlink and retry.
 */
export function listenUnix(path: string, type: "stream" | "seqpacket", backlog = 128): number {
  mkdirP(dirname(path));
  const fd = newSocket(type);
  try {
    bindAt(fd, path);
    if (libc.listen(fd, backlog) < 0) throw sysError("listen", path);
    return fd;
  } catch (e) {
    closeQuietly(fd);
    throw e;
  }
}

/** A datagram socket bound at `path` (parent directories are created). */
export function bindDgram(path: string): number {
  mkdirP(dirname(path));
  const fd = newSocket("dgram");
  try {
    bindAt(fd, path);
    return fd;
  } catch (e) {
    closeQuietly(fd);
    throw e;
  }
}

/** accept4(2): the next pending connection, or null when there is none (EAGAIN). */
export function acceptConn(listenFd: number): number | null {
  for (;;) {
    const fd = libc.accept4(listenFd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) return fd;
    const errno = lastErrno();
    if (errno === ERRNO.EAGAIN) return null;
    // A connection that died in the queue is not the listener's problem: try the next one.
    if (errno !== ERRNO.EINTR && errno !== ERRNO.ECONNABORTED) throw new SysError(errno, "accept4", `fd ${listenFd}`);
  }
}

/**
 * Connects to the unix socket at `path`. The connect itself is non-blocking: on AF_UNIX it either
 * completes at once or fails, with EAGAIN when the listener's backlog is full (a blocking connect
 * would freeze the event loop then, forever if the listener lives in this same process).
 */
export function connectUnix(path: string, type: UnixSocketType): number {
  const fd = newSocket(type);
  try {
    connectAt(fd, path);
    return fd;
  } catch (e) {
    closeQuietly(fd);
    throw e;
  }
}

/** An unbound, non-blocking datagram socket for sendDatagram. */
export function dgramSocket(): number {
  return newSocket("dgram");
}

/** A connected pair; non-blocking unless `nonBlocking` is false (the flag is per open file, so
 * give a child a blocking end if it does not expect O_NONBLOCK). */
export function socketPair(type: UnixSocketType, nonBlocking = true): [number, number] {
  const pair = new Int32Array(2);
  const flags = socketTypeNumber(type) | SOCK_CLOEXEC | (nonBlocking ? SOCK_NONBLOCK : 0);
  if (libc.socketpair(AF_UNIX, flags, 0, pair) < 0) throw sysError("socketpair", type);
  return [pair[0]!, pair[1]!];
}

export function shutdownFd(fd: number, how: "read" | "write" | "both"): void {
  const code = how === "read" ? 0 : how === "write" ? 1 : 2;
  if (libc.shutdown(fd, code) < 0) throw sysError("shutdown", `fd ${fd} ${how}`);
}

// ---- sendmsg / recvmsg -----------------------------------------------------------------------
//
// One msghdr, one iovec and one control buffer are reused by every call (calls are synchronous
// and JS is single-threaded per module instance). 64-bit layouts:
//   struct msghdr  { void *name @0; u32 namelen @8; iovec *iov @16; size_t iovlen @24;
//                    void *control @32; size_t controllen @40; int flags @48 }   (56 bytes)
//   struct iovec   { void *base @0; size_t len @8 }                              (16 bytes)
//   struct cmsghdr { size_t len @0; int level @8; int type @12; data @16 }      (8-byte aligned)

const msghdr = new Uint8Array(56);
const msghdrView = new DataView(msghdr.buffer);
const iovec = new Uint8Array(16);
const iovecView = new DataView(iovec.buffer);
const MSG_NAME = 0, MSG_NAMELEN = 8, MSG_IOV = 16, MSG_IOVLEN = 24;
const MSG_CONTROL = 32, MSG_CONTROLLEN = 40, MSG_FLAGS = 48;
const CMSG_HEADER = 16;

const align8 = (n: number) => (n + 7) & ~7;
const cmsgSpace = (dataBytes: number) => CMSG_HEADER + align8(dataBytes);

let control = new Uint8Array(cmsgSpace(4 * MAX_FDS_PER_MESSAGE));
let controlView = new DataView(control.buffer);

function ensureControlCapacity(bytes: number): void {
  if (control.length >= bytes) return;
  control = new Uint8Array(align8(bytes));
  controlView = new DataView(control.buffer);
}

function prepareMessage(data: Uint8Array): void {
  msghdr.fill(0);
  putPointer(iovecView, 0, addressOf(data));
  putSize(iovecView, 8, data.length);
  putPointer(msghdrView, MSG_IOV, ptr(iovec));
  putSize(msghdrView, MSG_IOVLEN, 1);
}

/** Puts one SCM_RIGHTS cmsg carrying `fds` into the control buffer and points msghdr at it. */
function attachFds(fds: readonly number[]): void {
  if (fds.length === 0) return;
  if (fds.length > MAX_FDS_PER_MESSAGE) {
    throw new RangeError(`cannot pass ${fds.length} fds in one message (kernel limit ${MAX_FDS_PER_MESSAGE})`);
  }
  const space = cmsgSpace(4 * fds.length);
  ensureControlCapacity(space);
  control.fill(0, 0, space);
  putSize(controlView, 0, CMSG_HEADER + 4 * fds.length);
  controlView.setInt32(8, SOL_SOCKET, true);
  controlView.setInt32(12, SCM_RIGHTS, true);
  fds.forEach((fd, i) => controlView.setInt32(CMSG_HEADER + 4 * i, fd, true));
  putPointer(msghdrView, MSG_CONTROL, ptr(control));
  putSize(msghdrView, MSG_CONTROLLEN, space);
}

/** sendmsg with MSG_NOSIGNAL; returns bytes sent or null on EAGAIN. */
function sendPrepared(fd: number, what: string): number | null {
  for (;;) {
    const n = libc.sendmsg(fd, msghdr, MSG_NOSIGNAL) as number;
    if (n >= 0) return n;
    const errno = lastErrno();
    if (errno === ERRNO.EAGAIN) return null;
    if (errno !== ERRNO.EINTR) throw new SysError(errno, "sendmsg", what);
  }
}

/**
 * Sends `data` (and `fds` as SCM_RIGHTS) on a connected socket. Returns the bytes sent, which on
 * a stream socket may be fewer than `data.length`, or null when the socket buffer is full. The
 * fds stay open here; the peer gets its own copies. A closed peer throws EPIPE (no SIGPIPE).
 */
export function sendMsg(fd: number, data: Uint8Array, fds: readonly number[] = []): number | null {
  prepareMessage(data);
  attachFds(fds);
  return sendPrepared(fd, `fd ${fd}`);
}

// Destination addresses are cached: journald logging sends every line to the same path.
let cachedDestPath = "";
let cachedDest = new Uint8Array(0);
let cachedDestLen = 0;

/**
 * Sends one datagram to the socket bound at `destPath` (journald's native protocol, including its
 * large-entry fallback of an empty datagram carrying a sealed memfd in `fds`). Returns the bytes
 * sent, or null when the receiver's queue is full (EAGAIN on a non-blocking socket).
 */
export function sendDatagram(fd: number, destPath: string, data: Uint8Array, fds: readonly number[] = []): number | null {
  if (Buffer.byteLength(destPath) >= SUN_PATH_MAX) {
    // Rare: go through the parent directory for this one send.
    return viaParentDir(destPath, (shortPath) => sendDatagramTo(fd, shortPath, destPath, data, fds));
  }
  return sendDatagramTo(fd, destPath, destPath, data, fds);
}

function sendDatagramTo(fd: number, path: string, original: string, data: Uint8Array, fds: readonly number[]): number | null {
  if (path !== cachedDestPath) {
    const dest = new Uint8Array(sockaddr.length);
    cachedDestLen = encodeSockaddr(dest, path, "sendmsg", original);
    cachedDest = dest;
    cachedDestPath = path;
  }
  prepareMessage(data);
  putPointer(msghdrView, MSG_NAME, ptr(cachedDest));
  msghdrView.setUint32(MSG_NAMELEN, cachedDestLen, true);
  attachFds(fds);
  return sendPrepared(fd, original);
}

export type ReceivedMessage = {
  /** Bytes received; 0 at end of stream (or an empty seqpacket/datagram message). */
  n: number;
  /** Every fd that came with the message, already close-on-exec. The caller owns them. */
  fds: number[];
  /** Something did not fit: data (MSG_TRUNC) or fds (MSG_CTRUNC). */
  truncated: boolean;
  /** The message was longer than `buf` and its tail is lost (seqpacket/dgram). */
  dataTruncated: boolean;
  /** More fds came than `maxFds`; the kernel closed the ones that did not fit. */
  fdsTruncated: boolean;
};

/**
 * recvmsg into `buf`, accepting up to `maxFds` passed fds (MSG_CMSG_CLOEXEC). Returns null when
 * nothing is waiting (EAGAIN). With maxFds = 0, fds a peer sends anyway are closed by the kernel
 * and reported as fdsTruncated.
 */
export function recvMsg(fd: number, buf: Uint8Array, maxFds = 0): ReceivedMessage | null {
  prepareMessage(buf);
  if (maxFds > 0) {
    const space = cmsgSpace(4 * maxFds);
    ensureControlCapacity(space);
    putPointer(msghdrView, MSG_CONTROL, ptr(control));
    putSize(msghdrView, MSG_CONTROLLEN, space);
  }
  let n: number;
  for (;;) {
    n = libc.recvmsg(fd, msghdr, MSG_CMSG_CLOEXEC) as number;
    if (n >= 0) break;
    const errno = lastErrno();
    if (errno === ERRNO.EAGAIN) return null;
    if (errno !== ERRNO.EINTR) throw new SysError(errno, "recvmsg", `fd ${fd}`);
  }
  const flags = msghdrView.getInt32(MSG_FLAGS, true);
  const fds = maxFds > 0 ? receivedFds(getSize(msghdrView, MSG_CONTROLLEN)) : [];
  const dataTruncated = (flags & MSG_TRUNC) !== 0;
  const fdsTruncated = (flags & MSG_CTRUNC) !== 0;
  return { n, fds, truncated: dataTruncated || fdsTruncated, dataTruncated, fdsTruncated };
}

/** Collects the fds of every SCM_RIGHTS cmsg in the first `length` bytes of the control buffer. */
function receivedFds(length: number): number[] {
  const fds: number[] = [];
  let offset = 0;
  while (offset + CMSG_HEADER <= length) {
    const cmsgLen = getSize(controlView, offset);
    if (cmsgLen < CMSG_HEADER || offset + cmsgLen > length) break;
    const level = controlView.getInt32(offset + 8, true);
    const type = controlView.getInt32(offset + 12, true);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      const count = (cmsgLen - CMSG_HEADER) >> 2;
      for (let i = 0; i < count; i++) fds.push(controlView.getInt32(offset + CMSG_HEADER + 4 * i, true));
    }
    offset += align8(cmsgLen);
  }
  return fds;
}
