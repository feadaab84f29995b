// Cap'n Proto stream framing: u32 (segmentCount - 1), u32 size (words) per segment, padding to 8
// bytes, then the segments. Bytes arrive in arbitrary pieces from the socket, so the decoder is
// incremental; it is bounded because a peer controls the header and may lie about sizes.

/** Upstream (capnp-rust ReaderOptions) traverses at most 8 Mi words = 64 MiB per message. */
export const MAX_FRAME_BYTES = 64 * 1024 * 1024;
/** capnp-rust and C++ both cap the segment table; 512 is what the C++ reader accepts. */
export const MAX_SEGMENTS = 512;

export class FramingError extends Error {
  override name = "FramingError";
}

/**
 * Splits a byte stream into complete frames. Each returned frame is its own ArrayBuffer (capnp-es
 * keeps references into it for as long as a reader lives, so it must not alias our buffer).
 */
export class FrameDecoder {
  private buf = new Uint8Array(0);
  private start = 0;
  private end = 0;

  constructor(
    private readonly maxFrameBytes = MAX_FRAME_BYTES,
    private readonly maxSegments = MAX_SEGMENTS,
  ) {}

  /** Bytes received but not yet part of a complete frame. */
  get pending(): number {
    return this.end - this.start;
  }

  /** Appends `chunk` and returns every frame now complete. Throws FramingError on a bad header. */
  push(chunk: Uint8Array): ArrayBuffer[] {
    this.append(chunk);
    const frames: ArrayBuffer[] = [];
    for (;;) {
      const size = this.nextFrameSize();
      if (size === 0) break;
      frames.push(this.buf.buffer.slice(this.buf.byteOffset + this.start, this.buf.byteOffset + this.start + size) as ArrayBuffer);
      this.start += size;
    }
    if (this.start === this.end) {
      this.start = this.end = 0;
      // Do not keep a large buffer alive after one big message went through.
      if (this.buf.byteLength > 1 << 20) this.buf = new Uint8Array(0);
    }
    return frames;
  }

  /** Size of the frame at `start` if it is complete, else 0. */
  private nextFrameSize(): number {
    const avail = this.end - this.start;
    if (avail < 4) return 0;
    const view = new DataView(this.buf.buffer, this.buf.byteOffset + this.start, avail);
    const segmentCount = view.getUint32(0, true) + 1;
    if (segmentCount > this.maxSegments) {
      throw new FramingError(`frame has ${segmentCount} segments, limit ${this.maxSegments}`);
    }
    const headerBytes = (4 + 4 * segmentCount + 7) & ~7;
    if (avail < headerBytes) return 0;
    let words = 0;
    for (let i = 0; i < segmentCount; i++) {
      const segmentWords = view.getUint32(4 + 4 * i, true);
      if (segmentWords === 0 && segmentCount === 1) throw new FramingError("frame has an empty root segment");
      words += segmentWords;
      if (headerBytes + words * 8 > this.maxFrameBytes) {
        throw new FramingError(`frame larger than ${this.maxFrameBytes} bytes`);
      }
    }
    const total = headerBytes + words * 8;
    return avail >= total ? total : 0;
  }

  private append(chunk: Uint8Array): void {
    const needed = this.end + chunk.byteLength;
    if (needed > this.buf.byteLength) {
      const live = this.end - this.start;
      if (live + chunk.byteLength <= this.buf.byteLength && this.start > 0) {
        this.buf.copyWithin(0, this.start, this.end);
      } else {
        const grown = new Uint8Array(Math.max(live + chunk.byteLength, this.buf.byteLength * 2, 8192));
        grown.set(this.buf.subarray(this.start, this.end));
        this.buf = grown;
      }
      this.end = live;
      this.start = 0;
    }
    this.buf.set(chunk, this.end);
    this.end += chunk.byteLength;
  }
}
