// Bundles for the bench: one busybox rootfs (test/helpers/bundle.ts, in /dev/shm) shared by every
// container, and a fresh bundle directory per container holding only config.json, whose root.path
// points at the shared rootfs. A directory per container matters: C conmon puts its attach socket
// and fifos into the bundle, and our server reads <bundle>/pidfile.
//
// The rootfs carries the log workloads of research §3d: /data/f100 (100 MiB of 100-byte lines) and
// /data/f2 (10 MiB of 2-byte lines), which the containers `cat` 5 times (busybox cat: sendfile).
import { mkdirSync, writeFileSync, openSync, writeSync, closeSync } from "node:fs";
import { join } from "node:path";
import { bundleConfig, makeBundle, type Bundle } from "../../test/helpers/bundle.ts";

export const MIB = 1024 * 1024;
export const F100_BYTES = 100 * MIB;
export const F2_BYTES = 10 * MIB;
export const CAT_REPEATS = 5;

export type LogWorkload = { name: "cat100" | "cat2"; file: string; lineBytes: number; payloadBytes: number };

export const WORKLOADS: Record<"cat100" | "cat2", LogWorkload> = {
  cat100: { name: "cat100", file: "/data/f100", lineBytes: 100, payloadBytes: CAT_REPEATS * F100_BYTES },
  cat2: { name: "cat2", file: "/data/f2", lineBytes: 2, payloadBytes: CAT_REPEATS * F2_BYTES },
};

/** `lineBytes`-byte lines (printable content + "\n") filling `totalBytes`. */
function writeLinesFile(path: string, lineBytes: number, totalBytes: number): void {
  const line = new Uint8Array(lineBytes);
  for (let i = 0; i < lineBytes - 1; i++) line[i] = 0x61 + (i % 26); // a..z
  line[lineBytes - 1] = 0x0a;
  if (lineBytes === 2) line[0] = 0x79; // "y\n", as `yes` prints
  const block = new Uint8Array(MIB - (MIB % lineBytes));
  for (let i = 0; i < block.length; i++) block[i] = line[i % lineBytes]!;
  const fd = openSync(path, "w");
  try {
    let left = totalBytes;
    while (left > 0) {
      const n = Math.min(left, block.length);
      writeSync(fd, block, 0, n);
      left -= n;
    }
  } finally {
    closeSync(fd);
  }
}

export class BenchRootfs {
  private counter = 0;

  private constructor(
    private readonly base: Bundle,
    private readonly bundlesDir: string,
  ) {}

  /** Builds the rootfs (with the data files) and a directory for the per-container bundles. */
  static async create(workDir: string, withLogData: boolean): Promise<BenchRootfs> {
    const base = await makeBundle({ args: ["true"], dir: join(workDir, "rootfs-bundle") });
    if (withLogData) {
      mkdirSync(join(base.rootfs, "data"));
      // Whole lines only: a trailing partial line would change the record count per repeat.
      writeLinesFile(join(base.rootfs, "data", "f100"), 100, F100_BYTES);
      writeLinesFile(join(base.rootfs, "data", "f2"), 2, F2_BYTES);
    }
    const bundlesDir = join(workDir, "bundles");
    mkdirSync(bundlesDir, { recursive: true });
    return new BenchRootfs(base, bundlesDir);
  }

  get rootfs(): string {
    return this.base.rootfs;
  }

  /** A fresh bundle directory running `args`; removed with the work dir. */
  bundle(label: string, args: string[]): string {
    const dir = join(this.bundlesDir, `${label}-${this.counter++}`);
    mkdirSync(dir);
    const config = bundleConfig({ args });
    config.root.path = this.base.rootfs; // absolute: shared by all bundles
    writeFileSync(join(dir, "config.json"), JSON.stringify(config));
    return dir;
  }
}

/** The argv of a log workload: `cat FILE` five times in one process. */
export function catArgs(workload: LogWorkload): string[] {
  return ["cat", ...Array<string>(CAT_REPEATS).fill(workload.file)];
}
