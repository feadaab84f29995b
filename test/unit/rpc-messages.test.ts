// capnp-es message shortcuts (src/rpc/messages.ts, results.ts) against the plain capnp-es API:
// the bytes must be identical, since they lean on capnp-es internals of the pinned version.
import { describe, expect, test } from "bun:test";
import { Message, ObjectSize, Pointer, Uint8List, utils } from "capnp-es";
import { Message as RpcMessage } from "capnp-es/capnp/rpc";
import { Conmon$Client } from "../../schema/conmon.ts";
import { ResultsSizes, messageBytes, messageSegments, newMessage, readFrame, readStructAt } from "../../src/rpc/messages.ts";
import { EncodedResults, LazyResults, replyWith } from "../../src/rpc/results.ts";
import { RpcConnection } from "../../src/rpc/connection.ts";
import { FrameDecoder } from "../../src/rpc/framing.ts";
import { conmonService } from "../../src/service.ts";
import { handleVersion, readVersionParams } from "../../src/version.ts";
import { Envelope, parseEnvelope } from "../../src/rpc/envelope.ts";
import { FrameReader, WireError } from "../../src/rpc/wire.ts";

const ExecResults = Conmon$Client.methods[2]!.ResultsClass as any;

/** Fills execSync results; `n` bytes of stdout make the message outgrow newMessage's first segment. */
function fill(results: any, n: number) {
  const r = results._initResponse();
  r.exitCode = -n;
  r._initStdout(n).copyBuffer(Uint8Array.from({ length: n }, (_, i) => i & 0xff));
  r.timedOut = n % 2 === 1;
}

const bytesOf = (m: Message) => new Uint8Array(m.toArrayBuffer());

describe("newMessage", () => {
  test.each([0, 1, 100, 400, 500, 4096, 100_000])("builds the same bytes as new Message() (%d bytes of data)", (n) => {
    const plain = new Message();
    fill(plain.initRoot(ExecResults), n);
    const small = newMessage();
    fill(small.initRoot(ExecResults), n);
    expect(bytesOf(small)).toEqual(bytesOf(plain));
    expect(messageSegments(small).length).toBe(1);
  });
});

describe("ResultsSizes", () => {
  test("the next results message is sized after the last one, within bounds", () => {
    const sizes = new ResultsSizes(256, 4096);
    const a = {};
    const b = {};
    expect(sizes.initialBytes(a)).toBe(256);
    sizes.record(a, 1100);
    expect(sizes.initialBytes(a)).toBe(1280); // +1/8, whole 256-byte steps
    expect(sizes.initialBytes(b)).toBe(256); // per method
    sizes.record(a, 1_000_000);
    expect(sizes.initialBytes(a)).toBe(4096);
    sizes.record(a, 16);
    expect(sizes.initialBytes(a)).toBe(256);
  });

  test("a message sized from the hint does not grow when the results are alike", () => {
    const sizes = new ResultsSizes();
    const key = {};
    const first = newMessage(sizes.initialBytes(key));
    fill(first.initRoot(ExecResults), 1024);
    sizes.record(key, messageBytes(first));
    const second = newMessage(sizes.initialBytes(key));
    const buffer = messageSegments(second)[0]!.buffer;
    fill(second.initRoot(ExecResults), 1024);
    expect(messageSegments(second)[0]!.buffer).toBe(buffer);
  });
});

describe("readFrame", () => {
  function frameWith(n: number): Uint8Array {
    const m = new Message();
    fill(m.initRoot(ExecResults), n);
    return bytesOf(m);
  }

  test.each([0, 9, 5000])("reads what new Message(frame) reads, from inside a larger buffer (%d bytes)", (n) => {
    const frame = frameWith(n);
    const buffer = new Uint8Array(frame.length + 24).fill(0xaa);
    buffer.set(frame, 16);
    const m = readFrame(new DataView(buffer.buffer), 16, frame.length);
    buffer.fill(0); // the frame's bytes are not ours to keep: the message has its own copy
    const read = (msg: Message) => {
      const r = (msg.getRoot(ExecResults) as any).response;
      return [r.exitCode, r.timedOut, [...r.stdout.toUint8Array()]];
    };
    expect(read(m)).toEqual(read(new Message(frame, false)));
  });

  test("reading a null struct field allocates in the slack, not by growing the segment", () => {
    const m0 = new Message();
    m0.initRoot(ExecResults); // response pointer stays null
    const frame = bytesOf(m0);
    const m = readFrame(new DataView(frame.buffer), 0, frame.length);
    const buffer = messageSegments(m)[0]!.buffer;
    expect((m.getRoot(ExecResults) as any).response.exitCode).toBe(0);
    expect(messageSegments(m)[0]!.buffer).toBe(buffer);
  });

  test("multi-segment frames go through capnp-es's own framing", () => {
    const m0 = new Message();
    fill(m0.initRoot(ExecResults), 3);
    const seg = messageSegments(m0)[0]!;
    // Two segments: the same content, and an empty second segment.
    const frame = new Uint8Array(16 + seg.length);
    const dv = new DataView(frame.buffer);
    dv.setUint32(0, 1, true);
    dv.setUint32(4, seg.length / 8, true);
    frame.set(seg, 16);
    const m = readFrame(dv, 0, frame.length);
    expect((m.getRoot(ExecResults) as any).response.exitCode).toBe(-3);
  });
});

describe("EncodedResults and replyWith", () => {
  test("capture is a snapshot; replyWith replaces what the results message holds", () => {
    const m = newMessage();
    const results = m.initRoot(ExecResults);
    fill(results, 10);
    const encoded = EncodedResults.capture(results);
    const before = messageSegments(m).map((s) => [...s]);
    fill(results, 20); // later writes do not change the snapshot
    expect(encoded.segments.map((s) => [...s])).toEqual(before);

    const other = new LazyResults(() => newMessage().initRoot(ExecResults));
    expect(messageSegments(other.struct.segment.message).map((s) => [...s])).not.toEqual(before);
    replyWith(other, encoded);
    expect(other.reply!.segments.map((s) => [...s])).toEqual(before);
  });

  test("build() equals filling a message by hand", () => {
    const built = EncodedResults.build(ExecResults, (r) => fill(r, 7));
    const m = newMessage();
    fill(m.initRoot(ExecResults), 7);
    expect(built.segments.map((s) => [...s])).toEqual(messageSegments(m).map((s) => [...s]));
  });
});

describe("version", () => {
  /** Sends bootstrap + version calls, returns each Return frame's bytes with its answerId zeroed. */
  function versionReturns(verbose: boolean[], byHand = false): Uint8Array[] {
    const frames: Uint8Array[] = [];
    const decoder = new FrameDecoder();
    const conn = new RpcConnection(
      conmonService({ version: handleVersion }, byHand ? { version: readVersionParams } : {}),
      { write: (b) => decoder.push(b).forEach((f) => frames.push(new Uint8Array(f))), close() {} },
      { debug() {}, warn() {} },
    );
    const send = (build: (root: any) => void) => {
      const msg = new Message();
      build(msg.initRoot(RpcMessage));
      conn.receive(bytesOf(msg));
    };
    send((root) => (root._initBootstrap().questionId = 0));
    for (const v of verbose) {
      send((root) => {
        const call = root._initCall();
        call.questionId = 7; // the same id each time (finished below): identical frames expected
        call.interfaceId = Conmon$Client.interfaceId;
        call._initTarget().importedCap = 0;
        const content = call._initParams().content;
        utils.initStruct(Conmon$Client.methods[0]!.ParamsClass._capnp.size, content);
        (utils.getAs(Conmon$Client.methods[0]!.ParamsClass, content) as any)._initRequest().verbose = v;
      });
      send((root) => (root._initFinish().questionId = 7));
    }
    return frames.slice(1);
  }

  test("cached replies are byte-identical to the first, freshly filled ones", () => {
    const [a, b, c, d] = versionReturns([false, false, true, true]);
    expect(b).toEqual(a!);
    expect(d).toEqual(c!);
    expect(c).not.toEqual(a!);
    const results: any = new Message(c!.slice().buffer, false).getRoot(RpcMessage).return.results.content;
    const response = (utils.getAs(Conmon$Client.methods[0]!.ResultsClass, results) as any).response;
    expect(response.processId).toBe(process.pid);
    expect(response.cargoTree).toContain("capnp-es");
  });

  test("params read by hand give the same answers as params read through capnp-es", () => {
    const calls = [false, true, true, false, true];
    expect(versionReturns(calls, true)).toEqual(versionReturns(calls));
  });
});

describe("readVersionParams", () => {
  const VersionParams = Conmon$Client.methods[0]!.ParamsClass as any;

  /** A version Call frame whose params `shape` builds by hand; the pointer left for the params' content. */
  function callFrame(shape: (content: Pointer) => void): Uint8Array {
    const msg = new Message();
    const call = msg.initRoot(RpcMessage)._initCall();
    call.questionId = 1;
    call.interfaceId = Conmon$Client.interfaceId;
    call._initTarget().importedCap = 0;
    shape(call._initParams().content);
    return bytesOf(msg);
  }

  function envelopeOf(frame: Uint8Array): { reader: FrameReader; env: Envelope } {
    const reader = new FrameReader();
    const env = new Envelope();
    reader.reset(new DataView(frame.buffer, frame.byteOffset, frame.byteLength), 0, frame.byteLength);
    parseEnvelope(reader, env);
    return { reader, env };
  }

  function readByHand(frame: Uint8Array): unknown {
    const { reader, env } = envelopeOf(frame);
    return readVersionParams(reader, env.paramsSeg, env.paramsAt);
  }

  /** What the general path (capnp-es, short structs resized to defaults) reads as `request.verbose`. */
  function readByCapnpEs(frame: Uint8Array): boolean {
    const { env } = envelopeOf(frame);
    const params: any = readStructAt(new Message(frame.slice().buffer, false), env.paramsSeg, env.paramsOffset, VersionParams);
    return params.request.verbose;
  }

  const withRequest = (requestSize: ObjectSize, bits: number) => (content: Pointer) => {
    utils.initStruct(VersionParams._capnp.size, content);
    const requestPointer = utils.getPointer(0, utils.getAs(VersionParams, content));
    utils.initStruct(requestSize, requestPointer);
    if (requestSize.dataByteLength === 0) return;
    const data = utils.getContent(requestPointer);
    data.segment.setUint8(data.byteOffset, bits);
  };

  test.each([
    ["verbose", withRequest(new ObjectSize(8, 0), 1), true],
    ["not verbose", withRequest(new ObjectSize(8, 0), 0), false],
    ["other bits set, verbose clear", withRequest(new ObjectSize(8, 0), 0xfe), false],
    ["a newer peer's longer request", withRequest(new ObjectSize(16, 2), 1), true],
    ["an older peer's empty request", withRequest(new ObjectSize(0, 0), 0), false],
    ["null request", (content: Pointer) => utils.initStruct(VersionParams._capnp.size, content), false],
    ["params of an older peer without the request pointer", (content: Pointer) => utils.initStruct(new ObjectSize(0, 0), content), false],
    ["null params", () => {}, false],
  ] as const)("%s", (_name, shape, verbose) => {
    const frame = callFrame(shape);
    expect(readByCapnpEs(frame)).toBe(verbose);
    expect(readByHand(frame)).toEqual({ request: { verbose } });
  });

  test("a request that is not a struct is a wire error, not a default", () => {
    const frame = callFrame((content) => {
      utils.initStruct(VersionParams._capnp.size, content);
      const params: any = utils.getAs(VersionParams, content);
      utils.initList(0, Uint8List, 2, params); // a byte list where the request struct belongs
    });
    expect(() => readByHand(frame)).toThrow(WireError);
  });
});
