// execSyncContainer's results, written by hand (encodeExecResults), against the same results
// filled through capnp-es the way the handler used to: the bytes must be identical, and capnp-es
// must read every field back.
import { describe, expect, test } from "bun:test";
import { Message, utils } from "capnp-es";
import { Conmon$Client } from "../../schema/conmon.ts";
import { encodeExecResults, type ExecResult } from "../../src/exec-sync.ts";
import { messageSegments, newMessage } from "../../src/rpc/messages.ts";

const ExecResults = Conmon$Client.methods[2]!.ResultsClass as any;

function viaCapnpEs(result: ExecResult): Uint8Array[] {
  const message = newMessage();
  const res = (message.initRoot(ExecResults) as any)._initResponse();
  res.exitCode = result.exitCode;
  res.timedOut = result.timedOut;
  if (result.stdout.byteLength > 0) res._initStdout(result.stdout.byteLength).copyBuffer(result.stdout);
  if (result.stderr.byteLength > 0) res._initStderr(result.stderr.byteLength).copyBuffer(result.stderr);
  return messageSegments(message);
}

const bytes = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);

describe("encodeExecResults", () => {
  test.each([
    ["exit 0, no output", 0, 0, 0, false],
    ["exit 1, stdout only", 1, 11, 0, false],
    ["exit 127, stderr only", 127, 0, 37, false],
    ["both streams, lengths on and off word boundaries", 2, 16, 9, false],
    ["runtime failed (-2)", -2, 0, 0, false],
    ["timed out (-3) with partial output", -3, 5, 3, true],
    ["NUL bytes and every byte value", 0, 256, 256, false],
    ["large output (1 MiB stdout)", 0, 1 << 20, 100, false],
    ["largest int32 exit code", 0x7fffffff, 1, 1, true],
  ] as const)("%s: same bytes as capnp-es, read back field by field", (_name, exitCode, outLen, errLen, timedOut) => {
    const result: ExecResult = { exitCode, stdout: bytes(outLen, 1), stderr: bytes(errLen, 2), timedOut };
    const encoded = encodeExecResults(result);
    expect(encoded.segments.map((s) => [...s])).toEqual(viaCapnpEs(result).map((s) => [...s]));

    const segment = encoded.segments[0]!;
    const read: any = new Message(segment.slice().buffer, false, true).getRoot(ExecResults);
    const response = read.response;
    // Before the Data getters below, which allocate a default in place of a null pointer.
    expect(utils.isNull(utils.getPointer(0, response))).toBe(outLen === 0);
    expect(response.exitCode).toBe(exitCode);
    expect(response.timedOut).toBe(timedOut);
    expect(new Uint8Array(response.stdout.toUint8Array())).toEqual(result.stdout);
    expect(new Uint8Array(response.stderr.toUint8Array())).toEqual(result.stderr);
  });
});
