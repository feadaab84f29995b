// exec-sync and attach, measured end to end on this machine with real runtimes.
//
//   bun build.ts && bun bench/exec.ts [--n 200] [--warmup 10] [--runtimes runc,crun]
//                                     [--attach-mb 256] [--rtt-n 200] [--gap-ms 20]
//                                     [--samples PREFIX]   (raw exec times: PREFIX.<runtime>.json)
//
// Per runtime, against one running `sleep` container (busybox bundle, cgroupfs):
//   ours    execSyncContainer of `true` through dist/conmonrs (our client, one RPC connection)
//   bare    `<runtime> --root=R exec <id> true`, spawned from this process
//   exec -d `<runtime> --root=R exec -d --pid-file=F <id> true`, then a wait for the process's
//           pidfd: how every monitor execs (upstream, C conmon, us), so the floor for a monitor
//   conmon  C conmon's exec path as CRI-O runs it (research §2/§3e): `conmon -e --sync
//           --exec-process-spec process.json ...`, start-pipe byte, `{"exit_code"}` read from the
//           sync pipe until EOF, output read back from its log file
// The paths are interleaved so that drift hits them alike: every round runs each once, in an
// order shuffled per round (seeded), each after the same idle gap (--gap-ms). Both matter on
// this 2-vCPU VM: a call that starts right after another path's finishes inherits its tail
// (runc teardown, the previous exec's clean-up, vCPUs still awake or not), which moved single
// paths by 2–7 ms in a fixed order (docs/performance.md). A gap also matches how probes arrive:
// at a monitor that has been idle for a while.
// Then, through our server only:
//   attach throughput  a container writes --attach-mb MiB of zeros to stdout (no log driver);
//                      our attach client counts what arrives; MB/s from `runtime start` to `[0]`
//   attach round trip  a `cat` container with stdin: send "x\n" through the attach socket, time
//                      until it comes back (--rtt-n rounds), next to the same round trip through
//                      two plain pipes and a `cat` spawned by this process (the floor)
// crun runs in the legacy mount namespace (test/helpers/runtimes.ts): each runtime's part runs in
// a child process started under its spawnPrefix, so runtime, conmon and our server all run there
// without a wrapper of their own. The server runs at log level info (crun 1.8.1 has no
// --log-level). Results: a table on stdout; figures are recorded in docs/performance.md.

import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CgroupManager, ConmonClient } from "../src/client/index.ts";
import { closeQuietly, pipe, readFd, setNonBlocking, writeFd } from "../ffi/fd.ts";
import { watch } from "../ffi/poller.ts";
import { tryPidfd, waitReadable } from "./lib/sys.ts";
import { makeBundle } from "../test/helpers/bundle.ts";
import { rng } from "../test/helpers/rng.ts";
import { ensureJournald } from "../test/helpers/journald.ts";
import { tmpDir, uniqueId } from "../test/helpers/proc.ts";
import { runtime as findRuntime, runtimes, spawnPrefix, type Runtime } from "../test/helpers/runtimes.ts";
import { BINARY } from "../test/helpers/server.ts";

/** Fisher–Yates, in place. */
function shuffle<T>(items: T[], int: (n: number) => number): void {
  for (let i = items.length - 1; i > 0; i--) {
    const j = int(i + 1);
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
}

function arg(flag: string, fallback: string): string {
  const i = process.argv.indexOf(flag);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

const N = Number(arg("--n", "200"));
const WARMUP = Number(arg("--warmup", "10"));
const GAP_MS = Number(arg("--gap-ms", "20"));
const ATTACH_MB = Number(arg("--attach-mb", "256"));
const RTT_N = Number(arg("--rtt-n", "200"));
const CONMON = Bun.which("conmon") ?? "/usr/bin/conmon";
const RESULT_MARK = "BENCH-RESULT ";

type Summary = { n: number; median: number; p99: number; mean: number };
type RuntimeResult = {
  runtime: string;
  exec: Record<"ours" | "bare" | "detached" | "conmon", Summary | null>;
  attach: { mb: number; seconds: number; mbps: number; delivered: number; produced: number; serverCpuSPerGB: number };
  rtt: { attach: Summary; pipeFloor: Summary };
};

function summarize(values: number[]): Summary {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
  return { n: sorted.length, median: at(0.5), p99: at(0.99), mean: sorted.reduce((a, b) => a + b, 0) / sorted.length };
}

/** utime + stime of a process, in seconds (clock ticks of 10 ms). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

// ---- the part that runs per runtime (in its mount namespace) ----------------------------------

async function runChild(rt: Runtime): Promise<RuntimeResult> {
  const work = tmpDir(`bench-exec-${rt.name}`);
  const root = join(work, "root");
  const runtimeCmd = (...args: string[]) => [rt.path, `--root=${root}`, ...args];
  const cleanups: (() => unknown)[] = [];
  let client: ConmonClient | undefined;
  try {
    client = await ConmonClient.new({
      conmonServerPath: BINARY,
      runtime: rt.path,
      runtimeRoot: root,
      serverRunDir: join(work, "run"),
      logDriver: "none",
      logLevel: "info",
      cgroupManager: CgroupManager.cgroupfs,
    });

    /** Creates (and optionally starts) a container under our server; removed at the end. */
    const container = async (args: string[], opts: { stdin?: boolean; start?: boolean } = {}) => {
      const bundle = await makeBundle({ args });
      const id = uniqueId(`bench-${rt.name}-`);
      cleanups.push(() => bundle.cleanup());
      await client!.createContainer({ id, bundlePath: bundle.dir, stdin: opts.stdin, cgroupManager: CgroupManager.cgroupfs });
      cleanups.push(() => Bun.spawnSync(runtimeCmd("delete", "--force", id), { stdout: "ignore", stderr: "ignore" }));
      const start = () => {
        const r = Bun.spawnSync(runtimeCmd("start", id), { stdout: "ignore", stderr: "pipe" });
        if (r.exitCode !== 0) throw new Error(`${rt.name} start ${id}: ${r.stderr.toString()}`);
      };
      if (opts.start ?? true) start();
      return { id, start };
    };

    // -- exec-sync: ours vs bare vs C conmon --
    const sleeper = await container(["sleep", "100000"]);
    const ours = async () => {
      const res = await client!.execSyncContainer({ id: sleeper.id, command: ["true"] });
      if (res.exitCode !== 0) throw new Error(`exec-sync answered ${res.exitCode}`);
    };
    const bare = async () => {
      const code = await Bun.spawn(runtimeCmd("exec", sleeper.id, "true"), { stdio: ["ignore", "ignore", "ignore"] }).exited;
      if (code !== 0) throw new Error(`${rt.name} exec exited ${code}`);
    };
    // What any monitor pays: `exec -d` returns once the process is started (runc starts it only
    // as runc itself exits), and the monitor then waits for the process. Upstream, C conmon and
    // we all exec this way, so this is the floor the monitors are compared with.
    const detachedPidFile = join(work, "exec-d.pid");
    const detached = async () => {
      const code = await Bun.spawn(runtimeCmd("exec", "-d", `--pid-file=${detachedPidFile}`, sleeper.id, "true"), { stdio: ["ignore", "ignore", "ignore"] }).exited;
      if (code !== 0) throw new Error(`${rt.name} exec -d exited ${code}`);
      const pidfd = tryPidfd(Number(readFileSync(detachedPidFile, "utf8").trim()));
      try {
        if (pidfd >= 0 && !waitReadable(pidfd, 10_000)) throw new Error("exec -d process did not exit within 10 s");
      } finally {
        closeQuietly(pidfd);
        rmSync(detachedPidFile, { force: true });
      }
    };
    const conmonDir = join(work, "conmon");
    mkdirSync(join(conmonDir, "socks"), { recursive: true });
    const spec = join(conmonDir, "process.json");
    writeFileSync(
      spec,
      JSON.stringify({
        args: ["true"],
        cwd: "/",
        env: ["PATH=/bin", "HOME=/root"],
        terminal: false,
        user: { uid: 0, gid: 0 },
        noNewPrivileges: true,
        capabilities: Object.fromEntries(["bounding", "effective", "permitted", "ambient"].map((k) => [k, ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]])),
      }),
    );
    const haveConmon = existsSync(CONMON);
    if (!haveConmon) console.error(`${CONMON} missing (apt-get install -y conmon): C conmon column skipped`);
    const syncBuffer = new Uint8Array(4096);
    let round = 0;
    const conmon = async () => {
      const i = round++;
      const pidFile = join(conmonDir, `pid-${i}`);
      const logFile = join(conmonDir, `log-${i}`);
      writeFileSync(logFile, "");
      const [syncR, syncW] = pipe();
      const [startR, startW] = pipe();
      const proc = Bun.spawn(
        [CONMON, "-c", sleeper.id, "-n", sleeper.id, "-r", rt.path, "-p", pidFile, "-e", "-l", logFile,
          "--socket-dir-path", join(conmonDir, "socks"), "--log-level", "error", "--sync",
          "--log-global-size-max", String(16 << 20), "--exec-process-spec", spec, "--runtime-arg", `--root=${root}`],
        { stdio: ["ignore", "ignore", "ignore", syncW, startR], env: { PATH: process.env.PATH ?? "/usr/bin:/bin", _OCI_SYNCPIPE: "3", _OCI_STARTPIPE: "4" } },
      );
      closeQuietly(syncW);
      closeQuietly(startR);
      writeFd(startW, Uint8Array.of(0));
      closeQuietly(startW);
      // Blocking reads, as the engine does: EOF once the daemonized conmon has exited.
      let text = "";
      for (let n; (n = readFd(syncR, syncBuffer)) > 0; ) text += new TextDecoder().decode(syncBuffer.subarray(0, n));
      readFileSync(logFile);
      closeQuietly(syncR);
      await proc.exited;
      const last = JSON.parse(text.trim().split("\n").at(-1) ?? "{}");
      if (last.exit_code !== 0) throw new Error(`conmon exec answered ${text.trim()}`);
      rmSync(logFile, { force: true });
      rmSync(pidFile, { force: true });
    };
    const paths = { ours, bare, detached, conmon: haveConmon ? conmon : null } as const;
    const times: Record<string, number[]> = { ours: [], bare: [], detached: [], conmon: [] };
    const order = rng(0x5eed);
    for (let i = 0; i < WARMUP + N; i++) {
      const round = Object.entries(paths).filter(([, fn]) => fn !== null);
      shuffle(round, order.int);
      for (const [name, fn] of round) {
        if (!fn) continue;
        if (GAP_MS > 0) await Bun.sleep(GAP_MS);
        const t0 = performance.now();
        await fn();
        if (i >= WARMUP) times[name]!.push(performance.now() - t0);
      }
    }

    // -- attach throughput --
    const blocks = ATTACH_MB * 16; // 64 KiB blocks
    const writer = await container(["dd", "if=/dev/zero", "bs=65536", `count=${blocks}`], { start: false });
    let delivered = 0;
    let started = 0;
    const cpuBefore = cpuSeconds(client.pid);
    await client.attachContainer({
      id: writer.id,
      socketPath: join(work, "attach-writer"),
      streams: { stdout: (chunk) => void (delivered += chunk.length) },
      preAttach: () => {
        writer.start();
        started = performance.now();
      },
    });
    const seconds = (performance.now() - started) / 1000;
    const serverCpu = cpuSeconds(client.pid) - cpuBefore;
    const produced = blocks * 65536;

    // -- attach round trip --
    const cat = await container(["cat"], { stdin: true });
    const stdinQueue: Uint8Array[] = [];
    let wakeStdin = null as (() => void) | null;
    let stdinEnded = false;
    const stdin: AsyncIterable<Uint8Array> = {
      async *[Symbol.asyncIterator]() {
        for (;;) {
          while (stdinQueue.length > 0) yield stdinQueue.shift()!;
          if (stdinEnded) return;
          await new Promise<void>((r) => (wakeStdin = r));
        }
      },
    };
    let onEcho = null as (() => void) | null;
    const line = new TextEncoder().encode("x\n");
    const attached = client.attachContainer({
      id: cat.id,
      socketPath: join(work, "attach-cat"),
      containerStdin: true,
      stopAfterStdinEof: true,
      detachKeys: new Uint8Array(0),
      streams: { stdin, stdout: () => onEcho?.() },
    });
    const roundTrip = (send: () => void) =>
      new Promise<number>((resolve) => {
        const t0 = performance.now();
        onEcho = () => {
          onEcho = null;
          resolve(performance.now() - t0);
        };
        send();
      });
    const attachRtt: number[] = [];
    for (let i = 0; i < WARMUP + RTT_N; i++) {
      const ms = await roundTrip(() => {
        stdinQueue.push(line);
        wakeStdin?.();
      });
      if (i >= WARMUP) attachRtt.push(ms);
    }
    stdinEnded = true;
    wakeStdin?.();
    await attached;

    // The floor: the same echo through two pipes and a cat that this process spawned, read with
    // the same poller the attach client uses.
    const [inR, inW] = pipe();
    const [outR, outW] = pipe();
    const floorCat = Bun.spawn(["/bin/busybox", "cat"], { stdio: [inR, outW, "ignore"] });
    closeQuietly(inR);
    closeQuietly(outW);
    setNonBlocking(outR);
    const readBack = new Uint8Array(64);
    const w = watch(outR, { read: true }, () => {
      while (readFd(outR, readBack) > 0) onEcho?.();
    });
    const pipeRtt: number[] = [];
    for (let i = 0; i < WARMUP + RTT_N; i++) {
      const ms = await roundTrip(() => writeFd(inW, line));
      if (i >= WARMUP) pipeRtt.push(ms);
    }
    w.close();
    closeQuietly(inW);
    closeQuietly(outR);
    await floorCat.exited;

    const samplesPrefix = arg("--samples", "");
    if (samplesPrefix) writeFileSync(`${samplesPrefix}.${rt.name}.json`, JSON.stringify(times));
    return {
      runtime: rt.name,
      exec: {
        ours: summarize(times.ours!),
        bare: summarize(times.bare!),
        detached: summarize(times.detached!),
        conmon: times.conmon!.length > 0 ? summarize(times.conmon!) : null,
      },
      attach: {
        mb: ATTACH_MB,
        seconds,
        mbps: delivered / 1e6 / seconds,
        delivered,
        produced,
        serverCpuSPerGB: serverCpu / (produced / 1e9),
      },
      rtt: { attach: summarize(attachRtt), pipeFloor: summarize(pipeRtt) },
    };
  } finally {
    for (const cleanup of cleanups.reverse()) {
      try {
        await cleanup();
      } catch {
        // best effort
      }
    }
    await client?.shutdown().catch(() => {});
    rmSync(work, { recursive: true, force: true });
  }
}

// ---- driver -----------------------------------------------------------------------------------

const f = (ms: number) => ms.toFixed(2);

function report(results: RuntimeResult[]): void {
  console.log(`\nexec-sync of \`true\`, n=${N} per path (after ${WARMUP} warm-up), shuffled per round, ${GAP_MS} ms idle before each call; ms`);
  console.log("| runtime | path | median | p99 | mean | median − bare | median − `exec -d` floor | median ratio to bare |");
  console.log("|---|---|---|---|---|---|---|---|");
  const plus = (ms: number) => `${ms >= 0 ? "+" : ""}${f(ms)}`;
  for (const r of results) {
    const bare = r.exec.bare!;
    const floor = r.exec.detached;
    const paths = [
      ["bare", `bare \`${r.runtime} exec\``],
      ["detached", `bare \`${r.runtime} exec -d\` + wait for the process`],
      ["ours", "conmonrs (ours) execSyncContainer"],
      ["conmon", "C conmon 2.1.6 -e --sync"],
    ] as const;
    for (const [name, label] of paths) {
      const s = r.exec[name];
      if (!s) continue;
      const overBare = name === "bare" ? "—" : plus(s.median - bare.median);
      const overFloor = name === "bare" || name === "detached" || !floor ? "—" : plus(s.median - floor.median);
      console.log(`| ${r.runtime} | ${label} | ${f(s.median)} | ${f(s.p99)} | ${f(s.mean)} | ${overBare} | ${overFloor} | ${(s.median / bare.median).toFixed(2)}× |`);
    }
    if (r.exec.conmon) console.log(`| ${r.runtime} | ours vs C conmon | | | | ${f(r.exec.ours!.median - r.exec.conmon.median)} | | ${(r.exec.ours!.median / r.exec.conmon.median).toFixed(2)}× |`);
  }
  console.log(`\nattach through our server (no log driver). Throughput: bytes that reached our client while the container wrote at full`);
  console.log(`speed, from \`start\` to \`[0]\`; the server drops packets for a client more than 1 MiB behind (by design), hence delivered < produced.`);
  console.log("| runtime | container output read by the server | delivered throughput | delivered / produced | server CPU per GB produced | round trip median | p99 | pipe+cat floor median | added by attach |");
  console.log("|---|---|---|---|---|---|---|---|---|");
  for (const r of results) {
    const a = r.attach;
    console.log(
      `| ${r.runtime} | ${a.mb} MiB in ${a.seconds.toFixed(2)} s (${(a.produced / 1e6 / a.seconds).toFixed(0)} MB/s) | ${a.mbps.toFixed(0)} MB/s | ${a.delivered === a.produced ? "all" : `${a.delivered} / ${a.produced}`} | ${a.serverCpuSPerGB.toFixed(2)} CPU-s/GB | ${f(r.rtt.attach.median)} ms | ${f(r.rtt.attach.p99)} ms | ${f(r.rtt.pipeFloor.median)} ms | ${f(r.rtt.attach.median - r.rtt.pipeFloor.median)} ms |`,
    );
  }
}

const childName = arg("--child", "");
if (childName) {
  const rt = findRuntime(childName as Runtime["name"]);
  if (!rt) throw new Error(`${childName} is not installed`);
  const result = await runChild(rt);
  console.log(RESULT_MARK + JSON.stringify(result));
} else {
  if (!existsSync(BINARY)) throw new Error(`${BINARY} missing: run \`bun build.ts\` first`);
  const loadBefore = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  const wanted = arg("--runtimes", "runc,crun").split(",");
  const results: RuntimeResult[] = [];
  // As on a real host: upstream's crun argv carries `--log=journald:<id>` (bench/containers.ts).
  const journald = await ensureJournald();
  for (const rt of runtimes().filter((r) => wanted.includes(r.name))) {
    const passthrough = process.argv.slice(2).filter((a, i, all) => a !== "--child" && all[i - 1] !== "--child");
    const child = Bun.spawn([...spawnPrefix(rt), process.execPath, import.meta.path, "--child", rt.name, ...passthrough], {
      stdout: "pipe",
      stderr: "inherit",
    });
    const out = await new Response(child.stdout).text();
    const code = await child.exited;
    const line = out.split("\n").find((l) => l.startsWith(RESULT_MARK));
    if (code !== 0 || !line) throw new Error(`${rt.name} part failed (exit ${code}):\n${out}`);
    results.push(JSON.parse(line.slice(RESULT_MARK.length)));
    console.error(`${rt.name} done`);
  }
  await journald.stop();
  report(results);
  console.log(`\nsystemd-journald during the run: ${journald.available ? "running" : `not available (${journald.reason})`}`);
  const loadAfter = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  console.log(`\nload average before: ${loadBefore}; after: ${loadAfter} (2 cores; other work on the box shows up in p99)`);
}
