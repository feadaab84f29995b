// Readiness notifications for raw fds inside Bun's event loop.
//
// WHY THIS DESIGN: Bun has no API to watch an arbitrary fd (nothing like libuv's uv_poll), and a
// blocking poll/epoll_wait through FFI would freeze the event loop. What Bun does deliver is
// signals, via process.on(). Signal-driven I/O gives us the wake-up: a watched fd is put in
// O_ASYNC mode with F_SETOWN = our pid, so the kernel sends SIGIO whenever it becomes readable or
// writable (measured ~0.2 ms from a pipe write to the JS handler). SIGIO does not say which fd
// (and several coalesce into one), so every wake-up runs a "pump": one poll(2) with a zero timeout
// over all watched fds, then the callbacks of the ready ones.
//
// Semantics are level-triggered: after a pump that dispatched anything, another pump runs on the
// next setImmediate, so a callback that left data behind is called again, and one that drained
// its fd ends the pumping (the next poll comes back empty). Hangup and error are level-triggered
// too: on hangup, read what is left and close() the watch (or clear the interest), or the
// callback keeps being called every tick. Write interest should only be on while there is
// something to write, since a socket or pipe with room is always writable.
//
// Limits: O_ASYNC does nothing on regular files, pidfds, eventfds and cgroup files (the kernel
// drops the flag; Watch.signalDriven is false). Those are only seen by the 1 s safety pump (which
// also recovers from a lost signal) or a pump woken by another fd; use a different trigger
// (SIGCHLD for pidfds) where latency matters.
//
// O_ASYNC and O_NONBLOCK belong to the open file description, not the fd number: they also hit
// every dup and every process sharing it. Never watch an fd that a child or the parent also uses
// through the same description (our inherited stdin/stdout, for instance).
//
// Process lifetime: a watch keeps the process alive, like a Node socket, until it is closed or
// unref()'d. The SIGIO listener stays installed forever once set up: SIGIO's default action kills
// the process, and an fd may still have O_ASYNC set (a dup, a watch closed after its fd).
import { ptr } from "bun:ffi";
import { lastErrno, libc } from "./libc.ts";
import { ERRNO, SysError } from "./errors.ts";
import { F, O, getStatusFlags, setOwner, updateStatusFlags } from "./fd.ts";

const POLLIN = 0x1;
const POLLPRI = 0x2;
const POLLOUT = 0x4;
const POLLERR = 0x8;
const POLLHUP = 0x10;
const POLLNVAL = 0x20;
const POLLRDHUP = 0x2000;

const SAFETY_PUMP_MS = 1000;

export type Interest = { read?: boolean; write?: boolean };
export type Readiness = { readable: boolean; writable: boolean; hangup: boolean; error: boolean };
export type ReadyCallback = (ev: Readiness) => void;

export interface Watch {
  readonly fd: number;
  /** False once close()d, or after the fd was found closed (POLLNVAL). */
  readonly active: boolean;
  /** False when the kernel ignored O_ASYNC for this kind of fd (eventfd, pidfd, regular file):
   * then only the 1 s safety pump and other watches' wake-ups notice readiness. */
  readonly signalDriven: boolean;
  /** Changes what to wait for; `{}` pauses the watch without releasing it. */
  setInterest(interest: Interest): void;
  /** Stops watching (clears O_ASYNC; O_NONBLOCK stays). Does NOT close the fd. Idempotent. */
  close(): void;
  /** Lets the process exit while this watch is open. */
  unref(): void;
  /** Keeps the process alive while this watch is open (the default). */
  ref(): void;
}

function pollEvents(interest: Interest): number {
  return (interest.read ? POLLIN | POLLPRI | POLLRDHUP : 0) | (interest.write ? POLLOUT : 0);
}

class FdWatch implements Watch {
  active = true;
  events: number;
  referenced = true;

  constructor(
    readonly fd: number,
    interest: Interest,
    readonly onReady: ReadyCallback,
    readonly signalDriven: boolean,
  ) {
    this.events = pollEvents(interest);
  }

  setInterest(interest: Interest): void {
    if (!this.active) return;
    this.events = pollEvents(interest);
    schedulePump();
  }

  close(): void {
    if (!this.active) return;
    forget(this);
    clearAsync(this.fd);
  }

  unref(): void {
    if (this.active && this.referenced) {
      this.referenced = false;
      referencedCount--;
      updateTimers();
    }
  }

  ref(): void {
    if (this.active && !this.referenced) {
      this.referenced = true;
      referencedCount++;
      updateTimers();
    }
  }
}

const watches = new Map<number, FdWatch>();
let referencedCount = 0;

/** Starts watching `fd`. It is switched to O_NONBLOCK|O_ASYNC (flags shared with every dup of
 * the fd). The first callback comes from a pump scheduled right after this returns, never from
 * inside watch(). One watch per fd: close the old one before watching the number again. */
export function watch(fd: number, interest: Interest, onReady: ReadyCallback): Watch {
  if (!(Number.isInteger(fd) && fd >= 0)) throw new RangeError(`poller: invalid fd ${fd}`);
  if (watches.has(fd)) throw new Error(`poller: fd ${fd} is already watched (close the previous Watch first)`);
  installSigioHandler(); // before O_ASYNC: an unhandled SIGIO terminates the process
  setOwner(fd, process.pid);
  updateStatusFlags(fd, O.NONBLOCK | O.ASYNC, true);
  // Files without a fasync hook drop the flag silently instead of failing.
  const signalDriven = (getStatusFlags(fd) & O.ASYNC) !== 0;
  const w = new FdWatch(fd, interest, onReady, signalDriven);
  watches.set(fd, w);
  referencedCount++;
  updateTimers();
  schedulePump();
  return w;
}

/** How many fds are being watched (for tests and diagnostics). */
export function watchedCount(): number {
  return watches.size;
}

function forget(w: FdWatch): void {
  w.active = false;
  if (watches.get(w.fd) === w) watches.delete(w.fd);
  if (w.referenced) {
    w.referenced = false;
    referencedCount--;
  }
  updateTimers();
}

/** Best effort: the fd may already be closed (or even reused, if the caller closed it first). */
function clearAsync(fd: number): void {
  const flags = libc.fcntl(fd, F.GETFL, 0);
  if (flags >= 0 && flags & O.ASYNC) libc.fcntl(fd, F.SETFL, flags & ~O.ASYNC);
}

// ---- wake-ups --------------------------------------------------------------------------------

let sigioInstalled = false;

function installSigioHandler(): void {
  if (sigioInstalled) return;
  // Dispatch on the next turn, not inside the signal callback: a Bun.spawn made from a signal
  // callback's promise chain never has its exit noticed by Bun (measured with Bun 1.4.4: the child
  // stays a zombie and `exited` never settles), and callbacks here may well lead to a spawn.
  process.on("SIGIO", schedulePump);
  sigioInstalled = true;
}

let safetyTimer: ReturnType<typeof setInterval> | null = null;
let keepAliveTimer: ReturnType<typeof setInterval> | null = null;

function updateTimers(): void {
  if (watches.size > 0 && safetyTimer === null) {
    safetyTimer = setInterval(pump, SAFETY_PUMP_MS);
    safetyTimer.unref();
  } else if (watches.size === 0 && safetyTimer !== null) {
    clearInterval(safetyTimer);
    safetyTimer = null;
  }
  if (referencedCount > 0 && keepAliveTimer === null) {
    keepAliveTimer = setInterval(() => {}, 0x3fffffff);
  } else if (referencedCount === 0 && keepAliveTimer !== null) {
    clearInterval(keepAliveTimer);
    keepAliveTimer = null;
  }
}

let pumpScheduled = false;

function schedulePump(): void {
  if (pumpScheduled) return;
  pumpScheduled = true;
  setImmediate(() => {
    pumpScheduled = false;
    pump();
  });
}

// ---- the pump --------------------------------------------------------------------------------

// struct pollfd { int fd; short events; short revents; } = 8 bytes, reused across pumps.
let pollfds = new ArrayBuffer(8 * 64);
let pollfdInts = new Int32Array(pollfds);
let pollfdShorts = new Int16Array(pollfds);
const polled: (FdWatch | undefined)[] = [];
let pumping = false;

function ensurePollCapacity(count: number): void {
  if (pollfdInts.length >= 2 * count) return;
  pollfds = new ArrayBuffer(8 * Math.max(count, 2 * (pollfdInts.length / 2)));
  pollfdInts = new Int32Array(pollfds);
  pollfdShorts = new Int16Array(pollfds);
}

function pump(): void {
  // JS cannot re-enter here on its own (signals arrive as event-loop tasks), but a callback might
  // drive the loop; never poll with a half-dispatched array.
  if (pumping) {
    schedulePump();
    return;
  }
  pumping = true;
  try {
    if (pollAndDispatch() > 0) schedulePump();
  } finally {
    pumping = false;
  }
}

/** One poll(2) round over every watch with interest; returns how many callbacks ran. */
function pollAndDispatch(): number {
  ensurePollCapacity(watches.size);
  let count = 0;
  for (const w of watches.values()) {
    if (w.events === 0) continue;
    pollfdInts[2 * count] = w.fd;
    pollfdShorts[4 * count + 2] = w.events;
    pollfdShorts[4 * count + 3] = 0;
    polled[count++] = w;
  }
  if (count === 0) return 0;
  try {
    const ready = libc.poll(ptr(pollfdInts), count, 0);
    if (ready < 0) return pollFailed(lastErrno());
    return ready === 0 ? 0 : dispatch(count);
  } finally {
    polled.fill(undefined, 0, count);
  }
}

function pollFailed(errno: number): number {
  if (errno === ERRNO.EINTR || errno === ERRNO.EAGAIN || errno === ERRNO.ENOMEM) return 1; // retry next tick
  console.error(`poller: ${new SysError(errno, "poll").message}`);
  return 0;
}

function dispatch(count: number): number {
  let dispatched = 0;
  for (let i = 0; i < count; i++) {
    const revents = pollfdShorts[4 * i + 3]!;
    const w = polled[i]!;
    // An earlier callback of this round may have closed or paused this watch.
    if (revents === 0 || !w.active || w.events === 0) continue;
    if (revents & POLLNVAL) forget(w); // the fd was closed under us: nothing left to restore
    const ev: Readiness = {
      readable: (revents & (POLLIN | POLLPRI)) !== 0,
      writable: (revents & POLLOUT) !== 0,
      hangup: (revents & (POLLHUP | POLLRDHUP)) !== 0,
      error: (revents & (POLLERR | POLLNVAL)) !== 0,
    };
    dispatched++;
    try {
      w.onReady(ev);
    } catch (e) {
      console.error(`poller: callback for fd ${w.fd} threw:`, e);
    }
  }
  return dispatched;
}
