// The tables printed at the end of bench/containers.ts: medians, ratios to conmon and to the bare
// runtime, and each target with whether it was met.
import type { LifecycleSample } from "./lifecycle.ts";
import type { LogMode, LogSample } from "./logbench.ts";
import type { ConmonPerProcess, PerContainer, Sustained } from "./membench.ts";
import type { Memory } from "./procfs.ts";
import { fmt, markdownTable, median, quantile } from "./stats.ts";

export type RuntimeResult = {
  runtime: string;
  runtimeVersion: string;
  conmonVersion?: string;
  quick: boolean;
  loads: Array<{ block: string; load: string }>;
  lifecycle: { bare: LifecycleSample[]; conmon: LifecycleSample[]; ours: LifecycleSample[] };
  logs: LogSample[];
  memory: {
    idleFresh: Memory;
    idleAfter?: Memory;
    serverThreads: number;
    perContainer?: PerContainer;
    conmon?: ConmonPerProcess;
    sustained?: Sustained;
  };
  durationS: number;
};

const TARGET = {
  createOverMs: 3,
  exitFileMs: 2,
  logThroughputRatio: 2,
  logCpuRatio: 0.5,
  perContainerKiB: 100,
};

const verdict = (ok: boolean | undefined) => (ok === undefined ? "—" : ok ? "**met**" : "**missed**");
const med = (samples: LifecycleSample[], key: keyof LifecycleSample) =>
  median(samples.map((s) => s[key]).filter((v): v is number => typeof v === "number"));
const signed = (v: number) => (Number.isFinite(v) ? `${v >= 0 ? "+" : ""}${v.toFixed(1)}` : "—");
const spread = (samples: LifecycleSample[], key: keyof LifecycleSample) => {
  const values = samples.map((s) => s[key]).filter((v): v is number => typeof v === "number");
  return values.length === 0 ? "—" : `${fmt(quantile(values, 0.1))} – ${fmt(quantile(values, 0.9))}`;
};
const ratio = (a: number, b: number) => (Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? (a / b).toFixed(2) : "—");

// ---- create / exit ------------------------------------------------------------------------------

function lifecycleRows(r: RuntimeResult): string[][] {
  const { bare, conmon, ours } = r.lifecycle;
  const n = ours.length;
  const create = { bare: med(bare, "createMs"), conmon: med(conmon, "createMs"), ours: med(ours, "createMs") };
  const exitAfterCtr = { conmon: med(conmon, "exitFileAfterCtrExitMs"), ours: med(ours, "exitFileAfterCtrExitMs") };
  const exitAfterStart = { conmon: med(conmon, "exitFileAfterStartMs"), ours: med(ours, "exitFileAfterStartMs") };
  const rows: string[][] = [
    [r.runtime, `create, ms (median of ${n})`, fmt(create.bare), fmt(create.conmon), fmt(create.ours),
      signed(create.ours - create.bare), signed(create.conmon - create.bare), ratio(create.ours, create.conmon),
      `≤ bare + ${TARGET.createOverMs} ms`, verdict(create.ours - create.bare <= TARGET.createOverMs)],
    [r.runtime, "create p10 – p90, ms", spread(bare, "createMs"), spread(conmon, "createMs"), spread(ours, "createMs"), "", "", "", "(spread)", ""],
    [r.runtime, "container exit (pidfd) → exit file, ms", "—", fmt(exitAfterCtr.conmon, 2), fmt(exitAfterCtr.ours, 2),
      "", "", ratio(exitAfterCtr.ours, exitAfterCtr.conmon), `≤ ${TARGET.exitFileMs} ms`, verdict(exitAfterCtr.ours <= TARGET.exitFileMs)],
    [r.runtime, "`start` returned → exit file, ms", "—", fmt(exitAfterStart.conmon, 2), fmt(exitAfterStart.ours, 2),
      "", "", ratio(exitAfterStart.ours, exitAfterStart.conmon), "(research: conmon 4.6)", ""],
    [r.runtime, "`start` returned → container exit, ms", fmt(med(bare, "ctrExitAfterStartMs"), 2), fmt(med(conmon, "ctrExitAfterStartMs"), 2),
      fmt(med(ours, "ctrExitAfterStartMs"), 2), "", "", "", "(info)", ""],
    [r.runtime, "`runtime start`, ms", fmt(med(bare, "startMs")), fmt(med(conmon, "startMs")), fmt(med(ours, "startMs")), "", "", "", "(info)", ""],
    [r.runtime, "monitor CPU per `true` container, ms", "—", fmt(med(conmon, "monitorCpuMs"), 2), fmt(med(ours, "monitorCpuMs"), 2),
      "", "", ratio(med(ours, "monitorCpuMs"), med(conmon, "monitorCpuMs")), "(info)", ""],
  ];
  return rows;
}

export function lifecycleTable(results: RuntimeResult[]): string {
  return markdownTable(
    ["runtime", "metric", "bare runtime", "conmon", "ours", "ours − bare", "conmon − bare", "ours / conmon", "target", ""],
    results.filter((r) => r.lifecycle.ours.length > 0).flatMap(lifecycleRows),
  );
}

// ---- logs ---------------------------------------------------------------------------------------

export type LogSummary = {
  runtime: string;
  workload: string;
  mode: LogMode;
  n: number;
  mbps: number;
  wallS: number;
  exitFileS: number;
  cpuS: number;
  cpuPerGb: number;
  logMb: number;
  peakKiB: number;
  /** Average bytes per read system call of the monitor. */
  bytesPerRead: number;
  writeCalls: number;
};

export function summarizeLogs(r: RuntimeResult): LogSummary[] {
  const groups = new Map<string, LogSample[]>();
  for (const s of r.logs) {
    const key = `${s.workload}/${s.mode}`;
    groups.set(key, [...(groups.get(key) ?? []), s]);
  }
  return [...groups.values()].map((samples) => {
    const first = samples[0]!;
    const m = (f: (s: LogSample) => number | undefined) => median(samples.map(f).filter((v): v is number => v !== undefined));
    return {
      runtime: r.runtime,
      workload: first.workload,
      mode: first.mode,
      n: samples.length,
      mbps: m((s) => s.payloadBytes / 1e6 / s.wallS),
      wallS: m((s) => s.wallS),
      exitFileS: m((s) => s.exitFileS),
      cpuS: m((s) => s.cpuS),
      cpuPerGb: m((s) => (s.cpuS === undefined ? undefined : s.cpuS / (s.payloadBytes / 1e9))),
      logMb: m((s) => s.logFileBytes / 1e6),
      peakKiB: m((s) => s.peakKiB),
      bytesPerRead: m((s) => (s.readCalls ? s.payloadBytes / s.readCalls : undefined)),
      writeCalls: m((s) => s.writeCalls),
    };
  });
}

export function logTable(results: RuntimeResult[]): string {
  const rows = results.flatMap(summarizeLogs).map((s) => [
    s.workload, s.runtime, s.mode, String(s.n), fmt(s.mbps, 0), fmt(s.wallS, 3), fmt(s.exitFileS, 3), fmt(s.cpuS, 3),
    fmt(s.cpuPerGb, 2), fmt(s.logMb, 0), fmt(s.peakKiB, 0), fmt(s.bytesPerRead / 1024, 1), fmt(s.writeCalls, 0),
  ]);
  return markdownTable(
    ["workload", "runtime", "mode", "n", "MB/s payload", "wall s", "exit file s", "monitor CPU s", "CPU-s / GB payload", "log file MB", "peak RSS KiB",
      "KiB / read", "write calls"],
    rows,
  );
}

export function logTargetTable(results: RuntimeResult[]): string {
  const rows: string[][] = [];
  for (const r of results) {
    const summaries = summarizeLogs(r);
    const find = (workload: string, mode: LogMode) => summaries.find((s) => s.workload === workload && s.mode === mode);
    for (const workload of ["cat100", "cat2"]) {
      for (const [ourMode, theirMode] of [["ours-cri", "conmon-k8s"], ["ours-none", "conmon-none"]] as const) {
        const ours = find(workload, ourMode);
        const conmon = find(workload, theirMode);
        const pipe = find(workload, "pipe");
        if (!ours) continue;
        const tp = conmon ? ours.mbps / conmon.mbps : Number.NaN;
        const cpu = conmon ? ours.cpuPerGb / conmon.cpuPerGb : Number.NaN;
        const judged = ourMode === "ours-cri";
        rows.push([
          workload, r.runtime, `${ourMode} vs ${theirMode}`, fmt(tp, 2), fmt(cpu, 2),
          pipe ? fmt(ours.mbps / pipe.mbps, 2) : "—",
          judged ? `≥ ${TARGET.logThroughputRatio}× MB/s, ≤ ${TARGET.logCpuRatio}× CPU/GB` : "(info)",
          judged ? `${verdict(tp >= TARGET.logThroughputRatio)} / ${verdict(cpu <= TARGET.logCpuRatio)}` : "",
        ]);
      }
    }
  }
  return markdownTable(["workload", "runtime", "comparison", "MB/s ratio", "CPU/GB ratio", "MB/s vs pipe copier", "target", ""], rows);
}

// ---- memory -------------------------------------------------------------------------------------

export function memoryTable(results: RuntimeResult[]): string {
  const rows: string[][] = [];
  for (const r of results) {
    const m = r.memory;
    const idle = (label: string, mem?: Memory) =>
      mem && rows.push([r.runtime, label, fmt(mem.RssAnon, 0), fmt(mem.VmRSS, 0), fmt(mem.Pss, 0), "", ""]);
    idle(`ours idle, fresh server (${m.serverThreads} threads)`, m.idleFresh);
    idle("ours idle, after all runs", m.idleAfter);
    if (m.perContainer) {
      const p = m.perContainer;
      rows.push([r.runtime, `ours per added container (${p.count} sleep, Δ/${p.count})`, fmt(p.rssAnonKiB, 0), fmt(p.vmRssKiB, 0), fmt(p.pssKiB, 0),
        `≤ ${TARGET.perContainerKiB} KiB RssAnon`, verdict(p.rssAnonKiB <= TARGET.perContainerKiB)]);
    }
    if (m.conmon) {
      const c = m.conmon;
      rows.push([r.runtime, `conmon per container (median of ${c.count} processes)`, fmt(c.median.RssAnon, 0), fmt(c.median.VmRSS, 0), fmt(c.median.Pss, 0),
        `Private_Dirty ${fmt(c.median.Private_Dirty, 0)}`, ""]);
      rows.push([r.runtime, `conmon, all ${c.count} processes`, fmt(c.totalRssAnonKiB, 0), fmt(c.totalVmRssKiB, 0), fmt(c.totalPssKiB, 0), "", ""]);
    }
    if (m.sustained) rows.push(...sustainedRows(r.runtime, m.sustained));
  }
  return markdownTable(["runtime", "what", "RssAnon KiB", "VmRSS KiB", "Pss KiB", "target / note", ""], rows);
}

function sustainedRows(runtime: string, s: Sustained): string[][] {
  const series = (key: "RssAnon" | "VmRSS" | "Pss") => s.samples.map((x) => x[key]);
  const span = (v: number[]) => `${fmt(Math.min(...v), 0)} / ${fmt(Math.max(...v), 0)} / ${fmt(v.at(-1), 0)}`;
  const rss = series("RssAnon");
  // RssAnon saws up and down with each GC cycle: compare the medians of the first and last 10 s.
  const window = Math.min(10, Math.floor(rss.length / 2));
  const growth = median(rss.slice(-window)) - median(rss.slice(0, window));
  const mbps = s.payloadBytes / 1e6 / s.seconds;
  return [[
    runtime,
    `ours while one container logs at full speed for ${s.seconds} s, CRI log with maxSize 256 MiB (min / max / last of 1 Hz samples; ` +
      `${fmt(mbps, 0)} MB/s, ${fmt(s.serverCpuS / (s.payloadBytes / 1e9), 2)} CPU-s/GB)`,
    span(rss), span(series("VmRSS")), span(series("Pss")),
    `median RssAnon of the last ${window} s − first ${window} s: ${signed(growth)} KiB; peak VmHWM ${fmt(s.peakKiB, 0)}`, "",
  ]];
}

export function loadTable(results: RuntimeResult[]): string {
  return markdownTable(
    ["runtime", "block", "loadavg (1/5/15 min) before"],
    results.flatMap((r) => r.loads.map((l) => [r.runtime, l.block, l.load])),
  );
}

export function fullReport(results: RuntimeResult[]): string {
  const versions = results.map((r) => `${r.runtime}: ${r.runtimeVersion}${r.conmonVersion ? `; conmon ${r.conmonVersion}` : ""}; ${fmt(r.durationS, 0)} s`).join("\n");
  const sections: string[] = [];
  if (results.some((r) => r.lifecycle.ours.length > 0)) sections.push("### Create overhead and exit-file latency", lifecycleTable(results));
  if (results.some((r) => r.logs.length > 0)) sections.push("### Log throughput and monitor CPU", logTable(results), logTargetTable(results));
  sections.push("### Memory", memoryTable(results), "### Load during the run", loadTable(results), "```\n" + versions + "\n```");
  return sections.join("\n\n");
}
