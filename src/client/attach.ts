// attachContainer on the client side (mirrors the Go client's AttachContainer, spec §18.5):
// the attachContainer RPC makes the server listen on `socketPath`; we connect a SOCK_SEQPACKET
// socket there, read packets `[2]+stdout`, `[3]+stderr`, `[0]` (done), and send our stdin as
// plain messages.
//
// Differences from the Go client, on purpose:
//  * Its packet reader returns after the FIRST read when `ContainerStdin && !StopAfterStdinEOF`
//    (a quirk that drops all later output); here output is read until `[0]` or EOF, always.
//  * Detach keys are found anywhere in the stdin byte stream, split across chunks or not (Go only
//    sees them when every key arrives as a one-byte read). The default is ctrl-p,ctrl-q; pass an
//    empty `detachKeys` for binary stdin, or a random byte pair in it detaches.
//  * A detach always ends with DetachError, also with stopAfterStdinEof (Go then returns nil,
//    so the caller cannot tell a detach from the end of stdin).
//  * A failing stdin source rejects the attach with its error (Go drops it).
//  * The resize forwarder stops when the attach ends (Go's runs until the channel is closed).
//
// Every path releases the socket, its poller watch, the stdin and resize iterators, and (when
// it was the last attach of this client to that path) the socket file, as the Go client does.
import { rmSync } from "node:fs";
import { resolve } from "node:path";
import type { ConmonClient } from "./conmon-client.ts";
import { closeQuietly } from "../../ffi/fd.ts";
import { connectUnix, recvMsg, sendMsg, shutdownFd } from "../../ffi/socket.ts";
import { watch, type Readiness, type Watch } from "../../ffi/poller.ts";
import { isErrno } from "../../ffi/errors.ts";

export interface TerminalSize {
  width: number;
  height: number;
}

export interface AttachConfig {
  id: string;
  socketPath: string;
  execSession?: string;
  tty?: boolean;
  /** The server closes the container's stdin when this client's stdin ends, and the attach
   * returns as soon as stdin ended (output is not awaited). */
  stopAfterStdinEof?: boolean;
  containerStdin?: boolean;
  /** Only the RPC and preAttach: the caller handles the socket itself. */
  passthrough?: boolean;
  /** Each size is sent with setWindowSizeContainer while the attach lasts. */
  resize?: AsyncIterable<TerminalSize>;
  streams?: {
    /** Each chunk becomes one message to the container's stdin (split above 32 KiB). */
    stdin?: AsyncIterable<Uint8Array | string>;
    /** Called with a copy of every stdout packet's data; a throw ends the attach with that error. */
    stdout?: (chunk: Uint8Array) => void;
    stderr?: (chunk: Uint8Array) => void;
  };
  /** Runs once connected, before any packet is read (e.g. to start the container). */
  preAttach?: () => void | Promise<void>;
  /** Runs once reading and the stdin copy have started. */
  postAttach?: () => void | Promise<void>;
  /** Default ctrl-p,ctrl-q ([16, 17]); an empty array disables detaching. */
  detachKeys?: Uint8Array;
}

/** The attach ended because the detach keys were typed (Go: ErrDetach). */
export class DetachError extends Error {
  constructor() {
    super("detached from container");
    this.name = "DetachError";
  }
}

export const DEFAULT_DETACH_KEYS = Uint8Array.of(16, 17);

const ATTACH_METHOD = 3;
/** Server packets are ≤ 8192 bytes; one more shows a longer one as truncated (Go: 8192 + 1). */
const PACKET_BUFFER_SIZE = 8193;
/** Largest stdin message: the server reads into 64 KiB, the Go client writes ≤ 32 KiB. */
export const MAX_STDIN_MESSAGE = 32 * 1024;
/** Packets handled per wake-up before other fds get a turn (the poller calls again next tick). */
const PACKETS_PER_WAKEUP = 256;

const TAG_DONE = 0;
const TAG_STDOUT = 2;
const TAG_STDERR = 3;

const encoder = new TextEncoder();

export async function attachContainer(client: ConmonClient, cfg: AttachConfig): Promise<void> {
  await client.call(
    ATTACH_METHOD,
    (req) => {
      req.id = cfg.id;
      req.socketPath = cfg.socketPath;
      if (cfg.execSession) req.execSessionId = cfg.execSession;
      req.stopAfterStdinEof = cfg.stopAfterStdinEof ?? false;
    },
    () => undefined,
  );
  if (cfg.passthrough) {
    await cfg.preAttach?.();
    return;
  }
  const session = new AttachSession(client, cfg);
  let sessions = activeSessions.get(client);
  if (!sessions) activeSessions.set(client, (sessions = new Set()));
  sessions.add(session);
  try {
    await session.run();
  } finally {
    sessions.delete(session);
    session.close();
  }
}

/** Attaches running on each client, so shutdown can end them (as the Go client's Shutdown does). */
const activeSessions = new WeakMap<ConmonClient, Set<AttachSession>>();

/** Ends every attach of `client`: each resolves, its fds are closed and its socket path removed. */
export function closeAttaches(client: ConmonClient): void {
  for (const session of activeSessions.get(client) ?? []) session.close();
}

// ---- detach keys ------------------------------------------------------------------------------

/**
 * Finds the detach sequence in a byte stream delivered in chunks. Bytes that may be the start of
 * the sequence are held back until the next chunk decides; everything else passes unchanged.
 */
export class DetachScanner {
  /** How many leading bytes of `keys` are held back from the previous chunk. */
  private held = 0;

  constructor(private readonly keys: Uint8Array) {}

  /** `data`: what to forward now (may be a view of `chunk`); `detached`: the sequence completed
   * (then `data` is what preceded it, and the rest of the chunk is dropped). */
  feed(chunk: Uint8Array): { data: Uint8Array; detached: boolean } {
    const keys = this.keys;
    if (keys.length === 0) return { data: chunk, detached: false };
    let input = chunk;
    if (this.held > 0) {
      input = new Uint8Array(this.held + chunk.length);
      input.set(keys.subarray(0, this.held));
      input.set(chunk, this.held);
      this.held = 0;
    }
    for (let from = 0; ; ) {
      const start = input.indexOf(keys[0]!, from);
      if (start < 0) return { data: input, detached: false };
      let matched = 1;
      while (matched < keys.length && start + matched < input.length && input[start + matched] === keys[matched]) matched++;
      if (matched === keys.length) return { data: input.subarray(0, start), detached: true };
      if (start + matched === input.length) {
        this.held = matched; // a prefix of the sequence ends the chunk: wait for more
        return { data: input.subarray(0, start), detached: false };
      }
      from = start + 1;
    }
  }

  /** At the end of the stream: the held-back bytes were not a detach after all. */
  flush(): Uint8Array {
    const rest = this.keys.slice(0, this.held);
    this.held = 0;
    return rest;
  }
}

// ---- socket paths -----------------------------------------------------------------------------

/** Open attaches per client and socket path; the last one to close removes the path (as Go). */
const openAttaches = new WeakMap<ConmonClient, Map<string, number>>();

function retainPath(client: ConmonClient, path: string): void {
  let paths = openAttaches.get(client);
  if (!paths) openAttaches.set(client, (paths = new Map()));
  paths.set(path, (paths.get(path) ?? 0) + 1);
}

function releasePath(client: ConmonClient, path: string): void {
  const paths = openAttaches.get(client);
  const count = paths?.get(path) ?? 0;
  if (count > 1) {
    paths!.set(path, count - 1);
    return;
  }
  paths?.delete(path);
  try {
    rmSync(path, { force: true, recursive: true });
  } catch {
    // as Go's os.RemoveAll error, only worth a log line, and the client has no logger
  }
}

// ---- one attach -------------------------------------------------------------------------------

type StdinResult =
  | { kind: "eof" } // stdin ended (or there is none): our write side is shut down
  | { kind: "broken" } // the server no longer reads (EPIPE/ECONNRESET)
  | { kind: "detach" }
  | { kind: "stopped" } // the attach is closing
  | { kind: "error"; error: unknown };

const STOPPED = Symbol("stopped");

/** `p` itself; but if it loses a race and rejects later, that is not an unhandled rejection. */
function settled<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {});
  return p;
}

class AttachSession {
  private readonly path: string;
  private fd: number | null = null;
  private watch: Watch | null = null;
  private readonly buffer = new Uint8Array(PACKET_BUFFER_SIZE);
  private outputEnded = false;
  private closed = false;
  private resolveOutput!: (error: unknown) => void;
  /** Resolves with null at `[0]`/EOF, or with the error that ended the output. */
  private readonly outputDone = new Promise<unknown>((r) => (this.resolveOutput = r));
  private resolveStop!: (value: typeof STOPPED) => void;
  /** Resolves once the session closes: every pending wait gives up. */
  private readonly stopped = new Promise<typeof STOPPED>((r) => (this.resolveStop = r));
  private writableWaiter: (() => void) | null = null;
  private readonly iterators: AsyncIterator<unknown>[] = [];

  constructor(
    private readonly client: ConmonClient,
    private readonly cfg: AttachConfig,
  ) {
    this.path = resolve(cfg.socketPath);
  }

  async run(): Promise<void> {
    const { cfg } = this;
    this.forwardResizes();
    try {
      this.fd = connectUnix(this.path, "seqpacket");
    } catch (e) {
      throw new Error(`failed to connect to container's attach socket: ${cfg.socketPath}: ${(e as Error).message}`, { cause: e });
    }
    retainPath(this.client, this.path);
    await cfg.preAttach?.();
    // Reading starts with the watch: the first callback comes from the next poller pump.
    this.watch = watch(this.fd, { read: true }, (ev) => this.onReady(ev));
    const stdinDone = this.copyStdin();
    await cfg.postAttach?.();

    const first = await Promise.race([
      this.outputDone.then((error) => ({ output: true as const, error })),
      stdinDone.then((result) => ({ output: false as const, result })),
    ]);
    if (first.output) {
      if (first.error) throw first.error;
      return;
    }
    const { result } = first;
    if (result.kind === "detach") throw new DetachError();
    if (result.kind === "error") throw result.error;
    if (cfg.stopAfterStdinEof) return;
    if (cfg.streams?.stdout || cfg.streams?.stderr) {
      const error = await this.outputDone;
      if (error) throw error;
    }
  }

  /** Releases everything; idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.resolveStop(STOPPED);
    this.finishOutput(null);
    this.wakeWriter();
    for (const it of this.iterators) {
      // Ends a generator or stream source; a pending next() of it is abandoned.
      void Promise.resolve()
        .then(() => it.return?.())
        .catch(() => {});
    }
    this.watch?.close();
    this.watch = null;
    if (this.fd !== null) {
      closeQuietly(this.fd);
      this.fd = null;
      releasePath(this.client, this.path);
    }
  }

  // -- resize --

  private forwardResizes(): void {
    const { resize } = this.cfg;
    if (!resize) return;
    const it = resize[Symbol.asyncIterator]();
    this.iterators.push(it);
    void (async () => {
      for (;;) {
        const next = await Promise.race([settled(it.next()), this.stopped]);
        if (next === STOPPED || next.done) return;
        try {
          await this.client.setWindowSizeContainer({ id: this.cfg.id, size: next.value });
        } catch {
          // Go logs "Failed to resize terminal" at debug level and goes on.
        }
      }
    })().catch(() => {});
  }

  // -- output --

  private onReady(ev: Readiness): void {
    if (this.writableWaiter && (ev.writable || ev.hangup || ev.error)) this.wakeWriter();
    if (!this.outputEnded && (ev.readable || ev.hangup || ev.error)) this.readPackets();
    this.updateInterest();
  }

  private readPackets(): void {
    const { buffer } = this;
    for (let i = 0; i < PACKETS_PER_WAKEUP && !this.outputEnded && this.fd !== null; i++) {
      let msg;
      try {
        msg = recvMsg(this.fd, buffer);
      } catch (e) {
        this.finishOutput(isErrno(e, "ECONNRESET") ? null : e);
        return;
      }
      if (msg === null) return;
      if (msg.n === 0) {
        this.finishOutput(null);
        return;
      }
      const tag = buffer[0]!;
      if (tag === TAG_DONE) {
        this.finishOutput(null);
        return;
      }
      const sink = tag === TAG_STDOUT ? this.cfg.streams?.stdout : tag === TAG_STDERR ? this.cfg.streams?.stderr : undefined;
      if (sink === undefined || msg.n === 1) continue; // no destination (or unknown tag): discard
      try {
        sink(buffer.slice(1, msg.n));
      } catch (e) {
        this.finishOutput(e);
        return;
      }
    }
  }

  private finishOutput(error: unknown): void {
    if (this.outputEnded) return;
    this.outputEnded = true;
    this.resolveOutput(error);
  }

  private updateInterest(): void {
    this.watch?.setInterest({ read: !this.outputEnded, write: this.writableWaiter !== null });
  }

  // -- stdin --

  private async copyStdin(): Promise<StdinResult> {
    const source = this.cfg.streams?.stdin;
    if (!source) return this.endStdin();
    const scanner = new DetachScanner(this.cfg.detachKeys ?? DEFAULT_DETACH_KEYS);
    const it = source[Symbol.asyncIterator]();
    this.iterators.push(it);
    for (;;) {
      let next: IteratorResult<Uint8Array | string> | typeof STOPPED;
      try {
        next = await Promise.race([settled(it.next()), this.stopped]);
      } catch (error) {
        return { kind: "error", error };
      }
      if (next === STOPPED) return { kind: "stopped" };
      if (next.done) break;
      const chunk = typeof next.value === "string" ? encoder.encode(next.value) : next.value;
      const { data, detached } = scanner.feed(chunk);
      const sent = await this.send(data);
      if (sent !== null) return sent;
      if (detached) return { kind: "detach" };
    }
    const sent = await this.send(scanner.flush());
    return sent ?? this.endStdin();
  }

  /** Shuts our write side down: the server sees EOF on its read. */
  private endStdin(): StdinResult {
    if (this.closed || this.fd === null) return { kind: "stopped" };
    try {
      shutdownFd(this.fd, "write");
    } catch {
      return { kind: "broken" }; // ENOTCONN: the server is gone already
    }
    return { kind: "eof" };
  }

  /** null once all of `data` is sent; otherwise why it could not be. */
  private async send(data: Uint8Array): Promise<StdinResult | null> {
    for (let offset = 0; offset < data.length; ) {
      if (this.closed || this.fd === null) return { kind: "stopped" };
      const piece = data.subarray(offset, offset + MAX_STDIN_MESSAGE);
      let n: number | null;
      try {
        n = sendMsg(this.fd, piece);
      } catch (e) {
        if (isErrno(e, "EPIPE") || isErrno(e, "ECONNRESET")) return { kind: "broken" };
        return { kind: "error", error: e };
      }
      if (n === null) {
        await this.writable();
        continue;
      }
      offset += piece.length; // SEQPACKET: a message is sent whole or not at all
    }
    return null;
  }

  /** Resolves when the socket has room again (or the session closes). */
  private writable(): Promise<void> {
    return new Promise((resolve) => {
      this.writableWaiter = resolve;
      this.updateInterest();
    });
  }

  private wakeWriter(): void {
    const waiter = this.writableWaiter;
    this.writableWaiter = null;
    waiter?.();
  }
}
