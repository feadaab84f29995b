// Running the OCI runtime (runc/crun) from the bench, the way an engine does: one process per
// command, stdout to /dev/null, stderr to a scratch file (never a pipe: a created container inherits
// the runtime's stdio, and a pipe would then only reach EOF when the container exits).
import { closeSync, ftruncateSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { spawnTracked } from "../../src/child-reaper.ts";
import { closeQuietly } from "../../ffi/fd.ts";
import { pidfdOpen } from "../../ffi/process.ts";
import { timeEvents, type EventSource } from "./sys.ts";

export type Stdio = [number | "ignore", number | "ignore", number | "ignore"];

const COMMAND_TIMEOUT_MS = 30_000;

export class RuntimeCli {
  private readonly stderrPath: string;
  private readonly stderrFd: number;

  constructor(
    readonly name: "runc" | "crun",
    readonly path: string,
    readonly root: string,
    scratchDir: string,
  ) {
    this.stderrPath = join(scratchDir, `${name}-stderr`);
    this.stderrFd = openSync(this.stderrPath, "a+");
  }

  argv(args: string[]): string[] {
    return [this.path, `--root=${this.root}`, ...args];
  }

  /** Starts `runtime args...`; stderr goes to the scratch file unless `stdio` says otherwise. */
  spawn(args: string[], stdio: Stdio = ["ignore", "ignore", this.stderrFd]): Bun.Subprocess {
    ftruncateSync(this.stderrFd, 0);
    return spawnTracked(this.argv(args), { stdio: stdio as any, env: { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin" } });
  }

  /** Runs to completion; throws with the runtime's stderr on a non-zero exit. */
  async run(args: string[], stdio?: Stdio): Promise<void> {
    const proc = this.spawn(args, stdio);
    await this.check(proc, args);
  }

  /** Like run(), but ignores failures (cleanup paths). */
  async tryRun(args: string[]): Promise<boolean> {
    const proc = this.spawn(args);
    return (await proc.exited) === 0;
  }

  /**
   * Runs `args` and times it from spawn to the process's exit, observed by a blocking poll on its
   * pidfd (microsecond resolution, no event-loop latency). `extra` sources are timed alongside
   * (say, the container's own exit while `start` runs). Returns performance.now() stamps.
   */
  async timed(args: string[], opts: { stdio?: Stdio; extra?: EventSource[]; timeoutMs?: number } = {}): Promise<Record<string, number>> {
    const spawned = performance.now();
    const proc = this.spawn(args, opts.stdio);
    const pidfd = pidfdOpen(proc.pid);
    let events: Record<string, number>;
    try {
      events = timeEvents([{ name: "returned", fd: pidfd }, ...(opts.extra ?? [])], opts.timeoutMs ?? COMMAND_TIMEOUT_MS);
    } finally {
      closeQuietly(pidfd);
    }
    await this.check(proc, args);
    return { spawned, ...events };
  }

  private async check(proc: Bun.Subprocess, args: string[]): Promise<void> {
    const code = await Promise.race([proc.exited, Bun.sleep(COMMAND_TIMEOUT_MS).then(() => "timeout" as const)]);
    if (code === "timeout") {
      proc.kill("SIGKILL");
      throw new Error(`${this.name} ${args.join(" ")}: timed out`);
    }
    if (code !== 0) {
      const stderr = readFileSync(this.stderrPath, "utf8").trim();
      throw new Error(`${this.name} ${args.join(" ")} exited ${code}: ${stderr}`);
    }
  }

  close(): void {
    closeSync(this.stderrFd);
  }
}

/** Reads a pid file written by the runtime or conmon. */
export function readPidFile(path: string): number {
  const pid = Number(readFileSync(path, "utf8").trim());
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`bad pid file ${path}`);
  return pid;
}
