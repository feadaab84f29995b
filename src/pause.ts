// `conmonrs pause`: the process that pins a pod's namespaces (createNamespaces, spec §12).
//
// Upstream forks: the parent writes the pid file (and, for a user namespace, the child's uid/gid
// maps) and exits once the child has bind-mounted /proc/self/ns/<ns> onto
// <base>/<ns>ns/<podId> for all five namespaces; the child then waits for a termination signal.
// Bun cannot fork, so the roles are split across processes instead:
//
//   startPause() (in the server, or in a hand-run `conmonrs pause`)   = upstream's parent
//   runPause() with the sync fds in its environment                   = upstream's child
//
// Two namespace kinds cannot be entered from inside a Bun process, so a single-threaded launcher,
// util-linux unshare(1), creates them and then execs our binary (same pid unless it forks):
//   * user: the kernel refuses unshare(CLONE_NEWUSER) in a multi-threaded process (EINVAL), and
//     Bun always runs several threads. `unshare --user --keep-caps` creates the namespace and
//     keeps the capabilities across exec as ambient ones (without --keep-caps, exec in a user
//     namespace without maps drops every capability). The maps are written by startPause, as
//     upstream's parent does, after the pause process reports that it waits for them.
//   * pid: unshare(CLONE_NEWPID) only moves future children, so the obvious in-process design
//     (bind /proc/self/ns/pid_for_children) does not work: that file cannot be bind-mounted, nor
//     even read, until the new namespace has an init process (the kernel answers ENOENT while it
//     has no child reaper), and a Bun.spawn made after unshare(CLONE_NEWPID) crashed Bun 1.4.4
//     (abort) in our measurements. Even if it worked, the first container to join would become
//     the namespace's pid 1 and take the namespace with it when it exits. So
//     `unshare --pid --fork --kill-child` makes our pause process pid 1 of the new namespace,
//     exactly like upstream's forked child, and /proc/self/ns/pid is the pinned one.
//     --kill-child takes the pause down if unshare dies.
// IPC, network and UTS (and, in the user case, mount) namespaces are unshared in-process.
//
// The sync channel: fd 3 (pause → parent) and fd 4 (parent → pause), single bytes; their numbers
// come in SYNC_ENV. Without it the process is a hand-run `conmonrs pause`, which plays the parent
// and returns once the namespaces are pinned, leaving the pause process behind (as upstream).

import { existsSync, mkdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { constants as osConstants } from "node:os";
import { dirname, join } from "node:path";
import type { PauseConfig } from "./cli.ts";
import { spawnTracked } from "./child-reaper.ts";
import { withContext } from "./errors.ts";
import { selfCommand } from "./launcher.ts";
import { closeFd, closeQuietly, pipe, readFd, writeAll } from "../ffi/fd.ts";
import { CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWUTS, mountBind, setresgid, setresuid, unshare } from "../ffi/ns.ts";
import { watch, type Watch } from "../ffi/poller.ts";
import { setProcessName } from "../ffi/process.ts";

/** All namespaces a pause pins, in upstream's order (the order of the RPC response). */
export const NAMESPACES = ["ipc", "pid", "net", "user", "uts"] as const;
export type NamespaceName = (typeof NAMESPACES)[number];

/** `<base>/<name>ns/<podId>`: where a namespace is pinned. */
export function namespacePath(basePath: string, name: NamespaceName, podId: string): string {
  return join(basePath, `${name}ns`, podId);
}

/** `<base>/conmonrs/<podId>.pid`: the pause pid, bare digits. */
export function pausePidPath(basePath: string, podId: string): string {
  return join(basePath, "conmonrs", `${podId}.pid`);
}

const SYNC_ENV = "CONMONRS_PAUSE_SYNC_FDS";
const CHILD_READY_FD = 3;
const CHILD_MAPS_FD = 4;

/** Bytes of the sync channel. */
const MSG = {
  /** pause → parent: I am in the new user namespace, write my maps. */
  needMaps: 0x55, // "U"
  /** parent → pause: maps written. */
  mapsWritten: 0x47, // "G"
  /** pause → parent: all five namespaces are pinned. */
  pinned: 0x52, // "R"
} as const;

/** How long startPause waits for the namespaces to be pinned. Bun starts in ~50 ms; a pause that
 * takes longer than this is stuck and is killed. */
export const PAUSE_READY_TIMEOUT_MS = 15_000;

// ---- shared ------------------------------------------------------------------------------------

/** upstream's validation of one "CONTAINER_ID HOST_ID SIZE" mapping (same texts). */
export function validateMapping(mapping: string): void {
  const fields = mapping.trim().split(/\s+/).filter((f) => f !== "");
  if (fields.length !== 3) {
    throw new Error(`mapping '${mapping}' has wrong format, expected 'CONTAINER_ID HOST_ID SIZE'`);
  }
  if (!fields.every((f) => /^\d+$/.test(f) && Number(f) <= 0xffffffff)) {
    throw new Error(`mapping '${mapping}' has wrong format, expected all to be u32`);
  }
}

/** What upstream checks before it spawns anything (same texts). */
export function validatePauseConfig(config: PauseConfig): void {
  if (!config.user) return;
  if (config.uidMappings.length === 0) throw new Error("user ID mappings are empty");
  if (config.gidMappings.length === 0) throw new Error("group ID mappings are empty");
  for (const m of [...config.uidMappings, ...config.gidMappings]) validateMapping(m);
}

/** The `pause` subcommand's own arguments (what upstream's parent passes). */
export function pauseArgs(config: PauseConfig): string[] {
  const args = ["pause", "--base-path", config.basePath, `--pod-id=${config.podId}`];
  for (const ns of ["ipc", "net", "pid", "uts"] as const) if (config[ns]) args.push(`--${ns}`);
  if (config.user) {
    args.push("--user");
    for (const m of config.uidMappings) args.push(`--uid-mappings=${m}`);
    for (const m of config.gidMappings) args.push(`--gid-mappings=${m}`);
  }
  return args;
}

const UNSHARE_PATHS = ["/usr/bin/unshare", "/bin/unshare", "/usr/sbin/unshare"];

function unshareBinary(): string {
  const found = Bun.which("unshare") ?? UNSHARE_PATHS.find((p) => existsSync(p));
  if (!found) throw new Error("pinning a user or PID namespace needs util-linux unshare(1), which was not found");
  return found;
}

/** The single-threaded launcher that creates the namespaces Bun cannot (see the header). */
export function launcherPrefix(config: PauseConfig): string[] {
  if (!config.user && !config.pid) return [];
  const prefix = [unshareBinary()];
  if (config.user) prefix.push("--user", "--keep-caps");
  if (config.pid) prefix.push("--pid", "--fork", "--kill-child");
  return [...prefix, "--"];
}

/** Like Rust's ExitStatus display, which upstream's `exit status not ok: {status}` prints. */
export function describeExit(proc: { exitCode: number | null; signalCode: string | number | null }): string {
  if (typeof proc.signalCode === "number") return `signal: ${proc.signalCode}`;
  if (proc.signalCode) {
    const signo = (osConstants.signals as Record<string, number | undefined>)[proc.signalCode];
    return `signal: ${signo ?? "?"} (${proc.signalCode})`;
  }
  return `exit status: ${proc.exitCode}`;
}

function readPid(path: string): number {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw withContext("read pause PID path", err);
  }
  const trimmed = text.trim();
  if (!/^\d+$/.test(trimmed) || Number(trimmed) < 1 || Number(trimmed) > 0xffffffff) {
    throw new Error(`parse pause PID: '${text}' in ${path}`);
  }
  return Number(trimmed);
}

// ---- parent side -------------------------------------------------------------------------------

export interface StartedPause {
  /** The pause process (its pid in our PID namespace, from the pid file). */
  pid: number;
  /** What we spawned: the pause itself, or unshare(1) when it had to fork (PID namespace). Its
   * exit means the pause is gone. */
  proc: Bun.Subprocess<"ignore", "inherit", "inherit">;
}

/** Bytes arriving on a non-blocking fd, awaited one at a time; undefined at end of file. */
class ByteReader {
  private readonly bytes: number[] = [];
  private eof = false;
  private failure: unknown;
  private wake?: () => void;
  private readonly watcher: Watch;
  private readonly buf = new Uint8Array(64);

  constructor(private readonly fd: number) {
    this.watcher = watch(fd, { read: true }, () => this.drain());
  }

  private drain(): void {
    try {
      for (;;) {
        const n = readFd(this.fd, this.buf);
        if (n < 0) break;
        if (n === 0) {
          this.eof = true;
          this.watcher.close();
          break;
        }
        for (let i = 0; i < n; i++) this.bytes.push(this.buf[i]!);
      }
    } catch (err) {
      this.failure = err;
      this.watcher.close();
    }
    this.wake?.();
  }

  async next(): Promise<number | undefined> {
    while (this.bytes.length === 0 && !this.eof && this.failure === undefined) {
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
    if (this.bytes.length > 0) return this.bytes.shift();
    if (this.failure !== undefined) throw withContext("read pause sync pipe", this.failure);
    return undefined;
  }

  close(): void {
    this.watcher.close();
  }
}

/** /proc/<pid>/{gid,uid}_map: every mapping in ONE write (the kernel accepts only one). */
function writeIdMaps(pid: number, config: PauseConfig): void {
  const write = (file: "gid_map" | "uid_map", mappings: string[], what: string) => {
    try {
      writeFileSync(`/proc/${pid}/${file}`, mappings.map((m) => `${m.trim()}\n`).join(""));
    } catch (err) {
      throw withContext(`write ${what} maps`, err);
    }
  };
  // gid first, as upstream: nothing depends on the order while we hold CAP_SETGID.
  write("gid_map", config.gidMappings, "gid");
  write("uid_map", config.uidMappings, "uid");
}

function rejectAfter(ms: number, message: string): { promise: Promise<never>; cancel(): void } {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const promise = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return { promise, cancel: () => clearTimeout(timer) };
}

/** Runs the parent's half of the sync protocol until the pause reports its namespaces pinned. */
async function awaitPinned(
  reader: ByteReader,
  mapsFd: number,
  proc: StartedPause["proc"],
  config: PauseConfig,
  timeoutMs: number,
): Promise<void> {
  const deadline = rejectAfter(timeoutMs, `pause did not pin the namespaces within ${timeoutMs} ms`);
  try {
    for (;;) {
      const msg = await Promise.race([reader.next(), deadline.promise]);
      if (msg === MSG.pinned) return;
      if (msg === MSG.needMaps && config.user) {
        writeIdMaps(readPid(pausePidPath(config.basePath, config.podId)), config);
        writeAll(mapsFd, new Uint8Array([MSG.mapsWritten]));
        continue;
      }
      if (msg !== undefined) throw new Error(`pause sent an unexpected sync byte 0x${msg.toString(16)}`);
      // End of file before "pinned": the pause died (it printed why on its stderr).
      await Promise.race([proc.exited, deadline.promise]);
      if (proc.exitCode === 0 && !proc.signalCode) throw new Error("pause exited before pinning the namespaces");
      throw new Error(`exit status not ok: ${describeExit(proc)}`);
    }
  } finally {
    deadline.cancel();
  }
}

/**
 * Starts a pause process for `config` and resolves once all five namespaces are pinned and the
 * pid file is written. On failure the process is killed (and awaited) before the promise rejects;
 * files it already created are left to the caller.
 */
export async function startPause(config: PauseConfig, timeoutMs = PAUSE_READY_TIMEOUT_MS): Promise<StartedPause> {
  validatePauseConfig(config);
  try {
    mkdirSync(config.basePath, { recursive: true });
  } catch (err) {
    throw withContext("create base path", err);
  }
  const argv = [...launcherPrefix(config), ...selfCommand(), ...pauseArgs(config)];
  const [readyRead, readyWrite] = pipe();
  const [mapsRead, mapsWrite] = pipe();
  let proc: StartedPause["proc"];
  try {
    proc = spawnTracked(argv, {
      // fds 3 and 4 of the child; the pause inherits our stdout/stderr, as upstream's does.
      stdio: ["ignore", "inherit", "inherit", readyWrite, mapsRead] as any,
      env: { ...process.env, [SYNC_ENV]: `${CHILD_READY_FD},${CHILD_MAPS_FD}` },
    }) as StartedPause["proc"];
  } catch (err) {
    closeQuietly(readyRead);
    closeQuietly(mapsWrite);
    throw withContext("run pause", err);
  } finally {
    // Only the child may hold these ends, or we would never see end of file on readyRead.
    closeQuietly(readyWrite);
    closeQuietly(mapsRead);
  }
  const reader = new ByteReader(readyRead);
  try {
    await awaitPinned(reader, mapsWrite, proc, config, timeoutMs);
    return { pid: readPid(pausePidPath(config.basePath, config.podId)), proc };
  } catch (err) {
    proc.kill("SIGKILL"); // with --kill-child, unshare's death takes the pause down too
    await proc.exited;
    throw err;
  } finally {
    reader.close();
    closeQuietly(readyRead);
    closeQuietly(mapsWrite);
  }
}

// ---- pause side --------------------------------------------------------------------------------

function syncFds(): { ready: number; maps: number } | undefined {
  const value = process.env[SYNC_ENV];
  if (value === undefined) return undefined;
  const match = /^(\d+),(\d+)$/.exec(value);
  if (!match) throw new Error(`${SYNC_ENV}: expected '<ready fd>,<maps fd>', got '${value}'`);
  delete process.env[SYNC_ENV];
  return { ready: Number(match[1]), maps: Number(match[2]) };
}

/** Resolves on the first SIGTERM, SIGINT or SIGQUIT (upstream's TERM_SIGNALS). Installed before
 * anything else: as pid 1 of a PID namespace, a signal without a handler is ignored. */
function terminationSignal(): Promise<void> {
  return new Promise((resolve) => {
    // Signal listeners do not keep Bun's event loop alive; an idle timer does.
    const keepAlive = setInterval(() => {}, 2 ** 30);
    const done = () => {
      clearInterval(keepAlive);
      resolve();
    };
    for (const signal of ["SIGTERM", "SIGINT", "SIGQUIT"] as const) process.once(signal, done);
  });
}

/** The launcher must have put us where --pid/--user say; pinning the wrong namespace silently
 * would hand the engine a path to the host's. */
function checkLaunchedNamespaces(config: PauseConfig): void {
  if (config.pid && process.pid !== 1) {
    throw new Error("--pid: the pause process must be the init of a new PID namespace (started by `unshare --pid --fork`)");
  }
  if (config.user && readFileSync("/proc/self/uid_map", "utf8") !== "") {
    throw new Error("--user: the pause process must start in a new user namespace without maps (started by `unshare --user`)");
  }
}

/** Our pid as the parent sees it. /proc belongs to the parent's PID namespace, so /proc/self
 * names us by that pid even when we are pid 1 of a new namespace. */
function pidInParentNamespace(): number {
  return Number(readlinkSync("/proc/self"));
}

function createEmptyFile(path: string): void {
  try {
    writeFileSync(path, "", { flag: "wx" });
  } catch (err: any) {
    if (err?.code !== "EEXIST") throw err;
  }
}

/**
 * The pid file and the five empty mount targets. Done first, with the identity we were started
 * with (host root): in the user case, after setresuid the process may map to a host uid that may
 * not write to the base path.
 */
function prepareFiles(config: PauseConfig, pid: number): void {
  const pidPath = pausePidPath(config.basePath, config.podId);
  try {
    mkdirSync(dirname(pidPath), { recursive: true });
    writeFileSync(pidPath, String(pid)); // bare digits, as upstream
  } catch (err) {
    throw withContext("write pause PID file", err);
  }
  for (const ns of NAMESPACES) {
    const path = namespacePath(config.basePath, ns, config.podId);
    try {
      mkdirSync(dirname(path), { recursive: true });
      createEmptyFile(path);
    } catch (err) {
      throw withContext(`create namespace bind path ${path}`, err);
    }
  }
}

function send(fd: number, byte: number): void {
  writeAll(fd, new Uint8Array([byte]));
}

/** Blocks (nothing else to do) until the parent has written our uid/gid maps. */
function awaitMaps(fd: number): void {
  const buf = new Uint8Array(1);
  const n = readFd(fd, buf);
  if (n !== 1 || buf[0] !== MSG.mapsWritten) throw new Error("the parent closed the sync pipe before writing the ID maps");
}

function becomeRootInUserNamespace(): void {
  try {
    setresgid(0, 0, 0);
  } catch (err) {
    throw withContext("set root gid", err);
  }
  try {
    setresuid(0, 0, 0);
  } catch (err) {
    throw withContext("set root uid", err);
  }
}

function unshareInProcess(config: PauseConfig): void {
  let flags = 0;
  if (config.ipc) flags |= CLONE_NEWIPC;
  if (config.net) flags |= CLONE_NEWNET;
  if (config.uts) flags |= CLONE_NEWUTS;
  // A user namespace gets its own mount namespace, so the bind mounts stay inside it (the host
  // sees only the empty files), as upstream.
  if (config.user) flags |= CLONE_NEWNS;
  if (flags === 0) return;
  try {
    unshare(flags);
  } catch (err) {
    throw withContext("unshare with clone flags", err);
  }
}

/** Bind mounts of the calling thread's namespaces; unshare(2) switched this thread (the one
 * running JS), which /proc/thread-self names even if it were not the thread-group leader. */
function bindNamespaces(config: PauseConfig): void {
  for (const ns of NAMESPACES) {
    const target = namespacePath(config.basePath, ns, config.podId);
    try {
      mountBind(`/proc/thread-self/ns/${ns}`, target);
    } catch (err) {
      throw withContext(`bind namespace to path: ${target}`, err);
    }
  }
}

async function runPinned(config: PauseConfig, fds: { ready: number; maps: number }): Promise<void> {
  const terminated = terminationSignal();
  setProcessName("conmonrs");
  checkLaunchedNamespaces(config);
  prepareFiles(config, pidInParentNamespace());
  if (config.user) {
    send(fds.ready, MSG.needMaps);
    awaitMaps(fds.maps);
    becomeRootInUserNamespace();
  }
  unshareInProcess(config);
  bindNamespaces(config);
  send(fds.ready, MSG.pinned);
  closeFd(fds.ready);
  closeFd(fds.maps);
  // Give back what startup and the steps above allocated: this process lives as long as the pod.
  Bun.gc(true);
  await terminated;
}

/** Entry of `conmonrs pause`. */
export async function runPause(config: PauseConfig): Promise<void> {
  const fds = syncFds();
  if (fds) return runPinned(config, fds);
  // Run by hand: be upstream's parent. The pause keeps running after we exit.
  const started = await startPause(config);
  started.proc.unref();
}
