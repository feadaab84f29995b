// createNamespaces and `conmonrs pause`, with the compiled binary, our client and runc: the pins
// are nsfs bind mounts of the right namespaces, a container joins them, user namespaces get the
// maps, failures carry upstream's texts, repeats are idempotent, and shutdown leaves nothing.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CgroupManager, RemoteError } from "../../src/client/index.ts";
import { createNamespaces, ERR_MISSING_ID_MAPPINGS, Namespace } from "../../src/client/namespaces.ts";
import { Conmon_Namespace } from "../../schema/conmon.ts";
import { makeBundle } from "../helpers/bundle.ts";
import { childrenOf, pidExists, procState, removeDir, tmpDir, uniqueId, waitFor } from "../helpers/proc.ts";
import { runtime } from "../helpers/runtimes.ts";
import { startServer, type TestServer } from "../helpers/server.ts";

const runc = runtime("runc");
const NAMES = ["ipc", "pid", "net", "user", "uts"] as const;
type NsName = (typeof NAMES)[number];
const ROOT_MAP = [{ containerId: 0, hostId: 0, size: 1 }];

/** `net:[4026531833]` → 4026531833. */
function nsInode(link: string): number {
  const m = /^\w+:\[(\d+)\]$/.exec(link);
  if (!m) throw new Error(`not a namespace link: ${link}`);
  return Number(m[1]);
}

function procNs(pid: number, ns: NsName): number {
  return nsInode(readlinkSync(`/proc/${pid}/ns/${ns}`));
}

function pinPath(base: string, ns: NsName, podId: string): string {
  return join(base, `${ns}ns`, podId);
}

function pidFile(base: string, podId: string): string {
  return join(base, "conmonrs", `${podId}.pid`);
}

function pausePid(base: string, podId: string): number {
  const text = readFileSync(pidFile(base, podId), "utf8");
  expect(text).toMatch(/^\d+$/); // bare digits, no newline
  return Number(text);
}

/** Mount points at or below `dir`, as `mountinfo` of `pid` lists them. */
function mountsUnder(dir: string, pid: number | "self" = "self"): Array<{ target: string; source: string; fstype: string }> {
  return readFileSync(`/proc/${pid}/mountinfo`, "utf8")
    .split("\n")
    .filter((l) => l !== "")
    .map((line) => {
      const fields = line.split(" ");
      const dash = fields.indexOf("-");
      return { target: fields[4]!, source: fields[3]!, fstype: fields[dash + 1]! };
    })
    .filter((m) => m.target === dir || m.target.startsWith(`${dir}/`));
}

/** Last field of NSpid: the pid in the process's own (innermost) PID namespace. */
function innermostPid(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("NSpid:"))!;
  return Number(line.trim().split(/\s+/).at(-1));
}

function statusKiB(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) : NaN;
}

/** Processes the server started for pod `podId` (the pause, or unshare(1) in front of it). */
function pauseChildren(serverPid: number, podId: string): number[] {
  return childrenOf(serverPid).filter((pid) => {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      return argv.includes("pause") && argv.includes(`--pod-id=${podId}`);
    } catch {
      return false;
    }
  });
}

/** Last-resort cleanup so a failing test never leaves mounts behind. */
function unmountEverythingUnder(dir: string): void {
  for (const m of mountsUnder(dir).reverse()) Bun.spawnSync(["umount", "-l", m.target]);
}

describe.skipIf(!runc || process.getuid?.() !== 0)("createNamespaces with runc", () => {
  let server: TestServer;
  let work: string;
  let base: string;
  const serverPid = () => server.client.pid;

  beforeAll(async () => {
    work = tmpDir("ns-runc");
    base = join(work, "base");
    server = await startServer(runc!, { runtimeRoot: join(work, "root"), logLevel: "info" });
  });

  afterAll(async () => {
    await server?.stop();
    unmountEverythingUnder(work);
    removeDir(work);
  });

  test("ipc, net, pid and uts are pinned; user is the server's; a runc container joins the pins", async () => {
    const podId = uniqueId("pod-");
    const res = await createNamespaces(server.client, {
      podId,
      basePath: base,
      namespaces: [Namespace.ipc, Namespace.net, Namespace.pid, Namespace.uts],
    });
    // Always all five, in upstream's order, with the Go client's constants.
    expect(res.namespaces.map((n) => n.type)).toEqual([Namespace.ipc, Namespace.pid, Namespace.net, Namespace.user, Namespace.uts]);
    expect(res.namespaces.map((n) => n.path)).toEqual(NAMES.map((ns) => pinPath(base, ns, podId)));

    const pid = pausePid(base, podId);
    expect(pidExists(pid)).toBe(true);
    // The pause is the init of the pod's PID namespace, as upstream's forked child is.
    expect(innermostPid(pid)).toBe(1);
    for (const ns of NAMES) {
      const path = pinPath(base, ns, podId);
      const st = lstatSync(path);
      expect(st.isDirectory()).toBe(false);
      expect(st.size).toBe(0);
      expect(st.mode & 0o7777).toBe(0o444); // what nsfs reports, as upstream's test expects
      expect(mountsUnder(path)).toEqual([{ target: path, source: `${ns}:[${st.ino}]`, fstype: "nsfs" }]);
      expect(st.ino).toBe(procNs(pid, ns));
      if (ns === "user") expect(st.ino).toBe(procNs(serverPid(), ns));
      else expect(st.ino).not.toBe(procNs(serverPid(), ns));
    }

    const bundle = await makeBundle({
      args: ["sleep", "100"],
      namespaces: [
        { type: "ipc", path: pinPath(base, "ipc", podId) },
        { type: "network", path: pinPath(base, "net", podId) },
        { type: "uts", path: pinPath(base, "uts", podId) },
        { type: "pid", path: pinPath(base, "pid", podId) },
      ],
    });
    const id = uniqueId("ns-");
    const runcCmd = (...args: string[]) =>
      Bun.spawnSync([runc!.path, `--root=${join(work, "root")}`, ...args], { stdout: "ignore", stderr: "pipe" });
    try {
      const { pid: ctr } = await server.client.createContainer({
        id,
        bundlePath: bundle.dir,
        exitPaths: [join(work, `${id}.exit`)],
        cgroupManager: CgroupManager.cgroupfs,
      });
      const start = runcCmd("start", id);
      expect(start.stderr.toString()).toBe("");
      for (const ns of ["ipc", "net", "uts", "pid"] as const) {
        expect(procNs(ctr, ns)).toBe(statSync(pinPath(base, ns, podId)).ino);
      }
      expect(innermostPid(ctr)).not.toBe(1); // pid 1 of that namespace is the pause
    } finally {
      runcCmd("delete", "--force", id);
      await bundle.cleanup();
    }
  });

  test("the same pod id twice is idempotent: same paths, same pause, no second process", async () => {
    const podId = uniqueId("pod-");
    const cfg = { podId, basePath: base, namespaces: [Namespace.net, Namespace.uts] };
    const first = await createNamespaces(server.client, cfg);
    const pid = pausePid(base, podId);
    const inode = statSync(pinPath(base, "net", podId)).ino;
    // Concurrent repeats too: both wait for the one start.
    const [second, third] = await Promise.all([
      createNamespaces(server.client, cfg),
      createNamespaces(server.client, { ...cfg, namespaces: [Namespace.ipc] }),
    ]);
    expect(second).toEqual(first);
    expect(third).toEqual(first);
    expect(pausePid(base, podId)).toBe(pid);
    expect(statSync(pinPath(base, "net", podId)).ino).toBe(inode);
    expect(pauseChildren(serverPid(), podId)).toHaveLength(1);
    expect(mountsUnder(pinPath(base, "net", podId))).toHaveLength(1);
  });

  test("a repeat after the pause died pins the pod afresh (old pins removed first)", async () => {
    const podId = uniqueId("pod-");
    const cfg = { podId, basePath: base, namespaces: [Namespace.net] };
    await createNamespaces(server.client, cfg);
    const oldPid = pausePid(base, podId);
    process.kill(oldPid, "SIGKILL");
    // Dead means exited (zombie) or reaped; a SIGKILLed process is briefly neither.
    await waitFor(() => ["Z", undefined].includes(procState(oldPid)), 5000, "the pause to die");
    await createNamespaces(server.client, cfg);
    const newPid = pausePid(base, podId);
    expect(newPid).not.toBe(oldPid);
    expect(pidExists(newPid)).toBe(true);
    // (Not compared with the old inode: the old namespace is freed and nsfs reuses inode numbers.)
    expect(statSync(pinPath(base, "net", podId)).ino).toBe(procNs(newPid, "net"));
    expect(mountsUnder(pinPath(base, "net", podId))).toHaveLength(1); // the old pin is gone, not stacked
    expect(pauseChildren(serverPid(), podId)).toHaveLength(1);
  });

  test("a second pod id gets its own pause process and namespaces", async () => {
    const [podA, podB] = [uniqueId("pod-"), uniqueId("pod-")];
    await createNamespaces(server.client, { podId: podA, basePath: base, namespaces: [Namespace.net] });
    await createNamespaces(server.client, { podId: podB, basePath: base, namespaces: [Namespace.net] });
    const [pidA, pidB] = [pausePid(base, podA), pausePid(base, podB)];
    expect(pidA).not.toBe(pidB);
    expect(pidExists(pidA) && pidExists(pidB)).toBe(true);
    expect(pauseChildren(serverPid(), podA)).toHaveLength(1);
    expect(pauseChildren(serverPid(), podB)).toHaveLength(1);
    expect(statSync(pinPath(base, "net", podA)).ino).not.toBe(statSync(pinPath(base, "net", podB)).ino);
  });

  test("user namespace with 0 0 1 maps: written by the server, mounts only inside the pause's mount namespace", async () => {
    const podId = uniqueId("pod-");
    const userBase = join(work, "userbase");
    const res = await createNamespaces(server.client, {
      podId,
      basePath: userBase,
      namespaces: [Namespace.user, Namespace.ipc, Namespace.net, Namespace.uts],
      uidMappings: ROOT_MAP,
      gidMappings: ROOT_MAP,
    });
    expect(res.namespaces.map((n) => n.path)).toEqual(NAMES.map((ns) => pinPath(userBase, ns, podId)));
    const pid = pausePid(userBase, podId);
    expect(readFileSync(`/proc/${pid}/uid_map`, "utf8").trim().split(/\s+/)).toEqual(["0", "0", "1"]);
    expect(readFileSync(`/proc/${pid}/gid_map`, "utf8").trim().split(/\s+/)).toEqual(["0", "0", "1"]);
    for (const ns of ["user", "ipc", "net", "uts"] as const) expect(procNs(pid, ns)).not.toBe(procNs(serverPid(), ns));
    expect(procNs(pid, "pid")).toBe(procNs(serverPid(), "pid"));
    expect(procNs(pid, "mnt" as NsName)).not.toBe(procNs(serverPid(), "mnt" as NsName));

    // The host sees only the empty files...
    expect(mountsUnder(userBase)).toEqual([]);
    for (const ns of NAMES) {
      const st = lstatSync(pinPath(userBase, ns, podId));
      expect(st.isFile() && st.size === 0).toBe(true);
    }
    // ...the pause's mount namespace has the five nsfs pins of its own namespaces.
    const inside = mountsUnder(userBase, pid);
    expect(inside.map((m) => m.target).sort()).toEqual(NAMES.map((ns) => pinPath(userBase, ns, podId)).sort());
    for (const ns of NAMES) {
      expect(inside.find((m) => m.target === pinPath(userBase, ns, podId))).toEqual({
        target: pinPath(userBase, ns, podId),
        source: `${ns}:[${procNs(pid, ns)}]`,
        fstype: "nsfs",
      });
    }
  });

  test("user + pid: unshare(1) makes the pause pid 1 of a PID namespace owned by the new user namespace", async () => {
    const podId = uniqueId("pod-");
    await createNamespaces(server.client, {
      podId,
      basePath: base,
      namespaces: [Namespace.user, Namespace.pid],
      uidMappings: ROOT_MAP,
      gidMappings: ROOT_MAP,
    });
    const pid = pausePid(base, podId);
    expect(innermostPid(pid)).toBe(1);
    expect(procNs(pid, "pid")).not.toBe(procNs(serverPid(), "pid"));
    expect(procNs(pid, "user")).not.toBe(procNs(serverPid(), "user"));
    const inside = mountsUnder(pinPath(base, "pid", podId), pid);
    expect(inside).toEqual([{ target: pinPath(base, "pid", podId), source: `pid:[${procNs(pid, "pid")}]`, fstype: "nsfs" }]);
  });

  test("pause processes stay small (RSS reported)", async () => {
    const podId = uniqueId("pod-");
    await createNamespaces(server.client, { podId, basePath: base, namespaces: [Namespace.ipc, Namespace.net, Namespace.uts] });
    const pid = pausePid(base, podId);
    await Bun.sleep(200);
    const rss = { VmRSS: statusKiB(pid, "VmRSS"), RssAnon: statusKiB(pid, "RssAnon"), RssFile: statusKiB(pid, "RssFile") };
    console.log(`pause RSS (KiB): ${JSON.stringify(rss)}`);
    // A whole Bun process: mostly file-backed pages of the binary, shared with the server.
    expect(rss.RssAnon).toBeLessThan(32 * 1024);
    expect(rss.VmRSS).toBeLessThan(96 * 1024);
  });

  test("errors: upstream's texts, client-side refusal, and a pause that dies does not hang the RPC", async () => {
    const raw = (fill: (req: any) => void) => server.client.call(6, fill, () => undefined);
    await expect(createNamespaces(server.client, { podId: "", basePath: base, namespaces: [] })).rejects.toThrow("no pod ID provided");
    await expect(
      createNamespaces(server.client, { podId: "p", basePath: base, namespaces: [Namespace.user], uidMappings: ROOT_MAP }),
    ).rejects.toThrow(ERR_MISSING_ID_MAPPINGS);

    const user = (req: any) => {
      req._initNamespaces(1).set(0, Conmon_Namespace.USER);
      req.basePath = base;
      req.podId = uniqueId("pod-");
    };
    await expect(raw(user)).rejects.toThrow("init pause: user ID mappings are empty");
    await expect(
      raw((req) => {
        user(req);
        req._initUidMappings(1).set(0, "0 0 1");
      }),
    ).rejects.toThrow("init pause: group ID mappings are empty");
    await expect(
      raw((req) => {
        user(req);
        req._initUidMappings(1).set(0, "0 0");
        req._initGidMappings(1).set(0, "0 0 1");
      }),
    ).rejects.toThrow("init pause: mapping '0 0' has wrong format, expected 'CONTAINER_ID HOST_ID SIZE'");
    await expect(
      raw((req) => {
        req.podId = "../escape";
        req.basePath = base;
      }),
    ).rejects.toThrow("invalid pod ID");

    // <base>/ipcns is a file, so the pause cannot create its pin and exits 1.
    const broken = join(work, "broken");
    mkdirSync(broken, { recursive: true });
    writeFileSync(join(broken, "ipcns"), "");
    const podId = uniqueId("pod-");
    const err = await createNamespaces(server.client, { podId, basePath: broken, namespaces: [Namespace.net] }).catch((e) => e);
    expect(err).toBeInstanceOf(RemoteError);
    expect(err.message).toContain("init pause: exit status not ok: exit status: 1");
    expect(existsSync(pidFile(broken, podId))).toBe(false);
    expect(mountsUnder(broken)).toEqual([]);
    expect(pauseChildren(serverPid(), podId)).toEqual([]);
    // The server still works afterwards.
    expect((await server.client.version()).processId).toBe(serverPid());
  });
});

describe.skipIf(!runc || process.getuid?.() !== 0)("createNamespaces at server shutdown", () => {
  test("shutdown unmounts and removes every pin and pid file, and stops every pause", async () => {
    const work = tmpDir("ns-shutdown");
    const base = join(work, "base");
    const server = await startServer(runc!, { logLevel: "info" });
    try {
      const plain = uniqueId("pod-");
      const user = uniqueId("pod-");
      await createNamespaces(server.client, {
        podId: plain,
        basePath: base,
        namespaces: [Namespace.ipc, Namespace.net, Namespace.pid, Namespace.uts],
      });
      await createNamespaces(server.client, {
        podId: user,
        basePath: base,
        namespaces: [Namespace.user, Namespace.net],
        uidMappings: ROOT_MAP,
        gidMappings: ROOT_MAP,
      });
      const pids = [pausePid(base, plain), pausePid(base, user)];
      expect(mountsUnder(base)).toHaveLength(5);
      await server.stop();
      expect(mountsUnder(base)).toEqual([]);
      for (const podId of [plain, user]) {
        for (const ns of NAMES) expect(existsSync(pinPath(base, ns, podId))).toBe(false);
        expect(existsSync(pidFile(base, podId))).toBe(false);
      }
      await waitFor(() => pids.every((pid) => !pidExists(pid)), 5000, "pause processes to be gone");
    } finally {
      await server.stop().catch(() => {});
      unmountEverythingUnder(work);
      removeDir(work);
    }
  });
});
