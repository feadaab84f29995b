// The journald container log driver: every line of a chunk becomes one journal entry.
//
// Fields: PRIORITY=5 (upstream sends notice for both streams), MESSAGE=<line incl. its \n; a
// trailing partial line as-is>, and beyond upstream CONTAINER_ID_FULL and CONTAINER_STREAM so the
// entries can be found without knowing the server's pid (C conmon and podman use
// CONTAINER_ID_FULL). Bytes go as they are: invalid UTF-8 does not stop anything (upstream's
// read_line aborts the read loop on it).
//
// journald's receive queue is short (net.unix.max_dgram_qlen, 10 on this machine), so a burst of
// lines meets EAGAIN quickly. We never block the event loop: entries that do not fit wait in a
// bounded backlog that a timer drains; `write` then returns a promise a caller may await for
// backpressure. When even the backlog overflows the oldest entries are dropped and reported.

import type { LogStream } from "./container-log.ts";
import { type JournalSender, type SendResult, encodeJournalEntry, writeJournalField } from "./journal.ts";

const NEWLINE = 0x0a;
const textEncoder = new TextEncoder();
const HEAD = encodeJournalEntry([["PRIORITY", "5"]]);
const MESSAGE_KEY = textEncoder.encode("MESSAGE");
/** Room for MESSAGE's key, `=` or the binary header, and the closing `\n`. */
const MESSAGE_OVERHEAD = MESSAGE_KEY.length + 1 + 8 + 1;

export interface JournaldDriverOptions {
  /** Bytes of entries kept while journald is busy before the oldest are dropped. */
  backlogLimitBytes?: number;
  /** Reports trouble that does not stop the driver: journald absent, entries dropped. */
  onError?: (error: Error) => void;
}

export class JournaldLogDriver {
  private readonly tails: Record<LogStream, Uint8Array>;
  private readonly backlogLimitBytes: number;
  private readonly onError: (error: Error) => void;
  private buffer = new Uint8Array(8 * 1024);
  private backlog: Uint8Array[] = [];
  private backlogHead = 0;
  private backlogBytes = 0;
  private dropped = 0;
  private journaldAbsent = false;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private retryDelayMs = 1;
  private drained: { promise: Promise<void>; resolve: () => void } | undefined;
  private closed = false;

  constructor(
    readonly containerId: string,
    private readonly sender: JournalSender,
    options: JournaldDriverOptions = {},
  ) {
    this.tails = {
      stdout: encodeJournalEntry([["CONTAINER_ID_FULL", containerId], ["CONTAINER_STREAM", "stdout"]]),
      stderr: encodeJournalEntry([["CONTAINER_ID_FULL", containerId], ["CONTAINER_STREAM", "stderr"]]),
    };
    this.backlogLimitBytes = options.backlogLimitBytes ?? 4 * 1024 * 1024;
    this.onError = options.onError ?? (() => {});
  }

  /** Sends one entry per line. A promise means entries are waiting for journald. */
  write(stream: LogStream, chunk: Uint8Array): Promise<void> | undefined {
    if (this.closed) return undefined;
    let start = 0;
    while (start < chunk.length) {
      const newline = chunk.indexOf(NEWLINE, start);
      const end = newline < 0 ? chunk.length : newline + 1;
      this.submit(this.encodeEntry(stream, chunk.subarray(start, end)));
      start = end;
    }
    return this.pending();
  }

  /** The entry for one line, in a reused buffer (valid until the next call). */
  encodeEntry(stream: LogStream, line: Uint8Array): Uint8Array {
    const tail = this.tails[stream];
    const size = HEAD.length + MESSAGE_OVERHEAD + line.length + tail.length;
    if (size > this.buffer.length) this.buffer = new Uint8Array(Math.max(size, this.buffer.length * 2));
    const out = this.buffer;
    out.set(HEAD, 0);
    let pos = writeJournalField(out, HEAD.length, MESSAGE_KEY, line);
    out.set(tail, pos);
    pos += tail.length;
    return out.subarray(0, pos);
  }

  /** Resolves once no entry waits for journald (immediately when none does). */
  flush(): Promise<void> {
    return this.pending() ?? Promise.resolve();
  }

  /** Nothing to reopen: journald has no file of ours. */
  reopen(): void {}

  /** One last non-blocking attempt for waiting entries, then drops the rest. */
  close(): void {
    if (this.closed) return;
    this.drainBacklog();
    this.closed = true;
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const left = this.backlog.length - this.backlogHead;
    if (left > 0) this.report(`dropped ${left} journal entries of container ${this.containerId} on close`);
    this.clearBacklog();
    this.settleDrained();
  }

  private submit(entry: Uint8Array): void {
    if (this.backlog.length > this.backlogHead) {
      this.enqueue(entry); // keep order behind what already waits
      return;
    }
    if (this.attempt(entry) === "busy") this.enqueue(entry);
  }

  /** One send; "absent" covers every way the entry is lost (reported, not thrown). */
  private attempt(entry: Uint8Array): SendResult {
    let result: SendResult;
    try {
      result = this.sender.trySend(entry);
    } catch (err) {
      this.report(`send journal entry of container ${this.containerId}: ${(err as Error).message}`);
      return "absent";
    }
    if (result === "absent") this.journaldGone();
    else if (result === "sent") this.journaldAbsent = false;
    return result;
  }

  private enqueue(entry: Uint8Array): void {
    this.backlog.push(entry.slice());
    this.backlogBytes += entry.length;
    while (this.backlogBytes > this.backlogLimitBytes && this.backlog.length > this.backlogHead + 1) {
      this.backlogBytes -= this.backlog[this.backlogHead]!.length;
      this.backlogHead++;
      this.dropped++;
    }
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    if (this.retryTimer !== undefined || this.closed) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.retry();
    }, this.retryDelayMs);
    // A busy journald must not keep a finished process alive.
    this.retryTimer.unref?.();
  }

  private retry(): void {
    const before = this.backlogHead;
    this.drainBacklog();
    if (this.dropped > 0) {
      this.report(`journald is not keeping up: dropped ${this.dropped} entries of container ${this.containerId}`);
      this.dropped = 0;
    }
    if (this.backlog.length > this.backlogHead) {
      // Back off while journald makes no progress, stay quick while it does.
      this.retryDelayMs = this.backlogHead > before ? 1 : Math.min(this.retryDelayMs * 2, 100);
      this.scheduleRetry();
    } else {
      this.retryDelayMs = 1;
      this.settleDrained();
    }
  }

  /** Sends waiting entries in order until journald is busy again. */
  private drainBacklog(): void {
    while (this.backlogHead < this.backlog.length) {
      const entry = this.backlog[this.backlogHead]!;
      if (this.attempt(entry) === "busy") return;
      this.backlogBytes -= entry.length;
      this.backlogHead++;
    }
    this.clearBacklog();
  }

  private clearBacklog(): void {
    this.backlog = [];
    this.backlogHead = 0;
    this.backlogBytes = 0;
  }

  private pending(): Promise<void> | undefined {
    if (this.backlog.length === this.backlogHead) return undefined;
    if (!this.drained) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.drained = { promise, resolve };
    }
    return this.drained.promise;
  }

  private settleDrained(): void {
    const drained = this.drained;
    this.drained = undefined;
    drained?.resolve();
  }

  /** Reported once per outage, not once per line. */
  private journaldGone(): void {
    if (this.journaldAbsent) return;
    this.journaldAbsent = true;
    this.report(`journald socket '${this.sender.socketPath}' is not available: log lines of container ${this.containerId} are dropped`);
  }

  private report(message: string): void {
    this.onError(new Error(message));
  }
}
