// A listening SOCK_SEQPACKET/SOCK_STREAM unix socket served from the poller (attach sockets, the
// fd socket): every pending connection is accepted when the listener becomes readable.

import { errorChain } from "./errors.ts";
import type { Logger } from "./logger.ts";
import { closeQuietly } from "../ffi/fd.ts";
import { watch, type Watch } from "../ffi/poller.ts";
import { acceptConn } from "../ffi/socket.ts";

/** After a failed accept (EMFILE, ...) the connection stays queued: retry later, not every tick. */
const ACCEPT_RETRY_MS = 100;

export class AcceptLoop {
  private watch: Watch | null;
  private fd: number | null;

  /** Takes ownership of `listenFd`; `what` names it in log lines. */
  constructor(
    listenFd: number,
    private readonly what: string,
    private readonly onConnection: (fd: number) => void,
    private readonly log: Logger,
  ) {
    this.fd = listenFd;
    this.watch = watch(listenFd, { read: true }, () => this.acceptPending());
  }

  get listening(): boolean {
    return this.fd !== null;
  }

  /** Accepts everything waiting in the backlog now. */
  acceptPending(): void {
    while (this.fd !== null) {
      let fd: number | null;
      try {
        fd = acceptConn(this.fd);
      } catch (e) {
        this.log.error(`accept on ${this.what}: ${errorChain(e)}`);
        this.pauseAccepting();
        return;
      }
      if (fd === null) return;
      this.onConnection(fd);
    }
  }

  /** Stops watching and closes the listening fd (connections already accepted stay). Idempotent. */
  close(): void {
    this.watch?.close();
    this.watch = null;
    closeQuietly(this.fd);
    this.fd = null;
  }

  private pauseAccepting(): void {
    this.watch?.setInterest({});
    setTimeout(() => this.watch?.setInterest({ read: true }), ACCEPT_RETRY_MS).unref();
  }
}
