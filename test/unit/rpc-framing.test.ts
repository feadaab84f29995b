import { describe, expect, test } from "bun:test";
import { Message } from "capnp-es";
import { Message as RpcMessage } from "capnp-es/capnp/rpc";
import { FrameDecoder, FramingError } from "../../src/rpc/framing.ts";

function frame(questionId: number): Uint8Array {
  const msg = new Message();
  msg.initRoot(RpcMessage)._initBootstrap().questionId = questionId;
  return new Uint8Array(msg.toArrayBuffer());
}

function header(words: number[]): Uint8Array {
  const bytes = new Uint8Array((4 + 4 * words.length + 7) & ~7);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, words.length - 1, true);
  words.forEach((w, i) => view.setUint32(4 + 4 * i, w, true));
  return bytes;
}

const questionIdOf = (ab: ArrayBuffer) => new Message(ab, false).getRoot(RpcMessage).bootstrap.questionId;

describe("FrameDecoder", () => {
  test.each([
    ["whole frames", [1, 2, 3], (f: Uint8Array[]) => f],
    ["one byte at a time", [7], (f: Uint8Array[]) => [...f[0]!].map((b) => Uint8Array.of(b))],
    ["two frames in one chunk", [4, 5], (f: Uint8Array[]) => [new Uint8Array([...f[0]!, ...f[1]!])]],
    ["a frame split across chunks with the next one's start", [8, 9], (f: Uint8Array[]) => {
      const all = new Uint8Array([...f[0]!, ...f[1]!]);
      return [all.subarray(0, 13), all.subarray(13, 30), all.subarray(30)];
    }],
  ])("%s", (_name, ids, chunking) => {
    const decoder = new FrameDecoder();
    const got: number[] = [];
    for (const chunk of chunking(ids.map(frame))) for (const f of decoder.push(chunk)) got.push(questionIdOf(f));
    expect(got).toEqual(ids);
    expect(decoder.pending).toBe(0);
  });

  test("a truncated frame waits for more bytes", () => {
    const decoder = new FrameDecoder();
    const f = frame(1);
    expect(decoder.push(f.subarray(0, f.length - 1))).toEqual([]);
    expect(decoder.pending).toBe(f.length - 1);
    expect(decoder.push(f.subarray(f.length - 1)).map(questionIdOf)).toEqual([1]);
  });

  test.each([
    ["a huge segment count", header(new Array(600).fill(1)), /600 segments/],
    ["segment count 2^32", new Uint8Array([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]), /4294967296 segments/],
    ["a segment over 64 MiB", header([8 * 1024 * 1024 + 1]), /larger than/],
    ["segments adding up to over 64 MiB", header([4 * 1024 * 1024, 4 * 1024 * 1024 + 1]), /larger than/],
    ["an empty root segment", header([0]), /empty root/],
  ])("rejects %s", (_name, bytes, message) => {
    expect(() => new FrameDecoder().push(bytes)).toThrow(message);
    expect(() => new FrameDecoder().push(bytes)).toThrow(FramingError);
  });

  test("frames do not alias the decoder's buffer", () => {
    const decoder = new FrameDecoder();
    const [first] = decoder.push(frame(1));
    decoder.push(frame(2));
    expect(questionIdOf(first!)).toBe(1);
  });
});
