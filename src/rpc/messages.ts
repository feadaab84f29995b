// Cheaper ways into capnp-es messages for the per-call params and results.
//
// `new Message()` zero-fills a 4 KiB ArrayBuffer (measured ~1.1 µs plus GC pressure: it was the
// largest single cost of a version call), and `new Message(frame, false)` copies the frame twice
// (once whole, once per segment). Results of conmon calls are a few hundred bytes and almost all
// frames have one segment, so both get a right-sized single copy here. This leans on capnp-es
// 0.0.16 internals (`_capnp.segments`, Segment.byteLength); capnp-es is pinned and
// test/unit/rpc-messages.test.ts checks the results stay byte-identical to the plain API's.

import { Message, Pointer, utils, type Struct } from "capnp-es";

interface SegmentInternals {
  buffer: ArrayBuffer;
  byteLength: number;
}

function segmentsOf(message: Message): SegmentInternals[] {
  return (message as any)._capnp.segments;
}

/**
 * An empty message to build into, like `new Message()` but with a first segment of
 * `initialBytes` (it grows like any capnp-es single-segment message when that is not enough).
 */
export function newMessage(initialBytes = 512): Message {
  // The "read one segment" constructor takes the buffer as fully used; marking only the first
  // word used leaves what `new Message()` has: a null root pointer and free space after it.
  const message = new Message(new ArrayBuffer(initialBytes), false, true);
  segmentsOf(message)[0]!.byteLength = 8;
  return message;
}

/**
 * Free space behind a received single segment. capnp-es allocates in the message it reads from
 * when a handler reads a null struct field (it materializes the default) or an older peer's
 * shorter struct (resize); without room that grows the segment by 4 KiB and copies it.
 */
const READ_SLACK_BYTES = 256;

/**
 * A message reading the frame `dv[start, start + length)` (segment table included, validated by
 * the FrameDecoder) on its own copy of the segments: handlers may keep params after the receive
 * callback, and the frame bytes are not theirs to keep.
 */
export function readFrame(dv: DataView, start: number, length: number): Message {
  if (dv.getUint32(start, true) !== 0) {
    return new Message(new Uint8Array(dv.buffer, dv.byteOffset + start, length), false);
  }
  const bytes = dv.getUint32(start + 4, true) * 8;
  // An ArrayBuffer allocated as such: asking a Uint8Array for its .buffer costs more than the copy.
  const copy = new ArrayBuffer(bytes + READ_SLACK_BYTES);
  new Uint8Array(copy).set(new Uint8Array(dv.buffer, dv.byteOffset + start + 8, bytes));
  const message = new Message(copy, false, true);
  // As in newMessage(): only the received bytes are in use, the slack is free space.
  segmentsOf(message)[0]!.byteLength = bytes;
  return message;
}

/**
 * Sizes the first segment of each method's next results message after its last results, so a
 * method that answers with a kilobyte of output does not grow a small segment by 4 KiB (and copy
 * it) on every call. Bounded: one huge answer does not make every later message allocate big.
 */
export class ResultsSizes {
  private readonly last = new WeakMap<object, number>();

  constructor(
    private readonly minBytes = 256,
    private readonly maxBytes = 1024 * 1024,
  ) {}

  /** First-segment size for the next results of `method`. */
  initialBytes(method: object): number {
    return this.last.get(method) ?? this.minBytes;
  }

  /** Records that `method`'s results used `bytes`. */
  record(method: object, bytes: number): void {
    // An eighth more than last time absorbs small variations; whole 256-byte steps keep the
    // WeakMap write rare when sizes are stable.
    const size = Math.min(Math.max(Math.ceil((bytes * 1.125) / 256) * 256, this.minBytes), this.maxBytes);
    if (this.last.get(method) !== size) this.last.set(method, size);
  }
}

/** Bytes in use across the segments of `message`. */
export function messageBytes(message: Message): number {
  let n = 0;
  for (const s of segmentsOf(message)) n += s.byteLength;
  return n;
}

/** The used bytes of each segment of `message`; segment 0 starts with the root pointer. */
export function messageSegments(message: Message): Uint8Array[] {
  const segments = segmentsOf(message);
  if (segments.length === 0) message.getSegment(0);
  return segments.map((s) => new Uint8Array(s.buffer, 0, s.byteLength));
}

type StructClass<T extends Struct> = { new (...args: any[]): T; readonly _capnp: { size: { dataByteLength: number; pointerLength: number } } };

/**
 * The struct at byte `offset` of segment `seg` in `message` (where a Payload's content pointer
 * is), as `Class`; segment -1 means a null pointer. Null reads as all defaults, and an older
 * peer's shorter struct is resized so its missing fields read as defaults too (capnp-es's getAs
 * does neither).
 */
export function readStructAt<T extends Struct>(message: Message, seg: number, offset: number, Class: StructClass<T>): T {
  if (seg < 0) return newMessage().initRoot(Class as any) as T;
  const pointer = new Pointer(message.getSegment(seg), offset);
  if (utils.isNull(pointer)) return newMessage().initRoot(Class as any) as T;
  const size = Class._capnp.size;
  const actual = utils.getTargetStructSize(pointer);
  if (actual.dataByteLength < size.dataByteLength || actual.pointerLength < size.pointerLength) {
    utils.resize(size as any, pointer);
  }
  return utils.getAs(Class as any, pointer) as T;
}

/**
 * capnp-es's generated rpc.capnp classes, loaded on first use: the hot messages are read and
 * written by hand (envelope.ts), only rare ones need these, and loading them costs about 0.8 MB
 * of a server's idle RssAnon (docs/performance.md).
 */
export function rpcSchema(): typeof import("capnp-es/capnp/rpc") {
  return require("capnp-es/capnp/rpc") as typeof import("capnp-es/capnp/rpc");
}
