// The results of the two hot calls on the wire, written by the server and read by our client by
// hand. Kubelet probes make execSyncContainer's the most frequent answer with a body; building
// and reading results through capnp-es (a Pointer object per field, run cold once per call) cost
// each side a few hundred µs. test/unit/call-results.test.ts checks both directions against
// capnp-es.
//
// Layouts (schema/conmon.capnp, as `capnp compile -ocapnp` prints them): each results struct
// holds `response` (pointer 0). ExecSyncContainerResponse has one data word (exitCode: Int32 at
// byte 0, timedOut: bit 32) and two pointers (stdout, stderr: Data); CreateContainerResponse one
// data word (containerPid: UInt32 at byte 0) and no pointers.

import { EncodedResults } from "./rpc/results.ts";
import { SegmentBuilder } from "./rpc/segment-builder.ts";
import { StructRef, type FrameReader } from "./rpc/wire.ts";

export interface ExecResultFields {
  exitCode: number;
  stdout: Uint8Array;
  stderr: Uint8Array;
  timedOut: boolean;
}

const RESPONSE_DATA_WORDS = 1;
const RESPONSE_PTRS = 2;
const EXIT_CODE_BYTE = 0;
const TIMED_OUT_BIT = 32;
const STDOUT_PTR = 0;
const STDERR_PTR = 1;

const wordsFor = (bytes: number) => Math.ceil(bytes / 8);

/**
 * The results as one segment, byte for byte what filling them through capnp-es gives (empty
 * output stays a null pointer). Sized up front, so 16 MiB of output is copied once.
 */
export function encodeExecResults(result: ExecResultFields): EncodedResults {
  const words = 1 + 1 + RESPONSE_DATA_WORDS + RESPONSE_PTRS + wordsFor(result.stdout.byteLength) + wordsFor(result.stderr.byteLength);
  const b = new SegmentBuilder(words * 8);
  const root = b.root(0, 1);
  const response = b.struct(root, RESPONSE_DATA_WORDS, RESPONSE_PTRS);
  b.setI32(response + EXIT_CODE_BYTE, result.exitCode);
  b.setBit(response, TIMED_OUT_BIT, result.timedOut);
  const ptrs = response + RESPONSE_DATA_WORDS * 8;
  b.data(ptrs + STDOUT_PTR * 8, result.stdout);
  b.data(ptrs + STDERR_PTR * 8, result.stderr);
  return EncodedResults.fromSegments([b.finish()]);
}

// Scratch: decoding is synchronous and never re-entered.
const resultsRef = new StructRef();
const responseRef = new StructRef();

/**
 * Reads the results at `seg`/`at` of the frame in `reader` (see ResultsDecoder). Null pointers
 * and a shorter struct from another server read as defaults, as capnp-es reads them; the output
 * is copied out of the frame.
 */
export function decodeExecResults(reader: FrameReader, seg: number, at: number): ExecResultFields {
  if (!reader.readWrapped(seg, at, resultsRef, responseRef)) return { exitCode: 0, stdout: new Uint8Array(0), stderr: new Uint8Array(0), timedOut: false };
  const r = responseRef;
  return {
    exitCode: reader.i32(r, EXIT_CODE_BYTE),
    timedOut: reader.bit(r, TIMED_OUT_BIT),
    stdout: reader.data(r.seg, reader.pointer(r, STDOUT_PTR)),
    stderr: reader.data(r.seg, reader.pointer(r, STDERR_PTR)),
  };
}

const CREATE_RESPONSE_DATA_WORDS = 1;
const CONTAINER_PID_BYTE = 0;

/** createContainer's results as one segment, byte for byte what capnp-es writes. */
export function encodeCreateResults(containerPid: number): EncodedResults {
  const b = new SegmentBuilder(8 * (1 + 1 + CREATE_RESPONSE_DATA_WORDS));
  const response = b.struct(b.root(0, 1), CREATE_RESPONSE_DATA_WORDS, 0);
  b.setU32(response + CONTAINER_PID_BYTE, containerPid);
  return EncodedResults.fromSegments([b.finish()]);
}

/** Reads createContainer's results (see decodeExecResults); null reads as pid 0. */
export function decodeCreateResults(reader: FrameReader, seg: number, at: number): { containerPid: number } {
  const found = reader.readWrapped(seg, at, resultsRef, responseRef);
  return { containerPid: found ? reader.u32(responseRef, CONTAINER_PID_BYTE) : 0 };
}
