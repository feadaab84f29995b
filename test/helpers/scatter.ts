// A generic re-layout of Cap'n Proto messages over many segments, for tests of hand-written
// readers: the same object tree written with near, far and double-far pointers chosen at random.
// Slow and simple on purpose (bytes as numbers); only for tests.
import type { Rng } from "./rng.ts";

export type Obj =
  | { k: "struct"; data: Uint8Array; ptrs: (Obj | null)[] }
  | { k: "list"; size: number; count: number; body: Uint8Array }
  | { k: "ptrs"; items: (Obj | null)[] }
  | { k: "composite"; dataWords: number; ptrCount: number; elems: { data: Uint8Array; ptrs: (Obj | null)[] }[] }
  | { k: "cap"; index: number };

const ELEMENT_BITS = [0, 1, 8, 16, 32, 64];

/** Decodes the object tree of a single-segment message whose pointers are all near. */
export function decodeTree(seg: Uint8Array, at: number): Obj | null {
  const dv = new DataView(seg.buffer, seg.byteOffset, seg.byteLength);
  const lo = dv.getUint32(at, true);
  const hi = dv.getUint32(at + 4, true);
  if (lo === 0 && hi === 0) return null;
  const kind = lo & 3;
  if (kind === 3) return { k: "cap", index: hi };
  if (kind === 2) throw new Error("source messages must be single-segment");
  const target = at + 8 + (lo >> 2) * 8;
  const structAt = (p: number, dataWords: number, ptrCount: number) => ({
    data: seg.slice(p, p + dataWords * 8),
    ptrs: Array.from({ length: ptrCount }, (_, i) => decodeTree(seg, p + dataWords * 8 + i * 8)),
  });
  if (kind === 0) return { k: "struct", ...structAt(target, hi & 0xffff, hi >>> 16) };
  const size = hi & 7;
  const count = hi >>> 3;
  if (size === 6) return { k: "ptrs", items: Array.from({ length: count }, (_, i) => decodeTree(seg, target + i * 8)) };
  if (size === 7) {
    const tagLo = dv.getUint32(target, true);
    const tagHi = dv.getUint32(target + 4, true);
    const dataWords = tagHi & 0xffff;
    const ptrCount = tagHi >>> 16;
    const elems = Array.from({ length: tagLo >>> 2 }, (_, i) => structAt(target + 8 + i * (dataWords + ptrCount) * 8, dataWords, ptrCount));
    return { k: "composite", dataWords, ptrCount, elems };
  }
  return { k: "list", size, count, body: seg.slice(target, target + Math.ceil((count * ELEMENT_BITS[size]!) / 64) * 8) };
}

/** Writes `root` into `segmentCount` segments, choosing near, far or double-far pointers at random. */
export function scatter(root: Obj | null, segmentCount: number, r: Rng): Uint8Array {
  const segs: number[][] = Array.from({ length: segmentCount }, () => []); // bytes as numbers, simple and slow
  const alloc = (s: number, words: number) => {
    const at = segs[s]!.length / 8;
    for (let i = 0; i < words * 8; i++) segs[s]!.push(0);
    return at;
  };
  const put32 = (s: number, word: number, byte: number, v: number) => {
    for (let i = 0; i < 4; i++) segs[s]![word * 8 + byte + i] = (v >>> (8 * i)) & 0xff;
  };
  const putBytes = (s: number, word: number, bytes: Uint8Array) => bytes.forEach((b, i) => (segs[s]![word * 8 + i] = b));
  alloc(0, 1); // the root pointer

  interface Placed { seg: number; word: number; kind: number; hi: number }
  const placeStruct = (s: number, word: number, data: Uint8Array, ptrs: (Obj | null)[]) => {
    putBytes(s, word, data);
    ptrs.forEach((p, i) => writePointer(s, word + data.length / 8 + i, p));
  };
  const place = (o: Obj): Placed => {
    const s = r.int(segmentCount);
    switch (o.k) {
      case "struct": {
        const word = alloc(s, o.data.length / 8 + o.ptrs.length);
        placeStruct(s, word, o.data, o.ptrs);
        return { seg: s, word, kind: 0, hi: (o.data.length / 8) | (o.ptrs.length << 16) };
      }
      case "list": {
        const word = alloc(s, o.body.length / 8);
        putBytes(s, word, o.body);
        return { seg: s, word, kind: 1, hi: o.size | (o.count << 3) };
      }
      case "ptrs": {
        const word = alloc(s, o.items.length);
        o.items.forEach((p, i) => writePointer(s, word + i, p));
        return { seg: s, word, kind: 1, hi: 6 | (o.items.length << 3) };
      }
      case "composite": {
        const elementWords = o.dataWords + o.ptrCount;
        const word = alloc(s, 1 + o.elems.length * elementWords);
        put32(s, word, 0, o.elems.length << 2);
        put32(s, word, 4, o.dataWords | (o.ptrCount << 16));
        o.elems.forEach((e, i) => placeStruct(s, word + 1 + i * elementWords, e.data, e.ptrs));
        return { seg: s, word, kind: 1, hi: 7 | ((o.elems.length * elementWords) << 3) };
      }
      case "cap":
        throw new Error("unreachable");
    }
  };
  const writePointer = (s: number, word: number, o: Obj | null) => {
    if (o === null) return;
    if (o.k === "cap") {
      put32(s, word, 0, 3);
      put32(s, word, 4, o.index);
      return;
    }
    const t = place(o);
    const mode = t.seg === s && r.bool() ? "near" : r.pick(["far", "double"] as const);
    if (mode === "near") {
      put32(s, word, 0, (((t.word - word - 1) << 2) | t.kind) >>> 0);
      put32(s, word, 4, t.hi);
    } else if (mode === "far") {
      const pad = alloc(t.seg, 1);
      put32(t.seg, pad, 0, (((t.word - pad - 1) << 2) | t.kind) >>> 0);
      put32(t.seg, pad, 4, t.hi);
      put32(s, word, 0, ((pad << 3) | 2) >>> 0);
      put32(s, word, 4, t.seg);
    } else {
      const padSeg = r.int(segmentCount);
      const pad = alloc(padSeg, 2);
      put32(padSeg, pad, 0, ((t.word << 3) | 2) >>> 0);
      put32(padSeg, pad, 4, t.seg);
      put32(padSeg, pad + 1, 0, t.kind);
      put32(padSeg, pad + 1, 4, t.hi);
      put32(s, word, 0, ((pad << 3) | 6) >>> 0);
      put32(s, word, 4, padSeg);
    }
  };
  writePointer(0, 0, root);
  return frameOf(segs.map((s) => Uint8Array.from(s)));
}

export function frameOf(segments: Uint8Array[]): Uint8Array {
  const header = (4 + 4 * segments.length + 7) & ~7;
  const out = new Uint8Array(header + segments.reduce((n, s) => n + s.length, 0));
  const dv = new DataView(out.buffer);
  dv.setUint32(0, segments.length - 1, true);
  let at = header;
  segments.forEach((s, i) => {
    dv.setUint32(4 + 4 * i, s.length / 8, true);
    out.set(s, at);
    at += s.length;
  });
  return out;
}

/** Segment 0 of a single-segment frame. */
export const segmentOf = (frame: Uint8Array) => frame.subarray(8);
export const scatterFrame = (frame: Uint8Array, segments: number, r: Rng) => scatter(decodeTree(segmentOf(frame), 0), segments, r);

/** Shrinks or grows every struct in the tree (older/newer peers): data words and pointers. */
export function resizeStructs(o: Obj | null, r: Rng): Obj | null {
  if (o === null || o.k === "cap" || o.k === "list") return o;
  if (o.k === "ptrs") return { ...o, items: o.items.map((p) => resizeStructs(p, r)) };
  const resizeData = (d: Uint8Array) => {
    const words = Math.max(0, d.length / 8 + r.int(3) - 1);
    const out = new Uint8Array(words * 8);
    out.set(d.subarray(0, Math.min(d.length, out.length)));
    if (out.length > d.length) out.fill(0xee, d.length); // unknown newer fields: must be ignored
    return out;
  };
  if (o.k === "struct") {
    const ptrs = o.ptrs.map((p) => resizeStructs(p, r));
    return { k: "struct", data: resizeData(o.data), ptrs: r.bool() ? ptrs : [...ptrs, null] };
  }
  return o; // composite lists keep their layout (the envelope only counts them)
}
