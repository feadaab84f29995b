// The rpc.capnp level-0 protocol as a server that exports one capability (the bootstrap `Conmon`)
// and never calls its peer. capnp-es's own `Conn` fails against real peers (see docs/compat.md),
// so only capnp-es's serialization is used here.
//
// Transport-agnostic: bytes go in through `receive()`, bytes come out through `transport.write()`.
// That keeps the state machine testable with tables of messages.

import { Message, utils, type Pointer, type Struct } from "capnp-es";
import {
  Message as RpcMessage,
  MessageTarget,
  Exception_Type,
  type Call,
} from "capnp-es/capnp/rpc";
import { FrameDecoder, FramingError } from "./framing.ts";
import { errorChain } from "../errors.ts";

type StructClass<T extends Struct = Struct> = (new (...args: any[]) => T) & {
  readonly _capnp: { displayName: string; id: string; size: any };
};

export interface RpcMethod {
  readonly name: string;
  readonly ParamsClass: StructClass;
  readonly ResultsClass: StructClass;
  /** Reads `params`, fills `results` (before the returned promise settles). Throwing → exception. */
  handler(params: any, results: any): Promise<void> | void;
}

export interface RpcService {
  readonly interfaceId: bigint;
  readonly interfaceName: string;
  /** Indexed by method ordinal. */
  readonly methods: ReadonlyArray<RpcMethod | undefined>;
}

export interface RpcTransport {
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

const EXCEPTION_TYPE: Record<ExceptionType, number> = {
  failed: Exception_Type.FAILED,
  overloaded: Exception_Type.OVERLOADED,
  disconnected: Exception_Type.DISCONNECTED,
  unimplemented: Exception_Type.UNIMPLEMENTED,
};

interface Answer {
  readonly bootstrap: boolean;
  /** Our Return has been sent (or dropped because the connection closed). */
  returned: boolean;
  /** The peer sent Finish; the question id is free once we have also returned. */
  finished: boolean;
}

/** The export id under which the bootstrap capability is handed out on every connection. */
const BOOTSTRAP_EXPORT_ID = 0;

export class RpcConnection {
  private readonly decoder = new FrameDecoder();
  private readonly answers = new Map<number, Answer>();
  private bootstrapExported = false;
  private closed = false;
  /** Calls whose handler is still running; for tests and for shutdown bookkeeping. */
  inFlight = 0;

  constructor(
    private readonly service: RpcService,
    private readonly transport: RpcTransport,
    private readonly log: RpcLog,
  ) {}

  get isClosed(): boolean {
    return this.closed;
  }

  /** Open questions; for tests that check nothing leaks. */
  get answerCount(): number {
    return this.answers.size;
  }

  /** Feed bytes read from the socket. */
  receive(chunk: Uint8Array): void {
    if (this.closed) return;
    let frames: ArrayBuffer[];
    try {
      frames = this.decoder.push(chunk);
    } catch (err) {
      const reason = err instanceof FramingError ? err.message : `framing: ${errorChain(err)}`;
      this.abort(reason);
      return;
    }
    for (const frame of frames) {
      if (this.closed) return;
      this.handleFrame(frame);
    }
  }

  /** The transport is gone: forget every answer; running handlers finish and their results are dropped. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.answers.clear();
  }

  private handleFrame(frame: ArrayBuffer): void {
    let msg: RpcMessage;
    let which: number;
    try {
      msg = new Message(frame, false).getRoot(RpcMessage);
      which = msg.which();
    } catch (err) {
      this.abort(`malformed message: ${errorChain(err)}`);
      return;
    }
    try {
      switch (which) {
        case RpcMessage.BOOTSTRAP:
          this.handleBootstrap(msg.bootstrap.questionId);
          break;
        case RpcMessage.CALL:
          this.handleCall(msg.call);
          break;
        case RpcMessage.FINISH:
          this.handleFinish(msg.finish.questionId);
          break;
        case RpcMessage.RELEASE:
          // The Conmon capability is a process-wide singleton: it stays valid for the whole
          // connection however often the peer releases it, so there is nothing to free.
          break;
        case RpcMessage.ABORT:
          this.log.debug(`peer aborted the connection: ${safeReason(() => msg.abort.reason)}`);
          this.closeTransport();
          break;
        case RpcMessage.UNIMPLEMENTED:
          // The peer did not understand something we sent; we only send Return/Abort, so log it.
          this.log.warn("peer answered a message with Unimplemented");
          break;
        case RpcMessage.RETURN:
          // We never ask questions, so no Return can be valid.
          this.abort(`received Return for unknown question ${msg.return.answerId}`);
          break;
        default:
          this.sendUnimplemented(msg);
      }
    } catch (err) {
      this.abort(`malformed ${messageName(which)} message: ${errorChain(err)}`);
    }
  }

  private handleBootstrap(questionId: number): void {
    if (this.answers.has(questionId)) {
      this.abort(`bootstrap question ID ${questionId} already in use`);
      return;
    }
    this.answers.set(questionId, { bootstrap: true, returned: true, finished: false });
    this.bootstrapExported = true;
    const out = new Message();
    const ret = out.initRoot(RpcMessage)._initReturn();
    ret.answerId = questionId;
    ret.releaseParamCaps = false;
    const payload = ret._initResults();
    utils.setInterfacePointer(0, payload.content);
    payload._initCapTable(1).get(0).senderHosted = BOOTSTRAP_EXPORT_ID;
    this.send(out);
  }

  private handleCall(call: Call): void {
    const questionId = call.questionId;
    if (this.answers.has(questionId)) {
      this.abort(`call question ID ${questionId} already in use`);
      return;
    }
    const answer: Answer = { bootstrap: false, returned: false, finished: false };
    this.answers.set(questionId, answer);

    const method = this.resolveMethod(call);
    if (method instanceof RpcException) {
      this.sendException(questionId, answer, method);
      return;
    }
    let params: Struct;
    let out: Message;
    let results: Struct;
    try {
      params = readStruct(call.params.content, method.ParamsClass);
      out = new Message();
      const ret = out.initRoot(RpcMessage)._initReturn();
      ret.answerId = questionId;
      ret.releaseParamCaps = false;
      const content = ret._initResults().content;
      utils.initStruct(method.ResultsClass._capnp.size, content);
      results = utils.getAs(method.ResultsClass, content);
    } catch (err) {
      this.sendException(questionId, answer, new RpcException(`${method.name}: read params: ${errorChain(err)}`));
      return;
    }
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
      this.sendReturn(questionId, answer, out);
      return;
    }
    settled.then(
      () => {
        this.inFlight--;
        this.sendReturn(questionId, answer, out);
      },
      (err) => {
        this.inFlight--;
        this.sendException(questionId, answer, err);
      },
    );
  }

  /** Finds the method a Call targets, or the exception to answer with. */
  private resolveMethod(call: Call): RpcMethod | RpcException {
    const target = call.target;
    switch (target.which()) {
      case MessageTarget.IMPORTED_CAP: {
        const id = target.importedCap;
        if (!this.bootstrapExported || id !== BOOTSTRAP_EXPORT_ID) {
          return new RpcException(`call targets unknown export ID ${id}`);
        }
        break;
      }
      case MessageTarget.PROMISED_ANSWER: {
        // go-capnp and C++ pipeline their first calls on the bootstrap question before its Return.
        const promised = target.promisedAnswer;
        const answer = this.answers.get(promised.questionId);
        if (!answer) return new RpcException(`call targets unknown question ${promised.questionId}`);
        if (!answer.bootstrap || promised.transform.length > 0) {
          return new RpcException(`call targets question ${promised.questionId}, whose result holds no capability`);
        }
        break;
      }
      default:
        return new RpcException("call target type not implemented", "unimplemented");
    }
    if (call.interfaceId !== this.service.interfaceId) {
      return new RpcException(
        `interface 0x${call.interfaceId.toString(16)} not implemented (only ${this.service.interfaceName})`,
        "unimplemented",
      );
    }
    const method = this.service.methods[call.methodId];
    if (!method) {
      return new RpcException(`method ${call.methodId} not implemented by ${this.service.interfaceName}`, "unimplemented");
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

  private sendReturn(questionId: number, answer: Answer, out: Message): void {
    if (!this.settle(questionId, answer)) return;
    this.send(out);
  }

  private sendException(questionId: number, answer: Answer, err: unknown): void {
    if (!this.settle(questionId, answer)) return;
    const out = new Message();
    const ret = out.initRoot(RpcMessage)._initReturn();
    ret.answerId = questionId;
    ret.releaseParamCaps = false;
    const exception = ret._initException();
    exception.reason = errorChain(err);
    exception.type = EXCEPTION_TYPE[err instanceof RpcException ? err.type : "failed"];
    this.send(out);
  }

  /** Marks an answer returned; false if the Return must be dropped (connection gone). */
  private settle(questionId: number, answer: Answer): boolean {
    answer.returned = true;
    if (this.closed) return false;
    if (answer.finished) this.answers.delete(questionId);
    return true;
  }

  private sendUnimplemented(msg: RpcMessage): void {
    const out = new Message();
    out.initRoot(RpcMessage).unimplemented = msg;
    this.send(out);
  }

  /** Protocol violation: tell the peer why, then drop this connection only. */
  private abort(reason: string): void {
    if (this.closed) return;
    this.log.warn(`aborting RPC connection: ${reason}`);
    try {
      const out = new Message();
      const exception = out.initRoot(RpcMessage)._initAbort();
      exception.reason = reason;
      exception.type = Exception_Type.FAILED;
      this.send(out);
    } catch {
      // Nothing more to tell a peer we cannot even encode a message for.
    }
    this.closeTransport();
  }

  private closeTransport(): void {
    this.close();
    this.transport.close();
  }

  private send(out: Message): void {
    if (this.closed) return;
    this.transport.write(new Uint8Array(out.toArrayBuffer()));
  }
}

/**
 * Reads a struct pointer as `Class`. Null reads as all defaults, and an older peer's shorter struct
 * is resized so its missing fields read as defaults too (capnp-es's getAs does neither).
 */
function readStruct<T extends Struct>(pointer: Pointer, Class: StructClass<T>): T {
  const size = Class._capnp.size;
  if (utils.isNull(pointer)) {
    return new Message().initRoot(Class);
  }
  const actual = utils.getTargetStructSize(pointer);
  if (actual.dataByteLength < size.dataByteLength || actual.pointerLength < size.pointerLength) {
    utils.resize(size, pointer);
  }
  return utils.getAs(Class, pointer);
}

function messageName(which: number): string {
  const names: Record<number, string> = {
    [RpcMessage.BOOTSTRAP]: "Bootstrap",
    [RpcMessage.CALL]: "Call",
    [RpcMessage.FINISH]: "Finish",
    [RpcMessage.RELEASE]: "Release",
    [RpcMessage.RETURN]: "Return",
    [RpcMessage.ABORT]: "Abort",
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
