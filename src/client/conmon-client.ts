// A TypeScript client for conmonrs, mirroring upstream's Go client (pkg/client): `ConmonClient.new`
// starts a server (or reuses the one already serving the run dir), methods map 1:1 to the RPCs.

import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { BuildInfo } from "../version.ts";
import { RpcClient, type ResultsDecoder } from "./rpc-client.ts";
import { decodeCreateResults } from "../call-results.ts";
import { createContainerParams } from "./params.ts";
import { execSyncContainer, type ExecSyncConfig, type ExecContainerResult } from "./exec.ts";
import { attachContainer, closeAttaches, type AttachConfig } from "./attach.ts";
import { createNamespaces, type CreateNamespacesConfig, type CreateNamespacesResponse } from "./namespaces.ts";
import { remoteFds, type RemoteFDs } from "./remote-fds.ts";
import {
  serveAttachContainer,
  serveExecContainer,
  servePortForwardContainer,
  type ServeAttachContainerConfig,
  type ServeExecContainerConfig,
  type ServePortForwardContainerConfig,
} from "./streaming.ts";

export type LogLevel = "trace" | "debug" | "info" | "warn" | "error" | "off";
export type LogDriver = "none" | "stdout" | "systemd";

export const CgroupManager = { systemd: 0, cgroupfs: 1 } as const;
export type CgroupManager = (typeof CgroupManager)[keyof typeof CgroupManager];

export interface ConmonServerConfig {
  /** Path of the conmonrs binary; default: `conmonrs` on PATH. */
  conmonServerPath?: string;
  runtime: string;
  runtimeRoot?: string;
  serverRunDir: string;
  logLevel?: LogLevel;
  logDriver?: LogDriver;
  /** Extra environment for the server process. */
  env?: Record<string, string>;
  /** argv prefix the server is started under (e.g. a private mount namespace for crun on hybrid cgroups). */
  wrapper?: string[];
  /** Default cgroup manager sent with requests that carry one (upstream's default: systemd). */
  cgroupManager?: CgroupManager;
}

/** The server's build (src/version.ts) and its pid. */
export type VersionResponse = BuildInfo & { processId: number };

export interface ContainerLogDriver {
  type: "cri" | "json" | "journald";
  path?: string;
  /** Bytes; 0 = unlimited. */
  maxSize?: number;
}

export interface CreateContainerConfig {
  id: string;
  bundlePath: string;
  terminal?: boolean;
  stdin?: boolean;
  exitPaths?: string[];
  oomExitPaths?: string[];
  logDrivers?: ContainerLogDriver[];
  cleanupCmd?: string[];
  globalArgs?: string[];
  commandArgs?: string[];
  envVars?: Record<string, string>;
  cgroupManager?: CgroupManager;
  /** Slots from RemoteFDs.send(); they become the runtime's fds 3, 4, ... */
  additionalFds?: bigint[];
  /** Slots kept open in the server until the container exits. */
  leakFds?: bigint[];
}

const LogDriverType = { cri: 0, json: 1, journald: 2 } as const;

const SOCKET_NAME = "conmon.sock";
const PIDFILE_NAME = "pidfile";

export class ConmonClient {
  private rpc?: RpcClient;
  private connecting?: Promise<RpcClient>;

  private constructor(
    readonly config: ConmonServerConfig,
    private serverPid: number,
  ) {}

  /** Starts the server unless one already serves `serverRunDir`, and waits until it answers. */
  static async new(config: ConmonServerConfig): Promise<ConmonClient> {
    if (!config.runtime) throw new Error("runtime must be specified");
    if (!config.serverRunDir) throw new Error("RunDir must be specified");
    mkdirSync(config.serverRunDir, { recursive: true });
    const client = new ConmonClient(config, 0);
    try {
      const running = await client.version();
      client.serverPid = running.processId;
      return client;
    } catch {
      client.resetConnection();
    }
    await client.startServer();
    return client;
  }

  /**
   * Connects to the server already serving `serverRunDir` and never starts one (operator tools
   * must not spawn a monitor by accident). Rejects with the connect/RPC error when none answers.
   */
  static async connect(serverRunDir: string, options: { cgroupManager?: CgroupManager } = {}): Promise<ConmonClient> {
    const client = new ConmonClient({ runtime: "", serverRunDir, ...options }, 0);
    try {
      client.serverPid = (await client.version()).processId;
    } catch (err) {
      client.resetConnection();
      throw err;
    }
    return client;
  }

  /** The long-lived server's pid. */
  get pid(): number {
    return this.serverPid;
  }

  get socketPath(): string {
    return join(this.config.serverRunDir, SOCKET_NAME);
  }

  private async startServer(): Promise<void> {
    const { config } = this;
    const argv = [config.conmonServerPath ?? "conmonrs", "--runtime", config.runtime, "--runtime-dir", config.serverRunDir];
    if (config.runtimeRoot) argv.push("--runtime-root", config.runtimeRoot);
    if (config.logLevel) argv.push("--log-level", config.logLevel);
    if (config.logDriver) argv.push("--log-driver", config.logDriver);
    const launcher = Bun.spawn([...(config.wrapper ?? []), ...argv], {
      stdio: ["ignore", config.logDriver === "stdout" ? "inherit" : "ignore", "inherit"],
      env: { ...process.env, ...config.env },
    });
    const status = await launcher.exited;
    if (status !== 0) throw new Error(`start conmonrs: launcher exited with status ${status}`);
    const pidfile = join(config.serverRunDir, PIDFILE_NAME);
    const text = readFileSync(pidfile, "utf8");
    if (!/^\d+$/.test(text)) throw new Error(`parse server pid from '${pidfile}': '${text}'`);
    this.serverPid = Number(text);
    try {
      await this.version();
    } catch (err) {
      await this.shutdown().catch(() => {});
      throw new Error(`server not up: ${(err as Error).message}`);
    }
    rmSync(pidfile);
  }

  /** The RPC connection, dialed lazily and reset after any RPC error (as the Go client does). */
  async connection(): Promise<RpcClient> {
    if (this.rpc && !this.rpc.closed) return this.rpc;
    this.connecting ??= RpcClient.connect(this.socketPath).finally(() => (this.connecting = undefined));
    this.rpc = await this.connecting;
    return this.rpc;
  }

  resetConnection(): void {
    this.rpc?.close();
    this.rpc = undefined;
  }

  /**
   * Runs one RPC; on failure the connection is reset so the next call dials afresh. `fill` writes
   * the request (or is the finished params message); `read` maps the capnp-es response, or,
   * given as `{ decode }`, reads the results by hand (src/call-results.ts).
   */
  async call<T>(methodId: number, fill: ((request: any) => void) | Uint8Array, read: ((response: any) => T) | { decode: ResultsDecoder<T> }): Promise<T> {
    const rpc = await this.connection();
    try {
      const params = fill instanceof Uint8Array ? fill : (p: any) => fill(p._initRequest());
      if (typeof read !== "function") return await rpc.call(methodId, params, read.decode);
      const results: any = await rpc.call(methodId, params);
      return read(results.response);
    } catch (err) {
      this.resetConnection();
      throw err;
    }
  }

  version(verbose = false): Promise<VersionResponse> {
    return this.call(
      0,
      (req) => {
        req.verbose = verbose;
      },
      (res) => ({
        processId: res.processId,
        version: res.version,
        tag: res.tag,
        commit: res.commit,
        buildDate: res.buildDate,
        target: res.target,
        rustVersion: res.rustVersion,
        cargoVersion: res.cargoVersion,
        cargoTree: res.cargoTree,
      }),
    );
  }

  /** createContainer: runs `runtime create` under the server; resolves with the container pid. */
  createContainer(cfg: CreateContainerConfig): Promise<{ pid: number }> {
    const params = createContainerParams({
      id: cfg.id,
      bundlePath: cfg.bundlePath,
      terminal: cfg.terminal ?? false,
      stdin: cfg.stdin ?? false,
      exitPaths: cfg.exitPaths,
      oomExitPaths: cfg.oomExitPaths,
      logDrivers: (cfg.logDrivers ?? []).map((d) => ({ type: LogDriverType[d.type], path: d.path ?? "", maxSize: BigInt(d.maxSize ?? 0) })),
      cleanupCmd: cfg.cleanupCmd,
      globalArgs: cfg.globalArgs,
      commandArgs: cfg.commandArgs,
      envVars: cfg.envVars,
      cgroupManager: cfg.cgroupManager ?? this.config.cgroupManager ?? CgroupManager.systemd,
      additionalFds: cfg.additionalFds,
      leakFds: cfg.leakFds,
    });
    return this.call(1, params, { decode: (reader, seg, at) => ({ pid: decodeCreateResults(reader, seg, at).containerPid }) });
  }

  /** reopenLogContainer: reopen every log file of the container at its path (after rotation). */
  async reopenLogContainer(cfg: { id: string }): Promise<void> {
    await this.call(
      4,
      (req) => {
        req.id = cfg.id;
      },
      () => undefined,
    );
  }

  /** execSyncContainer: run a command in the container and collect its output (src/client/exec.ts). */
  execSyncContainer(cfg: ExecSyncConfig): Promise<ExecContainerResult> {
    return execSyncContainer(this, cfg);
  }

  /** attachContainer: stream the container's output and feed its stdin (src/client/attach.ts). */
  attachContainer(cfg: AttachConfig): Promise<void> {
    return attachContainer(this, cfg);
  }

  /** setWindowSizeContainer: resize the container's terminal. */
  async setWindowSizeContainer(cfg: { id: string; size: { width: number; height: number } }): Promise<void> {
    if (!cfg.size) throw new Error("terminal size cannot be nil");
    await this.call(
      5,
      (req) => {
        req.id = cfg.id;
        req.width = cfg.size.width;
        req.height = cfg.size.height;
      },
      () => undefined,
    );
  }

  /** createNamespaces: pin the pod's namespaces (src/client/namespaces.ts). */
  createNamespaces(cfg: CreateNamespacesConfig): Promise<CreateNamespacesResponse> {
    return createNamespaces(this, cfg);
  }

  /** startFdSocket + a connection to it, for passing fds to createContainer (src/client/remote-fds.ts). */
  remoteFds(): Promise<RemoteFDs> {
    return remoteFds(this);
  }

  serveExecContainer(cfg: ServeExecContainerConfig): Promise<{ url: string }> {
    return serveExecContainer(this, cfg);
  }

  serveAttachContainer(cfg: ServeAttachContainerConfig): Promise<{ url: string }> {
    return serveAttachContainer(this, cfg);
  }

  servePortForwardContainer(cfg: ServePortForwardContainerConfig): Promise<{ url: string }> {
    return servePortForwardContainer(this, cfg);
  }

  /** SIGINT the server and wait (up to 10 s) until it is gone. */
  async shutdown(): Promise<void> {
    closeAttaches(this);
    this.resetConnection();
    const pid = this.serverPid;
    if (!pid) return;
    try {
      process.kill(pid, "SIGINT");
    } catch (err: any) {
      if (err?.code === "ESRCH") return;
      throw err;
    }
    for (let i = 0; i < 100; i++) {
      if (!processAlive(pid)) return;
      await Bun.sleep(100);
    }
    throw new Error("timed out waiting for server PID to disappear");
  }
}

/** A zombie counts as gone: the server is dead even if its parent has not reaped it yet. */
function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

export function socketExists(runDir: string): boolean {
  return existsSync(join(runDir, SOCKET_NAME));
}
