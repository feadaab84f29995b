// Memory: our server idle, per added container (N `sleep` containers), and while one container
// logs at full speed; C conmon's per-process memory with the same N containers.
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { closeQuietly } from "../../ffi/fd.ts";
import { launchConmon, finishConmon, removeConmonFiles, type ConmonDirs, type ConmonLaunch } from "./conmon.ts";
import type { BenchContext } from "./context.ts";
import { cpuDelta, cpuTimes, memory, type Memory } from "./procfs.ts";
import { median } from "./stats.ts";
import { waitReadable } from "./sys.ts";

const SLEEP_ARGS = ["sleep", "1000000"];
const EXIT_TIMEOUT_MS = 30_000;

/** Per-key median of `count` readings `intervalMs` apart: smooths over GC ups and downs. */
export async function sampleMemory(pid: number, count = 5, intervalMs = 200): Promise<Memory> {
  const readings: Memory[] = [];
  for (let i = 0; i < count; i++) {
    if (i > 0) await Bun.sleep(intervalMs);
    readings.push(memory(pid));
  }
  const out: Record<string, number> = {};
  for (const key of Object.keys(readings[0]!)) out[key] = median(readings.map((r) => r[key as keyof Memory]));
  return out as Memory;
}

export type PerContainer = {
  count: number;
  before: Memory;
  after: Memory;
  /** (after − before) / count, KiB */
  rssAnonKiB: number;
  vmRssKiB: number;
  pssKiB: number;
};

async function waitForFiles(paths: string[], timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!paths.every((p) => existsSync(p))) {
    if (performance.now() > deadline) throw new Error(`exit files missing after ${timeoutMs} ms`);
    await Bun.sleep(20);
  }
}

/** Starts `count` sleep containers under our server and measures what they added to it. */
export async function ourPerContainer(ctx: BenchContext, count: number, settleMs: number): Promise<PerContainer> {
  await Bun.sleep(settleMs);
  const before = await sampleMemory(ctx.ours.pid);
  const ids: string[] = [];
  const bundles: string[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const id = ctx.nextId("mem-ours");
      const bundle = ctx.rootfs.bundle(id, SLEEP_ARGS);
      ids.push(id);
      bundles.push(bundle);
      ctx.live.add(id);
      await ctx.ours.create(id, bundle, { type: "cri", path: join(ctx.logDir, `${id}.log`) });
      await ctx.rt.run(["start", id]);
    }
    await Bun.sleep(settleMs);
    const after = await sampleMemory(ctx.ours.pid);
    return {
      count, before, after,
      rssAnonKiB: (after.RssAnon - before.RssAnon) / count,
      vmRssKiB: (after.VmRSS - before.VmRSS) / count,
      pssKiB: (after.Pss - before.Pss) / count,
    };
  } finally {
    await stopOurs(ctx, ids);
    for (const path of bundles) rmSync(path, { recursive: true, force: true });
    for (const id of ids) rmSync(join(ctx.logDir, `${id}.log`), { force: true });
  }
}

/** SIGKILL, wait for the server to record each exit, delete. */
async function stopOurs(ctx: BenchContext, ids: string[]): Promise<void> {
  for (const id of ids) await ctx.rt.tryRun(["kill", id, "KILL"]);
  try {
    await waitForFiles(ids.map((id) => ctx.ours.exitFile(id)), EXIT_TIMEOUT_MS);
  } finally {
    for (const id of ids) {
      await ctx.live.remove(id).catch(() => {});
      rmSync(ctx.ours.exitFile(id), { force: true });
    }
  }
}

export type ConmonPerProcess = { count: number; median: Memory; totalVmRssKiB: number; totalPssKiB: number; totalRssAnonKiB: number };

/** The same `count` sleep containers, one conmon each; each conmon's memory. */
export async function conmonPerContainer(ctx: BenchContext, dirs: ConmonDirs, count: number, settleMs: number): Promise<ConmonPerProcess> {
  const launches: ConmonLaunch[] = [];
  const bundles: string[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const id = ctx.nextId("mem-conmon");
      const bundle = ctx.rootfs.bundle(id, SLEEP_ARGS);
      bundles.push(bundle);
      ctx.live.add(id);
      launches.push(await launchConmon(ctx.rt, dirs, id, bundle, `k8s-file:${join(ctx.logDir, `${id}.log`)}`));
      await ctx.rt.run(["start", id]);
    }
    await Bun.sleep(settleMs);
    const readings = launches.map((l) => memory(l.conmonPid));
    const med: Record<string, number> = {};
    for (const key of Object.keys(readings[0]!)) med[key] = median(readings.map((r) => r[key as keyof Memory]));
    const total = (key: keyof Memory) => readings.reduce((sum, r) => sum + r[key], 0);
    return { count, median: med as Memory, totalVmRssKiB: total("VmRSS"), totalPssKiB: total("Pss"), totalRssAnonKiB: total("RssAnon") };
  } finally {
    await stopConmons(ctx, dirs, launches);
    for (const path of bundles) rmSync(path, { recursive: true, force: true });
  }
}

async function stopConmons(ctx: BenchContext, dirs: ConmonDirs, launches: ConmonLaunch[]): Promise<void> {
  for (const l of launches) await ctx.rt.tryRun(["kill", l.id, "KILL"]);
  for (const l of launches) {
    if (waitReadable(l.conmonPidfd, EXIT_TIMEOUT_MS)) finishConmon(l);
    else closeQuietly(l.conmonPidfd);
    await ctx.live.remove(l.id).catch(() => {});
    removeConmonFiles(dirs, l.id);
    rmSync(join(ctx.logDir, `${l.id}.log`), { force: true });
  }
}

export type SustainedSample = { t: number; RssAnon: number; VmRSS: number; Pss: number };

export type Sustained = {
  seconds: number;
  samples: SustainedSample[];
  /** VmHWM at the end, after a reset at the start (KiB). */
  peakKiB: number;
  /** Bytes the container wrote (its /proc io wchar, reaped `cat`s included) and the server's CPU. */
  payloadBytes: number;
  serverCpuS: number;
};

const SUSTAIN_LOG_MAX_SIZE = 256 * 1024 * 1024;

/** /proc/<pid>/io wchar: what the process and its reaped children wrote (sendfile included). */
function writtenBytes(pid: number): number {
  const match = /^wchar:\s+(\d+)$/m.exec(readFileSync(`/proc/${pid}/io`, "utf8"));
  return match ? Number(match[1]) : 0;
}

/**
 * One container logging at full speed (`cat` of the 100-byte-line file in a loop) to a CRI log
 * capped at 256 MiB (truncated when full, so the disk is not filled); the server's memory every second.
 */
export async function sustainedLogging(ctx: BenchContext, seconds: number): Promise<Sustained> {
  const id = ctx.nextId("sustain");
  const bundle = ctx.rootfs.bundle(id, ["sh", "-c", "while :; do cat /data/f100; done"]);
  const logPath = join(ctx.logDir, `${id}.log`);
  ctx.live.add(id);
  try {
    const { containerPid } = await ctx.ours.create(id, bundle, { type: "cri", path: logPath, maxSize: SUSTAIN_LOG_MAX_SIZE });
    ctx.ours.resetPeakRss();
    const cpuBefore = cpuTimes(ctx.ours.pid);
    await ctx.rt.run(["start", id]);
    const wcharBefore = writtenBytes(containerPid);
    const started = performance.now();
    const samples: SustainedSample[] = [];
    for (let i = 1; i <= seconds; i++) {
      await Bun.sleep(started + i * 1000 - performance.now());
      const m = memory(ctx.ours.pid);
      samples.push({ t: i, RssAnon: m.RssAnon, VmRSS: m.VmRSS, Pss: m.Pss });
    }
    const payloadBytes = writtenBytes(containerPid) - wcharBefore;
    const serverCpuS = cpuDelta(cpuBefore, cpuTimes(ctx.ours.pid)).schedSeconds;
    return { seconds, samples, peakKiB: memory(ctx.ours.pid).VmHWM, payloadBytes, serverCpuS };
  } finally {
    await stopOurs(ctx, [id]);
    rmSync(bundle, { recursive: true, force: true });
    rmSync(logPath, { force: true });
  }
}
