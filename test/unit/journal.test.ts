import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { fstatSync, mkdtempSync, readSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bindDgram, closeFd, recvMsg } from "../../ffi/index.ts";
import { JournalSender, encodeJournalEntry, isValidJournalFieldName } from "../../src/journal.ts";

const enc = new TextEncoder();
const latin1 = (b: Uint8Array) => Buffer.from(b).toString("latin1");
const le64 = (n: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b.toString("latin1");
};

describe("journal field encoding", () => {
  const cases: Array<[name: string, fields: Array<[string, string | Uint8Array]>, expected: string]> = [
    ["simple value", [["MESSAGE", "hello"]], "MESSAGE=hello\n"],
    ["empty value", [["MESSAGE", ""]], "MESSAGE=\n"],
    ["value with a newline → binary form", [["MESSAGE", "hello\n"]], `MESSAGE\n${le64(6)}hello\n\n`],
    ["only a newline", [["MESSAGE", "\n"]], `MESSAGE\n${le64(1)}\n\n`],
    ["several fields in order", [["PRIORITY", "5"], ["MESSAGE", "a\nb"], ["X_Y2", "z"]], `PRIORITY=5\nMESSAGE\n${le64(3)}a\nb\nX_Y2=z\n`],
    ["binary value without newline stays simple", [["DATA", Uint8Array.from([0, 0xff, 0x3d])]], "DATA=\u0000\u00ff=\n"],
    ["UTF-8 value", [["MESSAGE", "é✓"]], `MESSAGE=${latin1(enc.encode("é✓"))}\n`],
  ];
  for (const [name, fields, expected] of cases) {
    test(name, () => {
      expect(latin1(encodeJournalEntry(fields))).toBe(expected);
    });
  }

  test("field names journald would drop are refused", () => {
    for (const bad of ["message", "_PID", "1A", "A-B", "", "A".repeat(65), "MESSAGE="]) {
      expect(isValidJournalFieldName(bad)).toBe(false);
      expect(() => encodeJournalEntry([[bad, "x"]])).toThrow("invalid journal field name");
    }
    for (const good of ["MESSAGE", "PRIORITY", "CONTAINER_ID_FULL", "A1", "A".repeat(64)]) {
      expect(isValidJournalFieldName(good)).toBe(true);
    }
  });
});

describe("JournalSender against a stand-in socket", () => {
  let dir: string;
  let receiver: number;
  let socketPath: string;
  let sender: JournalSender;
  const buf = new Uint8Array(1 << 20);

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "journal-"));
    socketPath = join(dir, "socket");
    receiver = bindDgram(socketPath);
    sender = new JournalSender({ socketPath, busyTimeoutMs: 20 });
  });
  afterEach(() => {
    sender.close();
    closeFd(receiver);
    rmSync(dir, { recursive: true, force: true });
  });

  test("one datagram per entry", () => {
    expect(sender.send([["PRIORITY", "5"], ["MESSAGE", "hi\n"]])).toBe(true);
    const msg = recvMsg(receiver, buf)!;
    expect(latin1(buf.subarray(0, msg.n))).toBe(`PRIORITY=5\nMESSAGE\n${le64(3)}hi\n\n`);
  });

  test("an entry too big for a datagram goes as a sealed memfd with empty data", () => {
    const big = "x".repeat(300 * 1024);
    expect(sender.send([["MESSAGE", big]])).toBe(true);
    const msg = recvMsg(receiver, buf, 4)!;
    expect(msg.n).toBe(0);
    expect(msg.fds.length).toBe(1);
    const fd = msg.fds[0]!;
    try {
      const size = fstatSync(fd).size;
      const content = Buffer.alloc(size);
      readSync(fd, content, 0, size, 0);
      expect(content.toString("latin1")).toBe(`MESSAGE=${big}\n`);
      // Sealed (F_SEAL_WRITE among others), as libsystemd does: writes must fail.
      expect(() => require("node:fs").writeSync(fd, "y", 0)).toThrow();
    } finally {
      closeFd(fd);
    }
  });

  test("no socket → false (caller falls back)", () => {
    const absent = new JournalSender({ socketPath: join(dir, "nothing-here") });
    expect(absent.send([["MESSAGE", "x"]])).toBe(false);
    absent.close();
  });

  test("stale socket file (journald gone) → false", () => {
    closeFd(receiver);
    receiver = bindDgram(join(dir, "other")); // keep afterEach's close valid
    expect(sender.send([["MESSAGE", "x"]])).toBe(false); // socketPath's file is left, unbound
  });

  test("a full queue: trySend says busy, send gives up after its timeout", () => {
    const entry = encodeJournalEntry([["MESSAGE", "fill"]]);
    let sent = 0;
    while (sender.trySend(entry) === "sent") {
      sent++;
      if (sent > 100_000) throw new Error("queue never filled");
    }
    expect(sender.trySend(entry)).toBe("busy");
    expect(() => sender.send([["MESSAGE", "x"]])).toThrow("queue full");
    // draining one makes room again
    expect(recvMsg(receiver, buf)).not.toBeNull();
    expect(sender.trySend(entry)).toBe("sent");
  });
});
