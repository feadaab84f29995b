// The pure parts of the streaming server: handshake checks, subprotocol choice, status documents,
// client message parsing.
import { describe, expect, test } from "bun:test";
import {
  PORT_FORWARD_PROTOCOLS,
  REMOTECOMMAND_PROTOCOLS,
  checkUpgrade,
  exitCodeStatus,
  internalErrorStatus,
  negotiateProtocol,
  offeredProtocols,
  parsePorts,
  parseResize,
  portPrefix,
  successStatus,
  supportsStreamClose,
} from "../../src/streaming/protocol.ts";

const encoder = new TextEncoder();

function request(method: string, headers: Record<string, string>) {
  return { method, headers: new Headers(headers) };
}

const UPGRADE = {
  Connection: "keep-alive, Upgrade",
  Upgrade: "websocket",
  "Sec-WebSocket-Version": "13",
  "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
};

describe("checkUpgrade", () => {
  test("a complete handshake passes, header names and tokens case-insensitively", () => {
    expect(checkUpgrade(request("GET", UPGRADE))).toEqual({ ok: true });
    expect(checkUpgrade(request("GET", { ...UPGRADE, Connection: "upgrade", Upgrade: "WebSocket" }))).toEqual({ ok: true });
  });

  test("any other method → 405, whatever the headers", () => {
    for (const method of ["POST", "PUT", "DELETE", "HEAD"]) expect(checkUpgrade(request(method, UPGRADE))).toMatchObject({ ok: false, status: 405 });
  });

  test("a GET without each of the handshake headers → 400", () => {
    expect(checkUpgrade(request("GET", {}))).toMatchObject({ ok: false, status: 400 });
    for (const name of Object.keys(UPGRADE)) {
      const headers: Record<string, string> = { ...UPGRADE };
      delete headers[name];
      expect(checkUpgrade(request("GET", headers))).toMatchObject({ ok: false, status: 400 });
    }
    expect(checkUpgrade(request("GET", { ...UPGRADE, "Sec-WebSocket-Version": "8" }))).toMatchObject({ ok: false, status: 400 });
  });
});

describe("subprotocols", () => {
  test("header parsing", () => {
    expect(offeredProtocols(null)).toEqual([]);
    expect(offeredProtocols(" v5.channel.k8s.io ,v4.channel.k8s.io,, ")).toEqual(["v5.channel.k8s.io", "v4.channel.k8s.io"]);
  });

  test("the client's first supported offer wins; none offered → ''; only unsupported → null", () => {
    const clientGo = ["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];
    expect(negotiateProtocol(clientGo, REMOTECOMMAND_PROTOCOLS)).toBe("v5.channel.k8s.io");
    expect(negotiateProtocol(["v4.channel.k8s.io", "v5.channel.k8s.io"], REMOTECOMMAND_PROTOCOLS)).toBe("v4.channel.k8s.io");
    expect(negotiateProtocol([], REMOTECOMMAND_PROTOCOLS)).toBe("");
    expect(negotiateProtocol(["channel.k8s.io"], REMOTECOMMAND_PROTOCOLS)).toBeNull();
    // client-go's SPDY tunnel is not spoken; the kubelet's channel framing is.
    expect(negotiateProtocol(["SPDY/3.1+portforward.k8s.io"], PORT_FORWARD_PROTOCOLS)).toBeNull();
    expect(negotiateProtocol(["SPDY/3.1+portforward.k8s.io", "portforward.k8s.io"], PORT_FORWARD_PROTOCOLS)).toBe("portforward.k8s.io");
    expect(negotiateProtocol(["v4.channel.k8s.io"], PORT_FORWARD_PROTOCOLS)).toBe("v4.channel.k8s.io");
  });

  test("only v5 (and no protocol at all) has the close channel", () => {
    expect(supportsStreamClose("v5.channel.k8s.io")).toBe(true);
    expect(supportsStreamClose("")).toBe(true);
    expect(supportsStreamClose("v4.channel.k8s.io")).toBe(false);
  });
});

describe("status documents (client-go's metav1.Status, the kubelet's field order)", () => {
  test("success", () => {
    expect(successStatus()).toBe('{"metadata":{},"status":"Success"}');
  });

  test("non-zero exit code", () => {
    expect(exitCodeStatus(3)).toBe(
      '{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3",' +
        '"reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}',
    );
  });

  test("internal error", () => {
    expect(JSON.parse(internalErrorStatus("boom"))).toEqual({
      metadata: {},
      status: "Failure",
      message: "Internal error occurred: boom",
      reason: "InternalError",
      details: { causes: [{ message: "boom" }] },
      code: 500,
    });
  });
});

describe("client messages", () => {
  test("resize", () => {
    expect(parseResize(encoder.encode('{"Width":80,"Height":24}'))).toEqual({ width: 80, height: 24 });
    for (const bad of ["", "{", "null", "[]", '{"Width":80}', '{"Width":-1,"Height":2}', '{"Width":70000,"Height":2}', '{"Width":1.5,"Height":2}', '{"Width":"80","Height":24}']) {
      expect(parseResize(encoder.encode(bad))).toBeNull();
    }
  });

  test("ports from the query, as the kubelet parses them", () => {
    expect(parsePorts(new URLSearchParams("port=80&port=8080"))).toEqual([80, 8080]);
    expect(parsePorts(new URLSearchParams("port=80,443&port=65535"))).toEqual([80, 443, 65535]);
    expect(() => parsePorts(new URLSearchParams(""))).toThrow(`query parameter "port" is required`);
    expect(() => parsePorts(new URLSearchParams("port="))).toThrow("cannot be empty");
    expect(() => parsePorts(new URLSearchParams("port=0"))).toThrow("must be > 0");
    for (const bad of ["65536", "-1", "http", "80,", "1e3"]) expect(() => parsePorts(new URLSearchParams({ port: bad }))).toThrow("unable to parse");
    expect(() => parsePorts(new URLSearchParams({ port: Array.from({ length: 128 }, (_, i) => i + 1).join(",") }))).toThrow("at most 127 ports");
  });

  test("the port announcement is uint16 little-endian", () => {
    expect([...portPrefix(8080)]).toEqual([0x90, 0x1f]);
    expect([...portPrefix(80)]).toEqual([80, 0]);
  });
});
