import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bindDgram, closeFd, recvMsg } from "../../ffi/index.ts";
import { JournalSender } from "../../src/journal.ts";
import { JournaldLogDriver } from "../../src/log-journald.ts";

const ID = "0123456789abcdef";
const latin1 = (b: Uint8Array) => Buffer.from(b).toString("latin1");
const le64 = (n: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b.toString("latin1");
};
const tail = (stream: string) => `CONTAINER_ID_FULL=${ID}\nCONTAINER_STREAM=${stream}\n`;

describe("journald driver entries", () => {
  const driver = new JournaldLogDriver(ID, new JournalSender({ socketPath: "/nonexistent" }));
  const cases: Array<[name: string, line: Uint8Array, stream: "stdout" | "stderr", expected: string]> = [
    ["full line keeps its \\n (binary form)", Buffer.from("hello\n"), "stdout", `PRIORITY=5\nMESSAGE\n${le64(6)}hello\n\n${tail("stdout")}`],
    ["partial line as-is (simple form)", Buffer.from("part"), "stderr", `PRIORITY=5\nMESSAGE=part\n${tail("stderr")}`],
    ["invalid UTF-8 goes byte for byte", Uint8Array.from([0xff, 0xfe, 0x0a]), "stdout", `PRIORITY=5\nMESSAGE\n${le64(3)}\u00ff\u00fe\n\n${tail("stdout")}`],
    ["stderr still PRIORITY=5 like upstream", Buffer.from("e\n"), "stderr", `PRIORITY=5\nMESSAGE\n${le64(2)}e\n\n${tail("stderr")}`],
  ];
  for (const [name, line, stream, expected] of cases) {
    test(name, () => {
      expect(latin1(driver.encodeEntry(stream, line))).toBe(expected);
    });
  }
});

describe("journald driver against a stand-in socket", () => {
  let dir: string;
  let receiver: number;
  let sender: JournalSender;
  const buf = new Uint8Array(1 << 20);

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "log-journald-"));
    receiver = bindDgram(join(dir, "socket"));
    sender = new JournalSender({ socketPath: join(dir, "socket") });
  });
  afterEach(() => {
    sender.close();
    closeFd(receiver);
    rmSync(dir, { recursive: true, force: true });
  });

  function receiveAll(): string[] {
    const got: string[] = [];
    for (let m = recvMsg(receiver, buf); m; m = recvMsg(receiver, buf)) got.push(latin1(buf.subarray(0, m.n)));
    return got;
  }
  const messageOf = (datagram: string) => {
    const simple = /^PRIORITY=5\nMESSAGE=(.*)\nCONTAINER_ID_FULL/s.exec(datagram);
    if (simple) return simple[1]!;
    const binary = /^PRIORITY=5\nMESSAGE\n[\s\S]{8}([\s\S]*)\nCONTAINER_ID_FULL/.exec(datagram);
    return binary![1]!;
  };

  test("one entry per line, a trailing partial line included", () => {
    const driver = new JournaldLogDriver(ID, sender);
    expect(driver.write("stdout", Buffer.from("a\nbb\nccc"))).toBeUndefined();
    expect(driver.write("stdout", Buffer.from(""))).toBeUndefined();
    expect(receiveAll().map(messageOf)).toEqual(["a\n", "bb\n", "ccc"]);
    driver.close();
  });

  test("journald busy: lines wait in order and the returned promise resolves once sent", async () => {
    const driver = new JournaldLogDriver(ID, sender);
    const lines = Array.from({ length: 200 }, (_, i) => `line ${i}\n`);
    const pending = driver.write("stderr", Buffer.from(lines.join("")));
    expect(pending).toBeInstanceOf(Promise); // the queue holds ~10 datagrams
    const got: string[] = [];
    let settled = false;
    pending!.then(() => (settled = true));
    while (!settled) {
      got.push(...receiveAll());
      await Bun.sleep(1);
    }
    got.push(...receiveAll());
    expect(got.map(messageOf)).toEqual(lines);
    driver.close();
  });

  test("backlog overflow drops the oldest entries and reports it", async () => {
    const errors: string[] = [];
    const driver = new JournaldLogDriver(ID, sender, { backlogLimitBytes: 2000, onError: (e) => errors.push(e.message) });
    const lines = Array.from({ length: 300 }, (_, i) => `l${i}\n`);
    const pending = driver.write("stdout", Buffer.from(lines.join("")));
    let settled = false;
    pending!.then(() => (settled = true));
    const got: string[] = [];
    while (!settled) {
      got.push(...receiveAll());
      await Bun.sleep(1);
    }
    got.push(...receiveAll());
    const messages = got.map(messageOf);
    expect(messages.length).toBeLessThan(lines.length);
    expect(messages.at(-1)).toBe("l299\n"); // the newest survive
    expect(errors.some((m) => /dropped \d+ entries of container/.test(m))).toBe(true);
    driver.close();
  });

  test("no journald: lines are dropped, reported once, nothing throws", () => {
    const errors: string[] = [];
    const driver = new JournaldLogDriver(ID, new JournalSender({ socketPath: join(dir, "absent") }), {
      onError: (e) => errors.push(e.message),
    });
    expect(driver.write("stdout", Buffer.from("a\nb\n"))).toBeUndefined();
    driver.write("stdout", Buffer.from("c\n"));
    expect(errors).toEqual([
      `journald socket '${join(dir, "absent")}' is not available: log lines of container ${ID} are dropped`,
    ]);
    driver.close();
  });

  test("close gives up on what still waits and resolves the flush", async () => {
    const errors: string[] = [];
    const driver = new JournaldLogDriver(ID, sender, { onError: (e) => errors.push(e.message) });
    driver.write("stdout", Buffer.from("x\n".repeat(100)));
    const flushed = driver.flush();
    driver.close();
    await flushed;
    expect(errors.some((m) => m.includes("on close"))).toBe(true);
    expect(driver.write("stdout", Buffer.from("late\n"))).toBeUndefined();
  });
});
