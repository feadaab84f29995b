// Throughput of the CRI log path for 100-byte and 2-byte lines, fed in read-sized chunks the way
// the stdout read loop does:
//   1. the encoder alone (no I/O), timed for --seconds per case;
//   2. CriLogDriver writing a real file (encode + one write(2) per chunk), with the workloads of
//      research §3d (500 MiB of 100-byte lines, 50 MiB of 2-byte lines), CPU time per GB included.
//      The file goes to --dir (default: the OS temp dir) and is deleted afterwards.
//
//   bun bench/log-encode.ts [--seconds 2] [--chunk 4096] [--dir /tmp] [--no-file]
//
// Reference (research §3d, C conmon 2.1.6 k8s-file, whole pipeline incl. pipe reads): 304 MB/s
// and 3.28 CPU-s/GB payload at 100-byte lines; 15.9 MB/s and 64.9 CPU-s/GB at 2-byte lines.
// Not included here: reading the pipe and the event loop around it.

import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CachedCriClock, CriEncoder, CriLogDriver } from "../src/log-cri.ts";

interface Result {
  name: string;
  payloadMBps: number;
  outputMBps: number;
  nsPerLine: number;
}

function argValue(flag: string, fallback: number): number {
  const i = process.argv.indexOf(flag);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

/** A stream of `lineLength`-byte lines (content + `\n`) cut into `chunkSize` reads. */
function makeChunks(lineLength: number, chunkSize: number, count: number): Uint8Array[] {
  const line = new Uint8Array(lineLength).fill(0x78);
  line[lineLength - 1] = 0x0a;
  const stream = new Uint8Array(chunkSize * count);
  for (let i = 0; i < stream.length; i++) stream[i] = line[i % lineLength]!;
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < count; i++) chunks.push(stream.subarray(i * chunkSize, (i + 1) * chunkSize));
  return chunks;
}

function run(name: string, lineLength: number, chunkSize: number, seconds: number, trackRecords: boolean): Result {
  const chunks = makeChunks(lineLength, chunkSize, 64);
  const encoder = new CriEncoder(trackRecords);
  const clock = new CachedCriClock();
  let sink = 0;
  // Warm up the JIT before timing.
  for (let i = 0; i < 20_000; i++) sink += encoder.encode(chunks[i & 63]!, "stdout", clock.now()).length;

  let payload = 0;
  let output = 0;
  let iterations = 0;
  const start = performance.now();
  const deadline = start + seconds * 1000;
  let now = start;
  while (now < deadline) {
    for (let i = 0; i < 256; i++) {
      const chunk = chunks[(iterations + i) & 63]!;
      output += encoder.encode(chunk, "stdout", clock.now()).length;
      payload += chunk.length;
    }
    iterations += 256;
    now = performance.now();
  }
  const elapsedS = (now - start) / 1000;
  if (sink < 0) console.log(sink);
  const lines = payload / lineLength;
  return {
    name,
    payloadMBps: payload / 1e6 / elapsedS,
    outputMBps: output / 1e6 / elapsedS,
    nsPerLine: (elapsedS * 1e9) / lines,
  };
}

/** Encode + write `payloadBytes` through the real driver; CPU from process.cpuUsage (user+sys). */
function runDriver(name: string, lineLength: number, chunkSize: number, payloadBytes: number, dir: string): string {
  const chunks = makeChunks(lineLength, chunkSize, 64);
  const path = join(dir, `bench-${lineLength}.log`);
  const driver = CriLogDriver.open(path, 0);
  try {
    for (let i = 0; i < 2000; i++) driver.write("stdout", chunks[i & 63]!); // JIT warm-up
    driver.reopen();
    const count = Math.ceil(payloadBytes / chunkSize);
    const cpuBefore = process.cpuUsage();
    const start = performance.now();
    for (let i = 0; i < count; i++) driver.write("stdout", chunks[i & 63]!);
    const elapsedS = (performance.now() - start) / 1000;
    const cpu = process.cpuUsage(cpuBefore);
    const cpuS = (cpu.user + cpu.system) / 1e6;
    const payload = count * chunkSize;
    const fileBytes = statSync(path).size;
    return (
      `${name.padEnd(44)} ${(payload / 1e6 / elapsedS).toFixed(0).padStart(6)} MB/s payload  ` +
      `${(cpuS / (payload / 1e9)).toFixed(2).padStart(6)} CPU-s/GB payload  ` +
      `${(cpuS / (fileBytes / 1e9)).toFixed(2)} CPU-s/GB log (${(fileBytes / 1e6).toFixed(0)} MB file, ` +
      `user ${(cpu.user / 1e6).toFixed(2)}s sys ${(cpu.system / 1e6).toFixed(2)}s)`
    );
  } finally {
    driver.close();
    rmSync(path, { force: true });
  }
}

const seconds = argValue("--seconds", 2);
const chunkSize = argValue("--chunk", 4096);
const results = [
  run("100-byte lines", 100, chunkSize, seconds, false),
  run("2-byte lines", 2, chunkSize, seconds, false),
  run("100-byte lines, maxSize>0 (record tracking)", 100, chunkSize, seconds, true),
  run("2-byte lines, maxSize>0 (record tracking)", 2, chunkSize, seconds, true),
];
console.log(`CRI encoder, ${chunkSize}-byte chunks, ${seconds}s each (bun ${Bun.version})`);
for (const r of results) {
  console.log(
    `${r.name.padEnd(44)} ${r.payloadMBps.toFixed(0).padStart(6)} MB/s payload  ` +
      `${r.outputMBps.toFixed(0).padStart(6)} MB/s log  ${r.nsPerLine.toFixed(1).padStart(7)} ns/line`,
  );
}

if (!process.argv.includes("--no-file")) {
  const dirIndex = process.argv.indexOf("--dir");
  const dir = mkdtempSync(join(dirIndex >= 0 ? process.argv[dirIndex + 1]! : tmpdir(), "log-bench-"));
  try {
    console.log(`\nCriLogDriver → file in ${dir} (encode + write(2) per chunk, no fsync)`);
    console.log(runDriver("100-byte lines, 500 MiB", 100, chunkSize, 500 * 1024 * 1024, dir));
    console.log(runDriver("2-byte lines, 50 MiB", 2, chunkSize, 50 * 1024 * 1024, dir));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
