// Datagrams to an abstract AF_UNIX address, for sd_notify(3).
//
// systemd (and tools standing in for it) may set NOTIFY_SOCKET to "@name": an address in the
// abstract namespace, written to the kernel as sun_path[0] = NUL followed by the name, with an
// address length that covers exactly those bytes (no terminating NUL: a trailing NUL would be part
// of a DIFFERENT name). ffi/socket.ts sendDatagram only knows filesystem paths (it rejects NUL
// bytes and appends the terminator), so this small sender lives apart from it.
import { ptr } from "bun:ffi";
import { addressOf, lastErrno, libc, putPointer, putSize } from "./libc.ts";
import { ERRNO, SysError } from "./errors.ts";

const AF_UNIX = 1;
const MSG_NOSIGNAL = 0x4000;
const SUN_PATH_OFFSET = 2;
const SUN_PATH_MAX = 108;

const encoder = new TextEncoder();

/**
 * sockaddr_un for the abstract `name` (without the leading NUL / "@"), and its exact length.
 * The name may itself contain any byte, NUL included: the length, not a terminator, ends it.
 */
export function abstractSockaddr(name: string): { addr: Uint8Array; len: number } {
  const bytes = encoder.encode(name);
  if (bytes.length === 0) throw new TypeError("abstract socket name is empty");
  if (bytes.length + 1 > SUN_PATH_MAX) throw new SysError(ERRNO.ENAMETOOLONG, "sendmsg", `@${name}`);
  const addr = new Uint8Array(SUN_PATH_OFFSET + SUN_PATH_MAX);
  addr[0] = AF_UNIX & 0xff;
  addr[1] = AF_UNIX >> 8;
  // addr[2] stays 0: the abstract-namespace marker.
  addr.set(bytes, SUN_PATH_OFFSET + 1);
  return { addr, len: SUN_PATH_OFFSET + 1 + bytes.length };
}

/**
 * Sends one datagram from the (unbound) datagram socket `fd` to the abstract address `name`.
 * Returns the bytes sent, or null when the receiver's queue is full (EAGAIN). Throws SysError
 * otherwise, e.g. ECONNREFUSED when nothing is bound to that name.
 */
export function sendAbstractDatagram(fd: number, name: string, data: Uint8Array): number | null {
  const { addr, len } = abstractSockaddr(name);
  // struct msghdr { name @0; namelen @8; iov @16; iovlen @24; control @32; controllen @40; flags @48 }
  const msghdr = new Uint8Array(56);
  const view = new DataView(msghdr.buffer);
  const iovec = new Uint8Array(16);
  const iovView = new DataView(iovec.buffer);
  putPointer(iovView, 0, addressOf(data));
  putSize(iovView, 8, data.length);
  putPointer(view, 0, ptr(addr));
  view.setUint32(8, len, true);
  putPointer(view, 16, ptr(iovec));
  putSize(view, 24, 1);
  for (;;) {
    const n = libc.sendmsg(fd, msghdr, MSG_NOSIGNAL) as number;
    if (n >= 0) return n;
    const errno = lastErrno();
    if (errno === ERRNO.EAGAIN) return null;
    if (errno !== ERRNO.EINTR) throw new SysError(errno, "sendmsg", `@${name}`);
  }
}
