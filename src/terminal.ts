// The console socket of a terminal container (spec §6.4): the runtime (`--console-socket PATH`)
// connects once and sends the pty master over SCM_RIGHTS. Everything here is non-blocking and
// driven by the poller; the one synchronous entry point, receiveNow(), exists for the moment the
// runtime has exited and its message may already sit unread in the socket.
import { chmodSync, renameSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { closeQuietly } from "../ffi/fd.ts";
import { acceptConn, listenUnix, recvMsg } from "../ffi/socket.ts";
import { watch, type Watch } from "../ffi/poller.ts";
import { withContext } from "./errors.ts";

/** runc sends "/dev/ptmx" with the fd, crun a single space; anything that fits is discarded. */
const GREETING_BUFFER_SIZE = 256;

export interface ConsoleSocketHandlers {
  /** The pty master arrived; the callee owns the fd from now on. Called at most once. */
  onMaster(fd: number): void;
  /** The handshake failed for good (runtime hung up without an fd, socket error). At most once. */
  onFailure(err: Error): void;
}

/** `$TMPDIR` or /tmp, like Rust's `std::env::temp_dir()` which upstream uses. */
function tempDir(): string {
  const dir = process.env.TMPDIR;
  return dir !== undefined && dir !== "" ? dir : "/tmp";
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // already gone
  }
}

/**
 * Binds at `path` without a window in which the file exists but refuses connections: the
 * socket is bound under a temporary name, listening and chmod'ed first, and only then renamed
 * into place (a runtime that sees the final name can always connect).
 */
function listenAtomically(path: string): number {
  const tmpPath = `${path}.${process.pid}.tmp`;
  const fd = listenUnix(tmpPath, "stream", 1);
  try {
    chmodSync(tmpPath, 0o700);
    renameSync(tmpPath, path);
    return fd;
  } catch (e) {
    closeQuietly(fd);
    unlinkQuietly(tmpPath);
    throw e;
  }
}

export class ConsoleSocket {
  readonly path: string;
  private listenFd: number | null;
  private listenWatch: Watch | null = null;
  private connFd: number | null = null;
  private connWatch: Watch | null = null;
  private readonly greeting = new Uint8Array(GREETING_BUFFER_SIZE);
  /** Set once onMaster or onFailure has been called, or close() ran. */
  private settled = false;

  private constructor(
    path: string,
    listenFd: number,
    private readonly handlers: ConsoleSocketHandlers,
  ) {
    this.path = path;
    this.listenFd = listenFd;
    this.listenWatch = watch(listenFd, { read: true }, () => this.guard(() => this.acceptPending()));
  }

  /** Listens at `$TMPDIR/conmon-term-<uuid>.sock` (mode 0700). */
  static open(handlers: ConsoleSocketHandlers): ConsoleSocket {
    const path = join(tempDir(), `conmon-term-${crypto.randomUUID()}.sock`);
    let fd: number;
    try {
      fd = listenAtomically(path);
    } catch (e) {
      throw withContext(`create console socket ${path}`, e);
    }
    try {
      return new ConsoleSocket(path, fd, handlers);
    } catch (e) {
      closeQuietly(fd);
      unlinkQuietly(path);
      throw e;
    }
  }

  /** True once the master arrived or the handshake failed. */
  get done(): boolean {
    return this.settled;
  }

  /**
   * Runs the handshake steps that are possible right now, synchronously. When the runtime has
   * exited, whatever it sent is already queued in the socket, but the poller may not have had
   * its turn yet; this drains it so "exited without connecting" is only said when true.
   */
  receiveNow(): void {
    this.guard(() => {
      if (this.listenFd !== null) this.acceptPending();
      if (this.connFd !== null) this.receivePending();
    });
  }

  /** Releases the listener, the connection and the socket file. Idempotent. */
  close(): void {
    this.settled = true;
    this.stopListening();
    this.dropConnection();
  }

  private guard(step: () => void): void {
    if (this.settled) return;
    try {
      step();
    } catch (e) {
      this.fail(withContext(`console socket ${this.path}`, e));
    }
  }

  private acceptPending(): void {
    if (this.listenFd === null) return;
    const conn = acceptConn(this.listenFd);
    if (conn === null) return;
    // Exactly one runtime connects; nobody else may use the path afterwards.
    this.stopListening();
    this.connFd = conn;
    this.connWatch = watch(conn, { read: true }, () => this.guard(() => this.receivePending()));
  }

  private receivePending(): void {
    if (this.connFd === null) return;
    for (;;) {
      const msg = recvMsg(this.connFd, this.greeting, 1);
      if (msg === null) return; // connected, nothing sent yet
      const [master, ...extra] = msg.fds;
      for (const fd of extra) closeQuietly(fd);
      if (master !== undefined) {
        this.settled = true;
        this.dropConnection();
        this.handlers.onMaster(master);
        return;
      }
      // Data without an fd is tolerated (the greeting may arrive split); a hang-up is not.
      if (msg.n === 0) {
        this.fail(new Error("got no file descriptor"));
        return;
      }
    }
  }

  private fail(err: Error): void {
    if (this.settled) return;
    this.close();
    this.handlers.onFailure(err);
  }

  private stopListening(): void {
    this.listenWatch?.close();
    this.listenWatch = null;
    if (this.listenFd !== null) {
      closeQuietly(this.listenFd);
      this.listenFd = null;
      unlinkQuietly(this.path);
    }
  }

  private dropConnection(): void {
    this.connWatch?.close();
    this.connWatch = null;
    closeQuietly(this.connFd);
    this.connFd = null;
  }
}
