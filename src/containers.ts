// Containers of this pod: createContainer (ordinal 1), reopenLogContainer (ordinal 4), and the
// life of a created container until its exit is recorded (exit/OOM files, cleanup command).
// Execs are tracked elsewhere and never shadow a container's entry (upstream quirk Q6, fixed).

import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { ServerConfig } from "./cli.ts";
import { ChildReaper, spawnTracked, type ExitInfo } from "./child-reaper.ts";
import { AttachServer } from "./attach.ts";
import { ContainerIO } from "./container-io.ts";
import { ContainerLog, type LogDriverConfig } from "./container-log.ts";
import type { CreateContainerParams, CreateContainerRequest } from "./request-params.ts";
import { encodeCreateResults } from "./call-results.ts";
import { replyWith } from "./rpc/results.ts";
import { errorChain, withContext } from "./errors.ts";
import { runCleanupCommand, writeExitFiles, writeOomFiles } from "./exit-files.ts";
import type { Logger } from "./logger.ts";
import { OomWatcher } from "./oom-watcher.ts";
import { createArgs } from "./runtime-args.ts";
import { runtimeConfig, runtimeEnv } from "./runtime.ts";
import { closeQuietly } from "../ffi/fd.ts";
import { getpgid, getpid, kill, killProcessGroup } from "../ffi/process.ts";
import { Conmon_CgroupManager, Conmon_LogDriver_Type } from "../schema/conmon.ts";

/** How long an exited container's output may still drain before its exit files are written. */
const OUTPUT_DRAIN_MS = 200;
/** After the output ended, attach sockets stay a little so clients can read the final `[0]`. */
const ATTACH_LINGER_MS = 2000;

export interface Container {
  readonly id: string;
  readonly pid: number;
  readonly io: ContainerIO;
  readonly log: ContainerLog;
  /** Created with stdin: attach clients' input reaches the container. */
  readonly stdin: boolean;
  readonly attachServers: Set<AttachServer>;
  /** Resolves once exit (and OOM) files are written. */
  readonly exited: Promise<ExitInfo>;
}

export class ChildNotAvailable extends Error {
  constructor() {
    super("child not available");
  }
}

/** Slots of the fd socket (startFdSocket); filled by a later concern, empty until then. */
export interface FdStore {
  take(slot: bigint): number;
}

const emptyFdStore: FdStore = {
  take(slot) {
    throw new Error(`no file descriptor in slot ${slot}`);
  },
};

const DRIVER_TYPES: Record<number, LogDriverConfig["type"]> = {
  [Conmon_LogDriver_Type.CONTAINER_RUNTIME_INTERFACE]: "cri",
  [Conmon_LogDriver_Type.JSON]: "json",
  [Conmon_LogDriver_Type.JOURNALD]: "journald",
};

function logDrivers(list: CreateContainerRequest["logDrivers"]): LogDriverConfig[] {
  return list.map((driver) => {
    const type = DRIVER_TYPES[driver.type];
    if (!type) throw new Error(`unknown log driver type ${driver.type}`);
    return { type, path: driver.path, maxSize: driver.maxSize };
  });
}

export class Containers {
  private readonly byId = new Map<string, Container>();
  fdStore: FdStore = emptyFdStore;

  constructor(
    private readonly config: ServerConfig,
    private readonly reaper: ChildReaper,
    private readonly log: Logger,
  ) {}

  get size(): number {
    return this.byId.size;
  }

  get(id: string): Container {
    const container = this.byId.get(id);
    if (!container) throw new ChildNotAvailable();
    return container;
  }

  has(id: string): boolean {
    return this.byId.has(id);
  }

  all(): Container[] {
    return [...this.byId.values()];
  }



  /** The createContainer RPC; params as readCreateContainerParams (src/request-params.ts) reads them. */
  readonly handleCreate = async (params: CreateContainerParams, results: any): Promise<void> => {
    const req = params.request;
    const { id, bundlePath, terminal, stdin, exitPaths, oomExitPaths, cleanupCmd, globalArgs, commandArgs } = req;
    const drivers = logDrivers(req.logDrivers);
    const env = req.envVars;
    const systemdCgroup = req.cgroupManager === Conmon_CgroupManager.SYSTEMD;
    if (this.byId.has(id)) throw new Error(`container with id ${id} already exists`);

    const additionalFds: number[] = [];
    const leakFds: number[] = [];
    try {
      for (const slot of req.additionalFds) additionalFds.push(this.fdStore.take(slot));
      for (const slot of req.leakFds) leakFds.push(this.fdStore.take(slot));
    } catch (err) {
      for (const fd of [...additionalFds, ...leakFds]) closeQuietly(fd);
      throw err;
    }

    let log: ContainerLog | undefined;
    let io: ContainerIO | undefined;
    try {
      log = await ContainerLog.open(id, drivers, {
        onError: (err, driver) => this.log.error(`container ${id} ${driver.type} log '${driver.path}': ${errorChain(err)}`),
      });
      io = terminal ? await ContainerIO.terminal({ stdin, log: this.log }) : ContainerIO.streams({ stdin, log: this.log });
      const pid = await this.runCreate(io, log, {
        id,
        bundlePath,
        argv: createArgs(runtimeConfig(this.config), {
          id,
          bundlePath,
          systemdCgroup,
          globalArgs,
          commandArgs,
          consoleSocket: io.consoleSocketPath,
        }),
        env,
        additionalFds,
      });
      for (const fd of additionalFds) closeQuietly(fd);
      additionalFds.length = 0;
      const container = this.register({ id, pid, io, log, stdin, exitPaths, oomExitPaths, cleanupCmd, leakFds });
      replyWith(results, encodeCreateResults(container.pid));
    } catch (err) {
      io?.close();
      log?.close();
      for (const fd of [...additionalFds, ...leakFds]) closeQuietly(fd);
      throw err;
    }
  };

  /** Runs `runtime create`; returns the container pid from <bundle>/pidfile. */
  private async runCreate(
    io: ContainerIO,
    log: ContainerLog,
    opts: { id: string; bundlePath: string; argv: string[]; env: Record<string, string>; additionalFds: number[] },
  ): Promise<number> {
    const argv = [this.config.runtime, ...opts.argv];
    this.log.debug(`Running runtime: ${argv.join(" ")}`);
    // Streams mode: the runtime's own stderr is the container's stderr pipe, so a failing create
    // reports through it; collect what arrives while the runtime runs for the error message.
    const runtimeStderr: Uint8Array[] = [];
    const unsubscribe = io.subscribe({
      onData(stream, chunk) {
        if (stream === "stderr" && runtimeStderr.length < 64) runtimeStderr.push(chunk.slice());
      },
      onEnd() {},
    });
    const [stdinFd, stdoutFd, stderrFd] = io.childStdio;
    const proc = spawnTracked(argv, {
      env: runtimeEnv(opts.env),
      stdio: [stdinFd, io.terminal ? "pipe" : stdoutFd, io.terminal ? "pipe" : stderrFd, ...opts.additionalFds] as any,
    });
    io.afterSpawn();
    let terminalOutput: Promise<string> | undefined;
    try {
      if (io.terminal) {
        terminalOutput = Promise.all([
          new Response(proc.stdout as unknown as ReadableStream).text(),
          new Response(proc.stderr as unknown as ReadableStream).text(),
        ]).then(([out, errText]) => (out + errText).trim());
        await io.waitForPty(proc.exited);
      }
      io.start(log);
      const code = await proc.exited;
      if (code !== 0) {
        // Give the pipe a moment to deliver what the runtime wrote just before exiting.
        await Bun.sleep(0);
        const stderrText = terminalOutput
          ? await terminalOutput
          : Buffer.concat(runtimeStderr).toString("utf8").trim();
        throw new Error(`child command exited with: ${code}${stderrText ? `: ${stderrText}` : ""}`);
      }
    } catch (err) {
      if (proc.exitCode === null) proc.kill("SIGKILL");
      throw err;
    } finally {
      unsubscribe();
    }
    const pidFile = join(opts.bundlePath, "pidfile");
    let text: string;
    try {
      text = readFileSync(pidFile, "utf8");
    } catch (err) {
      throw withContext(`grandchild pid read error ${pidFile}`, err);
    }
    const pid = Number(text.trim());
    if (!Number.isInteger(pid) || pid <= 0) throw new Error(`grandchild pid parse error ${pidFile}: invalid digit found in string`);
    return pid;
  }

  private register(opts: {
    id: string;
    pid: number;
    io: ContainerIO;
    log: ContainerLog;
    stdin: boolean;
    exitPaths: string[];
    oomExitPaths: string[];
    cleanupCmd: string[];
    leakFds: number[];
  }): Container {
    // Armed just after the answer is written (setImmediate runs after the microtask that writes
    // it): finding and opening the cgroup costs a few hundred µs, and the container cannot run
    // before the engine has the answer and calls `runtime start`.
    const oom = new Promise<OomWatcher>((resolve) => setImmediate(() => resolve(OomWatcher.start(opts.pid, this.log))));
    const attachServers = new Set<AttachServer>();
    const exited = this.supervise({ ...opts, attachServers }, oom);
    const container: Container = { id: opts.id, pid: opts.pid, io: opts.io, log: opts.log, stdin: opts.stdin, attachServers, exited };
    this.byId.set(opts.id, container);
    this.log.debug(`Registered container ${opts.id} with pid ${opts.pid}`);
    return container;
  }

  /** Waits for the container's exit and records it; never rejects. */
  private async supervise(
    c: {
      id: string;
      pid: number;
      io: ContainerIO;
      log: ContainerLog;
      exitPaths: string[];
      oomExitPaths: string[];
      cleanupCmd: string[];
      leakFds: number[];
      attachServers: Set<AttachServer>;
    },
    oomWatcher: Promise<OomWatcher>,
  ): Promise<ExitInfo> {
    let exit: ExitInfo;
    try {
      exit = await this.reaper.watch(c.pid);
    } catch (err) {
      this.log.error(`watch container ${c.id}: ${errorChain(err)}`);
      exit = { code: -1 };
    }
    // The container's output normally ends with it; a daemonized child may keep the pipe open,
    // so wait only briefly before recording the exit. A pty signals nothing when closed: look now.
    c.io.drainNow();
    await Promise.race([c.io.ended, Bun.sleep(OUTPUT_DRAIN_MS)]);
    const oom = await oomWatcher;
    try {
      if (oom.oomKilled()) writeOomFiles(c.oomExitPaths, this.log);
    } finally {
      oom.close();
    }
    writeExitFiles(c.exitPaths, exit.code, this.log);
    this.log.debug(`Container ${c.id} (pid ${c.pid}) exited with ${exit.code}`);
    if (c.cleanupCmd.length > 0) runCleanupCommand(c.cleanupCmd, this.log);
    for (const fd of c.leakFds) closeQuietly(fd);
    this.byId.delete(c.id);
    // Output may still be flowing from a grandchild that kept the pipe; close when it ends.
    void c.io.ended.then(async () => {
      c.log.close();
      if (c.attachServers.size > 0) await Bun.sleep(ATTACH_LINGER_MS);
      for (const server of c.attachServers) server.close();
      c.io.close();
    });
    return exit;
  }

  /** The attachContainer RPC: a SEQPACKET socket streaming the container's output (spec §9). */
  readonly handleAttach = async (params: any): Promise<void> => {
    const req = params.request;
    const container = this.get(req.id);
    const execSession: string = req.execSessionId;
    if (execSession) this.log.debug(`Attach to container ${container.id} for exec session ${execSession}`);
    const server = await AttachServer.create(
      req.socketPath,
      container.io,
      {
        stopAfterStdinEof: req.stopAfterStdinEof,
        acceptsStdin: container.stdin,
        onStdinEof: () => this.log.debug(`Attach client of ${container.id} closed stdin`),
      },
      this.log,
    );
    container.attachServers.add(server);
  };

  /** The setWindowSizeContainer RPC: TIOCSWINSZ on the container's pty. */
  readonly handleSetWindowSize = (params: any): void => {
    const req = params.request;
    const container = this.get(req.id);
    if (!container.io.terminal) throw new Error("container has no terminal");
    try {
      container.io.setWindowSize(req.height, req.width);
    } catch (err) {
      throw withContext("resize terminal", err);
    }
  };

  /** The reopenLogContainer RPC. */
  readonly handleReopenLog = async (params: any): Promise<void> => {
    await this.get(params.request.id).log.reopen();
  };

  /** Shutdown: SIGKILL every container and wait until its exit files are written (137). */
  async killAll(): Promise<void> {
    const ownGroup = getpgid(getpid());
    const containers = this.all();
    for (const c of containers) {
      const pgid = getpgid(c.pid);
      // Never signal our own process group (upstream quirk Q16): runtimes give containers their
      // own session, but a misconfigured one must not take the monitor down with it.
      if (pgid > 1 && pgid !== ownGroup) {
        try {
          killProcessGroup(pgid, "SIGKILL");
        } catch {
          // the group may be gone already
        }
      }
      try {
        kill(c.pid, "SIGKILL");
      } catch {
        // already exited; its exit is being recorded
      }
    }
    await Promise.all(containers.map((c) => c.exited));
  }
}
