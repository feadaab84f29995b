// Port-forward sessions (upstream: todo!() and a panic, Q13). The Kubernetes WebSocket
// port-forward protocol as the kubelet serves it: for the i-th requested port, channel 2i carries
// data and 2i+1 errors; the first message on each of the two is the port as uint16 little-endian;
// one TCP connection per port to the pod's loopback, made inside the pod's network namespace
// (netns-socket.ts). The session ends (close 1000) once every port's connection has ended; a port
// that cannot be reached reports on its error channel. Nothing is dropped: a slow client stops
// us reading the pod's socket, and a pod that does not read stops us reading the client.

import { errorChain } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { Channel, dataChannel, portPrefix } from "./protocol.ts";
import { FrameSender, type WebSocketLike } from "./sender.ts";
import type { StreamSession } from "./sessions.ts";
import { LoopbackConnection, NetNamespace, loopbackAddress } from "../../ffi/netns-tcp.ts";

/** Bytes from the client queued for one port before we stop reading the client. */
export const PORT_WRITE_PAUSE_BYTES = 1024 * 1024;

const encoder = new TextEncoder();

export interface PortForwardRequest {
  /** Path of the pod's network namespace; "" = the server's own. */
  netNsPath: string;
}

class ForwardedPort {
  readonly connection: LoopbackConnection;
  ended = false;

  constructor(
    readonly index: number,
    readonly port: number,
    ns: NetNamespace,
    private readonly session: PortForwardSession,
  ) {
    this.connection = new LoopbackConnection(ns, port, {
      onConnected: (family) => session.log.debug(`${session.label}: port ${port} connected to ${loopbackAddress(family)}`),
      onData: (chunk) => session.fromPod(this, chunk),
      onEnd: () => session.portEnded(this),
      onError: (err) => session.portFailed(this, err),
      onWriteDrained: () => session.portDrained(),
    });
  }

  get data(): number {
    return dataChannel(this.index);
  }

  get error(): number {
    return dataChannel(this.index) + 1;
  }
}

export class PortForwardSession implements StreamSession {
  readonly label: string;
  private ws: WebSocketLike | null = null;
  private sender: FrameSender | null = null;
  private ns: NetNamespace | null = null;
  private ports: ForwardedPort[] = [];
  private gone = false;
  private closing = false;
  private clientPaused = false;

  constructor(
    private readonly req: PortForwardRequest,
    private readonly portNumbers: number[],
    readonly log: Logger,
  ) {
    this.label = `port-forward session (${req.netNsPath || "host network"}, ports ${portNumbers.join(",")})`;
  }

  open(ws: WebSocketLike): void {
    this.ws = ws;
    // "keep": the pod's data is never dropped; fromPod() pauses the socket instead.
    this.sender = new FrameSender(ws, Number.MAX_SAFE_INTEGER);
    this.sender.onWritable(() => this.resumePorts());
    this.portNumbers.forEach((port, i) => {
      this.sender!.send(dataChannel(i), portPrefix(port), "keep");
      this.sender!.send(dataChannel(i) + 1, portPrefix(port), "keep");
    });
    try {
      this.ns = NetNamespace.open(this.req.netNsPath);
    } catch (err) {
      const message = `open network namespace: ${errorChain(err)}`;
      this.portNumbers.forEach((port, i) => this.sendError(dataChannel(i) + 1, port, message));
      void this.finish();
      return;
    }
    this.ports = this.portNumbers.map((port, i) => new ForwardedPort(i, port, this.ns!, this));
    for (const p of this.ports) p.connection.connect();
  }

  message(data: Uint8Array): void {
    if (this.gone || data.length === 0) return;
    const channel = data[0]!;
    if (channel === Channel.close) {
      // [255, data channel]: the client finished sending on that port (v5-style half-close).
      const port = data.length === 2 ? this.portOn(data[1]!) : undefined;
      port?.connection.shutdownWrite();
      return;
    }
    const port = this.portOn(channel);
    if (!port) {
      this.log.debug(`${this.label}: ignoring a message on channel ${channel}`);
      return;
    }
    if (port.ended) return;
    port.connection.write(data.subarray(1));
    if (port.connection.pendingWrite > PORT_WRITE_PAUSE_BYTES && !this.clientPaused) {
      this.clientPaused = true;
      this.ws!.pause();
    }
  }

  drain(): void {
    this.sender?.onDrain();
  }

  closed(): void {
    if (this.gone) return;
    this.gone = true;
    this.sender?.close();
    for (const p of this.ports) p.connection.close();
    this.ns?.close();
  }

  // ---- from the connections ---------------------------------------------------------------------

  /** Returns false to have the connection stop reading until the client catches up. */
  fromPod(port: ForwardedPort, chunk: Uint8Array): boolean {
    if (this.gone) return false;
    this.sender!.send(port.data, chunk, "keep");
    return !this.sender!.congested;
  }

  portEnded(port: ForwardedPort): void {
    port.ended = true;
    this.portDrained(); // its backlog is gone with it
    this.log.debug(`${this.label}: port ${port.port} closed by the pod`);
    this.maybeFinish();
  }

  portFailed(port: ForwardedPort, err: Error): void {
    port.ended = true;
    this.portDrained();
    this.log.warn(`${this.label}: port ${port.port}: ${errorChain(err)}`);
    this.sendError(port.error, port.port, errorChain(err));
    this.maybeFinish();
  }

  /** A port's write backlog emptied: read the client again if it was paused for that. */
  portDrained(): void {
    if (!this.clientPaused || this.gone) return;
    if (this.ports.some((p) => !p.ended && p.connection.pendingWrite > PORT_WRITE_PAUSE_BYTES)) return;
    this.clientPaused = false;
    this.ws!.resume();
  }

  // ---- internals --------------------------------------------------------------------------------

  private portOn(channel: number): ForwardedPort | undefined {
    return channel % 2 === 0 ? this.ports[channel / 2] : undefined;
  }

  private sendError(channel: number, port: number, message: string): void {
    const where = this.req.netNsPath ? ` in network namespace ${this.req.netNsPath}` : "";
    this.sender!.send(channel, encoder.encode(`error forwarding port ${port}${where}: ${message}`), "keep");
  }

  private resumePorts(): void {
    for (const p of this.ports) if (!p.ended) p.connection.resumeReading();
  }

  private maybeFinish(): void {
    if (this.ports.every((p) => p.ended)) void this.finish();
  }

  /** Everything out, then close 1000 (the protocol has no status message). */
  private async finish(): Promise<void> {
    if (this.closing || this.gone) return;
    this.closing = true;
    await this.sender!.flushed();
    if (!this.gone) this.ws!.close(1000, "done");
  }
}
