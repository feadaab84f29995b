// The client's hand-written createContainer and execSyncContainer params (src/client/params.ts,
// src/rpc/segment-builder.ts) read back through capnp-es, the generated schema's own reader, field
// by field against the request as capnp-es builds it from the same input: random requests with
// empty and full lists, multi-byte UTF-8, large values; and the bytes are a valid message that
// capnp-es reads without complaint. Also the server's side: readExecSyncParams and
// readCreateContainerParams (src/request-params.ts) read the requests from whole Call frames, as
// capnp-es (also re-laid out over several segments with far pointers) and our client write them.
import { describe, expect, test } from "bun:test";
import { Message, ObjectSize, Uint8List, utils } from "capnp-es";
import { Message as RpcMessage } from "capnp-es/capnp/rpc";
import { Conmon$Client, Conmon_CreateContainer$Params, Conmon_ExecSyncContainer$Params } from "../../schema/conmon.ts";
import { readCreateContainerParams, readExecSyncParams, type CreateContainerRequest, type ExecSyncRequest } from "../../src/request-params.ts";
import { Envelope, parseEnvelope, writeCall } from "../../src/rpc/envelope.ts";
import { FrameReader, OutBuffer, WireError } from "../../src/rpc/wire.ts";
import { createContainerParams, execSyncParams, type CreateParams, type ExecParams } from "../../src/client/params.ts";
import { SegmentBuilder } from "../../src/rpc/segment-builder.ts";
import { rng } from "../helpers/rng.ts";
import { scatterFrame } from "../helpers/scatter.ts";

/** The shared generator plus the values these requests are made of. */
function valueRng(seed: number) {
  const r = rng(seed);
  const { next, int } = r;
  const ALPHABET = ["a", "Z", "0", "/", "-", " ", "é", "ü", "日", "本", "🙂", "=", "\n", "\t"];
  const text = (max = 40) => Array.from({ length: int(max) }, () => ALPHABET[int(ALPHABET.length)]).join("");
  const texts = () => (next() < 0.3 ? undefined : Array.from({ length: int(5) }, () => text()));
  const u64 = () => (BigInt(r.u32()) << 32n) | BigInt(r.u32());
  const map = () => (next() < 0.4 ? undefined : Object.fromEntries(Array.from({ length: int(4) }, (_, i) => [`K${i}${text(8)}`, text()])));
  /** A value the server keeps as a number (exact below 2^53): timeouts, log sizes. */
  const u53 = () => BigInt(r.u32()) * BigInt(int(1 << 20));
  /** A random create request; `big` makes the 64-bit values (log sizes) of any size. */
  const createParams = (big = u64): CreateParams => ({
    id: text(64),
    bundlePath: `/${text(100)}`,
    terminal: r.bool(),
    stdin: r.bool(),
    exitPaths: texts(),
    oomExitPaths: texts(),
    logDrivers: next() < 0.3 ? undefined : Array.from({ length: int(4) }, () => ({ type: int(3), path: text(), maxSize: big() })),
    cleanupCmd: texts(),
    globalArgs: texts(),
    commandArgs: texts(),
    envVars: map(),
    cgroupManager: int(2),
    additionalFds: next() < 0.5 ? undefined : Array.from({ length: int(4) }, () => u64()),
    leakFds: next() < 0.5 ? undefined : Array.from({ length: int(4) }, () => u64()),
  });
  /** A random exec request; `big` as for createParams (the timeout). */
  const execParams = (big = u64): ExecParams => ({
    id: text(64),
    command: texts() ?? [],
    timeoutSec: next() < 0.5 ? 0n : big(),
    terminal: r.bool(),
    envVars: map(),
    cgroupManager: int(2),
  });
  return { ...r, text, texts, u64, u53, map, createParams, execParams };
}

/** Reads a list of a capnp-es struct into plain values. */
const list = <T>(l: { length: number; get(i: number): T }): T[] => Array.from({ length: l.length }, (_, i) => l.get(i));

function readCreate(segment: Uint8Array) {
  const copy = segment.slice().buffer;
  const r = new Message(copy, false, true).getRoot(Conmon_CreateContainer$Params).request;
  // Before any list is read: capnp-es's getters initialise a null list they are asked for.
  const nullLists = {
    exitPaths: !r._hasExitPaths(),
    logDrivers: !r._hasLogDrivers(),
    envVars: !r._hasEnvVars(),
    additionalFds: !r._hasAdditionalFds(),
  };
  return {
    id: r.id,
    bundlePath: r.bundlePath,
    terminal: r.terminal,
    stdin: r.stdin,
    exitPaths: list(r.exitPaths),
    oomExitPaths: list(r.oomExitPaths),
    logDrivers: list(r.logDrivers).map((d) => ({ type: d.type, path: d.path, maxSize: d.maxSize })),
    cleanupCmd: list(r.cleanupCmd),
    globalArgs: list(r.globalArgs),
    commandArgs: list(r.commandArgs),
    metadata: list(r.metadata).length,
    envVars: list(r.envVars).map((e) => [e.key, e.value]),
    cgroupManager: r.cgroupManager,
    additionalFds: list(r.additionalFds),
    leakFds: list(r.leakFds),
    nullLists,
  };
}

/** Fills a capnp-es list of scalars or texts; an empty or missing list stays null. */
function setList<T>(init: (n: number) => { set(i: number, v: T): void }, values?: readonly T[]): void {
  if (values && values.length > 0) {
    const l = init(values.length);
    values.forEach((v, i) => l.set(i, v));
  }
}

/** Fills a capnp-es List(TextTextMapEntry); an empty or missing map stays null. */
function setEntries(init: (n: number) => { get(i: number): { key: string; value: string } }, map?: Readonly<Record<string, string>>): void {
  const pairs = Object.entries(map ?? {});
  if (pairs.length > 0) {
    const l = init(pairs.length);
    pairs.forEach(([k, v], i) => {
      l.get(i).key = k;
      l.get(i).value = v;
    });
  }
}

/** The same request built with capnp-es's generated builders (what the client used to send). */
function capnpCreate(p: CreateParams): Uint8Array {
  const m = new Message();
  fillCreate(m.initRoot(Conmon_CreateContainer$Params)._initRequest(), p);
  return new Uint8Array(m.toArrayBuffer()).subarray(8); // drop the stream framing's segment table
}

/** Writes `p` into a capnp-es CreateContainerRequest. */
function fillCreate(r: any, p: CreateParams): void {
  r.id = p.id;
  r.bundlePath = p.bundlePath;
  r.terminal = p.terminal;
  r.stdin = p.stdin;
  setList((n) => r._initExitPaths(n), p.exitPaths);
  setList((n) => r._initOomExitPaths(n), p.oomExitPaths);
  setList((n) => r._initCleanupCmd(n), p.cleanupCmd);
  setList((n) => r._initGlobalArgs(n), p.globalArgs);
  setList((n) => r._initCommandArgs(n), p.commandArgs);
  const drivers = p.logDrivers ?? [];
  if (drivers.length > 0) {
    const l = r._initLogDrivers(drivers.length);
    drivers.forEach((d, i) => {
      const e = l.get(i);
      e.type = d.type as any;
      e.path = d.path;
      e.maxSize = d.maxSize;
    });
  }
  setEntries((n) => r._initEnvVars(n), p.envVars);
  r.cgroupManager = p.cgroupManager as any;
  setList((n) => r._initAdditionalFds(n), p.additionalFds);
  setList((n) => r._initLeakFds(n), p.leakFds);
}

function readExec(segment: Uint8Array) {
  const r = new Message(segment.slice().buffer, false, true).getRoot(Conmon_ExecSyncContainer$Params).request;
  const commandIsNull = !r._hasCommand();
  return {
    id: r.id,
    timeoutSec: r.timeoutSec,
    command: list(r.command),
    terminal: r.terminal,
    envVars: list(r.envVars).map((e) => [e.key, e.value]),
    cgroupManager: r.cgroupManager,
    metadata: list(r.metadata).length,
    commandIsNull,
  };
}

function capnpExec(p: ExecParams): Uint8Array {
  const m = new Message();
  fillExec(m.initRoot(Conmon_ExecSyncContainer$Params)._initRequest(), p);
  return new Uint8Array(m.toArrayBuffer()).subarray(8);
}

/** Writes `p` into a capnp-es ExecSyncContainerRequest. */
function fillExec(r: any, p: ExecParams): void {
  r.id = p.id;
  r.timeoutSec = p.timeoutSec;
  setList((n) => r._initCommand(n), p.command);
  r.terminal = p.terminal;
  setEntries((n) => r._initEnvVars(n), p.envVars);
  r.cgroupManager = p.cgroupManager;
}

describe("hand-written client params", () => {
  test("createContainer: 300 random requests read back exactly as capnp-es builds them", () => {
    const r = valueRng(7);
    for (let i = 0; i < 300; i++) {
      const p = r.createParams();
      expect(readCreate(createContainerParams(p))).toEqual(readCreate(capnpCreate(p)));
    }
  });

  test("execSyncContainer: 300 random requests read back exactly as capnp-es builds them", () => {
    const r = valueRng(11);
    for (let i = 0; i < 300; i++) {
      const p = r.execParams();
      expect(readExec(execSyncParams(p))).toEqual(readExec(capnpExec(p)));
    }
  });

  test("empty lists stay null pointers, as the Go client sends them", () => {
    const create = readCreate(createContainerParams({ id: "c", bundlePath: "/b", terminal: false, stdin: false, exitPaths: [], logDrivers: [], envVars: {}, cgroupManager: 1, additionalFds: [] }));
    expect(create.nullLists).toEqual({ exitPaths: true, logDrivers: true, envVars: true, additionalFds: true });
    expect(readExec(execSyncParams({ id: "c", command: [], timeoutSec: 0n, terminal: false, cgroupManager: 0 })).commandIsNull).toBe(true);
  });

  test("a text with a NUL byte is refused (C would cut it short)", () => {
    expect(() => execSyncParams({ id: "a\0b", command: [], timeoutSec: 0n, terminal: false, cgroupManager: 0 })).toThrow(/NUL/);
  });

  test("the builder grows its buffer without moving what it wrote", () => {
    const b = new SegmentBuilder(16);
    const root = b.root(0, 2);
    const long = "x".repeat(5000);
    b.text(root, long);
    b.textList(root + 8, ["a", long, "b"]);
    const seg = b.finish();
    expect(seg.byteLength % 8).toBe(0);
    const m = new Message(seg.slice().buffer, false, true);
    // Read it as a CreateContainerParams-shaped struct would not fit; use the raw pointers instead.
    const dv = new DataView(seg.buffer, seg.byteOffset, seg.byteLength);
    const textAt = (ptrAt: number) => {
      const off = ptrAt + 8 + ((dv.getInt32(ptrAt, true) >> 2) * 8);
      const len = dv.getUint32(ptrAt + 4, true) >>> 3;
      return new TextDecoder().decode(seg.subarray(off, off + len - 1));
    };
    expect(textAt(root)).toBe(long);
    const listAt = root + 8 + 8 + ((dv.getInt32(root + 8, true) >> 2) * 8);
    expect([0, 1, 2].map((i) => textAt(listAt + i * 8))).toEqual(["a", long, "b"]);
    expect(m.getSegment(0).byteLength).toBe(seg.byteLength);
  });
});

describe("readExecSyncParams (the server reads exec requests by hand)", () => {
  const capnpCallFrame = (fill: (request: any) => void) => callFrameOf(Conmon_ExecSyncContainer$Params, 2, fill);
  const readByHand = (frame: Uint8Array): ExecSyncRequest => readFrameBy(frame, readExecSyncParams).request;

  const expected = (p: ExecParams): ExecSyncRequest => ({
    id: p.id,
    command: [...p.command],
    timeoutSec: Number(p.timeoutSec),
    terminal: p.terminal,
    envVars: Object.assign(Object.create(null), p.envVars ?? {}),
    cgroupManager: p.cgroupManager,
  });

  test("300 random requests, written by capnp-es and by our client, read exactly", () => {
    const r = valueRng(13);
    for (let i = 0; i < 300; i++) {
      const p = r.execParams(r.u53);
      const fromCapnpEs = capnpCallFrame((req) => fillExec(req, p));
      expect(readByHand(fromCapnpEs)).toEqual(expected(p));
      // Our client's params in the Call envelope it writes: the same request, laid out by SegmentBuilder.
      expect(readByHand(clientCallFrame(2, execSyncParams(p)))).toEqual(expected(p));
    }
  });

  test("requests laid out over 2-5 segments with far and double-far pointers read the same", () => {
    const r = valueRng(17);
    for (let i = 0; i < 100; i++) {
      const p = r.execParams(r.u53);
      const frame = capnpCallFrame((req) => fillExec(req, p));
      expect(readByHand(scatterFrame(frame, 2 + r.int(4), r))).toEqual(expected(p));
    }
  });

  test("null params, a null request and an older client's shorter request read as defaults", () => {
    const defaults = { id: "", command: [], timeoutSec: 0, terminal: false, envVars: Object.create(null), cgroupManager: 0 };
    const nullParams = (() => {
      const msg = new Message();
      const call = msg.initRoot(RpcMessage)._initCall();
      call.methodId = 2;
      call._initTarget().importedCap = 0;
      call._initParams();
      return new Uint8Array(msg.toArrayBuffer());
    })();
    expect(readByHand(nullParams)).toEqual(defaults);
    const nullRequest = (() => {
      const msg = new Message();
      const call = msg.initRoot(RpcMessage)._initCall();
      call._initTarget().importedCap = 0;
      utils.initStruct(Conmon_ExecSyncContainer$Params._capnp.size, call._initParams().content);
      return new Uint8Array(msg.toArrayBuffer());
    })();
    expect(readByHand(nullRequest)).toEqual(defaults);
    // Only id and command: what an old client without envVars/cgroupManager would send.
    const short = (() => {
      const msg = new Message();
      const call = msg.initRoot(RpcMessage)._initCall();
      call._initTarget().importedCap = 0;
      const content = call._initParams().content;
      utils.initStruct(Conmon_ExecSyncContainer$Params._capnp.size, content);
      const requestPointer = utils.getPointer(0, utils.getAs(Conmon_ExecSyncContainer$Params, content));
      utils.initStruct(new ObjectSize(8, 2), requestPointer);
      const request: any = utils.getAs(Conmon_ExecSyncContainer$Params, content).request;
      return { msg, request };
    })();
    short.request.id = "old";
    short.request._initCommand(1).set(0, "true");
    expect(readByHand(new Uint8Array(short.msg.toArrayBuffer()))).toEqual({ ...defaults, id: "old", command: ["true"] });
  });

  test("later envVars entries win over earlier ones with the same key", () => {
    const frame = capnpCallFrame((req) => {
      const l = req._initEnvVars(2);
      l.get(0).key = "K";
      l.get(0).value = "first";
      l.get(1).key = "K";
      l.get(1).value = "second";
    });
    expect(readByHand(frame).envVars.K).toBe("second");
  });

  test("a command that is not a list of texts is a wire error (the call gets an exception)", () => {
    const frame = capnpCallFrame((req) => utils.initList(1, Uint8List, 3, req));
    expect(() => readByHand(frame)).toThrow(WireError);
  });
});

/** A whole Call frame built by capnp-es, segment table included; `fill` writes the request. */
function callFrameOf(ParamsClass: any, methodId: number, fill: (request: any) => void): Uint8Array {
  const msg = new Message();
  const call = msg.initRoot(RpcMessage)._initCall();
  call.questionId = 3;
  call.interfaceId = Conmon$Client.interfaceId;
  call.methodId = methodId;
  call._initTarget().importedCap = 0;
  const content = call._initParams().content;
  utils.initStruct(ParamsClass._capnp.size, content);
  fill((utils.getAs(ParamsClass, content) as any)._initRequest());
  return new Uint8Array(msg.toArrayBuffer());
}

/** Parses the Call envelope of `frame` and runs a params reader on it, as the server does. */
function readFrameBy<T>(frame: Uint8Array, read: (reader: FrameReader, seg: number, at: number) => T): T {
  const reader = new FrameReader();
  const env = new Envelope();
  reader.reset(new DataView(frame.buffer, frame.byteOffset, frame.byteLength), 0, frame.byteLength);
  parseEnvelope(reader, env);
  return read(reader, env.paramsSeg, env.paramsAt);
}

/** Our client's params in the Call envelope it writes. */
function clientCallFrame(methodId: number, params: Uint8Array): Uint8Array {
  const out = new OutBuffer();
  writeCall(out, 3, Conmon$Client.interfaceId, methodId, { importedCap: 0 }, [params]);
  return out.view().slice();
}

describe("readCreateContainerParams (the server reads create requests by hand)", () => {
  const readByHand = (frame: Uint8Array): CreateContainerRequest => readFrameBy(frame, readCreateContainerParams).request;
  const expected = (p: CreateParams): CreateContainerRequest => ({
    id: p.id,
    bundlePath: p.bundlePath,
    terminal: p.terminal,
    stdin: p.stdin,
    exitPaths: [...(p.exitPaths ?? [])],
    oomExitPaths: [...(p.oomExitPaths ?? [])],
    logDrivers: (p.logDrivers ?? []).map((d) => ({ type: d.type, path: d.path, maxSize: Number(d.maxSize) })),
    cleanupCmd: [...(p.cleanupCmd ?? [])],
    globalArgs: [...(p.globalArgs ?? [])],
    commandArgs: [...(p.commandArgs ?? [])],
    envVars: Object.assign(Object.create(null), p.envVars ?? {}),
    cgroupManager: p.cgroupManager,
    additionalFds: [...(p.additionalFds ?? [])],
    leakFds: [...(p.leakFds ?? [])],
  });

  test("300 random requests from capnp-es and from our client, also over 2-5 segments, read exactly", () => {
    const r = valueRng(19);
    for (let i = 0; i < 300; i++) {
      // Log sizes below 2^53: they are numbers on our side.
      const p = r.createParams(r.u53);
      const fromCapnpEs = callFrameOf(Conmon_CreateContainer$Params, 1, (req) => fillCreate(req, p));
      expect(readByHand(fromCapnpEs)).toEqual(expected(p));
      expect(readByHand(clientCallFrame(1, createContainerParams(p)))).toEqual(expected(p));
      if (i < 100) expect(readByHand(scatterFrame(fromCapnpEs, 2 + r.int(4), r))).toEqual(expected(p));
    }
  });

  test("null params and null lists read as defaults", () => {
    const defaults = expected({ id: "", bundlePath: "", terminal: false, stdin: false, cgroupManager: 0 });
    expect(readByHand(callFrameOf(Conmon_CreateContainer$Params, 1, () => {}))).toEqual(defaults);
  });

  test("fd slots that are not a list of 64-bit values are a wire error", () => {
    const frame = callFrameOf(Conmon_CreateContainer$Params, 1, (req) => utils.initList(10, Uint8List, 3, req));
    expect(() => readByHand(frame)).toThrow(WireError);
  });
});
