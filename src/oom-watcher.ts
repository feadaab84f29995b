// Did the kernel's OOM killer strike a container's cgroup while the container ran?
//
// Started right after a container (or exec) process is registered; asked once, after the process
// exited and before its exit files are written. The verdict is taken at exit time only, never
// pushed: the OOM killer records the event before the victim can die (it signals the cgroup, then
// sends SIGKILL), so by the time we have seen the exit, the evidence is already there. This spares
// a readiness watch per container.
//
// cgroup v1: an eventfd registered for memory.oom_control through cgroup.event_control; the
// kernel adds to it on every OOM in the cgroup (or below). The `oom_kill` counter of
// memory.oom_control (kernel >= 4.13), compared with its value at start, is a second signal that
// also works when the registration failed.
// cgroup v2: the `oom_kill` counter of memory.events, compared with its value at start. Upstream
// also counts any non-zero counter of the parent cgroup, which reports OOMs from before the
// container even started (its quirk Q15); we only ever compare with a baseline taken at start.
import { readFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { EFD, O, closeQuietly, eventfd, openFd, readEventfd, writeAll } from "../ffi/fd.ts";
import type { Logger } from "./logger.ts";

/** Where /proc and the cgroup filesystems are mounted; tests point these at fake trees. */
export type OomWatcherRoots = { proc: string; cgroup: string };

const SYSTEM_ROOTS: OomWatcherRoots = { proc: "/proc", cgroup: "/sys/fs/cgroup" };

/** One way of telling whether an OOM kill happened since start. */
interface OomEvidence {
  occurred(): boolean;
  close(): void;
}

const NO_EVIDENCE: OomEvidence = { occurred: () => false, close: () => {} };

export class OomWatcher {
  private evidence: OomEvidence;
  private verdict = false;

  private constructor(evidence: OomEvidence) {
    this.evidence = evidence;
  }

  /** Never throws: when the cgroup cannot be found or watched, the verdict is simply false. */
  static start(pid: number, log: Logger, roots: OomWatcherRoots = SYSTEM_ROOTS): OomWatcher {
    try {
      return new OomWatcher(watchCgroupOf(pid, log, roots));
    } catch (err) {
      log.warn(`Not watching pid ${pid} for OOM: ${(err as Error).message}`);
      return new OomWatcher(NO_EVIDENCE);
    }
  }

  /** True when an OOM kill happened in the process's cgroup since start(). Once true, stays true
   * (the eventfd is consumed by the first look). */
  oomKilled(): boolean {
    if (!this.verdict) this.verdict = this.evidence.occurred();
    return this.verdict;
  }

  close(): void {
    this.evidence.close();
    this.evidence = NO_EVIDENCE;
  }
}

type CgroupEntry = { hierarchy: string; controllers: string[]; path: string };

/** /proc/<pid>/cgroup lines: `hierarchy-id:controller,list:/path` (the path may contain ':'). */
function parseProcCgroup(text: string): CgroupEntry[] {
  const entries: CgroupEntry[] = [];
  for (const line of text.split("\n")) {
    const first = line.indexOf(":");
    const second = line.indexOf(":", first + 1);
    if (first < 0 || second < 0) continue;
    const controllers = line.slice(first + 1, second);
    entries.push({
      hierarchy: line.slice(0, first),
      controllers: controllers === "" ? [] : controllers.split(","),
      path: line.slice(second + 1),
    });
  }
  return entries;
}

function readProcCgroup(pid: number, roots: OomWatcherRoots): CgroupEntry[] | undefined {
  try {
    return parseProcCgroup(readFileSync(join(roots.proc, String(pid), "cgroup"), "utf8"));
  } catch {
    return undefined;
  }
}

/** The mount of the unified (v2) hierarchy: the cgroup root itself in unified mode, `unified/`
 * below it in hybrid mode; undefined when there is none. */
function unifiedMount(roots: OomWatcherRoots): string | undefined {
  if (existsSync(join(roots.cgroup, "cgroup.controllers"))) return roots.cgroup;
  const hybrid = join(roots.cgroup, "unified");
  return existsSync(join(hybrid, "cgroup.controllers")) ? hybrid : undefined;
}

function watchCgroupOf(pid: number, log: Logger, roots: OomWatcherRoots): OomEvidence {
  const entries = readProcCgroup(pid, roots);
  if (entries === undefined) {
    log.debug(`Not watching pid ${pid} for OOM: it is already gone`);
    return NO_EVIDENCE;
  }
  const unified = unifiedMount(roots);
  const v1Memory =
    unified === roots.cgroup
      ? undefined
      : (entries.find((e) => e.controllers.includes("memory")) ??
        entries.find((e) => e.controllers.length === 0 && e.hierarchy !== "0"));
  if (v1Memory) return watchV1(join(roots.cgroup, "memory", v1Memory.path), log);
  const v2 = entries.find((e) => e.hierarchy === "0" && e.controllers.length === 0);
  if (v2 && unified) return watchV2(join(unified, v2.path), log);
  log.debug(`Not watching pid ${pid} for OOM: no memory cgroup in /proc/${pid}/cgroup`);
  return NO_EVIDENCE;
}

/** The value of the `<key> <n>` line of a flat-keyed cgroup file; undefined when the file or the
 * key is missing. */
function readCounter(path: string, key: string): number | undefined {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
  for (const line of text.split("\n")) {
    const space = line.indexOf(" ");
    if (space > 0 && line.slice(0, space) === key) {
      const value = Number(line.slice(space + 1));
      return Number.isFinite(value) ? value : undefined;
    }
  }
  return undefined;
}

/** Increased since the baseline? False when either value is unknown. */
function increased(baseline: number | undefined, now: number | undefined): boolean {
  return baseline !== undefined && now !== undefined && now > baseline;
}

function watchV1(cgroupDir: string, log: Logger): OomEvidence {
  const oomControl = join(cgroupDir, "memory.oom_control");
  const baseline = readCounter(oomControl, "oom_kill");
  let notifier = registerOomEventfd(cgroupDir, log);
  if (notifier < 0 && baseline === undefined) {
    log.warn(`Not watching cgroup ${cgroupDir} for OOM: neither oom events nor the oom_kill counter are available`);
    return NO_EVIDENCE;
  }
  log.debug(`Watching cgroup ${cgroupDir} for OOM (cgroup v1)`);
  return {
    occurred(): boolean {
      if (notifier >= 0 && (readEventfd(notifier) ?? 0) > 0) return true;
      return increased(baseline, readCounter(oomControl, "oom_kill"));
    },
    close(): void {
      closeQuietly(notifier);
      notifier = -1; // closing the eventfd also drops the kernel's registration
    },
  };
}

/**
 * An eventfd the kernel signals on every OOM in the cgroup (cgroup v1 memory.oom_control
 * notification): write "<eventfd> <memory.oom_control fd>" to cgroup.event_control. The
 * registration holds its own references, so only the eventfd stays open. Returns -1 (logged) on
 * failure.
 */
function registerOomEventfd(cgroupDir: string, log: Logger): number {
  const oomControl = join(cgroupDir, "memory.oom_control");
  const eventControl = join(cgroupDir, "cgroup.event_control");
  let oomControlFd = -1;
  let eventControlFd = -1;
  let notifier = -1;
  try {
    oomControlFd = openFd(oomControl, O.RDONLY);
    notifier = eventfd(0, EFD.NONBLOCK);
    eventControlFd = openFd(eventControl, O.WRONLY);
    try {
      writeAll(eventControlFd, new TextEncoder().encode(`${notifier} ${oomControlFd}`));
    } catch (err) {
      throw new Error(`write '${eventControl}': ${(err as Error).message}`);
    }
    const registered = notifier;
    notifier = -1;
    return registered;
  } catch (err) {
    log.warn(`Registering for OOM events of ${cgroupDir}: ${(err as Error).message}`);
    return -1;
  } finally {
    closeQuietly(notifier);
    closeQuietly(eventControlFd);
    closeQuietly(oomControlFd);
  }
}

/**
 * cgroup v2: `oom_kill` of memory.events counts every OOM kill of a process in this cgroup or
 * below, charged to the victim's own cgroup and propagated upwards. The process's own cgroup
 * therefore sees a kill even when the limit sits on the parent (crun puts the container in a
 * sub-cgroup of the one carrying the limits). The parent is consulted only when the own file is
 * gone at exit: a parent may hold sibling containers, whose OOMs are not ours.
 */
function watchV2(cgroupDir: string, log: Logger): OomEvidence {
  const events = join(cgroupDir, "memory.events");
  const parentEvents = join(dirname(cgroupDir), "memory.events");
  const baseline = readCounter(events, "oom_kill");
  const parentBaseline = readCounter(parentEvents, "oom_kill");
  if (baseline === undefined && parentBaseline === undefined) {
    log.debug(`Not watching cgroup ${cgroupDir} for OOM: no memory.events (memory controller off?)`);
    return NO_EVIDENCE;
  }
  log.debug(`Watching cgroup ${cgroupDir} for OOM (cgroup v2)`);
  return {
    occurred(): boolean {
      const now = readCounter(events, "oom_kill");
      if (baseline !== undefined && now !== undefined) return now > baseline;
      return increased(parentBaseline, readCounter(parentEvents, "oom_kill"));
    },
    close(): void {},
  };
}
