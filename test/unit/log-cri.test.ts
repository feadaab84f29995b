import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, chmodSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  CachedCriClock,
  CriEncoder,
  CriLogDriver,
  criRecordSize,
  encodeCriChunk,
  formatEpochMillis,
  formatRfc3339Utc,
  MAX_SLICE_INPUT,
  MIN_SLICE_INPUT,
  nextSliceInput,
  preciseWallClockMillis,
  sliceEnd,
  type TimestampClock,
} from "../../src/log-cri.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const TS = "2026-01-02T03:04:05.123456789Z"; // the longest upstream timestamp: prefix of 40 bytes

const bytes = (s: string) => enc.encode(s);
const text = (b: Uint8Array) => Buffer.from(b).toString("latin1");

/** The format written the obvious way, to check the fast encoder against. */
function referenceEncode(chunk: Uint8Array, stream: string, ts: string): Uint8Array {
  const parts: number[] = [];
  let start = 0;
  while (start < chunk.length) {
    const nl = chunk.indexOf(10, start);
    const end = nl < 0 ? chunk.length : nl + 1;
    parts.push(...bytes(`${ts} ${stream} ${nl < 0 ? "P" : "F"} `), ...chunk.subarray(start, end));
    if (nl < 0) parts.push(10);
    start = end;
  }
  return Uint8Array.from(parts);
}

describe("CRI encoder", () => {
  const cases: Array<[name: string, input: Uint8Array, expected: string]> = [
    ["empty chunk", bytes(""), ""],
    ["single full line", bytes("hello\n"), `${TS} stdout F hello\n`],
    ["multiple lines", bytes("a\nbb\nccc\n"), `${TS} stdout F a\n${TS} stdout F bb\n${TS} stdout F ccc\n`],
    ["trailing partial", bytes("one\ntw"), `${TS} stdout F one\n${TS} stdout P tw\n`],
    ["only a partial", bytes("no-newline-yet"), `${TS} stdout P no-newline-yet\n`],
    ["only \\n", bytes("\n"), `${TS} stdout F \n`],
    ["empty lines", bytes("\n\n"), `${TS} stdout F \n${TS} stdout F \n`],
    ["CRLF from a tty", bytes("hello\r\nworld\r\n"), `${TS} stdout F hello\r\n${TS} stdout F world\r\n`],
    ["lone CR stays content", bytes("a\rb"), `${TS} stdout P a\rb\n`],
  ];
  for (const [name, input, expected] of cases) {
    test(name, () => {
      expect(text(encodeCriChunk(input, "stdout", TS))).toBe(expected);
    });
  }

  test("4096-byte line without newline is a single P record", () => {
    const line = new Uint8Array(4096).fill(0x78);
    const out = encodeCriChunk(line, "stdout", TS);
    expect(text(out)).toBe(`${TS} stdout P ${"x".repeat(4096)}\n`);
  });

  test("binary bytes pass through unchanged", () => {
    const input = Uint8Array.from([0x00, 0xff, 0xfe, 0x0a, 0x80, 0x7f, 0x1b, 0x0a, 0x00]);
    const out = encodeCriChunk(input, "stderr", TS);
    expect(out).toEqual(referenceEncode(input, "stderr", TS));
    expect(out.subarray(out.length - 4)).toEqual(Uint8Array.from([0x50, 0x20, 0x00, 0x0a])); // "P \0\n"
  });

  test("UTF-8 multibyte content is copied byte for byte", () => {
    const input = bytes("héllo wörld ✓ 😀\nマルチバイト");
    expect(dec.decode(encodeCriChunk(input, "stdout", TS))).toBe(
      `${TS} stdout F héllo wörld ✓ 😀\n${TS} stdout P マルチバイト\n`,
    );
  });

  test("stderr records", () => {
    expect(text(encodeCriChunk(bytes("e\nf"), "stderr", TS))).toBe(`${TS} stderr F e\n${TS} stderr P f\n`);
  });

  // Every timestamp length the word-store prefix path handles (30..40 byte prefixes), plus a short
  // and an over-long one that take the fallback path; line lengths around the 8-byte word and the
  // 256-byte budget boundaries; chunk ends at every offset within a word.
  test("matches the reference for random chunks, every prefix length and line length", () => {
    const timestamps = [
      "2026-01-02T03:04:05Z",
      "2026-01-02T03:04:05.1Z",
      "2026-01-02T03:04:05.12Z",
      "2026-01-02T03:04:05.123Z",
      "2026-01-02T03:04:05.1234Z",
      "2026-01-02T03:04:05.12345Z",
      "2026-01-02T03:04:05.123456Z",
      "2026-01-02T03:04:05.1234567Z",
      "2026-01-02T03:04:05.12345678Z",
      TS,
      "x",
      "ts",
      "2026-01-02T03:04:05.123456789+00:00 extra-long-timestamp",
    ];
    let seed = 12345;
    const random = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const lengths = [0, 1, 2, 7, 8, 9, 15, 16, 17, 100, 255, 256, 257, 263, 264, 265, 600, 5000];
    const encoder = new CriEncoder(true);
    for (let round = 0; round < 400; round++) {
      const parts: number[] = [];
      const target = 1 + random(9000);
      while (parts.length < target) {
        const len = random(4) === 0 ? random(700) : lengths[random(lengths.length)]!;
        for (let i = 0; i < len; i++) parts.push(random(5) === 0 ? random(256) & 0xf5 : 0x41 + random(26));
        parts.push(10);
      }
      const chunk = Uint8Array.from(parts.slice(0, target - random(9))); // often ends mid-line
      const ts = timestamps[round % timestamps.length]!;
      const stream = round % 2 ? "stderr" : "stdout";
      const expected = referenceEncode(chunk, stream, ts);
      const out = encoder.encode(chunk, stream, ts);
      expect(out.length).toBe(expected.length);
      expect(Buffer.compare(Buffer.from(out), Buffer.from(expected))).toBe(0);
      // record boundaries: each record ends with \n and has the size upstream accounts for
      let start = 0;
      for (let r = 0; r < encoder.recordCount; r++) {
        const end = encoder.recordEnds[r]!;
        expect(out[end - 1]).toBe(10);
        const tag = out[start + ts.length + 8];
        const partial = tag === 0x50;
        expect(end - start).toBe(criRecordSize(end - start - ts.length - 10 - (partial ? 1 : 0), ts.length, partial));
        start = end;
      }
      expect(start).toBe(out.length);
    }
  });

  test("the output buffer grows for huge expansion (a chunk of only newlines)", () => {
    const chunk = new Uint8Array(64 * 1024).fill(10);
    const out = new CriEncoder().encode(chunk, "stdout", TS);
    expect(out.length).toBe(chunk.length * (TS.length + 11));
  });

  test("result is a view of a reused buffer; a new timestamp or stream rebuilds the prefix", () => {
    const encoder = new CriEncoder();
    const first = encoder.encode(bytes("a\n"), "stdout", TS);
    const firstText = text(first);
    const second = encoder.encode(bytes("b\n"), "stderr", "2026-01-02T03:04:06Z");
    expect(text(second)).toBe("2026-01-02T03:04:06Z stderr F b\n");
    expect(first.buffer).toBe(second.buffer);
    expect(text(first)).not.toBe(firstText); // overwritten: only valid until the next call
    expect(text(encoder.encode(bytes("c"), "stdout", TS))).toBe(`${TS} stdout P c\n`);
  });

  test("record size accounting: len(segment) + len(ts) + 10, +1 for P", () => {
    expect(criRecordSize(2, 30, false)).toBe(42);
    expect(criRecordSize(2, 30, true)).toBe(43);
  });
});

describe("CRI timestamps", () => {
  const cases: Array<[seconds: number, nanos: number, expected: string]> = [
    [1767323045, 123456780, "2026-01-02T03:04:05.12345678Z"],
    [1767323045, 123456789, "2026-01-02T03:04:05.123456789Z"],
    [1767323045, 0, "2026-01-02T03:04:05Z"],
    [1767323045, 100000000, "2026-01-02T03:04:05.1Z"],
    [1767323045, 1, "2026-01-02T03:04:05.000000001Z"],
    [1767323045, 120000, "2026-01-02T03:04:05.00012Z"],
    [0, 0, "1970-01-01T00:00:00Z"],
  ];
  for (const [seconds, nanos, expected] of cases) {
    test(`${seconds}s + ${nanos}ns → ${expected}`, () => {
      expect(formatRfc3339Utc(seconds, nanos)).toBe(expected);
    });
  }

  test("epoch milliseconds keep microseconds, trimmed", () => {
    expect(formatEpochMillis(1767323045123.456)).toBe("2026-01-02T03:04:05.123456Z");
    expect(formatEpochMillis(1767323045500)).toBe("2026-01-02T03:04:05.5Z");
    expect(formatEpochMillis(1767323045000)).toBe("2026-01-02T03:04:05Z");
  });

  test("the precise wall clock agrees with Date.now() and has sub-millisecond digits", () => {
    const before = Date.now();
    const precise = preciseWallClockMillis();
    const after = Date.now();
    expect(precise).toBeGreaterThanOrEqual(before - 5);
    expect(precise).toBeLessThanOrEqual(after + 5);
    expect(formatEpochMillis(precise)).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$/);
  });

  test("the cached clock refreshes only once the timestamp is 100 ms old", () => {
    let wall = 1767323045000.25;
    let monotonic = 1000;
    const clock = new CachedCriClock(() => wall, () => monotonic);
    expect(clock.now()).toBe("2026-01-02T03:04:05.00025Z");
    wall += 99.9;
    monotonic += 99.9;
    expect(clock.now()).toBe("2026-01-02T03:04:05.00025Z");
    wall += 0.1;
    monotonic += 0.1;
    expect(clock.now()).toBe("2026-01-02T03:04:05.10025Z");
  });
});

describe("CRI log file", () => {
  let dir: string;
  const fixedClock: TimestampClock = { now: () => TS };
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "log-cri-"));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const linesOf = (path: string) =>
    readFileSync(path, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => l.slice(TS.length + 1));

  test("a 1 MiB chunk is written in slices that never cut a line shorter than 128 KiB: same file as one encode", () => {
    const path = join(dir, "big.log");
    const driver = CriLogDriver.open(path, 0, fixedClock);
    const parts: string[] = [];
    // Runs of empty and short lines (small slices) followed by long lines (longer than those slices).
    for (let i = 0, size = 0; size < 1024 * 1024; i++) {
      const line = `${"x".repeat(i % 50 < 40 ? i % 3 : 20_000 + 97 * i)}\n`;
      parts.push(line);
      size += line.length;
    }
    const chunk = bytes(`${parts.join("")}tail-without-newline`);
    driver.write("stdout", chunk);
    driver.close();
    expect(Buffer.compare(readFileSync(path), Buffer.from(referenceEncode(chunk, "stdout", TS)))).toBe(0);
  });

  test("slice ends: after the last newline; a longer line whole; a line over 128 KiB cut at 128 KiB", () => {
    const chunk = bytes("aaaa\nbbbb\ncccccccccc\ndd");
    expect(sliceEnd(chunk, 0, 8)).toBe(5);
    expect(sliceEnd(chunk, 5, 8)).toBe(10);
    expect(sliceEnd(chunk, 10, 8)).toBe(21); // the whole long line
    expect(sliceEnd(chunk, 21, 8)).toBe(chunk.length);
    const huge = new Uint8Array(MAX_SLICE_INPUT + 10).fill(0x78);
    huge[MAX_SLICE_INPUT + 5] = 10;
    expect(sliceEnd(huge, 0, 4096)).toBe(MAX_SLICE_INPUT);
  });

  test("the next slice's input follows the last slice's expansion, within bounds", () => {
    expect(nextSliceInput(100_000, 137_000)).toBe(MAX_SLICE_INPUT); // 100-byte lines
    expect(nextSliceInput(2, 35)).toBe(Math.floor((256 * 1024 * 2) / 35)); // 2-byte lines: ~15 KiB
    expect(nextSliceInput(1, 1_000_000)).toBe(MIN_SLICE_INPUT);
  });

  test("maxSize 150 with lines a..f written one by one leaves d, e, f", () => {
    const path = join(dir, "c.log");
    const driver = CriLogDriver.open(path, 150, fixedClock);
    for (const l of "abcdef") driver.write("stdout", bytes(`${l}\n`));
    driver.close();
    expect(linesOf(path)).toEqual(["stdout F d", "stdout F e", "stdout F f"]);
  });

  test("maxSize 150 with a..f in one chunk truncates mid-chunk the same way", () => {
    const path = join(dir, "c.log");
    const driver = CriLogDriver.open(path, 150, fixedClock);
    driver.write("stdout", bytes("a\nb\nc\nd\ne\nf\n"));
    driver.close();
    expect(linesOf(path)).toEqual(["stdout F d", "stdout F e", "stdout F f"]);
  });

  test("maxSize 50: hello then world leaves no hello", () => {
    const path = join(dir, "c.log");
    const driver = CriLogDriver.open(path, 50, new CachedCriClock());
    driver.write("stdout", bytes("hello\n"));
    driver.write("stdout", bytes("world\n"));
    driver.close();
    const content = readFileSync(path, "utf8");
    expect(content).not.toContain("hello");
    expect(content).toMatch(/^\S+Z stdout F world\n$/);
  });

  test("the record that triggers truncation is not counted (quirk Q4)", () => {
    // 42-byte records, max 100: a b (84) | c truncates, counter 0 | d e (84) | f truncates
    const path = join(dir, "c.log");
    const driver = CriLogDriver.open(path, 100, fixedClock);
    for (const l of "abcdef") driver.write("stdout", bytes(`${l}\n`));
    driver.close();
    expect(linesOf(path)).toEqual(["stdout F f"]);
  });

  test("reopen after rename: old file keeps earlier lines, new file gets later ones", () => {
    const path = join(dir, "c.log");
    const driver = CriLogDriver.open(path, 0, fixedClock);
    driver.write("stdout", bytes("one\ntwo\n"));
    driver.write("stderr", bytes("three-partial"));
    renameSync(path, `${path}.1`);
    driver.write("stdout", bytes("four\n")); // still the old file until reopen
    driver.reopen();
    driver.write("stdout", bytes("five\n"));
    driver.write("stderr", bytes("six\n"));
    driver.close();
    expect(linesOf(`${path}.1`)).toEqual([
      "stdout F one",
      "stdout F two",
      "stderr P three-partial",
      "stdout F four",
    ]);
    expect(linesOf(path)).toEqual(["stdout F five", "stderr F six"]);
  });

  test("RPC reopen keeps the byte counter (quirk Q4)", () => {
    const path = join(dir, "c.log");
    const driver = CriLogDriver.open(path, 100, fixedClock);
    driver.write("stdout", bytes("a\nb\n")); // 84
    driver.reopen(); // empty file, counter still 84
    driver.write("stdout", bytes("c\n")); // 126 > 100: truncates, c alone
    driver.write("stdout", bytes("d\n"));
    driver.close();
    expect(linesOf(path)).toEqual(["stdout F c", "stdout F d"]);
  });

  test("files are created 0600 regardless of umask, and truncated on open", () => {
    const oldUmask = process.umask(0o000);
    try {
      const fresh = join(dir, "fresh.log");
      CriLogDriver.open(fresh, 0, fixedClock).close();
      expect(statSync(fresh).mode & 0o777).toBe(0o600);

      process.umask(0o277);
      const existing = join(dir, "existing.log");
      writeFileSync(existing, "old content\n");
      chmodSync(existing, 0o644);
      const driver = CriLogDriver.open(existing, 0, fixedClock);
      expect(statSync(existing).mode & 0o777).toBe(0o600);
      expect(statSync(existing).size).toBe(0);
      renameSync(existing, `${existing}.1`);
      driver.reopen();
      driver.close();
      expect(statSync(existing).mode & 0o777).toBe(0o600);
    } finally {
      process.umask(oldUmask);
    }
  });

  test("missing directory: upstream's error text", () => {
    expect(() => CriLogDriver.open("/no/such/dir/x.log", 0)).toThrow(
      "open log file path '/no/such/dir/x.log': No such file or directory (os error 2)",
    );
  });

  test("reopen failure keeps writing to the old file and says why", () => {
    const sub = join(dir, "sub");
    require("node:fs").mkdirSync(sub);
    const path = join(sub, "c.log");
    const driver = CriLogDriver.open(path, 0, fixedClock);
    renameSync(sub, join(dir, "moved"));
    expect(() => driver.reopen()).toThrow(`open log file path '${path}': No such file or directory (os error 2)`);
    driver.write("stdout", bytes("still here\n"));
    driver.close();
    expect(linesOf(join(dir, "moved", "c.log"))).toEqual(["stdout F still here"]);
  });
});
