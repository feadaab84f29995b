// Outgoing channel frames of one WebSocket, with a bounded queue of our own in front of Bun's.
//
// Why a queue of our own: Bun's ServerWebSocket.send never blocks; past `backpressureLimit` it
// silently drops (returns 0), and below it buffers without bound per socket. A container's output
// must never wait for a slow client (it is read synchronously and lent to every subscriber), so
// each session decides what a slow client costs: attach drops that client's own data beyond a
// bound, exec keeps up to a larger bound, port-forward stops reading its TCP socket instead
// (`congested` + `onWritable`). Frames the session must not lose (the status) are always kept.

/** What a session needs of Bun's ServerWebSocket (a fake one in unit tests). */
export interface WebSocketLike {
  /** Bun: bytes sent (>0), -1 buffered under backpressure, 0 dropped. */
  send(data: Uint8Array): number;
  getBufferedAmount(): number;
  close(code?: number, reason?: string): void;
  /** Stop / restart reading the client's messages (TCP backpressure towards the client). */
  pause(): void;
  resume(): void;
}

/** Bytes Bun may hold for a socket before we queue instead (and report `congested`). */
export const SEND_HIGH_WATER = 256 * 1024;
/** While frames wait, look again this often, should a drain notification be missed. */
const RETRY_MS = 50;

export type SendPolicy =
  /** Beyond the sender's limit the frame is dropped (counted in `droppedBytes`). */
  | "bounded"
  /** Always queued: status frames, and port-forward data (whose producer pauses itself). */
  | "keep";

export class FrameSender {
  private readonly queue: Uint8Array[] = [];
  private queuedBytes = 0;
  private closed = false;
  private retry: ReturnType<typeof setTimeout> | null = null;
  private flushWaiters: (() => void)[] = [];
  private readonly writableListeners = new Set<() => void>();
  /** Output lost to a client that did not keep up. */
  droppedBytes = 0;
  droppedFrames = 0;

  constructor(
    private readonly ws: WebSocketLike,
    /** Bytes a "bounded" frame may find queued before it is dropped. */
    private readonly limit: number,
  ) {}

  /** Queued here (not yet handed to Bun). */
  get pendingBytes(): number {
    return this.queuedBytes;
  }

  /** True while the client is behind: producers that can wait should stop until `onWritable`. */
  get congested(): boolean {
    return this.closed || this.queue.length > 0 || this.ws.getBufferedAmount() >= SEND_HIGH_WATER;
  }

  /**
   * Sends `[channel] + payload` (copied: the payload may be a borrowed read buffer). Returns false
   * when the frame was dropped or the socket is closed.
   */
  send(channel: number, payload: Uint8Array, policy: SendPolicy): boolean {
    if (this.closed) return false;
    if (policy === "bounded" && this.queue.length > 0 && this.queuedBytes + payload.length + 1 > this.limit) {
      this.droppedBytes += payload.length;
      this.droppedFrames++;
      return false;
    }
    const frame = new Uint8Array(payload.length + 1);
    frame[0] = channel;
    frame.set(payload, 1);
    if (this.queue.length === 0 && this.ws.getBufferedAmount() < SEND_HIGH_WATER) return this.hand(frame);
    this.queue.push(frame);
    this.queuedBytes += frame.length;
    this.scheduleRetry();
    return true;
  }

  /** Bun's drain notification: hand over what waits. */
  onDrain(): void {
    this.flush();
  }

  /** Resolves once everything queued was handed to Bun (or the socket closed). */
  flushed(): Promise<void> {
    if (this.queue.length === 0 || this.closed) return Promise.resolve();
    return new Promise((resolve) => this.flushWaiters.push(resolve));
  }

  /** Called whenever the sender stops being congested; returns the unsubscribe function. */
  onWritable(listener: () => void): () => void {
    this.writableListeners.add(listener);
    if (this.congested) this.scheduleRetry();
    return () => this.writableListeners.delete(listener);
  }

  /** The socket is gone: drop the queue, release waiters. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.queuedBytes = 0;
    if (this.retry !== null) clearTimeout(this.retry);
    this.retry = null;
    this.writableListeners.clear();
    this.releaseFlushWaiters();
  }

  private hand(frame: Uint8Array): boolean {
    // 0 = Bun dropped it (its own limit is set far above SEND_HIGH_WATER, so only a closed socket).
    const status = this.ws.send(frame);
    // Producers waiting in onWritable rely on a later flush; do not count on Bun's drain alone.
    if (this.writableListeners.size > 0 && this.ws.getBufferedAmount() >= SEND_HIGH_WATER) this.scheduleRetry();
    return status !== 0;
  }

  private flush(): void {
    if (this.closed) return;
    while (this.queue.length > 0 && this.ws.getBufferedAmount() < SEND_HIGH_WATER) {
      const frame = this.queue.shift()!;
      this.queuedBytes -= frame.length;
      this.hand(frame);
    }
    if (this.queue.length === 0) this.releaseFlushWaiters();
    if (this.congested) {
      if (this.queue.length > 0 || this.writableListeners.size > 0) this.scheduleRetry();
      return;
    }
    for (const listener of [...this.writableListeners]) listener();
  }

  private scheduleRetry(): void {
    if (this.retry !== null || this.closed) return;
    this.retry = setTimeout(() => {
      this.retry = null;
      this.flush();
    }, RETRY_MS);
  }

  private releaseFlushWaiters(): void {
    const waiters = this.flushWaiters;
    this.flushWaiters = [];
    for (const resolve of waiters) resolve();
  }
}
