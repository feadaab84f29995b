// TCP connections to a port of the pod, made from inside the pod's network namespace.
//
// WHY THIS DESIGN: a socket belongs to the network namespace it was created in, for its whole
// life, whoever later reads or writes it. setns(CLONE_NEWNET) switches only the calling thread,
// and the JS main thread is the one that runs bun:ffi calls. So the main thread enters the pod's
// namespace, creates the socket and starts a NON-BLOCKING connect, and returns to its own
// namespace — all in one synchronous stretch of JS in which nothing else can run on this thread
// (no callback, no Bun socket, no timer). The connected fd is then driven like any other raw fd
// (ffi/poller.ts readiness + read/write), entirely from the server's own namespace.
// Needs CAP_SYS_ADMIN (conmonrs runs as root). Alternatives rejected: a relay process per
// connection (`nsenter` + socat/nc) costs a process and depends on tools a host may not have;
// a Worker thread in the namespace would need its own event loop plumbing for every byte.

import { ptr } from "bun:ffi";
import { lastErrno, libc } from "./libc.ts";
import { closeQuietly, openFd, O, readFd, writeFd } from "./fd.ts";
import { CLONE_NEWNET } from "./ns.ts";
import { ERRNO, SysError, errnoName, strerror } from "./errors.ts";
import { watch, type Readiness, type Watch } from "./poller.ts";
import { SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM, SOL_SOCKET, shutdownFd } from "./socket.ts";

const AF_INET = 2;
const AF_INET6 = 10;
const SO_ERROR = 4;
const EINPROGRESS = 115;


export type Family = "ipv4" | "ipv6";

/** Loopback of each family, the address a kubelet port-forward targets inside the pod. */
export function loopbackAddress(family: Family): string {
  return family === "ipv4" ? "127.0.0.1" : "[::1]";
}

/** sockaddr_in (16 bytes) or sockaddr_in6 (28 bytes) for the loopback address and `port`. */
export function loopbackSockaddr(family: Family, port: number): Uint8Array {
  const sa = new Uint8Array(family === "ipv4" ? 16 : 28);
  const dv = new DataView(sa.buffer);
  dv.setUint16(0, family === "ipv4" ? AF_INET : AF_INET6, true); // sa_family: host order
  dv.setUint16(2, port, false); // sin_port / sin6_port: network order
  if (family === "ipv4") sa.set([127, 0, 0, 1], 4);
  else sa[8 + 15] = 1; // sin6_flowinfo @4, sin6_addr @8 = ::1, sin6_scope_id @24
  return sa;
}

// ---- the namespace switch ---------------------------------------------------------------------

let ownNamespaceFd: number | null = null;

/** The main thread's own network namespace, opened once (before it ever leaves it). */
function ownNamespace(): number {
  ownNamespaceFd ??= openFd("/proc/thread-self/ns/net", O.RDONLY);
  return ownNamespaceFd;
}

/** A pod network namespace (a bind-mounted nsfs file such as /var/run/netns/<name>), or the host's. */
export class NetNamespace {
  private constructor(
    readonly path: string,
    private fd: number | null,
  ) {}

  /** `path` "" = the server's own namespace (upstream's meaning of an empty netNsPath). */
  static open(path: string): NetNamespace {
    if (path === "") return new NetNamespace(path, null);
    ownNamespace(); // before the first switch, so "back" is always known
    return new NetNamespace(path, openFd(path, O.RDONLY));
  }

  /**
   * Runs `fn` with the calling thread inside this namespace. `fn` must be synchronous and make no
   * call that could run other JS: everything the thread does meanwhile happens in the pod.
   */
  run<T>(fn: () => T): T {
    if (this.fd === null) return fn();
    if (libc.setns(this.fd, CLONE_NEWNET) < 0) throw new SysError(lastErrno(), "setns", this.path);
    try {
      return fn();
    } finally {
      // Cannot fail for an fd that setns accepted before; if it ever does, every later socket of
      // the main thread would land in the pod, so fail loudly rather than carry on.
      if (libc.setns(ownNamespace(), CLONE_NEWNET) < 0) {
        throw new SysError(lastErrno(), "setns", "return to the server's own network namespace");
      }
    }
  }

  close(): void {
    closeQuietly(this.fd);
    this.fd = null;
  }
}

// ---- connections ------------------------------------------------------------------------------

/** Starts a non-blocking connect inside `ns`. Returns the socket and whether it already completed. */
function startConnect(ns: NetNamespace, family: Family, port: number): { fd: number; done: boolean } {
  const sa = loopbackSockaddr(family, port);
  return ns.run(() => {
    const fd = libc.socket(family === "ipv4" ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new SysError(lastErrno(), "socket", family);
    if (libc.connect(fd, ptr(sa), sa.length) === 0) return { fd, done: true };
    const errno = lastErrno();
    if (errno === EINPROGRESS || errno === ERRNO.EINTR) return { fd, done: false };
    closeQuietly(fd);
    throw new SysError(errno, "connect", `${loopbackAddress(family)}:${port}`);
  });
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

const soError = new Int32Array(1);
const soLength = new Uint32Array(1);

/** The outcome of a finished non-blocking connect: 0, or the errno. */
function pendingError(fd: number): number {
  soError[0] = 0;
  soLength[0] = 4;
  if (libc.getsockopt(fd, SOL_SOCKET, SO_ERROR, ptr(soError), ptr(soLength)) < 0) return lastErrno();
  return soError[0]!;
}

export interface ConnectionEvents {
  onConnected(family: Family): void;
  /** Borrowed: valid only during the call. Return false to stop reading until resumeReading(). */
  onData(chunk: Uint8Array): boolean;
  /** The pod closed its side (EOF). */
  onEnd(): void;
  /** Connecting failed for every family, or the connection broke. */
  onError(err: Error): void;
  /** The write backlog drained (after write() returned a growing backlog). */
  onWriteDrained(): void;
}

const READ_SIZE = 64 * 1024;
/** Bytes one wake-up may read before giving other fds their turn. */
const READ_BUDGET = 512 * 1024;
const readBuffer = new Uint8Array(READ_SIZE);

/**
 * One TCP connection to `port` on the pod's loopback. Tries 127.0.0.1 first and falls back to
 * [::1] when IPv4 is refused or unusable (a server listening on ::1 only, or a v6-only pod), so
 * both families work without the client choosing. Data written before the connection is up
 * waits in the write backlog.
 */
export class LoopbackConnection {
  private fd: number | null = null;
  private watchHandle: Watch | null = null;
  private state: "idle" | "connecting" | "open" | "closed" = "idle";
  private family: Family = "ipv4";
  private readonly failures: string[] = [];
  private readonly backlog: Uint8Array[] = [];
  private backlogBytes = 0;
  private reading = true;
  private shutdownPending = false;

  constructor(
    private readonly ns: NetNamespace,
    readonly port: number,
    private readonly events: ConnectionEvents,
  ) {}

  /** Bytes accepted by write() that the socket has not taken yet. */
  get pendingWrite(): number {
    return this.backlogBytes;
  }

  connect(): void {
    if (this.state !== "idle") return;
    this.attempt("ipv4");
  }

  /** Queues `data` (copied) for the pod. False once the connection is closed. */
  write(data: Uint8Array): boolean {
    if (this.state === "closed" || this.shutdownPending) return false;
    if (data.length === 0) return true;
    let offset = 0;
    if (this.state === "open" && this.backlogBytes === 0) {
      offset = this.writeSome(data);
      if (offset < 0) return false;
      if (offset === data.length) return true;
    }
    this.backlog.push(data.slice(offset));
    this.backlogBytes += data.length - offset;
    this.updateInterest();
    return true;
  }

  /** The client has nothing more to send: FIN towards the pod once the backlog is out. */
  shutdownWrite(): void {
    if (this.state === "closed") return;
    this.shutdownPending = true;
    if (this.state === "open" && this.backlogBytes === 0) this.sendFin();
  }

  pauseReading(): void {
    this.reading = false;
    this.updateInterest();
  }

  resumeReading(): void {
    if (this.reading) return;
    this.reading = true;
    this.updateInterest();
  }

  /** Releases the socket. Idempotent; no event follows. */
  close(): void {
    if (this.state === "closed") return;
    this.state = "closed";
    this.watchHandle?.close();
    this.watchHandle = null;
    closeQuietly(this.fd);
    this.fd = null;
    this.backlog.length = 0;
    this.backlogBytes = 0;
  }

  // ---- connecting -----------------------------------------------------------------------------

  private attempt(family: Family): void {
    this.family = family;
    this.state = "connecting";
    let started: { fd: number; done: boolean };
    try {
      started = startConnect(this.ns, family, this.port);
    } catch (err) {
      // A refused connect reads like the asynchronous case; anything else (setns, socket) says what failed.
      const connectFailed = err instanceof SysError && err.syscall === "connect";
      this.attemptFailed(connectFailed ? `${err.code} (${strerror(err.errno)})` : errorText(err));
      return;
    }
    this.fd = started.fd;
    if (started.done) {
      this.connected();
      return;
    }
    this.watchHandle = watch(started.fd, { write: true }, (ev) => this.onReady(ev));
  }

  private connectReady(): void {
    if (this.state !== "connecting" || this.fd === null) return;
    const errno = pendingError(this.fd);
    if (errno === 0) {
      this.connected();
      return;
    }
    this.watchHandle?.close();
    this.watchHandle = null;
    closeQuietly(this.fd);
    this.fd = null;
    this.attemptFailed(`${errnoName(errno)} (${strerror(errno)})`);
  }

  private attemptFailed(reason: string): void {
    this.failures.push(`connect to ${loopbackAddress(this.family)}:${this.port}: ${reason}`);
    if (this.family === "ipv4") {
      this.attempt("ipv6");
      return;
    }
    this.close();
    this.events.onError(new Error(this.failures.join("; ")));
  }

  private connected(): void {
    this.state = "open";
    this.events.onConnected(this.family);
    if (this.state !== "open") return;
    this.watchHandle ??= watch(this.fd!, {}, (ev) => this.onReady(ev));
    this.updateInterest();
    this.flushBacklog();
  }

  // ---- data -----------------------------------------------------------------------------------

  /** The one watch of the fd serves the connect, then both data directions. */
  private onReady(ev: Readiness): void {
    if (this.state === "connecting") {
      this.connectReady();
      return;
    }
    if (this.state !== "open") return;
    if ((ev.writable || ev.error) && this.backlogBytes > 0) this.flushBacklog();
    if (this.state === "open" && this.reading && (ev.readable || ev.hangup || ev.error)) this.readSome();
  }

  private readSome(): void {
    let budget = READ_BUDGET;
    while (budget > 0 && this.state === "open" && this.reading) {
      let n: number;
      try {
        n = readFd(this.fd!, readBuffer, 0, READ_SIZE);
      } catch (err) {
        this.fail(err);
        return;
      }
      if (n < 0) return;
      if (n === 0) {
        this.close();
        this.events.onEnd();
        return;
      }
      budget -= n;
      if (!this.events.onData(readBuffer.subarray(0, n))) this.pauseReading();
    }
  }

  /** Bytes written, or -1 after the connection broke (reported through onError). */
  private writeSome(data: Uint8Array): number {
    try {
      const n = writeFd(this.fd!, data);
      return n < 0 ? 0 : n;
    } catch (err) {
      this.fail(err);
      return -1;
    }
  }

  private flushBacklog(): void {
    while (this.backlog.length > 0 && this.state === "open") {
      const head = this.backlog[0]!;
      const n = this.writeSome(head);
      if (n < 0) return;
      this.backlogBytes -= n;
      if (n < head.length) {
        this.backlog[0] = head.subarray(n);
        break;
      }
      this.backlog.shift();
    }
    if (this.state !== "open") return;
    this.updateInterest();
    if (this.backlogBytes > 0) return;
    // A half-close the client asked for while data (or the connect) was pending goes out now.
    if (this.shutdownPending) this.sendFin();
    this.events.onWriteDrained();
  }

  private sendFin(): void {
    try {
      shutdownFd(this.fd!, "write");
    } catch {
      // ENOTCONN: the pod already closed; the read side reports the end.
    }
  }

  private updateInterest(): void {
    if (this.state !== "open" || this.watchHandle === null) return;
    this.watchHandle.setInterest({ read: this.reading, write: this.backlogBytes > 0 });
  }

  private fail(err: unknown): void {
    this.close();
    this.events.onError(err instanceof Error ? err : new Error(String(err)));
  }
}
