// Log throughput and monitor CPU (research §3d): one container `cat`s a file of 100-byte or 2-byte
// lines 5 times to its stdout (busybox cat: sendfile, 64 KiB writes), through
//   ours-cri     our server, CRI log driver to a file
//   ours-none    our server, no log driver (read and discard)
//   conmon-k8s   C conmon -l k8s-file:FILE (the same CRI format)
//   conmon-none  C conmon -l none:
//   pipe         container → pipe → `busybox cat` → file: a minimal copier, no framing
//   plain        the container's stdout is the file: no monitor at all
// Wall time: `runtime start` returned → container exit (pidfd), as research §3d; for `pipe` until
// the copier exited. The exit-file time is reported too (for conmon it includes the closing fsync).
// CPU: conmon's own utime+stime and schedstat from its zombie; our long-lived server's counters
// diffed around the run (schedstat summed over its threads, ns precision).
import { closeSync, openSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { spawnTracked } from "../../src/child-reaper.ts";
import { closeQuietly, pipe } from "../../ffi/fd.ts";
import { pidfdOpen } from "../../ffi/process.ts";
import { catArgs, type LogWorkload } from "./bundles.ts";
import { finishConmon, launchConmon, removeConmonFiles, type ConmonDirs } from "./conmon.ts";
import type { BenchContext } from "./context.ts";
import { cpuDelta, cpuTimes, ioCounters, ioDelta, memory, type CpuTimes, type IoCounters } from "./procfs.ts";
import { reapIfZombie } from "./reaper.ts";
import { readPidFile, type Stdio } from "./runtime-cli.ts";
import { exitFileSource, type DirWatch, type EventSource } from "./sys.ts";

export type LogMode = "ours-cri" | "ours-none" | "conmon-k8s" | "conmon-none" | "pipe" | "plain";

export type LogSample = {
  workload: string;
  mode: LogMode;
  payloadBytes: number;
  wallS: number;
  exitFileS?: number;
  /** Monitor (or copier) CPU: ns-precision schedstat where available. */
  cpuS?: number;
  /** The same from utime+stime (10 ms ticks). */
  cpuStatS?: number;
  logFileBytes: number;
  /** Peak RSS of the monitor during the run (VmHWM), KiB. */
  peakKiB?: number;
  /** The monitor's read/write-type system calls in the run (/proc/<pid>/io syscr, syscw). */
  readCalls?: number;
  writeCalls?: number;
};

const RUN_TIMEOUT_MS = 600_000;

type Run = { id: string; bundle: string; logPath: string };

function prepare(ctx: BenchContext, w: LogWorkload, mode: LogMode): Run {
  const id = ctx.nextId(`${w.name}-${mode}`);
  return { id, bundle: ctx.rootfs.bundle(id, catArgs(w)), logPath: join(ctx.logDir, `${id}.log`) };
}

async function finish(ctx: BenchContext, run: Run): Promise<number> {
  const size = fileSize(run.logPath);
  await ctx.live.remove(run.id);
  rmSync(run.bundle, { recursive: true, force: true });
  rmSync(run.logPath, { force: true });
  return size;
}

function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

async function startTimed(ctx: BenchContext, id: string, sources: EventSource[]): Promise<Record<string, number>> {
  const t = await ctx.rt.timed(["start", id], { extra: sources, timeoutMs: RUN_TIMEOUT_MS });
  for (const s of sources) if (t[s.name] === undefined) throw new Error(`${id}: ${s.name} not seen`);
  return t;
}

const seconds = (from: number, to: number) => (to - from) / 1000;

/** A monitor's run (ours or conmon): timings from `start`, its CPU, I/O calls and peak RSS. */
function monitorSample(
  w: LogWorkload, mode: LogMode, t: Record<string, number>, cpu: CpuTimes, io: IoCounters, peakKiB: number | undefined, logPath: string | null,
): LogSample {
  return {
    workload: w.name, mode, payloadBytes: w.payloadBytes,
    wallS: seconds(t.returned!, t.ctrExit!), exitFileS: seconds(t.returned!, t.exitFile!),
    cpuS: cpu.schedSeconds, cpuStatS: cpu.statSeconds, peakKiB, readCalls: io.syscr, writeCalls: io.syscw,
    logFileBytes: logPath === null ? 0 : fileSize(logPath),
  };
}

export async function oursLogRun(ctx: BenchContext, w: LogWorkload, withCri: boolean, exitWatch: DirWatch): Promise<LogSample> {
  const mode: LogMode = withCri ? "ours-cri" : "ours-none";
  const run = prepare(ctx, w, mode);
  ctx.live.add(run.id);
  let ctrPidfd = -1;
  try {
    const created = await ctx.ours.create(run.id, run.bundle, withCri ? { type: "cri", path: run.logPath } : null);
    ctrPidfd = pidfdOpen(created.containerPid);
    ctx.ours.resetPeakRss();
    const before = cpuTimes(ctx.ours.pid);
    const ioBefore = ioCounters(ctx.ours.pid);
    const t = await startTimed(ctx, run.id, [{ name: "ctrExit", fd: ctrPidfd }, exitFileSource(exitWatch, run.id)]);
    const cpu = cpuDelta(before, cpuTimes(ctx.ours.pid));
    const io = ioDelta(ioBefore, ioCounters(ctx.ours.pid));
    const peakKiB = memory(ctx.ours.pid).VmHWM;
    return monitorSample(w, mode, t, cpu, io, peakKiB, withCri ? run.logPath : null);
  } finally {
    closeQuietly(ctrPidfd);
    await finish(ctx, run);
    rmSync(ctx.ours.exitFile(run.id), { force: true });
  }
}

export async function conmonLogRun(ctx: BenchContext, w: LogWorkload, withLog: boolean, dirs: ConmonDirs, exitWatch: DirWatch): Promise<LogSample> {
  const mode: LogMode = withLog ? "conmon-k8s" : "conmon-none";
  const run = prepare(ctx, w, mode);
  ctx.live.add(run.id);
  let ctrPidfd = -1;
  try {
    const launch = await launchConmon(ctx.rt, dirs, run.id, run.bundle, withLog ? `k8s-file:${run.logPath}` : "none:");
    ctrPidfd = pidfdOpen(launch.containerPid);
    let peakKiB: number | undefined;
    const readPeak = () => {
      try {
        peakKiB = memory(launch.conmonPid).VmHWM; // conmon is still draining/fsyncing here
      } catch {
        // already exited
      }
    };
    const t = await startTimed(ctx, run.id, [
      { name: "ctrExit", fd: ctrPidfd, onFire: readPeak },
      exitFileSource(exitWatch, run.id),
      { name: "monitorExit", fd: launch.conmonPidfd },
    ]);
    const io: IoCounters = ioCounters(launch.conmonPid); // a whole life's worth: conmon is fresh
    const cpu = finishConmon(launch);
    return monitorSample(w, mode, t, cpu, io, peakKiB, withLog ? run.logPath : null);
  } finally {
    closeQuietly(ctrPidfd);
    await finish(ctx, run);
    removeConmonFiles(dirs, run.id);
  }
}

/** `runtime create` with the given stdio; returns the container pid. */
async function bareCreate(ctx: BenchContext, run: Run, stdio: Stdio): Promise<number> {
  const pidFile = join(run.bundle, "ctr.pid");
  await ctx.rt.run(["create", "--bundle", run.bundle, "--pid-file", pidFile, run.id], stdio);
  return readPidFile(pidFile);
}

export async function plainLogRun(ctx: BenchContext, w: LogWorkload): Promise<LogSample> {
  const run = prepare(ctx, w, "plain");
  ctx.live.add(run.id);
  let ctrPidfd = -1;
  try {
    const out = openSync(run.logPath, "w");
    let containerPid: number;
    try {
      containerPid = await bareCreate(ctx, run, ["ignore", out, out]);
    } finally {
      closeSync(out);
    }
    ctrPidfd = pidfdOpen(containerPid);
    const t = await startTimed(ctx, run.id, [{ name: "ctrExit", fd: ctrPidfd }]);
    reapIfZombie(containerPid);
    return { workload: w.name, mode: "plain", payloadBytes: w.payloadBytes, wallS: seconds(t.returned!, t.ctrExit!), logFileBytes: fileSize(run.logPath) };
  } finally {
    closeQuietly(ctrPidfd);
    await finish(ctx, run);
  }
}

export async function pipeLogRun(ctx: BenchContext, w: LogWorkload): Promise<LogSample> {
  const run = prepare(ctx, w, "pipe");
  ctx.live.add(run.id);
  const [readEnd, writeEnd] = pipe();
  const out = openSync(run.logPath, "w");
  const copier = spawnTracked(["/bin/busybox", "cat"], { stdio: [readEnd, out, "ignore"] as any });
  closeQuietly(readEnd);
  closeSync(out);
  let ctrPidfd = -1;
  const copierPidfd = pidfdOpen(copier.pid);
  try {
    let containerPid: number;
    try {
      containerPid = await bareCreate(ctx, run, ["ignore", writeEnd, writeEnd]);
    } finally {
      closeQuietly(writeEnd); // the container holds its copy; EOF comes when it exits
    }
    ctrPidfd = pidfdOpen(containerPid);
    const t = await startTimed(ctx, run.id, [{ name: "ctrExit", fd: ctrPidfd }, { name: "copierExit", fd: copierPidfd }]);
    reapIfZombie(containerPid);
    await copier.exited;
    const usage = copier.resourceUsage();
    const cpuS = usage ? Number(usage.cpuTime.total) / 1e6 : undefined;
    return { workload: w.name, mode: "pipe", payloadBytes: w.payloadBytes, wallS: seconds(t.returned!, t.copierExit!), cpuS, logFileBytes: fileSize(run.logPath) };
  } finally {
    closeQuietly(ctrPidfd);
    closeQuietly(copierPidfd);
    if (copier.exitCode === null) copier.kill("SIGKILL");
    await finish(ctx, run);
  }
}
