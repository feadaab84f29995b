// serveExecContainer (8), serveAttachContainer (9), servePortForwardContainer (10): the RPC
// prepares a session and answers a URL; the engine (CRI-O, for the kubelet) connects a WebSocket
// to it (spec §14). One HTTP server on 127.0.0.1 with a random port, started by the first serve*
// call and stopped at shutdown.
//
// Module map: streaming/protocol.ts (framing, statuses, handshake checks), streaming/sessions.ts
// (single-use tokens), streaming/sender.ts (bounded outgoing queue), streaming/remotecommand.ts
// (exec, attach), streaming/port-forward.ts + streaming/netns-socket.ts (port-forward).

import { statSync } from "node:fs";
import type { Server, ServerWebSocket } from "bun";
import type { ServerConfig } from "./cli.ts";
import type { ChildReaper, ExitInfo } from "./child-reaper.ts";
import type { Containers } from "./containers.ts";
import { errorChain, withContext } from "./errors.ts";
import { ExecProcesses } from "./exec-sync.ts";
import type { Logger } from "./logger.ts";
import { Conmon_CgroupManager } from "../schema/conmon.ts";
import {
  PORT_FORWARD_PROTOCOLS,
  REMOTECOMMAND_PROTOCOLS,
  checkUpgrade,
  negotiateProtocol,
  offeredProtocols,
  parsePorts,
} from "./streaming/protocol.ts";
import { SessionStore, type SessionStoreOptions, type StreamSession } from "./streaming/sessions.ts";
import { AttachSession, ExecSession, type AttachRequest, type ExecRequest } from "./streaming/remotecommand.ts";
import { PortForwardSession, type PortForwardRequest } from "./streaming/port-forward.ts";
import { SEND_HIGH_WATER } from "./streaming/sender.ts";

type Kind = "exec" | "attach" | "port-forward";

/** What an RPC prepared, waiting for its WebSocket. */
type Prepared =
  | { kind: "exec"; req: ExecRequest }
  | { kind: "attach"; req: AttachRequest }
  | { kind: "port-forward"; req: PortForwardRequest };

type SocketData = { session: StreamSession; label: string };

const ROUTE = /^\/(exec|attach|port-forward)\/([^/]+)$/;

/** Bun drops (send() = 0) past this per socket; far above what FrameSender lets it hold. */
const BUN_BACKPRESSURE_LIMIT = 64 * SEND_HIGH_WATER;

function texts(list: { length: number; get(i: number): string }): string[] {
  return Array.from({ length: list.length }, (_, i) => list.get(i));
}

function plain(status: number, message: string): Response {
  return new Response(`${message}\n`, { status, headers: { "content-type": "text/plain; charset=utf-8" } });
}

export class StreamingServer {
  private server: Server<SocketData> | null = null;
  private readonly sessions: SessionStore<Prepared>;
  /** Exec'd processes of exec sessions, for shutdown. */
  private readonly processes: ExecProcesses;
  private readonly sockets = new Set<ServerWebSocket<SocketData>>();
  private stopping = false;

  constructor(
    private readonly config: ServerConfig,
    private readonly containers: Pick<Containers, "get">,
    private readonly reaper: Pick<ChildReaper, "watch">,
    private readonly log: Logger,
    opts: { sessions?: SessionStoreOptions } = {},
  ) {
    this.sessions = new SessionStore(opts.sessions);
    this.processes = new ExecProcesses(reaper, log);
  }

  /** The server's origin (`http://127.0.0.1:<port>`), or undefined before the first serve* call. */
  get origin(): string | undefined {
    return this.server ? `http://127.0.0.1:${this.server.port}` : undefined;
  }

  // ---- the RPCs -------------------------------------------------------------------------------

  readonly handleServeExec = (params: any, results: any): void => {
    const r = params.request;
    this.containers.get(r.id); // `child not available`, at RPC time as upstream
    const req: ExecRequest = {
      id: r.id,
      command: texts(r.command),
      tty: r.tty,
      stdin: r.stdin,
      stdout: r.stdout,
      stderr: r.stderr,
      systemdCgroup: r.cgroupManager === Conmon_CgroupManager.SYSTEMD,
    };
    results._initResponse().url = this.prepare({ kind: "exec", req }, "start streaming server if required");
  };

  readonly handleServeAttach = (params: any, results: any): void => {
    const r = params.request;
    this.containers.get(r.id);
    const req: AttachRequest = { id: r.id, stdin: r.stdin, stdout: r.stdout, stderr: r.stderr };
    results._initResponse().url = this.prepare({ kind: "attach", req }, "start streaming server");
  };

  readonly handleServePortForward = (params: any, results: any): void => {
    const netNsPath: string = params.request.netNsPath;
    // Upstream accepts any path; a wrong one is better reported to the RPC caller than later on
    // each port's error channel.
    if (netNsPath !== "") {
      try {
        statSync(netNsPath);
      } catch (err) {
        throw withContext(`network namespace '${netNsPath}'`, err);
      }
    }
    results._initResponse().url = this.prepare({ kind: "port-forward", req: { netNsPath } }, "start streaming server if required");
  };

  private prepare(prepared: Prepared, context: string): string {
    const origin = this.ensureStarted(context);
    return `${origin}/${prepared.kind}/${this.sessions.add(prepared)}`;
  }

  private ensureStarted(context: string): string {
    if (this.stopping) throw new Error(`${context}: the server is shutting down`);
    if (this.server === null) {
      try {
        this.server = this.listen();
      } catch (err) {
        throw withContext(`${context}: bind streaming server`, err);
      }
      this.log.info(`Streaming server listening on ${this.origin}`);
    }
    return this.origin!;
  }

  private listen(): Server<SocketData> {
    return Bun.serve<SocketData>({
      hostname: "127.0.0.1",
      port: 0,
      development: false,
      fetch: (req, server) => this.route(req, server),
      error: (err) => {
        this.log.error(`streaming server: ${errorChain(err)}`);
        return plain(500, "internal error");
      },
      websocket: {
        perMessageDeflate: false,
        backpressureLimit: BUN_BACKPRESSURE_LIMIT,
        open: (ws) => {
          this.sockets.add(ws);
          this.guard(ws, "open", () => ws.data.session.open(ws));
        },
        message: (ws, message) => {
          // Text messages carry nothing in these protocols (upstream ignores them too).
          if (typeof message === "string") return;
          this.guard(ws, "message", () => ws.data.session.message(message));
        },
        drain: (ws) => this.guard(ws, "drain", () => ws.data.session.drain()),
        close: (ws) => {
          this.sockets.delete(ws);
          this.guard(ws, "close", () => ws.data.session.closed());
        },
      },
    });
  }

  /** A session callback that throws must not take the server down; the client is disconnected. */
  private guard(ws: ServerWebSocket<SocketData>, what: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log.error(`${ws.data.label}: ${what}: ${errorChain(err)}`);
      if (what !== "close") ws.close(1011, "internal error");
    }
  }

  // ---- HTTP -----------------------------------------------------------------------------------

  /**
   * Order of the checks (each before the token is claimed, so a refused request leaves it
   * usable): route (404), method (405) and handshake headers (400) as upstream's extractors,
   * then the token (404: unknown, expired, used, or for another kind), then what the session
   * needs of the request (ports, a subprotocol we speak: 400).
   */
  private route(req: Request, server: Server<SocketData>): Response | undefined {
    const url = new URL(req.url);
    const match = ROUTE.exec(url.pathname);
    if (!match) return plain(404, "not found");
    const check = checkUpgrade(req);
    if (!check.ok) return plain(check.status, check.message);
    const kind = match[1] as Kind;
    const token = match[2]!;
    const prepared = this.sessions.peek(token);
    if (!prepared || prepared.kind !== kind) return plain(404, "session not found");

    const offered = offeredProtocols(req.headers.get("sec-websocket-protocol"));
    const supported = kind === "port-forward" ? PORT_FORWARD_PROTOCOLS : REMOTECOMMAND_PROTOCOLS;
    const protocol = negotiateProtocol(offered, supported);
    if (protocol === null) {
      return plain(400, `requested protocol(s) are not supported: ${offered.join(", ")}; supports ${supported.join(", ")}`);
    }
    let session: StreamSession;
    try {
      session = this.createSession(prepared, protocol, url);
    } catch (err) {
      return plain(400, errorChain(err));
    }
    // An explicit empty value stops Bun from echoing the client's first offer by itself.
    const upgraded = server.upgrade(req, {
      data: { session, label: `${kind} session ${token}` },
      headers: { "Sec-WebSocket-Protocol": protocol },
    });
    if (!upgraded) return plain(400, "WebSocket upgrade failed");
    this.sessions.take(token);
    this.log.debug(`${kind} session ${token} connected${protocol ? ` (${protocol})` : ""}`);
    return undefined;
  }

  private createSession(prepared: Prepared, protocol: string, url: URL): StreamSession {
    switch (prepared.kind) {
      case "exec":
        return new ExecSession(prepared.req, protocol, { config: this.config, log: this.log, track: (pid) => this.processes.track(pid) });
      case "attach":
        return new AttachSession(prepared.req, protocol, this.containers, this.log);
      case "port-forward":
        return new PortForwardSession(prepared.req, parsePorts(url.searchParams), this.log);
    }
  }

  // ---- shutdown -------------------------------------------------------------------------------

  /** Closes every session (their exec processes are killed) and the listener; waits for the reaping. */
  async shutdown(): Promise<void> {
    this.stopping = true;
    for (const ws of [...this.sockets]) ws.close(1001, "server shutting down");
    const server = this.server;
    this.server = null;
    if (server) await Promise.race([server.stop(true), Bun.sleep(1000)]);
    await this.processes.killAll();
  }
}
