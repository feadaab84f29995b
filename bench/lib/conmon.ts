// C conmon (Debian 2.1.6) launched as CRI-O's CreateContainer does (research §2):
//
//   _OCI_SYNCPIPE=3 _OCI_STARTPIPE=4 conmon -b BUNDLE -c ID --exit-dir EXITS -l LOG --log-level error
//     -n ID -P CONMON_PIDFILE -p CTR_PIDFILE --persist-dir PERSIST/ID -r RUNTIME
//     --socket-dir-path SOCKS -u ID --runtime-arg --root=ROOT
//
// One byte on the start pipe; the conmon parent forks and exits (the daemon is re-parented to the
// bench, a subreaper); `{"pid": N}` arrives on the sync pipe once `runtime create` is done. When the
// container exits, conmon writes EXITS/ID and exits; the bench reads the zombie's own CPU from /proc
// before reaping it.
import { existsSync, mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { spawnTracked } from "../../src/child-reaper.ts";
import { closeQuietly, pipe, readFd, writeFd } from "../../ffi/fd.ts";
import { pidfdOpen } from "../../ffi/process.ts";
import { cpuTimes, type CpuTimes } from "./procfs.ts";
import { reapIfZombie } from "./reaper.ts";
import { readPidFile, type RuntimeCli } from "./runtime-cli.ts";
import { waitReadable } from "./sys.ts";

export const CONMON_PATH = "/usr/bin/conmon";

const SYNC_TIMEOUT_MS = 30_000;

export type ConmonDirs = { exitDir: string; persistDir: string; socketDir: string; pidDir: string };

export function conmonDirs(base: string): ConmonDirs {
  const dirs = {
    exitDir: join(base, "exits"),
    persistDir: join(base, "persist"),
    socketDir: join(base, "socks"),
    pidDir: join(base, "pids"),
  };
  for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
  return dirs;
}

export type ConmonLaunch = {
  id: string;
  /** The container's init pid, from the sync pipe. */
  containerPid: number;
  /** The daemonised conmon (our child: we are its subreaper). */
  conmonPid: number;
  conmonPidfd: number;
  /** performance.now() at spawn, and when the pid arrived on the sync pipe. */
  spawnedAt: number;
  createdAt: number;
  syncFd: number;
};

/** `log`: "none:" or "k8s-file:/path". */
export function conmonArgv(rt: RuntimeCli, dirs: ConmonDirs, id: string, bundle: string, log: string): string[] {
  const persist = join(dirs.persistDir, id);
  mkdirSync(persist, { recursive: true });
  return [
    CONMON_PATH, "-b", bundle, "-c", id, "--exit-dir", dirs.exitDir, "-l", log, "--log-level", "error",
    "-n", id, "-P", join(dirs.pidDir, `${id}.conmon.pid`), "-p", join(dirs.pidDir, `${id}.pid`),
    "--persist-dir", persist, "-r", rt.path, "--socket-dir-path", dirs.socketDir, "-u", id,
    "--runtime-arg", `--root=${rt.root}`,
  ];
}

/** Spawns conmon and returns once the container is created (pid on the sync pipe). */
export async function launchConmon(rt: RuntimeCli, dirs: ConmonDirs, id: string, bundle: string, log: string): Promise<ConmonLaunch> {
  const argv = conmonArgv(rt, dirs, id, bundle, log);
  const [syncRead, syncWrite] = pipe();
  const [startRead, startWrite] = pipe();
  const spawnedAt = performance.now();
  const parent = spawnTracked(argv, {
    stdio: ["ignore", "ignore", "ignore", syncWrite, startRead] as any,
    env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", _OCI_SYNCPIPE: "3", _OCI_STARTPIPE: "4" },
  });
  closeQuietly(syncWrite);
  closeQuietly(startRead);
  writeFd(startWrite, Uint8Array.of(0)); // "the cgroup is set up, go on"
  closeQuietly(startWrite);
  let line: string;
  try {
    line = readSyncLine(syncRead);
  } catch (err) {
    closeQuietly(syncRead);
    parent.kill("SIGKILL");
    throw err;
  }
  const createdAt = performance.now();
  const parentCode = await parent.exited;
  if (parentCode !== 0) throw new Error(`conmon parent exited ${parentCode}`);
  const containerPid = parseSyncPid(line);
  const conmonPid = readPidFile(join(dirs.pidDir, `${id}.conmon.pid`));
  return { id, containerPid, conmonPid, conmonPidfd: pidfdOpen(conmonPid), spawnedAt, createdAt, syncFd: syncRead };
}

const syncBuffer = new Uint8Array(4096);
const decoder = new TextDecoder();

/** Blocks (bounded) until a full line arrived on the sync pipe, or it closed. */
function readSyncLine(fd: number): string {
  let text = "";
  const deadline = performance.now() + SYNC_TIMEOUT_MS;
  while (!text.endsWith("\n")) {
    if (!waitReadable(fd, Math.max(1, deadline - performance.now()))) throw new Error("conmon: no pid on the sync pipe in time");
    const n = readFd(fd, syncBuffer);
    if (n <= 0) break;
    text += decoder.decode(syncBuffer.subarray(0, n));
  }
  return text;
}

function parseSyncPid(line: string): number {
  let msg: { pid?: number; data?: number; message?: string };
  try {
    msg = JSON.parse(line || "{}");
  } catch {
    throw new Error(`conmon: bad sync message ${JSON.stringify(line)}`);
  }
  const pid = msg.pid ?? msg.data ?? -1;
  if (!(pid > 0)) throw new Error(`conmon create failed: ${line.trim()}`);
  return pid;
}

/** After conmon exited (its pidfd readable): its own CPU from the zombie's /proc, then reap it. */
export function finishConmon(launch: ConmonLaunch): CpuTimes {
  const cpu = cpuTimes(launch.conmonPid);
  reapIfZombie(launch.conmonPid);
  closeQuietly(launch.conmonPidfd);
  closeQuietly(launch.syncFd);
  return cpu;
}

export function conmonExitFile(dirs: ConmonDirs, id: string): string {
  return join(dirs.exitDir, id);
}

export function conmonInstalled(): boolean {
  return existsSync(CONMON_PATH);
}

/** Exit file, persist dir, pid files and socket link of one container. */
export function removeConmonFiles(dirs: ConmonDirs, id: string): void {
  for (const path of [
    join(dirs.exitDir, id),
    join(dirs.persistDir, id),
    join(dirs.pidDir, `${id}.pid`),
    join(dirs.pidDir, `${id}.conmon.pid`),
    join(dirs.socketDir, id),
  ]) {
    rmSync(path, { recursive: true, force: true });
  }
}
