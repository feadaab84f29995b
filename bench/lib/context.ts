// What every bench phase of one runtime shares, and the clean-up that runs on every exit path.
import { readdirSync, rmdirSync, rmSync, statfsSync, statSync } from "node:fs";
import { join } from "node:path";
import type { BenchRootfs } from "./bundles.ts";
import type { ConmonDirs } from "./conmon.ts";
import type { OurServer } from "./ours.ts";
import type { RuntimeCli } from "./runtime-cli.ts";

/** Containers that exist in the runtime's state; each is deleted (--force) exactly once. */
export class LiveContainers {
  private readonly ids = new Set<string>();

  constructor(private readonly rt: RuntimeCli) {}

  add(id: string): void {
    this.ids.add(id);
  }

  /** `runtime delete --force`: kills the container if it still runs, removes state and cgroups. */
  async remove(id: string): Promise<void> {
    if (!this.ids.delete(id)) return;
    await this.rt.run(["delete", "--force", id]);
  }

  async removeAll(): Promise<void> {
    for (const id of [...this.ids]) {
      this.ids.delete(id);
      await this.rt.tryRun(["delete", "--force", id]);
    }
  }

  get size(): number {
    return this.ids.size;
  }
}

export type BenchContext = {
  rt: RuntimeCli;
  rootfs: BenchRootfs;
  ours: OurServer;
  /** Absent when conmon is not installed. */
  conmon?: ConmonDirs;
  workDir: string;
  /** Log files go here (the disk, like research §3d), not to the tmpfs. */
  logDir: string;
  live: LiveContainers;
  nextId(label: string): string;
  progress(message: string): void;
};

/** Steps run last-in first-out; every step runs even when an earlier one failed. */
export class Cleanup {
  private readonly steps: Array<{ what: string; run: () => Promise<unknown> | unknown }> = [];
  private running?: Promise<void>;

  add(what: string, run: () => Promise<unknown> | unknown): void {
    this.steps.push({ what, run });
  }

  run(): Promise<void> {
    this.running ??= this.runSteps();
    return this.running;
  }

  private async runSteps(): Promise<void> {
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      try {
        await step.run();
      } catch (err) {
        console.error(`cleanup: ${step.what}: ${(err as Error).message}`);
      }
    }
  }
}

/** SIGINT/SIGTERM run the clean-up, then exit. */
export function cleanupOnSignals(cleanup: Cleanup): void {
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => {
      console.error(`bench: ${signal}, cleaning up`);
      void cleanup.run().finally(() => process.exit(130));
    });
  }
}

const CGROUP_ROOT = "/sys/fs/cgroup";
const CGROUP_SEARCH_DEPTH = 4;

/**
 * Cgroup directories named after our containers that the runtime left behind (runc puts them at
 * `/<id>` in most v1 hierarchies and below our own cgroup in `memory`). Searched a few levels deep.
 */
export function leftoverCgroups(idPrefix: string): string[] {
  const found: string[] = [];
  const visit = (dir: string, depth: number) => {
    let entries: string[];
    try {
      entries = readdirSync(dir);
    } catch {
      return;
    }
    for (const name of entries) {
      const path = join(dir, name);
      if (!isDirectory(path)) continue;
      if (name.startsWith(idPrefix)) found.push(path);
      else if (depth < CGROUP_SEARCH_DEPTH) visit(path, depth + 1);
    }
  };
  visit(CGROUP_ROOT, 0);
  return found;
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

const TMPFS_MAGIC = 0x01021994;

/**
 * rmdir (a cgroup with no processes goes away; one still in use stays and is reported). A plain
 * tmpfs directory is removed with its content: in crun's private mount namespace (no cgroup2 at
 * /sys/fs/cgroup/unified) crun "creates a cgroup" there as a directory with a cgroup.procs file on
 * the /sys/fs/cgroup tmpfs, and does not remove it on delete.
 */
export function removeCgroups(paths: string[]): string[] {
  const stuck: string[] = [];
  for (const path of paths) {
    try {
      if (statfsSync(path).type === TMPFS_MAGIC) rmSync(path, { recursive: true, force: true });
      else rmdirSync(path);
    } catch {
      stuck.push(path);
    }
  }
  return stuck;
}
