// sd_notify(3) for `Type=notify` units (contrib/systemd/conmonrs@.service).
//
// systemd passes the address of its notification socket in NOTIFY_SOCKET: an absolute path, or
// "@name" for the abstract namespace. We send `READY=1` once conmon.sock accepts connections (so
// `systemctl start` returns only when clients can connect) and `STOPPING=1` when shutdown begins.
//
// The variable is taken out of our environment as soon as it is read: runc treats an inherited
// NOTIFY_SOCKET as a request to proxy the CONTAINER's readiness to systemd (it binds a socket in
// its state dir, mounts it into the container and, on `runc start`, waits for the container's
// READY=1), which is neither what the unit means nor what the engine expects.

import { closeQuietly } from "../ffi/fd.ts";
import { dgramSocket, sendDatagram } from "../ffi/socket.ts";
import { sendAbstractDatagram } from "../ffi/notify.ts";
import { errorChain, withContext } from "./errors.ts";
import type { Logger } from "./logger.ts";

/** How long a send may wait while systemd's queue is full before the message is given up. */
const BUSY_TIMEOUT_MS = 1000;
const BUSY_RETRY_MS = 10;

const encoder = new TextEncoder();

/** Throws unless `address` is a form we can send to (libsystemd also knows "vsock:"; we do not). */
export function checkNotifyAddress(address: string): void {
  if (address.startsWith("/")) return;
  if (address.startsWith("@") && address.length > 1) return;
  throw new Error(`unsupported NOTIFY_SOCKET '${address}': expected an absolute path or @abstract-name`);
}

/** One datagram to `address`; null when the receiver's queue is full. */
function sendOnce(address: string, data: Uint8Array): number | null {
  const fd = dgramSocket();
  try {
    return address.startsWith("@") ? sendAbstractDatagram(fd, address.slice(1), data) : sendDatagram(fd, address, data);
  } finally {
    closeQuietly(fd);
  }
}

/**
 * Sends `assignments` ("READY=1", "MAINPID=42", ...) as one notification to `address`.
 * A full queue is retried for up to a second: losing READY=1 would make systemd time the start out.
 */
export async function sendNotification(address: string, assignments: readonly string[]): Promise<void> {
  checkNotifyAddress(address);
  const data = encoder.encode(`${assignments.join("\n")}\n`);
  const deadline = performance.now() + BUSY_TIMEOUT_MS;
  try {
    while (sendOnce(address, data) === null) {
      if (performance.now() >= deadline) throw new Error(`queue still full after ${BUSY_TIMEOUT_MS} ms`);
      await Bun.sleep(BUSY_RETRY_MS);
    }
  } catch (err) {
    throw withContext(`notify '${address}' (${assignments.join(", ")})`, err);
  }
}

/** The server's link to its service manager; absent unless NOTIFY_SOCKET was set. */
export class SdNotifier {
  private constructor(
    readonly address: string,
    private readonly log: Logger,
  ) {}

  /**
   * Takes NOTIFY_SOCKET out of `env` (so no child inherits it) and returns a notifier for it.
   * Undefined when it is unset, empty, or not an address we support (that is logged: systemd will
   * then time the start out, and the log says why).
   */
  static fromEnv(log: Logger, env: Record<string, string | undefined> = process.env): SdNotifier | undefined {
    const address = env.NOTIFY_SOCKET;
    delete env.NOTIFY_SOCKET;
    if (!address) return undefined;
    try {
      checkNotifyAddress(address);
    } catch (err) {
      log.warn(`Not notifying the service manager: ${errorChain(err)}`);
      return undefined;
    }
    return new SdNotifier(address, log);
  }

  /** The RPC socket accepts: systemd may consider the unit started. */
  ready(socketPath: string): Promise<void> {
    return this.send(["READY=1", `MAINPID=${process.pid}`, `STATUS=Serving ${socketPath}`]);
  }

  /** Shutdown began (containers are being killed and recorded). */
  stopping(): Promise<void> {
    return this.send(["STOPPING=1", "STATUS=Stopping: killing containers and recording their exit"]);
  }

  /** Failures are logged, never thrown: the server works the same without its service manager. */
  private async send(assignments: string[]): Promise<void> {
    try {
      await sendNotification(this.address, assignments);
      this.log.debug(`Notified the service manager: ${assignments[0]}`);
    } catch (err) {
      this.log.warn(errorChain(err));
    }
  }
}
