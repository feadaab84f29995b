// Client side of the rpc.capnp level-0 protocol: one connection, the bootstrap capability, and
// calls on it. Calls are pipelined on the bootstrap question (as go-capnp does), so the first call
// costs no extra round trip.

import { Message, type Struct } from "capnp-es";
import { Conmon$Client } from "../../schema/conmon.ts";
import { Envelope, MSG_RETURN, RETURN_RESULTS, parseEnvelope, writeCall, writeFinish } from "../rpc/envelope.ts";
import { FrameDecoder } from "../rpc/framing.ts";
import { messageSegments, newMessage, readStructAt, rpcSchema } from "../rpc/messages.ts";
import { FrameReader, OutBuffer } from "../rpc/wire.ts";
import { withShortPath } from "../rpc/listener.ts";
import type { Socket } from "bun";

const BOOTSTRAP_QUESTION = 0;

/** An exception returned by the server; `message` is the server's reason text. */
export class RemoteError extends Error {
  override name = "RemoteError";
  constructor(
    message: string,
    readonly type: number,
  ) {
    super(message);
  }
}

/**
 * Reads a call's results by hand from the received frame instead of through capnp-es (the hot
 * create and exec-sync answers). `seg`/`at` locate the results' pointer (seg -1: null); whatever is returned
 * must not refer to the frame's bytes.
 */
export type ResultsDecoder<T> = (reader: FrameReader, seg: number, at: number) => T;

interface Pending {
  resolve(results: unknown): void;
  reject(err: Error): void;
  ResultsClass: new (...args: any[]) => Struct;
  decode?: ResultsDecoder<unknown>;
}

export class RpcClient {
  private nextQuestion = BOOTSTRAP_QUESTION + 1;
  private readonly pending = new Map<number, Pending>();
  private readonly decoder = new FrameDecoder();
  private closedError?: Error;
  private backlog: Uint8Array[] = [];
  private finishQueue: number[] = [];
  private readonly reader = new FrameReader();
  private readonly envelope = new Envelope();
  /** Export id of the Conmon capability once the bootstrap Return arrived; until then calls pipeline. */
  private bootstrapExport?: number;

  private constructor(private socket: Socket<undefined>) {}

  static connect(socketPath: string): Promise<RpcClient> {
    return new Promise((resolve, reject) => {
      let client: RpcClient | undefined;
      withShortPath(socketPath, (shortPath) =>
        Bun.connect<undefined>({
          unix: shortPath,
          socket: {
            open(socket) {
              client = new RpcClient(socket);
              client.sendBootstrap();
              resolve(client);
            },
            data(_socket, chunk) {
              client?.receive(chunk);
            },
            drain() {
              client?.flush();
            },
            close() {
              client?.fail(new Error("connection closed by the server"));
            },
            error(_socket, err) {
              client?.fail(err);
            },
            connectError(_socket, err) {
              reject(new Error(`connect to '${socketPath}': ${err.message}`));
            },
          },
        }).catch((err) => reject(new Error(`connect to '${socketPath}': ${err.message}`))),
      );
    });
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  /**
   * Calls `Conmon` method `methodId`. `params` is either a function that fills the params struct
   * through capnp-es, or a finished single-segment params message (src/client/params.ts).
   * Resolves with the results struct, or with what `decode` reads from the results.
   */
  call<R>(methodId: number, params: ((params: any) => void) | Uint8Array, decode?: ResultsDecoder<R>): Promise<R> {
    if (this.closedError) return Promise.reject(this.closedError);
    const method = Conmon$Client.methods[methodId];
    if (!method) return Promise.reject(new Error(`unknown method ${methodId}`));
    let segments: readonly Uint8Array[];
    if (params instanceof Uint8Array) {
      segments = [params];
    } else {
      const message = newMessage(1024);
      params(message.initRoot(method.ParamsClass as any));
      segments = messageSegments(message);
    }
    const questionId = this.nextQuestion++;
    // The params are a message of their own and the Call envelope is written around them by hand
    // (src/rpc/envelope.ts), as the server does with its results.
    // Before the bootstrap Return the question is still open and can be pipelined on; after it we
    // finish that question, so calls must name the imported capability instead.
    const target = this.bootstrapExport === undefined ? { promisedQuestion: BOOTSTRAP_QUESTION } : { importedCap: this.bootstrapExport };
    const out = new OutBuffer(64);
    writeCall(out, questionId, Conmon$Client.interfaceId, methodId, target, segments);
    const frame = out.view();
    return new Promise<R>((resolve, reject) => {
      this.pending.set(questionId, { resolve: resolve as any, reject, ResultsClass: method.ResultsClass as any, decode });
      this.write(frame);
    });
  }

  close(): void {
    this.fail(new Error("connection closed"));
    this.socket.end();
  }

  private sendBootstrap(): void {
    const msg = new Message();
    msg.initRoot(rpcSchema().Message)._initBootstrap().questionId = BOOTSTRAP_QUESTION;
    this.write(new Uint8Array(msg.toArrayBuffer()));
  }

  private receive(chunk: Uint8Array): void {
    let frames: ArrayBuffer[];
    try {
      frames = this.decoder.push(chunk);
    } catch (err) {
      this.fail(err as Error);
      this.socket.end();
      return;
    }
    for (const frame of frames) this.handle(frame);
  }

  private handle(frame: ArrayBuffer): void {
    // Results arrive on the hot path: read the envelope by hand, and the results by hand too when
    // the call gave a decoder (create, exec), else through capnp-es. Everything else (the
    // bootstrap's capability, exceptions, aborts) is rare.
    this.reader.reset(new DataView(frame), 0, frame.byteLength);
    parseEnvelope(this.reader, this.envelope);
    const env = this.envelope;
    if (env.which === MSG_RETURN && env.returnWhich === RETURN_RESULTS && env.questionId !== BOOTSTRAP_QUESTION) {
      const questionId = env.questionId;
      this.queueFinish(questionId);
      const pending = this.pending.get(questionId);
      if (!pending) return;
      this.pending.delete(questionId);
      if (!pending.decode) {
        pending.resolve(readStructAt(new Message(frame, false), env.paramsSeg, env.paramsOffset, pending.ResultsClass as any));
        return;
      }
      try {
        pending.resolve(pending.decode(this.reader, env.paramsSeg, env.paramsAt));
      } catch (err) {
        pending.reject(new Error("read results", { cause: err }));
      }
      return;
    }
    this.handleRare(frame);
  }

  private handleRare(frame: ArrayBuffer): void {
    const { Message: RpcMessage, Return } = rpcSchema();
    const msg = new Message(frame, false).getRoot(RpcMessage);
    const which = msg.which();
    if (which === RpcMessage.ABORT) {
      this.fail(new RemoteError(`server aborted the connection: ${msg.abort.reason}`, msg.abort.type));
      return;
    }
    if (which !== RpcMessage.RETURN) return;
    const ret = msg.return;
    const questionId = ret.answerId;
    this.queueFinish(questionId);
    if (questionId === BOOTSTRAP_QUESTION) {
      if (ret.which() === Return.RESULTS && ret.results.capTable.length > 0) {
        this.bootstrapExport = ret.results.capTable.get(0).senderHosted;
      } else {
        this.fail(new Error("server did not return the Conmon capability"));
      }
      return;
    }
    // Results of other questions took the fast path in handle().
    const pending = this.pending.get(questionId);
    if (!pending) return;
    this.pending.delete(questionId);
    switch (ret.which()) {
      case Return.EXCEPTION:
        pending.reject(new RemoteError(ret.exception.reason, ret.exception.type));
        break;
      default:
        pending.reject(new Error(`unexpected return kind ${ret.which()}`));
    }
  }

  /**
   * Finishes go out after the caller has its results (the next event-loop turn), all that came in
   * one batch in one write: the server keeps an answer until its Finish, so nothing waits on them.
   */
  private queueFinish(questionId: number): void {
    if (this.finishQueue.length === 0) setImmediate(this.sendFinishes);
    this.finishQueue.push(questionId);
  }

  private readonly sendFinishes = (): void => {
    const ids = this.finishQueue;
    this.finishQueue = [];
    if (ids.length === 0) return;
    const out = new OutBuffer(ids.length * 40);
    for (const id of ids) writeFinish(out, id);
    this.write(out.view());
  };

  private write(bytes: Uint8Array): void {
    if (this.closedError) return;
    if (this.backlog.length > 0) {
      this.backlog.push(bytes);
      return;
    }
    const written = this.socket.write(bytes);
    if (written < bytes.byteLength) this.backlog.push(bytes.subarray(Math.max(written, 0)));
  }

  private flush(): void {
    while (this.backlog.length > 0) {
      const head = this.backlog[0]!;
      const written = this.socket.write(head);
      if (written === head.byteLength) this.backlog.shift();
      else {
        if (written > 0) this.backlog[0] = head.subarray(written);
        return;
      }
    }
  }

  private fail(err: Error): void {
    if (this.closedError) return;
    this.closedError = err;
    for (const pending of this.pending.values()) pending.reject(err);
    this.pending.clear();
  }
}
