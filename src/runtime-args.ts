// Pure builders for the OCI runtime (runc/crun) argv, matching conmon-rs byte for byte
// (spec §6.2 for create, §8 for exec). No I/O here: the service layer spawns, we only compute.
//
// Every returned array is the argv WITHOUT the runtime binary itself; the caller spawns
// `[cfg.runtimePath, ...args]`.

export type LogLevel = "trace" | "debug" | "info" | "warn" | "error" | "off";

export type RuntimeConfig = {
  /** Path of the runtime binary as given on the command line (`--runtime`). */
  runtimePath: string;
  /** `--runtime-root`; passed through as `--root=<rr>` whenever it is set (even if empty, like upstream). */
  runtimeRoot?: string;
  /** The server's own log level; only consulted for crun. */
  logLevel: LogLevel;
  /**
   * Whether this crun understands `--log-level` (crun < 1.9, e.g. Debian 12's 1.8.1, exits 64 on
   * it). Default true, as upstream assumes; the server probes the binary once.
   */
  crunAcceptsLogLevel?: boolean;
};

export type DefaultArgsOptions = {
  containerId: string;
  /** True when the request's cgroupManager is systemd (upstream's default when unset). */
  systemdCgroup: boolean;
};

export type CreateArgsRequest = {
  id: string;
  bundlePath: string;
  systemdCgroup: boolean;
  /** Inserted before the `create` sub-command (runtime-global flags). */
  globalArgs: string[];
  /** Inserted after the `create` flags, before the console socket and the id. */
  commandArgs: string[];
  /** Console socket path; present exactly when the container has a terminal. */
  consoleSocket?: string;
};

export type ExecArgsRequest = {
  id: string;
  command: string[];
  systemdCgroup: boolean;
  pidFile: string;
  /** Console socket path; present exactly when the exec has a terminal. */
  consoleSocket?: string;
};

/** crun gets extra logging flags; upstream decides by the binary's file name only. */
export function isCrun(runtimePath: string): boolean {
  return fileName(runtimePath) === "crun";
}

/**
 * crun log-level flag for the server's level. Upstream maps only these three; trace, info
 * and off add nothing (crun's own default applies).
 */
function crunLogLevelFlag(level: LogLevel): string | undefined {
  switch (level) {
    case "debug":
      return "--log-level=debug";
    case "error":
      return "--log-level=error";
    case "warn":
      return "--log-level=warning";
    default:
      return undefined;
  }
}

/** Flags shared by every runtime invocation (spec §6.2 `default_args`). */
export function defaultArgs(cfg: RuntimeConfig, opts: DefaultArgsOptions): string[] {
  const args: string[] = [];
  if (isCrun(cfg.runtimePath)) {
    args.push(`--log=journald:${opts.containerId}`);
    const level = crunLogLevelFlag(cfg.logLevel);
    if (level !== undefined && cfg.crunAcceptsLogLevel !== false) args.push(level);
  }
  args.push(...rootAndCgroupFlags(cfg, opts.systemdCgroup));
  return args;
}

/**
 * Upstream appends `--root`/`--systemd-cgroup` a second time after `default_args`
 * (quirk Q1). Kept on purpose: argv-inspecting tests see the same bytes, and both runtimes
 * accept the repeated flags.
 */
function rootAndCgroupFlags(cfg: RuntimeConfig, systemdCgroup: boolean): string[] {
  const flags: string[] = [];
  if (cfg.runtimeRoot !== undefined) flags.push(`--root=${cfg.runtimeRoot}`);
  if (systemdCgroup) flags.push("--systemd-cgroup");
  return flags;
}

/** `<bundle>/pidfile`, joined like Rust's `Path::join` (no normalisation, no doubled slash). */
export function bundlePidFile(bundlePath: string): string {
  return joinPath(bundlePath, "pidfile");
}

/** argv for `runtime create` (spec §6.2). */
export function createArgs(cfg: RuntimeConfig, req: CreateArgsRequest): string[] {
  const args = defaultArgs(cfg, { containerId: req.id, systemdCgroup: req.systemdCgroup });
  args.push(...rootAndCgroupFlags(cfg, req.systemdCgroup));
  args.push(...req.globalArgs);
  args.push("create", "--bundle", req.bundlePath, "--pid-file", bundlePidFile(req.bundlePath));
  args.push(...req.commandArgs);
  if (req.consoleSocket !== undefined) args.push(`--console-socket=${req.consoleSocket}`);
  args.push(req.id);
  return args;
}

/**
 * argv for `runtime exec -d` (spec §8). Upstream passes no globalArgs, no `--process` JSON,
 * no env/cwd/user flags here; the command goes last, after the id.
 */
export function execArgs(cfg: RuntimeConfig, req: ExecArgsRequest): string[] {
  const args = defaultArgs(cfg, { containerId: req.id, systemdCgroup: req.systemdCgroup });
  args.push(...rootAndCgroupFlags(cfg, req.systemdCgroup));
  args.push("exec", "-d");
  if (req.consoleSocket !== undefined) args.push(`--console-socket=${req.consoleSocket}`, "--tty");
  args.push(`--pid-file=${req.pidFile}`);
  args.push(req.id);
  args.push(...req.command);
  return args;
}

// --- path helpers (pure string work, Rust `Path` semantics where they matter) ---

/** Last path component, ignoring trailing slashes, like Rust's `Path::file_name`. */
function fileName(path: string): string {
  const trimmed = path.replace(/\/+$/, "");
  const slash = trimmed.lastIndexOf("/");
  return slash === -1 ? trimmed : trimmed.slice(slash + 1);
}

/** Rust `PathBuf::join` for a relative `child`: adds a separator only when one is missing. */
function joinPath(base: string, child: string): string {
  if (base === "") return child;
  return base.endsWith("/") ? base + child : `${base}/${child}`;
}
