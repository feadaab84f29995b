// Process control: subreaper, process name, pidfds and non-blocking reaping, signals.
//
// Never wait for a process that Bun.spawn started: Bun reaps its children by pid, and if we reap
// first its own wait fails with ECHILD, `proc.exited` rejects and the process can die. Reap only
// re-parented grandchildren, each through its own pidfd (or peek at Bun's children with
// `waitPidfd(fd, { peek: true })`, which leaves them for Bun).
import { constants as osConstants } from "node:os";
import { ptr } from "bun:ffi";
import { SYS, cString, lastErrno, libc } from "./libc.ts";
import { ERRNO, SysError, sysError } from "./errors.ts";

const PR_SET_NAME = 15;
const PR_GET_NAME = 16;
const PR_SET_CHILD_SUBREAPER = 36;
const PR_GET_CHILD_SUBREAPER = 37;

const P_PIDFD = 3;
const WNOHANG = 1;
const WEXITED = 4;
const WNOWAIT = 0x01000000;

const CLD_EXITED = 1;
const CLD_KILLED = 2;
const CLD_DUMPED = 3;

export type WaitStatus =
  | { pid: number; exited: true; code: number }
  | { pid: number; exited: false; signal: number };

/** Makes this process a child subreaper: orphaned descendants are re-parented to us, not to init.
 * Bun never reaps them, so whoever calls this must reap them (pidfdOpen + waitPidfd). */
export function subreaper(on = true): void {
  if (libc.prctl(PR_SET_CHILD_SUBREAPER, on ? 1 : 0, 0, 0, 0) < 0) {
    throw sysError("prctl", "PR_SET_CHILD_SUBREAPER");
  }
}

const intOut = new Int32Array(1);

export function isSubreaper(): boolean {
  intOut[0] = 0;
  if (libc.prctl(PR_GET_CHILD_SUBREAPER, ptr(intOut), 0, 0, 0) < 0) {
    throw sysError("prctl", "PR_GET_CHILD_SUBREAPER");
  }
  return intOut[0] !== 0;
}

/**
 * Sets the name shown in /proc/<pid>/comm, ps and journald's `_COMM` (at most 15 bytes; longer
 * names are cut by the kernel). PR_SET_NAME names the calling thread; called from the main JS
 * thread that is the thread-group leader, whose name is the process name.
 */
export function setProcessName(name: string): void {
  const bytes = cString(name);
  if (libc.prctl(PR_SET_NAME, ptr(bytes), 0, 0, 0) < 0) throw sysError("prctl", "PR_SET_NAME");
}

const nameOut = new Uint8Array(16);

/** The calling thread's name (PR_GET_NAME). */
export function getProcessName(): string {
  nameOut.fill(0);
  if (libc.prctl(PR_GET_NAME, ptr(nameOut), 0, 0, 0) < 0) throw sysError("prctl", "PR_GET_NAME");
  const end = nameOut.indexOf(0);
  return new TextDecoder().decode(nameOut.subarray(0, end < 0 ? nameOut.length : end));
}

/** A pidfd for `pid` (always close-on-exec). Holding it pins the pid: after the process exits, the
 * number cannot be reused until it is reaped. */
export function pidfdOpen(pid: number): number {
  const fd = libc.syscall(SYS.pidfd_open, pid, 0, 0, 0, 0, 0) as number;
  if (fd < 0) throw sysError("pidfd_open", `pid ${pid}`);
  return fd;
}

/** Sends `signal` through a pidfd, immune to pid reuse. */
export function pidfdSendSignal(pidfd: number, signal: number | string): void {
  const sig = signalNumber(signal);
  if ((libc.syscall(SYS.pidfd_send_signal, pidfd, sig, 0, 0, 0, 0) as number) < 0) {
    throw sysError("pidfd_send_signal", `pidfd ${pidfd} signal ${sig}`);
  }
}

// siginfo_t is 128 bytes; the fields we need sit at fixed offsets on 64-bit Linux.
const siginfo = new Uint8Array(128);
const siginfoView = new DataView(siginfo.buffer);
const SI_CODE = 8;
const SI_PID = 16;
const SI_STATUS = 24;

/**
 * Non-blocking waitid(P_PIDFD, pidfd, WEXITED|WNOHANG). Returns null while the process runs,
 * otherwise its status; without `peek` this reaps it (the zombie goes away). With `peek: true`
 * (WNOWAIT) the status is read but the process stays waitable, which is the only safe way to look
 * at a Bun.spawn child. Throws SysError (ECHILD when it was already reaped, or is not our child).
 */
export function waitPidfd(pidfd: number, options?: { peek?: boolean }): WaitStatus | null {
  const flags = WEXITED | WNOHANG | (options?.peek ? WNOWAIT : 0);
  siginfo.fill(0); // WNOHANG with nothing to report leaves si_pid untouched
  while (libc.waitid(P_PIDFD, pidfd, siginfo, flags) < 0) {
    const errno = lastErrno();
    if (errno !== ERRNO.EINTR) throw new SysError(errno, "waitid", `pidfd ${pidfd}`);
  }
  const pid = siginfoView.getInt32(SI_PID, true);
  if (pid === 0) return null;
  const code = siginfoView.getInt32(SI_CODE, true);
  const status = siginfoView.getInt32(SI_STATUS, true);
  if (code === CLD_EXITED) return { pid, exited: true, code: status };
  if (code === CLD_KILLED || code === CLD_DUMPED) return { pid, exited: false, signal: status };
  throw new Error(`waitid pidfd ${pidfd}: unexpected si_code ${code} for pid ${pid}`);
}

/** A signal number from a number or a name like "SIGTERM". */
export function signalNumber(signal: number | string): number {
  if (typeof signal === "number") return signal;
  const n = (osConstants.signals as Record<string, number | undefined>)[signal];
  if (n === undefined) throw new TypeError(`unknown signal ${signal}`);
  return n;
}

export function kill(pid: number, signal: number | string): void {
  const sig = signalNumber(signal);
  if (libc.kill(pid, sig) < 0) throw sysError("kill", `pid ${pid} signal ${sig}`);
}

/** Signals every process in group `pgid`. Refuses pgid <= 1: kill(0) would hit our own group and
 * kill(-1) every process we may signal. */
export function killProcessGroup(pgid: number, signal: number | string): void {
  if (!(Number.isInteger(pgid) && pgid > 1)) throw new RangeError(`killProcessGroup: refusing pgid ${pgid}`);
  const sig = signalNumber(signal);
  if (libc.kill(-pgid, sig) < 0) throw sysError("kill", `process group ${pgid} signal ${sig}`);
}

/** The process group of `pid`, or -1 when no such process exists (ESRCH). */
export function getpgid(pid: number): number {
  const pgid = libc.getpgid(pid);
  if (pgid >= 0) return pgid;
  const errno = lastErrno();
  if (errno === ERRNO.ESRCH) return -1;
  throw new SysError(errno, "getpgid", `pid ${pid}`);
}

export function getpid(): number {
  return libc.getpid();
}

/** Sets the file mode creation mask; returns the previous one. */
export function umask(mask: number): number {
  return libc.umask(mask & 0o777);
}

/** Starts a new session (and process group) led by this process; returns its id. EPERM when the
 * process already leads a process group. */
export function setsid(): number {
  const sid = libc.setsid();
  if (sid < 0) throw sysError("setsid");
  return sid;
}
