// execSyncContainer on the client side (mirrors the Go client's ExecSyncContainer).
import { CgroupManager, type ConmonClient } from "./conmon-client.ts";
import { execSyncParams } from "./params.ts";
import { decodeExecResults, type ExecResultFields } from "../call-results.ts";

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

/** exitCode, stdout, stderr, timedOut: as the server writes them (src/call-results.ts). */
export type ExecContainerResult = ExecResultFields;

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
