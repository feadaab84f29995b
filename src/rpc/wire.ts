// Cap'n Proto pointers read and written by hand, for the RPC envelope and the hot calls' params
// and results.
//
// capnp-es allocates an object per pointer it follows and per field it reads; routing one call
// through it costs tens of microseconds. The envelope the server routes on (rpc.capnp Message,
// Call, Finish, ...) is a handful of fixed offsets, so FrameReader resolves pointers over one
// DataView with no allocation, and OutBuffer lets the encoders write frames in place. The params
// and results of version, createContainer and execSync are read the same way
// (src/request-params.ts, src/call-results.ts); the other methods' go through capnp-es.
//
// Encoding reference (https://capnproto.org/encoding.html), little endian, 64-bit words:
//   struct pointer  lo: offset (signed 30 bits, words from the end of the pointer) << 2 | 0
//                   hi: data words (16 bits) | pointer count << 16
//   list pointer    lo: offset << 2 | 1            hi: element size (3 bits) | count << 3
//   far pointer     lo: landing pad offset (words from segment start) << 3 | double << 2 | 2
//                   hi: segment id
//   other pointer   lo: 3                           hi: capability index
// A struct reads its missing trailing fields as defaults: an older or newer peer may send a
// shorter or longer data/pointer section than the schema this code was written for.

export class WireError extends Error {
  override name = "WireError";
}

export const PTR_STRUCT = 0;
export const PTR_LIST = 1;
export const PTR_FAR = 2;
export const PTR_OTHER = 3;
const KIND_NAMES = ["struct", "list", "far", "capability"] as const;

/** List element size codes (the 3-bit field of a list pointer) that readers and writers use. */
export const ELEMENT_BYTE = 2; // Data, Text
export const ELEMENT_EIGHT_BYTES = 5;
export const ELEMENT_POINTER = 6;
/** A composite list: its elements are structs described by a tag word. */
export const ELEMENT_COMPOSITE = 7;
/** Bits per element for list element size codes 0..6 (void, bit, byte, 2, 4, 8 bytes, pointer). */
const LIST_ELEMENT_BITS = [0, 1, 8, 16, 32, 64, 64] as const;

const decoder = new TextDecoder();

/**
 * Where a list's elements are, as absolute byte offsets: element i starts at start + i * stepBytes
 * and reads as a struct of `dataBytes` data and `ptrCount` pointers (a list of pointers reads as
 * structs with one pointer, as the encoding's upgrade rules allow).
 */
export class ListRef {
  seg = 0;
  start = 0;
  count = 0;
  stepBytes = 0;
  dataBytes = 0;
  ptrCount = 0;
}

/** Where a struct's sections are, as absolute byte offsets into the reader's DataView. */
export class StructRef {
  seg = 0;
  data = 0;
  dataBytes = 0;
  ptrs = 0;
  ptrCount = 0;
}

/**
 * Reads pointers of one framed message (segment table + segments) in place. Every read is
 * bounds-checked against its segment and throws WireError on anything malformed, so hostile
 * input costs the peer its connection and never reads outside the frame.
 */
export class FrameReader {
  private dv: DataView = new DataView(new ArrayBuffer(8));
  private segCount = 0;
  private segStart = new Int32Array(4);
  private segEnd = new Int32Array(4);
  // The target of the last resolve(): where the object starts and the pointer word describing it.
  private targetSeg = 0;
  private targetAt = 0;
  private targetLo = 0;
  private targetHi = 0;

  /** Points the reader at the frame `dv[start, start + length)`, segment table included. */
  reset(dv: DataView, start: number, length: number): void {
    this.dv = dv;
    if (length < 8) throw new WireError(`frame of ${length} bytes is shorter than its header`);
    const count = dv.getUint32(start, true) + 1;
    const headerBytes = (4 + 4 * count + 7) & ~7;
    if (count > 1 << 20 || headerBytes > length) throw new WireError(`frame header announces ${count} segments`);
    if (count > this.segStart.length) {
      this.segStart = new Int32Array(count);
      this.segEnd = new Int32Array(count);
    }
    let at = start + headerBytes;
    const end = start + length;
    for (let i = 0; i < count; i++) {
      const bytes = dv.getUint32(start + 4 + 4 * i, true) * 8;
      if (bytes > end - at) throw new WireError(`segment ${i} runs past the end of the frame`);
      this.segStart[i] = at;
      at += bytes;
      this.segEnd[i] = at;
    }
    if (this.segEnd[0]! - this.segStart[0]! < 8) throw new WireError("first segment has no room for the root pointer");
    this.segCount = count;
  }

  get segmentCount(): number {
    return this.segCount;
  }

  /** Absolute offset of the root pointer. */
  get rootAt(): number {
    return this.segStart[0]!;
  }

  /** Byte offset of `at` within its segment `seg` (what capnp-es's Pointer wants). */
  offsetInSegment(seg: number, at: number): number {
    return at - this.segStart[seg]!;
  }

  /** Reads the struct pointer at `at` (in segment `seg`) into `out`; false if it is null. */
  readStruct(seg: number, at: number, out: StructRef): boolean {
    if (!this.resolve(seg, at)) return false;
    const kind = this.targetLo & 3;
    if (kind !== PTR_STRUCT) throw new WireError(`expected a struct pointer, found a ${KIND_NAMES[kind]} pointer`);
    const dataWords = this.targetHi & 0xffff;
    const ptrCount = this.targetHi >>> 16;
    this.checkRange(this.targetSeg, this.targetAt, (dataWords + ptrCount) * 8, "struct");
    out.seg = this.targetSeg;
    out.data = this.targetAt;
    out.dataBytes = dataWords * 8;
    out.ptrs = this.targetAt + dataWords * 8;
    out.ptrCount = ptrCount;
    return true;
  }

  /**
   * The struct in pointer 0 of the struct whose pointer is at `at` (the `request` of a params
   * struct, the `response` of a results struct) into `out`; false when either is null (or `at`
   * is -1). `outer` is scratch for the wrapping struct.
   */
  readWrapped(seg: number, at: number, outer: StructRef, out: StructRef): boolean {
    if (seg < 0 || !this.readStruct(seg, at, outer)) return false;
    const innerAt = this.pointer(outer, 0);
    return innerAt >= 0 && this.readStruct(outer.seg, innerAt, out);
  }

  /** Number of elements of the list pointer at `at`; 0 if it is null. */
  listLength(seg: number, at: number): number {
    return Math.max(0, this.resolveList(seg, at, ""));
  }

  /**
   * Resolves the list pointer at `at` and checks its bounds; returns its element count, or -1
   * when it is null (or `at` < 0). target* then hold where the list is (a composite list's tag
   * word). `what` names the field in error messages.
   */
  private resolveList(seg: number, at: number, what: string): number {
    if (at < 0 || !this.resolve(seg, at)) return -1;
    const kind = this.targetLo & 3;
    if (kind !== PTR_LIST) throw new WireError(`${what ? `${what}: ` : ""}expected a list pointer, found a ${KIND_NAMES[kind]} pointer`);
    const size = this.targetHi & 7;
    const count = this.targetHi >>> 3;
    if (size !== ELEMENT_COMPOSITE) {
      this.checkRange(this.targetSeg, this.targetAt, Math.ceil((count * LIST_ELEMENT_BITS[size]!) / 64) * 8, what || "list");
      return count;
    }
    // Composite: `count` is the word count after the tag; the tag's offset field is the element count.
    this.checkRange(this.targetSeg, this.targetAt, 8 + count * 8, "composite list");
    const tagLo = this.dv.getUint32(this.targetAt, true);
    const tagHi = this.dv.getUint32(this.targetAt + 4, true);
    if ((tagLo & 3) !== PTR_STRUCT) throw new WireError("composite list tag is not a struct tag");
    const elements = tagLo >>> 2;
    const elementWords = (tagHi & 0xffff) + (tagHi >>> 16);
    if (elements * elementWords > count) throw new WireError("composite list elements overrun the list");
    return elements;
  }

  /** Data-section reads: fields past a short data section read as 0 (the default). */
  u16(s: StructRef, byteOffset: number): number {
    return byteOffset + 2 <= s.dataBytes ? this.dv.getUint16(s.data + byteOffset, true) : 0;
  }

  u32(s: StructRef, byteOffset: number): number {
    return byteOffset + 4 <= s.dataBytes ? this.dv.getUint32(s.data + byteOffset, true) : 0;
  }

  i32(s: StructRef, byteOffset: number): number {
    return byteOffset + 4 <= s.dataBytes ? this.dv.getInt32(s.data + byteOffset, true) : 0;
  }

  /** A copy of the Data (byte list) the pointer at `at` targets; empty when it is null (or `at` < 0). */
  data(seg: number, at: number): Uint8Array {
    const length = this.byteList(seg, at, "data");
    if (length <= 0) return new Uint8Array(0);
    const start = this.dv.byteOffset + this.targetAt;
    return new Uint8Array(this.dv.buffer.slice(start, start + length));
  }

  /** The Text the pointer at `at` targets, without its NUL terminator; "" when null (or `at` < 0). */
  text(seg: number, at: number): string {
    const length = this.byteList(seg, at, "text");
    if (length <= 0) return "";
    const start = this.dv.byteOffset + this.targetAt;
    const end = this.dv.getUint8(this.targetAt + length - 1) === 0 ? length - 1 : length;
    return decoder.decode(new Uint8Array(this.dv.buffer, start, end));
  }

  /** Reads the list pointer at `at` (a list of pointers or of structs) into `out`; false if null. */
  readList(seg: number, at: number, out: ListRef): boolean {
    const count = this.resolveList(seg, at, "");
    if (count < 0) return false;
    const size = this.targetHi & 7;
    out.seg = this.targetSeg;
    out.count = count;
    if (size === ELEMENT_POINTER) {
      out.start = this.targetAt;
      out.stepBytes = 8;
      out.dataBytes = 0;
      out.ptrCount = 1;
      return true;
    }
    if (size !== ELEMENT_COMPOSITE) throw new WireError(`expected a list of pointers or structs, found element size ${size}`);
    const tagHi = this.dv.getUint32(this.targetAt + 4, true);
    out.start = this.targetAt + 8;
    out.dataBytes = (tagHi & 0xffff) * 8;
    out.ptrCount = tagHi >>> 16;
    out.stepBytes = out.dataBytes + out.ptrCount * 8;
    return true;
  }

  /** The List(UInt64) the pointer at `at` targets; empty when it is null (or `at` < 0). */
  u64List(seg: number, at: number): bigint[] {
    const count = this.resolveList(seg, at, "");
    if (count < 0) return [];
    const size = this.targetHi & 7;
    if (size !== ELEMENT_EIGHT_BYTES) throw new WireError(`expected a list of 64-bit values, found element size ${size}`);
    const out: bigint[] = [];
    for (let i = 0; i < count; i++) out.push(this.dv.getBigUint64(this.targetAt + i * 8, true));
    return out;
  }

  /** Element `i` of `list` as a struct (bounds: i < list.count, checked by the caller's loop). */
  listStruct(list: ListRef, i: number, out: StructRef): StructRef {
    out.seg = list.seg;
    out.data = list.start + i * list.stepBytes;
    out.dataBytes = list.dataBytes;
    out.ptrs = out.data + list.dataBytes;
    out.ptrCount = list.ptrCount;
    return out;
  }

  /** Resolves a byte list pointer; returns its length (target* hold where), or -1 when null. */
  private byteList(seg: number, at: number, what: string): number {
    const length = this.resolveList(seg, at, what);
    if (length >= 0 && (this.targetHi & 7) !== ELEMENT_BYTE) throw new WireError(`${what}: expected a byte list, found element size ${this.targetHi & 7}`);
    return length;
  }

  /** Bool field at bit `bitOffset` of the data section (false past its end). */
  bit(s: StructRef, bitOffset: number): boolean {
    const byte = bitOffset >>> 3;
    return byte < s.dataBytes && (this.dv.getUint8(s.data + byte) & (1 << (bitOffset & 7))) !== 0;
  }

  /** Absolute offset of pointer `index` of `s`, or -1 when the struct has no such pointer (null). */
  pointer(s: StructRef, index: number): number {
    return index < s.ptrCount ? s.ptrs + index * 8 : -1;
  }

  /**
   * Follows far pointers from the pointer word at `at`; leaves the object's position and its
   * describing pointer (with the offset already applied) in target*. False for a null pointer.
   */
  private resolve(seg: number, at: number): boolean {
    const dv = this.dv;
    let lo = dv.getUint32(at, true);
    let hi = dv.getUint32(at + 4, true);
    if (lo === 0 && hi === 0) return false;
    if ((lo & 3) !== PTR_FAR) {
      this.setTarget(seg, at + 8 + (lo >> 2) * 8, lo, hi);
      return true;
    }
    const padSeg = this.checkSegment(hi);
    const padAt = this.segStart[padSeg]! + (lo >>> 3) * 8;
    if ((lo & 4) === 0) {
      // Single far: the landing pad is an ordinary pointer whose offset counts from the pad.
      this.checkRange(padSeg, padAt, 8, "far pointer landing pad");
      lo = dv.getUint32(padAt, true);
      hi = dv.getUint32(padAt + 4, true);
      if ((lo & 3) === PTR_FAR) throw new WireError("far pointer lands on another far pointer");
      this.setTarget(padSeg, padAt + 8 + (lo >> 2) * 8, lo, hi);
      return true;
    }
    // Double far: a far pointer to the object's start, then a tag describing the object.
    this.checkRange(padSeg, padAt, 16, "double-far landing pad");
    const farLo = dv.getUint32(padAt, true);
    const farHi = dv.getUint32(padAt + 4, true);
    if ((farLo & 7) !== PTR_FAR) throw new WireError("double-far landing pad does not start with a single far pointer");
    const targetSeg = this.checkSegment(farHi);
    lo = dv.getUint32(padAt + 8, true);
    hi = dv.getUint32(padAt + 12, true);
    if ((lo & 3) === PTR_FAR) throw new WireError("double-far tag is a far pointer");
    this.setTarget(targetSeg, this.segStart[targetSeg]! + (farLo >>> 3) * 8, lo, hi);
    return true;
  }

  private setTarget(seg: number, at: number, lo: number, hi: number): void {
    this.targetSeg = seg;
    this.targetAt = at;
    this.targetLo = lo;
    this.targetHi = hi;
  }

  private checkSegment(id: number): number {
    if (id >= this.segCount) throw new WireError(`far pointer to segment ${id}, message has ${this.segCount}`);
    return id;
  }

  private checkRange(seg: number, at: number, bytes: number, what: string): void {
    if (at < this.segStart[seg]! || at + bytes > this.segEnd[seg]!) {
      throw new WireError(`${what} out of bounds of segment ${seg}`);
    }
  }
}

/**
 * A growable output buffer the encoders write frames into; reused between flushes, so whoever
 * consumes `view()` must copy what it keeps.
 */
export class OutBuffer {
  bytes: Uint8Array;
  dv: DataView;
  length = 0;

  constructor(private readonly initialBytes = 4096) {
    this.bytes = new Uint8Array(initialBytes);
    this.dv = new DataView(this.bytes.buffer);
  }

  /** Appends `n` zeroed bytes and returns their offset. */
  reserve(n: number): number {
    const at = this.length;
    const needed = at + n;
    if (needed > this.bytes.byteLength) this.grow(needed);
    this.bytes.fill(0, at, needed);
    this.length = needed;
    return at;
  }

  /** Shrinks back to `n` bytes (drops what an encoder reserved but did not use). */
  truncate(n: number): void {
    this.length = n;
  }

  view(): Uint8Array {
    return this.bytes.subarray(0, this.length);
  }

  /** Forgets the content; a buffer that grew for one large message is not kept alive. */
  clear(): void {
    this.length = 0;
    if (this.bytes.byteLength > 256 * 1024) {
      this.bytes = new Uint8Array(this.initialBytes);
      this.dv = new DataView(this.bytes.buffer);
    }
  }

  private grow(needed: number): void {
    const grown = new Uint8Array(Math.max(needed, this.bytes.byteLength * 2));
    grown.set(this.bytes.subarray(0, this.length));
    this.bytes = grown;
    this.dv = new DataView(grown.buffer);
  }
}

/** Writes a near struct pointer at `at` to a struct starting at `target` (both absolute, same segment). */
export function setStructPointer(dv: DataView, at: number, target: number, dataWords: number, ptrCount: number): void {
  dv.setUint32(at, (((target - at - 8) / 8) << 2) | PTR_STRUCT, true);
  dv.setUint32(at + 4, dataWords | (ptrCount << 16), true);
}

/** Writes a near list pointer at `at` to a list starting at `target`. */
export function setListPointer(dv: DataView, at: number, target: number, elementSize: number, count: number): void {
  dv.setUint32(at, (((target - at - 8) / 8) << 2) | PTR_LIST, true);
  dv.setUint32(at + 4, elementSize | (count << 3), true);
}

/** Writes a far pointer at `at` to word `wordOffset` of segment `segment`. */
export function setFarPointer(dv: DataView, at: number, doubleFar: boolean, wordOffset: number, segment: number): void {
  dv.setUint32(at, ((wordOffset << 3) | (doubleFar ? 4 : 0) | PTR_FAR) >>> 0, true);
  dv.setUint32(at + 4, segment, true);
}

/** Writes a capability pointer (index into the message's cap table). */
export function setCapabilityPointer(dv: DataView, at: number, capIndex: number): void {
  dv.setUint32(at, PTR_OTHER, true);
  dv.setUint32(at + 4, capIndex, true);
}
