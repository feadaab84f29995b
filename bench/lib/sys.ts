// Bench-only system calls: inotify, and a blocking poll(2) that timestamps several events at once.
//
// The bench is a measuring driver, not a server: blocking its event loop inside poll(2) is what we
// want while a phase runs, because the wake-up is then timed to the microsecond instead of to the
// next event-loop turn. Nothing that needs the loop (an RPC in flight) may be pending meanwhile.
import { lastErrno, libc } from "../../ffi/libc.ts";
import { IN, inotifyAddWatch, inotifyInit } from "../../ffi/inotify.ts";
import { closeQuietly, readFd } from "../../ffi/fd.ts";
import { pidfdOpen } from "../../ffi/process.ts";
import { existsSync } from "node:fs";
import { join } from "node:path";

const POLLIN = 0x1;
const EINTR = 4;

/** An inotify watch on one directory; `appeared(name)` tells whether DIR/name exists now. */
export class DirWatch {
  readonly fd: number;
  private readonly scratch = new Uint8Array(64 * 1024);

  constructor(readonly dir: string) {
    this.fd = inotifyInit();
    try {
      inotifyAddWatch(this.fd, dir, IN.CLOSE_WRITE | IN.MOVED_TO | IN.CREATE);
    } catch (err) {
      closeQuietly(this.fd);
      throw err;
    }
  }

  /** Drops queued events (call after each readiness, then check the file). */
  drain(): void {
    while (readFd(this.fd, this.scratch) > 0);
  }

  has(name: string): boolean {
    return existsSync(join(this.dir, name));
  }

  close(): void {
    closeQuietly(this.fd);
  }
}

/**
 * Something to time: an fd that becomes readable, (for inotify) a check that it really happened,
 * and an optional action to run right when it fired (e.g. a /proc reading before a process exits).
 */
export type EventSource = { name: string; fd: number; confirm?: () => boolean; onFire?: () => void };

const MAX_SOURCES = 8;
const pollfds = new Int32Array(2 * MAX_SOURCES);
const pollShorts = new Int16Array(pollfds.buffer);

/**
 * Blocks in poll(2) until every source fired or `timeoutMs` passed; returns performance.now() of
 * each source's first (confirmed) readiness. Sources that never fired are missing from the result.
 * Resolution: the poll wake-up, a few microseconds.
 */
export function timeEvents(sources: EventSource[], timeoutMs: number): Record<string, number> {
  if (sources.length > MAX_SOURCES) throw new RangeError("timeEvents: too many sources");
  const fired: Record<string, number> = {};
  const pending = new Set(sources);
  for (const s of sources) if (s.confirm?.()) confirmFired(s, fired, pending); // happened already
  const deadline = performance.now() + timeoutMs;
  while (pending.size > 0) {
    const left = Math.ceil(deadline - performance.now());
    if (left <= 0) break;
    const waiting = [...pending];
    waiting.forEach((s, i) => {
      pollfds[2 * i] = s.fd;
      pollShorts[4 * i + 2] = POLLIN;
      pollShorts[4 * i + 3] = 0;
    });
    const n = libc.poll(pollfds, waiting.length, left);
    const at = performance.now();
    if (n < 0 && lastErrno() !== EINTR) throw new Error(`poll: errno ${lastErrno()}`);
    waiting.forEach((s, i) => {
      if (pollShorts[4 * i + 3] === 0) return;
      if (s.confirm === undefined || s.confirm()) confirmFired(s, fired, pending, at);
    });
  }
  return fired;
}

function confirmFired(s: EventSource, fired: Record<string, number>, pending: Set<EventSource>, at = performance.now()): void {
  fired[s.name] = at;
  pending.delete(s);
  s.onFire?.();
}

/** An exit-file source for `timeEvents`. */
export function exitFileSource(watch: DirWatch, name: string): EventSource {
  return {
    name: "exitFile",
    fd: watch.fd,
    confirm: () => {
      watch.drain();
      return watch.has(name);
    },
  };
}

/** A pidfd, or -1 when the process is already gone (reaped). */
export function tryPidfd(pid: number): number {
  try {
    return pidfdOpen(pid);
  } catch {
    return -1;
  }
}

/** Blocks until `fd` is readable or the timeout passed; true when readable. */
export function waitReadable(fd: number, timeoutMs: number): boolean {
  return timeEvents([{ name: "fd", fd }], timeoutMs).fd !== undefined;
}
