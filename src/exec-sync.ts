// execSyncContainer (ordinal 2): `runtime exec -d` a command in a container, capture its output,
// answer its exit code. Kubelet probes call this every few seconds in every pod, so it must be
// cheap and must never let a chatty or hanging command hurt the server.

import { readFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import type { ServerConfig } from "./cli.ts";
import { ChildReaper, spawnTracked, type ExitInfo } from "./child-reaper.ts";
import { ContainerIO, type StreamName } from "./container-io.ts";
import { errorChain, withContext } from "./errors.ts";
import type { Logger } from "./logger.ts";
import { execArgs } from "./runtime-args.ts";
import { runtimeConfig, runtimeEnv } from "./runtime.ts";
import { getpgid, getpid, kill, killProcessGroup } from "../ffi/process.ts";
import { Conmon_CgroupManager } from "../schema/conmon.ts";
import { replyWith } from "./rpc/results.ts";
import { encodeExecResults, type ExecResultFields } from "./call-results.ts";
import type { ExecSyncParams } from "./request-params.ts";

/** Per stream (CVE-2022-1708): output beyond this is dropped, not an error. */
export const MAX_EXEC_OUTPUT = 16 * 1024 * 1024;
/** After the exec exits, how long its output may still drain (a background child may hold the pipe). */
const OUTPUT_DRAIN_MS = 100;

export const EXIT_CODE_TIMEOUT = -3;
export const EXIT_CODE_RUNTIME_FAILED = -2;

export type ExecResult = ExecResultFields;

/** Collects one stream up to a cap; a chunk that would cross the cap ends collection (as upstream). */
export class CappedBuffer {
  private readonly chunks: Uint8Array[] = [];
  private length = 0;
  private full = false;

  constructor(private readonly cap = MAX_EXEC_OUTPUT) {}

  push(chunk: Uint8Array): void {
    if (this.full) return;
    if (this.length + chunk.byteLength >= this.cap) {
      this.full = true;
      return;
    }
    this.chunks.push(chunk.slice());
    this.length += chunk.byteLength;
  }

  bytes(): Uint8Array {
    if (this.chunks.length === 1) return this.chunks[0]!;
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const c of this.chunks) {
      out.set(c, at);
      at += c.byteLength;
    }
    return out;
  }
}

/** Kills an exec's process group (never our own, quirk Q16) and the process itself. */
export function killTree(pid: number): void {
  const pgid = getpgid(pid);
  if (pgid > 1 && pgid !== getpgid(getpid())) {
    try {
      killProcessGroup(pgid, "SIGKILL");
    } catch {
      // group already gone
    }
  }
  try {
    kill(pid, "SIGKILL");
  } catch {
    // already exited
  }
}

export interface RuntimeExecRequest {
  id: string;
  command: string[];
  systemdCgroup: boolean;
  /** `--pid-file`; the caller removes it. */
  pidFile: string;
  /** Added to the runtime process's environment (not the exec'd command's, quirk Q18). */
  env?: Record<string, string>;
  /** Hand `io`'s stdin pipe to the runtime (the exec'd process inherits it); else /dev/null. */
  stdin: boolean;
  /**
   * Called once with the exec'd process's pid as soon as the pid file names it (looked for every
   * 50 ms while the runtime runs), at the latest just before the pid is returned. Start watching
   * the process here: under load the runtime can exit long after the process did, which is then
   * already our zombie (re-parented to us, the subreaper), and the child reaper takes the status
   * of a zombie nobody watches after its grace period (1 s); the exit code would be lost (-1).
   */
  onPid?: (pid: number) => void;
}

const PID_FILE_POLL_MS = 50;

/** The pid in an exec pid file, or null while it is missing or not fully written. */
function pidFromFile(path: string): number | null {
  try {
    const pid = Number(readFileSync(path, "utf8").trim());
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

/** Runs `<runtime> ... exec -d` with `io`'s child ends (or its console socket), starts `io`
 * reading once its fds are connected, and resolves with the exec'd process's pid from the pid
 * file. Rejects with context when the runtime fails; the runtime itself has exited either way. */
export async function startRuntimeExec(config: ServerConfig, io: ContainerIO, req: RuntimeExecRequest): Promise<number> {
  const argv = [
    config.runtime,
    ...execArgs(runtimeConfig(config), { id: req.id, command: req.command, systemdCgroup: req.systemdCgroup, pidFile: req.pidFile, consoleSocket: io.consoleSocketPath }),
  ];
  const [stdinFd, stdoutFd, stderrFd] = io.childStdio;
  const proc = spawnTracked(argv, {
    env: runtimeEnv(req.env),
    stdio: [req.stdin ? stdinFd : "ignore", io.terminal ? "pipe" : stdoutFd, io.terminal ? "pipe" : stderrFd] as any,
  });
  io.afterSpawn();
  let reported = false;
  const report = (pid: number) => {
    if (reported) return;
    reported = true;
    req.onPid?.(pid);
  };
  const poll = req.onPid
    ? setInterval(() => {
        const pid = pidFromFile(req.pidFile);
        if (pid !== null) report(pid);
      }, PID_FILE_POLL_MS)
    : undefined;
  try {
    return await finishRuntimeExec(proc, io, req, report);
  } finally {
    clearInterval(poll);
  }
}

async function finishRuntimeExec(
  proc: ReturnType<typeof spawnTracked>,
  io: ContainerIO,
  req: RuntimeExecRequest,
  report: (pid: number) => void,
): Promise<number> {
  // Terminal: the runtime's own output never reaches the pty; keep it for the error message.
  const runtimeOutput = io.terminal
    ? Promise.all([new Response(proc.stdout as any).text(), new Response(proc.stderr as any).text()]).then(([o, e]) => (o + e).trim())
    : Promise.resolve("");
  if (io.terminal) {
    try {
      await io.waitForPty(proc.exited);
    } catch (err) {
      await proc.exited;
      throw err;
    }
  }
  // Streams: read while the runtime runs, so a chatty runtime cannot fill the pipe and hang.
  io.start();
  const runtimeStatus = await proc.exited;
  if (runtimeStatus !== 0) {
    // Streams mode: the runtime's complaint went to the exec's stderr pipe (the caller's output).
    const output = await runtimeOutput;
    throw new Error(`runtime exec exited with ${runtimeStatus}${output ? `: ${output}` : ""}`);
  }
  let text: string;
  try {
    text = readFileSync(req.pidFile, "utf8");
  } catch (err) {
    throw withContext("read exec pid file", err);
  }
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`parse exec pid file ${req.pidFile}: '${text.trim()}'`);
  report(pid);
  return pid;
}

/** Exec'd processes running now (pid → reaped), so shutdown can kill and wait for them. */
export class ExecProcesses {
  private readonly running = new Map<number, Promise<ExitInfo>>();

  constructor(
    private readonly reaper: Pick<ChildReaper, "watch">,
    private readonly log: Logger,
  ) {}

  /** Watches an exec'd process until it is reaped; never rejects. */
  track(pid: number): Promise<ExitInfo> {
    const exited = this.reaper.watch(pid).catch((err): ExitInfo => {
      this.log.error(`watch exec ${pid}: ${errorChain(err)}`);
      return { code: -1 };
    });
    this.running.set(pid, exited);
    void exited.then(() => this.running.delete(pid));
    return exited;
  }

  /** Kills every running exec and waits until each is reaped. */
  async killAll(): Promise<void> {
    for (const pid of this.running.keys()) killTree(pid);
    await Promise.all(this.running.values());
  }
}

export class ExecSync {
  private readonly processes: ExecProcesses;

  constructor(
    private readonly config: ServerConfig,
    reaper: ChildReaper,
    private readonly log: Logger,
  ) {
    this.processes = new ExecProcesses(reaper, log);
  }


  /** Params as readExecSyncParams (src/request-params.ts) reads them from the frame. */
  readonly handle = async (params: ExecSyncParams, results: any): Promise<void> => {
    const req = params.request;
    const result = await this.run({
      id: req.id,
      command: req.command,
      timeoutSec: req.timeoutSec,
      terminal: req.terminal,
      env: req.envVars,
      systemdCgroup: req.cgroupManager === Conmon_CgroupManager.SYSTEMD,
    });
    replyWith(results, encodeExecResults(result));
  };

  async run(opts: {
    id: string;
    command: string[];
    timeoutSec: number;
    terminal: boolean;
    env: Record<string, string>;
    systemdCgroup: boolean;
  }): Promise<ExecResult> {
    const pidFile = join(this.config.runtimeDir, `exec_sync${crypto.randomUUID()}pid`);
    const out = { stdout: new CappedBuffer(), stderr: new CappedBuffer() };
    const failed = (): ExecResult => ({ exitCode: EXIT_CODE_RUNTIME_FAILED, stdout: new Uint8Array(), stderr: new Uint8Array(), timedOut: false });
    let io: ContainerIO | undefined;
    try {
      io = opts.terminal ? await ContainerIO.terminal({ stdin: false, log: this.log }) : ContainerIO.streams({ stdin: false, log: this.log });
      io.subscribe({
        onData: (stream: StreamName, chunk: Uint8Array) => out[stream].push(chunk),
        onEnd() {},
      });
      let pid: number;
      let exited: Promise<ExitInfo> | undefined;
      try {
        pid = await startRuntimeExec(this.config, io, {
          id: opts.id,
          command: opts.command,
          systemdCgroup: opts.systemdCgroup,
          pidFile,
          env: opts.env,
          stdin: false,
          onPid: (p) => (exited = this.track(p)),
        });
      } catch (err) {
        this.log.warn(`exec in ${opts.id}: ${errorChain(err)}`);
        return failed();
      }
      exited ??= this.track(pid);
      const deadline = opts.timeoutSec > 0 ? Bun.sleep(opts.timeoutSec * 1000).then(() => "timeout" as const) : undefined;
      const first = await (deadline ? Promise.race([exited, deadline]) : exited);
      if (first === "timeout") {
        killTree(pid);
        return { exitCode: EXIT_CODE_TIMEOUT, stdout: out.stdout.bytes(), stderr: out.stderr.bytes(), timedOut: true };
      }
      io.drainNow();
      await Promise.race([io.ended, Bun.sleep(OUTPUT_DRAIN_MS)]);
      return { exitCode: first.code, stdout: out.stdout.bytes(), stderr: out.stderr.bytes(), timedOut: false };
    } finally {
      // Removed off the event loop, once the answer is on its way: unlinking a file the runtime
      // just wrote blocked 0.6 ms (median) to 8 ms on ext4 here, stalling every other call.
      setImmediate(() => void rm(pidFile, { force: true }).catch((err) => this.log.warn(`remove exec pid file: ${errorChain(err)}`)));
      const finished = io;
      // Output of a killed exec may still be draining; release the pipes once it ended.
      if (finished) void Promise.race([finished.ended, Bun.sleep(1000)]).then(() => finished.close());
    }
  }

  private track(pid: number): Promise<ExitInfo> {
    return this.processes.track(pid);
  }

  /** Shutdown: kill every running exec and wait until it is reaped. */
  killAll(): Promise<void> {
    return this.processes.killAll();
  }
}
