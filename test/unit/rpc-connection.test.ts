// The RPC state machine, driven with tables of messages in and the messages it sends back.
import { describe, expect, test } from "bun:test";
import { Message, utils } from "capnp-es";
import { Message as RpcMessage, Return, MessageTarget } from "capnp-es/capnp/rpc";
import { Conmon$Client, Conmon_VersionResponse } from "../../schema/conmon.ts";
import { RpcConnection, RpcException } from "../../src/rpc/connection.ts";
import { FrameDecoder } from "../../src/rpc/framing.ts";
import { conmonService } from "../../src/service.ts";
import { EncodedResults, replyWith } from "../../src/rpc/results.ts";

const IFACE = Conmon$Client.interfaceId;

type In =
  | { bootstrap: number }
  | { call: number; target: { cap: number } | { answer: number }; method: number; iface?: bigint; verbose?: boolean; nullParams?: boolean }
  | { finish: number }
  | { release: number }
  | { abort: string }
  | { return: number }
  | { disembargo: true };

function encode(m: In): Uint8Array {
  const msg = new Message();
  const root = msg.initRoot(RpcMessage);
  if ("bootstrap" in m) root._initBootstrap().questionId = m.bootstrap;
  else if ("call" in m) {
    const call = root._initCall();
    call.questionId = m.call;
    call.interfaceId = m.iface ?? IFACE;
    call.methodId = m.method;
    const target = call._initTarget();
    if ("cap" in m.target) target.importedCap = m.target.cap;
    else target._initPromisedAnswer().questionId = m.target.answer;
    if (!m.nullParams) {
      const content = call._initParams().content;
      const method = Conmon$Client.methods[0];
      utils.initStruct(method.ParamsClass._capnp.size, content);
      const params: any = utils.getAs(method.ParamsClass, content);
      params._initRequest().verbose = m.verbose ?? false;
    }
  } else if ("finish" in m) root._initFinish().questionId = m.finish;
  else if ("release" in m) {
    const r = root._initRelease();
    r.id = m.release;
    r.referenceCount = 1;
  } else if ("abort" in m) root._initAbort().reason = m.abort;
  else if ("return" in m) root._initReturn().answerId = m.return;
  else root._initDisembargo();
  return new Uint8Array(msg.toArrayBuffer());
}

/** A compact description of what the server sent. */
function describeOut(bytes: Uint8Array): string {
  const msg = new Message(bytes.buffer as ArrayBuffer, false).getRoot(RpcMessage);
  switch (msg.which()) {
    case RpcMessage.RETURN: {
      const ret = msg.return;
      if (ret.which() === Return.EXCEPTION) return `exception ${ret.answerId} ${ret.exception.type}: ${ret.exception.reason}`;
      const caps = ret.results.capTable;
      if (caps.length > 0) return `bootstrap ${ret.answerId} export ${caps.get(0).senderHosted}`;
      const results: any = utils.getAs(Conmon$Client.methods[0].ResultsClass, ret.results.content);
      const response: Conmon_VersionResponse = results.response;
      return `return ${ret.answerId} pid ${response.processId} tree ${response.cargoTree || "-"}`;
    }
    case RpcMessage.ABORT:
      return `abort: ${msg.abort.reason}`;
    case RpcMessage.UNIMPLEMENTED:
      return `unimplemented ${msg.unimplemented.which()}`;
    default:
      return `other ${msg.which()}`;
  }
}

function harness(handlers: Parameters<typeof conmonService>[0] = {}) {
  const out: string[] = [];
  let closed = 0;
  const version = (params: any, results: any) => {
    const r = results._initResponse();
    r.processId = 4242;
    r.cargoTree = params.request.verbose ? "tree" : "";
  };
  // The connection batches frames into one write per chunk received: split them again.
  const decoder = new FrameDecoder();
  const conn = new RpcConnection(
    conmonService({ version, ...handlers }),
    { write: (b) => decoder.push(b).forEach((f) => out.push(describeOut(new Uint8Array(f)))), close: () => closed++ },
    { debug() {}, warn() {} },
  );
  return { conn, out, closedCount: () => closed, send: (...ms: In[]) => ms.forEach((m) => conn.receive(encode(m))) };
}

const U = 3; // Exception.Type.UNIMPLEMENTED
const F = 0; // Exception.Type.FAILED

describe("RpcConnection", () => {
  test.each<[string, In[], string[]]>([
    ["bootstrap then call on the imported cap", [{ bootstrap: 0 }, { call: 1, target: { cap: 0 }, method: 0 }], ["bootstrap 0 export 0", "return 1 pid 4242 tree -"]],
    ["call pipelined on the bootstrap question", [{ bootstrap: 0 }, { call: 1, target: { answer: 0 }, method: 0, verbose: true }], ["bootstrap 0 export 0", "return 1 pid 4242 tree tree"]],
    ["null params read as defaults", [{ bootstrap: 0 }, { call: 1, target: { cap: 0 }, method: 0, nullParams: true }], ["bootstrap 0 export 0", "return 1 pid 4242 tree -"]],
    ["unknown method", [{ bootstrap: 0 }, { call: 1, target: { cap: 0 }, method: 42 }, { call: 2, target: { cap: 0 }, method: 0 }], ["bootstrap 0 export 0", `exception 1 ${U}: method 42 not implemented by Conmon`, "return 2 pid 4242 tree -"]],
    ["method without a handler", [{ bootstrap: 0 }, { call: 1, target: { cap: 0 }, method: 6 }], ["bootstrap 0 export 0", `exception 1 ${U}: method 6 not implemented by Conmon`]],
    ["unknown interface", [{ bootstrap: 0 }, { call: 1, target: { cap: 0 }, method: 0, iface: 0x1234n }], ["bootstrap 0 export 0", `exception 1 ${U}: interface 0x1234 not implemented (only Conmon)`]],
    ["call before bootstrap", [{ call: 1, target: { cap: 0 }, method: 0 }], [`exception 1 ${F}: call targets unknown export ID 0`]],
    ["call on an unknown export", [{ bootstrap: 0 }, { call: 1, target: { cap: 7 }, method: 0 }], ["bootstrap 0 export 0", `exception 1 ${F}: call targets unknown export ID 7`]],
    ["call on an unknown question", [{ call: 1, target: { answer: 9 }, method: 0 }], [`exception 1 ${F}: call targets unknown question 9`]],
    ["call pipelined on a non-capability answer", [{ bootstrap: 0 }, { call: 1, target: { cap: 0 }, method: 0 }, { call: 2, target: { answer: 1 }, method: 0 }], ["bootstrap 0 export 0", "return 1 pid 4242 tree -", `exception 2 ${F}: call targets question 1, whose result holds no capability`]],
    ["finish and release are accepted silently", [{ bootstrap: 0 }, { finish: 0 }, { release: 0 }, { finish: 99 }, { call: 1, target: { cap: 0 }, method: 0 }], ["bootstrap 0 export 0", "return 1 pid 4242 tree -"]],
    ["reused question id aborts", [{ bootstrap: 0 }, { call: 1, target: { cap: 0 }, method: 0 }, { call: 1, target: { cap: 0 }, method: 0 }], ["bootstrap 0 export 0", "return 1 pid 4242 tree -", "abort: call question ID 1 already in use"]],
    ["a Return from the peer aborts", [{ return: 5 }], ["abort: received Return for unknown question 5"]],
    ["unknown message types get Unimplemented", [{ disembargo: true }], [`unimplemented ${RpcMessage.DISEMBARGO}`]],
  ])("%s", async (_name, input, expected) => {
    const h = harness();
    h.send(...input);
    await Bun.sleep(0);
    expect(h.out).toEqual(expected);
  });

  test("a finished question is freed only after its Return", async () => {
    let release!: () => void;
    const h = harness({ version: () => new Promise<void>((r) => (release = r)) });
    h.send({ bootstrap: 0 }, { finish: 0 }, { call: 1, target: { cap: 0 }, method: 0 }, { finish: 1 });
    expect(h.conn.answerCount).toBe(1);
    release();
    await Bun.sleep(0);
    expect(h.out).toEqual(["bootstrap 0 export 0", "return 1 pid 0 tree -"]);
    expect(h.conn.answerCount).toBe(0);
  });

  test("replyWith answers with the encoded results, whether or not the handler built its own", async () => {
    const encoded = EncodedResults.build(Conmon$Client.methods[0].ResultsClass as any, (r: any) => {
      r._initResponse().processId = 77;
    });
    const h = harness({
      version: (params: any, results: any) => {
        if (params.request.verbose) results._initResponse().processId = 1; // overridden below
        replyWith(results, encoded);
      },
    });
    h.send({ bootstrap: 0 }, { call: 1, target: { cap: 0 }, method: 0 }, { call: 2, target: { cap: 0 }, method: 0, verbose: true });
    await Bun.sleep(0);
    expect(h.out).toEqual(["bootstrap 0 export 0", "return 1 pid 77 tree -", "return 2 pid 77 tree -"]);
  });

  test("handler errors become failed exceptions with the error chain", async () => {
    const h = harness({
      version: async () => {
        throw new Error("create result", { cause: new Error("child not available") });
      },
      reopenLogContainer: () => {
        throw new RpcException("nope", "overloaded");
      },
    });
    h.send({ bootstrap: 0 }, { call: 1, target: { cap: 0 }, method: 0 }, { call: 2, target: { cap: 0 }, method: 4 });
    await Bun.sleep(0);
    expect(h.out).toEqual(["bootstrap 0 export 0", `exception 2 1: nope`, `exception 1 ${F}: create result: child not available`]);
  });

  test("many calls in flight complete out of order", async () => {
    const h = harness({
      version: async (_p: any, results: any) => {
        const delay = Math.floor(Math.random() * 5);
        await Bun.sleep(delay);
        results._initResponse().processId = 1;
      },
    });
    h.send({ bootstrap: 0 });
    for (let q = 1; q <= 100; q++) h.send({ call: q, target: { answer: 0 }, method: 0 });
    expect(h.conn.inFlight).toBe(100);
    await Bun.sleep(30);
    expect(h.out.length).toBe(101);
    expect(h.out.filter((o) => o.startsWith("return")).length).toBe(100);
  });

  test("a disconnect mid-call drops the answer and keeps nothing", async () => {
    let release!: () => void;
    const h = harness({ version: () => new Promise<void>((r) => (release = r)) });
    h.send({ bootstrap: 0 }, { call: 1, target: { cap: 0 }, method: 0 });
    h.conn.close();
    expect(h.conn.answerCount).toBe(0);
    release();
    await Bun.sleep(0);
    expect(h.out).toEqual(["bootstrap 0 export 0"]);
    expect(h.conn.inFlight).toBe(0);
  });

  test.each([
    ["random bytes", crypto.getRandomValues(new Uint8Array(4096))],
    ["a root pointer out of bounds", new Uint8Array([0, 0, 0, 0, 1, 0, 0, 0, 0xfc, 0xff, 0xff, 0x0f, 0, 0, 1, 0])],
  ])("hostile input (%s) aborts only this connection", (_name, bytes) => {
    const h = harness();
    h.conn.receive(bytes);
    expect(h.closedCount()).toBe(1);
    expect(h.out.at(-1)).toStartWith("abort: ");
    expect(h.conn.isClosed).toBe(true);
  });

  test("MessageTarget constants match rpc.capnp", () => {
    expect([MessageTarget.IMPORTED_CAP, MessageTarget.PROMISED_ANSWER]).toEqual([0, 1]);
  });
});
