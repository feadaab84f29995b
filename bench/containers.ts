// Containers benchmark (issue 3): our server vs C conmon (driven as CRI-O drives it) vs the bare
// runtime, for runc and crun, side by side in one run.
//
//   bun bench/containers.ts [--quick] [--runtime runc|crun] [--phases lifecycle,logs,memory,sustained]
//                           [--runs N] [--gap-ms 20]
//                           [--workloads cat100,cat2] [--sustain-seconds N] [--sustain-all] [--log-dir DIR]
//                           [--server PATH] [--json FILE]
//   bun bench/containers.ts --from-json FILE      (prints the tables of a saved --json run again)
//
// --quick: n=10 instead of 30 for create/exit, 1 log run instead of 3, 10 s of sustained logging
//          instead of 60. --server: the conmonrs binary to measure (default dist/conmonrs, which
//          `make bench` builds). --sustain-all: sustained logging for every runtime, not only the first.
// --runs: create/exit samples per monitor (default 30, 10 with --quick). --gap-ms: idle time
//          before each create/exit sample, so no sample starts inside the previous one's tail
//          (runtime teardown, clean-up, exit files); the order of the monitors rotates per round.
//
// Root only; needs dist/conmonrs (`bun build.ts`), runc and/or crun, busybox-static, and
// /usr/bin/conmon for the conmon columns (Debian `conmon`; skipped with a note when missing).
//
// Measures, per runtime (methods in bench/lib/*.ts headers):
//   1. create overhead over bare `runtime create` (`true` container, interleaved, median of --runs)
//   2. container exit → exit file (pidfd on the container init; inotify on the exit dir)
//   3. log throughput and monitor CPU per GB: 500 MiB of 100-byte lines, 50 MiB of 2-byte lines
//   4. server memory: idle, per added container (20 `sleep`s), during 60 s of full-speed logging
//
// Each runtime is measured by a worker process (this file with --worker), which is a child
// subreaper, so daemonised conmons and bare containers are re-parented to it. crun's worker runs in
// the private mount namespace crun needs on this hybrid-cgroup host (test/helpers/runtimes.ts), so
// the server, conmon and every runtime call inherit it and `unshare` is never timed.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bundleBaseDir } from "../test/helpers/bundle.ts";
import { ensureJournald } from "../test/helpers/journald.ts";
import { runtimes, spawnPrefix } from "../test/helpers/runtimes.ts";
import { BenchRootfs, WORKLOADS } from "./lib/bundles.ts";
import { conmonDirs, conmonInstalled, CONMON_PATH } from "./lib/conmon.ts";
import { Cleanup, cleanupOnSignals, leftoverCgroups, LiveContainers, removeCgroups, type BenchContext } from "./lib/context.ts";
import { bareLifecycle, conmonLifecycle, ourLifecycle, type LifecycleSample } from "./lib/lifecycle.ts";
import { conmonLogRun, oursLogRun, pipeLogRun, plainLogRun, type LogMode, type LogSample } from "./lib/logbench.ts";
import { conmonPerContainer, ourPerContainer, sampleMemory, sustainedLogging } from "./lib/membench.ts";
import { OurServer, SERVER_BINARY } from "./lib/ours.ts";
import { loadAverage, threadCount } from "./lib/procfs.ts";
import { becomeSubreaper, sweepZombies } from "./lib/reaper.ts";
import { fullReport, type RuntimeResult } from "./lib/report.ts";
import { RuntimeCli } from "./lib/runtime-cli.ts";
import { DirWatch } from "./lib/sys.ts";

const PHASES = ["lifecycle", "logs", "memory", "sustained"] as const;
/** How long the server (and the conmons) settle before and after the per-container step. */
const SETTLE_MS = 1000;
type Phase = (typeof PHASES)[number];

type Options = {
  quick: boolean;
  lifecycleRuns: number;
  gapMs: number;
  warmup: number;
  logRuns: number;
  containers: number;
  sustainSeconds: number;
  runtimes: string[];
  phases: Set<Phase>;
  workloads: string[];
  logDir: string;
  server: string;
  sustainAll: boolean;
  json?: string;
};

function argValue(args: string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
}

function parseOptions(args: string[]): Options {
  const quick = args.includes("--quick");
  const sustain = argValue(args, "--sustain-seconds");
  return {
    quick,
    lifecycleRuns: Number(argValue(args, "--runs") ?? (quick ? 10 : 30)),
    gapMs: Number(argValue(args, "--gap-ms") ?? 20),
    warmup: quick ? 2 : 3,
    logRuns: quick ? 1 : 3,
    containers: 20,
    sustainSeconds: sustain !== undefined ? Number(sustain) : quick ? 10 : 60,
    runtimes: (argValue(args, "--runtime") ?? "runc,crun").split(","),
    phases: parsePhases(argValue(args, "--phases")),
    workloads: (argValue(args, "--workloads") ?? "cat100,cat2").split(","),
    logDir: argValue(args, "--log-dir") ?? tmpdir(),
    server: argValue(args, "--server") ?? SERVER_BINARY,
    sustainAll: args.includes("--sustain-all"),
    json: argValue(args, "--json"),
  };
}

function parsePhases(list: string | undefined): Set<Phase> {
  if (list === undefined) return new Set(PHASES);
  const phases = list.split(",");
  const unknown = phases.filter((p) => !(PHASES as readonly string[]).includes(p));
  if (unknown.length > 0) throw new Error(`unknown phase ${unknown.join(", ")} (known: ${PHASES.join(", ")})`);
  return new Set(phases as Phase[]);
}

/** The flags a worker gets from the parent (everything but --json). */
function workerFlags(opts: Options): string[] {
  const flags = ["--runs", String(opts.lifecycleRuns), "--gap-ms", String(opts.gapMs), "--sustain-seconds", String(opts.sustainSeconds), "--log-dir", opts.logDir, "--server", opts.server, "--phases", [...opts.phases].join(","), "--workloads", opts.workloads.join(",")];
  return opts.quick ? ["--quick", ...flags] : flags;
}

function progress(message: string): void {
  console.error(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}`);
}

function firstLine(argv: string[]): string {
  const r = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe" });
  return (r.stdout.toString() + r.stderr.toString()).split("\n").find((l) => l.trim() !== "")?.trim() ?? "?";
}

// ---- worker: one runtime ------------------------------------------------------------------------

/** Rotates the order of the modes per iteration, so none always runs first (or after another). */
function rotated<T>(items: T[], i: number): T[] {
  const k = i % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
}

async function lifecyclePhase(ctx: BenchContext, opts: Options): Promise<RuntimeResult["lifecycle"]> {
  const out: RuntimeResult["lifecycle"] = { bare: [], conmon: [], ours: [] };
  const ourWatch = new DirWatch(ctx.ours.exitDir);
  const conmonWatch = ctx.conmon ? new DirWatch(ctx.conmon.exitDir) : undefined;
  const modes: Array<keyof RuntimeResult["lifecycle"]> = ctx.conmon ? ["bare", "conmon", "ours"] : ["bare", "ours"];
  const runOne = (mode: keyof RuntimeResult["lifecycle"]): Promise<LifecycleSample> =>
    mode === "bare" ? bareLifecycle(ctx) : mode === "conmon" ? conmonLifecycle(ctx, ctx.conmon!, conmonWatch!) : ourLifecycle(ctx, ourWatch);
  try {
    for (let i = 0; i < opts.warmup + opts.lifecycleRuns; i++) {
      for (const mode of rotated(modes, i)) {
        if (opts.gapMs > 0) await Bun.sleep(opts.gapMs);
        const sample = await runOne(mode);
        if (i >= opts.warmup) out[mode].push(sample);
      }
      sweepZombies();
    }
  } finally {
    ourWatch.close();
    conmonWatch?.close();
  }
  return out;
}

async function logPhase(ctx: BenchContext, opts: Options): Promise<LogSample[]> {
  const samples: LogSample[] = [];
  const ourWatch = new DirWatch(ctx.ours.exitDir);
  const conmonWatch = ctx.conmon ? new DirWatch(ctx.conmon.exitDir) : undefined;
  const modes: LogMode[] = ["ours-cri", "ours-none", "pipe", "plain"];
  if (ctx.conmon) modes.push("conmon-k8s", "conmon-none");
  try {
    for (const w of Object.values(WORKLOADS).filter((x) => opts.workloads.includes(x.name))) {
      for (let i = 0; i < opts.logRuns; i++) {
        for (const mode of rotated(modes, i)) {
          ctx.progress(`  ${w.name} ${mode} (${i + 1}/${opts.logRuns}), load ${loadAverage()}`);
          const sample = await (mode === "ours-cri" || mode === "ours-none"
            ? oursLogRun(ctx, w, mode === "ours-cri", ourWatch)
            : mode === "conmon-k8s" || mode === "conmon-none"
              ? conmonLogRun(ctx, w, mode === "conmon-k8s", ctx.conmon!, conmonWatch!)
              : mode === "pipe"
                ? pipeLogRun(ctx, w)
                : plainLogRun(ctx, w));
          samples.push(sample);
          sweepZombies();
        }
      }
    }
  } finally {
    ourWatch.close();
    conmonWatch?.close();
  }
  return samples;
}

/** Workdir, runtime CLI, rootfs and server, each with its clean-up registered (LIFO). */
async function setUp(name: "runc" | "crun", opts: Options, cleanup: Cleanup): Promise<BenchContext> {
  const found = runtimes().find((r) => r.name === name);
  if (!found) throw new Error(`${name} is not installed`);
  const workDir = mkdtempSync(join(bundleBaseDir(), `cmbench-${name}-`));
  cleanup.add(`remove ${workDir}`, () => rmSync(workDir, { recursive: true, force: true }));
  const logDir = mkdtempSync(join(opts.logDir, `cmbench-logs-${name}-`));
  cleanup.add(`remove ${logDir}`, () => rmSync(logDir, { recursive: true, force: true }));
  const idPrefix = `cmb${process.pid}-`;
  cleanup.add("leftover cgroups", () => {
    const stuck = removeCgroups(leftoverCgroups(idPrefix));
    if (stuck.length > 0) console.error(`cleanup: cgroups still in use: ${stuck.join(" ")}`);
  });
  cleanup.add("zombies", () => sweepZombies());
  const rt = new RuntimeCli(name, found.path, join(workDir, "root"), workDir);
  cleanup.add("runtime scratch file", () => rt.close());
  const live = new LiveContainers(rt);
  cleanup.add("containers", async () => {
    await live.removeAll();
    await removeStrays(rt, idPrefix);
  });
  const rootfs = await BenchRootfs.create(workDir, opts.phases.has("logs") || opts.phases.has("sustained"));
  const ours = await OurServer.start(rt, workDir, opts.server);
  cleanup.add("server", () => ours.shutdown());
  let counter = 0;
  return {
    rt, rootfs, ours, live, workDir, logDir,
    conmon: conmonInstalled() ? conmonDirs(join(workDir, "conmon")) : undefined,
    nextId: (label) => `${idPrefix}${label}-${counter++}`,
    progress: (m) => progress(`${name}: ${m}`),
  };
}

/** Containers of ours that the runtime still lists (a phase that died half-way). */
async function removeStrays(rt: RuntimeCli, idPrefix: string): Promise<void> {
  const r = Bun.spawnSync(rt.argv(["list", "-q"]), { stdout: "pipe", stderr: "ignore" });
  for (const id of r.stdout.toString().split("\n").filter((l) => l.startsWith(idPrefix))) {
    await rt.tryRun(["delete", "--force", id]);
  }
}

async function measureRuntime(name: "runc" | "crun", opts: Options, cleanup: Cleanup): Promise<RuntimeResult> {
  const began = performance.now();
  becomeSubreaper();
  const ctx = await setUp(name, opts, cleanup);
  if (!ctx.conmon) ctx.progress(`${CONMON_PATH} missing (apt-get install conmon): conmon columns skipped`);
  const loads: RuntimeResult["loads"] = [];
  const block = async <T>(label: string, fn: () => Promise<T>): Promise<T> => {
    loads.push({ block: label, load: loadAverage() });
    ctx.progress(`${label} (load ${loadAverage()})`);
    const t0 = performance.now();
    const result = await fn();
    ctx.progress(`${label} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    return result;
  };
  await Bun.sleep(1000);
  const idleFresh = await sampleMemory(ctx.ours.pid);
  const serverThreads = threadCount(ctx.ours.pid);
  const wants = (phase: Phase) => opts.phases.has(phase);
  const lifecycle = wants("lifecycle") ? await block("create/exit lifecycle", () => lifecyclePhase(ctx, opts)) : { bare: [], conmon: [], ours: [] };
  const logs = wants("logs") ? await block("log throughput", () => logPhase(ctx, opts)) : [];
  const perContainer = wants("memory") ? await block("memory per container (ours)", () => ourPerContainer(ctx, opts.containers, SETTLE_MS)) : undefined;
  const conmonMemory = wants("memory") && ctx.conmon
    ? await block("memory per container (conmon)", () => conmonPerContainer(ctx, ctx.conmon!, opts.containers, SETTLE_MS))
    : undefined;
  const sustained = wants("sustained") ? await block(`sustained logging ${opts.sustainSeconds} s`, () => sustainedLogging(ctx, opts.sustainSeconds)) : undefined;
  await Bun.sleep(2000);
  const idleAfter = await sampleMemory(ctx.ours.pid);
  return {
    runtime: name,
    runtimeVersion: firstLine([ctx.rt.path, "--version"]),
    conmonVersion: ctx.conmon ? firstLine([CONMON_PATH, "--version"]) : undefined,
    quick: opts.quick,
    loads,
    lifecycle,
    logs,
    memory: { idleFresh, idleAfter, serverThreads, perContainer, conmon: conmonMemory, sustained },
    durationS: (performance.now() - began) / 1000,
  };
}

async function runWorker(name: "runc" | "crun", opts: Options, outPath: string): Promise<void> {
  const cleanup = new Cleanup();
  cleanupOnSignals(cleanup);
  try {
    const result = await measureRuntime(name, opts, cleanup);
    writeFileSync(outPath, JSON.stringify(result));
  } finally {
    await cleanup.run();
  }
}

// ---- parent: one worker per runtime, then the tables --------------------------------------------

async function runOneWorker(rt: { name: "runc" | "crun"; path: string }, opts: Options, outPath: string): Promise<number> {
  const argv = [...spawnPrefix(rt), process.execPath, import.meta.path, "--worker", rt.name, "--out", outPath, ...workerFlags(opts)];
  const worker = Bun.spawn(argv, { stdio: ["ignore", "inherit", "inherit"] });
  const forward = () => worker.kill("SIGTERM");
  process.on("SIGINT", forward);
  process.on("SIGTERM", forward);
  try {
    return await worker.exited;
  } finally {
    process.off("SIGINT", forward);
    process.off("SIGTERM", forward);
  }
}

function checkPrerequisites(opts: Options): void {
  if (process.getuid?.() !== 0) throw new Error("run as root: the bench creates containers");
  if (!existsSync(opts.server)) throw new Error(`${opts.server} missing: run \`bun build.ts\` (make bench does)`);
}

/**
 * The sustained-logging phase watches the server, whose read path does not depend on the runtime:
 * by default only the first runtime runs it, which keeps `make bench` within its time budget.
 */
function withoutSustained(opts: Options): Options {
  const phases = new Set(opts.phases);
  phases.delete("sustained");
  return { ...opts, phases };
}

async function runParent(opts: Options): Promise<number> {
  checkPrerequisites(opts);
  const selected = runtimes().filter((r) => opts.runtimes.includes(r.name));
  if (selected.length === 0) throw new Error(`none of ${opts.runtimes.join(", ")} is installed`);
  const scratch = mkdtempSync(join(tmpdir(), "cmbench-results-"));
  const results: RuntimeResult[] = [];
  let failures = 0;
  // As on a real host: upstream's crun argv carries `--log=journald:<id>`, and without a journal
  // to talk to crun 1.8.1 spends about 6 ms more on every create.
  const journald = await ensureJournald();
  progress(`systemd-journald: ${journald.available ? "running" : `not available (${journald.reason})`}`);
  try {
    for (const [i, rt] of selected.entries()) {
      const outPath = join(scratch, `${rt.name}.json`);
      progress(`${rt.name}: worker starting (load ${loadAverage()})`);
      const code = await runOneWorker(rt, i === 0 || opts.sustainAll ? opts : withoutSustained(opts), outPath);
      if (code !== 0) {
        failures++;
        progress(`${rt.name}: worker failed (exit ${code})`);
        continue;
      }
      results.push(JSON.parse(readFileSync(outPath, "utf8")));
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
    await journald.stop();
  }
  if (results.length > 0) {
    console.log(`## bun bench/containers.ts${opts.quick ? " --quick" : ""}\n`);
    console.log(fullReport(results));
    console.log(`\nsystemd-journald during the run: ${journald.available ? "running" : `not available (${journald.reason})`}`);
  }
  if (opts.json) writeFileSync(opts.json, JSON.stringify(results, null, 1));
  return failures === 0 ? 0 : 1;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const opts = parseOptions(args);
  const saved = argValue(args, "--from-json");
  if (saved !== undefined) {
    console.log(fullReport(JSON.parse(readFileSync(saved, "utf8"))));
    process.exit(0);
  }
  const worker = argValue(args, "--worker");
  if (worker === "runc" || worker === "crun") {
    await runWorker(worker, opts, argValue(args, "--out")!);
    process.exit(0);
  }
  process.exit(await runParent(opts));
}

main().catch((err) => {
  console.error(`bench/containers.ts: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  process.exit(1);
});
