// The JSON log driver: one JSON object per line,
//
//   {"timestamp":<unix seconds>,"pipe":"stdout"|"stderr","message":"<line, trimmed>"}\n
//
// Every segment of a chunk (each `\n`-terminated line and a trailing partial one) is an entry;
// the message is the lossy UTF-8 decoding with surrounding whitespace trimmed as Rust's
// `str::trim` does. Escaping is serde_json's, which JSON.stringify matches for well-formed
// strings: \" \\ \b \f \n \r \t, other controls as lowercase \u00xx, everything else raw.

import { type LogStream } from "./container-log.ts";
import { LogFile } from "./log-cri.ts";

const textDecoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
const textEncoder = new TextEncoder();

/** Unicode White_Space, which is what Rust's `char::is_whitespace` (and so `str::trim`) uses. */
export function isRustWhitespace(code: number): boolean {
  if (code <= 0x20) return code === 0x20 || (code >= 0x09 && code <= 0x0d);
  if (code < 0x85) return false;
  return (
    code === 0x85 ||
    code === 0xa0 ||
    code === 0x1680 ||
    (code >= 0x2000 && code <= 0x200a) ||
    code === 0x2028 ||
    code === 0x2029 ||
    code === 0x202f ||
    code === 0x205f ||
    code === 0x3000
  );
}

/** Rust's `str::trim` (JS's `trim` differs: it strips U+FEFF and keeps U+0085). */
export function trimLikeRust(text: string): string {
  let start = 0;
  let end = text.length;
  while (start < end && isRustWhitespace(text.charCodeAt(start))) start++;
  while (end > start && isRustWhitespace(text.charCodeAt(end - 1))) end--;
  return start === 0 && end === text.length ? text : text.slice(start, end);
}

/** One entry including its trailing `\n`. `line` is already decoded. */
export function formatJsonLogEntry(line: string, stream: LogStream, epochSeconds: number): string {
  return `{"timestamp":${epochSeconds},"pipe":"${stream}","message":${JSON.stringify(trimLikeRust(line))}}\n`;
}

/**
 * The entries of one chunk. Decoding the chunk once and splitting the text gives the same result
 * as decoding each line: `\n` never occurs inside a UTF-8 sequence, so replacement characters
 * never straddle a line break.
 */
export function encodeJsonLogEntries(chunk: Uint8Array, stream: LogStream, epochSeconds: number): string[] {
  if (chunk.length === 0) return [];
  const text = textDecoder.decode(chunk);
  const entries: string[] = [];
  let start = 0;
  while (start < text.length) {
    const newline = text.indexOf("\n", start);
    const end = newline < 0 ? text.length : newline + 1;
    entries.push(formatJsonLogEntry(text.slice(start, end), stream, epochSeconds));
    start = end;
  }
  return entries;
}

export function unixSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

/** The JSON file driver: 0666 & ~umask, one write per chunk, maxSize truncation per upstream. */
export class JsonLogDriver {
  private bytesWritten = 0;

  private constructor(
    private readonly file: LogFile,
    private readonly maxSize: number,
    private readonly clock: () => number,
  ) {}

  /** `maxSize` ≤ 0 means unlimited. `clock` gives unix seconds. */
  static open(path: string, maxSize: number, clock: () => number = unixSeconds): JsonLogDriver {
    return new JsonLogDriver(LogFile.open(path), maxSize > 0 ? maxSize : 0, clock);
  }

  write(stream: LogStream, chunk: Uint8Array): void {
    const entries = encodeJsonLogEntries(chunk, stream, this.clock());
    if (entries.length === 0) return;
    if (this.maxSize === 0) this.file.write(textEncoder.encode(entries.join("")));
    else this.writeBounded(entries);
  }

  /**
   * Upstream's accounting: add the entry's size; if the total then exceeds maxSize, truncate and
   * restart the count at 0 (the entry itself is not counted), then write the entry.
   */
  private writeBounded(entries: string[]): void {
    let batch = "";
    for (const entry of entries) {
      this.bytesWritten += Buffer.byteLength(entry);
      if (this.bytesWritten > this.maxSize) {
        if (batch) this.file.write(textEncoder.encode(batch));
        batch = "";
        this.file.reopen();
        this.bytesWritten = 0;
      }
      batch += entry;
    }
    if (batch) this.file.write(textEncoder.encode(batch));
  }

  /** The RPC reopen: fresh file, counter kept (like the CRI driver, quirk Q4). */
  reopen(): void {
    this.file.reopen();
  }

  close(): void {
    this.file.close();
  }
}
