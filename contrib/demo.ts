// `make demo`: a container's whole life under conmonrs, narrated. Run as root on Debian/Ubuntu.
//   1. start a monitor in a temp runtime dir (as CRI-O would: launcher, pidfile, version probe)
//   2. build a busybox bundle
//   3. create the container through the RPC, start it with the runtime
//   4. exec into it (exec-sync) and show the CRI log and the exit file
// DEMO_RUNTIME=/usr/bin/crun picks crun (on a hybrid-cgroup host crun needs a private mount
// namespace without /sys/fs/cgroup/unified; see docs/usage.md).
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync, copyFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConmonClient, CgroupManager } from "../src/client/index.ts";

const root = join(import.meta.dir, "..");
const binary = join(root, "dist/conmonrs");
const runtimePath = process.env.DEMO_RUNTIME ?? "/usr/sbin/runc";
const say = (msg: string) => console.log(`\x1b[1m==> ${msg}\x1b[0m`);

function bundle(dir: string, args: string[]): void {
  const rootfs = join(dir, "rootfs");
  for (const d of ["bin", "proc", "dev", "sys", "tmp"]) mkdirSync(join(rootfs, d), { recursive: true });
  copyFileSync("/bin/busybox", join(rootfs, "bin/busybox"));
  for (const applet of ["sh", "echo", "sleep", "cat", "ls", "hostname", "uname"]) symlinkSync("busybox", join(rootfs, "bin", applet));
  const config = {
    ociVersion: "1.0.2",
    process: { terminal: false, user: { uid: 0, gid: 0 }, args, env: ["PATH=/bin"], cwd: "/", noNewPrivileges: true },
    root: { path: "rootfs" },
    hostname: "demo",
    mounts: [
      { destination: "/proc", type: "proc", source: "proc" },
      { destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"] },
    ],
    linux: { namespaces: [{ type: "pid" }, { type: "ipc" }, { type: "uts" }, { type: "mount" }] },
  };
  writeFileSync(join(dir, "config.json"), JSON.stringify(config, null, 2));
}

async function run(argv: string[]): Promise<void> {
  const proc = Bun.spawn(argv, { stdio: ["ignore", "inherit", "inherit"] });
  if ((await proc.exited) !== 0) throw new Error(`${argv.join(" ")} failed`);
}

const work = mkdtempSync(join(tmpdir(), "conmonrs-demo-"));
const runDir = join(work, "run");
const id = `demo-${Date.now().toString(16)}`;
let client: ConmonClient | undefined;
try {
  if (!existsSync(binary)) throw new Error(`${binary} missing: run make build`);
  say(`Starting a pod monitor: ${binary} --runtime ${runtimePath} --runtime-dir ${runDir}`);
  client = await ConmonClient.new({ conmonServerPath: binary, runtime: runtimePath, serverRunDir: runDir, runtimeRoot: join(work, "runtime-root"), logDriver: "none" });
  const v = await client.version();
  console.log(`    conmonrs ${v.version} (commit ${v.commit.slice(0, 12)}, ${v.rustVersion}) serving as pid ${v.processId}`);

  say("Building a busybox bundle");
  const bundleDir = join(work, "bundle");
  bundle(bundleDir, ["sh", "-c", "echo hello from $(hostname); for i in 1 2 3; do echo tick $i; sleep 0.3; done; echo bye >&2"]);
  console.log(`    ${bundleDir}`);

  say("createContainer over Cap'n Proto RPC (runtime create, stdio held by the monitor)");
  const logPath = join(work, "ctr.log");
  const exitPath = join(work, "exit");
  const { pid } = await client.createContainer({
    id,
    bundlePath: bundleDir,
    exitPaths: [exitPath],
    logDrivers: [{ type: "cri", path: logPath }],
    cgroupManager: CgroupManager.cgroupfs,
  });
  console.log(`    container ${id} created, init pid ${pid}`);

  say(`${runtimePath} start ${id}`);
  await run([runtimePath, `--root=${join(work, "runtime-root")}`, "start", id]);

  say("execSyncContainer: uname -a inside the container");
  const r = await client.execSyncContainer({ id, command: ["uname", "-a"], timeoutSec: 5, cgroupManager: CgroupManager.cgroupfs });
  console.log(`    exit ${r.exitCode}: ${new TextDecoder().decode(r.stdout).trim()}`);

  say("Waiting for the container to exit");
  while (!existsSync(exitPath)) await Bun.sleep(20);
  console.log(`    exit file ${exitPath}: ${readFileSync(exitPath, "utf8")}`);

  say(`CRI log ${logPath}`);
  process.stdout.write(`${readFileSync(logPath, "utf8").trimEnd().replace(/^/gm, "    ")}\n`);
} finally {
  say("Stopping the monitor and cleaning up");
  await Bun.spawn([runtimePath, `--root=${join(work, "runtime-root")}`, "delete", "--force", id], { stdio: ["ignore", "ignore", "ignore"] }).exited;
  await client?.shutdown();
  rmSync(work, { recursive: true, force: true });
}
