// FrameSender against a fake WebSocket whose buffered amount the test controls.
import { expect, test } from "bun:test";
import { FrameSender, SEND_HIGH_WATER, type WebSocketLike } from "../../src/streaming/sender.ts";

class FakeSocket implements WebSocketLike {
  buffered = 0;
  readonly sent: Uint8Array[] = [];
  closed: [number?, string?] | null = null;
  paused = false;

  send(data: Uint8Array): number {
    this.sent.push(data);
    this.buffered += data.length;
    return -1;
  }
  getBufferedAmount(): number {
    return this.buffered;
  }
  close(code?: number, reason?: string): void {
    this.closed = [code, reason];
  }
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
  }
  /** The peer read everything. */
  drainAll(): void {
    this.buffered = 0;
  }
}

const bytes = (n: number, fill = 7) => new Uint8Array(n).fill(fill);

test("frames are [channel] + a copy of the payload", () => {
  const ws = new FakeSocket();
  const sender = new FrameSender(ws, 1000);
  const borrowed = new Uint8Array([1, 2, 3]);
  expect(sender.send(2, borrowed, "bounded")).toBe(true);
  borrowed.fill(0); // the reader reuses its buffer
  expect([...ws.sent[0]!]).toEqual([2, 1, 2, 3]);
});

test("past the high-water mark frames queue in order and go out on drain", async () => {
  const ws = new FakeSocket();
  const sender = new FrameSender(ws, Number.MAX_SAFE_INTEGER);
  sender.send(1, bytes(SEND_HIGH_WATER), "bounded");
  expect(sender.congested).toBe(true);
  sender.send(1, new Uint8Array([1]), "bounded");
  sender.send(3, new Uint8Array([2]), "keep");
  expect(ws.sent.length).toBe(1);
  expect(sender.pendingBytes).toBe(4);
  let flushed = false;
  void sender.flushed().then(() => (flushed = true));
  ws.drainAll();
  sender.onDrain();
  expect(ws.sent.map((f) => f[0])).toEqual([1, 1, 3]);
  await Bun.sleep(0);
  expect(flushed).toBe(true);
  expect(sender.congested).toBe(false);
});

test("a bounded stream drops beyond its limit; kept frames (the status) never drop", () => {
  const ws = new FakeSocket();
  const sender = new FrameSender(ws, 1000);
  ws.buffered = SEND_HIGH_WATER; // the client stopped reading
  for (let i = 0; i < 10; i++) sender.send(1, bytes(300), "bounded");
  expect(sender.pendingBytes).toBe(3 * 301);
  expect(sender.droppedFrames).toBe(7);
  expect(sender.droppedBytes).toBe(7 * 300);
  expect(sender.send(3, bytes(5000), "keep")).toBe(true);
  ws.drainAll();
  sender.onDrain();
  expect(ws.sent.map((f) => [f[0], f.length])).toEqual([[1, 301], [1, 301], [1, 301], [3, 5001]]);
});

test("writable listeners hear when the client caught up, also without a drain event", async () => {
  const ws = new FakeSocket();
  const sender = new FrameSender(ws, 1000);
  ws.buffered = SEND_HIGH_WATER;
  let woke = 0;
  sender.onWritable(() => woke++);
  ws.drainAll(); // Bun never tells us: the retry timer notices
  await Bun.sleep(120);
  expect(woke).toBeGreaterThanOrEqual(1);
});

test("close drops the queue, releases flush waiters and refuses further frames", async () => {
  const ws = new FakeSocket();
  const sender = new FrameSender(ws, 1000);
  ws.buffered = SEND_HIGH_WATER;
  sender.send(1, bytes(10), "keep");
  const waiting = sender.flushed();
  sender.close();
  await waiting;
  expect(sender.pendingBytes).toBe(0);
  expect(sender.send(1, bytes(1), "keep")).toBe(false);
  expect(ws.sent.length).toBe(0);
});
