// OomWatcher against a real cgroup v1 memory cgroup (this machine's layout), plus fake cgroup trees
// for the cgroup v2 rules and the v1 counter fallback, which a real kernel cannot be made to show
// on demand.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { listOpenFds } from "../../ffi/fd.ts";
import { isSubreaper, kill, subreaper } from "../../ffi/process.ts";
import { ChildReaper, spawnTracked } from "../../src/child-reaper.ts";
import type { Logger } from "../../src/logger.ts";
import { OomWatcher, type OomWatcherRoots } from "../../src/oom-watcher.ts";
import { childrenOf, procState, removeDir, tmpDir, uniqueId, waitFor } from "../helpers/proc.ts";
import { describeFd } from "../helpers/fds.ts";

function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const at = (level: string) => (msg: string) => void lines.push(`${level} ${msg}`);
  return { level: "trace", lines, trace: at("trace"), debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}


const MEMORY_ROOT = "/sys/fs/cgroup/memory";
const hasMemoryV1 = existsSync(join(MEMORY_ROOT, "memory.oom_control")) && existsSync(join(MEMORY_ROOT, "cgroup.event_control"));
if (!hasMemoryV1) console.log(`skipping the real cgroup v1 tests: no memory controller at ${MEMORY_ROOT}`);

const log = recordingLogger();
let fdsBefore: number[];

beforeAll(() => {
  fdsBefore = listOpenFds();
});

afterAll(() => {
  const leaked = listOpenFds().filter((fd) => !fdsBefore.includes(fd));
  expect(leaked.map(describeFd).filter((d) => d !== null)).toEqual([]);
});

describe.skipIf(!hasMemoryV1)("cgroup v1, real kernel", () => {
  const cgroups: string[] = [];
  let reaper: ChildReaper;
  let wasSubreaper: boolean;

  /** A fresh memory cgroup limited to `limitBytes` (memory+swap too, when the kernel has it). */
  function makeCgroup(limitBytes: number): { name: string; dir: string } {
    const name = uniqueId("conmon-ts-test-").slice(0, 40);
    const dir = join(MEMORY_ROOT, name);
    mkdirSync(dir);
    cgroups.push(dir);
    writeFileSync(join(dir, "memory.limit_in_bytes"), String(limitBytes));
    // memsw must stay >= the memory limit, so it is set after it.
    if (existsSync(join(dir, "memory.memsw.limit_in_bytes"))) {
      writeFileSync(join(dir, "memory.memsw.limit_in_bytes"), String(limitBytes));
    }
    return { name, dir };
  }

  /**
   * A re-parented grandchild that waits until it sits in cgroup `name`, then execs `command` (in
   * the same process, so the watched pid is the one that runs it). The test moves it there, as a
   * runtime does before the container starts.
   */
  async function grandchildInCgroup(cg: { name: string; dir: string }, command: string): Promise<number> {
    const inner = `until grep -q '${cg.name}' /proc/$$/cgroup; do sleep 0.01; done; ${command}`;
    const shell = spawnTracked(["sh", "-c", 'sh -c "$1" </dev/null >/dev/null 2>&1 & echo $!', "sh", inner], { stdout: "pipe" });
    const pid = Number((await new Response(shell.stdout).text()).trim());
    expect(await shell.exited).toBe(0);
    writeFileSync(join(cg.dir, "cgroup.procs"), String(pid));
    return pid;
  }

  beforeAll(() => {
    wasSubreaper = isSubreaper();
    subreaper(true);
    reaper = new ChildReaper(log);
  });

  afterAll(async () => {
    for (const dir of cgroups) {
      for (const pid of readFileSync(join(dir, "cgroup.procs"), "utf8").split("\n").filter(Boolean)) {
        try {
          kill(Number(pid), "SIGKILL");
        } catch {
          // already gone
        }
      }
    }
    await waitFor(() => childrenOf(process.pid).every((pid) => procState(pid) !== "Z"), 5000, "no zombie children");
    reaper.close();
    subreaper(wasSubreaper);
    for (const dir of cgroups) {
      await waitFor(() => readFileSync(join(dir, "cgroup.procs"), "utf8").trim() === "", 5000, `${dir} to empty`);
      rmdirSync(dir);
    }
  });

  test("a process killed by the OOM killer: exit 137 and oomKilled() === true", async () => {
    const cg = makeCgroup(4 * 1024 * 1024);
    // tail keeps the current line in memory; /dev/zero has no newline, so it grows until killed.
    const pid = await grandchildInCgroup(cg, "exec tail /dev/zero");
    const watcher = OomWatcher.start(pid, log);
    try {
      const exit = await reaper.watch(pid);
      expect(exit).toEqual({ code: 137, signal: 9 });
      expect(watcher.oomKilled()).toBe(true);
      expect(watcher.oomKilled()).toBe(true); // the verdict sticks after the eventfd was consumed
      expect(readFileSync(join(cg.dir, "memory.oom_control"), "utf8")).toMatch(/oom_kill [1-9]/);
    } finally {
      watcher.close();
    }
  }, 20_000);

  test("a process that exits normally in a limited cgroup: oomKilled() === false", async () => {
    const cg = makeCgroup(64 * 1024 * 1024);
    const pid = await grandchildInCgroup(cg, "head -c 100000 /dev/zero | wc -c >/dev/null; exit 0");
    const watcher = OomWatcher.start(pid, log);
    try {
      expect(await reaper.watch(pid)).toEqual({ code: 0 });
      expect(watcher.oomKilled()).toBe(false);
    } finally {
      watcher.close();
    }
  }, 20_000);

  test("a process killed by a plain SIGKILL is not an OOM", async () => {
    const cg = makeCgroup(64 * 1024 * 1024);
    const pid = await grandchildInCgroup(cg, "exec sleep 30");
    const watcher = OomWatcher.start(pid, log);
    try {
      await waitFor(() => readFileSync(`/proc/${pid}/cmdline`, "utf8").startsWith("sleep"), 5000, "the exec of sleep");
      kill(pid, "SIGKILL");
      expect(await reaper.watch(pid)).toEqual({ code: 137, signal: 9 });
      expect(watcher.oomKilled()).toBe(false);
    } finally {
      watcher.close();
    }
  }, 20_000);

  test("close() releases the eventfd, also before any verdict", () => {
    const before = listOpenFds();
    const watcher = OomWatcher.start(process.pid, log); // our own cgroup is a v1 memory cgroup too
    expect(listOpenFds().length).toBe(before.length + 1);
    watcher.close();
    watcher.close();
    expect(listOpenFds()).toEqual(before);
  });
});

describe("no cgroup to watch", () => {
  test("a pid that is already gone: no watch, verdict false, no fd kept", async () => {
    const gone = Bun.spawn(["true"]);
    await gone.exited;
    const before = listOpenFds();
    const watcher = OomWatcher.start(gone.pid, log);
    expect(listOpenFds()).toEqual(before);
    expect(watcher.oomKilled()).toBe(false);
    watcher.close();
  });
});

/** A fake /proc and /sys/fs/cgroup for one pid. */
function fakeTree(procCgroup: string, files: Record<string, string>): { roots: OomWatcherRoots; root: string } {
  const root = tmpDir("conmon-ts-oom-fake");
  const roots = { proc: join(root, "proc"), cgroup: join(root, "cgroup") };
  mkdirSync(join(roots.proc, "4242"), { recursive: true });
  writeFileSync(join(roots.proc, "4242", "cgroup"), procCgroup);
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(join(roots.cgroup, path, ".."), { recursive: true });
    writeFileSync(join(roots.cgroup, path), content);
  }
  return { roots, root };
}

const events = (oom: number, oomKill: number) => `low 0\nhigh 0\nmax 3\noom ${oom}\noom_kill ${oomKill}\noom_group_kill 0\n`;

describe("cgroup v2 rules (fake tree)", () => {
  const v2Files = () => ({
    "cgroup.controllers": "cpu memory pids\n",
    "pod/memory.events": events(5, 5),
    "pod/ctr/memory.events": events(1, 1),
  });

  function withTree(run: (t: { roots: OomWatcherRoots; root: string }) => void): void {
    const tree = fakeTree("0::/pod/ctr\n", v2Files());
    try {
      run(tree);
    } finally {
      removeDir(tree.root);
    }
  }

  test("old non-zero counters in the cgroup and its parent are not an OOM (no quirk Q15)", () =>
    withTree(({ roots }) => {
      const watcher = OomWatcher.start(4242, log, roots);
      expect(watcher.oomKilled()).toBe(false);
      watcher.close();
    }));

  test("oom_kill of the process's cgroup increasing is an OOM", () =>
    withTree(({ roots }) => {
      const watcher = OomWatcher.start(4242, log, roots);
      writeFileSync(join(roots.cgroup, "pod/ctr/memory.events"), events(2, 2));
      expect(watcher.oomKilled()).toBe(true);
      watcher.close();
    }));

  test("only `oom` increasing (nothing was killed) is not an OOM kill", () =>
    withTree(({ roots }) => {
      const watcher = OomWatcher.start(4242, log, roots);
      writeFileSync(join(roots.cgroup, "pod/ctr/memory.events"), events(2, 1));
      expect(watcher.oomKilled()).toBe(false);
      watcher.close();
    }));

  test("a sibling's OOM (parent increases, own cgroup does not) is not ours", () =>
    withTree(({ roots }) => {
      const watcher = OomWatcher.start(4242, log, roots);
      writeFileSync(join(roots.cgroup, "pod/memory.events"), events(6, 6));
      expect(watcher.oomKilled()).toBe(false);
      watcher.close();
    }));

  test("own cgroup gone at exit: the parent's counter over its start baseline decides", () =>
    withTree(({ roots }) => {
      const unchanged = OomWatcher.start(4242, log, roots);
      const increased = OomWatcher.start(4242, log, roots);
      rmSync(join(roots.cgroup, "pod/ctr"), { recursive: true });
      expect(unchanged.oomKilled()).toBe(false);
      writeFileSync(join(roots.cgroup, "pod/memory.events"), events(6, 6));
      expect(increased.oomKilled()).toBe(true);
      unchanged.close();
      increased.close();
    }));

  test("no memory.events (memory controller not enabled): no watch, verdict false", () => {
    const tree = fakeTree("0::/pod/ctr\n", { "cgroup.controllers": "cpu pids\n", "pod/ctr/cgroup.procs": "" });
    try {
      const watcher = OomWatcher.start(4242, log, tree.roots);
      expect(watcher.oomKilled()).toBe(false);
      watcher.close();
    } finally {
      removeDir(tree.root);
    }
  });
});

describe("cgroup v1 counter fallback (fake tree)", () => {
  // In a fake tree cgroup.event_control is a plain file: the eventfd is "registered" but never
  // signalled, so only the oom_kill counter of memory.oom_control can tell.
  const oomControl = (kills: number) => `oom_kill_disable 0\nunder_oom 0\noom_kill ${kills}\n`;
  const procCgroup = "5:memory:/kubepods/ctr\n4:cpu,cpuacct:/kubepods/ctr\n0::/\n";

  function withTree(run: (t: { roots: OomWatcherRoots; root: string }) => void): void {
    const tree = fakeTree(procCgroup, {
      "memory/kubepods/ctr/memory.oom_control": oomControl(2),
      "memory/kubepods/ctr/cgroup.event_control": "",
      "unified/cgroup.controllers": "",
    });
    try {
      run(tree);
    } finally {
      removeDir(tree.root);
    }
  }

  test("the memory line is used, not the unified `0::` line; an old count is not an OOM", () =>
    withTree(({ roots }) => {
      const watcher = OomWatcher.start(4242, log, roots);
      expect(readFileSync(join(roots.cgroup, "memory/kubepods/ctr/cgroup.event_control"), "utf8")).toMatch(/^\d+ \d+$/);
      expect(watcher.oomKilled()).toBe(false);
      watcher.close();
    }));

  test("an oom_kill count above the start value is an OOM", () =>
    withTree(({ roots }) => {
      const watcher = OomWatcher.start(4242, log, roots);
      writeFileSync(join(roots.cgroup, "memory/kubepods/ctr/memory.oom_control"), oomControl(3));
      expect(watcher.oomKilled()).toBe(true);
      watcher.close();
    }));

  test("a failed eventfd registration is logged with the path and the counter still works", () => {
    const tree = fakeTree(procCgroup, { "memory/kubepods/ctr/memory.oom_control": oomControl(0) });
    try {
      const before = listOpenFds();
      const watcher = OomWatcher.start(4242, log, tree.roots);
      expect(listOpenFds()).toEqual(before);
      expect(log.lines.some((l) => l.startsWith("warn") && l.includes("cgroup.event_control") && l.includes("ENOENT"))).toBe(true);
      writeFileSync(join(tree.roots.cgroup, "memory/kubepods/ctr/memory.oom_control"), oomControl(1));
      expect(watcher.oomKilled()).toBe(true);
      watcher.close();
    } finally {
      removeDir(tree.root);
    }
  });
});
