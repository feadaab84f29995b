// Exec and attach sessions: Kubernetes remotecommand (v4/v5 channel protocol) on a WebSocket
// (spec §14). Output goes out as `[1|2] + chunk`, the client's stdin / resize / close arrive as
// `[0|4|255] + payload`, and the session ends with a status on channel 3 and a close 1000.

import { rmSync } from "node:fs";
import { join } from "node:path";
import type { ServerConfig } from "../cli.ts";
import type { ExitInfo } from "../child-reaper.ts";
import { ContainerIO, type StreamName } from "../container-io.ts";
import type { Container, Containers } from "../containers.ts";
import { errorChain } from "../errors.ts";
import { killTree, startRuntimeExec } from "../exec-sync.ts";
import type { Logger } from "../logger.ts";
import {
  Channel,
  exitCodeStatus,
  internalErrorStatus,
  parseResize,
  successStatus,
  supportsStreamClose,
  type TerminalSize,
} from "./protocol.ts";
import { FrameSender, type WebSocketLike } from "./sender.ts";
import type { StreamSession } from "./sessions.ts";

/** Exec output a slow client may leave queued before more is dropped (exec-sync's cap per stream). */
export const EXEC_SEND_LIMIT = 16 * 1024 * 1024;
/** Attach: a live stream, so a client that falls behind loses its own data sooner. */
export const ATTACH_SEND_LIMIT = 4 * 1024 * 1024;
/** Stdin queued for the container beyond which we stop reading the client (TCP backpressure). */
export const STDIN_PAUSE_BYTES = 256 * 1024;
/** Client messages kept while the exec is being started (the client is paused meanwhile). */
const PENDING_INPUT_LIMIT = 4 * 1024 * 1024;
/**
 * After the exec's process exited, how long its output may take to end. Normally it ends at once
 * (the last writer is gone); a background child that inherited the pipe or pty would hold it
 * open for ever, so the status goes out after this at the latest.
 */
const OUTPUT_DRAIN_MS = 2000;

const encoder = new TextEncoder();

export type OutputSelection = { stdout: boolean; stderr: boolean };

/** What both kinds share: channel dispatch, the outgoing queue, pausing the client, the ending. */
abstract class RemoteCommandSession implements StreamSession {
  protected ws: WebSocketLike | null = null;
  protected sender: FrameSender | null = null;
  /** The WebSocket closed: nothing more goes out, everything is released. */
  protected gone = false;
  private finishing = false;
  private statusSent = false;
  private readonly pauses = new Set<string>();

  constructor(
    protected readonly label: string,
    protected readonly protocol: string,
    protected readonly output: OutputSelection,
    private readonly sendLimit: number,
    protected readonly log: Logger,
  ) {}

  open(ws: WebSocketLike): void {
    this.ws = ws;
    this.sender = new FrameSender(ws, this.sendLimit);
    this.start();
  }

  message(data: Uint8Array): void {
    if (this.gone || this.statusSent || data.length === 0) return;
    const payload = data.subarray(1);
    switch (data[0]) {
      case Channel.stdin:
        this.onStdin(payload);
        return;
      case Channel.resize: {
        const size = parseResize(payload);
        if (size === null) this.log.warn(`${this.label}: ignoring a malformed resize message`);
        else this.onResize(size);
        return;
      }
      case Channel.close:
        if (supportsStreamClose(this.protocol) && payload.length === 1) {
          if (payload[0] === Channel.stdin) this.onStdinClosed();
          return;
        }
        break;
    }
    this.log.debug(`${this.label}: ignoring a message on channel ${data[0]}`);
  }

  drain(): void {
    this.sender?.onDrain();
  }

  closed(): void {
    if (this.gone) return;
    this.gone = true;
    this.sender?.close();
    this.release();
    if (this.sender && this.sender.droppedBytes > 0) this.reportDrops();
  }

  protected abstract start(): void;
  protected abstract onStdin(payload: Uint8Array): void;
  protected abstract onStdinClosed(): void;
  protected abstract onResize(size: TerminalSize): void;
  /** The client is gone: stop what runs for it. Idempotent. */
  protected abstract release(): void;

  /** One chunk of output (borrowed) to the client, on the channel of its stream. */
  protected sendOutput(stream: StreamName, chunk: Uint8Array): void {
    if (this.gone || this.statusSent) return;
    if (!this.output[stream]) return;
    this.sender!.send(stream === "stdout" ? Channel.stdout : Channel.stderr, chunk, "bounded");
  }

  /** Feeds the container's stdin; stops reading the client while the container lags. */
  protected forwardStdin(io: ContainerIO, payload: Uint8Array): void {
    if (!io.writeStdin(payload)) {
      this.log.warn(`${this.label}: ${payload.length} bytes of stdin dropped (stdin closed or its backlog full)`);
      return;
    }
    if (io.stdinBacklog > STDIN_PAUSE_BYTES && !this.pauses.has("stdin")) {
      this.pause("stdin");
      void io.stdinDrained().then(() => this.resume("stdin"));
    }
  }

  protected pause(reason: string): void {
    if (this.gone) return;
    if (this.pauses.size === 0) this.ws!.pause();
    this.pauses.add(reason);
  }

  protected resume(reason: string): void {
    if (!this.pauses.delete(reason) || this.gone) return;
    if (this.pauses.size === 0) this.ws!.resume();
  }

  /** All output out, then the status on channel 3, then close 1000. Once only. */
  protected async finish(status: string): Promise<void> {
    if (this.finishing || this.gone) return;
    this.finishing = true;
    await this.sender!.flushed();
    if (this.gone) return;
    this.statusSent = true;
    this.sender!.send(Channel.error, encoder.encode(status), "keep");
    await this.sender!.flushed();
    if (this.gone) return;
    if (this.sender!.droppedBytes > 0) this.reportDrops();
    // Bun sends the close frame after everything buffered before it.
    this.ws!.close(1000, "done");
  }

  private reportDrops(): void {
    const s = this.sender!;
    this.log.warn(`${this.label}: the client fell behind; ${s.droppedBytes} bytes of output in ${s.droppedFrames} messages were dropped`);
    s.droppedBytes = 0;
  }
}

// ---- exec ---------------------------------------------------------------------------------------

export interface ExecRequest {
  id: string;
  command: string[];
  tty: boolean;
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
  systemdCgroup: boolean;
}

export interface ExecEnvironment {
  config: ServerConfig;
  log: Logger;
  /** Watches an exec'd process until reaped, and lets shutdown kill it. */
  track(pid: number): Promise<ExitInfo>;
}

/**
 * `runtime exec -d` as exec-sync runs it (pid file `exec_streaming<uuid>pid`, env NOT passed,
 * stdin piped iff requested), streamed. Unlike upstream, all output is sent before the status
 * (upstream races output and exit in one select and can lose the tail).
 */
export class ExecSession extends RemoteCommandSession {
  private io: ContainerIO | null = null;
  private pid: number | null = null;
  private ready = false;
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;

  constructor(
    private readonly req: ExecRequest,
    protocol: string,
    private readonly env: ExecEnvironment,
  ) {
    super(`exec session in ${req.id}`, protocol, { stdout: req.stdout, stderr: req.stderr && !req.tty }, EXEC_SEND_LIMIT, env.log);
  }

  protected start(): void {
    // Until the process runs (and, for a tty, the pty is here) input has nowhere to go: stop
    // reading the client and keep the few messages already read.
    this.pause("starting");
    void this.run().catch((err) => {
      this.log.error(`${this.label}: ${errorChain(err)}`);
      void this.finish(internalErrorStatus(errorChain(err)));
    });
  }

  override message(data: Uint8Array): void {
    if (this.ready) {
      super.message(data);
      return;
    }
    if (this.pendingBytes + data.length > PENDING_INPUT_LIMIT) {
      this.log.warn(`${this.label}: input before the exec started exceeds ${PENDING_INPUT_LIMIT} bytes; dropped`);
      return;
    }
    this.pending.push(data.slice());
    this.pendingBytes += data.length;
  }

  private async run(): Promise<void> {
    const pidFile = join(this.env.config.runtimeDir, `exec_streaming${crypto.randomUUID()}pid`);
    let io: ContainerIO | null = null;
    try {
      const ioOptions = { stdin: this.req.stdin, log: this.log };
      io = this.req.tty ? await ContainerIO.terminal(ioOptions) : ContainerIO.streams(ioOptions);
      this.io = io;
      io.subscribe({ onData: (stream, chunk) => this.sendOutput(stream, chunk), onEnd() {} });
      let pid: number;
      try {
        pid = await startRuntimeExec(this.env.config, io, {
          id: this.req.id,
          command: this.req.command,
          systemdCgroup: this.req.systemdCgroup,
          pidFile,
          stdin: this.req.stdin,
        });
      } catch (err) {
        // The runtime's own complaint went to the exec's stderr pipe: let it reach the client first.
        this.log.warn(`${this.label}: ${errorChain(err)}`);
        await this.outputEnded(io);
        await this.finish(internalErrorStatus(`exec in container ${this.req.id}: ${errorChain(err)}`));
        return;
      }
      const exited = this.env.track(pid);
      if (this.gone) {
        killTree(pid); // the client left while the runtime was starting the process
        await exited;
        return;
      }
      this.pid = pid;
      this.becomeReady();
      const exit = await exited;
      this.pid = null;
      await this.outputEnded(io);
      await this.finish(exit.code === 0 ? successStatus() : exitCodeStatus(exit.code));
    } finally {
      rmSync(pidFile, { force: true });
      if (io !== null) {
        const finished = io;
        void Promise.race([finished.ended, Bun.sleep(1000)]).then(() => finished.close());
      }
    }
  }

  /** Whatever the process wrote is read and queued (or OUTPUT_DRAIN_MS passed). */
  private async outputEnded(io: ContainerIO): Promise<void> {
    io.drainNow(); // a pty's hang-up raises no signal: look now
    await Promise.race([io.ended, Bun.sleep(OUTPUT_DRAIN_MS)]);
  }

  private becomeReady(): void {
    this.ready = true;
    const pending = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    for (const data of pending) super.message(data);
    this.resume("starting");
  }

  protected onStdin(payload: Uint8Array): void {
    if (this.req.stdin && this.io) this.forwardStdin(this.io, payload);
  }

  protected onStdinClosed(): void {
    this.io?.closeStdin();
  }

  protected onResize(size: TerminalSize): void {
    if (!this.req.tty || !this.io) return;
    try {
      this.io.setWindowSize(size.height, size.width);
    } catch (err) {
      this.log.warn(`${this.label}: resize to ${size.width}x${size.height}: ${errorChain(err)}`);
    }
  }

  protected release(): void {
    this.pending = [];
    if (this.pid !== null) {
      this.log.debug(`${this.label}: client gone, killing pid ${this.pid}`);
      killTree(this.pid);
    }
  }
}

// ---- attach -------------------------------------------------------------------------------------

export interface AttachRequest {
  id: string;
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
}

/**
 * Joins a running container's streams. Differences from upstream (Q12): no replay of output
 * produced before the session connected (like the attach socket, §9), and every session gets
 * every chunk (upstream's sessions compete for chunks of one MPMC channel). A client that falls
 * behind loses its own output beyond ATTACH_SEND_LIMIT; the container is never slowed down.
 */
export class AttachSession extends RemoteCommandSession {
  private container: Container | null = null;
  private unsubscribe: (() => void) | null = null;
  private stdinOpen = false;

  constructor(
    private readonly req: AttachRequest,
    protocol: string,
    private readonly containers: Pick<Containers, "get">,
    log: Logger,
  ) {
    super(`attach session to ${req.id}`, protocol, { stdout: req.stdout, stderr: req.stderr }, ATTACH_SEND_LIMIT, log);
  }

  protected start(): void {
    let container: Container;
    try {
      container = this.containers.get(this.req.id); // it may have exited since the RPC
    } catch (err) {
      void this.finish(internalErrorStatus(`error attaching to container: ${errorChain(err)}`));
      return;
    }
    this.container = container;
    this.stdinOpen = this.req.stdin && container.stdin;
    this.unsubscribe = container.io.subscribe({ onData: (stream, chunk) => this.sendOutput(stream, chunk), onEnd() {} });
    // The output ends with the container; `exited` covers a grandchild that keeps the pipe open.
    void Promise.race([container.io.ended, container.exited]).then(() => this.finish(successStatus()));
  }

  protected onStdin(payload: Uint8Array): void {
    if (this.stdinOpen) this.forwardStdin(this.container!.io, payload);
  }

  /** Only this session stops sending: the container's stdin is shared with other attach clients. */
  protected onStdinClosed(): void {
    this.stdinOpen = false;
  }

  protected onResize(size: TerminalSize): void {
    const io = this.container?.io;
    if (!io?.terminal) return;
    try {
      io.setWindowSize(size.height, size.width);
    } catch (err) {
      this.log.warn(`${this.label}: resize to ${size.width}x${size.height}: ${errorChain(err)}`);
    }
  }

  protected release(): void {
    this.unsubscribe?.();
    this.unsubscribe = null;
  }
}
