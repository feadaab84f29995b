// The one dlopen of glibc that every other ffi/ module shares, plus the per-architecture numbers
// that differ between x86_64 and aarch64 (syscall numbers, a few open(2) flags).
//
// Only Linux on x64 and arm64 is supported. Variadic C functions (fcntl, ioctl, open, prctl,
// syscall) are declared with fixed integer arguments: on the x86_64 SysV ABI and on Linux aarch64
// the variadic integer arguments travel in the same registers as fixed ones, so this is sound.
import { FFIType, dlopen, ptr, read, type Pointer } from "bun:ffi";

type Arch = "x64" | "arm64";

function currentArch(): Arch {
  if (process.platform !== "linux") throw new Error(`ffi: unsupported platform ${process.platform}`);
  if (process.arch === "x64" || process.arch === "arm64") return process.arch;
  throw new Error(`ffi: unsupported architecture ${process.arch} (x64 and arm64 only)`);
}

export const ARCH: Arch = currentArch();

/** Numbers for `syscall()`, for calls that we make without a glibc wrapper. */
export const SYS = {
  x64: { pidfd_send_signal: 424, pidfd_open: 434, memfd_create: 319 },
  arm64: { pidfd_send_signal: 424, pidfd_open: 434, memfd_create: 279 },
}[ARCH];

export const libc = dlopen("libc.so.6", {
  __errno_location: { args: [], returns: "ptr" },
  strerror: { args: ["i32"], returns: "cstring" },
  syscall: { args: ["i64", "i64", "i64", "i64", "i64", "i64", "i64"], returns: FFIType.i64_fast },

  // fds
  close: { args: ["i32"], returns: "i32" },
  pipe2: { args: ["ptr", "i32"], returns: "i32" },
  fcntl: { args: ["i32", "i32", "i64"], returns: "i32" },
  read: { args: ["i32", "ptr", "u64"], returns: FFIType.i64_fast },
  write: { args: ["i32", "ptr", "u64"], returns: FFIType.i64_fast },
  open: { args: ["cstring", "i32", "u32"], returns: "i32" },
  mkdir: { args: ["cstring", "u32"], returns: "i32" },
  readlink: { args: ["cstring", "ptr", "u64"], returns: FFIType.i64_fast },
  fsync: { args: ["i32"], returns: "i32" },
  eventfd: { args: ["u32", "i32"], returns: "i32" },
  inotify_init1: { args: ["i32"], returns: "i32" },
  inotify_add_watch: { args: ["i32", "cstring", "u32"], returns: "i32" },
  poll: { args: ["ptr", "u64", "i32"], returns: "i32" },
  ioctl: { args: ["i32", "u64", "ptr"], returns: "i32" },

  // processes
  prctl: { args: ["i32", "u64", "u64", "u64", "u64"], returns: "i32" },
  waitid: { args: ["i32", "u32", "ptr", "i32"], returns: "i32" },
  kill: { args: ["i32", "i32"], returns: "i32" },
  getpgid: { args: ["i32"], returns: "i32" },
  getpid: { args: [], returns: "i32" },
  umask: { args: ["u32"], returns: "u32" },
  setsid: { args: [], returns: "i32" },

  // sockets
  socket: { args: ["i32", "i32", "i32"], returns: "i32" },
  socketpair: { args: ["i32", "i32", "i32", "ptr"], returns: "i32" },
  bind: { args: ["i32", "ptr", "u32"], returns: "i32" },
  listen: { args: ["i32", "i32"], returns: "i32" },
  accept4: { args: ["i32", "ptr", "ptr", "i32"], returns: "i32" },
  connect: { args: ["i32", "ptr", "u32"], returns: "i32" },
  sendmsg: { args: ["i32", "ptr", "i32"], returns: FFIType.i64_fast },
  recvmsg: { args: ["i32", "ptr", "i32"], returns: FFIType.i64_fast },
  shutdown: { args: ["i32", "i32"], returns: "i32" },
  getsockopt: { args: ["i32", "i32", "i32", "ptr", "ptr"], returns: "i32" },

  // terminals
  tcgetattr: { args: ["i32", "ptr"], returns: "i32" },
  tcsetattr: { args: ["i32", "i32", "ptr"], returns: "i32" },
  posix_openpt: { args: ["i32"], returns: "i32" },
  grantpt: { args: ["i32"], returns: "i32" },
  unlockpt: { args: ["i32"], returns: "i32" },
  ptsname_r: { args: ["i32", "ptr", "u64"], returns: "i32" },

  // namespaces and credentials
  unshare: { args: ["i32"], returns: "i32" },
  setns: { args: ["i32", "i32"], returns: "i32" },
  mount: { args: ["cstring", "cstring", "cstring", "u64", "ptr"], returns: "i32" },
  umount2: { args: ["cstring", "i32"], returns: "i32" },
  setresuid: { args: ["u32", "u32", "u32"], returns: "i32" },
  setresgid: { args: ["u32", "u32", "u32"], returns: "i32" },
}).symbols;

// errno is thread-local; each JS thread (main or Worker) instantiates this module separately, so
// caching the address of the current thread's errno at load time is correct.
const errnoAddress = libc.__errno_location() as Pointer;

/** The calling thread's errno. Read it right after the failing call, in the same synchronous code:
 * Bun's own native work between two JS statements may overwrite it. */
export function lastErrno(): number {
  return read.i32(errnoAddress, 0);
}

// A valid address for calls that pass a zero-length buffer (bun:ffi refuses to take the address of
// empty memory; the kernel never touches it when the length is 0).
const scratch = new Uint8Array(8);

/** Address of `view[offset]` for passing to C; works for empty views and offset == length. */
export function addressOf(view: NodeJS.TypedArray | DataView, offset = 0): Pointer {
  if (view.byteLength === 0 || offset === view.byteLength) return ptr(scratch);
  return ptr(view, offset);
}

/** Writes a native pointer (a JS number < 2^53) as a little-endian u64 into `dv` at `offset`,
 * without allocating a BigInt. */
export function putPointer(dv: DataView, offset: number, address: number): void {
  dv.setUint32(offset, address >>> 0, true);
  dv.setUint32(offset + 4, Math.floor(address / 0x1_0000_0000), true);
}

/** Writes a non-negative integer < 2^53 as a little-endian u64 (size_t fields). */
export const putSize = putPointer;

/** Reads a little-endian u64 that is known to be < 2^53. */
export function getSize(dv: DataView, offset: number): number {
  return dv.getUint32(offset, true) + dv.getUint32(offset + 4, true) * 0x1_0000_0000;
}

const encoder = new TextEncoder();

/** A NUL-terminated UTF-8 copy of `s`, for C functions that take `const char *` through a pointer
 * slot (prctl, syscall). Functions declared with "cstring" take JS strings directly. */
export function cString(s: string): Uint8Array {
  const bytes = encoder.encode(s);
  if (bytes.includes(0)) throw new TypeError(`string contains a NUL byte: ${JSON.stringify(s)}`);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

/** Rejects strings that C would silently cut at an embedded NUL (a path "a\0b" must not become "a"). */
export function checkNoNul(s: string, what: string): string {
  if (s.includes("\0")) throw new TypeError(`${what} contains a NUL byte: ${JSON.stringify(s)}`);
  return s;
}
