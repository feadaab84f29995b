import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, renameSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { JsonLogDriver, encodeJsonLogEntries, formatJsonLogEntry, trimLikeRust } from "../../src/log-json.ts";

const T = 1767323045;
const bytes = (s: string) => new TextEncoder().encode(s);
const entry = (message: string, pipe = "stdout") => `{"timestamp":${T},"pipe":"${pipe}","message":${message}}\n`;

describe("JSON entries", () => {
  const cases: Array<[name: string, input: Uint8Array, expected: string[]]> = [
    ["empty chunk", bytes(""), []],
    ["single line", bytes("hello\n"), [entry('"hello"')]],
    ["lines and a trailing partial", bytes("a\nb\npart"), [entry('"a"'), entry('"b"'), entry('"part"')]],
    ["empty line", bytes("\n"), [entry('""')]],
    ["CRLF and surrounding blanks trimmed", bytes("  hi there \r\n"), [entry('"hi there"')]],
    ["quote and backslash", bytes('say "hi" \\o/\n'), [entry('"say \\"hi\\" \\\\o/"')]],
    ["inner control characters", bytes("a\tb\rc\bd\fe\n"), [entry('"a\\tb\\rc\\bd\\fe"')]],
    ["other controls as lowercase \\u00xx", bytes("x\u0001\u001b\u001fy"), [entry('"x\\u0001\\u001b\\u001fy"')]],
    ["DEL and non-ASCII raw", bytes("\u007fé✓😀\n"), [entry('"\u007fé✓😀"')]],
    ["invalid UTF-8 becomes U+FFFD", Uint8Array.from([0x61, 0xff, 0xe2, 0x82, 0x0a, 0x62]), [entry('"a\ufffd\ufffd"'), entry('"b"')]],
  ];
  for (const [name, input, expected] of cases) {
    test(name, () => {
      expect(encodeJsonLogEntries(input, "stdout", T)).toEqual(expected);
    });
  }

  test("stderr pipe", () => {
    expect(formatJsonLogEntry("oops\n", "stderr", T)).toBe(entry('"oops"', "stderr"));
  });

  test("trim follows Rust's White_Space, not JS's", () => {
    expect(trimLikeRust("\u0085\u00a0\u2003 x \u3000\u2029")).toBe("x");
    expect(trimLikeRust("\ufeffx\ufeff")).toBe("\ufeffx\ufeff"); // JS's trim() would strip BOMs
    expect(trimLikeRust("\u000b\u000cx")).toBe("x");
    expect(trimLikeRust("   ")).toBe("");
  });
});

describe("JSON log file", () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "log-json-"));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const messages = (path: string) =>
    readFileSync(path, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l).message);

  test("writes entries; file mode follows the umask", () => {
    const oldUmask = process.umask(0o022);
    try {
      const path = join(dir, "c.json");
      const driver = JsonLogDriver.open(path, 0, () => T);
      driver.write("stdout", bytes("hello\nwor"));
      driver.write("stderr", bytes("ld\n"));
      driver.close();
      expect(readFileSync(path, "utf8")).toBe(entry('"hello"') + entry('"wor"') + entry('"ld"', "stderr"));
      expect(statSync(path).mode & 0o777).toBe(0o644);
    } finally {
      process.umask(oldUmask);
    }
  });

  test("maxSize: exceeding entry truncates first, then is written, counter restarts at 0", () => {
    // each entry of a one-letter message is 55 bytes: a (55) b (110) | c (165 > 150) truncates → 0
    const size = entry('"a"').length;
    expect(size).toBe(55);
    const path = join(dir, "c.json");
    const driver = JsonLogDriver.open(path, 150, () => T);
    for (const l of "abcdef") driver.write("stdout", bytes(`${l}\n`));
    driver.close();
    // c resets to 0, d 55, e 110, f 165 > 150 resets → only f
    expect(messages(path)).toEqual(["f"]);
  });

  test("maxSize in one chunk gives the same result", () => {
    const path = join(dir, "c.json");
    const driver = JsonLogDriver.open(path, 150, () => T);
    driver.write("stdout", bytes("a\nb\nc\nd\ne\n"));
    driver.close();
    expect(messages(path)).toEqual(["c", "d", "e"]);
  });

  test("maxSize 50: hello then world leaves no hello", () => {
    const path = join(dir, "c.json");
    const driver = JsonLogDriver.open(path, 50, () => T);
    driver.write("stdout", bytes("hello\n"));
    driver.write("stdout", bytes("world\n"));
    driver.close();
    expect(messages(path)).toEqual(["world"]);
  });

  test("reopen after rename splits the lines between the two files", () => {
    const path = join(dir, "c.json");
    const driver = JsonLogDriver.open(path, 0, () => T);
    driver.write("stdout", bytes("1\n2\n"));
    renameSync(path, `${path}.1`);
    driver.reopen();
    driver.write("stdout", bytes("3\n"));
    driver.close();
    expect(messages(`${path}.1`)).toEqual(["1", "2"]);
    expect(messages(path)).toEqual(["3"]);
  });

  test("missing directory: upstream's error text", () => {
    expect(() => JsonLogDriver.open("/no/such/dir/x.json", 0)).toThrow(
      "open log file path '/no/such/dir/x.json': No such file or directory (os error 2)",
    );
  });
});
