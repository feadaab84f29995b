// Attach socket packet framing (spec §9): tag byte + at most 8191 payload bytes per packet.
import { describe, expect, test } from "bun:test";
import {
  ATTACH_MAX_PAYLOAD,
  decodeAttachPacket,
  encodeAttachPackets,
  encodeDonePacket,
} from "../../src/attach.ts";
import type { StreamName } from "../../src/container-io.ts";

const bytes = (...values: number[]) => Uint8Array.from(values);
const text = (s: string) => new TextEncoder().encode(s);
const filled = (length: number, start = 0) => Uint8Array.from({ length }, (_, i) => (start + i) % 251);

describe("encodeAttachPackets", () => {
  const cases: { name: string; stream: StreamName; chunk: Uint8Array; packets: Uint8Array[] }[] = [
    { name: "stdout 'hi' (spec example)", stream: "stdout", chunk: text("hi"), packets: [bytes(2, 0x68, 0x69)] },
    { name: "stderr 'x' (spec example)", stream: "stderr", chunk: text("x"), packets: [bytes(3, 0x78)] },
    { name: "empty chunk gives no packet", stream: "stdout", chunk: new Uint8Array(0), packets: [] },
    { name: "NUL bytes are data", stream: "stdout", chunk: bytes(0, 0, 1), packets: [bytes(2, 0, 0, 1)] },
    { name: "exactly one full packet", stream: "stdout", chunk: filled(8191), packets: [Uint8Array.of(2, ...filled(8191))] },
    {
      name: "one byte over splits",
      stream: "stderr",
      chunk: filled(8192),
      packets: [Uint8Array.of(3, ...filled(8191)), Uint8Array.of(3, ...filled(1, 8191))],
    },
    {
      name: "three packets, last partial",
      stream: "stdout",
      chunk: filled(2 * 8191 + 10),
      packets: [
        Uint8Array.of(2, ...filled(8191)),
        Uint8Array.of(2, ...filled(8191, 8191)),
        Uint8Array.of(2, ...filled(10, 2 * 8191)),
      ],
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      expect(encodeAttachPackets(c.stream, c.chunk)).toEqual(c.packets);
    });
  }

  test("no packet exceeds 8192 bytes and the payload reassembles", () => {
    for (const length of [1, 8190, 8191, 8192, 8193, 65536, 131072 + 7]) {
      const chunk = filled(length);
      const packets = encodeAttachPackets("stdout", chunk);
      expect(packets.every((p) => p.length <= ATTACH_MAX_PAYLOAD + 1 && p.length >= 2)).toBe(true);
      expect(packets.length).toBe(Math.ceil(length / ATTACH_MAX_PAYLOAD));
      const joined = Buffer.concat(packets.map((p) => p.subarray(1)));
      expect(new Uint8Array(joined)).toEqual(chunk);
    }
  });
});

describe("decodeAttachPacket", () => {
  const cases: { name: string; packet: Uint8Array; expected: unknown }[] = [
    { name: "done", packet: bytes(0), expected: { kind: "done" } },
    { name: "done with trailing padding (old servers)", packet: bytes(0, 0, 0), expected: { kind: "done" } },
    { name: "stdout", packet: bytes(2, 0x68, 0x69), expected: { kind: "stdout", data: text("hi") } },
    { name: "stderr", packet: bytes(3, 0x78), expected: { kind: "stderr", data: text("x") } },
    { name: "empty stdout payload", packet: bytes(2), expected: { kind: "stdout", data: new Uint8Array(0) } },
    { name: "stdin tag is not server output", packet: bytes(1, 9), expected: { kind: "unknown", tag: 1, data: bytes(9) } },
    { name: "unknown tag", packet: bytes(7), expected: { kind: "unknown", tag: 7, data: new Uint8Array(0) } },
  ];
  for (const c of cases) {
    test(c.name, () => {
      expect(decodeAttachPacket(c.packet)).toEqual(c.expected as never);
    });
  }

  test("an empty packet is an error", () => {
    expect(() => decodeAttachPacket(new Uint8Array(0))).toThrow("empty");
  });

  test("encode → decode round trip", () => {
    for (const stream of ["stdout", "stderr"] as const) {
      const [packet] = encodeAttachPackets(stream, text("round trip"));
      expect(decodeAttachPacket(packet!)).toEqual({ kind: stream, data: text("round trip") });
    }
    expect(decodeAttachPacket(encodeDonePacket())).toEqual({ kind: "done" });
  });
});
