// The sessions a serve* RPC prepared and a WebSocket request may claim, keyed by an unguessable
// token (spec §14: LRU of 25, one hour, single use). The token is the only credential a client
// of the streaming URL presents, so it comes from the CSPRNG and is never reused.


export const SESSION_CAPACITY = 25;
export const SESSION_MAX_AGE_MS = 60 * 60 * 1000;

type Entry<T> = { value: T; createdAt: number };

export interface SessionStoreOptions {
  capacity?: number;
  maxAgeMs?: number;
  /** Monotonic clock in ms (default performance.now: wall-clock jumps must not expire or keep
   * sessions); tests move it forward to expire sessions. */
  now?: () => number;
}

export class SessionStore<T> {
  // A Map iterates in insertion order: the first entry is always the oldest.
  private readonly entries = new Map<string, Entry<T>>();
  private readonly capacity: number;
  private readonly maxAgeMs: number;
  private readonly now: () => number;

  constructor(opts: SessionStoreOptions = {}) {
    this.capacity = opts.capacity ?? SESSION_CAPACITY;
    this.maxAgeMs = opts.maxAgeMs ?? SESSION_MAX_AGE_MS;
    this.now = opts.now ?? (() => performance.now());
  }

  get size(): number {
    this.dropExpired();
    return this.entries.size;
  }

  /** Stores `value` under a fresh token; a full store forgets its oldest session. */
  add(value: T): string {
    this.dropExpired();
    while (this.entries.size >= this.capacity) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
    const token = crypto.randomUUID();
    this.entries.set(token, { value, createdAt: this.now() });
    return token;
  }

  /** The session, without claiming it (the request may still be refused). */
  peek(token: string): T | undefined {
    this.dropExpired();
    return this.entries.get(token)?.value;
  }

  /** Claims the session: it can never be used again. */
  take(token: string): T | undefined {
    const value = this.peek(token);
    this.entries.delete(token);
    return value;
  }

  private dropExpired(): void {
    const cutoff = this.now() - this.maxAgeMs;
    for (const [token, entry] of this.entries) {
      if (entry.createdAt > cutoff) break; // insertion order = age order
      this.entries.delete(token);
    }
  }
}

/** The life of one claimed session on its WebSocket; the server routes Bun's callbacks here. */
export interface StreamSession {
  /** The upgrade completed. */
  open(ws: import("./sender.ts").WebSocketLike): void;
  /** A binary message from the client (text messages are ignored, as upstream). */
  message(data: Uint8Array): void;
  /** Bun can take more outgoing data. */
  drain(): void;
  /** The WebSocket closed, by either side; release everything. */
  closed(): void;
}
