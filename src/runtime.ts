// The OCI runtime as the server's requests see it: the argv builders' configuration, with what
// we learned about the binary itself.

import type { ServerConfig } from "./cli.ts";
import { isCrun, type RuntimeConfig } from "./runtime-args.ts";

const logLevelSupport = new Map<string, boolean>();

/**
 * Asks crun once whether it accepts `--log-level` (added in crun 1.9). Upstream passes it
 * unconditionally at debug/warn/error, which makes every create fail with an older crun; we
 * leave it out there instead (docs/compat.md).
 */
function crunAcceptsLogLevel(path: string): boolean {
  let accepted = logLevelSupport.get(path);
  if (accepted === undefined) {
    const probe = Bun.spawnSync([path, "--log-level=error", "--version"], { stdout: "ignore", stderr: "ignore" });
    accepted = probe.exitCode === 0;
    logLevelSupport.set(path, accepted);
  }
  return accepted;
}

export function runtimeConfig(config: ServerConfig): RuntimeConfig {
  const needsProbe = isCrun(config.runtime) && ["debug", "warn", "error"].includes(config.logLevel);
  return {
    runtimePath: config.runtime,
    runtimeRoot: config.runtimeRoot,
    logLevel: config.logLevel,
    crunAcceptsLogLevel: needsProbe ? crunAcceptsLogLevel(config.runtime) : true,
  };
}

/**
 * The environment of a runtime process: the server's own plus the request's additions. Without
 * additions process.env itself is passed, which saves a copy per spawn (leaving `env` unset would
 * be cheaper still, but then Bun uses the environment the process started with and ignores later
 * changes to process.env).
 */
export function runtimeEnv(extra: Record<string, string> | undefined): Record<string, string | undefined> {
  for (const _ in extra) return { ...process.env, ...extra };
  return process.env;
}
