// createContainer's and execSyncContainer's results by hand (src/call-results.ts) against
// capnp-es, both ways: what the server writes must be the bytes the capnp-es fill gave, and what
// the client reads must be what capnp-es reads, also from results capnp-es wrote (another server)
// and from short structs.
import { describe, expect, test } from "bun:test";
import { Message, ObjectSize, Uint32List, utils } from "capnp-es";
import { Conmon$Client } from "../../schema/conmon.ts";
import { decodeCreateResults, decodeExecResults, encodeCreateResults, encodeExecResults, type ExecResultFields } from "../../src/call-results.ts";
import { Envelope, parseEnvelope, writeResultsReturn } from "../../src/rpc/envelope.ts";
import { messageSegments, newMessage } from "../../src/rpc/messages.ts";
import { FrameReader, OutBuffer, WireError } from "../../src/rpc/wire.ts";

const ExecResults = Conmon$Client.methods[2]!.ResultsClass as any;

function viaCapnpEs(result: ExecResultFields): Uint8Array[] {
  const message = newMessage();
  const res = (message.initRoot(ExecResults) as any)._initResponse();
  res.exitCode = result.exitCode;
  res.timedOut = result.timedOut;
  if (result.stdout.byteLength > 0) res._initStdout(result.stdout.byteLength).copyBuffer(result.stdout);
  if (result.stderr.byteLength > 0) res._initStderr(result.stderr.byteLength).copyBuffer(result.stderr);
  return messageSegments(message);
}

/** The client's side: a Return frame around `segments`, decoded by hand as RpcClient does. */
function decodeReturn(segments: readonly Uint8Array[]): ExecResultFields {
  return decodeReturnWith(segments, decodeExecResults);
}

function decodeReturnWith<T>(segments: readonly Uint8Array[], decode: (reader: FrameReader, seg: number, at: number) => T): T {
  const out = new OutBuffer();
  writeResultsReturn(out, 9, segments);
  const frame = out.view().slice();
  const reader = new FrameReader();
  const env = new Envelope();
  reader.reset(new DataView(frame.buffer), 0, frame.byteLength);
  parseEnvelope(reader, env);
  const decoded = decode(reader, env.paramsSeg, env.paramsAt);
  frame.fill(0xee); // the result must not share the frame's bytes
  return decoded;
}

const bytes = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);

const CASES = [
  ["exit 0, no output", 0, 0, 0, false],
  ["exit 1, stdout only", 1, 11, 0, false],
  ["exit 127, stderr only", 127, 0, 37, false],
  ["both streams, lengths on and off word boundaries", 2, 16, 9, false],
  ["runtime failed (-2)", -2, 0, 0, false],
  ["timed out (-3) with partial output", -3, 5, 3, true],
  ["NUL bytes and every byte value", 0, 256, 256, false],
  ["large output (1 MiB stdout)", 0, 1 << 20, 100, false],
  ["largest int32 exit code", 0x7fffffff, 1, 1, true],
] as const;

describe("encodeExecResults (server)", () => {
  test.each(CASES)("%s: the bytes capnp-es writes, read back by capnp-es", (_name, exitCode, outLen, errLen, timedOut) => {
    const result: ExecResultFields = { exitCode, stdout: bytes(outLen, 1), stderr: bytes(errLen, 2), timedOut };
    const encoded = encodeExecResults(result);
    expect(encoded.segments.map((s) => [...s])).toEqual(viaCapnpEs(result).map((s) => [...s]));

    const read: any = new Message(encoded.segments[0]!.slice().buffer, false, true).getRoot(ExecResults);
    const response = read.response;
    // Before the Data getters below, which allocate a default in place of a null pointer.
    expect(utils.isNull(utils.getPointer(0, response))).toBe(outLen === 0);
    expect(response.exitCode).toBe(exitCode);
    expect(response.timedOut).toBe(timedOut);
    expect(new Uint8Array(response.stdout.toUint8Array())).toEqual(result.stdout);
    expect(new Uint8Array(response.stderr.toUint8Array())).toEqual(result.stderr);
  });
});

describe("decodeExecResults (client)", () => {
  test.each(CASES)("%s: what capnp-es wrote, read by hand", (_name, exitCode, outLen, errLen, timedOut) => {
    const result: ExecResultFields = { exitCode, stdout: bytes(outLen, 3), stderr: bytes(errLen, 4), timedOut };
    expect(decodeReturn(viaCapnpEs(result))).toEqual(result);
    expect(decodeReturn(encodeExecResults(result).segments)).toEqual(result);
  });

  test("null results and a null response read as defaults", () => {
    const none = { exitCode: 0, stdout: new Uint8Array(0), stderr: new Uint8Array(0), timedOut: false };
    const nullResponse = newMessage();
    nullResponse.initRoot(ExecResults);
    expect(decodeReturn(messageSegments(nullResponse))).toEqual(none);
    const nullResults = newMessage();
    expect(decodeReturn(messageSegments(nullResults))).toEqual(none);
  });

  test("an older server's shorter response: missing fields read as defaults", () => {
    const message = newMessage();
    const root: any = message.initRoot(ExecResults);
    const responsePointer = utils.getPointer(0, root);
    utils.initStruct(new ObjectSize(8, 0), responsePointer); // the data word only, no Data pointers
    const data = utils.getContent(responsePointer);
    data.segment.setInt32(data.byteOffset, -7);
    data.segment.setUint8(data.byteOffset + 4, 1); // timedOut
    expect(decodeReturn(messageSegments(message))).toEqual({ exitCode: -7, stdout: new Uint8Array(0), stderr: new Uint8Array(0), timedOut: true });

    const empty = newMessage();
    utils.initStruct(new ObjectSize(0, 0), utils.getPointer(0, empty.initRoot(ExecResults) as any));
    expect(decodeReturn(messageSegments(empty))).toEqual({ exitCode: 0, stdout: new Uint8Array(0), stderr: new Uint8Array(0), timedOut: false });
  });

  test("stdout that is not a byte list is a wire error", () => {
    const message = newMessage();
    const response: any = (message.initRoot(ExecResults) as any)._initResponse();
    utils.initList(0, Uint32List, 2, response);
    expect(() => decodeReturn(messageSegments(message))).toThrow(WireError);
  });
});

describe("createContainer results", () => {
  const CreateResults = Conmon$Client.methods[1]!.ResultsClass as any;

  test.each([0, 1, 4242, 0x7fffffff, 0xffffffff])("pid %d: the server writes capnp-es's bytes, the client reads them back", (pid) => {
    const message = newMessage();
    (message.initRoot(CreateResults) as any)._initResponse().containerPid = pid;
    const reference = messageSegments(message);
    const encoded = encodeCreateResults(pid);
    expect(encoded.segments.map((s) => [...s])).toEqual(reference.map((s) => [...s]));
    expect(decodeReturnWith(reference, decodeCreateResults)).toEqual({ containerPid: pid });
    expect(decodeReturnWith(encoded.segments, decodeCreateResults)).toEqual({ containerPid: pid });
  });

  test("null results read as pid 0", () => {
    expect(decodeReturnWith(messageSegments(newMessage()), decodeCreateResults)).toEqual({ containerPid: 0 });
  });
});

