// The long-lived server process: prepares the process like upstream's `init()`, serves RPC on
// <runtime-dir>/conmon.sock and shuts down on SIGTERM/SIGINT.

import { existsSync, mkdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ServerConfig } from "./cli.ts";
import { withContext } from "./errors.ts";
import { createLogger, type Logger } from "./logger.ts";
import { listenRpc, type RpcListener } from "./rpc/listener.ts";
import { CONCERN_METHODS, conmonService, type ConcernMethod, type Handler, type MethodName } from "./service.ts";
import { handleVersion, readVersionParams } from "./version.ts";
import { readCreateContainerParams, readExecSyncParams } from "./request-params.ts";
import type { Concerns } from "./concerns.ts";
import { SdNotifier } from "./sd-notify.ts";
import { closeQuietly, isCloexec, listOpenFds } from "../ffi/fd.ts";
import { setProcessName, subreaper } from "../ffi/process.ts";

export const SOCKET_NAME = "conmon.sock";
export const FD_SOCKET_NAME = "conmon-fd.sock";

/**
 * upstream's `validate()`: fatal configuration errors, the runtime dir and root created, stale
 * sockets removed. Runs in the launcher too, so the caller sees errors and no stale socket can
 * be mistaken for the new server's.
 */
export function validateConfig(config: ServerConfig): void {
  if (config.runtime.trim() === "") throw new Error("--runtime flag not set");
  if (config.runtimeDir.trim() === "") throw new Error("--runtime-dir flag not set");
  if (!existsSync(config.runtime)) throw new Error(`--runtime '${config.runtime}' does not exist`);
  mkdirSync(config.runtimeDir, { recursive: true });
  if (config.runtimeRoot !== undefined) {
    if (existsSync(config.runtimeRoot) && !statSync(config.runtimeRoot).isDirectory()) {
      throw new Error(`--runtime-root '${config.runtimeRoot}' does not exist`);
    }
    mkdirSync(config.runtimeRoot, { recursive: true });
  }
  for (const name of [SOCKET_NAME, FD_SOCKET_NAME]) rmSync(join(config.runtimeDir, name), { force: true });
}

/** upstream's `init()`: umask and an OOM score that keeps the monitor alive longer than its containers. */
function prepareProcess(): void {
  process.umask(0o022);
  try {
    writeFileSync("/proc/self/oom_score_adj", "-1000");
  } catch (err: any) {
    if (err?.code !== "EACCES" && err?.code !== "EPERM") throw withContext("adjust OOM score", err);
    process.stdout.write("Missing sufficient privileges to adjust OOM score\n");
  }
}

/**
 * Closes fds the caller leaked into us (upstream closes every fd > 2). Bun opens its own fds
 * (epoll, eventfds, ...) before our code runs, all close-on-exec; anything without FD_CLOEXEC
 * came through exec from the caller, so that is the test, not the fd number.
 */
function closeInheritedFds(): void {
  for (const fd of listOpenFds()) {
    if (fd > 2 && !isCloexec(fd)) closeQuietly(fd);
  }
}

export type ShutdownHook = () => Promise<void> | void;

export class Server {
  readonly logger: Logger;
  private listener?: RpcListener;
  private readonly shutdownHooks: ShutdownHook[] = [];
  private shuttingDown?: Promise<void>;
  private readonly handlers: Partial<Record<MethodName, Handler>> = { version: handleVersion };
  /** systemd Type=notify; read (and removed from the env) before any child is spawned. */
  private readonly notifier?: SdNotifier;

  constructor(readonly config: ServerConfig) {
    this.logger = createLogger(config.logDriver, config.logLevel);
    this.notifier = SdNotifier.fromEnv(this.logger);
  }

  get socketPath(): string {
    return join(this.config.runtimeDir, SOCKET_NAME);
  }

  /** Registers a method handler; concerns call this before start(). */
  handle(name: MethodName, handler: Handler): void {
    this.handlers[name] = handler;
  }

  /** Runs at shutdown, before the sockets are removed (e.g. kill containers, write exit files). */
  onShutdown(hook: ShutdownHook): void {
    this.shutdownHooks.push(hook);
  }

  start(): void {
    // Handlers first: whoever sees the socket appear may signal us at once, and until a handler
    // is installed the default action would kill the server without its shutdown work.
    const stop = (signal: string) => {
      this.logger.info(`Received ${signal}, shutting down`);
      void this.shutdown().then(() => process.exit(0));
    };
    process.once("SIGTERM", () => stop("SIGTERM"));
    process.once("SIGINT", () => stop("SIGINT"));
    // The hot calls' params are read by hand from the frame (version.ts, request-params.ts).
    const paramsReaders = { version: readVersionParams, createContainer: readCreateContainerParams, execSyncContainer: readExecSyncParams };
    this.listener = listenRpc(this.socketPath, conmonService(this.handlers, paramsReaders), this.logger);
    this.logger.info(`Listening on ${this.socketPath}`);
    // Bun.listen has bound and listened by now: connections are accepted from here on.
    void this.notifier?.ready(this.socketPath);
  }

  shutdown(): Promise<void> {
    this.shuttingDown ??= (async () => {
      await this.notifier?.stopping();
      await this.runHooks(this.shutdownHooks);
      this.listener?.stop();
      for (const name of [SOCKET_NAME, FD_SOCKET_NAME]) rmSync(join(this.config.runtimeDir, name), { force: true });
    })();
    return this.shuttingDown;
  }

  /** Runs each hook in order; one that fails is logged and does not skip the next. */
  async runHooks(hooks: readonly ShutdownHook[]): Promise<void> {
    for (const hook of hooks) {
      try {
        await hook();
      } catch (err) {
        this.logger.error(`shutdown: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  }
}

/**
 * Every method but `version` is served by src/concerns.ts, which is loaded and built with the
 * first call to one of them. With build.ts's chunk splitting, a monitor that has not been asked
 * for anything yet keeps about 0.8 MB less anonymous memory (docs/performance.md); the first
 * call pays the load once.
 */
class LazyConcerns {
  private loading?: Promise<Concerns>;
  private loaded?: Concerns;

  constructor(private readonly server: Server) {}

  handler(name: ConcernMethod): Handler {
    return (params, results) => {
      if (this.loaded) return this.loaded.handlers[name](params, results);
      return this.load().then((concerns) => concerns.handlers[name](params, results));
    };
  }

  /** Shutdown work of whatever was loaded, including a load still under way. */
  async shutdown(): Promise<void> {
    if (this.loading === undefined) return;
    await this.server.runHooks((await this.loading).shutdownHooks);
  }

  private load(): Promise<Concerns> {
    this.loading ??= import("./concerns.ts").then(({ buildConcerns }) => {
      const { config, logger } = this.server;
      this.loaded = buildConcerns(config, join(config.runtimeDir, FD_SOCKET_NAME), logger);
      return this.loaded;
    });
    return this.loading;
  }
}

/** Entry of the long-lived server (`--skip-fork`, or the process the launcher started). */
export function runServer(config: ServerConfig): Server {
  // Before anything else opens fds: whatever the caller leaked to us is not ours to keep.
  closeInheritedFds();
  setProcessName("conmonrs");
  subreaper();
  validateConfig(config);
  prepareProcess();
  const server = new Server(config);
  const concerns = new LazyConcerns(server);
  for (const name of CONCERN_METHODS) server.handle(name, concerns.handler(name));
  server.onShutdown(() => concerns.shutdown());
  server.start();
  return server;
}
