// createNamespaces (ordinal 6): pins a pod's namespaces with a pause process (src/pause.ts) and
// answers with the five paths, and removes every pin at server shutdown.
//
// Unlike upstream (quirk Q14: one process-wide pause, whose base path and namespaces later
// requests silently inherit), each pod id gets its own pause process. Repeating a pod id is
// idempotent: the same paths come back and no second process is started (unless the first one
// died, in which case its leftovers are removed and the pod is pinned afresh).

import { readFileSync, rmSync } from "node:fs";
import type { PauseConfig } from "./cli.ts";
import { withContext } from "./errors.ts";
import type { Logger } from "./logger.ts";
import {
  NAMESPACES,
  describeExit,
  namespacePath,
  pausePidPath,
  startPause,
  validatePauseConfig,
  type NamespaceName,
  type StartedPause,
} from "./pause.ts";
import { isErrno } from "../ffi/errors.ts";
import { closeQuietly } from "../ffi/fd.ts";
import { MNT_DETACH, umount } from "../ffi/ns.ts";
import { pidfdOpen, pidfdSendSignal } from "../ffi/process.ts";
import { Conmon_Namespace } from "../schema/conmon.ts";

/** The Go client's default, also used when a raw request leaves basePath empty. */
const DEFAULT_BASE_PATH = "/var/run";
/** SIGTERM grace before SIGKILL when stopping a pause. */
const STOP_TIMEOUT_MS = 5000;
/** Stacked bind mounts on one path (a stale pin from a crashed server) unmounted at most. */
const MAX_STACKED_MOUNTS = 8;

const WIRE: Record<NamespaceName, number> = {
  ipc: Conmon_Namespace.IPC,
  pid: Conmon_Namespace.PID,
  net: Conmon_Namespace.NET,
  user: Conmon_Namespace.USER,
  uts: Conmon_Namespace.UTS,
};
const FROM_WIRE = new Map<number, NamespaceName>(NAMESPACES.map((name) => [WIRE[name], name]));

interface Pause {
  readonly podId: string;
  readonly basePath: string;
  readonly pid: number;
  /** Pins the pid: signals reach this process even if its number were reused. */
  readonly pidfd: number;
  readonly proc: StartedPause["proc"];
  exited: boolean;
  stopping: boolean;
  /** Set by the first stop(); later calls wait for it instead of signalling (and closing the
   * pidfd) twice. */
  stopped?: Promise<void>;
}

function texts(list: { length: number; get(i: number): string }): string[] {
  const out: string[] = [];
  for (let i = 0; i < list.length; i++) out.push(list.get(i));
  return out;
}

/** The pod id becomes a file name under the base path: it must not climb out of it. */
function checkPodId(podId: string): void {
  if (podId.includes("/") || podId.includes("\0") || podId === "." || podId === "..") {
    throw new Error(`invalid pod ID '${podId}': it must be a plain file name`);
  }
}

/** The request as the pause subcommand's configuration. */
function pauseConfig(req: any, podId: string): PauseConfig {
  const config: PauseConfig = {
    basePath: req.basePath || DEFAULT_BASE_PATH,
    podId,
    ipc: false,
    pid: false,
    net: false,
    user: false,
    uts: false,
    uidMappings: texts(req.uidMappings),
    gidMappings: texts(req.gidMappings),
  };
  const namespaces = req.namespaces;
  for (let i = 0; i < namespaces.length; i++) {
    const name = FROM_WIRE.get(namespaces.get(i));
    if (!name) throw new Error(`unknown namespace ${namespaces.get(i)}`);
    config[name] = true;
  }
  return config;
}

/** Always all five, in upstream's order; non-requested ones pin the server's own namespace. */
function fillResponse(response: any, basePath: string, podId: string): void {
  const list = response._initNamespaces(NAMESPACES.length);
  NAMESPACES.forEach((name, i) => {
    const entry = list.get(i);
    entry.type = WIRE[name];
    entry.path = namespacePath(basePath, name, podId);
  });
}

/** Unmounts every bind mount stacked on `path`. EINVAL means "not a mount point": nothing (left)
 * to do, which is also what a user-namespace pin looks like from here (its mounts live in the
 * pause's own mount namespace and vanish with it). */
function unmountAll(path: string, log: Logger): void {
  for (let i = 0; i < MAX_STACKED_MOUNTS; i++) {
    try {
      umount(path);
    } catch (err) {
      if (isErrno(err, "EINVAL") || isErrno(err, "ENOENT")) return;
      if (!isErrno(err, "EBUSY")) {
        log.warn(`Unable to umount ${path}: ${(err as Error).message}`);
        return;
      }
      try {
        umount(path, MNT_DETACH);
      } catch (detachErr) {
        log.warn(`Unable to detach ${path}: ${(detachErr as Error).message}`);
        return;
      }
    }
  }
}

function removeFile(path: string, what: string, log: Logger): void {
  try {
    rmSync(path, { force: true });
  } catch (err) {
    log.warn(`Unable to remove ${what} ${path}: ${(err as Error).message}`);
  }
}

/** Unmounts and removes the five pinned files of a pod. */
function removePins(basePath: string, podId: string, log: Logger): void {
  for (const name of NAMESPACES) {
    const path = namespacePath(basePath, name, podId);
    unmountAll(path, log);
    removeFile(path, "namespace bind path", log);
  }
}

function signal(pause: Pause, sig: "SIGTERM" | "SIGKILL", log: Logger): void {
  try {
    pidfdSendSignal(pause.pidfd, sig);
  } catch (err) {
    if (!isErrno(err, "ESRCH")) log.warn(`Unable to ${sig} pause PID ${pause.pid}: ${(err as Error).message}`);
  }
}

async function exitsWithin(proc: Pause["proc"], ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([proc.exited.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export class Namespaces {
  /** Pod id → its pause (a promise while it starts, so a concurrent repeat waits for it). */
  private readonly pods = new Map<string, Promise<Pause>>();
  private closing = false;

  constructor(
    private readonly log: Logger,
    private readonly start: (config: PauseConfig) => Promise<StartedPause> = startPause,
  ) {}

  /** The createNamespaces RPC. */
  readonly handle = async (params: any, results: any): Promise<void> => {
    const req = params.request;
    const podId: string = req.podId;
    if (podId === "") throw new Error("no pod ID provided");
    checkPodId(podId);
    const pause = await this.acquire(req, podId);
    fillResponse(results._initResponse(), pause.basePath, podId);
  };

  /** The running pause of `podId`, started if there is none (or its process died). */
  private acquire(req: any, podId: string): Promise<Pause> {
    const existing = this.pods.get(podId);
    if (!existing) return this.begin(podId, this.startPod(req, podId));
    // A failed start removed itself from the map, so this rejects only for concurrent waiters.
    return existing.then((pause) => (isGone(pause) ? this.replace(req, podId, existing, pause) : pause));
  }

  /** Re-pins a pod whose pause died: its stale pins are removed before the new pause starts. */
  private replace(req: any, podId: string, existing: Promise<Pause>, dead: Pause): Promise<Pause> {
    // Another request may have noticed first; then share its replacement.
    if (this.pods.get(podId) !== existing) return this.acquire(req, podId);
    this.log.warn(`Pause of pod ${podId} is gone; pinning its namespaces again`);
    return this.begin(podId, this.stop(dead).then(() => this.startPod(req, podId)));
  }

  /** Registers a start in progress (synchronously, so concurrent requests find it). */
  private begin(podId: string, starting: Promise<Pause>): Promise<Pause> {
    this.pods.set(podId, starting);
    starting.catch(() => {
      if (this.pods.get(podId) === starting) this.pods.delete(podId);
    });
    return starting;
  }

  private async startPod(req: any, podId: string): Promise<Pause> {
    if (this.closing) throw new Error("init pause: the server is shutting down");
    let config: PauseConfig;
    try {
      config = pauseConfig(req, podId);
      validatePauseConfig(config);
    } catch (err) {
      throw withContext("init pause", err);
    }
    this.log.debug(`Starting pause for pod ${podId} in ${config.basePath}`);
    let started: StartedPause;
    try {
      started = await this.start(config);
    } catch (err) {
      // The pause may have pinned some namespaces before it failed.
      removePins(config.basePath, podId, this.log);
      removeFile(pausePidPath(config.basePath, podId), "pause PID path", this.log);
      throw withContext("init pause", err);
    }
    return this.track(config, started);
  }

  private track(config: PauseConfig, started: StartedPause): Pause {
    let pidfd: number;
    try {
      pidfd = pidfdOpen(started.pid);
    } catch (err) {
      started.proc.kill("SIGKILL");
      removePins(config.basePath, config.podId, this.log);
      throw withContext("init pause", withContext(`open pause PID ${started.pid}`, err));
    }
    const pause: Pause = { podId: config.podId, basePath: config.basePath, pid: started.pid, pidfd, proc: started.proc, exited: false, stopping: false };
    void started.proc.exited.then(() => {
      pause.exited = true;
      if (!pause.stopping) this.log.warn(`Pause PID ${pause.pid} of pod ${pause.podId} exited (${describeExit(started.proc)})`);
    });
    this.log.info(`Pause PID is: ${pause.pid}`);
    return pause;
  }

  /** upstream's Pause::stop: unmount and remove the pins, SIGTERM the pause (and wait for it),
   * remove its pid file. Idempotent. */
  private stop(pause: Pause): Promise<void> {
    pause.stopped ??= this.stopOnce(pause);
    return pause.stopped;
  }

  private async stopOnce(pause: Pause): Promise<void> {
    pause.stopping = true;
    this.log.info(`Stopping pause PID ${pause.pid} of pod ${pause.podId}`);
    removePins(pause.basePath, pause.podId, this.log);
    if (!pause.exited) {
      signal(pause, "SIGTERM", this.log);
      if (!(await exitsWithin(pause.proc, STOP_TIMEOUT_MS))) {
        this.log.warn(`Pause PID ${pause.pid} ignored SIGTERM for ${STOP_TIMEOUT_MS} ms; killing it`);
        signal(pause, "SIGKILL", this.log);
        pause.proc.kill("SIGKILL");
        await exitsWithin(pause.proc, STOP_TIMEOUT_MS);
      }
    }
    closeQuietly(pause.pidfd);
    removeFile(pausePidPath(pause.basePath, pause.podId), "pause PID path", this.log);
  }

  /** Shutdown hook: stops every pause, including ones still starting. */
  async stopAll(): Promise<void> {
    this.closing = true;
    const settled = await Promise.allSettled(this.pods.values());
    this.pods.clear();
    const running = settled.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []));
    await Promise.all(running.map((pause) => this.stop(pause)));
  }
}

/**
 * Whether a pause process has died. `exited` is set when Bun's `proc.exited` settles, which can
 * come a turn after the process is gone, so also look at the process itself. (waitid with WNOWAIT
 * on its pidfd does not see Bun's children while they are zombies, so the state comes from /proc;
 * the pidfd answering signal 0 proves the pid still names our process.)
 */
function isGone(pause: Pause): boolean {
  if (pause.exited) return true;
  try {
    pidfdSendSignal(pause.pidfd, 0);
  } catch {
    return true; // reaped already
  }
  try {
    const stat = readFileSync(`/proc/${pause.pid}/stat`, "utf8");
    return stat[stat.lastIndexOf(")") + 2] === "Z";
  } catch {
    return true;
  }
}
