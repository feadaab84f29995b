// /proc inspection and polling helpers for the integration suites.
// Everything here reads the live system; nothing is cached, so callers can poll.

import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Read a file as UTF-8; the error names the path (the bare ENOENT from fs does not help in test output). */
export function readText(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw new Error(`reading ${path}: ${(err as Error).message}`);
  }
}

/** Like readText, but undefined when the file (or the process behind a /proc path) is gone. */
export function readIfExists(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

/**
 * Fields of /proc/<pid>/stat after the command name. The name is in parentheses and may itself
 * contain spaces and ')', so split after the LAST ')'. Index 0 is the state, 1 the ppid.
 */
export function statFields(pid: number): string[] | undefined {
  const stat = readIfExists(`/proc/${pid}/stat`);
  if (stat === undefined) return undefined;
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
}

/** Single-letter process state (R, S, Z, ...) or undefined when the pid does not exist. */
export function procState(pid: number): string | undefined {
  return statFields(pid)?.[0];
}

/** True while /proc/<pid> exists (zombies included: they are not reaped yet). */
export function pidExists(pid: number): boolean {
  return existsSync(`/proc/${pid}`);
}

/**
 * Direct children of `pid`. /proc/<pid>/task/<tid>/children lists the children of each thread
 * separately (Bun has many threads, and the thread that spawned owns the child), so take the
 * union. Falls back to a ppid scan of /proc when the kernel lacks CONFIG_PROC_CHILDREN.
 */
export function childrenOf(pid: number): number[] {
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return []; // process gone
  }
  const children = new Set<number>();
  let sawChildrenFile = false;
  for (const tid of tids) {
    const text = readIfExists(`/proc/${pid}/task/${tid}/children`);
    if (text === undefined) continue;
    sawChildrenFile = true;
    for (const word of text.split(" ")) if (word.trim() !== "") children.add(Number(word));
  }
  if (!sawChildrenFile) return childrenByPpidScan(pid);
  return [...children].sort((a, b) => a - b);
}

function childrenByPpidScan(pid: number): number[] {
  const children: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const fields = statFields(Number(entry));
    if (fields !== undefined && Number(fields[1]) === pid) children.push(Number(entry));
  }
  return children.sort((a, b) => a - b);
}

/** Children of `pid` that have exited but were not reaped (state Z). */
export function zombieChildren(pid: number): number[] {
  return childrenOf(pid).filter((child) => procState(child) === "Z");
}

/** Number of open fds of `pid` (entries of /proc/<pid>/fd). */
export function openFdCount(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch (err) {
    throw new Error(`listing fds of pid ${pid}: ${(err as Error).message}`);
  }
}

/** RssAnon of `pid` in KiB (private anonymous memory: the leak-sensitive part of RSS). */
export function rssAnonKiB(pid: number): number {
  const status = readText(`/proc/${pid}/status`);
  const match = /^RssAnon:\s+(\d+)\s+kB$/m.exec(status);
  if (!match) throw new Error(`no RssAnon line in /proc/${pid}/status`);
  return Number(match[1]);
}

const POLL_MS = 10;

/**
 * Poll `predicate` every 10 ms until it returns a truthy value, and return that value.
 * Mind that an empty array is truthy: return `list.length > 0 && list`.
 * Exceptions from the predicate propagate (a broken check should fail loudly, not time out).
 */
export async function waitFor<T>(
  predicate: () => T | Promise<T>,
  timeoutMs: number,
  what: string,
): Promise<Exclude<T, false | null | undefined | 0 | "">> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value as Exclude<T, false | null | undefined | 0 | "">;
    if (performance.now() >= deadline) throw new Error(`timed out waiting for ${what} (${timeoutMs} ms)`);
    await Bun.sleep(POLL_MS);
  }
}

/** Wait until `path` exists and return its contents at that moment. */
export async function waitForFile(path: string, timeoutMs: number): Promise<string> {
  await waitFor(() => existsSync(path), timeoutMs, `file ${path}`);
  return readText(path);
}

/**
 * A container id: `prefix` followed by random hex up to 64 characters in total (64 hex chars
 * when the prefix is empty, which suits crun's journald log and conmon's >12-char rule).
 * The prefix makes leftovers attributable to a suite.
 */
export function uniqueId(prefix = ""): string {
  const hexLen = Math.max(16, 64 - prefix.length);
  return prefix + randomBytes(Math.ceil(hexLen / 2)).toString("hex").slice(0, hexLen);
}

/**
 * Fresh private directory under the system temp dir. Kept short on purpose: socket paths
 * inside it must fit in sun_path (108 bytes).
 */
export function tmpDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `${prefix.replace(/[^\w.-]/g, "_")}-`));
}

/** rm -rf that never throws for a missing path; for finally blocks. */
export function removeDir(path: string): void {
  rmSync(path, { recursive: true, force: true });
}
