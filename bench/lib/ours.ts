// Our server (dist/conmonrs), started once per runtime through ConmonClient.new as an engine does,
// and driven over the Cap'n Proto socket. It is long-lived, so its CPU is the difference of its
// /proc counters around a run.
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CgroupManager, ConmonClient } from "../../src/client/index.ts";
import type { RuntimeCli } from "./runtime-cli.ts";

export const SERVER_BINARY = join(import.meta.dir, "../../dist/conmonrs");

export type OurLog = { type: "cri"; path: string; maxSize?: number } | null;

export class OurServer {
  private constructor(
    readonly client: ConmonClient,
    readonly exitDir: string,
  ) {}

  static async start(rt: RuntimeCli, runDir: string, binary = SERVER_BINARY): Promise<OurServer> {
    if (!existsSync(binary)) throw new Error(`${binary} missing: run \`bun build.ts\` (make bench does)`);
    const exitDir = join(runDir, "exits");
    mkdirSync(exitDir, { recursive: true });
    const client = await ConmonClient.new({
      conmonServerPath: binary,
      runtime: rt.path,
      runtimeRoot: rt.root,
      serverRunDir: join(runDir, "server"),
      // info: crun 1.8.1 rejects the --log-level flag the server would add at error/warn/debug.
      logLevel: "info",
      logDriver: "none",
      cgroupManager: CgroupManager.cgroupfs,
    });
    return new OurServer(client, exitDir);
  }

  get pid(): number {
    return this.client.pid;
  }

  exitFile(id: string): string {
    return join(this.exitDir, id);
  }

  /** createContainer as CRI-O would send it: exit file, CRI log (or no log driver at all). */
  async create(id: string, bundle: string, log: OurLog): Promise<{ containerPid: number; sentAt: number; createdAt: number }> {
    const sentAt = performance.now();
    const { pid } = await this.client.createContainer({
      id,
      bundlePath: bundle,
      exitPaths: [this.exitFile(id)],
      logDrivers: log === null ? [] : [{ type: "cri", path: log.path, maxSize: log.maxSize ?? 0 }],
      cgroupManager: CgroupManager.cgroupfs,
    });
    return { containerPid: pid, sentAt, createdAt: performance.now() };
  }

  /** Resets VmHWM (clear_refs 5), so a later reading is the peak of what happened in between. */
  resetPeakRss(): void {
    writeFileSync(`/proc/${this.pid}/clear_refs`, "5");
  }

  async shutdown(): Promise<void> {
    await this.client.shutdown();
  }
}
