// The fd socket's wire protocol (spec §13): header encoding, replies, and the server's verdict on
// each received message. Pure functions only; the socket itself is in test/integration/fd-socket.test.ts.
import { describe, expect, test } from "bun:test";
import {
  ERROR_NUM_FDS,
  FD_SOCKET_MAX_FDS,
  TOO_MANY_FDS_MESSAGE,
  decodeHeader,
  decodeReply,
  encodeErrorReply,
  encodeHeader,
  encodeRequest,
  encodeSuccessReply,
  judgeMessage,
} from "../../src/fd-socket.ts";

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex");
const fromHex = (s: string) => new Uint8Array(Buffer.from(s.replace(/[\s|]/g, ""), "hex"));
const u64le = (v: bigint) => {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, v, true);
  return out;
};
const concat = (...parts: Uint8Array[]) => new Uint8Array(Buffer.concat(parts));

describe("header", () => {
  test.each([
    [{ requestId: 1, numFds: 2 }, 0x1_0000_0002n],
    [{ requestId: 0, numFds: 0 }, 0n],
    [{ requestId: 0xffff_ffff, numFds: 253 }, 0xffff_ffff_0000_00fdn],
    [{ requestId: 7, numFds: 0xffff_ffff }, 0x7_ffff_ffffn],
    [{ requestId: 3, numFds: 256 }, 0x3_0000_0100n],
  ])("%o ⇄ %p", (header, value) => {
    expect(encodeHeader(header)).toBe(value);
    expect(decodeHeader(value)).toEqual(header);
  });

  test("numFds is the full low 32 bits (upstream: low 8 bits only)", () => {
    expect(decodeHeader(0x1_0000_0100n).numFds).toBe(256);
    expect(decodeHeader(0x1_0001_0002n).numFds).toBe(0x1_0002);
  });

  test.each([-1, 1.5, 0x1_0000_0000, Number.NaN])("out-of-range value %p is refused", (n) => {
    expect(() => encodeHeader({ requestId: n, numFds: 1 })).toThrow(/requestId .* is not a u32/);
    expect(() => encodeHeader({ requestId: 1, numFds: n })).toThrow(/numFds .* is not a u32/);
  });

  test("request bytes: the spec's example (id 1, 2 fds)", () => {
    expect(hex(encodeRequest(1, 2))).toBe("0200000001000000");
  });
});

describe("replies", () => {
  test("success: header echoed, one u64 LE slot per fd (the spec's example)", () => {
    const bytes = encodeSuccessReply(0x1_0000_0002n, [5n, 6n]);
    expect(hex(bytes)).toBe("0200000001000000" + "0500000000000000" + "0600000000000000");
    expect(decodeReply(bytes)).toEqual({ kind: "slots", requestId: 1, slots: [5n, 6n] });
  });

  test("success with the largest slot numbers", () => {
    const slots = [0xffff_ffff_ffff_ffffn, 0n, 1n << 63n];
    expect(decodeReply(encodeSuccessReply(encodeHeader({ requestId: 9, numFds: 3 }), slots))).toEqual({
      kind: "slots",
      requestId: 9,
      slots,
    });
  });

  test("error (ours): numFds = 0xffffffff, then the text", () => {
    const bytes = encodeErrorReply(1, "received 1 fds, but expected 2 fds");
    expect(hex(bytes.subarray(0, 8))).toBe("ffffffff01000000");
    expect(decodeReply(bytes)).toEqual({ kind: "error", requestId: 1, message: "received 1 fds, but expected 2 fds" });
  });

  test("error (ours) with an empty text is still an error", () => {
    expect(decodeReply(encodeErrorReply(4, ""))).toEqual({ kind: "error", requestId: 4, message: "" });
  });

  test("error (upstream, quirk Q11): header | 0xff, then the text", () => {
    const bytes = concat(fromHex("ff00000001000000"), new TextEncoder().encode("received 1 fds, but expected 2 fds"));
    expect(decodeReply(bytes)).toEqual({ kind: "error", requestId: 1, message: "received 1 fds, but expected 2 fds" });
  });

  test("error (upstream) for a request that announced 0x102 fds: the low byte alone is 0xff", () => {
    const bytes = concat(u64le(0x2_0000_01ffn), new TextEncoder().encode("boom"));
    expect(decodeReply(bytes)).toEqual({ kind: "error", requestId: 2, message: "boom" });
  });

  test("UTF-8 error text", () => {
    expect(decodeReply(encodeErrorReply(3, "fehlgeschlagen: ü ✓"))).toMatchObject({ message: "fehlgeschlagen: ü ✓" });
  });

  test.each([
    ["too short", fromHex("01000000"), /reply too short: 4 bytes/],
    ["empty", new Uint8Array(0), /reply too short: 0 bytes/],
    ["fewer slots than announced", concat(u64le(0x1_0000_0002n), u64le(5n)), /invalid length: 16 bytes for 2 slots/],
    ["more slots than announced", concat(u64le(0x1_0000_0001n), u64le(5n), u64le(6n)), /invalid length/],
    ["ragged body", concat(u64le(0x1_0000_0001n), fromHex("0500")), /invalid length/],
    ["0xff low byte without text", u64le(0x1_0000_00ffn), /invalid length: 8 bytes for 255 slots/],
  ])("malformed reply: %s", (_name, bytes, error) => {
    expect(() => decodeReply(bytes)).toThrow(error);
  });

  test("a header-only reply for 0 fds is an empty success", () => {
    expect(decodeReply(u64le(0x5_0000_0000n))).toEqual({ kind: "slots", requestId: 5, slots: [] });
  });

  test("the error marker constant", () => {
    expect(ERROR_NUM_FDS).toBe(0xffff_ffff);
    expect(FD_SOCKET_MAX_FDS).toBe(253);
  });
});

describe("server verdict per message", () => {
  const msg = (n: number, fdCount = 0, flags: { dataTruncated?: boolean; fdsTruncated?: boolean } = {}) => ({
    n,
    fdCount,
    dataTruncated: flags.dataTruncated ?? false,
    fdsTruncated: flags.fdsTruncated ?? false,
  });
  const data = (v: bigint) => concat(u64le(v), new Uint8Array(8));

  test.each([
    ["0 bytes: end of stream", msg(0), 0n, { kind: "eof" }],
    ["0 bytes with fds: still end of stream (the fds are closed)", msg(0, 2), 0n, { kind: "eof" }],
    ["1 byte: ignored", msg(1), 0n, { kind: "ignore" }],
    ["7 bytes: ignored", msg(7, 1), 0n, { kind: "ignore" }],
    ["9 bytes: ignored", msg(9, 1), 0x1_0000_0001n, { kind: "ignore" }],
    ["16 bytes: ignored", msg(16), 0x1_0000_0000n, { kind: "ignore" }],
    ["longer than the buffer: ignored", msg(16, 0, { dataTruncated: true }), 0x1_0000_0000n, { kind: "ignore" }],
    ["header 0: release", msg(8), 0n, { kind: "release" }],
    ["header 0 with fds: release (the fds are closed)", msg(8, 3), 0n, { kind: "release" }],
    ["counts agree", msg(8, 2), 0x1_0000_0002n, { kind: "store", header: 0x1_0000_0002n }],
    ["request id only, no fds", msg(8, 0), 0x4_0000_0000n, { kind: "store", header: 0x4_0000_0000n }],
    ["253 fds", msg(8, 253), 0x2_0000_00fdn, { kind: "store", header: 0x2_0000_00fdn }],
    [
      "fewer fds than announced",
      msg(8, 1),
      0x1_0000_0002n,
      { kind: "error", requestId: 1, message: "received 1 fds, but expected 2 fds" },
    ],
    [
      "more fds than announced",
      msg(8, 3),
      0x9_0000_0001n,
      { kind: "error", requestId: 9, message: "received 3 fds, but expected 1 fds" },
    ],
    [
      "256 announced, none sent (upstream reads 0 and succeeds)",
      msg(8, 0),
      0x1_0000_0100n,
      { kind: "error", requestId: 1, message: "received 0 fds, but expected 256 fds" },
    ],
    [
      "fds cut off (MSG_CTRUNC), even if the count matches what arrived",
      msg(8, 5, { fdsTruncated: true }),
      0x3_0000_0005n,
      { kind: "error", requestId: 3, message: TOO_MANY_FDS_MESSAGE },
    ],
  ])("%s", (_name, m, header, verdict) => {
    expect(judgeMessage(m, data(header))).toEqual(verdict as any);
  });

  test("the MSG_CTRUNC text names the limit", () => {
    expect(TOO_MANY_FDS_MESSAGE).toMatch(/^too many file descriptors in one message \(max 253\)/);
  });
});
