// The attach socket (spec §9): a SOCK_SEQPACKET listener per (container, socket path). Every
// client gets the container's output produced after it connected, as packets `[2]+data`
// (stdout), `[3]+data` (stderr) and finally `[0]` (done); whatever a client sends is the
// container's stdin, byte for byte.
//
// Differences from upstream, on purpose:
//  * Q8: the socket file is chmod'ed 0700, and close() removes listener, clients and the file.
//  * Q9: stdin is forwarded unchanged, NUL bytes included, and read into a 64 KiB buffer (a
//    SEQPACKET message longer than the buffer would be truncated; the Go client writes ≤ 32 KiB).
//  * Q10: `[0]` is sent once BOTH stdout and stderr ended, after the rest of both streams, not at
//    the first EOF (which lost the tail of the other stream).
//  * A client that connects after the output ended gets `[0]` at once instead of waiting forever.
//  * A slow client never slows the container, the log or other clients: its packets queue up to
//    CLIENT_BACKLOG_LIMIT and beyond that are dropped for that client only.
//  * A slow container stdin pauses reading from the clients instead of dropping their input.
import { chmodSync, lstatSync, statSync, unlinkSync } from "node:fs";
import { resolve } from "node:path";
import { AcceptLoop } from "./accept-loop.ts";
import type { Logger } from "./logger.ts";
import type { ContainerIO, OutputSubscriber, StreamName } from "./container-io.ts";
import { errorChain, withContext } from "./errors.ts";
import { closeQuietly } from "../ffi/fd.ts";
import { connectUnix, listenUnix, recvMsg, sendMsg } from "../ffi/socket.ts";
import { watch, type Readiness, type Watch } from "../ffi/poller.ts";
import { isErrno } from "../ffi/errors.ts";

// ---- framing (pure) ---------------------------------------------------------------------------

export const ATTACH_TAG = { done: 0, stdin: 1, stdout: 2, stderr: 3 } as const;
/** Upstream's packet buffer is 8192 bytes including the tag byte. */
export const ATTACH_PACKET_SIZE = 8192;
export const ATTACH_MAX_PAYLOAD = ATTACH_PACKET_SIZE - 1;

export type AttachPacket =
  | { kind: "stdout" | "stderr"; data: Uint8Array }
  | { kind: "done" }
  | { kind: "unknown"; tag: number; data: Uint8Array };

function tagOf(stream: StreamName): number {
  return stream === "stdout" ? ATTACH_TAG.stdout : ATTACH_TAG.stderr;
}

/** The packets for one output chunk: tag byte + at most 8191 bytes each; none for an empty chunk. */
export function encodeAttachPackets(stream: StreamName, chunk: Uint8Array): Uint8Array[] {
  const packets: Uint8Array[] = [];
  for (let offset = 0; offset < chunk.length; offset += ATTACH_MAX_PAYLOAD) {
    const piece = chunk.subarray(offset, offset + ATTACH_MAX_PAYLOAD);
    const packet = new Uint8Array(1 + piece.length);
    packet[0] = tagOf(stream);
    packet.set(piece, 1);
    packets.push(packet);
  }
  return packets;
}

export function encodeDonePacket(): Uint8Array {
  return Uint8Array.of(ATTACH_TAG.done);
}

/** Decodes one server→client packet; `data` is a view into `packet`. */
export function decodeAttachPacket(packet: Uint8Array): AttachPacket {
  if (packet.length === 0) throw new Error("attach packet is empty (no tag byte)");
  const tag = packet[0]!;
  const data = packet.subarray(1);
  if (tag === ATTACH_TAG.done) return { kind: "done" };
  if (tag === ATTACH_TAG.stdout) return { kind: "stdout", data };
  if (tag === ATTACH_TAG.stderr) return { kind: "stderr", data };
  return { kind: "unknown", tag, data };
}

// ---- server -----------------------------------------------------------------------------------

/** Queued packet bytes per client before its packets are dropped. */
export const CLIENT_BACKLOG_LIMIT = 1024 * 1024;
/** ...and queued packets: tiny chunks must not turn the byte bound into a million objects. */
export const CLIENT_BACKLOG_PACKETS = 1024;
/** ≥ the largest write a client makes: a bigger SEQPACKET message would be cut. */
export const STDIN_READ_BUFFER_SIZE = 64 * 1024;
/** Client stdin is not read while the container has this much unread stdin queued. */
const STDIN_PAUSE_BYTES = 1024 * 1024;
/** Client messages handled per wake-up before yielding to other fds. */
const STDIN_MESSAGES_PER_WAKEUP = 64;
const SOMAXCONN = 4096;

export type AttachOptions = {
  /** On a client's stdin EOF: close the container's stdin and call onStdinEof. */
  stopAfterStdinEof: boolean;
  /** The container was created with stdin; otherwise client input is read and discarded. */
  acceptsStdin: boolean;
  onStdinEof(): void;
};

// Shared by all clients: used synchronously only (writeStdin copies what it cannot write at once),
// and one packet is assembled and sent before the next.
const stdinBuffer = new Uint8Array(STDIN_READ_BUFFER_SIZE);
const packetBuffer = new Uint8Array(ATTACH_PACKET_SIZE);

/** Servers by absolute socket path: a second attach to the same path reuses the first. */
const servers = new Map<string, AttachServer>();

/** One accepted attach connection: an output subscriber with a bounded send queue, and a stdin source. */
class AttachClient implements OutputSubscriber {
  private readonly watch: Watch;
  private readonly unsubscribe: () => void;
  private readonly backlog: Uint8Array[] = [];
  private backlogBytes = 0;
  private droppedPackets = 0;
  private readonly endedStreams = new Set<StreamName>();
  /** `[0]` is queued: no more data is accepted. */
  private doneQueued = false;
  private doneSent = false;
  /** The client has not sent EOF yet. */
  private readOpen = true;
  private readPaused = false;
  private closed = false;

  constructor(
    private readonly fd: number,
    private readonly io: ContainerIO,
    private readonly opts: AttachOptions,
    private readonly log: Logger,
    private readonly onClosed: (client: AttachClient) => void,
  ) {
    this.watch = watch(fd, { read: true }, (ev) => this.onReady(ev));
    this.unsubscribe = io.subscribe(this);
  }

  onData(stream: StreamName, chunk: Uint8Array): void {
    if (this.doneQueued || this.closed) return;
    const tag = tagOf(stream);
    for (let offset = 0; offset < chunk.length && !this.closed && !this.doneQueued; offset += ATTACH_MAX_PAYLOAD) {
      const length = Math.min(ATTACH_MAX_PAYLOAD, chunk.length - offset);
      packetBuffer[0] = tag;
      packetBuffer.set(chunk.subarray(offset, offset + length), 1);
      this.sendOrQueue(packetBuffer.subarray(0, 1 + length), false);
    }
  }

  onEnd(stream: StreamName): void {
    this.endedStreams.add(stream);
    if (this.endedStreams.size < 2 || this.doneQueued || this.closed) return;
    this.doneQueued = true;
    // Never dropped, whatever the backlog: the client needs it to stop waiting.
    this.sendOrQueue(encodeDonePacket(), true);
    this.afterProgress();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribe();
    this.watch.close();
    closeQuietly(this.fd);
    this.backlog.length = 0;
    this.backlogBytes = 0;
    if (this.droppedPackets > 0) this.log.debug(`attach client fd ${this.fd}: dropped ${this.droppedPackets} packets (slow reader)`);
    this.onClosed(this);
  }

  private onReady(ev: Readiness): void {
    // A hang-up or error surfaces as EPIPE from the next send, or as EOF/error from recvmsg;
    // either way the callback must act on it, or the level-triggered poller calls again at once.
    if (this.backlog.length > 0 && (ev.writable || ev.hangup || ev.error)) this.flush();
    if (!this.closed && this.readOpen && !this.readPaused) this.readStdin();
  }

  // -- output --

  /** `packet` may be a view into the shared packet buffer: it is copied if it has to wait. */
  private sendOrQueue(packet: Uint8Array, mandatory: boolean): void {
    if (this.backlog.length === 0) {
      const sent = this.trySend(packet);
      if (sent !== false) {
        if (packet[0] === ATTACH_TAG.done && sent) this.doneSent = true;
        return;
      }
    }
    const full =
      this.backlogBytes + packet.length > CLIENT_BACKLOG_LIMIT || this.backlog.length >= CLIENT_BACKLOG_PACKETS;
    if (full && !mandatory) {
      this.droppedPackets++;
      return;
    }
    this.backlog.push(packet.slice());
    this.backlogBytes += packet.length;
    this.updateInterest();
  }

  /** true: sent; false: the socket is full; null: the client is gone (output stopped). */
  private trySend(packet: Uint8Array): boolean | null {
    try {
      return sendMsg(this.fd, packet) !== null;
    } catch (e) {
      // EPIPE / ECONNRESET: the client went away.
      if (!isErrno(e, "EPIPE") && !isErrno(e, "ECONNRESET")) {
        this.log.warn(`attach client fd ${this.fd}: ${errorChain(e)}`);
        this.close();
      } else {
        this.stopOutput();
      }
      return null;
    }
  }

  /**
   * The client cannot take output any more. What it sent before leaving is still queued for us
   * (and the EOF after it, which may close the container's stdin): keep reading until then.
   */
  private stopOutput(): void {
    this.doneQueued = true;
    this.doneSent = true;
    this.backlog.length = 0;
    this.backlogBytes = 0;
    this.unsubscribe();
    if (this.readOpen) this.updateInterest();
    else this.close();
  }

  private flush(): void {
    while (this.backlog.length > 0 && !this.closed) {
      const packet = this.backlog[0]!;
      const sent = this.trySend(packet);
      if (sent !== true) return;
      this.backlog.shift();
      this.backlogBytes -= packet.length;
      if (packet[0] === ATTACH_TAG.done) this.doneSent = true;
    }
    this.updateInterest();
    this.afterProgress();
  }

  /** A client that sent EOF and has received `[0]` has nothing left to do here. */
  private afterProgress(): void {
    if (!this.closed && this.doneSent && !this.readOpen) this.close();
  }

  // -- stdin --

  private readStdin(): void {
    for (let i = 0; i < STDIN_MESSAGES_PER_WAKEUP; i++) {
      if (this.closed || !this.readOpen || this.pauseForSlowStdin()) return;
      const msg = this.receive();
      if (msg === null) return;
      if (msg === 0) {
        this.onClientEof();
        return;
      }
      if (this.opts.acceptsStdin && !this.io.writeStdin(stdinBuffer.subarray(0, msg))) {
        this.log.debug(`attach client fd ${this.fd}: container stdin refused ${msg} bytes`);
      }
    }
  }

  /** Bytes received, 0 at EOF, null when nothing is waiting (or the client broke and is closed). */
  private receive(): number | null {
    for (let resets = 0; ; resets++) {
      try {
        const msg = recvMsg(this.fd, stdinBuffer, 0);
        if (msg === null) return null;
        if (msg.dataTruncated) this.log.warn(`attach client fd ${this.fd}: stdin message longer than ${STDIN_READ_BUFFER_SIZE} bytes was truncated`);
        return msg.n;
      } catch (e) {
        // A client that closes with our packets unread gets ECONNRESET reported to us once,
        // BEFORE the messages it sent and its EOF, which are still queued: read on.
        if (isErrno(e, "ECONNRESET") && resets === 0) {
          this.stopOutput();
          if (!this.closed) continue;
          return null;
        }
        if (!isErrno(e, "ECONNRESET")) this.log.warn(`attach client fd ${this.fd}: ${errorChain(e)}`);
        this.close();
        return null;
      }
    }
  }

  /** Back-pressure instead of loss: stop reading this client until the container caught up. */
  private pauseForSlowStdin(): boolean {
    if (!this.opts.acceptsStdin || this.io.stdinBacklog < STDIN_PAUSE_BYTES) return false;
    this.readPaused = true;
    this.updateInterest();
    this.io.stdinDrained().then(() => {
      this.readPaused = false;
      this.updateInterest();
    });
    return true;
  }

  private onClientEof(): void {
    // A SEQPACKET EOF (shutdown(SHUT_WR) or close) stays readable forever: stop asking.
    this.readOpen = false;
    this.updateInterest();
    if (this.opts.stopAfterStdinEof) {
      this.io.closeStdin();
      try {
        this.opts.onStdinEof();
      } catch (e) {
        this.log.error(`attach onStdinEof: ${errorChain(e)}`);
      }
    }
    this.afterProgress();
  }

  private updateInterest(): void {
    if (this.closed) return;
    this.watch.setInterest({ read: this.readOpen && !this.readPaused, write: this.backlog.length > 0 });
  }
}

export class AttachServer {
  private readonly clients = new Set<AttachClient>();
  private listener: AcceptLoop | null;
  private closed = false;

  private constructor(
    readonly socketPath: string,
    listenFd: number | null,
    private readonly socketIno: number | null,
    private readonly io: ContainerIO,
    private readonly opts: AttachOptions,
    private readonly log: Logger,
  ) {
    this.listener =
      listenFd === null ? null : new AcceptLoop(listenFd, `attach socket ${socketPath}`, (fd) => this.addClient(fd), log);
  }

  /**
   * Listens at `socketPath` (parent directories created, mode 0700), or returns the server
   * already listening there: a second attach to the same path keeps the first one's options, as
   * upstream. A stale socket file left by a dead process is replaced. A path held by a listener
   * of another process is left alone (upstream also answers OK); the returned server is inert.
   */
  static async create(socketPath: string, io: ContainerIO, opts: AttachOptions, log: Logger): Promise<AttachServer> {
    const path = resolve(socketPath);
    const existing = servers.get(path);
    if (existing !== undefined) {
      if (existing.ownsSocketFile()) {
        log.debug(`attach socket ${path} already listening`);
        return existing;
      }
      // The file was removed (the Go client removes it when its last attach ends) or replaced:
      // nobody can connect to that listener any more. Upstream then listens anew; so do we.
      existing.stopListening();
    }
    if (pathExists(path)) {
      if (!isStaleSocket(path)) {
        log.debug(`attach socket ${path} exists and accepts connections; assuming it is attached`);
        return new AttachServer(path, null, null, io, opts, log);
      }
      unlinkSync(path);
    }
    let fd: number | null = null;
    try {
      fd = listenUnix(path, "seqpacket", SOMAXCONN);
      chmodSync(path, 0o700); // upstream computes 0700 but never applies it (Q8)
      const server = new AttachServer(path, fd, statSync(path).ino, io, opts, log);
      servers.set(path, server);
      log.debug(`attach socket listening at ${path}`);
      return server;
    } catch (e) {
      if (fd !== null) {
        closeQuietly(fd);
        unlinkQuietly(path);
      }
      throw withContext(`create attach socket ${path}`, e);
    }
  }

  /** The socket file at our path is still the one we bound. */
  ownsSocketFile(): boolean {
    try {
      return this.listener !== null && statSync(this.socketPath).ino === this.socketIno;
    } catch {
      return false;
    }
  }

  /** Stops accepting (connected clients stay) and forgets the path, without touching the file. */
  stopListening(): void {
    // Connections still in the backlog (a client that sent its input and left before we got to
    // accept it) would be dropped with the listener, and their input with them.
    this.listener?.acceptPending();
    this.listener?.close();
    this.listener = null;
    if (servers.get(this.socketPath) === this) servers.delete(this.socketPath);
  }

  get clientCount(): number {
    return this.clients.size;
  }

  /** Closes the listener and every client, and removes the socket file. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.listener !== null) {
      this.listener.close();
      this.listener = null;
      this.removeSocketFile();
      if (servers.get(this.socketPath) === this) servers.delete(this.socketPath);
    }
    for (const client of [...this.clients]) client.close();
  }

  private addClient(fd: number): void {
    try {
      const client = new AttachClient(fd, this.io, this.opts, this.log, (c) => this.clients.delete(c));
      this.clients.add(client);
      this.log.debug(`attach client fd ${fd} connected to ${this.socketPath}`);
    } catch (e) {
      closeQuietly(fd);
      this.log.error(`attach client on ${this.socketPath}: ${errorChain(e)}`);
    }
  }

  /** Only our own socket: the path may have been replaced since. */
  private removeSocketFile(): void {
    try {
      if (statSync(this.socketPath).ino === this.socketIno) unlinkSync(this.socketPath);
    } catch {
      // already gone
    }
  }
}

function pathExists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // already gone
  }
}

/**
 * True for a socket file nobody listens on (ECONNREFUSED), e.g. left by a crashed server.
 * Anything that is not a socket is an error: we neither remove it nor pretend to listen there.
 */
function isStaleSocket(path: string): boolean {
  if (!lstatSync(path).isSocket()) throw new Error(`create attach socket ${path}: path exists and is not a socket`);
  try {
    closeQuietly(connectUnix(path, "seqpacket"));
    return false;
  } catch (e) {
    return isErrno(e, "ECONNREFUSED");
  }
}
