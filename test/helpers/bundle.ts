// OCI bundles built at test time: a busybox-static rootfs and a config.json generated here.
//
// The busybox binary and its applet list are prepared once into a cache directory shared by
// all test processes (<base>/conmon-ts-rootfs-<hash>). Each bundle then gets its own rootfs
// whose /bin/busybox is a hard link to the cached copy (never to the host's /bin/busybox, so a
// container writing to its binary cannot damage the host) plus one symlink per applet. That
// keeps bundles independent: removing one never affects another. (Bundles do share that one
// inode, so a test must not write INTO /bin/busybox; replacing or deleting it is fine.)
//
// <base> is /dev/shm when it is an exec-able tmpfs: on this VM's ext4 a symlink or mkdir costs
// 0.7-2.5 ms under load (270 applets → up to 0.7 s per bundle), on tmpfs about 10 µs.
// CONMON_TS_BUNDLE_DIR overrides it; the fallback is the system temp dir.

import { createHash, randomBytes } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Source of the rootfs binary: Debian's busybox-static. Must be statically linked. */
const BUSYBOX = process.env.CONMON_TS_BUSYBOX ?? "/bin/busybox";

/** Bump when the cached layout changes, so stale caches are not reused. */
const CACHE_LAYOUT = 1;

/** Applets the suites rely on; a busybox without them is rejected up front. */
const REQUIRED_APPLETS = [
  "sh", "echo", "cat", "sleep", "yes", "head", "tail", "stty", "watch", "nc", "true", "false",
  "printf", "ls", "env", "id", "httpd", "kill", "ps", "dd", "wc", "tr", "seq",
];

export type Namespace = { type: string; path?: string };

export type BundleOptions = {
  /** process.args */
  args: string[];
  /** process.terminal (default false) */
  terminal?: boolean;
  /** Extra env entries; an entry replaces a default of the same name (PATH, HOME, TERM). */
  env?: string[];
  /** linux.resources.memory.limit in bytes; swap is set to the same value (no swap allowed). */
  memoryLimit?: number;
  /**
   * Namespaces merged into the defaults (pid, ipc, uts, mount) by type: an entry with a known
   * type replaces it (e.g. to join a pod's ipc namespace by path), others are added
   * (e.g. `{ type: "network" }`; there is none by default, so no CNI is needed).
   */
  namespaces?: Namespace[];
  /** process.cwd (default "/") */
  cwd?: string;
  /** Bundle directory to use (created if missing); default: a fresh dir under bundleBaseDir(). Cleanup removes it. */
  dir?: string;
  /** Last-minute edits to the generated config (seccomp, hooks, ...), before it is written. */
  patch?: (config: OciConfig) => void;
};

export type Bundle = {
  dir: string;
  rootfs: string;
  config: OciConfig;
  /** Removes the bundle directory; safe to call more than once. */
  cleanup(): Promise<void>;
};

// A deliberately loose shape: enough to type what we generate, open for `patch`.
export type OciConfig = {
  ociVersion: string;
  process: {
    terminal: boolean;
    user: { uid: number; gid: number };
    args: string[];
    env: string[];
    cwd: string;
    capabilities: Record<"bounding" | "effective" | "permitted" | "ambient", string[]>;
    rlimits: Array<{ type: string; hard: number; soft: number }>;
    noNewPrivileges: boolean;
    [key: string]: unknown;
  };
  root: { path: string; readonly: boolean };
  hostname: string;
  mounts: Array<{ destination: string; type: string; source: string; options?: string[] }>;
  linux: {
    resources: {
      devices: Array<{ allow: boolean; access: string; type?: string; major?: number; minor?: number }>;
      memory?: { limit: number; swap: number };
      [key: string]: unknown;
    };
    namespaces: Namespace[];
    maskedPaths: string[];
    readonlyPaths: string[];
    [key: string]: unknown;
  };
  [key: string]: unknown;
};

// --- config.json ------------------------------------------------------------------------------

const DEFAULT_ENV = ["PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/root"];

/** Same three capabilities `runc spec` grants: enough for busybox, nothing dangerous. */
const DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

/** Defaults first, then overrides; an override replaces the entry with the same name. */
function mergeEnv(defaults: string[], overrides: string[]): string[] {
  const byName = new Map<string, string>();
  for (const entry of [...defaults, ...overrides]) {
    const eq = entry.indexOf("=");
    byName.set(eq === -1 ? entry : entry.slice(0, eq), entry);
  }
  return [...byName.values()];
}

function mergeNamespaces(defaults: Namespace[], extra: Namespace[]): Namespace[] {
  const merged = defaults.map((ns) => ({ ...ns }));
  for (const ns of extra) {
    const i = merged.findIndex((m) => m.type === ns.type);
    if (i === -1) merged.push({ ...ns });
    else merged[i] = { ...ns };
  }
  return merged;
}

/**
 * The config.json for `opts`: what `runc spec` produces (OCI runtime spec 1.0), adjusted for
 * tests: writable rootfs, no network namespace, the requested args/env/cwd/terminal/memory.
 */
export function bundleConfig(opts: BundleOptions): OciConfig {
  const terminal = opts.terminal ?? false;
  const caps = () => [...DEFAULT_CAPS];
  const config: OciConfig = {
    ociVersion: "1.0.2",
    process: {
      terminal,
      user: { uid: 0, gid: 0 },
      args: [...opts.args],
      env: mergeEnv(terminal ? [...DEFAULT_ENV, "TERM=xterm"] : DEFAULT_ENV, opts.env ?? []),
      cwd: opts.cwd ?? "/",
      capabilities: { bounding: caps(), effective: caps(), permitted: caps(), ambient: caps() },
      rlimits: [{ type: "RLIMIT_NOFILE", hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    root: { path: "rootfs", readonly: false },
    hostname: "conmon-ts",
    mounts: [
      { destination: "/proc", type: "proc", source: "proc" },
      { destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"] },
      {
        destination: "/dev/pts",
        type: "devpts",
        source: "devpts",
        options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
      },
      { destination: "/dev/shm", type: "tmpfs", source: "shm", options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
      { destination: "/dev/mqueue", type: "mqueue", source: "mqueue", options: ["nosuid", "noexec", "nodev"] },
      { destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"] },
      { destination: "/sys/fs/cgroup", type: "cgroup", source: "cgroup", options: ["nosuid", "noexec", "nodev", "relatime", "ro"] },
    ],
    linux: {
      // Deny every device by default; the runtimes add their standard set (null, zero, tty, ...).
      resources: { devices: [{ allow: false, access: "rwm" }] },
      namespaces: mergeNamespaces([{ type: "pid" }, { type: "ipc" }, { type: "uts" }, { type: "mount" }], opts.namespaces ?? []),
      maskedPaths: [
        "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
        "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
      ],
      readonlyPaths: ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    },
  };
  if (opts.memoryLimit !== undefined) {
    if (!Number.isSafeInteger(opts.memoryLimit) || opts.memoryLimit <= 0) {
      throw new Error(`memoryLimit must be a positive integer number of bytes, got ${opts.memoryLimit}`);
    }
    // OCI `swap` is memory+swap (memsw in cgroup v1): equal to the limit means no swap at all,
    // so an over-limit container is OOM-killed instead of swapping.
    config.linux.resources.memory = { limit: opts.memoryLimit, swap: opts.memoryLimit };
  }
  opts.patch?.(config);
  return config;
}

// --- where bundles live ------------------------------------------------------------------------

let baseDir: string | undefined;

/** True when `path` is the mount point of a tmpfs that allows exec (busybox must run from it). */
function isExecTmpfs(path: string): boolean {
  const mounts = readFileSync("/proc/self/mounts", "utf8").split("\n");
  // The last entry for a mount point is the one in effect.
  const entry = mounts.filter((line) => line.split(" ")[1] === path).at(-1);
  if (entry === undefined) return false;
  const [, , fstype, options] = entry.split(" ");
  return fstype === "tmpfs" && !options!.split(",").includes("noexec");
}

/** Directory under which bundles and the rootfs cache are created (see the header comment). */
export function bundleBaseDir(): string {
  if (baseDir !== undefined) return baseDir;
  const override = process.env.CONMON_TS_BUNDLE_DIR;
  if (override) baseDir = override;
  else if (isExecTmpfs("/dev/shm")) baseDir = "/dev/shm";
  else baseDir = tmpdir();
  return baseDir;
}

// --- rootfs cache -------------------------------------------------------------------------------

type RootfsTemplate = { busybox: string; applets: string[] };
let template: RootfsTemplate | undefined;

/** True when the ELF file has a PT_INTERP program header, i.e. needs a dynamic loader. */
function isDynamicElf(bytes: Buffer): boolean {
  if (bytes.readUInt32BE(0) !== 0x7f454c46) throw new Error("not an ELF file");
  if (bytes[4] !== 2 || bytes[5] !== 1) return false; // only 64-bit little-endian is inspected
  const phoff = Number(bytes.readBigUInt64LE(0x20));
  const phentsize = bytes.readUInt16LE(0x36);
  const phnum = bytes.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    if (bytes.readUInt32LE(phoff + i * phentsize) === 3 /* PT_INTERP */) return true;
  }
  return false;
}

function listApplets(busybox: string): string[] {
  const run = Bun.spawnSync([busybox, "--list"], { stdout: "pipe", stderr: "pipe" });
  if (run.exitCode !== 0) {
    throw new Error(`${busybox} --list failed (exit ${run.exitCode}): ${run.stderr.toString().trim()}`);
  }
  // Only plain names: an applet is a file in /bin, and "busybox" itself is the binary.
  const applets = run.stdout
    .toString()
    .split("\n")
    .map((a) => a.trim())
    .filter((a) => a !== "" && a !== "busybox" && !a.includes("/"));
  const missing = REQUIRED_APPLETS.filter((a) => !applets.includes(a));
  if (missing.length > 0) throw new Error(`${busybox} lacks applets the tests need: ${missing.join(", ")}`);
  return applets;
}

/** Build the cache (once per machine and busybox version) and return it. */
function rootfsTemplate(): RootfsTemplate {
  // Re-check the cached binary: a temp-dir cleaner may have removed the cache since we built it.
  if (template !== undefined && existsSync(template.busybox)) return template;
  let st;
  try {
    st = statSync(BUSYBOX);
  } catch (err) {
    throw new Error(`busybox not found at ${BUSYBOX} (install busybox-static): ${(err as Error).message}`);
  }
  const key = createHash("sha256")
    .update(`${CACHE_LAYOUT}\0${BUSYBOX}\0${st.size}\0${st.mtimeMs}\0${st.ino}`)
    .digest("hex")
    .slice(0, 16);
  const cache = join(bundleBaseDir(), `conmon-ts-rootfs-${key}`);
  const busybox = join(cache, "busybox");
  const appletsFile = join(cache, "applets");

  if (!existsSync(appletsFile)) {
    if (isDynamicElf(readFileSync(BUSYBOX))) {
      throw new Error(`${BUSYBOX} is dynamically linked; the container rootfs needs busybox-static`);
    }
    // Build in a private directory and rename it into place: concurrent test processes race
    // here, and a reader must never see a half-written cache. `applets` is written last and is
    // the marker that the cache is complete.
    const staging = `${cache}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
    try {
      mkdirSync(staging, { recursive: true });
      copyFileSync(BUSYBOX, join(staging, "busybox"));
      chmodSync(join(staging, "busybox"), 0o755);
      const applets = listApplets(join(staging, "busybox"));
      writeFileSync(join(staging, "applets"), applets.join("\n") + "\n");
      try {
        renameSync(staging, cache);
      } catch (err) {
        // Lost the race (the target exists and is complete) or an old broken cache is in the way.
        if (!existsSync(appletsFile)) throw new Error(`installing rootfs cache ${cache}: ${(err as Error).message}`);
      }
    } finally {
      rmSync(staging, { recursive: true, force: true });
    }
  }
  const applets = readFileSync(appletsFile, "utf8").split("\n").filter(Boolean);
  template = { busybox, applets };
  return template;
}

/** Hard link when possible (same file system), copy otherwise. */
function linkOrCopy(from: string, to: string): void {
  try {
    linkSync(from, to);
  } catch {
    copyFileSync(from, to);
    chmodSync(to, 0o755);
  }
}

function populateRootfs(rootfs: string): void {
  const tpl = rootfsTemplate();
  for (const d of ["bin", "proc", "dev", "sys", "tmp", "etc", "root", "usr", "run", "var"]) {
    mkdirSync(join(rootfs, d), { recursive: true });
  }
  chmodSync(join(rootfs, "tmp"), 0o1777); // mkdir's mode is filtered by the umask
  linkOrCopy(tpl.busybox, join(rootfs, "bin", "busybox"));
  for (const applet of tpl.applets) symlinkSync("busybox", join(rootfs, "bin", applet));
  // Everything on PATH resolves to /bin; /busybox is where upstream's tests expect the binary.
  symlinkSync("bin", join(rootfs, "sbin"));
  symlinkSync("../bin", join(rootfs, "usr", "bin"));
  symlinkSync("../bin", join(rootfs, "usr", "sbin"));
  symlinkSync("bin/busybox", join(rootfs, "busybox"));
  writeFileSync(join(rootfs, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n");
  writeFileSync(join(rootfs, "etc", "group"), "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n");
  writeFileSync(join(rootfs, "etc", "hosts"), "127.0.0.1 localhost conmon-ts\n");
}

// --- bundles ------------------------------------------------------------------------------------

/** Build a bundle (rootfs + config.json) and return it with its cleanup. */
export async function makeBundle(opts: BundleOptions): Promise<Bundle> {
  const config = bundleConfig(opts); // validates options before touching the disk
  const dir = opts.dir ?? mkdtempSync(join(bundleBaseDir(), "conmon-ts-bundle-"));
  const rootfs = join(dir, "rootfs");
  const cleanup = async () => rmSync(dir, { recursive: true, force: true });
  try {
    mkdirSync(rootfs, { recursive: true });
    populateRootfs(rootfs);
    writeFileSync(join(dir, "config.json"), JSON.stringify(config, null, 2) + "\n");
  } catch (err) {
    await cleanup();
    throw new Error(`building bundle in ${dir}: ${(err as Error).message}`);
  }
  return { dir, rootfs, config, cleanup };
}
