// startFdSocket on the client side (mirrors the Go client's RemoteFDs): ask the server to open its
// fd socket, connect to it, and hand fds over; each fd comes back as a slot number that
// createContainer accepts in `additionalFds` / `leakFds`. Protocol: src/fd-socket.ts.
//
// The server closes the fds it has not handed to a container yet when this connection closes, so
// keep it open until createContainer has returned.

import type { ConmonClient } from "./conmon-client.ts";
import { FD_SOCKET_MAX_FDS, decodeReply, encodeRequest } from "../fd-socket.ts";
import { withContext } from "../errors.ts";
import { closeQuietly } from "../../ffi/fd.ts";
import { watch, type Readiness, type Watch } from "../../ffi/poller.ts";
import { connectUnix, recvMsg, sendMsg } from "../../ffi/socket.ts";

const START_FD_SOCKET = 7;
/** Replies are ≤ 8 + 253 * 8 bytes; error texts may be longer, and a cut one is still readable. */
const REPLY_BUFFER_BYTES = 64 * 1024;

export interface RemoteFDs {
  /** The server's fd socket. */
  readonly path: string;
  /**
   * Passes `fds` (at most 253) to the server; resolves with one slot per fd, in order. The fds
   * stay ours: close them whenever convenient once this resolves. No fds: no request, [] back.
   * Calls are queued, one request on the wire at a time.
   */
  send(...fds: number[]): Promise<bigint[]>;
  /** Closes the connection; the server then closes every fd not taken by a container yet. */
  close(): void;
}

/** The text of a server error reply. */
export class FdSocketServerError extends Error {
  override name = "FdSocketServerError";
}

/** startFdSocket, then a SEQPACKET connection to the returned path (Go: `(*ConmonClient).RemoteFDs`). */
export async function remoteFds(client: ConmonClient): Promise<RemoteFDs> {
  const path = await client.call(START_FD_SOCKET, () => {}, (res) => res.path as string);
  let fd: number;
  try {
    fd = connectUnix(path, "seqpacket");
  } catch (err) {
    throw withContext(`connect to remote fd socket ${path}`, err);
  }
  return new RemoteFdConnection(fd, path);
}

type Waiter = { resolve(): void; reject(err: Error): void };

class RemoteFdConnection implements RemoteFDs {
  private requestId = 0;
  private readonly watch: Watch;
  /** Resolved by the poller when the socket can do what the current request waits for. */
  private waiter: Waiter | null = null;
  /** The previous send: requests go out one at a time, so a reply always answers the last one. */
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  private readonly replyBuffer = new Uint8Array(REPLY_BUFFER_BYTES);

  constructor(
    private readonly fd: number,
    readonly path: string,
  ) {
    this.watch = watch(fd, {}, (ev) => this.onReady(ev));
    // Idle: an open RemoteFDs must not keep the process alive; a pending request does.
    this.watch.unref();
  }

  send(...fds: number[]): Promise<bigint[]> {
    const result = this.queue.then(() => this.exchange(fds));
    this.queue = result.catch(() => {});
    return result;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.watch.close();
    closeQuietly(this.fd);
    this.settle(new Error(`remote fds: connection to ${this.path} closed`));
  }

  private async exchange(fds: number[]): Promise<bigint[]> {
    if (fds.length === 0) return [];
    if (fds.length > FD_SOCKET_MAX_FDS) {
      throw new RangeError(`too many file descriptors: ${fds.length} (at most ${FD_SOCKET_MAX_FDS} per send)`);
    }
    for (const fd of fds) {
      if (!(Number.isInteger(fd) && fd >= 0)) throw new TypeError(`remote fds: not a file descriptor: ${fd}`);
    }
    if (this.closed) throw new Error(`remote fds: connection to ${this.path} closed`);
    // A u32 on the wire; Go's uint32 counter wraps the same way.
    this.requestId = (this.requestId + 1) >>> 0;
    const requestId = this.requestId;
    await this.sendRequest(encodeRequest(requestId, fds.length), fds);
    const reply = decodeReply(await this.receiveReply());
    if (reply.requestId !== requestId) {
      throw new Error(`response id does not match: ${reply.requestId} (expected ${requestId})`);
    }
    if (reply.kind === "error") throw new FdSocketServerError(reply.message);
    if (reply.slots.length !== fds.length) {
      throw new Error(`number of fds does not match: ${reply.slots.length} (expected ${fds.length})`);
    }
    return reply.slots;
  }

  private async sendRequest(data: Uint8Array, fds: number[]): Promise<void> {
    for (;;) {
      let sent: number | null;
      try {
        sent = sendMsg(this.fd, data, fds);
      } catch (err) {
        throw withContext("send request", err);
      }
      if (sent !== null) return;
      await this.waitFor({ write: true });
    }
  }

  private async receiveReply(): Promise<Uint8Array> {
    for (;;) {
      let msg;
      try {
        msg = recvMsg(this.fd, this.replyBuffer, 0);
      } catch (err) {
        throw withContext("receive response", err);
      }
      if (msg === null) {
        await this.waitFor({ read: true });
        continue;
      }
      if (msg.n === 0) throw new Error("receive response: the server closed the fd socket connection");
      // A copy: the buffer is reused by the next request.
      return this.replyBuffer.slice(0, msg.n);
    }
  }

  private waitFor(interest: { read?: boolean; write?: boolean }): Promise<void> {
    if (this.closed) return Promise.reject(new Error(`remote fds: connection to ${this.path} closed`));
    return new Promise<void>((resolve, reject) => {
      this.waiter = { resolve, reject };
      this.watch.setInterest(interest);
      this.watch.ref();
    });
  }

  private onReady(_ev: Readiness): void {
    // Whatever happened (data, room, hang-up), the waiting call retries its syscall and finds out.
    this.settle();
  }

  private settle(err?: Error): void {
    const waiter = this.waiter;
    this.waiter = null;
    if (!this.closed) {
      this.watch.setInterest({});
      this.watch.unref();
    }
    if (waiter === null) return;
    if (err) waiter.reject(err);
    else waiter.resolve();
  }
}
