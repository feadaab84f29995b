// The hand-written envelope decoder and encoders (src/rpc/wire.ts, envelope.ts) against capnp-es,
// the reference they replace on the hot path: many random well-formed messages, the same messages
// re-laid out over several segments with far and double-far pointers, older and newer peers'
// struct sizes, and mutated (hostile) frames.
import { describe, expect, test } from "bun:test";
import { Message, Pointer, utils } from "capnp-es";
import { Message as RpcMessage, MessageTarget, Return } from "capnp-es/capnp/rpc";
import { Conmon$Client, Conmon_ExecSyncContainerResponse } from "../../schema/conmon.ts";
import {
  Envelope,
  parseEnvelope,
  writeAbort,
  writeBootstrapReturn,
  writeExceptionReturn,
  writeCall,
  writeFinish,
  writeResultsReturn,
  RETURN_RESULTS,
} from "../../src/rpc/envelope.ts";
import { FrameReader, OutBuffer, WireError } from "../../src/rpc/wire.ts";
import { messageSegments, newMessage, readStructAt } from "../../src/rpc/messages.ts";
import { rng, type Rng } from "../helpers/rng.ts";
import { decodeTree, frameOf, resizeStructs, scatter, scatterFrame, segmentOf } from "../helpers/scatter.ts";

// ---- random rpc messages built with capnp-es ---------------------------------------------------

const IFACE = Conmon$Client.interfaceId;

function randomMessage(r: Rng): Uint8Array {
  const msg = new Message();
  const root = msg.initRoot(RpcMessage);
  switch (r.int(10)) {
    case 0:
      root._initBootstrap().questionId = r.u32();
      break;
    case 1:
    case 2:
    case 3:
    case 4: {
      const call = root._initCall();
      call.questionId = r.u32();
      call.interfaceId = r.bool() ? IFACE : (BigInt(r.u32()) << 32n) | BigInt(r.u32());
      call.methodId = r.int(65536);
      call.allowThirdPartyTailCall = r.bool();
      if (r.next() < 0.9) {
        const target = call._initTarget();
        if (r.bool()) target.importedCap = r.u32();
        else {
          const promised = target._initPromisedAnswer();
          promised.questionId = r.u32();
          const n = r.pick([0, 0, 1, 3]);
          if (n > 0) {
            const ops = promised._initTransform(n);
            for (let i = 0; i < n; i++) if (r.bool()) ops.get(i).getPointerField = r.int(100);
          }
        }
      }
      const p = r.next();
      if (p < 0.8) {
        const content = call._initParams().content;
        if (p < 0.7) {
          const method = Conmon$Client.methods[2]!; // execSync: text, list of text, numbers
          utils.initStruct(method.ParamsClass._capnp.size, content);
          const params: any = utils.getAs(method.ParamsClass, content);
          const req = params._initRequest();
          req.id = "c".repeat(r.int(70));
          req.timeoutSec = BigInt(r.u32());
          const cmd = req._initCommand(r.int(4));
          for (let i = 0; i < cmd.length; i++) cmd.set(i, `arg-${i}-${"x".repeat(r.int(20))}`);
        }
      }
      break;
    }
    case 5:
    case 6: {
      const finish = root._initFinish();
      finish.questionId = r.u32();
      finish.releaseResultCaps = r.bool();
      break;
    }
    case 7: {
      const release = root._initRelease();
      release.id = r.u32();
      release.referenceCount = r.u32();
      break;
    }
    case 8:
      root._initAbort().reason = "gone ".repeat(r.int(5));
      break;
    default:
      root._initReturn().answerId = r.u32();
  }
  return new Uint8Array(msg.toArrayBuffer());
}

/** What capnp-es reads from a frame, in the Envelope's terms. */
function oracle(frame: Uint8Array) {
  const m = new Message(frame.slice().buffer, false).getRoot(RpcMessage);
  const which = m.which();
  const out: Record<string, unknown> = { which };
  if (which === RpcMessage.BOOTSTRAP) out.questionId = m.bootstrap.questionId;
  if (which === RpcMessage.FINISH) out.questionId = m.finish.questionId;
  if (which === RpcMessage.RELEASE) Object.assign(out, { releaseId: m.release.id, referenceCount: m.release.referenceCount });
  if (which === RpcMessage.CALL) {
    const call = m.call;
    const target = call._hasTarget() ? call.target : undefined;
    const targetWhich = target ? target.which() : 0;
    const promised = target && targetWhich === MessageTarget.PROMISED_ANSWER && target._hasPromisedAnswer() ? target.promisedAnswer : undefined;
    Object.assign(out, {
      questionId: call.questionId,
      methodId: call.methodId,
      interfaceId: call.interfaceId,
      targetWhich,
      importedCap: target && targetWhich === MessageTarget.IMPORTED_CAP ? target.importedCap : 0,
      promisedQuestion: promised ? promised.questionId : 0,
      transformLength: promised ? promised.transform.length : 0,
      hasParams: call._hasParams(),
    });
  }
  return out;
}

function parse(frame: Uint8Array): Envelope {
  const reader = new FrameReader();
  const env = new Envelope();
  reader.reset(new DataView(frame.buffer, frame.byteOffset, frame.byteLength), 0, frame.byteLength);
  parseEnvelope(reader, env);
  return env;
}

function envelopeView(env: Envelope, expected: Record<string, unknown>) {
  const out: Record<string, unknown> = { which: env.which };
  for (const k of Object.keys(expected)) {
    if (k === "which") continue;
    if (k === "interfaceId") out[k] = env.interfaceId;
    else if (k === "hasParams") out[k] = env.paramsSeg >= 0;
    else out[k] = (env as any)[k];
  }
  return out;
}

/** The execSync params as capnp-es reads them at the location the envelope gave. */
function paramsAt(frame: Uint8Array, env: Envelope) {
  const m = new Message(frame.slice().buffer, false);
  const method = Conmon$Client.methods[2]!;
  const pointer = new Pointer(m.getSegment(env.paramsSeg), env.paramsOffset);
  if (utils.isNull(pointer)) return null;
  const params: any = utils.getAs(method.ParamsClass, pointer);
  if (!params._hasRequest()) return { request: null };
  const req = params.request;
  return { id: req.id, timeoutSec: req.timeoutSec, command: [...req.command] };
}

// ---- tests -----------------------------------------------------------------------------------

const SEEDS = Array.from({ length: 8 }, (_, i) => 0x5eed + i * 7919);

describe("parseEnvelope against capnp-es", () => {
  test.each(SEEDS)("random single-segment messages (seed %d)", (seed) => {
    const r = rng(seed);
    for (let i = 0; i < 250; i++) {
      const frame = randomMessage(r);
      const expected = oracle(frame);
      expect(envelopeView(parse(frame), expected)).toEqual(expected);
    }
  });

  test.each(SEEDS)("the same messages over 2-5 segments with far and double-far pointers (seed %d)", (seed) => {
    const r = rng(seed);
    for (let i = 0; i < 150; i++) {
      const frame = randomMessage(r);
      const scattered = scatterFrame(frame, 2 + r.int(4), r);
      const expected = oracle(frame);
      expect(oracle(scattered)).toEqual(expected); // the re-layout itself is faithful
      const env = parse(scattered);
      expect(envelopeView(env, expected)).toEqual(expected);
      if (env.which === RpcMessage.CALL && env.paramsSeg >= 0) {
        expect(paramsAt(scattered, env)).toEqual(paramsAt(frame, parse(frame)));
      }
    }
  });

  test.each(SEEDS.slice(0, 4))("older and newer peers: shorter and longer structs read as defaults (seed %d)", (seed) => {
    const r = rng(seed);
    for (let i = 0; i < 200; i++) {
      const resized = scatter(resizeStructs(decodeTree(segmentOf(randomMessage(r)), 0), r), 1 + r.int(3), r);
      const expected = oracle(resized);
      expect(envelopeView(parse(resized), expected)).toEqual(expected);
    }
  });

  test("a null body reads as zeros, a null root is malformed", () => {
    // Message{which=finish} whose finish pointer is null.
    const frame = frameOf([Uint8Array.from([0, 0, 0, 0, 1, 0, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])]);
    expect(envelopeView(parse(frame), { which: 4, questionId: 0 })).toEqual({ which: 4, questionId: 0 });
    expect(() => parse(frameOf([new Uint8Array(8)]))).toThrow(WireError);
  });

  test.each(SEEDS.slice(0, 4))("mutated frames fail with WireError or parse, never read out of bounds (seed %d)", (seed) => {
    const r = rng(seed);
    let failures = 0;
    for (let i = 0; i < 400; i++) {
      const frame = r.bool() ? randomMessage(r) : scatterFrame(randomMessage(r), 2 + r.int(3), r);
      const header = (4 + 4 * (new DataView(frame.buffer).getUint32(0, true) + 1) + 7) & ~7;
      const mutated = frame.slice();
      for (let n = 1 + r.int(4); n > 0; n--) mutated[header + r.int(mutated.length - header)] = r.int(256);
      try {
        parse(mutated);
      } catch (err) {
        expect(err).toBeInstanceOf(WireError);
        failures++;
      }
    }
    expect(failures).toBeGreaterThan(0);
  });

  test("far pointers to missing segments, loops of far pads and out-of-range offsets are rejected", () => {
    const word = (lo: number, hi: number) => {
      const b = new Uint8Array(8);
      new DataView(b.buffer).setUint32(0, lo >>> 0, true);
      new DataView(b.buffer).setUint32(4, hi, true);
      return b;
    };
    const seg = (...words: Uint8Array[]) => Uint8Array.from(words.flatMap((w) => [...w]));
    const cases: [string, Uint8Array][] = [
      ["far to segment 3 of 1", frameOf([seg(word((1 << 3) | 2, 3))])],
      ["far landing on a far", frameOf([seg(word((1 << 3) | 2, 0), word((1 << 3) | 2, 0))])],
      ["double-far whose pad is not far", frameOf([seg(word((1 << 3) | 6, 0), word(0, 0), word(0, 0x10001))])],
      ["landing pad past the segment", frameOf([seg(word((9 << 3) | 2, 0))])],
      ["struct past the segment", frameOf([seg(word(0, 0x10005))])],
      ["negative offset before the segment", frameOf([seg(word(-4 << 2, 0x10001))])],
      ["root is a list", frameOf([seg(word(1, (1 << 3) | 2), word(0, 0))])],
    ];
    for (const [name, frame] of cases) expect(() => parse(frame), name).toThrow(WireError);
  });
});

// ---- encoders --------------------------------------------------------------------------------

function decodeReturn(bytes: Uint8Array) {
  const m = new Message(bytes.slice().buffer, false).getRoot(RpcMessage);
  expect(m.which()).toBe(RpcMessage.RETURN);
  return m.return;
}

function execResults(r: Rng, dataBytes: number) {
  const m = newMessage();
  const results: any = m.initRoot(Conmon$Client.methods[2]!.ResultsClass as any);
  const resp: Conmon_ExecSyncContainerResponse = results._initResponse();
  resp.exitCode = r.u32() | 0;
  resp.timedOut = r.bool();
  const out = new Uint8Array(dataBytes).map(() => r.int(256));
  if (dataBytes > 0 || r.bool()) resp._initStdout(dataBytes).copyBuffer(out);
  resp._initStderr(3).copyBuffer(Uint8Array.of(1, 2, 3));
  return { message: m, expected: { exitCode: resp.exitCode, timedOut: resp.timedOut, stdout: [...out], stderr: [1, 2, 3] } };
}

function readExecResults(ret: Return) {
  expect(ret.which()).toBe(Return.RESULTS);
  const results: any = utils.getAs(Conmon$Client.methods[2]!.ResultsClass, ret.results.content);
  const resp = results.response;
  return { exitCode: resp.exitCode, timedOut: resp.timedOut, stdout: [...resp.stdout.toUint8Array()], stderr: [...resp.stderr.toUint8Array()] };
}

describe("Return encoders decode with capnp-es", () => {
  test("bootstrap: the capability in the cap table", () => {
    const out = new OutBuffer(16);
    writeBootstrapReturn(out, 0xfffffffe, 0);
    const ret = decodeReturn(out.view());
    expect(ret.answerId).toBe(0xfffffffe);
    expect(ret.releaseParamCaps).toBe(false);
    expect(ret.which()).toBe(Return.RESULTS);
    expect(utils.getInterfacePointer(ret.results.content)).toBe(0);
    const caps = ret.results.capTable;
    expect(caps.length).toBe(1);
    expect(caps.get(0).which()).toBe(1); // senderHosted
    expect(caps.get(0).senderHosted).toBe(0);
    expect(caps.get(0).attachedFd).toBe(255);
  });

  test.each(["", "child not available", "ünïcödé ✓ and 🦀", "x".repeat(10_000)])("exception and abort with reason %#", (reason) => {
    const out = new OutBuffer(16);
    writeExceptionReturn(out, 7, "unimplemented", reason);
    const ret = decodeReturn(out.view());
    expect([ret.answerId, ret.releaseParamCaps, ret.which()]).toEqual([7, false, Return.EXCEPTION]);
    expect([ret.exception.reason, ret.exception.type]).toEqual([reason, 3]);
    out.clear();
    writeAbort(out, reason);
    const abort = new Message(out.view().slice().buffer, false).getRoot(RpcMessage);
    expect(abort.which()).toBe(RpcMessage.ABORT);
    expect([abort.abort.reason, abort.abort.type]).toEqual([reason, 0]);
  });

  test.each(SEEDS.slice(0, 4))("results spliced from their own message, one or many segments (seed %d)", (seed) => {
    const r = rng(seed);
    for (let i = 0; i < 60; i++) {
      const { message, expected } = execResults(r, r.pick([0, 1, 7, 100, 5000]));
      const segments = messageSegments(message);
      expect(segments.length).toBe(1);
      const answerId = r.u32();
      const out = new OutBuffer(64);
      if (r.bool()) writeBootstrapReturn(out, 1, 0); // a frame already buffered before ours
      const before = out.length;
      writeResultsReturn(out, answerId, segments);
      let ret = decodeReturn(out.view().subarray(before));
      expect([ret.answerId, ret.releaseParamCaps]).toEqual([answerId, false]);
      expect(readExecResults(ret)).toEqual(expected);
      expect(ret.results.capTable.length).toBe(0);

      // The same results as a multi-segment message with far pointers (root far or near).
      const scattered = scatter(decodeTree(segments[0]!, 0), 1 + r.int(4), r);
      const header = (4 + 4 * (new DataView(scattered.buffer).getUint32(0, true) + 1) + 7) & ~7;
      const split: Uint8Array[] = [];
      for (let s = 0, at = header; s <= new DataView(scattered.buffer).getUint32(0, true); s++) {
        const len = new DataView(scattered.buffer).getUint32(4 + 4 * s, true) * 8;
        split.push(scattered.subarray(at, at + len));
        at += len;
      }
      out.clear();
      writeResultsReturn(out, answerId, split);
      ret = decodeReturn(out.view());
      expect(readExecResults(ret)).toEqual(expected);
    }
  });

  test("large results: the head is written alone and the body follows untouched", () => {
    const { message, expected } = execResults(rng(1), 200_000);
    const segments = messageSegments(message);
    const out = new OutBuffer();
    const pieces: Uint8Array[] = [];
    writeResultsReturn(out, 9, segments, (body) => {
      pieces.push(out.view().slice(), body);
      out.clear();
    });
    expect(pieces[1]!.buffer).toBe(segments[0]!.buffer); // the body was not copied
    pieces.push(out.view().slice());
    const whole = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
    pieces.reduce((at, p) => (whole.set(p, at), at + p.length), 0);
    expect(readExecResults(decodeReturn(whole))).toEqual(expected);
  });

  test("null results content", () => {
    const out = new OutBuffer();
    writeResultsReturn(out, 3, [new Uint8Array(8)]);
    const ret = decodeReturn(out.view());
    expect(utils.isNull(ret.results.content)).toBe(true);
  });
});

/** createContainer params of random shape: texts, lists of texts and structs, an enum. */
function createParams(r: Rng) {
  const m = newMessage(r.pick([64, 1024]));
  const req: any = (m.initRoot(Conmon$Client.methods[1]!.ParamsClass as any) as any)._initRequest();
  const word = () => Array.from({ length: r.int(40) }, () => String.fromCharCode(97 + r.int(26))).join("");
  req.id = word();
  req.bundlePath = `/run/${word()}`;
  req.terminal = r.bool();
  const exitPaths = Array.from({ length: r.int(4) }, word);
  if (exitPaths.length > 0) {
    const list = req._initExitPaths(exitPaths.length);
    exitPaths.forEach((p, i) => list.set(i, p));
  }
  const drivers = r.int(3);
  if (drivers > 0) {
    const list = req._initLogDrivers(drivers);
    for (let i = 0; i < drivers; i++) list.get(i).path = word();
  }
  req.cgroupManager = r.int(2);
  const view = (q: any) => ({
    id: q.id,
    bundlePath: q.bundlePath,
    terminal: q.terminal,
    exitPaths: Array.from({ length: q.exitPaths.length }, (_, i) => q.exitPaths.get(i)),
    drivers: Array.from({ length: q.logDrivers.length }, (_, i) => q.logDrivers.get(i).path),
    cgroupManager: q.cgroupManager,
  });
  return { message: m, expected: view(req), view };
}

describe("writeCall decodes with capnp-es and parseEnvelope", () => {
  test.each(SEEDS.slice(0, 4))("random createContainer params, both targets (seed %d)", (seed) => {
    const r = rng(seed);
    for (let i = 0; i < 80; i++) {
      const { message, expected, view } = createParams(r);
      const questionId = r.u32();
      const target: { importedCap: number } | { promisedQuestion: number } = r.bool() ? { importedCap: r.u32() } : { promisedQuestion: r.u32() };
      const out = new OutBuffer(16);
      if (r.bool()) writeBootstrapReturn(out, 1, 0); // a frame already buffered before ours
      const before = out.length;
      writeCall(out, questionId, Conmon$Client.interfaceId, 1, target, messageSegments(message));
      const frame = out.view().slice(before);

      const m = new Message(frame.slice().buffer, false).getRoot(RpcMessage);
      expect(m.which()).toBe(RpcMessage.CALL);
      const call = m.call;
      expect([call.questionId, call.interfaceId, call.methodId]).toEqual([questionId, Conmon$Client.interfaceId, 1]);
      if ("importedCap" in target) {
        expect(call.target.which()).toBe(MessageTarget.IMPORTED_CAP);
        expect(call.target.importedCap).toBe(target.importedCap);
      } else {
        expect(call.target.which()).toBe(MessageTarget.PROMISED_ANSWER);
        expect(call.target.promisedAnswer.questionId).toBe(target.promisedQuestion);
        expect(call.target.promisedAnswer.transform.length).toBe(0);
      }
      const params: any = utils.getAs(Conmon$Client.methods[1]!.ParamsClass as any, call.params.content);
      expect(view(params.request)).toEqual(expected);

      const env = parse(frame);
      expect([env.which, env.questionId, env.methodId]).toEqual([RpcMessage.CALL, questionId, 1]);
      const viaEnvelope: any = readStructAt(new Message(frame.slice().buffer, false), env.paramsSeg, env.paramsOffset, Conmon$Client.methods[1]!.ParamsClass as any);
      expect(view(viaEnvelope.request)).toEqual(expected);
    }
  });

  test("params of more than one segment, or with a far root, are refused and nothing is written", () => {
    const out = new OutBuffer(16);
    expect(() => writeCall(out, 1, Conmon$Client.interfaceId, 0, { importedCap: 0 }, [new Uint8Array(16), new Uint8Array(8)])).toThrow(/one word-aligned segment/);
    const farRoot = new Uint8Array(16);
    farRoot[0] = 2; // a far pointer
    expect(() => writeCall(out, 1, Conmon$Client.interfaceId, 0, { importedCap: 0 }, [farRoot])).toThrow(/near root/);
    expect(out.length).toBe(0);
  });

  test("params messages from newMessage() stay one segment however large they grow", () => {
    const m = newMessage(1024);
    const req: any = (m.initRoot(Conmon$Client.methods[1]!.ParamsClass as any) as any)._initRequest();
    const list = req._initExitPaths(20_000);
    for (let i = 0; i < 20_000; i++) list.set(i, `/run/exit/${i}`.padEnd(60, "x"));
    expect(messageSegments(m).length).toBe(1);
    const out = new OutBuffer(16);
    writeCall(out, 3, Conmon$Client.interfaceId, 1, { importedCap: 0 }, messageSegments(m));
    const call = new Message(out.view().slice().buffer, false).getRoot(RpcMessage).call;
    const params: any = utils.getAs(Conmon$Client.methods[1]!.ParamsClass as any, call.params.content);
    expect(params.request.exitPaths.length).toBe(20_000);
    expect(params.request.exitPaths.get(19_999)).toBe("/run/exit/19999".padEnd(60, "x"));
  });
});

describe("writeFinish decodes with capnp-es", () => {
  test("question id and releaseResultCaps false, frames back to back", () => {
    const out = new OutBuffer(8);
    const ids = [0, 1, 0xfffffffe, 77];
    for (const id of ids) writeFinish(out, id);
    const bytes = out.view();
    expect(bytes.byteLength).toBe(40 * ids.length);
    ids.forEach((id, i) => {
      const m = new Message(bytes.slice(40 * i, 40 * (i + 1)).buffer, false).getRoot(RpcMessage);
      expect(m.which()).toBe(RpcMessage.FINISH);
      expect([m.finish.questionId, m.finish.releaseResultCaps]).toEqual([id, false]);
      const env = parse(bytes.slice(40 * i, 40 * (i + 1)));
      expect([env.which, env.questionId]).toEqual([RpcMessage.FINISH, id]);
    });
  });
});

describe("parseEnvelope reads a Return for the client", () => {
  test("answer id, results location; exceptions carry no results", () => {
    const r = rng(77);
    for (let i = 0; i < 40; i++) {
      const { message, expected } = execResults(r, r.pick([0, 9, 3000]));
      const answerId = r.u32();
      const out = new OutBuffer(64);
      writeResultsReturn(out, answerId, messageSegments(message));
      const frame = out.view().slice();
      const env = parse(frame);
      expect([env.which, env.questionId, env.returnWhich]).toEqual([RpcMessage.RETURN, answerId, RETURN_RESULTS]);
      const results: any = readStructAt(new Message(frame.buffer, false), env.paramsSeg, env.paramsOffset, Conmon$Client.methods[2]!.ResultsClass as any);
      const resp = results.response;
      expect({ exitCode: resp.exitCode, timedOut: resp.timedOut, stdout: [...resp.stdout.toUint8Array()], stderr: [...resp.stderr.toUint8Array()] }).toEqual(expected);
    }
    const out = new OutBuffer(64);
    writeExceptionReturn(out, 5, "failed", "boom");
    const env = parse(out.view().slice());
    expect([env.which, env.questionId, env.returnWhich, env.paramsSeg]).toEqual([RpcMessage.RETURN, 5, Return.EXCEPTION, -1]);
  });
});

describe("FrameReader lists", () => {
  test.each([0, 1, 5])("transform of %d ops", (n) => {
    const msg = new Message();
    const promised = msg.initRoot(RpcMessage)._initCall()._initTarget()._initPromisedAnswer();
    if (n > 0) promised._initTransform(n);
    const env = parse(new Uint8Array(msg.toArrayBuffer()));
    expect(env.transformLength).toBe(n);
  });
});
