// The rpc.capnp envelope, decoded and encoded by hand (see wire.ts for why).
//
// Layouts from `capnp compile -ocapnp /usr/include/capnp/rpc.capnp` (offsets in bytes):
//   Message        1 data word, 1 ptr   union tag @0 (u16); every variant is ptr 0
//   Bootstrap      1 word, 1 ptr        questionId @0
//   Call           3 words, 3 ptrs      questionId @0, methodId @4 (u16), sendResultsTo tag @6,
//                                       interfaceId @8 (u64); target ptr 0, params ptr 1
//   MessageTarget  1 word, 1 ptr        importedCap @0, union tag @4; promisedAnswer ptr 0
//   PromisedAnswer 1 word, 1 ptr        questionId @0; transform ptr 0 (List(Op))
//   Payload        0 words, 2 ptrs      content ptr 0 (AnyPointer), capTable ptr 1
//   Return         2 words, 1 ptr       answerId @0, releaseParamCaps bit 32 (default true),
//                                       union tag @6 (results 0, exception 1); ptr 0
//   Finish         1 word               questionId @0
//   Release        1 word               id @0, referenceCount @4
//   Exception      1 word, 2 ptrs       type @4 (u16); reason ptr 0, trace ptr 1
//   CapDescriptor  1 word, 1 ptr        union tag @0 (senderHosted 1), attachedFd @2 (u8,
//                                       default 255), senderHosted @4
// Only the message kinds on the hot path are decoded here; the connection hands anything else
// (Abort, Return, Unimplemented, unknown kinds) to capnp-es.

import { ELEMENT_BYTE, ELEMENT_COMPOSITE, FrameReader, OutBuffer, StructRef, WireError, setCapabilityPointer, setFarPointer, setListPointer, setStructPointer, PTR_FAR, PTR_OTHER, PTR_STRUCT } from "./wire.ts";

export const MSG_UNIMPLEMENTED = 0;
export const MSG_ABORT = 1;
export const MSG_CALL = 2;
export const MSG_RETURN = 3;
export const MSG_FINISH = 4;
export const MSG_RELEASE = 6;
export const MSG_BOOTSTRAP = 8;

export const TARGET_IMPORTED_CAP = 0;
export const TARGET_PROMISED_ANSWER = 1;

/** The fields of one incoming message the connection routes on; one instance reused per connection. */
export class Envelope {
  /** Message union tag; -1 until the root struct has been read. */
  which = -1;
  /** Bootstrap, Call and Finish: the question id. */
  questionId = 0;
  // Call
  methodId = 0;
  interfaceIdLo = 0;
  interfaceIdHi = 0;
  targetWhich = 0;
  importedCap = 0;
  promisedQuestion = 0;
  transformLength = 0;
  /** Segment and in-segment byte offset of Payload.content (Call: the params; Return: the
   * results), or -1 when the Payload or its content is null. */
  paramsSeg = -1;
  paramsOffset = -1;
  /** The same pointer as an absolute offset into the frame (for FrameReader), or -1. */
  paramsAt = -1;
  /** Return: the union tag (RETURN_RESULTS, RETURN_EXCEPTION, ...); its answer id is `questionId`. */
  returnWhich = 0;
  // Release
  releaseId = 0;
  referenceCount = 0;

  get interfaceId(): bigint {
    return (BigInt(this.interfaceIdHi) << 32n) | BigInt(this.interfaceIdLo);
  }
}

// Scratch struct refs: decoding is synchronous and never re-entered.
const msgRef = new StructRef();
const bodyRef = new StructRef();
const targetRef = new StructRef();
const innerRef = new StructRef();

/**
 * Decodes the message in `reader` into `env`. Kinds other than the hot ones only get `which`
 * set. Throws WireError (or a RangeError from a read the reader's checks let through, which
 * cannot happen for a validated frame) on malformed input.
 */
export function parseEnvelope(reader: FrameReader, env: Envelope): void {
  env.which = -1;
  if (!reader.readStruct(0, reader.rootAt, msgRef)) throw new WireError("message has a null root");
  const which = reader.u16(msgRef, 0);
  env.which = which;
  if (which !== MSG_CALL && which !== MSG_FINISH && which !== MSG_BOOTSTRAP && which !== MSG_RELEASE && which !== MSG_RETURN) return;
  const bodyAt = reader.pointer(msgRef, 0);
  // A null body reads as the struct's defaults (all zero), as with any struct field.
  const hasBody = bodyAt >= 0 && reader.readStruct(msgRef.seg, bodyAt, bodyRef);
  if (!hasBody) bodyRef.dataBytes = bodyRef.ptrCount = 0;
  switch (which) {
    case MSG_BOOTSTRAP:
    case MSG_FINISH:
      env.questionId = reader.u32(bodyRef, 0);
      return;
    case MSG_RELEASE:
      env.releaseId = reader.u32(bodyRef, 0);
      env.referenceCount = reader.u32(bodyRef, 4);
      return;
    case MSG_RETURN:
      parseReturn(reader, env);
      return;
    default:
      parseCall(reader, env);
  }
}

/** Return (what a client receives): answer id, union tag and, for results, where the content is. */
function parseReturn(reader: FrameReader, env: Envelope): void {
  env.questionId = reader.u32(bodyRef, 0);
  env.returnWhich = reader.u16(bodyRef, 6);
  env.paramsSeg = env.paramsOffset = env.paramsAt = -1;
  if (env.returnWhich !== RETURN_RESULTS) return;
  readPayloadContent(reader, env, reader.pointer(bodyRef, 0));
}

/** Sets env.paramsSeg/paramsOffset from the Payload that the pointer at `payloadAt` targets. */
function readPayloadContent(reader: FrameReader, env: Envelope, payloadAt: number): void {
  if (payloadAt >= 0 && reader.readStruct(bodyRef.seg, payloadAt, innerRef)) {
    const contentAt = reader.pointer(innerRef, 0);
    if (contentAt >= 0) {
      env.paramsSeg = innerRef.seg;
      env.paramsOffset = reader.offsetInSegment(innerRef.seg, contentAt);
      env.paramsAt = contentAt;
    }
  }
}

function parseCall(reader: FrameReader, env: Envelope): void {
  env.questionId = reader.u32(bodyRef, 0);
  env.methodId = reader.u16(bodyRef, 4);
  env.interfaceIdLo = reader.u32(bodyRef, 8);
  env.interfaceIdHi = reader.u32(bodyRef, 12);

  env.targetWhich = TARGET_IMPORTED_CAP;
  env.importedCap = 0;
  env.promisedQuestion = 0;
  env.transformLength = 0;
  const targetAt = reader.pointer(bodyRef, 0);
  if (targetAt >= 0 && reader.readStruct(bodyRef.seg, targetAt, targetRef)) {
    env.targetWhich = reader.u16(targetRef, 4);
    env.importedCap = reader.u32(targetRef, 0);
    const promisedAt = env.targetWhich === TARGET_PROMISED_ANSWER ? reader.pointer(targetRef, 0) : -1;
    if (promisedAt >= 0 && reader.readStruct(targetRef.seg, promisedAt, innerRef)) {
      env.promisedQuestion = reader.u32(innerRef, 0);
      const transformAt = reader.pointer(innerRef, 0);
      env.transformLength = transformAt >= 0 ? reader.listLength(innerRef.seg, transformAt) : 0;
    }
  }

  env.paramsSeg = env.paramsOffset = env.paramsAt = -1;
  readPayloadContent(reader, env, reader.pointer(bodyRef, 1));
}

// ---- encoding ------------------------------------------------------------------------------

const EXCEPTION_TYPES = { failed: 0, overloaded: 1, disconnected: 2, unimplemented: 3 } as const;
export type ExceptionTypeName = keyof typeof EXCEPTION_TYPES;

export const RETURN_RESULTS = 0;
export const RETURN_EXCEPTION = 1;
const textEncoder = new TextEncoder();

/**
 * Writes a single-segment message's head at `seg`: the root pointer (word 0) to a Message
 * {which} (words 1-2), whose pointer points at word 3, where the `which` struct of `dataWords`
 * and `ptrCount` starts. Returns that struct's offset.
 */
function writeMessageHead(dv: DataView, seg: number, which: number, dataWords: number, ptrCount: number): number {
  setStructPointer(dv, seg, seg + 8, 1, 1);
  dv.setUint16(seg + 8, which, true);
  setStructPointer(dv, seg + 16, seg + 24, dataWords, ptrCount);
  return seg + 24;
}

/**
 * Writes the frame header and the Message → Return → (Payload | Exception) chain shared by every
 * Return we send, as one segment starting at `frame + 8`. Returns the offset of the Return's
 * pointer 0 slot's target (the word right after the Return struct). Layout (words):
 *   0 root → 1 Message{which=return} 2 → 3,4 Return{answerId, releaseParamCaps=false, tag} 5 → 6...
 */
function writeReturnHead(out: OutBuffer, frame: number, answerId: number, tag: number): number {
  const dv = out.dv;
  const ret = writeMessageHead(dv, frame + 8, MSG_RETURN, 2, 1);
  dv.setUint32(ret, answerId, true);
  // releaseParamCaps defaults to true, so false is stored as a set bit (fields are XORed with defaults).
  dv.setUint8(ret + 4, 1);
  dv.setUint16(ret + 6, tag, true);
  return ret + 24;
}

/** Fills in the frame header of a single-segment frame that ends at out.length. */
function finishSingleSegment(out: OutBuffer, frame: number): void {
  out.dv.setUint32(frame, 0, true);
  out.dv.setUint32(frame + 4, (out.length - frame - 8) / 8, true);
}

/** Return for a Bootstrap: the capability at export `exportId`, as C++ and capnp-rust send it. */
export function writeBootstrapReturn(out: OutBuffer, answerId: number, exportId: number): void {
  const frame = out.reserve(8 + 11 * 8);
  const payload = writeReturnHead(out, frame, answerId, RETURN_RESULTS);
  const dv = out.dv;
  setStructPointer(dv, payload - 8, payload, 0, 2);
  setCapabilityPointer(dv, payload, 0);
  // capTable: a composite list of one CapDescriptor (1 data word, 1 pointer) after its tag word.
  const tag = payload + 16;
  setListPointer(dv, payload + 8, tag, ELEMENT_COMPOSITE, 2);
  dv.setUint32(tag, (1 << 2) | PTR_STRUCT, true);
  dv.setUint32(tag + 4, 1 | (1 << 16), true);
  dv.setUint16(tag + 8, 1, true); // senderHosted; attachedFd stays 0 = default 255 (no fd)
  dv.setUint32(tag + 12, exportId, true);
  finishSingleSegment(out, frame);
}

/** Return carrying an exception. */
export function writeExceptionReturn(out: OutBuffer, answerId: number, type: ExceptionTypeName, reason: string): void {
  // Worst case UTF-8 is 3 bytes per UTF-16 unit; the unused tail is truncated below.
  const frame = out.reserve(8 + 9 * 8 + ((reason.length * 3 + 1 + 7) & ~7));
  const exception = writeReturnHead(out, frame, answerId, RETURN_EXCEPTION);
  const dv = out.dv;
  setStructPointer(dv, exception - 8, exception, 1, 2);
  dv.setUint16(exception + 4, EXCEPTION_TYPES[type], true);
  const text = exception + 24;
  const { written } = textEncoder.encodeInto(reason, out.bytes.subarray(text, out.length));
  setListPointer(dv, exception + 8, text, ELEMENT_BYTE, written + 1); // bytes, NUL included
  out.truncate(text + ((written + 1 + 7) & ~7));
  finishSingleSegment(out, frame);
}

/**
 * Return carrying results built in their own message: `segments[i]` are that message's segments
 * (used bytes only), whose segment 0 starts with the root pointer. The results keep their
 * segment numbers and their offsets inside each segment, so every pointer inside them, far
 * pointers included, stays valid; only the word holding their root pointer is reused:
 * - one segment with a near root (what capnp-es always builds): one frame segment, the results
 *   words first, the envelope after them; the frame's root pointer (word 0, where the results'
 *   root was) points at the envelope, and Payload.content points back at the results root;
 * - anything else: the envelope goes in an extra last segment, the frame's root pointer is a far
 *   pointer to it, and Payload.content reaches the results root through a double-far landing
 *   pad (or is the results' own root word when that was already far).
 * With `sendBody`, the results body of a one-segment message is not copied: the frame's first
 * 16 bytes are buffered, then `sendBody(body)` is called (it must flush `out` and then send
 * `body`), then the envelope is buffered.
 */
export function writeResultsReturn(
  out: OutBuffer,
  answerId: number,
  segments: readonly Uint8Array[],
  sendBody?: (body: Uint8Array) => void,
): void {
  for (const s of segments) {
    if ((s.byteLength & 7) !== 0) throw new Error(`results segment of ${s.byteLength} bytes is not word-aligned`);
  }
  const first = segments[0]!.byteLength >= 8 ? segments[0]! : new Uint8Array(8);
  const rootLo = readU32(first, 0);
  const rootHi = readU32(first, 4);
  if (segments.length === 1 && (rootLo & 3) !== PTR_FAR) writeSingleSegment(out, answerId, first, rootLo, rootHi, sendBody);
  else writeWithFarRoot(out, answerId, segments, rootLo, rootHi);
}

/** Words of the envelope after one-segment results: Message, ptr, Return (2), ptr, Payload (2). */
const TRAILER_WORDS = 7;

function writeSingleSegment(
  out: OutBuffer,
  answerId: number,
  results: Uint8Array,
  rootLo: number,
  rootHi: number,
  sendBody: ((body: Uint8Array) => void) | undefined,
): void {
  const n = beginSplicedFrame(out, results, TRAILER_WORDS, sendBody);
  const env = out.reserve(TRAILER_WORDS * 8);
  const dv = out.dv;
  dv.setUint16(env, MSG_RETURN, true);
  setStructPointer(dv, env + 8, env + 16, 2, 1);
  dv.setUint32(env + 16, answerId, true);
  dv.setUint8(env + 20, 1); // releaseParamCaps = false (stored XOR its default, true)
  dv.setUint16(env + 22, RETURN_RESULTS, true);
  setStructPointer(dv, env + 32, env + 40, 0, 2);
  setMovedRoot(dv, env + 40, n + 5, rootLo, rootHi);
}

/**
 * Starts a one-segment frame around a message of one segment (`payload`, starting with its root
 * pointer): the frame header, a root pointer to the envelope's Message struct (1 data word, 1
 * pointer) at word n, and the payload's words 1..n-1 where they were, so every pointer inside
 * them stays valid. The caller reserves and writes the `trailerWords` envelope words next.
 * With `sendBody`, the body is handed to it instead of being copied (it must flush `out` and
 * then send the body). Returns n.
 */
function beginSplicedFrame(out: OutBuffer, payload: Uint8Array, trailerWords: number, sendBody?: (body: Uint8Array) => void): number {
  const n = payload.byteLength / 8;
  const frame = out.reserve(16);
  const dv = out.dv;
  dv.setUint32(frame, 0, true);
  dv.setUint32(frame + 4, n + trailerWords, true);
  setStructPointer(dv, frame + 8, frame + 8 + n * 8, 1, 1);
  const body = payload.subarray(8);
  if (sendBody) sendBody(body);
  else {
    const at = out.reserve(body.byteLength); // may reallocate out.bytes: reserve first
    out.bytes.set(body, at);
  }
  return n;
}

/**
 * Writes at `at` (word `word` of the frame's segment 0) the root pointer (rootLo, rootHi) that
 * sat at word 0 of the spliced payload and pointed into it. Capability pointers do not depend on
 * their position; struct and list offsets are re-based; null stays null.
 */
function setMovedRoot(dv: DataView, at: number, word: number, rootLo: number, rootHi: number): void {
  if ((rootLo & 3) === PTR_OTHER) {
    dv.setUint32(at, rootLo, true);
    dv.setUint32(at + 4, rootHi, true);
  } else if (rootLo !== 0 || rootHi !== 0) {
    // The root pointed at word 1 + offset; it now sits at `word`.
    const offset = 1 + (rootLo >> 2) - (word + 1);
    dv.setUint32(at, ((offset << 2) | (rootLo & 3)) >>> 0, true);
    dv.setUint32(at + 4, rootHi, true);
  }
}

function writeWithFarRoot(out: OutBuffer, answerId: number, segments: readonly Uint8Array[], rootLo: number, rootHi: number): void {
  const count = segments.length + 1;
  const envelopeIndex = segments.length;
  const headerBytes = (4 + 4 * count + 7) & ~7;
  const envelopeWords = 10; // pad, Message, ptr, Return(2), ptr, Payload(2), double-far pad(2)
  let total = headerBytes;
  for (const s of segments) total += (s.length + 7) & ~7;
  const frame = out.reserve(total + envelopeWords * 8);
  const dv = out.dv;
  dv.setUint32(frame, count - 1, true);
  let at = frame + headerBytes;
  for (let i = 0; i < segments.length; i++) {
    const s = segments[i]!;
    dv.setUint32(frame + 4 + 4 * i, ((s.length + 7) & ~7) / 8, true);
    out.bytes.set(s, at);
    if (i === 0) setFarPointer(dv, at, false, 0, envelopeIndex); // frame root → landing pad, envelope word 0
    at += (s.length + 7) & ~7;
  }
  dv.setUint32(frame + 4 + 4 * envelopeIndex, envelopeWords, true);
  const env = at;
  setStructPointer(dv, env, env + 8, 1, 1); // landing pad → Message
  dv.setUint16(env + 8, MSG_RETURN, true);
  setStructPointer(dv, env + 16, env + 24, 2, 1);
  dv.setUint32(env + 24, answerId, true);
  dv.setUint8(env + 28, 1);
  dv.setUint16(env + 30, RETURN_RESULTS, true);
  setStructPointer(dv, env + 40, env + 48, 0, 2);
  const content = env + 48;
  if ((rootLo & 3) === PTR_FAR || (rootLo & 3) === PTR_OTHER) {
    // Far and capability pointers do not depend on where they are stored.
    dv.setUint32(content, rootLo, true);
    dv.setUint32(content + 4, rootHi, true);
  } else if (rootLo !== 0 || rootHi !== 0) {
    const pad = env + 64;
    const targetWord = 1 + (rootLo >> 2);
    setFarPointer(dv, content, true, (pad - env) / 8, envelopeIndex);
    setFarPointer(dv, pad, false, targetWord, 0);
    dv.setUint32(pad + 8, rootLo & 3, true); // tag: same kind and size, offset 0
    dv.setUint32(pad + 12, rootHi, true);
  }
}

/** Words of a Call's envelope after one-segment params: Message (2), Call (6), MessageTarget
 * (2), Payload (2), PromisedAnswer (2, only when pipelining). */
const CALL_TRAILER_WORDS = 12;

/**
 * A Call (what a client sends) around params built in their own message, which must have one
 * segment with a near root pointer: what newMessage() builds, since its arena only grows its one
 * segment. Same splice as a results Return: the params words first, the envelope after them.
 * The target is the imported capability `target.importedCap`, or the answer to question
 * `target.promisedQuestion` (pipelining on the bootstrap question).
 */
export function writeCall(
  out: OutBuffer,
  questionId: number,
  interfaceId: bigint,
  methodId: number,
  target: { importedCap: number } | { promisedQuestion: number },
  segments: readonly Uint8Array[],
): void {
  const params = segments[0];
  if (segments.length !== 1 || !params || params.byteLength < 8 || (params.byteLength & 7) !== 0 || (readU32(params, 0) & 3) === PTR_FAR) {
    throw new Error(`call params must be one word-aligned segment with a near root (got ${segments.length} segments)`);
  }
  const pipelined = "promisedQuestion" in target;
  const trailerWords = CALL_TRAILER_WORDS + (pipelined ? 2 : 0);
  const n = beginSplicedFrame(out, params, trailerWords);
  const msg = out.reserve(trailerWords * 8);
  const dv = out.dv;
  dv.setUint16(msg, MSG_CALL, true);
  const call = msg + 16;
  setStructPointer(dv, msg + 8, call, 3, 3);
  dv.setUint32(call, questionId, true);
  dv.setUint16(call + 4, methodId, true); // sendResultsTo stays 0: caller
  dv.setUint32(call + 8, Number(interfaceId & 0xffffffffn), true);
  dv.setUint32(call + 12, Number(interfaceId >> 32n), true);
  const messageTarget = call + 48;
  const payload = messageTarget + 16;
  setStructPointer(dv, call + 24, messageTarget, 1, 1);
  setStructPointer(dv, call + 32, payload, 0, 2);
  if (pipelined) {
    const promised = payload + 16;
    dv.setUint16(messageTarget + 4, TARGET_PROMISED_ANSWER, true);
    setStructPointer(dv, messageTarget + 8, promised, 1, 1);
    dv.setUint32(promised, target.promisedQuestion, true);
  } else {
    dv.setUint32(messageTarget, target.importedCap, true); // tag 0: importedCap
  }
  setMovedRoot(dv, payload, n + 10, readU32(params, 0), readU32(params, 4));
}

/** Finish for question `questionId`, releaseResultCaps false (as our client has always sent it). */
export function writeFinish(out: OutBuffer, questionId: number): void {
  const frame = out.reserve(8 + 4 * 8);
  const dv = out.dv;
  const finish = writeMessageHead(dv, frame + 8, MSG_FINISH, 1, 0);
  dv.setUint32(finish, questionId, true);
  dv.setUint8(finish + 4, 1); // releaseResultCaps = false (stored XOR its default, true)
  finishSingleSegment(out, frame);
}

function readU32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

/** Abort message: the connection is being dropped for `reason`. */
export function writeAbort(out: OutBuffer, reason: string): void {
  // Words: 0 root → 1 Message{which=abort} 2 → 3 Exception{type} 4 reason → 6, 5 trace (null).
  const frame = out.reserve(8 + 6 * 8 + ((reason.length * 3 + 1 + 7) & ~7));
  const dv = out.dv;
  const exception = writeMessageHead(dv, frame + 8, MSG_ABORT, 1, 2);
  dv.setUint16(exception + 4, EXCEPTION_TYPES.failed, true);
  const text = exception + 24;
  const { written } = textEncoder.encodeInto(reason, out.bytes.subarray(text, out.length));
  setListPointer(dv, exception + 8, text, ELEMENT_BYTE, written + 1);
  out.truncate(text + ((written + 1 + 7) & ~7));
  finishSingleSegment(out, frame);
}

/** Appends a frame encoded elsewhere (capnp-es, for the rare messages). */
export function writeFrame(out: OutBuffer, frame: Uint8Array): void {
  const at = out.reserve(frame.byteLength); // may reallocate out.bytes: reserve first
  out.bytes.set(frame, at);
}
