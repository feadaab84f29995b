// `make bench`: runs each benchmark that exists, one after another (the machine has 2 cores, so
// never two at once), each as its own process; a failing one does not stop the others.
//
//   bun bench/run.ts [--quick]      (--quick is passed on to every benchmark)
import { existsSync } from "node:fs";
import { join } from "node:path";

const BENCHMARKS = ["rpc.ts", "containers.ts", "exec.ts"];

async function runBenchmark(path: string, args: string[]): Promise<number> {
  const proc = Bun.spawn([process.execPath, path, ...args], { stdio: ["inherit", "inherit", "inherit"] });
  const forward = () => proc.kill("SIGTERM");
  process.on("SIGINT", forward);
  try {
    return await proc.exited;
  } finally {
    process.off("SIGINT", forward);
  }
}

async function main(): Promise<number> {
  const args = process.argv.includes("--quick") ? ["--quick"] : [];
  const failed: string[] = [];
  for (const name of BENCHMARKS) {
    const path = join(import.meta.dir, name);
    if (!existsSync(path)) continue;
    console.error(`\n=== bench/${name} ${args.join(" ")} ===`);
    const began = performance.now();
    const code = await runBenchmark(path, args);
    console.error(`=== bench/${name}: exit ${code} after ${((performance.now() - began) / 1000).toFixed(0)} s ===`);
    if (code !== 0) failed.push(name);
  }
  if (failed.length > 0) console.error(`failed: ${failed.join(", ")}`);
  return failed.length === 0 ? 0 : 1;
}

process.exit(await main());
