// startFdSocket (ordinal 7, spec §13): a SOCK_SEQPACKET listener at <runtime-dir>/conmon-fd.sock
// through which clients hand fds to the server. Each fd lands in a process-global slot store; a
// later createContainer names the slots in `additionalFds` / `leakFds` and takes the fds out.
//
// Wire protocol, one SEQPACKET message per request and per reply, all integers little-endian:
//   request  u64 (requestId << 32) | numFds, with numFds fds as SCM_RIGHTS
//   success  u64 header echoed, then one u64 slot per fd, in order
//   error    u64 (requestId << 32) | 0xffffffff, then the UTF-8 error text
//   u64 0    releases (closes) this connection's untaken fds; no reply
// A message that is not exactly 8 bytes gets no reply. A connection's untaken fds are closed when
// it ends, so a client keeps it open until createContainer has taken them.
//
// Differences from upstream, on purpose (docs/compat.md):
//  * Q11: the error marker is numFds = 0xffffffff, as upstream documents and its Go client expects;
//    upstream ORs only 0xff into the header, so Go clients never see the text.
//  * numFds is the full low 32 bits; upstream reads only the low 8 bits, so a request announcing
//    256 fds while sending none "succeeded" there and is an error here.
//  * Fds that came with an ignored or failed message are closed at once (upstream: the same, by
//    dropping them), and a message whose fds did not all fit (MSG_CTRUNC) is an error, never a
//    partial success.

import type { FdStore } from "./containers.ts";
import { errorChain, withContext } from "./errors.ts";
import { AcceptLoop } from "./accept-loop.ts";
import type { Logger } from "./logger.ts";
import { closeQuietly } from "../ffi/fd.ts";
import { isErrno } from "../ffi/errors.ts";
import { watch, type Readiness, type Watch } from "../ffi/poller.ts";
import { MAX_FDS_PER_MESSAGE, listenUnix, recvMsg, sendMsg, type ReceivedMessage } from "../ffi/socket.ts";

// ---- protocol (pure) --------------------------------------------------------------------------

/** The kernel's SCM_RIGHTS limit per message (SCM_MAX_FD); also the Go client's cap per Send. */
export const FD_SOCKET_MAX_FDS = MAX_FDS_PER_MESSAGE;
export const HEADER_BYTES = 8;
/** numFds value that marks an error reply (the documented one). */
export const ERROR_NUM_FDS = 0xffff_ffff;
/** Upstream's actual error marker sets only the low byte of the header (quirk Q11). */
const UPSTREAM_ERROR_BYTE = 0xff;
const U32 = 0xffff_ffffn;
const U64 = 0xffff_ffff_ffff_ffffn;

export type Header = { requestId: number; numFds: number };

export function encodeHeader(h: Header): bigint {
  checkU32("requestId", h.requestId);
  checkU32("numFds", h.numFds);
  return (BigInt(h.requestId) << 32n) | BigInt(h.numFds);
}

export function decodeHeader(value: bigint): Header {
  return { requestId: Number((value >> 32n) & U32), numFds: Number(value & U32) };
}

function checkU32(what: string, n: number): void {
  if (!(Number.isInteger(n) && n >= 0 && n <= 0xffff_ffff)) throw new RangeError(`fd socket: ${what} ${n} is not a u32`);
}

/** The 8-byte request for `numFds` fds (the fds travel as SCM_RIGHTS next to it). */
export function encodeRequest(requestId: number, numFds: number): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES);
  new DataView(out.buffer).setBigUint64(0, encodeHeader({ requestId, numFds }), true);
  return out;
}

export function encodeSuccessReply(header: bigint, slots: readonly bigint[]): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES * (1 + slots.length));
  const view = new DataView(out.buffer);
  view.setBigUint64(0, header & U64, true);
  slots.forEach((slot, i) => view.setBigUint64(HEADER_BYTES * (i + 1), slot & U64, true));
  return out;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeErrorReply(requestId: number, message: string): Uint8Array {
  const text = encoder.encode(message);
  const out = new Uint8Array(HEADER_BYTES + text.length);
  new DataView(out.buffer).setBigUint64(0, encodeHeader({ requestId, numFds: ERROR_NUM_FDS }), true);
  out.set(text, HEADER_BYTES);
  return out;
}

export type FdReply =
  | { kind: "slots"; requestId: number; slots: bigint[] }
  | { kind: "error"; requestId: number; message: string };

/**
 * Decodes a server reply. Both error markers count: numFds = 0xffffffff (ours, upstream's docs)
 * and upstream's `header | 0xff` when text follows (a success can never carry 255+ slots, since
 * at most 253 fds fit in one request).
 */
export function decodeReply(data: Uint8Array): FdReply {
  if (data.length < HEADER_BYTES) throw new Error(`fd socket reply too short: ${data.length} bytes`);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const { requestId, numFds } = decodeHeader(view.getBigUint64(0, true));
  const body = data.subarray(HEADER_BYTES);
  const upstreamMarker = (numFds & 0xff) === UPSTREAM_ERROR_BYTE && body.length > 0;
  if (numFds === ERROR_NUM_FDS || upstreamMarker) return { kind: "error", requestId, message: decoder.decode(body) };
  if (body.length !== numFds * HEADER_BYTES) {
    throw new Error(`fd socket reply has invalid length: ${data.length} bytes for ${numFds} slots`);
  }
  const slots: bigint[] = [];
  for (let i = 0; i < numFds; i++) slots.push(view.getBigUint64(HEADER_BYTES * (i + 1), true));
  return { kind: "slots", requestId, slots };
}

/** What the server does with one received message. */
export type Verdict =
  | { kind: "eof" }
  | { kind: "ignore" }
  | { kind: "release" }
  | { kind: "error"; requestId: number; message: string }
  | { kind: "store"; header: bigint };

export type ReceivedShape = Pick<ReceivedMessage, "n" | "dataTruncated" | "fdsTruncated"> & { fdCount: number };

export const TOO_MANY_FDS_MESSAGE =
  `too many file descriptors in one message (max ${FD_SOCKET_MAX_FDS}), or the server ran out of file descriptors`;

/** Decides on one message; `data` holds its first bytes (at least 8 when n ≥ 8). */
export function judgeMessage(msg: ReceivedShape, data: Uint8Array): Verdict {
  if (msg.n === 0) return { kind: "eof" };
  if (msg.n !== HEADER_BYTES || msg.dataTruncated) return { kind: "ignore" };
  const header = new DataView(data.buffer, data.byteOffset, HEADER_BYTES).getBigUint64(0, true);
  if (header === 0n) return { kind: "release" };
  const { requestId, numFds } = decodeHeader(header);
  // Checked before the count: the fds that did arrive are not all the client sent.
  if (msg.fdsTruncated) return { kind: "error", requestId, message: TOO_MANY_FDS_MESSAGE };
  if (msg.fdCount !== numFds) {
    return { kind: "error", requestId, message: `received ${msg.fdCount} fds, but expected ${numFds} fds` };
  }
  return { kind: "store", header };
}

// ---- server -----------------------------------------------------------------------------------

/** Large enough to tell an over-long message (≥ 9 bytes) from a valid 8-byte one. */
const RECEIVE_BUFFER_BYTES = 16;
/** Messages handled per wake-up before other fds get their turn. */
const MESSAGES_PER_WAKEUP = 64;
const LISTEN_BACKLOG = 128;
/** After a failed accept (EMFILE, ...) the connection stays queued: retry later, not every tick. */

// Shared by all connections: used synchronously only, within one message.
const receiveBuffer = new Uint8Array(RECEIVE_BUFFER_BYTES);

type StoredFd = { fd: number; owner: FdConnection };

/** What a connection needs from the socket that accepted it. */
interface SlotOwner {
  store(fd: number, owner: FdConnection): bigint;
  /** Closes the fds in `slots` that are still stored (taken ones are skipped). */
  release(slots: Iterable<bigint>): void;
  closed(conn: FdConnection): void;
}

/** One client connection: requests in, replies out, and the slots it filled and nobody took yet. */
class FdConnection {
  /** Slots filled through this connection and not taken yet. */
  readonly untaken = new Set<bigint>();
  private readonly watch: Watch;
  /** A reply the socket had no room for; reading pauses until it is sent. */
  private pendingReply: Uint8Array | null = null;
  private isClosed = false;

  constructor(
    readonly fd: number,
    private readonly owner: SlotOwner,
    private readonly log: Logger,
  ) {
    this.watch = watch(fd, { read: true }, (ev) => this.onReady(ev));
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.watch.close();
    closeQuietly(this.fd);
    this.pendingReply = null;
    this.releaseUntaken();
    this.owner.closed(this);
  }

  private releaseUntaken(): void {
    if (this.untaken.size === 0) return;
    this.log.debug(`fd socket connection fd ${this.fd}: closing ${this.untaken.size} untaken fds`);
    this.owner.release(this.untaken);
    this.untaken.clear();
  }

  private onReady(ev: Readiness): void {
    if (this.pendingReply !== null) {
      // A hang-up shows as EPIPE from the send, which closes us.
      if (ev.writable || ev.hangup || ev.error) this.flush();
      if (this.pendingReply !== null) return;
    }
    for (let i = 0; i < MESSAGES_PER_WAKEUP && !this.isClosed && this.pendingReply === null; i++) {
      const msg = this.receive();
      if (msg === null) return;
      this.handle(msg);
    }
  }

  /** The next message, or null when none is waiting (or the connection broke and is closed). */
  private receive(): ReceivedMessage | null {
    try {
      return recvMsg(this.fd, receiveBuffer, FD_SOCKET_MAX_FDS);
    } catch (e) {
      if (!isErrno(e, "ECONNRESET")) this.log.warn(`fd socket connection fd ${this.fd}: ${errorChain(e)}`);
      this.close();
      return null;
    }
  }

  private handle(msg: ReceivedMessage): void {
    const verdict = judgeMessage({ ...msg, fdCount: msg.fds.length }, receiveBuffer);
    if (verdict.kind !== "store") for (const fd of msg.fds) closeQuietly(fd);
    switch (verdict.kind) {
      case "eof":
        this.close();
        return;
      case "ignore":
        this.log.debug(`fd socket connection fd ${this.fd}: ignoring a message of ${msg.n} bytes`);
        return;
      case "release":
        this.releaseUntaken();
        return;
      case "error":
        this.log.debug(`fd socket request ${verdict.requestId}: ${verdict.message}`);
        this.reply(encodeErrorReply(verdict.requestId, verdict.message));
        return;
      case "store": {
        const slots = msg.fds.map((fd) => this.owner.store(fd, this));
        for (const slot of slots) this.untaken.add(slot);
        this.reply(encodeSuccessReply(verdict.header, slots));
        return;
      }
    }
  }

  private reply(data: Uint8Array): void {
    if (!this.trySend(data) && !this.isClosed) {
      this.pendingReply = data;
      this.watch.setInterest({ write: true });
    }
  }

  private flush(): void {
    if (this.pendingReply === null || !this.trySend(this.pendingReply)) return;
    this.pendingReply = null;
    if (!this.isClosed) this.watch.setInterest({ read: true });
  }

  /** true: sent; false: no room now, or the client is gone (then the connection is closed). */
  private trySend(data: Uint8Array): boolean {
    try {
      return sendMsg(this.fd, data) !== null;
    } catch (e) {
      if (!isErrno(e, "EPIPE") && !isErrno(e, "ECONNRESET")) this.log.warn(`fd socket connection fd ${this.fd}: ${errorChain(e)}`);
      this.close();
      return false;
    }
  }
}

/** The fd socket and the slot store behind it. One per server. */
export class FdSocket implements FdStore {
  private listener: AcceptLoop | null = null;
  private readonly connections = new Set<FdConnection>();
  private readonly slots = new Map<bigint, StoredFd>();
  private lastSlot = 0n;
  private shutDown = false;
  private readonly slotOwner: SlotOwner = {
    store: (fd, owner) => this.store(fd, owner),
    release: (slots) => this.release(slots),
    closed: (conn) => this.connections.delete(conn),
  };

  constructor(
    readonly path: string,
    private readonly log: Logger,
  ) {}

  /** The startFdSocket RPC. */
  readonly handleStart = (_params: unknown, results: any): void => {
    results._initResponse().path = this.start();
  };

  /** Listens (once) and returns the socket path; later calls return the same path. */
  start(): string {
    if (this.shutDown) throw new Error("fd socket: server is shutting down");
    if (this.listener !== null) return this.path;
    let fd: number | null = null;
    try {
      fd = listenUnix(this.path, "seqpacket", LISTEN_BACKLOG);
      this.listener = new AcceptLoop(fd, `fd socket ${this.path}`, (conn) => this.addConnection(conn), this.log);
    } catch (e) {
      closeQuietly(fd);
      throw withContext(`start fd socket ${this.path}`, e);
    }
    this.log.debug(`fd socket listening at ${this.path}`);
    return this.path;
  }

  /** FdStore: the fd in `slot`, which now belongs to the caller. */
  take(slot: bigint): number {
    const stored = this.slots.get(slot);
    if (stored === undefined) throw new Error(`no file descriptor in slot ${slot}`);
    this.slots.delete(slot);
    stored.owner.untaken.delete(slot);
    this.log.debug(`fd socket: took slot ${slot} (fd ${stored.fd})`);
    return stored.fd;
  }

  /** How many fds are stored (for tests and diagnostics). */
  get storedCount(): number {
    return this.slots.size;
  }

  /** Shutdown: listener, connections and every stored fd. The socket file is the server's to remove. */
  close(): void {
    this.shutDown = true;
    this.listener?.close();
    this.listener = null;
    for (const conn of [...this.connections]) conn.close();
    for (const { fd } of this.slots.values()) closeQuietly(fd);
    this.slots.clear();
  }

  private store(fd: number, owner: FdConnection): bigint {
    const slot = this.nextFreeSlot();
    this.slots.set(slot, { fd, owner });
    return slot;
  }

  /** Counter from 1, wrapping at 2^64, skipping slots still in use (upstream's allocation). */
  private nextFreeSlot(): bigint {
    let slot = this.lastSlot;
    do {
      slot = (slot + 1n) & U64;
    } while (this.slots.has(slot));
    this.lastSlot = slot;
    return slot;
  }

  private release(slots: Iterable<bigint>): void {
    for (const slot of slots) {
      const stored = this.slots.get(slot);
      if (stored === undefined) continue;
      this.slots.delete(slot);
      closeQuietly(stored.fd);
    }
  }

  private addConnection(fd: number): void {
    try {
      this.connections.add(new FdConnection(fd, this.slotOwner, this.log));
      this.log.debug(`fd socket connection fd ${fd} accepted`);
    } catch (e) {
      closeQuietly(fd);
      this.log.error(`fd socket connection: ${errorChain(e)}`);
    }
  }
}
