// File descriptors: pipes, flags, reads and writes straight into caller-owned Uint8Arrays.
//
// Every fd created here is close-on-exec. That is safe for handing fds to children through
// Bun.spawn's `stdio` array: Bun dup2()s them into place in the child, which clears the flag on
// the copy.
import { ARCH, SYS, checkNoNul, cString, libc, lastErrno } from "./libc.ts";
import { ERRNO, SysError, sysError } from "./errors.ts";
import { readdirSync } from "node:fs";
import { ptr } from "bun:ffi";

/** open(2) flags. O_DIRECTORY and O_NOFOLLOW differ between x86_64 and aarch64. */
export const O = {
  RDONLY: 0,
  WRONLY: 0o1,
  RDWR: 0o2,
  CREAT: 0o100,
  EXCL: 0o200,
  NOCTTY: 0o400,
  TRUNC: 0o1000,
  APPEND: 0o2000,
  NONBLOCK: 0o4000,
  DSYNC: 0o10000,
  ASYNC: 0o20000,
  DIRECTORY: ARCH === "x64" ? 0o200000 : 0o40000,
  NOFOLLOW: ARCH === "x64" ? 0o400000 : 0o100000,
  CLOEXEC: 0o2000000,
  PATH: 0o10000000,
} as const;

export const F = {
  DUPFD: 0,
  GETFD: 1,
  SETFD: 2,
  GETFL: 3,
  SETFL: 4,
  SETOWN: 8,
  GETOWN: 9,
  DUPFD_CLOEXEC: 1030,
  SETPIPE_SZ: 1031,
  GETPIPE_SZ: 1032,
  ADD_SEALS: 1033,
  GET_SEALS: 1034,
} as const;

export const FD_CLOEXEC = 1;

export const EFD = { SEMAPHORE: 1, NONBLOCK: 0o4000, CLOEXEC: 0o2000000 } as const;
export const MFD = { CLOEXEC: 1, ALLOW_SEALING: 2 } as const;
export const SEAL = { SEAL: 1, SHRINK: 2, GROW: 4, WRITE: 8 } as const;

const fdPair = new Int32Array(2);

/** A pipe with both ends close-on-exec (and blocking). */
export function pipe(): [readFd: number, writeFd: number] {
  if (libc.pipe2(fdPair, O.CLOEXEC) < 0) throw sysError("pipe2");
  return [fdPair[0]!, fdPair[1]!];
}

/** close(2). EINTR counts as success: on Linux the fd is gone either way and must not be closed
 * again (the number may already belong to someone else). */
export function closeFd(fd: number): void {
  if (libc.close(fd) < 0) {
    const errno = lastErrno();
    if (errno !== ERRNO.EINTR) throw new SysError(errno, "close", `fd ${fd}`);
  }
}

/** close(2) for cleanup paths: ignores errors and negative fds. */
export function closeQuietly(fd: number | null | undefined): void {
  if (fd !== null && fd !== undefined && fd >= 0) libc.close(fd);
}

function fcntlOrThrow(fd: number, cmd: number, arg: number, what: string): number {
  const rc = libc.fcntl(fd, cmd, arg);
  if (rc < 0) throw sysError("fcntl", `fd ${fd} ${what}`);
  return rc;
}

/** File status flags (F_GETFL): O.NONBLOCK, O.ASYNC, O.APPEND, access mode. */
export function getStatusFlags(fd: number): number {
  return fcntlOrThrow(fd, F.GETFL, 0, "F_GETFL");
}

/** Sets or clears status flags. These live on the open file description, so they are shared with
 * every dup of the fd and with children that inherited it. */
export function updateStatusFlags(fd: number, flags: number, on: boolean): void {
  const old = getStatusFlags(fd);
  const wanted = on ? old | flags : old & ~flags;
  if (wanted !== old) fcntlOrThrow(fd, F.SETFL, wanted, "F_SETFL");
}

export function setNonBlocking(fd: number, on = true): void {
  updateStatusFlags(fd, O.NONBLOCK, on);
}

export function isNonBlocking(fd: number): boolean {
  return (getStatusFlags(fd) & O.NONBLOCK) !== 0;
}

export function setCloexec(fd: number, on: boolean): void {
  const old = fcntlOrThrow(fd, F.GETFD, 0, "F_GETFD");
  const wanted = on ? old | FD_CLOEXEC : old & ~FD_CLOEXEC;
  if (wanted !== old) fcntlOrThrow(fd, F.SETFD, wanted, "F_SETFD");
}

export function isCloexec(fd: number): boolean {
  return (fcntlOrThrow(fd, F.GETFD, 0, "F_GETFD") & FD_CLOEXEC) !== 0;
}

/** Capacity of the pipe behind `fd` in bytes (F_GETPIPE_SZ); either end works. */
export function getPipeSize(fd: number): number {
  return fcntlOrThrow(fd, F.GETPIPE_SZ, 0, "F_GETPIPE_SZ");
}

/**
 * Resizes the pipe behind `fd` (F_SETPIPE_SZ); the kernel rounds up to a power-of-two number of
 * pages and returns the capacity it set. Fails with EPERM above /proc/sys/fs/pipe-max-size, or
 * when the user's pipe buffers exceed fs/pipe-user-pages-* and the caller lacks
 * CAP_SYS_RESOURCE/CAP_SYS_ADMIN; EBUSY when shrinking below what the pipe holds.
 */
export function setPipeSize(fd: number, bytes: number): number {
  return fcntlOrThrow(fd, F.SETPIPE_SZ, bytes, "F_SETPIPE_SZ");
}

/** Routes SIGIO/SIGURG for `fd` to process `pid` (F_SETOWN). */
export function setOwner(fd: number, pid: number): void {
  fcntlOrThrow(fd, F.SETOWN, pid, "F_SETOWN");
}

/** True when `fd` is an open descriptor of this process. */
export function isOpenFd(fd: number): boolean {
  return libc.fcntl(fd, F.GETFD, 0) >= 0;
}

function checkRange(what: string, buf: Uint8Array, offset: number, length: number): void {
  if (!(offset >= 0 && length >= 0 && offset + length <= buf.length)) {
    throw new RangeError(`${what}: offset ${offset} + length ${length} outside buffer of ${buf.length}`);
  }
}

/**
 * read(2) into `buf[offset, offset+length)`. Returns the byte count, 0 at end of file, -1 when a
 * non-blocking fd has nothing to read (EAGAIN). Retries EINTR; throws SysError otherwise.
 * This is the hot path of container logging: it allocates nothing.
 */
export function readFd(fd: number, buf: Uint8Array, offset = 0, length = buf.length - offset): number {
  checkRange("readFd", buf, offset, length);
  // A zero-length read would return 0 and look exactly like end of file.
  if (length === 0) throw new RangeError("readFd: nothing to read into (length 0)");
  const address = ptr(buf, offset);
  for (;;) {
    const n = libc.read(fd, address, length) as number;
    if (n >= 0) return n;
    const errno = lastErrno();
    if (errno === ERRNO.EAGAIN) return -1;
    if (errno !== ERRNO.EINTR) throw new SysError(errno, "read", `fd ${fd}`);
  }
}

/** write(2) of `data[offset, offset+length)`. Returns bytes written (possibly fewer than asked),
 * -1 when a non-blocking fd is full (EAGAIN). Retries EINTR; throws SysError otherwise (EPIPE
 * included; SIGPIPE is ignored by Bun, so a closed pipe surfaces as an EPIPE error). */
export function writeFd(fd: number, data: Uint8Array, offset = 0, length = data.length - offset): number {
  checkRange("writeFd", data, offset, length);
  if (length === 0) return 0;
  const address = ptr(data, offset);
  for (;;) {
    const n = libc.write(fd, address, length) as number;
    if (n >= 0) return n;
    const errno = lastErrno();
    if (errno === ERRNO.EAGAIN) return -1;
    if (errno !== ERRNO.EINTR) throw new SysError(errno, "write", `fd ${fd}`);
  }
}

const POLLOUT = 4;
const onePollFd = new Int32Array(2);

/** Blocks the calling thread until `fd` is writable. */
function waitWritable(fd: number): void {
  onePollFd[0] = fd;
  onePollFd[1] = POLLOUT; // events (low 16 bits), revents (high 16 bits) cleared
  for (;;) {
    if (libc.poll(onePollFd, 1, -1) >= 0) return;
    const errno = lastErrno();
    if (errno !== ERRNO.EINTR) throw new SysError(errno, "poll", `fd ${fd}`);
  }
}

/** Writes all of `data`, looping over partial writes and EINTR. Meant for blocking fds; on a
 * non-blocking fd that fills up it blocks the thread in poll(2) until there is room again. */
export function writeAll(fd: number, data: Uint8Array): void {
  let offset = 0;
  while (offset < data.length) {
    const n = writeFd(fd, data, offset);
    if (n < 0) waitWritable(fd);
    else offset += n;
  }
}

/** A duplicate of `fd` (lowest free number), close-on-exec unless `cloexec` is false. */
export function dupFd(fd: number, cloexec = true): number {
  return fcntlOrThrow(fd, cloexec ? F.DUPFD_CLOEXEC : F.DUPFD, 0, "dup");
}

/** open(2); O_CLOEXEC is always added. */
export function openFd(path: string, flags: number, mode = 0o644): number {
  const fd = libc.open(checkNoNul(path, "path"), flags | O.CLOEXEC, mode);
  if (fd < 0) throw sysError("open", path);
  return fd;
}

/** mkdir(2) of every missing component of `path` (like `mkdir -p`); `mode` is masked by umask. */
export function mkdirP(path: string, mode = 0o777): void {
  checkNoNul(path, "path");
  const parts = path.split("/");
  let current = path.startsWith("/") ? "" : ".";
  for (const part of parts) {
    if (part === "" || part === ".") continue;
    current += `/${part}`;
    if (libc.mkdir(current, mode) < 0) {
      const errno = lastErrno();
      // EEXIST may also be a file in the way; the next mkdir below it (ENOTDIR) or the caller's
      // open(O_DIRECTORY) reports that with the right errno.
      if (errno !== ERRNO.EEXIST) throw new SysError(errno, "mkdir", current);
    }
  }
}

const linkBuffer = new Uint8Array(4096);
const decoder = new TextDecoder();

/** readlink(2). */
export function readLink(path: string): string {
  const n = libc.readlink(checkNoNul(path, "path"), linkBuffer, linkBuffer.length) as number;
  if (n < 0) throw sysError("readlink", path);
  return decoder.decode(linkBuffer.subarray(0, n));
}

/** What an fd refers to: a path, "pipe:[123]", "socket:[456]", "anon_inode:[pidfd]", ... */
export function fdTarget(fd: number): string {
  return readLink(`/proc/self/fd/${fd}`);
}

/** The fds open in this process, ascending. */
export function listOpenFds(): number[] {
  // readdir itself holds an fd on /proc/self/fd while listing; it is closed again by the time we
  // look, so keep only numbers that are still open.
  return readdirSync("/proc/self/fd")
    .map(Number)
    .filter((fd) => Number.isInteger(fd) && isOpenFd(fd))
    .sort((a, b) => a - b);
}

export function fsyncFd(fd: number): void {
  if (libc.fsync(fd) < 0) throw sysError("fsync", `fd ${fd}`);
}

/** An anonymous memory file (memfd_create(2)); by default close-on-exec and sealable, as journald
 * requires for its large-entry fallback. */
export function memfdCreate(name: string, flags: number = MFD.CLOEXEC | MFD.ALLOW_SEALING): number {
  const nameBytes = cString(name);
  const fd = libc.syscall(SYS.memfd_create, ptr(nameBytes), flags, 0, 0, 0, 0) as number;
  if (fd < 0) throw sysError("memfd_create", name);
  return fd;
}

/** Adds seals (F_ADD_SEALS) to a memfd; by default makes it immutable. */
export function sealFd(fd: number, seals: number = SEAL.SEAL | SEAL.SHRINK | SEAL.GROW | SEAL.WRITE): void {
  fcntlOrThrow(fd, F.ADD_SEALS, seals, "F_ADD_SEALS");
}

/** eventfd(2); close-on-exec is always added. */
export function eventfd(initval = 0, flags: number = EFD.NONBLOCK): number {
  const fd = libc.eventfd(initval, flags | EFD.CLOEXEC);
  if (fd < 0) throw sysError("eventfd");
  return fd;
}

const counterBytes = new Uint8Array(8);
const counterView = new DataView(counterBytes.buffer);

/** Reads and resets an eventfd counter; null when it is zero on a non-blocking eventfd. */
export function readEventfd(fd: number): number | null {
  const n = readFd(fd, counterBytes);
  if (n < 0) return null;
  if (n !== 8) throw new Error(`readEventfd: short read of ${n} bytes from fd ${fd}`);
  return counterView.getUint32(0, true) + counterView.getUint32(4, true) * 0x1_0000_0000;
}

/** Adds `value` to an eventfd counter. */
export function writeEventfd(fd: number, value = 1): void {
  counterView.setUint32(0, value >>> 0, true);
  counterView.setUint32(4, Math.floor(value / 0x1_0000_0000), true);
  const n = writeFd(fd, counterBytes);
  if (n < 0) throw new SysError(ERRNO.EAGAIN, "write", `eventfd ${fd}`);
}
