// The bench worker is a child subreaper (as research §3 drives conmon): daemonised conmons, the
// server daemon and bare containers' init processes are re-parented to it. Bun never reaps those,
// so we do, through pidfds, at points the bench chooses. Bun.spawn children are left to Bun: every
// spawn goes through spawnTracked() (src/child-reaper.ts), which marks them.
import { closeQuietly } from "../../ffi/fd.ts";
import { pidfdOpen, subreaper, waitPidfd } from "../../ffi/process.ts";
import { isSpawned } from "../../src/child-reaper.ts";
import { zombieChildren } from "../../test/helpers/proc.ts";

export function becomeSubreaper(): void {
  subreaper(true);
}

/** Reaps `pid` if it is our zombie child; returns its exit status code (128+sig when killed). */
export function reapIfZombie(pid: number): number | undefined {
  if (isSpawned(pid)) return undefined;
  let pidfd = -1;
  try {
    pidfd = pidfdOpen(pid);
    const status = waitPidfd(pidfd);
    if (status === null) return undefined;
    return status.exited ? status.code : 128 + status.signal;
  } catch {
    return undefined; // not ours, or gone
  } finally {
    closeQuietly(pidfd);
  }
}

/** Reaps every zombie child that Bun did not spawn. */
export function sweepZombies(): number {
  let reaped = 0;
  for (const pid of zombieChildren(process.pid)) {
    if (!isSpawned(pid) && reapIfZombie(pid) !== undefined) reaped++;
  }
  return reaped;
}
