// The rpc.capnp level-0 protocol as a server that exports one capability (the bootstrap `Conmon`)
// and never calls its peer. capnp-es's own `Conn` fails against real peers (see docs/compat.md),
// so only capnp-es's serialization is used here, and only where handlers need it.
//
// Transport-agnostic: bytes go in through `receive()`, bytes come out through `transport.write()`.
// That keeps the state machine testable with tables of messages.
//
// Hot path (docs/performance.md): the envelope of Bootstrap, Call, Finish and Release is decoded
// by hand straight from the received bytes (envelope.ts). A call's params go through capnp-es
// unless its method reads them by hand (`readParams`: version, createContainer, execSync).
// Returns are written by hand into one output buffer around the results the handler filled (or
// handed over already encoded, `replyWith`), and everything produced while handling one received
// chunk goes out in a single transport write. Rare messages (Abort, Unimplemented, unknown kinds)
// use capnp-es.

import { Message, type Struct } from "capnp-es";
import { FrameDecoder, FramingError } from "./framing.ts";
import { FrameReader, OutBuffer } from "./wire.ts";
import {
  Envelope,
  MSG_ABORT,
  MSG_BOOTSTRAP,
  MSG_CALL,
  MSG_FINISH,
  MSG_RELEASE,
  MSG_RETURN,
  MSG_UNIMPLEMENTED,
  TARGET_IMPORTED_CAP,
  TARGET_PROMISED_ANSWER,
  parseEnvelope,
  writeAbort,
  writeBootstrapReturn,
  writeExceptionReturn,
  writeFrame,
  writeResultsReturn,
} from "./envelope.ts";
import { LazyResults } from "./results.ts";
import { ResultsSizes, messageBytes, messageSegments, newMessage, readFrame, readStructAt, rpcSchema } from "./messages.ts";
import { errorChain } from "../errors.ts";

export { EncodedResults, replyWith } from "./results.ts";

type StructClass<T extends Struct = Struct> = (new (...args: any[]) => T) & {
  readonly _capnp: { displayName: string; id: string; size: any };
};

export interface RpcMethod {
  readonly name: string;
  readonly ParamsClass: StructClass;
  readonly ResultsClass: StructClass;
  /** Reads `params`, fills `results` (before the returned promise settles). Throwing → exception. */
  handler(params: any, results: any): Promise<void> | void;
  /**
   * Reads the params straight from the received frame instead of through a capnp-es copy, for
   * the hot methods (version, createContainer, execSync). `seg`/`at` locate the params' pointer
   * (seg -1: null, read as defaults); the result must not refer to the frame's bytes.
   */
  readParams?(reader: FrameReader, seg: number, at: number): unknown;
}

export interface RpcService {
  readonly interfaceId: bigint;
  readonly interfaceName: string;
  /** Indexed by method ordinal. */
  readonly methods: ReadonlyArray<RpcMethod | undefined>;
}

export interface RpcTransport {
  /**
   * Sends `bytes` (one or more whole frames, or the rest of one). The connection reuses the
   * memory behind `bytes` once this returns: anything kept for later must be copied.
   */
  write(bytes: Uint8Array): void;
  close(): void;
}

export interface RpcLog {
  debug(msg: string): void;
  warn(msg: string): void;
}

export type ExceptionType = "failed" | "overloaded" | "disconnected" | "unimplemented";

/** An error the peer should see with a specific exception type (default: failed). */
export class RpcException extends Error {
  constructor(
    message: string,
    readonly type: ExceptionType = "failed",
  ) {
    super(message);
  }
}

interface Answer {
  readonly bootstrap: boolean;
  /** Our Return has been sent (or dropped because the connection closed). */
  returned: boolean;
  /** The peer sent Finish; the question id is free once we have also returned. */
  finished: boolean;
}

/** The export id under which the bootstrap capability is handed out on every connection. */
const BOOTSTRAP_EXPORT_ID = 0;

/** Results bodies from this size on are written straight from the results message, not copied. */
const LARGE_RESULTS_BYTES = 64 * 1024;

/** Shared by all connections: clients often open one connection per call. */
const resultsSizes = new ResultsSizes();

export class RpcConnection {
  private readonly decoder = new FrameDecoder();
  private readonly reader = new FrameReader();
  private readonly envelope = new Envelope();
  private readonly out = new OutBuffer();
  private readonly answers = new Map<number, Answer>();
  private readonly interfaceIdLo: number;
  private readonly interfaceIdHi: number;
  private bootstrapExported = false;
  private closed = false;
  /** Inside receive(): output waits for the end of the chunk and goes out in one write. */
  private receiving = false;
  private flushQueued = false;
  /** Calls whose handler is still running; for tests and for shutdown bookkeeping. */
  inFlight = 0;

  constructor(
    private readonly service: RpcService,
    private readonly transport: RpcTransport,
    private readonly log: RpcLog,
  ) {
    this.interfaceIdLo = Number(service.interfaceId & 0xffffffffn);
    this.interfaceIdHi = Number((service.interfaceId >> 32n) & 0xffffffffn);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Open questions; for tests that check nothing leaks. */
  get answerCount(): number {
    return this.answers.size;
  }

  /** Feed bytes read from the socket. `chunk` is not kept (whatever must outlive the call is copied). */
  receive(chunk: Uint8Array): void {
    if (this.closed) return;
    this.receiving = true;
    try {
      this.decoder.decode(chunk, this.onFrame);
    } catch (err) {
      this.abort(err instanceof FramingError ? err.message : `framing: ${errorChain(err)}`);
    } finally {
      this.receiving = false;
    }
    this.flush();
  }

  /** The transport is gone: forget every answer; running handlers finish and their results are dropped. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.answers.clear();
    this.out.clear();
  }

  private readonly onFrame = (dv: DataView, start: number, length: number): boolean => {
    this.handleFrame(dv, start, length);
    return !this.closed;
  };

  private readonly flushTask = (): void => {
    this.flushQueued = false;
    this.flush();
  };

  private handleFrame(dv: DataView, start: number, length: number): void {
    const env = this.envelope;
    try {
      this.reader.reset(dv, start, length);
      parseEnvelope(this.reader, env);
    } catch (err) {
      this.abort(`malformed ${env.which < 0 ? "" : `${messageName(env.which)} `}message: ${errorChain(err)}`);
      return;
    }
    const which = env.which;
    try {
      switch (which) {
        case MSG_BOOTSTRAP:
          this.handleBootstrap(env.questionId);
          break;
        case MSG_CALL:
          this.handleCall(env, dv, start, length);
          break;
        case MSG_FINISH:
          this.handleFinish(env.questionId);
          break;
        case MSG_RELEASE:
          // The Conmon capability is a process-wide singleton: it stays valid for the whole
          // connection however often the peer releases it, so there is nothing to free.
          break;
        default:
          this.handleRare(which, frameBytes(dv, start, length));
      }
    } catch (err) {
      this.abort(`malformed ${messageName(which)} message: ${errorChain(err)}`);
    }
  }

  /** Messages off the hot path, read with capnp-es. */
  private handleRare(which: number, frame: Uint8Array): void {
    const RpcMessage = rpcSchema().Message;
    const msg = new Message(frame, false).getRoot(RpcMessage);
    switch (which) {
      case MSG_ABORT:
        this.log.debug(`peer aborted the connection: ${safeReason(() => msg.abort.reason)}`);
        this.closeTransport();
        break;
      case MSG_UNIMPLEMENTED:
        // The peer did not understand something we sent; we only send Return/Abort, so log it.
        this.log.warn("peer answered a message with Unimplemented");
        break;
      case MSG_RETURN:
        // We never ask questions, so no Return can be valid.
        this.abort(`received Return for unknown question ${msg.return.answerId}`);
        break;
      default: {
        const reply = new Message();
        reply.initRoot(RpcMessage).unimplemented = msg;
        writeFrame(this.out, new Uint8Array(reply.toArrayBuffer()));
        this.queueFlush();
      }
    }
  }

  private handleBootstrap(questionId: number): void {
    if (this.answers.has(questionId)) {
      this.abort(`bootstrap question ID ${questionId} already in use`);
      return;
    }
    this.answers.set(questionId, { bootstrap: true, returned: true, finished: false });
    this.bootstrapExported = true;
    writeBootstrapReturn(this.out, questionId, BOOTSTRAP_EXPORT_ID);
    this.queueFlush();
  }

  private handleCall(env: Envelope, dv: DataView, start: number, length: number): void {
    const questionId = env.questionId;
    if (this.answers.has(questionId)) {
      this.abort(`call question ID ${questionId} already in use`);
      return;
    }
    const answer: Answer = { bootstrap: false, returned: false, finished: false };
    this.answers.set(questionId, answer);

    const method = this.resolveMethod(env);
    if (method instanceof RpcException) {
      this.sendException(questionId, answer, method);
      return;
    }
    this.runCall(questionId, answer, method, env, dv, start, length);
  }

  /** Reads the params, runs the handler; synchronous handlers are answered without a Promise. */
  private runCall(questionId: number, answer: Answer, method: RpcMethod, env: Envelope, dv: DataView, start: number, length: number): void {
    let params: unknown;
    try {
      params = method.readParams
        ? method.readParams(this.reader, env.paramsSeg, env.paramsAt)
        : readParams(env, dv, start, length, method.ParamsClass);
    } catch (err) {
      this.sendException(questionId, answer, new RpcException(`${method.name}: read params: ${errorChain(err)}`));
      return;
    }
    const results = new LazyResults(() => newMessage(resultsSizes.initialBytes(method)).initRoot(method.ResultsClass));
    this.inFlight++;
    let settled: Promise<void> | void;
    try {
      settled = method.handler(params, results);
    } catch (err) {
      this.inFlight--;
      this.sendException(questionId, answer, err);
      return;
    }
    if (!(settled instanceof Promise)) {
      this.inFlight--;
      this.sendReturn(questionId, answer, method, results);
      return;
    }
    settled.then(
      () => {
        this.inFlight--;
        this.sendReturn(questionId, answer, method, results);
      },
      (err) => {
        this.inFlight--;
        this.sendException(questionId, answer, err);
      },
    );
  }

  /** Finds the method a Call targets, or the exception to answer with. */
  private resolveMethod(env: Envelope): RpcMethod | RpcException {
    switch (env.targetWhich) {
      case TARGET_IMPORTED_CAP: {
        const id = env.importedCap;
        if (!this.bootstrapExported || id !== BOOTSTRAP_EXPORT_ID) {
          return new RpcException(`call targets unknown export ID ${id}`);
        }
        break;
      }
      case TARGET_PROMISED_ANSWER: {
        // go-capnp and C++ pipeline their first calls on the bootstrap question before its Return.
        const question = env.promisedQuestion;
        const answer = this.answers.get(question);
        if (!answer) return new RpcException(`call targets unknown question ${question}`);
        if (!answer.bootstrap || env.transformLength > 0) {
          return new RpcException(`call targets question ${question}, whose result holds no capability`);
        }
        break;
      }
      default:
        return new RpcException("call target type not implemented", "unimplemented");
    }
    if (env.interfaceIdLo !== this.interfaceIdLo || env.interfaceIdHi !== this.interfaceIdHi) {
      return new RpcException(
        `interface 0x${env.interfaceId.toString(16)} not implemented (only ${this.service.interfaceName})`,
        "unimplemented",
      );
    }
    const method = this.service.methods[env.methodId];
    if (!method) {
      return new RpcException(`method ${env.methodId} not implemented by ${this.service.interfaceName}`, "unimplemented");
    }
    return method;
  }

  private handleFinish(questionId: number): void {
    const answer = this.answers.get(questionId);
    if (!answer) {
      // A Finish racing our Return of an already forgotten question is harmless; never abort for it.
      this.log.debug(`Finish for unknown question ${questionId}`);
      return;
    }
    if (answer.returned) this.answers.delete(questionId);
    else answer.finished = true;
  }

  private sendReturn(questionId: number, answer: Answer, method: RpcMethod, results: LazyResults): void {
    if (!this.settle(questionId, answer)) return;
    let segments: readonly Uint8Array[];
    if (results.reply) {
      segments = results.reply.segments;
    } else {
      try {
        const message = results.struct.segment.message;
        segments = messageSegments(message);
        resultsSizes.record(method, messageBytes(message));
      } catch (err) {
        this.sendException(questionId, answer, new Error("encode results", { cause: err }), true);
        return;
      }
    }
    if (segments.length === 1 && segments[0]!.byteLength >= LARGE_RESULTS_BYTES) {
      // Everything buffered so far goes first, then the body straight from the results message.
      writeResultsReturn(this.out, questionId, segments, this.sendBody);
    } else {
      writeResultsReturn(this.out, questionId, segments);
    }
    this.queueFlush();
  }

  private readonly sendBody = (body: Uint8Array): void => {
    this.flush();
    if (!this.closed) this.transport.write(body);
  };

  private sendException(questionId: number, answer: Answer, err: unknown, settled = false): void {
    if (!settled && !this.settle(questionId, answer)) return;
    writeExceptionReturn(this.out, questionId, err instanceof RpcException ? err.type : "failed", errorChain(err));
    this.queueFlush();
  }

  /** Marks an answer returned; false if the Return must be dropped (connection gone). */
  private settle(questionId: number, answer: Answer): boolean {
    answer.returned = true;
    if (this.closed) return false;
    if (answer.finished) this.answers.delete(questionId);
    return true;
  }

  /** Protocol violation: tell the peer why, then drop this connection only. */
  private abort(reason: string): void {
    if (this.closed) return;
    this.log.warn(`aborting RPC connection: ${reason}`);
    writeAbort(this.out, reason);
    this.closeTransport();
  }

  private closeTransport(): void {
    // Returns already produced for earlier frames of this chunk still go out first.
    this.flush();
    this.close();
    this.transport.close();
  }

  /** Output produced outside receive() (async handlers) is batched until the microtask checkpoint. */
  private queueFlush(): void {
    if (this.receiving || this.flushQueued) return;
    this.flushQueued = true;
    queueMicrotask(this.flushTask);
  }

  private flush(): void {
    if (this.closed || this.out.length === 0) return;
    const bytes = this.out.view();
    try {
      this.transport.write(bytes);
    } finally {
      this.out.clear();
    }
  }
}

/** The frame as bytes; valid only while the frame is (see FrameHandler). */
function frameBytes(dv: DataView, start: number, length: number): Uint8Array {
  return new Uint8Array(dv.buffer, dv.byteOffset + start, length);
}

/**
 * A call's params as `Class`, read by capnp-es from its own copy of the frame (handlers may keep
 * params past the receive callback, the frame bytes are not ours to keep).
 */
function readParams<T extends Struct>(env: Envelope, dv: DataView, start: number, length: number, Class: StructClass<T>): T {
  if (env.paramsSeg < 0) return newMessage().initRoot(Class);
  return readStructAt(readFrame(dv, start, length), env.paramsSeg, env.paramsOffset, Class);
}

function messageName(which: number): string {
  const names: Record<number, string> = {
    [MSG_BOOTSTRAP]: "Bootstrap",
    [MSG_CALL]: "Call",
    [MSG_FINISH]: "Finish",
    [MSG_RELEASE]: "Release",
    [MSG_RETURN]: "Return",
    [MSG_ABORT]: "Abort",
  };
  return names[which] ?? `type ${which}`;
}

function safeReason(read: () => string): string {
  try {
    return read();
  } catch {
    return "<unreadable>";
  }
}
