// Create overhead and exit-file latency of a `true` container, one iteration per call, for the
// bare runtime, C conmon (CRI-O protocol) and our server.
//
// Timestamps (performance.now(), µs resolution, blocking poll(2) in the bench, see sys.ts):
//   create      bare: spawn of `runtime create` → its exit (pidfd); conmon: spawn → `{"pid":N}` on
//               the sync pipe; ours: createContainer sent → response received.
//   ctrExit     the container init's exit, seen through a pidfd on it (the bench is root).
//   exitFile    the exit file appearing in the exit dir (inotify).
//   returned    `runtime start` exiting (pidfd on it).
import { join } from "node:path";
import { rmSync } from "node:fs";
import { closeQuietly } from "../../ffi/fd.ts";
import { pidfdOpen } from "../../ffi/process.ts";
import { finishConmon, launchConmon, removeConmonFiles, type ConmonDirs } from "./conmon.ts";
import type { BenchContext } from "./context.ts";
import { cpuDelta, cpuTimes } from "./procfs.ts";
import { reapIfZombie } from "./reaper.ts";
import { readPidFile } from "./runtime-cli.ts";
import { exitFileSource, waitReadable, type DirWatch } from "./sys.ts";

export type LifecycleSample = {
  /** create (see above), ms */
  createMs: number;
  /** `runtime start`, ms */
  startMs: number;
  /** container exit − start returned (negative when the container exited first), ms */
  ctrExitAfterStartMs: number;
  /** exit file − container exit, ms (monitors only) */
  exitFileAfterCtrExitMs?: number;
  /** exit file − start returned, ms: research §3b's "start returned → exit file written" */
  exitFileAfterStartMs?: number;
  /** the monitor's own CPU for this container's whole life, ms */
  monitorCpuMs?: number;
};

const START_TIMEOUT_MS = 30_000;

/** `runtime start`, timing the container's exit (and the exit file, for monitors) alongside. */
async function startAndTime(ctx: BenchContext, id: string, containerPid: number, exitWatch?: DirWatch) {
  const ctrPidfd = pidfdOpen(containerPid);
  try {
    const extra = [{ name: "ctrExit", fd: ctrPidfd }];
    if (exitWatch) extra.push(exitFileSource(exitWatch, id));
    const t = await ctx.rt.timed(["start", id], { extra, timeoutMs: START_TIMEOUT_MS });
    if (t.ctrExit === undefined || (exitWatch && t.exitFile === undefined)) throw new Error(`${id}: no exit seen within ${START_TIMEOUT_MS} ms`);
    return t;
  } finally {
    closeQuietly(ctrPidfd);
  }
}

function sampleFrom(createMs: number, t: Record<string, number>): LifecycleSample {
  const sample: LifecycleSample = {
    createMs,
    startMs: t.returned! - t.spawned!,
    ctrExitAfterStartMs: t.ctrExit! - t.returned!,
  };
  if (t.exitFile !== undefined) {
    sample.exitFileAfterCtrExitMs = t.exitFile - t.ctrExit!;
    sample.exitFileAfterStartMs = t.exitFile - t.returned!;
  }
  return sample;
}

/** No monitor: create (stdio to /dev/null and a scratch file), start, the init exits, delete. */
export async function bareLifecycle(ctx: BenchContext): Promise<LifecycleSample> {
  const id = ctx.nextId("bare");
  const bundle = ctx.rootfs.bundle(id, ["true"]);
  const pidFile = join(bundle, "ctr.pid");
  ctx.live.add(id);
  try {
    const create = await ctx.rt.timed(["create", "--bundle", bundle, "--pid-file", pidFile, id]);
    const containerPid = readPidFile(pidFile);
    const t = await startAndTime(ctx, id, containerPid);
    reapIfZombie(containerPid); // re-parented to the bench, a subreaper
    return sampleFrom(create.returned! - create.spawned!, t);
  } finally {
    await ctx.live.remove(id);
    rmSync(bundle, { recursive: true, force: true });
  }
}

/** C conmon with a k8s-file log, as CRI-O runs it. */
export async function conmonLifecycle(ctx: BenchContext, dirs: ConmonDirs, exitWatch: DirWatch): Promise<LifecycleSample> {
  const id = ctx.nextId("conmon");
  const bundle = ctx.rootfs.bundle(id, ["true"]);
  const logPath = join(ctx.logDir, `${id}.log`);
  ctx.live.add(id);
  try {
    const launch = await launchConmon(ctx.rt, dirs, id, bundle, `k8s-file:${logPath}`);
    const t = await startAndTime(ctx, id, launch.containerPid, exitWatch);
    waitForExit(launch.conmonPidfd, `conmon of ${id}`);
    const cpu = finishConmon(launch);
    return { ...sampleFrom(launch.createdAt - launch.spawnedAt, t), monitorCpuMs: cpu.schedSeconds * 1000 };
  } finally {
    await ctx.live.remove(id);
    rmSync(bundle, { recursive: true, force: true });
    rmSync(logPath, { force: true });
    removeConmonFiles(dirs, id);
  }
}

/** Our server with a CRI log, over the RPC. Its CPU is the delta of its counters around the life. */
export async function ourLifecycle(ctx: BenchContext, exitWatch: DirWatch): Promise<LifecycleSample> {
  const id = ctx.nextId("ours");
  const bundle = ctx.rootfs.bundle(id, ["true"]);
  const logPath = join(ctx.logDir, `${id}.log`);
  const cpuBefore = cpuTimes(ctx.ours.pid);
  ctx.live.add(id);
  try {
    const created = await ctx.ours.create(id, bundle, { type: "cri", path: logPath });
    const t = await startAndTime(ctx, id, created.containerPid, exitWatch);
    const cpu = cpuDelta(cpuBefore, cpuTimes(ctx.ours.pid));
    return { ...sampleFrom(created.createdAt - created.sentAt, t), monitorCpuMs: cpu.schedSeconds * 1000 };
  } finally {
    await ctx.live.remove(id);
    rmSync(bundle, { recursive: true, force: true });
    rmSync(logPath, { force: true });
    rmSync(ctx.ours.exitFile(id), { force: true });
  }
}

function waitForExit(pidfd: number, what: string): void {
  if (!waitReadable(pidfd, START_TIMEOUT_MS)) throw new Error(`${what} did not exit`);
}
