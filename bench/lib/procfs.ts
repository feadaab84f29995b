// /proc readings for the bench: CPU time of a process (its own, children excluded), memory, load.
import { readdirSync } from "node:fs";
import { readIfExists, statFields } from "../../test/helpers/proc.ts";

/** USER_HZ: /proc/<pid>/stat counts CPU in these ticks (100 on every Linux we run on). */
export const CLOCK_TICKS_PER_SECOND = 100;

export type CpuTimes = {
  /** utime+stime of the process itself, all threads, dead ones included (10 ms ticks). Seconds. */
  statSeconds: number;
  /** Sum of sum_exec_runtime over the live threads (ns precision). Seconds. */
  schedSeconds: number;
};

/** Works on zombies too (their stat still holds the final counts). */
export function cpuTimes(pid: number): CpuTimes {
  const f = statFields(pid);
  if (f === undefined) throw new Error(`cpuTimes: pid ${pid} is gone`);
  const ticks = Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15 of stat)
  return { statSeconds: ticks / CLOCK_TICKS_PER_SECOND, schedSeconds: schedSecondsAllThreads(pid) };
}

function schedSecondsAllThreads(pid: number): number {
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    tids = [];
  }
  // A zombie has no task entries left to read, but its leader's schedstat still answers.
  if (tids.length === 0) tids = [String(pid)];
  let ns = 0;
  for (const tid of tids) {
    const text = readIfExists(`/proc/${pid}/task/${tid}/schedstat`) ?? readIfExists(`/proc/${pid}/schedstat`);
    if (text !== undefined) ns += Number(text.split(" ")[0]);
  }
  return ns / 1e9;
}

export function cpuDelta(before: CpuTimes, after: CpuTimes): CpuTimes {
  return {
    statSeconds: after.statSeconds - before.statSeconds,
    schedSeconds: after.schedSeconds - before.schedSeconds,
  };
}

export type Memory = {
  VmRSS: number;
  VmHWM: number;
  RssAnon: number;
  RssFile: number;
  Pss: number;
  Pss_Anon: number;
  Private_Dirty: number;
};

const STATUS_KEYS = ["VmRSS", "VmHWM", "RssAnon", "RssFile"] as const;
const ROLLUP_KEYS = ["Pss", "Pss_Anon", "Private_Dirty"] as const;

function kibFields(text: string | undefined, keys: readonly string[], into: Record<string, number>): void {
  for (const line of (text ?? "").split("\n")) {
    const colon = line.indexOf(":");
    const key = line.slice(0, colon);
    if (keys.includes(key)) into[key] = Number.parseInt(line.slice(colon + 1), 10);
  }
}

/** KiB figures from status and smaps_rollup. */
export function memory(pid: number): Memory {
  const out: Record<string, number> = {};
  kibFields(readIfExists(`/proc/${pid}/status`), STATUS_KEYS, out);
  kibFields(readIfExists(`/proc/${pid}/smaps_rollup`), ROLLUP_KEYS, out);
  if (out.VmRSS === undefined) throw new Error(`memory: pid ${pid} is gone`);
  return out as Memory;
}

export function threadCount(pid: number): number {
  return readdirSync(`/proc/${pid}/task`).length;
}

export function loadAverage(): string {
  return (readIfExists("/proc/loadavg") ?? "?").split(" ").slice(0, 3).join(" ");
}

export function load1(): number {
  return Number((readIfExists("/proc/loadavg") ?? "0").split(" ")[0]);
}

export type IoCounters = { rchar: number; wchar: number; syscr: number; syscw: number };

/** /proc/<pid>/io: bytes and read/write-type system calls (for average read and write sizes). */
export function ioCounters(pid: number): IoCounters {
  const out: Record<string, number> = {};
  for (const line of (readIfExists(`/proc/${pid}/io`) ?? "").split("\n")) {
    const [key, value] = line.split(": ");
    if (key && value) out[key] = Number(value);
  }
  return { rchar: out.rchar ?? 0, wchar: out.wchar ?? 0, syscr: out.syscr ?? 0, syscw: out.syscw ?? 0 };
}

export function ioDelta(before: IoCounters, after: IoCounters): IoCounters {
  return {
    rchar: after.rchar - before.rchar,
    wchar: after.wchar - before.wchar,
    syscr: after.syscr - before.syscr,
    syscw: after.syscw - before.syscw,
  };
}
