// execSyncContainer on the client side (mirrors the Go client's ExecSyncContainer).
import { CgroupManager, type ConmonClient } from "./conmon-client.ts";
import { execSyncParams } from "./params.ts";
import { decodeExecResults } from "../call-results.ts";

export interface ExecSyncConfig {
  id: string;
  command: string[];
  /** Seconds; 0 = no timeout. */
  timeoutSec?: number;
  terminal?: boolean;
  /** Environment of the runtime `exec` process (as upstream, not of the exec'd command). */
  envVars?: Record<string, string>;
  cgroupManager?: CgroupManager;
}

export interface ExecContainerResult {
  exitCode: number;
  stdout: Uint8Array;
  stderr: Uint8Array;
  timedOut: boolean;
}

export function execSyncContainer(client: ConmonClient, cfg: ExecSyncConfig): Promise<ExecContainerResult> {
  return client.call(
    2,
    execSyncParams({
      id: cfg.id,
      command: cfg.command,
      timeoutSec: BigInt(cfg.timeoutSec ?? 0),
      terminal: cfg.terminal ?? false,
      envVars: cfg.envVars,
      cgroupManager: cfg.cgroupManager ?? client.config.cgroupManager ?? CgroupManager.systemd,
    }),
    // Read by hand, the output copied out of the frame (as the Go client copies it).
    { decode: decodeExecResults },
  );
}
