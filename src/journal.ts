// journald's native protocol: one datagram per entry to /run/systemd/journal/socket.
//
// Entry = fields, each either `KEY=value\n` or, when the value holds a newline (or is binary with
// one), `KEY\n<u64 LE length><value>\n`. An entry too large for one datagram (EMSGSIZE; the
// socket buffer is ~208 KiB here) goes as a memfd passed by SCM_RIGHTS with no data. The memfd is
// sealed as libsystemd does: journald can then map it instead of copying, and its rules for
// unsealed fds (path checks) have changed between versions. (journald 252 here takes both.)
//
// Used by the server's own log (src/logger.ts: PRIORITY + MESSAGE, like upstream) and by the
// journald container log driver (src/log-journald.ts).

import { closeFd, memfdCreate, sealFd, writeAll } from "../ffi/fd.ts";
import { dgramSocket, sendDatagram } from "../ffi/socket.ts";

export const DEFAULT_JOURNAL_SOCKET = "/run/systemd/journal/socket";

export type JournalFieldValue = string | Uint8Array;
export type JournalField = readonly [key: string, value: JournalFieldValue];

const textEncoder = new TextEncoder();
const NEWLINE = 0x0a;
const EQUALS = 0x3d;
const EMPTY = new Uint8Array(0);

/**
 * journald's rule for field names: A-Z, 0-9 and `_`, not starting with a digit, at most 64 bytes.
 * A leading `_` marks trusted fields that journald fills in itself and drops from clients.
 */
const FIELD_NAME = /^[A-Z_][A-Z0-9_]{0,63}$/;

export function isValidJournalFieldName(key: string): boolean {
  return FIELD_NAME.test(key) && !key.startsWith("_");
}

function fieldValueBytes(value: JournalFieldValue): Uint8Array {
  return typeof value === "string" ? textEncoder.encode(value) : value;
}

function fieldSize(keyLength: number, value: Uint8Array): number {
  // Binary form: KEY \n len(8) value \n; simple form: KEY = value \n.
  return value.includes(NEWLINE) ? keyLength + 1 + 8 + value.length + 1 : keyLength + 1 + value.length + 1;
}

/** Writes one field at `pos` of `out` (which must have room) and returns the position after it. */
export function writeJournalField(out: Uint8Array, pos: number, key: Uint8Array, value: Uint8Array): number {
  out.set(key, pos);
  pos += key.length;
  if (value.includes(NEWLINE)) {
    out[pos++] = NEWLINE;
    let length = value.length;
    for (let i = 0; i < 8; i++) {
      out[pos++] = length % 256; // little-endian u64, without a BigInt per line
      length = Math.floor(length / 256);
    }
  } else {
    out[pos++] = EQUALS;
  }
  out.set(value, pos);
  pos += value.length;
  out[pos++] = NEWLINE;
  return pos;
}

/** The datagram payload for one entry. Throws on a field name journald would drop. */
export function encodeJournalEntry(fields: readonly JournalField[]): Uint8Array {
  const encoded = fields.map(([key, value]) => {
    if (!isValidJournalFieldName(key)) throw new RangeError(`invalid journal field name '${key}'`);
    return [textEncoder.encode(key), fieldValueBytes(value)] as const;
  });
  const size = encoded.reduce((sum, [key, value]) => sum + fieldSize(key.length, value), 0);
  const out = new Uint8Array(size);
  let pos = 0;
  for (const [key, value] of encoded) pos = writeJournalField(out, pos, key, value);
  return out;
}

/** Outcome of one non-blocking send. */
export type SendResult = "sent" | "busy" | "absent";

/** Errors that mean "no journald listens there" (socket file missing, or stale after it stopped). */
const ABSENT_CODES = new Set(["ENOENT", "ECONNREFUSED", "ENOTDIR"]);

function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === "string" ? code : undefined;
}

export interface JournalSenderOptions {
  socketPath?: string;
  /** How long `send` keeps retrying while journald's queue is full before it gives up. */
  busyTimeoutMs?: number;
}

/** A non-blocking datagram socket to journald. The socket is created on first use. */
export class JournalSender {
  readonly socketPath: string;
  private readonly busyTimeoutMs: number;
  private fd = -1;

  constructor(options: JournalSenderOptions = {}) {
    this.socketPath = options.socketPath ?? DEFAULT_JOURNAL_SOCKET;
    this.busyTimeoutMs = options.busyTimeoutMs ?? 200;
  }

  /**
   * Sends one entry. `true` once journald has it, `false` when no journald listens (the caller
   * falls back). While journald's receive queue is full this blocks for up to `busyTimeoutMs`
   * (upstream blocks indefinitely), then throws an EAGAIN error.
   */
  send(fields: readonly JournalField[]): boolean {
    const datagram = encodeJournalEntry(fields);
    const deadline = performance.now() + this.busyTimeoutMs;
    for (;;) {
      const result = this.trySend(datagram);
      if (result !== "busy") return result === "sent";
      if (performance.now() >= deadline) {
        const error = new Error(`send to journald '${this.socketPath}': queue full for ${this.busyTimeoutMs} ms`);
        throw Object.assign(error, { code: "EAGAIN" });
      }
      Bun.sleepSync(1);
    }
  }

  /** One attempt, never blocks: "busy" when journald's queue is full (try again later). */
  trySend(datagram: Uint8Array): SendResult {
    const fd = this.socket();
    try {
      return sendDatagram(fd, this.socketPath, datagram) === null ? "busy" : "sent";
    } catch (err) {
      const code = errorCode(err);
      if (code === "EMSGSIZE" || code === "ENOBUFS") return this.sendAsMemfd(datagram);
      if (code !== undefined && ABSENT_CODES.has(code)) return "absent";
      throw new Error(`send to journald '${this.socketPath}': ${(err as Error).message}`, { cause: err });
    }
  }

  /** The large-entry path: the payload in a sealed memfd; the datagram carries only the fd. */
  private sendAsMemfd(datagram: Uint8Array): SendResult {
    const memfd = memfdCreate("journal-entry");
    try {
      writeAll(memfd, datagram);
      sealFd(memfd);
      return sendDatagram(this.socket(), this.socketPath, EMPTY, [memfd]) === null ? "busy" : "sent";
    } catch (err) {
      const code = errorCode(err);
      if (code !== undefined && ABSENT_CODES.has(code)) return "absent";
      throw new Error(`send large entry to journald '${this.socketPath}' via memfd: ${(err as Error).message}`, {
        cause: err,
      });
    } finally {
      closeFd(memfd);
    }
  }

  private socket(): number {
    if (this.fd < 0) this.fd = dgramSocket();
    return this.fd;
  }

  close(): void {
    if (this.fd < 0) return;
    const fd = this.fd;
    this.fd = -1;
    closeFd(fd);
  }
}

let sharedSender: JournalSender | undefined;

/** The process-wide sender to the default socket (one fd for every journald-logging container). */
export function defaultJournalSender(): JournalSender {
  sharedSender ??= new JournalSender();
  return sharedSender;
}
