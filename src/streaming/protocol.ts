// The wire side of the streaming server (spec §14): Kubernetes' channel protocol over WebSocket
// (remotecommand for exec/attach, port-forward), the status documents client-go decodes, and the
// checks made on a request before it may become a WebSocket. Pure functions, no I/O.

/** First byte of every binary message: which stream the rest belongs to. */
export const Channel = {
  stdin: 0,
  stdout: 1,
  stderr: 2,
  /** Status (v4/v5: a JSON metav1.Status written once, at the end). */
  error: 3,
  /** `{"Width":cols,"Height":rows}` from the client. */
  resize: 4,
  /** v5: `[255, channel]` closes that channel (the client's way to send EOF on stdin). */
  close: 255,
} as const;

export const V5_CHANNEL = "v5.channel.k8s.io";
export const V4_CHANNEL = "v4.channel.k8s.io";
/** The non-SPDY name of the port-forward protocol; spoken here with the v4 channel framing. */
export const PORT_FORWARD = "portforward.k8s.io";

/**
 * What exec and attach negotiate, newest first. Older channel protocols (v1-v3) are not offered:
 * their status channel carries plain text instead of a metav1.Status.
 */
export const REMOTECOMMAND_PROTOCOLS: readonly string[] = [V5_CHANNEL, V4_CHANNEL];

/**
 * Port-forward: the kubelet's WebSocket port-forward speaks the v4 channel framing. client-go's
 * own WebSocket port-forward offers `SPDY/3.1+portforward.k8s.io` (SPDY frames tunnelled inside
 * the WebSocket); we do not speak SPDY, so that name is not accepted (upstream echoes it and
 * then panics, Q13). Plain `portforward.k8s.io` is accepted and means the channel framing.
 */
export const PORT_FORWARD_PROTOCOLS: readonly string[] = [V4_CHANNEL, PORT_FORWARD];

/** The tokens of a Sec-WebSocket-Protocol header (it may also be sent several times, joined by ", "). */
export function offeredProtocols(header: string | null): string[] {
  if (!header) return [];
  return header
    .split(",")
    .map((p) => p.trim())
    .filter((p) => p !== "");
}

/**
 * The protocol to answer with: the client's first offer we support (client order, as gorilla
 * and x/net/websocket servers pick). "" when the client offered nothing (framing as the newest
 * supported protocol); null when it offered only protocols we do not support.
 */
export function negotiateProtocol(offered: readonly string[], supported: readonly string[]): string | null {
  if (offered.length === 0) return "";
  return offered.find((p) => supported.includes(p)) ?? null;
}

/** v5 added the close channel; a client that negotiated nothing gets the newest framing. */
export function supportsStreamClose(protocol: string): boolean {
  return protocol === V5_CHANNEL || protocol === "";
}

// ---- the WebSocket handshake ------------------------------------------------------------------

export type UpgradeCheck = { ok: true } | { ok: false; status: 400 | 405; message: string };

function headerTokens(value: string | null): string[] {
  return (value ?? "").split(",").map((t) => t.trim().toLowerCase());
}

/**
 * Whether `req` is a WebSocket opening handshake (RFC 6455 §4.2.1). Checked BEFORE the token is
 * looked at, so a plain GET (400) or a POST (405) never consumes a session, as upstream's axum
 * extractors reject such requests before its handler runs.
 */
export function checkUpgrade(req: { method: string; headers: Headers }): UpgradeCheck {
  if (req.method !== "GET") return { ok: false, status: 405, message: "method not allowed: a WebSocket upgrade must be a GET" };
  const h = req.headers;
  if (!headerTokens(h.get("connection")).includes("upgrade")) return badRequest("Connection header did not include 'upgrade'");
  if (!headerTokens(h.get("upgrade")).includes("websocket")) return badRequest("`Upgrade` header did not include 'websocket'");
  if (h.get("sec-websocket-version")?.trim() !== "13") return badRequest("`Sec-WebSocket-Version` header did not include '13'");
  if (!h.get("sec-websocket-key")) return badRequest("`Sec-WebSocket-Key` header missing");
  return { ok: true };
}

function badRequest(message: string): UpgradeCheck {
  return { ok: false, status: 400, message };
}

// ---- status documents (channel 3) -------------------------------------------------------------
//
// The JSON of a Kubernetes metav1.Status as the kubelet's streaming server marshals it (Go
// encoding/json: struct field order, empty fields omitted, `metadata` always present) and as
// client-go's v4/v5 error decoder reads it. Upstream conmon-rs sends
// {"status","reason","details","message"} in that order, only on failure, and nothing on success;
// we send the kubelet's documents, since field order is irrelevant to JSON decoders and client-go
// expects a status (it treats a clean close as success too).

/** Exit code 0, and the end of an attach session. */
export function successStatus(): string {
  return JSON.stringify({ metadata: {}, status: "Success" });
}

/** A command that exited non-zero (128+signal when killed). client-go turns this into a CodeExitError. */
export function exitCodeStatus(code: number): string {
  return JSON.stringify({
    metadata: {},
    status: "Failure",
    // The kubelet appends the runtime's ExitError text; Go's exec.ExitError reads "exit status N".
    message: `command terminated with non-zero exit code: exit status ${code}`,
    reason: "NonZeroExitCode",
    details: { causes: [{ reason: "ExitCode", message: String(code) }] },
  });
}

/** The session failed on our side (runtime exec failed, container gone): apierrors.NewInternalError. */
export function internalErrorStatus(message: string): string {
  return JSON.stringify({
    metadata: {},
    status: "Failure",
    message: `Internal error occurred: ${message}`,
    reason: "InternalError",
    details: { causes: [{ message }] },
    code: 500,
  });
}

// ---- client messages --------------------------------------------------------------------------

export type TerminalSize = { width: number; height: number };

function isUint16(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 0xffff;
}

/** Channel 4 payload (client-go's TerminalSize: `{"Width":cols,"Height":rows}`); null if malformed. */
export function parseResize(payload: Uint8Array): TerminalSize | null {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder().decode(payload));
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null) return null;
  const { Width, Height } = value as { Width?: unknown; Height?: unknown };
  if (!isUint16(Width) || !isUint16(Height)) return null;
  return { width: Width, height: Height };
}

/**
 * The forwarded ports from the query (`?port=80&port=8080`, or `port=80,8080`), parsed as the
 * kubelet's websocket port-forward does: at least one, each 1..65535. Throws with the reason.
 */
export function parsePorts(query: URLSearchParams): number[] {
  const values = query.getAll("port");
  if (values.length === 0) throw new Error(`query parameter "port" is required`);
  const ports: number[] = [];
  for (const value of values) {
    if (value === "") throw new Error(`query parameter "port" cannot be empty`);
    for (const part of value.split(",")) {
      if (!/^\d{1,5}$/.test(part) || Number(part) > 0xffff) throw new Error(`unable to parse "${value}" as a port`);
      if (Number(part) < 1) throw new Error(`port "${value}" must be > 0`);
      ports.push(Number(part));
    }
  }
  if (ports.length > MAX_FORWARDED_PORTS) throw new Error(`at most ${MAX_FORWARDED_PORTS} ports per connection, got ${ports.length}`);
  return ports;
}

/** Port-forward: the data channel of the i-th port; its error channel is the next one. */
export function dataChannel(index: number): number {
  return 2 * index;
}

/** The first message on both channels of a port: the port as uint16 little-endian. */
export function portPrefix(port: number): Uint8Array {
  return new Uint8Array([port & 0xff, port >> 8]);
}

/** How many ports one session may forward: two channels each, and channel 255 is reserved. */
export const MAX_FORWARDED_PORTS = 127;
