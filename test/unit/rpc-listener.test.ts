// The listener's write path (partial writes, backlog, drain) and idle collection, over a real
// unix socket with our TS client on the other end.
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RpcClient } from "../../src/client/rpc-client.ts";
import { IdleCollector, listenRpc, type RpcListener } from "../../src/rpc/listener.ts";
import { BacklogFullError, WriteQueue, type Writable } from "../../src/rpc/write-queue.ts";
import { conmonService } from "../../src/service.ts";

/** A socket that takes at most `room` bytes per write (or -1 when closed) and records them. */
function fakeSocket(room: number) {
  const got: number[] = [];
  const socket: Writable & { room: number; closed: boolean } = {
    room,
    closed: false,
    write(bytes) {
      if (this.closed) return -1;
      const n = Math.min(this.room, bytes.byteLength);
      got.push(...bytes.subarray(0, n));
      return n;
    },
  };
  return { socket, got };
}

describe("WriteQueue", () => {
  test("partial writes are queued as copies and go out in order on flush", () => {
    const { socket, got } = fakeSocket(3);
    const q = new WriteQueue();
    const reused = Uint8Array.of(1, 2, 3, 4, 5);
    q.write(socket, reused);
    reused.fill(0); // the connection reuses its buffer once write() returns
    q.write(socket, Uint8Array.of(6, 7)); // behind the backlog: not written yet
    expect(got).toEqual([1, 2, 3]);
    expect(q.pending).toBe(4);
    socket.room = 1;
    q.flush(socket);
    expect(got).toEqual([1, 2, 3, 4]);
    socket.room = 100;
    q.flush(socket);
    expect(got).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(q.pending).toBe(0);
  });

  test("a closed socket drops the bytes, a peer that never reads hits the bound", () => {
    const { socket, got } = fakeSocket(0);
    socket.closed = true;
    const q = new WriteQueue(10);
    q.write(socket, new Uint8Array(100));
    expect([got.length, q.pending]).toEqual([0, 0]);
    socket.closed = false;
    q.write(socket, new Uint8Array(6));
    expect(() => q.write(socket, new Uint8Array(6))).toThrow(BacklogFullError);
  });
});

describe("IdleCollector", () => {
  test("collects once after traffic stops, not while it goes on", async () => {
    let collected = 0;
    const idle = new IdleCollector(20, () => collected++);
    for (let i = 0; i < 6; i++) {
      idle.touch();
      await Bun.sleep(10);
    }
    expect(collected).toBe(0);
    await Bun.sleep(60);
    expect(collected).toBe(1);
    await Bun.sleep(60);
    expect(collected).toBe(1);
    idle.touch();
    idle.stop();
    await Bun.sleep(60);
    expect(collected).toBe(1);
  });

  test("schedule(): one collection after a quiet period with no traffic at all (start-up)", async () => {
    let collected = 0;
    const idle = new IdleCollector(20, () => collected++);
    idle.schedule();
    idle.schedule();
    await Bun.sleep(10);
    expect(collected).toBe(0);
    await Bun.sleep(40);
    expect(collected).toBe(1);
    await Bun.sleep(60);
    expect(collected).toBe(1);
  });
});

describe("listenRpc", () => {
  let dir: string;
  let listener: RpcListener | undefined;
  afterEach(() => {
    listener?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("large results through a full socket buffer arrive intact and in order", async () => {
    dir = mkdtempSync(join(tmpdir(), "rpc-listener-"));
    const pattern = (seed: number, n: number) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);
    listener = listenRpc(
      join(dir, "conmon.sock"),
      conmonService({
        execSyncContainer: async (params: any, results: any) => {
          const size = Number(params.request.timeoutSec);
          const response = results._initResponse();
          response.exitCode = size % 1000;
          response._initStdout(size).copyBuffer(pattern(size & 0xff, size));
        },
      }),
      { debug() {}, warn() {} },
    );
    const client = await RpcClient.connect(join(dir, "conmon.sock"));
    // Sizes on both sides of the 64 KiB direct-write threshold, all in flight at once, so the
    // socket buffer fills and the replies queue behind each other.
    const sizes = [5, 3 << 20, 70_000, 100, 1 << 20, 65_535, 2 << 20, 0];
    const replies = await Promise.all(
      sizes.map((size) => client.call<any>(2, (p) => (p._initRequest().timeoutSec = BigInt(size)))),
    );
    replies.forEach((r, i) => {
      const size = sizes[i]!;
      expect(r.response.exitCode).toBe(size % 1000);
      const stdout: Uint8Array = r.response.stdout.toUint8Array();
      expect(stdout.length).toBe(size);
      expect(Buffer.compare(stdout, pattern(size & 0xff, size))).toBe(0);
    });
    client.close();
  });
});
