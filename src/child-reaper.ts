// Exit detection for processes that are NOT Bun.spawn children: container inits and exec processes
// that the runtime forked and that were re-parented to us because we are a child subreaper.
//
// Mechanism: one pidfd per watched pid, opened at watch() time (holding it pins the pid number, so
// a recycled pid can never be confused with the container), and a non-blocking
// waitid(P_PIDFD, WNOHANG) on every watched pidfd whenever SIGCHLD arrives. SIGCHLD is the hot
// path: the exit is seen in the same event-loop turn as the signal, no timer involved. Because
// SIGCHLDs coalesce (two exits may produce one signal) each signal scans every watched pidfd, and a
// slow safety timer rescans while anything is watched.
//
// We never call waitid(P_ALL) or waitpid(-1): that could reap a Bun.spawn child, after which Bun's
// own wait fails with ECHILD, `proc.exited` rejects and the server may die. Bun.spawn children are
// announced through markSpawned() (spawnTracked() does it for you) and are never touched.
//
// Zombies nobody watches (a runtime helper that double-forked, a process whose container exited
// before anybody asked for it) would pile up forever, since Bun does not reap re-parented
// processes. They are reaped by a sweep over our children, but only after they have stayed zombies
// for a grace period (see UNWATCHED_ZOMBIE_GRACE_MS for why).
import { readFileSync, readdirSync } from "node:fs";
import { isErrno } from "../ffi/errors.ts";
import { closeQuietly } from "../ffi/fd.ts";
import { pidfdOpen, pidfdSendSignal, waitPidfd, type WaitStatus } from "../ffi/process.ts";
import type { Logger } from "./logger.ts";

/** How a process ended. `code` is the exit status, or 128 + signal number when it was killed;
 * -1 when the status could not be obtained (somebody else reaped the process). */
export type ExitInfo = { code: number; signal?: number };

/** Bun.spawn children (pids) that the reaper must leave alone. Module-wide: spawn sites do not hold
 * the server's ChildReaper. */
const spawnedPids = new Set<number>();

/** Announces a Bun.spawn child: no ChildReaper will ever wait for it. */
export function markSpawned(pid: number): void {
  spawnedPids.add(pid);
}

/** Call once Bun has reaped the child (its `exited` settled); the pid may then be reused. */
export function unmarkSpawned(pid: number): void {
  spawnedPids.delete(pid);
}

export function isSpawned(pid: number): boolean {
  return spawnedPids.has(pid);
}

/**
 * Bun.spawn, with the child marked as Bun's own until Bun has reaped it. Use this for every spawn
 * of the server (runtime create/exec, cleanup commands) so the zombie sweep never steals a child
 * from Bun.
 */
export function spawnTracked<
  const In extends Bun.SpawnOptions.Writable = "ignore",
  const Out extends Bun.SpawnOptions.Readable = "pipe",
  const Err extends Bun.SpawnOptions.Readable = "inherit",
>(argv: string[], opts?: Bun.SpawnOptions.SpawnOptions<In, Out, Err>): Bun.Subprocess<In, Out, Err> {
  const proc = Bun.spawn<In, Out, Err>(argv, opts);
  const pid = proc.pid;
  markSpawned(pid);
  // `exited` settles after Bun's waitpid, so from then on the pid is no longer our child.
  const forget = () => unmarkSpawned(pid);
  proc.exited.then(forget, forget);
  return proc;
}

/** The safety rescan, for exits whose SIGCHLD was merged into another one. */
const SAFETY_SCAN_INTERVAL_MS = 1000;

/**
 * An unwatched zombie child is reaped only after it has been seen as a zombie this long. Two
 * reasons: (1) a Bun.spawn child that somebody started without spawnTracked() is a zombie until
 * Bun's event loop gets to reap it, and reaping it ourselves would crash Bun's wait; Bun reaps
 * within one loop turn, far below this. (2) An exec process that exits at once is our zombie
 * before the server has read its pid file and called watch(); reaping it then would lose its exit
 * code.
 */
const UNWATCHED_ZOMBIE_GRACE_MS = 1000;

/**
 * Statuses the sweep took from processes nobody watched yet are kept this long, so a watch()
 * that comes late (an exec whose runtime lingered after starting it) still gets the real exit
 * code instead of "reaped elsewhere". Short enough that pid reuse cannot hand a stale status to a
 * new process.
 */
const SWEPT_STATUS_TTL_MS = 10_000;

/**
 * SIGCHLDs are answered at once for watched pids, but the sweep over all our children waits this
 * long and then serves every SIGCHLD that came in between. Each sweep reads a /proc file per
 * thread and per child, and an unwatched zombie waits out its grace period anyway; sweeping on
 * every signal cost the server CPU on each exec and create while the runtime was still running.
 */
const SWEEP_BATCH_MS = 200;

type Watched = {
  pid: number;
  pidfd: number;
  promise: Promise<ExitInfo>;
  resolve: (exit: ExitInfo) => void;
  /** Logged once that the pid is still somebody else's child. */
  notOurChildLogged: boolean;
};

export class ChildReaper {
  private readonly log: Logger;
  private readonly watched = new Map<number, Watched>();
  /** Unwatched zombie children: pid → when we first saw it as a zombie (performance.now()). */
  private readonly zombieSince = new Map<number, number>();
  /** pid → status the sweep reaped, and when; see SWEPT_STATUS_TTL_MS. */
  private readonly swept = new Map<number, { exit: ExitInfo; at: number }>();
  private safetyTimer: ReturnType<typeof setInterval> | undefined;
  private sweepTimer: ReturnType<typeof setTimeout> | undefined;
  /** When the scheduled sweep runs (performance.now()). */
  private sweepDue = Infinity;
  private closed = false;
  // Handled on the next turn, never inside the signal callback: a Bun.spawn made from a signal
  // callback's promise chain (a cleanup command after an exit, say) is never reaped by Bun 1.4.4;
  // the child stays a zombie and its `exited` never settles.
  private sigchldQueued = false;
  private readonly onSigchld = () => {
    if (this.sigchldQueued) return;
    this.sigchldQueued = true;
    setImmediate(() => {
      this.sigchldQueued = false;
      if (!this.closed) this.handleSigchld();
    });
  };

  constructor(log: Logger) {
    this.log = log;
    process.on("SIGCHLD", this.onSigchld);
  }

  /** Number of pids being watched. */
  get watching(): number {
    return this.watched.size;
  }

  watchedPids(): number[] {
    return [...this.watched.keys()];
  }

  /**
   * Starts watching `pid`, a re-parented grandchild (never a Bun.spawn child); resolves once it is
   * reaped. Watching a pid twice returns the same promise. Rejects only when the pid cannot be
   * watched at all (a Bun.spawn child, or pidfd_open failing for another reason than ESRCH).
   */
  watch(pid: number): Promise<ExitInfo> {
    const existing = this.watched.get(pid);
    if (existing) return existing.promise;
    if (this.closed) return Promise.reject(new Error(`watch pid ${pid}: child reaper is closed`));
    if (spawnedPids.has(pid)) {
      return Promise.reject(new Error(`watch pid ${pid}: it is a Bun.spawn child; use proc.exited`));
    }
    const swept = this.takeSwept(pid);
    if (swept) return Promise.resolve(swept);
    let pidfd: number;
    try {
      pidfd = pidfdOpen(pid);
    } catch (err) {
      if (!isErrno(err, "ESRCH")) return Promise.reject(new Error(`watch pid ${pid}`, { cause: err }));
      // A zombie still has a pid, so pidfd_open works on our own zombies; ESRCH means somebody else
      // (the runtime, or init) already reaped it and its status is lost.
      this.log.warn(`Child ${pid} was already reaped elsewhere; its exit status is unknown`);
      return Promise.resolve({ code: -1 });
    }
    let resolve!: (exit: ExitInfo) => void;
    const promise = new Promise<ExitInfo>((r) => (resolve = r));
    const entry: Watched = { pid, pidfd, promise, resolve, notOurChildLogged: false };
    this.watched.set(pid, entry);
    this.zombieSince.delete(pid);
    this.ensureSafetyTimer();
    // It may have exited before we were watching (its SIGCHLD already handled, or never ours).
    this.poll(entry);
    return promise;
  }

  /** Stops watching everything (pending promises stay pending) and removes the SIGCHLD handler. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    process.off("SIGCHLD", this.onSigchld);
    for (const entry of this.watched.values()) closeQuietly(entry.pidfd);
    this.watched.clear();
    this.zombieSince.clear();
    this.stopSafetyTimer();
    if (this.sweepTimer) clearTimeout(this.sweepTimer);
    this.sweepTimer = undefined;
  }

  private handleSigchld(): void {
    this.scanWatched();
    this.scheduleSweep(SWEEP_BATCH_MS);
  }

  private scanWatched(): void {
    for (const entry of this.watched.values()) this.poll(entry);
  }

  /** One non-blocking look at a watched pid; settles it when it has exited. */
  private poll(entry: Watched): void {
    let status: WaitStatus | null;
    try {
      status = waitPidfd(entry.pidfd);
    } catch (err) {
      if (!isErrno(err, "ECHILD")) {
        this.log.error(`Waiting for child ${entry.pid}: ${(err as Error).message}`);
      } else if (this.stillExists(entry)) {
        if (!entry.notOurChildLogged) this.log.debug(`Child ${entry.pid} is not re-parented to us yet`);
        entry.notOurChildLogged = true;
        return;
      } else {
        this.log.warn(`Child ${entry.pid} was reaped elsewhere; its exit status is unknown`);
      }
      this.settle(entry, { code: -1 });
      return;
    }
    if (status !== null) this.settle(entry, exitInfo(status));
  }

  /**
   * ECHILD from waitid means the process is not (or no longer) our child. Either its parent, the
   * runtime, is still alive, and it will be re-parented to us when the runtime exits; or somebody
   * else reaped it. A signal 0 through the pidfd tells the two apart: it succeeds for running and
   * zombie processes and fails with ESRCH once the process is reaped.
   */
  private stillExists(entry: Watched): boolean {
    try {
      pidfdSendSignal(entry.pidfd, 0);
      return true;
    } catch {
      return false;
    }
  }

  private settle(entry: Watched, exit: ExitInfo): void {
    this.watched.delete(entry.pid);
    closeQuietly(entry.pidfd);
    if (this.watched.size === 0) this.stopSafetyTimer();
    this.log.debug(`Child ${entry.pid} exited with ${describeExit(exit)}`);
    entry.resolve(exit);
  }

  private ensureSafetyTimer(): void {
    if (this.safetyTimer) return;
    this.safetyTimer = setInterval(() => {
      this.scanWatched();
      this.scheduleSweep(SWEEP_BATCH_MS);
    }, SAFETY_SCAN_INTERVAL_MS);
    this.safetyTimer.unref();
  }

  private stopSafetyTimer(): void {
    if (this.safetyTimer) clearInterval(this.safetyTimer);
    this.safetyTimer = undefined;
  }

  /** Sweeps in `delayMs` at the latest; an earlier sweep already scheduled serves. */
  private scheduleSweep(delayMs: number): void {
    if (this.closed) return;
    const due = performance.now() + delayMs;
    if (this.sweepTimer && this.sweepDue <= due) return;
    if (this.sweepTimer) clearTimeout(this.sweepTimer);
    this.sweepDue = due;
    this.sweepTimer = setTimeout(() => {
      this.sweepTimer = undefined;
      this.sweepDue = Infinity;
      if (!this.closed) this.sweepUnwatchedZombies();
    }, delayMs);
    this.sweepTimer.unref();
  }

  /** Reaps zombie children that nobody watches and that have been zombies for the grace period. */
  private sweepUnwatchedZombies(): void {
    const now = performance.now();
    const seen = new Set<number>();
    for (const pid of ownChildren()) {
      if (spawnedPids.has(pid) || this.watched.has(pid) || processState(pid) !== "Z") continue;
      seen.add(pid);
      const since = this.zombieSince.get(pid);
      if (since === undefined) this.zombieSince.set(pid, now);
      else if (now - since >= UNWATCHED_ZOMBIE_GRACE_MS) this.reapUnwatched(pid);
    }
    for (const pid of this.zombieSince.keys()) if (!seen.has(pid)) this.zombieSince.delete(pid);
    // While zombies wait out their grace period, come back for them even if no SIGCHLD arrives.
    if (this.zombieSince.size > 0) this.scheduleSweep(UNWATCHED_ZOMBIE_GRACE_MS);
  }

  private remember(pid: number, exit: ExitInfo): void {
    const now = performance.now();
    for (const [old, entry] of this.swept) if (now - entry.at > SWEPT_STATUS_TTL_MS) this.swept.delete(old);
    this.swept.set(pid, { exit, at: now });
  }

  private takeSwept(pid: number): ExitInfo | undefined {
    const entry = this.swept.get(pid);
    if (!entry) return undefined;
    this.swept.delete(pid);
    return performance.now() - entry.at <= SWEPT_STATUS_TTL_MS ? entry.exit : undefined;
  }

  private reapUnwatched(pid: number): void {
    this.zombieSince.delete(pid);
    let pidfd = -1;
    try {
      pidfd = pidfdOpen(pid);
      const status = waitPidfd(pidfd);
      if (status) {
        const exit = exitInfo(status);
        this.remember(pid, exit);
        this.log.debug(`Reaped unwatched child ${pid} (${describeExit(exit)})`);
      }
    } catch (err) {
      // Gone already (ESRCH), or reaped by its owner in between (ECHILD): nothing left to do.
      if (!isErrno(err, "ESRCH") && !isErrno(err, "ECHILD")) {
        this.log.warn(`Reaping unwatched child ${pid}: ${(err as Error).message}`);
      }
    } finally {
      closeQuietly(pidfd);
    }
  }
}

function exitInfo(status: WaitStatus): ExitInfo {
  return status.exited ? { code: status.code } : { code: 128 + status.signal, signal: status.signal };
}

function describeExit(exit: ExitInfo): string {
  return exit.signal === undefined ? `code ${exit.code}` : `signal ${exit.signal} (code ${exit.code})`;
}

/**
 * Our direct children. Each thread has its own list (the thread that forked owns the child, and
 * Bun runs many threads), so take the union over /proc/self/task/*\/children. Kernels built without
 * CONFIG_PROC_CHILDREN lack those files; then scan every process for its parent pid.
 */
function ownChildren(): Set<number> {
  const children = new Set<number>();
  let tids: string[];
  try {
    tids = readdirSync("/proc/self/task");
  } catch {
    return children;
  }
  let sawChildrenFile = false;
  for (const tid of tids) {
    let text: string;
    try {
      text = readFileSync(`/proc/self/task/${tid}/children`, "utf8");
    } catch {
      continue; // the thread ended while we listed, or no such file on this kernel
    }
    sawChildrenFile = true;
    for (const word of text.split(" ")) {
      const pid = Number(word);
      if (word !== "" && Number.isInteger(pid) && pid > 0) children.add(pid);
    }
  }
  return sawChildrenFile ? children : childrenByParentScan();
}

function childrenByParentScan(): Set<number> {
  const children = new Set<number>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    if (statFields(Number(entry))?.[1] === String(process.pid)) children.add(Number(entry));
  }
  return children;
}

/** The fields of /proc/<pid>/stat after the command name ([0] state, [1] parent pid); undefined
 * when the process is gone. */
function statFields(pid: number): string[] | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // The command name is in parentheses and may contain spaces or ')': split after the last ')'.
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
}

/** The state letter (R, S, Z, ...), undefined when the process is gone. */
function processState(pid: number): string | undefined {
  return statFields(pid)?.[0];
}
