// What a socket did not take yet. Bun's socket.write() is unbuffered: it returns how many bytes
// the kernel accepted and forgets the rest, and the RpcConnection reuses the memory it passes in,
// so whatever is left over is copied here and written again on `drain`, in order.

import { MAX_FRAME_BYTES } from "./framing.ts";

/** A peer that reads nothing while its calls keep completing is cut off past this much backlog. */
export const MAX_BACKLOG_BYTES = 2 * MAX_FRAME_BYTES;

export interface Writable {
  /** Bytes accepted (possibly fewer than offered), or -1 if the socket is closed. */
  write(bytes: Uint8Array): number;
}

export class BacklogFullError extends Error {
  override name = "BacklogFullError";
}

export class WriteQueue {
  private chunks: Uint8Array[] = [];
  private head = 0;
  private queued = 0;

  constructor(private readonly maxBytes = MAX_BACKLOG_BYTES) {}

  /** Bytes waiting for the socket. */
  get pending(): number {
    return this.queued;
  }

  /**
   * Writes `bytes` now if nothing is queued, else (and for whatever the socket did not take)
   * queues a copy. Throws BacklogFullError when the backlog would exceed its bound.
   */
  write(socket: Writable, bytes: Uint8Array): void {
    let rest = bytes;
    if (this.queued === 0) {
      const written = socket.write(bytes);
      if (written < 0) return; // closing: the close handler drops the connection
      if (written === bytes.byteLength) return;
      rest = bytes.subarray(written);
    }
    if (this.queued + rest.byteLength > this.maxBytes) {
      throw new BacklogFullError(`peer is not reading: ${this.queued + rest.byteLength} bytes of replies queued`);
    }
    this.chunks.push(rest.slice());
    this.queued += rest.byteLength;
  }

  /** Writes queued bytes until the socket stops taking them (call on drain). */
  flush(socket: Writable): void {
    while (this.head < this.chunks.length) {
      const chunk = this.chunks[this.head]!;
      const written = socket.write(chunk);
      if (written < 0) return;
      this.queued -= Math.max(written, 0);
      if (written < chunk.byteLength) {
        this.chunks[this.head] = chunk.subarray(written);
        return;
      }
      this.head++;
    }
    this.clear();
  }

  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.queued = 0;
  }
}
