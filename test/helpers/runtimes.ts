// Which OCI runtimes the integration suites can use on this machine, and how to start them.
//
// The machine runs hybrid cgroups: cgroup v1 hierarchies on a tmpfs at /sys/fs/cgroup plus a
// cgroup2 mount at /sys/fs/cgroup/unified that carries `hugetlb`. runc copes. crun 1.8.1 refuses
// ("cgroups in hybrid mode not supported") before it even picks a cgroup manager. It works when
// started in a private mount namespace in which the unified mount is gone: it then sees pure
// cgroup v1. The suites therefore start the SERVER under `legacyNsPrefix()` for crun, and every
// runtime the server spawns inherits that namespace. There is no systemd here, so requests must
// say `cgroupManager: "cgroupfs"`.

import { existsSync, readFileSync } from "node:fs";

export type RuntimeName = "runc" | "crun";
export type Runtime = { name: RuntimeName; path: string };

/** Well-known install locations, used when the binary is not on PATH (e.g. /usr/sbin for non-root PATHs). */
const FALLBACK_PATHS: Record<RuntimeName, string[]> = {
  runc: ["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc"],
  crun: ["/usr/bin/crun", "/usr/local/bin/crun", "/usr/sbin/crun"],
};

function locate(name: RuntimeName): string | undefined {
  return Bun.which(name) ?? FALLBACK_PATHS[name].find((p) => existsSync(p));
}

/** The installed runtimes, runc first. */
export function runtimes(): Runtime[] {
  const found: Runtime[] = [];
  for (const name of ["runc", "crun"] as const) {
    const path = locate(name);
    if (path !== undefined) found.push({ name, path });
  }
  return found;
}

/** One runtime by name, or undefined when it is not installed. */
export function runtime(name: RuntimeName): Runtime | undefined {
  return runtimes().find((r) => r.name === name);
}

type Mount = { target: string; fstype: string };

/** Mounts visible to THIS process (its mount namespace), from /proc/self/mounts. */
function mounts(): Mount[] {
  return readFileSync("/proc/self/mounts", "utf8")
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => {
      const [, target, fstype] = line.split(" ");
      // /proc/self/mounts escapes spaces etc. as octal (\040); decode so paths compare.
      return { target: target!.replace(/\\(\d{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8))), fstype: fstype! };
    });
}

const CGROUP_ROOT = "/sys/fs/cgroup";
const UNIFIED = `${CGROUP_ROOT}/unified`;

/**
 * True when cgroup v1 and v2 are mounted side by side: a tmpfs at /sys/fs/cgroup with v1
 * hierarchies, plus cgroup2 at /sys/fs/cgroup/unified. This is crun's notion of "hybrid"
 * (it checks the file-system type of /sys/fs/cgroup/unified). Inside the legacy prefix the
 * unified mount is gone, so this returns false there.
 */
export function isHybridCgroup(): boolean {
  const all = mounts();
  // The last mount on a path wins (over-mounts hide earlier ones).
  const topmost = (target: string) => all.filter((m) => m.target === target).at(-1);
  const unified = topmost(UNIFIED);
  if (unified?.fstype !== "cgroup2") return false;
  const rootFs = topmost(CGROUP_ROOT)?.fstype;
  const hasV1 = all.some((m) => m.fstype === "cgroup" && m.target.startsWith(`${CGROUP_ROOT}/`));
  return rootFs === "tmpfs" && hasV1;
}

/** Controllers enabled in the unified hierarchy (why crun refuses: here it lists `hugetlb`). */
export function unifiedControllers(): string[] {
  try {
    return readFileSync(`${UNIFIED}/cgroup.controllers`, "utf8").split(/\s+/).filter(Boolean);
  } catch {
    return [];
  }
}

/**
 * The script run by the prefix. `unshare` without `--fork` and the `exec` here both replace
 * the process, so the pid of the final command is the pid that was spawned: tests can rely on
 * `proc.pid` being the server. The unmount failing is fatal (exit 125), because crun would
 * otherwise fail later with a far less obvious message.
 */
const LEGACY_NS_SCRIPT =
  `umount ${UNIFIED} || { echo "legacy-ns: cannot unmount ${UNIFIED}" >&2; exit 125; }; exec "$@"`;

/**
 * argv prefix that runs a command in a private mount namespace without /sys/fs/cgroup/unified
 * (so crun sees pure cgroup v1), or [] when the host is not hybrid. Usage:
 * `Bun.spawn([...legacyNsPrefix(), server, ...args])`.
 */
export function legacyNsPrefix(): string[] {
  if (!isHybridCgroup()) return [];
  const unshare = Bun.which("unshare") ?? "/usr/bin/unshare";
  return [unshare, "--mount", "--propagation", "private", "/bin/sh", "-c", LEGACY_NS_SCRIPT, "legacy-ns"];
}

/**
 * The prefix a given runtime needs: crun on a hybrid host needs the legacy namespace; runc
 * needs nothing. Start the server (or the runtime itself) with this in front.
 */
export function spawnPrefix(rt: Runtime | RuntimeName): string[] {
  const name = typeof rt === "string" ? rt : rt.name;
  return name === "crun" ? legacyNsPrefix() : [];
}

/** What every request in these suites must send: there is no systemd on this machine. */
export const CGROUP_MANAGER = "cgroupfs" as const;

const logLevelSupport = new Map<string, boolean>();

/**
 * Whether this crun understands `--log-level=`. Upstream conmon-rs passes it to crun when the
 * server's log level is debug, warn or error, but crun 1.8.1 (this machine) predates the flag
 * and exits 64 ("unrecognized option"). Suites that drive crun must therefore run the server
 * at info/trace/off unless this returns true.
 */
export function crunSupportsLogLevel(crunPath: string): boolean {
  let supported = logLevelSupport.get(crunPath);
  if (supported === undefined) {
    const probe = Bun.spawnSync([crunPath, "--log-level=error", "--version"], { stdout: "ignore", stderr: "ignore" });
    supported = probe.exitCode === 0;
    logLevelSupport.set(crunPath, supported);
  }
  return supported;
}
