import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MNT_DETACH, SysError, listOpenFds, mountBind, umount } from "../../ffi/index.ts";
import { leakedFds, thrown } from "../helpers/fds.ts";

const ffiDir = new URL("../../ffi/index.ts", import.meta.url).pathname;

let dir: string;
let fdsBefore: number[];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "ffi-ns-"));
  fdsBefore = listOpenFds();
});
afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
  expect(await leakedFds(fdsBefore)).toEqual([]);
});

/** Runs `body` (TypeScript, with the ffi exports imported as needed) in a fresh bun process, so
 * namespace and credential changes never touch the test runner. Returns its stdout lines. */
async function inChild(imports: string, body: string): Promise<string[]> {
  const script = `import { ${imports} } from ${JSON.stringify(ffiDir)};\n${body}`;
  const child = Bun.spawn(["bun", "-e", script], { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  if (code !== 0) throw new Error(`child failed (${code}): ${err}`);
  return out.trim().split("\n");
}

function isMounted(path: string): boolean {
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .some((line) => line.split(" ")[4] === path);
}

describe("namespaces", () => {
  test("unshare(UTS|IPC|NET) gives new namespaces; setns goes back", async () => {
    const lines = await inChild(
      "unshare, setns, openFd, closeFd, O, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWNET",
      `import { readlinkSync } from "node:fs";
       const ns = (t) => readlinkSync("/proc/self/ns/" + t);
       const before = ["uts", "ipc", "net"].map(ns);
       const oldUts = openFd("/proc/self/ns/uts", O.RDONLY);
       unshare(CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET);
       const after = ["uts", "ipc", "net"].map(ns);
       console.log(after.every((n, i) => n !== before[i]) ? "new" : "same");
       setns(oldUts, 0);
       closeFd(oldUts);
       console.log(ns("uts") === before[0] ? "back" : "not back");`,
    );
    expect(lines).toEqual(["new", "back"]);
  });

  test("unshare(CLONE_NEWUSER) is refused in multi-threaded Bun (EINVAL), with the errno name", async () => {
    const lines = await inChild(
      "unshare, CLONE_NEWUSER",
      `try { unshare(CLONE_NEWUSER); console.log("ok"); } catch (e) { console.log(e.code, e.message); }`,
    );
    expect(lines).toEqual(["EINVAL unshare 'flags 0x10000000': EINVAL (Invalid argument)"]);
  });

  test("setresgid/setresuid drop every id of every thread", async () => {
    const lines = await inChild(
      "setresgid, setresuid",
      `import { readFileSync } from "node:fs";
       setresgid(65534, 65534, 65534);
       setresuid(65534, 65534, 65534);
       const ids = (field) => new Set(require("node:fs").readdirSync("/proc/self/task").map((t) =>
         readFileSync("/proc/self/task/" + t + "/status", "utf8").split("\\n").find((l) => l.startsWith(field))));
       console.log([...ids("Uid:")].join("|"));
       console.log([...ids("Gid:")].join("|"));
       try { setresuid(0, 0, 0); } catch (e) { console.log(e.code); }`,
    );
    expect(lines).toEqual(["Uid:\t65534\t65534\t65534\t65534", "Gid:\t65534\t65534\t65534\t65534", "EPERM"]);
  });
});

describe("bind mounts", () => {
  test("mountBind of /proc/self/ns/net onto a file, then umount", () => {
    const target = join(dir, "netns");
    writeFileSync(target, "");
    mountBind("/proc/self/ns/net", target);
    try {
      expect(isMounted(target)).toBe(true);
      expect(statSync(target).ino).toBe(statSync("/proc/self/ns/net").ino);
      expect(readlinkSync("/proc/self/ns/net")).toBe(`net:[${statSync(target).ino}]`);
    } finally {
      umount(target);
    }
    expect(isMounted(target)).toBe(false);
    expect((thrown(() => umount(target)) as SysError).code).toBe("EINVAL");
  });

  test("lazy umount with MNT_DETACH; errors carry both paths", () => {
    const target = join(dir, "detach");
    writeFileSync(target, "");
    mountBind("/proc/self/ns/uts", target);
    umount(target, MNT_DETACH);
    expect(isMounted(target)).toBe(false);
    const missing = join(dir, "missing");
    const err = thrown(() => mountBind("/proc/self/ns/ipc", missing)) as SysError;
    expect(err.code).toBe("ENOENT");
    expect(err.message).toBe(`mount '/proc/self/ns/ipc -> ${missing}': ENOENT (No such file or directory)`);
  });
});
