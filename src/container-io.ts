// A container's (or an exec session's) stdio: real pipes or a pty, the output read loops and
// the stdin writer (spec §6.3, §6.4, §6.8, §10).
//
// Why real pipes: Bun.spawn's "pipe" is a socketpair, and inside a container
// `echo x > /dev/stdout` then fails with ENXIO. We create pipes with pipe2 and hand the child
// ends to Bun.spawn as raw fds.
//
// Output is never slowed down by a consumer: each wake-up reads into one shared buffer until
// EAGAIN (or a budget, so other fds get their turn), and every chunk is lent synchronously to the
// log and then to each subscriber. Subscribers copy what they need and bound their own backlog
// (upstream's unbounded per-stream channel leaked memory, issue #2611).
import type { Logger } from "./logger.ts";
import { ConsoleSocket } from "./terminal.ts";
import { errorChain, withContext } from "./errors.ts";
import { closeQuietly, dupFd, pipe, readFd, setNonBlocking, setPipeSize, writeFd } from "../ffi/fd.ts";
import { watch, type Watch } from "../ffi/poller.ts";
import { setOnlcr, setWindowSize as ioctlSetWindowSize } from "../ffi/tty.ts";
import { isErrno } from "../ffi/errors.ts";

export type StreamName = "stdout" | "stderr";

export interface OutputSubscriber {
  /** `chunk` is only valid during the call (the reader reuses its buffer). */
  onData(stream: StreamName, chunk: Uint8Array): void;
  /** stdout or stderr reached EOF (or the pty closed: then both end together). */
  onEnd(stream: StreamName): void;
}

export interface OutputLog {
  write(stream: StreamName, chunk: Uint8Array): void;
}

/**
 * Upstream reads 4 KiB at a time; bigger reads cost fewer syscalls and wake-ups per byte. 1 MiB
 * matches BUSY_PIPE_SIZE, so one read can empty a grown pipe (500 MiB of 100-byte lines through
 * the CRI driver, medians of 10: 1.8 CPU-s/GB and 550 MB/s, against 2.2 CPU-s/GB and 420 MB/s
 * with 128 KiB reads and the default pipe). Consumers bound their own buffers per piece (the CRI
 * driver encodes in slices), so this one shared buffer is the only memory that scales with it.
 */
export const READ_BUFFER_SIZE = 1024 * 1024;
/** Bytes one fd may read per wake-up before yielding to the other watched fds. */
export const READ_BUDGET_PER_WAKEUP = 1024 * 1024;
/** The kernel's default pipe capacity; a read this large found the container's pipe full. */
const DEFAULT_PIPE_SIZE = 64 * 1024;
/**
 * What a pipe found full is grown to, once, best effort. A chatty container then fills the pipe
 * while we format and write the previous chunk, and each wake-up reads more: fewer wake-ups and
 * system calls per byte. Quiet containers keep the default, because the kernel charges pipe
 * capacity to the user (fs/pipe-user-pages-soft, shared by every process of that uid, containers
 * running as root included) and beyond the limit hands unprivileged processes 8 KiB pipes.
 */
export const BUSY_PIPE_SIZE = 1024 * 1024;
/** Stdin bytes queued for a container that does not read; writeStdin refuses beyond this. */
export const STDIN_BACKLOG_LIMIT = 4 * 1024 * 1024;

// One buffer for every reader of the process: a chunk is only lent during synchronous calls, and
// nothing reads while another read's chunk is being dispatched.
const readBuffer = new Uint8Array(READ_BUFFER_SIZE);

const BOTH_STREAMS: readonly StreamName[] = ["stdout", "stderr"];

type ChildStdio = [number | "ignore" | "inherit", number | "ignore", number | "ignore"];

// ---- output -----------------------------------------------------------------------------------

// A pty master gets no SIGIO when its slave side closes (the tty layer only wakes pollers), so
// the end of a terminal container would only be seen by the poller's 1 s safety poll. The
// container's exit does raise SIGCHLD in the server (it is the subreaper of every container), so
// each SIGCHLD also gives every pty reader a non-blocking look. ContainerIO.drainNow() is the
// explicit variant for callers that learn about an exit some other way.
const ptyReaders = new Set<OutputReader>();
const onSigchld = () => {
  for (const reader of ptyReaders) reader.drainNow();
};

function trackPtyReader(reader: OutputReader, on: boolean): void {
  const before = ptyReaders.size;
  if (on) ptyReaders.add(reader);
  else ptyReaders.delete(reader);
  if (before === 0 && ptyReaders.size > 0) process.on("SIGCHLD", onSigchld);
  else if (before > 0 && ptyReaders.size === 0) process.off("SIGCHLD", onSigchld);
}

/** Reads one fd until EOF (or EIO, which is how a pty master reports that the slave closed). */
class OutputReader {
  private watch: Watch | null = null;
  private finished = false;
  private released = false;
  /** Pipes only: whether the pipe was grown to BUSY_PIPE_SIZE (or that failed); ptys never are. */
  private grown: boolean;

  constructor(
    private readonly fd: number,
    /** A pty master: owned by ContainerIO (pipes are closed by their reader), and EIO is its EOF. */
    private readonly isPty: boolean,
    private readonly onChunk: (chunk: Uint8Array) => void,
    private readonly onEnd: () => void,
    private readonly log?: Logger,
  ) {
    this.grown = isPty;
  }

  start(): void {
    if (this.watch !== null || this.finished) return;
    this.watch = watch(this.fd, { read: true }, () => this.drain());
    if (this.isPty) trackPtyReader(this, true);
  }

  /** One synchronous look at the fd, outside of readiness notifications. No-op unless started. */
  drainNow(): void {
    if (this.watch !== null && !this.finished) this.drain();
  }

  /** Stops without reporting an end (the owner is shutting everything down). */
  close(): void {
    this.finished = true;
    this.release();
  }

  private drain(): void {
    let budget = READ_BUDGET_PER_WAKEUP;
    while (budget > 0 && !this.finished) {
      const n = this.readChunk();
      if (n < 0) return; // drained; the poller calls again when more arrives
      if (n === 0) {
        this.finish();
        return;
      }
      budget -= n;
      if (n >= DEFAULT_PIPE_SIZE && !this.grown) this.growPipe();
      this.onChunk(readBuffer.subarray(0, n));
    }
    // Budget spent with data left: the poller's level-triggered re-poll brings us back next tick.
  }

  /** Once: the container filled its pipe, so give it a bigger one (best effort, see BUSY_PIPE_SIZE). */
  private growPipe(): void {
    this.grown = true;
    try {
      setPipeSize(this.fd, BUSY_PIPE_SIZE);
    } catch (e) {
      this.log?.debug(`grow container output pipe fd ${this.fd}: ${errorChain(e)}`);
    }
  }

  /** Bytes read, 0 at the end, -1 when nothing is waiting. */
  private readChunk(): number {
    try {
      return readFd(this.fd, readBuffer, 0, READ_BUFFER_SIZE);
    } catch (e) {
      // EIO: the pty's slave side closed, the normal end of a terminal container. Anything else
      // would repeat on every wake-up, so it ends the stream too, with a trace in the log.
      if (!isErrno(e, "EIO")) this.log?.error(`read container output fd ${this.fd}: ${errorChain(e)}`);
      return 0;
    }
  }

  private finish(): void {
    this.finished = true;
    this.release();
    this.onEnd();
  }

  /** Once only: a second close() of the number could hit an fd that reused it. */
  private release(): void {
    if (this.released) return;
    this.released = true;
    if (this.isPty) trackPtyReader(this, false);
    this.watch?.close();
    this.watch = null;
    if (!this.isPty) closeQuietly(this.fd);
  }
}

// ---- stdin ------------------------------------------------------------------------------------

/** Backlog storage unit: small writes are packed together, so the bound is on memory, not on
 * the number of writes (a million 1-byte writes must not become a million arrays). */
const STDIN_CHUNK_SIZE = 64 * 1024;

type BacklogChunk = { bytes: Uint8Array; start: number; end: number };

/**
 * Writes into a non-blocking fd (a pipe's write end, or a dup of the pty master). Data the fd
 * does not take at once is copied into a bounded backlog and flushed on write readiness.
 */
class StdinWriter {
  private watch: Watch | null = null;
  private readonly backlog: BacklogChunk[] = [];
  private backlogBytes = 0;
  private closing = false;
  private closed = false;
  private drainWaiters: (() => void)[] = [];

  constructor(
    private readonly fd: number,
    private readonly log?: Logger,
  ) {
    // A full pipe must answer EAGAIN, never block the event loop. Only our end changes: the
    // child's read end is a separate open file and stays blocking.
    setNonBlocking(fd);
  }

  get queuedBytes(): number {
    return this.backlogBytes;
  }

  get isOpen(): boolean {
    return !this.closing && !this.closed;
  }

  write(data: Uint8Array): boolean {
    if (!this.isOpen) return false;
    if (data.length === 0) return true;
    if (this.backlogBytes + data.length > STDIN_BACKLOG_LIMIT) return false;
    let written = 0;
    if (this.backlogBytes === 0) {
      written = this.writeSome(data, 0);
      if (written < 0) return false; // the fd broke
      if (written === data.length) return true;
    }
    this.enqueue(data.subarray(written));
    this.wantWritable(true);
    return true;
  }

  /** Copies (the caller reuses its buffer) into the tail chunk, then into new chunks. */
  private enqueue(data: Uint8Array): void {
    let offset = 0;
    while (offset < data.length) {
      let tail = this.backlog.at(-1);
      if (tail === undefined || tail.end === tail.bytes.length) {
        tail = { bytes: new Uint8Array(Math.max(STDIN_CHUNK_SIZE, data.length - offset)), start: 0, end: 0 };
        this.backlog.push(tail);
      }
      const n = Math.min(tail.bytes.length - tail.end, data.length - offset);
      tail.bytes.set(data.subarray(offset, offset + n), tail.end);
      tail.end += n;
      offset += n;
    }
    this.backlogBytes += data.length;
  }

  /** Resolves once the backlog is empty (or the writer is gone). */
  drained(): Promise<void> {
    if (this.backlogBytes === 0 || this.closed) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Closes after the backlog is flushed; the reader then sees EOF. */
  close(): void {
    if (!this.isOpen) return;
    this.closing = true;
    if (this.backlogBytes === 0) this.destroy();
  }

  /** Closes now and drops the backlog. Idempotent. */
  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    this.closing = true;
    this.watch?.close();
    this.watch = null;
    closeQuietly(this.fd);
    this.backlog.length = 0;
    this.backlogBytes = 0;
    this.notifyDrained();
  }

  /** Bytes written (possibly 0), or -1 after the fd broke (the writer is then destroyed). */
  private writeSome(data: Uint8Array, offset: number): number {
    try {
      const n = writeFd(this.fd, data, offset);
      return n < 0 ? 0 : n;
    } catch (e) {
      // EPIPE: the container closed its stdin (or exited). Nothing will ever be read again.
      if (!isErrno(e, "EPIPE")) this.log?.warn(`write container stdin fd ${this.fd}: ${errorChain(e)}`);
      this.destroy();
      return -1;
    }
  }

  private flush(): void {
    while (this.backlog.length > 0) {
      const head = this.backlog[0]!;
      const n = this.writeSome(head.bytes.subarray(0, head.end), head.start);
      if (n <= 0) return; // broke (-1), or full again (0): wait for the next readiness
      head.start += n;
      this.backlogBytes -= n;
      if (head.start === head.end) this.backlog.shift();
    }
    this.wantWritable(false);
    this.notifyDrained();
    if (this.closing) this.destroy();
  }

  private wantWritable(on: boolean): void {
    if (this.closed) return;
    if (this.watch === null) {
      if (!on) return;
      this.watch = watch(this.fd, { write: true }, () => this.flush());
      return;
    }
    this.watch.setInterest(on ? { write: true } : {});
    // An idle stdin must not keep the process alive on its own.
    if (on) this.watch.ref();
    else this.watch.unref();
  }

  private notifyDrained(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const resolve of waiters) resolve();
  }
}

// ---- the container's stdio --------------------------------------------------------------------

export type ContainerIOOptions = {
  /** Pipe (or forward into the pty) the container's stdin. */
  stdin: boolean;
  /** For read/write errors that have no caller to report to. */
  log?: Logger;
};

export class ContainerIO {
  readonly terminal: boolean;
  /**
   * fds for Bun.spawn's stdio: [stdin, stdout, stderr] (child ends; closed in us by afterSpawn()).
   * Streams mode: stdin is "inherit" when not piped, as upstream (the server's stdin is normally
   * /dev/null). Terminal mode: all "ignore", since the runtime's own stdio never reaches the
   * container; a caller that wants the runtime's error output may put "pipe" there instead.
   */
  readonly childStdio: ChildStdio;
  /** Resolves when both output streams ended (or close() ran). */
  readonly ended: Promise<void>;

  private readonly log?: Logger;
  private readonly wantsStdin: boolean;
  private readonly readers: OutputReader[] = [];
  private readonly endedStreams = new Set<StreamName>();
  private readonly subscribers = new Set<OutputSubscriber>();
  private childEnds: number[] = [];
  private stdinWriter: StdinWriter | null = null;
  private outputLog?: OutputLog;
  private started = false;
  private closed = false;
  private resolveEnded!: () => void;
  // terminal mode
  private console: ConsoleSocket | null = null;
  private consolePath?: string;
  private master: number | null = null;
  private ptyFailure: Error | null = null;
  private ptyWaiters: { resolve(): void; reject(e: Error): void }[] = [];

  private constructor(terminal: boolean, opts: ContainerIOOptions, childStdio: ChildStdio) {
    this.terminal = terminal;
    this.wantsStdin = opts.stdin;
    this.log = opts.log;
    this.childStdio = childStdio;
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve));
  }

  /** Streams mode: real pipes (pipe2) for the runtime's stdio; stdin piped only when asked. */
  static streams(opts: ContainerIOOptions): ContainerIO {
    const opened: number[] = [];
    try {
      const [outRead, outWrite] = pipe();
      opened.push(outRead, outWrite);
      const [errRead, errWrite] = pipe();
      opened.push(errRead, errWrite);
      let stdinPipe: [number, number] | null = null;
      if (opts.stdin) {
        stdinPipe = pipe();
        opened.push(...stdinPipe);
      }
      const io = new ContainerIO(false, opts, [stdinPipe?.[0] ?? "inherit", outWrite, errWrite]);
      io.childEnds = stdinPipe ? [stdinPipe[0], outWrite, errWrite] : [outWrite, errWrite];
      io.addReader(outRead, false, ["stdout"]);
      io.addReader(errRead, false, ["stderr"]);
      if (stdinPipe) io.stdinWriter = new StdinWriter(stdinPipe[1], opts.log);
      return io;
    } catch (e) {
      for (const fd of opened) closeQuietly(fd);
      throw withContext("create container stdio pipes", e);
    }
  }

  /** Terminal mode: a console socket the runtime connects to; the pty master arrives over SCM_RIGHTS. */
  static async terminal(opts: ContainerIOOptions): Promise<ContainerIO> {
    const io = new ContainerIO(true, opts, ["ignore", "ignore", "ignore"]);
    io.console = ConsoleSocket.open({
      onMaster: (fd) => io.attachMaster(fd),
      onFailure: (err) => io.failPty(err),
    });
    io.consolePath = io.console.path;
    return io;
  }

  /** Terminal mode: the path to pass as the runtime's `--console-socket`. */
  get consoleSocketPath(): string | undefined {
    return this.consolePath;
  }

  /** Closes our copies of the child ends; without this the readers never see EOF. Idempotent. */
  afterSpawn(): void {
    for (const fd of this.childEnds) closeQuietly(fd);
    this.childEnds = [];
  }

  /**
   * Terminal: resolves once the pty master is here. Rejects if `runtimeExited` settles first
   * (upstream hangs forever then, quirk Q17), or if the runtime hung up without sending an fd.
   */
  waitForPty(runtimeExited: Promise<unknown>): Promise<void> {
    if (!this.terminal) return Promise.reject(new Error("container has no terminal"));
    if (this.master !== null) return Promise.resolve();
    if (this.ptyFailure !== null) return Promise.reject(this.ptyFailure);
    if (this.closed) return Promise.reject(new Error("container io closed before the terminal connected"));
    return new Promise<void>((resolve, reject) => {
      const waiter = { resolve, reject };
      this.ptyWaiters.push(waiter);
      const onRuntimeExit = () => this.runtimeExitedBeforePty(waiter);
      runtimeExited.then(onRuntimeExit, onRuntimeExit);
    });
  }

  /** Starts reading; every chunk goes to the log (if any) and to subscribers. */
  start(log?: OutputLog): void {
    if (this.closed) throw new Error("container io is closed");
    this.outputLog = log;
    if (this.started) return;
    this.started = true;
    for (const reader of this.readers) reader.start();
  }

  /** Returns the unsubscribe function. A late subscriber still learns about ends that happened. */
  subscribe(sub: OutputSubscriber): () => void {
    this.subscribers.add(sub);
    const alreadyEnded = [...this.endedStreams];
    if (alreadyEnded.length > 0) {
      queueMicrotask(() => {
        for (const stream of alreadyEnded) if (this.subscribers.has(sub)) this.notifyEnd(sub, stream);
      });
    }
    return () => {
      this.subscribers.delete(sub);
    };
  }

  /** Bounded: returns false when the stdin backlog is full (the data is then dropped), when the
   * container has no stdin, or when stdin was closed. */
  writeStdin(data: Uint8Array): boolean {
    return this.stdinWriter?.write(data) ?? false;
  }

  /** Bytes accepted by writeStdin that the container has not read yet. */
  get stdinBacklog(): number {
    return this.stdinWriter?.queuedBytes ?? 0;
  }

  /** Resolves when the stdin backlog is empty (for producers that want to pause instead of drop). */
  stdinDrained(): Promise<void> {
    return this.stdinWriter?.drained() ?? Promise.resolve();
  }

  /**
   * Streams: flushes the backlog, then closes the pipe, so the container sees EOF.
   * Terminal: stops forwarding (a pty has no EOF of its own; the master stays open for output).
   */
  closeStdin(): void {
    this.stdinWriter?.close();
  }

  /**
   * Reads what the output fds hold right now, synchronously; an EOF/EIO found this way ends the
   * streams. For the exit path: a pty's hang-up raises no SIGIO (see above), so call this once
   * the container's process is known to have exited, then await `ended`.
   */
  drainNow(): void {
    if (!this.started || this.closed) return;
    for (const reader of this.readers) reader.drainNow();
  }

  setWindowSize(rows: number, cols: number): void {
    if (!this.terminal) throw new Error("container has no terminal");
    if (this.master === null) throw new Error("terminal not connected");
    ioctlSetWindowSize(this.master, rows, cols);
  }

  /** Releases every fd, watch and socket file. Unended streams end now. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.console?.close();
    this.console = null;
    for (const reader of this.readers) reader.close();
    this.stdinWriter?.destroy();
    this.afterSpawn();
    closeQuietly(this.master);
    this.master = null;
    this.rejectPtyWaiters(new Error("container io closed before the terminal connected"));
    for (const stream of BOTH_STREAMS) this.streamEnded(stream);
    this.subscribers.clear();
  }

  // ---- internals ------------------------------------------------------------------------------

  private addReader(fd: number, isPty: boolean, streams: readonly StreamName[]): void {
    const label = streams[0]!;
    const reader = new OutputReader(
      fd,
      isPty,
      (chunk) => this.dispatch(label, chunk),
      () => {
        for (const stream of streams) this.streamEnded(stream);
      },
      this.log,
    );
    this.readers.push(reader);
    if (this.started) reader.start();
  }

  private dispatch(stream: StreamName, chunk: Uint8Array): void {
    if (this.outputLog !== undefined) {
      try {
        this.outputLog.write(stream, chunk);
      } catch (e) {
        // A broken log must not stop the container's output (upstream aborts the read loop,
        // which then blocks the container on a full pipe).
        this.log?.error(`write container log: ${errorChain(e)}`);
      }
    }
    for (const sub of this.subscribers) {
      try {
        sub.onData(stream, chunk);
      } catch (e) {
        this.log?.error(`container output subscriber: ${errorChain(e)}`);
      }
    }
  }

  private streamEnded(stream: StreamName): void {
    if (this.endedStreams.has(stream)) return;
    this.endedStreams.add(stream);
    for (const sub of this.subscribers) this.notifyEnd(sub, stream);
    if (this.endedStreams.size === BOTH_STREAMS.length) this.resolveEnded();
  }

  private notifyEnd(sub: OutputSubscriber, stream: StreamName): void {
    try {
      sub.onEnd(stream);
    } catch (e) {
      this.log?.error(`container output subscriber: ${errorChain(e)}`);
    }
  }

  private attachMaster(fd: number): void {
    this.console = null; // it closed itself before handing over the fd
    if (this.closed) {
      closeQuietly(fd);
      return;
    }
    let writerFd: number | null = null;
    try {
      setOnlcr(fd);
      setNonBlocking(fd); // also before start(): nothing may ever block on it
      // The writer gets its own fd number: the poller allows one watch per fd, and the
      // writer's lifetime (closeStdin) differs from the master's.
      if (this.wantsStdin) {
        writerFd = dupFd(fd);
        this.stdinWriter = new StdinWriter(writerFd, this.log);
      }
    } catch (e) {
      closeQuietly(fd);
      closeQuietly(writerFd);
      this.failPty(withContext("set up the terminal", e));
      return;
    }
    this.master = fd;
    // A pty has one output; "stderr" has no source and ends together with it.
    this.addReader(fd, true, BOTH_STREAMS);
    const waiters = this.ptyWaiters;
    this.ptyWaiters = [];
    for (const w of waiters) w.resolve();
  }

  private failPty(err: Error): void {
    this.console = null;
    this.ptyFailure = err;
    this.rejectPtyWaiters(err);
  }

  private rejectPtyWaiters(err: Error): void {
    const waiters = this.ptyWaiters;
    this.ptyWaiters = [];
    for (const w of waiters) w.reject(err);
  }

  private runtimeExitedBeforePty(waiter: { resolve(): void; reject(e: Error): void }): void {
    if (!this.ptyWaiters.includes(waiter)) return; // already settled
    // The runtime may have sent the fd just before exiting while the poller has not run yet.
    this.console?.receiveNow();
    if (!this.ptyWaiters.includes(waiter)) return;
    this.ptyWaiters = this.ptyWaiters.filter((w) => w !== waiter);
    waiter.reject(new Error("runtime exited without connecting to the console socket"));
  }
}
