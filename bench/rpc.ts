// RPC throughput, latency and memory of the compiled server against the C++ reference server
// (test/interop/ref_server.cpp on Debian's libcapnp-rpc), driven by the C++ interop client's
// `bench` command over the unix socket, plus the in-process cost of a call (no socket).
//
//   bun bench/rpc.ts [--seconds 3] [--rounds 3] [--settle 6] [--quick] [--skip-memory]
//                    [--skip-inproc] [--inproc-only] [--binary <conmonrs>]
//
// Builds dist/conmonrs if it is missing (run `bun build.ts` first to measure a fresh build);
// --binary measures another build instead (e.g. an older commit's, for a before/after).
// Rounds alternate ours and the reference so that load from other processes hits both alike;
// each figure is the median over the rounds, with the range. Server CPU per call comes from
// /proc/<pid>/stat (user + system, all threads), which moves less with machine load than rates do.
// See bench/README.md and docs/performance.md.

import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Message, utils } from "capnp-es";
import { Message as RpcMessage } from "capnp-es/capnp/rpc";
import { Conmon$Client } from "../schema/conmon.ts";
import { RpcConnection } from "../src/rpc/connection.ts";
import { Envelope, MSG_BOOTSTRAP, MSG_CALL, parseEnvelope, writeBootstrapReturn, writeResultsReturn } from "../src/rpc/envelope.ts";
import { FrameDecoder } from "../src/rpc/framing.ts";
import { EncodedResults } from "../src/rpc/results.ts";
import { FrameReader, OutBuffer } from "../src/rpc/wire.ts";
import { conmonService } from "../src/service.ts";
import { handleVersion, readVersionParams } from "../src/version.ts";
import {
  buildInteropClient,
  buildRefServer,
  interopLine,
  REPO_ROOT,
  startRefServer,
  startServer,
  type RunningServer,
} from "../test/helpers/interop.ts";

function argString(flag: string): string | undefined {
  const i = process.argv.indexOf(flag);
  if (i < 0) return undefined;
  const value = process.argv[i + 1];
  if (!value) throw new Error(`${flag} needs a value`);
  return value;
}

const CONMONRS = argString("--binary") ?? join(REPO_ROOT, "dist/conmonrs");
const RUNTIME = "/usr/sbin/runc";
const CLK_TCK = 100; // Linux USER_HZ; /proc/<pid>/stat counts in these ticks

function argNumber(flag: string, fallback: number): number {
  const i = process.argv.indexOf(flag);
  if (i < 0) return fallback;
  const value = Number(process.argv[i + 1]);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${flag} needs a positive number, got ${process.argv[i + 1]}`);
  return value;
}

/** `--quick` (from bench/run.ts): one short round, for a smoke run rather than figures. */
const QUICK = process.argv.includes("--quick");
const SECONDS = argNumber("--seconds", QUICK ? 1 : 3);
const ROUNDS = argNumber("--rounds", QUICK ? 1 : 3);
const SETTLE_SECONDS = argNumber("--settle", QUICK ? 3 : 6);

// ---- servers -----------------------------------------------------------------------------------

interface Server {
  name: string;
  running: RunningServer;
  dir: string;
}

async function startOurs(name: string): Promise<Server> {
  const dir = mkdtempSync(join(tmpdir(), "conmon-bench-"));
  const socket = join(dir, "conmon.sock");
  const running = await startServer([CONMONRS, "--skip-fork", "--runtime", RUNTIME, "--runtime-dir", dir, "--log-driver", "none"], socket);
  return { name, running, dir };
}

/** This file in --floor-server mode: what Bun's sockets cost with (almost) no work per call. */
async function startFloor(): Promise<Server> {
  const dir = mkdtempSync(join(tmpdir(), "conmon-bench-floor-"));
  const socket = join(dir, "conmon.sock");
  const running = await startServer([process.execPath, import.meta.path, "--floor-server", socket], socket);
  return { name: "Bun floor", running, dir };
}

/**
 * A server that decodes the envelope like ours but answers every Call with the same pre-encoded
 * version results and touches no capnp-es: the floor under any Bun implementation of this
 * protocol (event loop, socket reads and writes, framing).
 */
function floorServer(socketPath: string): void {
  const results = EncodedResults.build(Conmon$Client.methods[0]!.ResultsClass as any, (r: any) => {
    const response = r._initResponse();
    response.processId = process.pid;
    response.version = "0.0.0-floor";
  });
  Bun.listen<{ decoder: FrameDecoder; out: OutBuffer }>({
    unix: socketPath,
    socket: {
      open(socket) {
        socket.data = { decoder: new FrameDecoder(), out: new OutBuffer() };
      },
      data(socket, chunk) {
        const { decoder, out } = socket.data;
        const reader = new FrameReader();
        const env = new Envelope();
        decoder.decode(chunk, (dv, start, length) => {
          reader.reset(dv, start, length);
          parseEnvelope(reader, env);
          if (env.which === MSG_BOOTSTRAP) writeBootstrapReturn(out, env.questionId, 0);
          else if (env.which === MSG_CALL) writeResultsReturn(out, env.questionId, results.segments);
        });
        if (out.length > 0) socket.write(out.view()); // tiny replies: the kernel takes them whole
        out.clear();
      },
    },
  });
}

async function startRef(): Promise<Server> {
  const dir = mkdtempSync(join(tmpdir(), "conmon-bench-ref-"));
  return { name: "C++ ref", running: await startRefServer(join(dir, "conmon.sock")), dir };
}

async function stop(server: Server): Promise<void> {
  await server.running.stop();
  rmSync(server.dir, { recursive: true, force: true });
}

/** User + system CPU seconds of a process, all threads. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK; // utime, stime (fields 14 and 15)
}

interface BenchResult {
  rate: number;
  p50: number;
  p90: number;
  p99: number;
  cpuUsPerCall: number;
  errors: number;
}

async function bench(server: Server, inflight: number, seconds = SECONDS): Promise<BenchResult> {
  const pid = server.running.pid;
  const before = cpuSeconds(pid);
  const line = await interopLine(["bench", server.running.socket, String(seconds), String(inflight)], { timeoutMs: (seconds + 30) * 1000 });
  const cpu = cpuSeconds(pid) - before;
  if (line.errors !== 0) throw new Error(`${server.name}: bench reported errors: ${JSON.stringify(line)}`);
  const calls = line.calls as number;
  return {
    rate: line.rate as number,
    p50: line.p50us as number,
    p90: line.p90us as number,
    p99: line.p99us as number,
    cpuUsPerCall: (cpu * 1e6) / calls,
    errors: line.errors as number,
  };
}

// ---- memory ------------------------------------------------------------------------------------

interface Memory {
  vmRss: number;
  rssAnon: number;
  rssFile: number;
  pss: number;
  pssAnon: number;
}

/** kB figures from /proc/<pid>/status and smaps_rollup. */
function memory(pid: number): Memory {
  const field = (text: string, key: string) => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(text);
    if (!m) throw new Error(`/proc/${pid}: no ${key}`);
    return Number(m[1]);
  };
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
  return {
    vmRss: field(status, "VmRSS"),
    rssAnon: field(status, "RssAnon"),
    rssFile: field(status, "RssFile"),
    pss: field(rollup, "Pss"),
    pssAnon: field(rollup, "Pss_Anon"),
  };
}

const mb = (kb: number) => (kb / 1024).toFixed(1);

function memoryRow(label: string, m: Memory): string {
  return `| ${label} | ${mb(m.vmRss)} | ${mb(m.rssAnon)} | ${mb(m.rssFile)} | ${mb(m.pss)} | ${mb(m.pssAnon)} |`;
}

// ---- in-process ----------------------------------------------------------------------------------

function frame(build: (root: RpcMessage) => void): Uint8Array {
  const msg = new Message();
  build(msg.initRoot(RpcMessage));
  return new Uint8Array(msg.toArrayBuffer());
}

function callFrame(questionId: number, methodId: number, fill: (params: any) => void): Uint8Array {
  return frame((root) => {
    const call = root._initCall();
    call.questionId = questionId;
    call.interfaceId = Conmon$Client.interfaceId;
    call.methodId = methodId;
    call._initTarget().importedCap = 0;
    const content = call._initParams().content;
    const method = Conmon$Client.methods[methodId]!;
    utils.initStruct(method.ParamsClass._capnp.size, content);
    fill(utils.getAs(method.ParamsClass, content));
  });
}

/**
 * CPU µs per call of RpcConnection alone: a Call and its Finish per call, Returns discarded.
 * `execSync` stands for the production hot path (kubelet exec probes): params with an id and a
 * command, results with exit code and Data fields of `stdoutBytes`.
 */
function inProcess(kind: "version" | "execSync", stdoutBytes = 0): number {
  const stdout = new Uint8Array(stdoutBytes).fill(0x61);
  const conn = new RpcConnection(
    conmonService(
      {
        version: handleVersion,
        execSyncContainer: (params: any, results: any) => {
          const request = params.request;
          if (request.id.length === 0 || request.command.length === 0) throw new Error("bad request");
          const response = results._initResponse();
          response.exitCode = 0;
          response._initStdout(stdout.length).copyBuffer(stdout);
          response._initStderr(0);
        },
      },
      // As server.ts wires it: version's params read by hand.
      { version: readVersionParams },
    ),
    { write() {}, close() {} },
    { debug() {}, warn() {} },
  );
  conn.receive(frame((root) => (root._initBootstrap().questionId = 0)));
  const N = 1000;
  const calls = Array.from({ length: N }, (_, i) =>
    kind === "version"
      ? callFrame(i + 1, 0, (p) => (p._initRequest().verbose = false))
      : callFrame(i + 1, 2, (p) => {
          const request = p._initRequest();
          request.id = "4f1c6a0b9d2e8f7a3c5b1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a";
          request.timeoutSec = 10n;
          const command = request._initCommand(3);
          ["/bin/sh", "-c", "test -f /tmp/healthy"].forEach((a, i) => command.set(i, a));
        }),
  );
  const finishes = Array.from({ length: N }, (_, i) => frame((root) => (root._initFinish().questionId = i + 1)));
  const round = () => {
    for (let i = 0; i < N; i++) {
      conn.receive(calls[i]!);
      conn.receive(finishes[i]!);
    }
  };
  for (let i = 0; i < 30; i++) round(); // JIT warm-up
  const samples: number[] = [];
  for (let r = 0; r < 7; r++) {
    const before = process.cpuUsage();
    const t0 = performance.now();
    let n = 0;
    while (performance.now() - t0 < 300) {
      round();
      n += N;
    }
    const used = process.cpuUsage(before);
    samples.push((used.user + used.system) / n);
  }
  return median(samples);
}

// ---- reporting ---------------------------------------------------------------------------------

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function summary(results: BenchResult[], key: keyof BenchResult, digits = 0): string {
  const xs = results.map((r) => r[key]);
  const f = (x: number) => x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
  return xs.length > 1 ? `${f(median(xs))} (${f(Math.min(...xs))}–${f(Math.max(...xs))})` : f(xs[0]!);
}

function benchTable(ours: Map<number, BenchResult[]>, ref: Map<number, BenchResult[]>, floor: Map<number, BenchResult[]>): string {
  const rows = [
    "| load | server | calls/s | p50 µs | p90 µs | p99 µs | server CPU µs/call |",
    "|---|---|---|---|---|---|---|",
  ];
  const ratios = [
    "| load | calls/s ours ÷ C++ | p50 ours ÷ C++ | CPU/call ours ÷ C++ | calls/s ours ÷ Bun floor |",
    "|---|---|---|---|---|",
  ];
  for (const inflight of ours.keys()) {
    const load = inflight === 1 ? "sequential" : `${inflight} in flight`;
    for (const [name, results] of [
      ["conmon-ts", ours.get(inflight)!],
      ["C++ ref", ref.get(inflight)!],
      ["Bun floor", floor.get(inflight)!],
    ] as const) {
      rows.push(
        `| ${load} | ${name} | ${summary(results, "rate")} | ${summary(results, "p50")} | ${summary(results, "p90")} | ${summary(results, "p99")} | ${summary(results, "cpuUsPerCall", 1)} |`,
      );
    }
    const m = (rs: BenchResult[], k: keyof BenchResult) => median(rs.map((r) => r[k]));
    const o = ours.get(inflight)!;
    const c = ref.get(inflight)!;
    const f = floor.get(inflight)!;
    ratios.push(
      `| ${load} | ${(m(o, "rate") / m(c, "rate")).toFixed(2)} | ${(m(o, "p50") / m(c, "p50")).toFixed(2)} | ${(m(o, "cpuUsPerCall") / m(c, "cpuUsPerCall")).toFixed(2)} | ${(m(o, "rate") / m(f, "rate")).toFixed(2)} |`,
    );
  }
  return `${rows.join("\n")}\n\n${ratios.join("\n")}`;
}

// ---- main --------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const floorSocket = argString("--floor-server");
  if (floorSocket) return floorServer(floorSocket);
  if (process.argv.includes("--inproc-only")) return printInProcess();
  if (!existsSync(CONMONRS)) {
    if (argString("--binary")) throw new Error(`--binary ${CONMONRS} does not exist`);
    console.error(`${CONMONRS} is missing: building it`);
    const build = Bun.spawnSync([process.execPath, join(REPO_ROOT, "build.ts")], { stdout: "inherit", stderr: "inherit" });
    if (!build.success) throw new Error(`bun build.ts failed with status ${build.exitCode}`);
  }
  await Promise.all([buildInteropClient(), buildRefServer()]);
  const cpus = readFileSync("/proc/cpuinfo", "utf8").match(/^processor/gm)?.length ?? 0;
  const load = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  console.log(`# RPC bench — ${CONMONRS}, ${cpus} CPUs, load average ${load}, ${ROUNDS} × ${SECONDS} s per figure\n`);

  const a = await startOurs("conmon-ts A");
  const b = await startOurs("conmon-ts B");
  const ref = await startRef();
  const floor = await startFloor();
  try {
    // Idle = settled: the servers collect start-up garbage after 2 s without traffic.
    await Bun.sleep(5000);
    const idle = [memory(a.running.pid), memory(b.running.pid), memory(ref.running.pid)];
    // Idle again after one `version` call each: what a monitor that has answered its engine keeps
    // (the first call's code paths and heap blocks stay).
    for (const s of [a, b, ref]) await interopLine(["version", s.running.socket]);
    await Bun.sleep(5000);
    const idleAfterCall = [memory(a.running.pid), memory(b.running.pid), memory(ref.running.pid)];

    // JIT warm-up of the servers' hot paths and of the client's connection setup.
    for (const s of [a, ref, floor]) await bench(s, 4, 1);
    const ours = new Map<number, BenchResult[]>([[1, []], [100, []]]);
    const theirs = new Map<number, BenchResult[]>([[1, []], [100, []]]);
    const floors = new Map<number, BenchResult[]>([[1, []], [100, []]]);
    for (let round = 0; round < ROUNDS; round++) {
      for (const inflight of [1, 100]) {
        ours.get(inflight)!.push(await bench(a, inflight));
        theirs.get(inflight)!.push(await bench(ref, inflight));
        floors.get(inflight)!.push(await bench(floor, inflight));
      }
    }
    await bench(b, 100); // B gets a load too, so both are measured after one

    const afterLoad = [memory(a.running.pid), memory(b.running.pid), memory(ref.running.pid)];
    await Bun.sleep(SETTLE_SECONDS * 1000);
    const settled = [memory(a.running.pid), memory(b.running.pid), memory(ref.running.pid)];

    console.log("## Throughput and latency (C++ libcapnp-rpc client, `version` calls, unix socket)\n");
    console.log(benchTable(ours, theirs, floors));
    if (!process.argv.includes("--skip-memory")) {
      console.log("\n## Memory (MB; two conmon-ts servers running at once, Pss shares their common pages)\n");
      console.log("| server, when | VmRSS | RssAnon | RssFile | Pss | Pss_Anon |");
      console.log("|---|---|---|---|---|---|");
      const labels = ["conmon-ts A", "conmon-ts B", "C++ ref"];
      for (const [when, samples] of [
        ["idle", idle],
        ["idle after one version call", idleAfterCall],
        ["right after load", afterLoad],
        [`${SETTLE_SECONDS} s later`, settled],
      ] as const) {
        samples.forEach((m, i) => console.log(memoryRow(`${labels[i]}, ${when}`, m)));
      }
    }
  } finally {
    await Promise.all([stop(a), stop(b), stop(ref), stop(floor)]);
  }

  if (!process.argv.includes("--skip-inproc")) printInProcess();
}

function printInProcess(): void {
  console.log("\n## In-process (RpcConnection alone, no socket): CPU µs per call, Call + Finish\n");
  console.log("| call | CPU µs/call | calls/s on one core |");
  console.log("|---|---|---|");
  for (const [label, run] of [
    ["version", () => inProcess("version")],
    ["execSync, 1 KiB stdout", () => inProcess("execSync", 1024)],
    ["execSync, 64 KiB stdout", () => inProcess("execSync", 64 * 1024)],
  ] as const) {
    const us = run();
    console.log(`| ${label} | ${us.toFixed(1)} | ${Math.round(1e6 / us).toLocaleString("en-US")} |`);
  }
}

await main();
