// The ChildReaper against real re-parented grandchildren: this test process becomes a child
// subreaper, like the server, and shells leave background processes behind that land on us.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { listOpenFds } from "../../ffi/fd.ts";
import { isSubreaper, kill, subreaper } from "../../ffi/process.ts";
import { ChildReaper, isSpawned, spawnTracked, type ExitInfo } from "../../src/child-reaper.ts";
import type { Logger } from "../../src/logger.ts";
import { writeExitFiles } from "../../src/exit-files.ts";
import { childrenOf, procState, removeDir, tmpDir, waitFor } from "../helpers/proc.ts";
import { describeFd } from "../helpers/fds.ts";

function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const at = (level: string) => (msg: string) => void lines.push(`${level} ${msg}`);
  return { level: "trace", lines, trace: at("trace"), debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

/**
 * Runs `sh -c '<body> & echo $!'` for each body (all in one shell) and returns the background pids.
 * The shell exits at once, so the background processes are re-parented to us. Their stdio goes to
 * /dev/null, or reading the shell's stdout would wait for them.
 */
async function spawnGrandchildren(bodies: string[]): Promise<number[]> {
  const script = bodies.map((body) => `${body} </dev/null >/dev/null 2>&1 & echo $!`).join("\n");
  const shell = spawnTracked(["sh", "-c", script], { stdout: "pipe" });
  const out = await new Response(shell.stdout).text();
  expect(await shell.exited).toBe(0);
  const pids = out.trim().split("\n").map(Number);
  expect(pids).toHaveLength(bodies.length);
  return pids;
}

async function spawnGrandchild(body: string): Promise<number> {
  return (await spawnGrandchildren([body]))[0]!;
}

function parentOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return undefined;
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

const log = recordingLogger();
let reaper: ChildReaper;
let wasSubreaper: boolean;
let fdsBefore: number[];

/** Every grandchild pid of the suite, checked for zombies at the end. */
const grandchildren: number[] = [];

beforeAll(async () => {
  wasSubreaper = isSubreaper();
  subreaper(true);
  // Warm up Bun's spawn machinery, which opens fds of its own once.
  await spawnTracked(["true"]).exited;
  fdsBefore = listOpenFds();
  reaper = new ChildReaper(log);
});

afterAll(async () => {
  // Zombie check first: the sweep needs the reaper alive.
  await waitFor(() => childrenOf(process.pid).every((pid) => procState(pid) !== "Z"), 5000, "no zombie children");
  reaper.close();
  subreaper(wasSubreaper);
  for (const pid of grandchildren) expect(parentOf(pid) === process.pid && procState(pid) === "Z").toBe(false);
  const leaked = listOpenFds().filter((fd) => !fdsBefore.includes(fd));
  expect(leaked.map(describeFd).filter((d) => d !== null)).toEqual([]);
});

describe("ChildReaper.watch", () => {
  test("a re-parented grandchild that exits 0 resolves { code: 0 } and is reaped", async () => {
    const pid = await spawnGrandchild("sleep 0.3");
    grandchildren.push(pid);
    expect(parentOf(pid)).toBe(process.pid);
    const exit = reaper.watch(pid);
    expect(reaper.watchedPids()).toContain(pid);
    expect(reaper.watching).toBeGreaterThanOrEqual(1);
    expect(await exit).toEqual({ code: 0 });
    expect(procState(pid)).toBeUndefined();
    expect(reaper.watchedPids()).not.toContain(pid);
  });

  test("the exit status is passed through: exit 7 resolves { code: 7 }", async () => {
    const pid = await spawnGrandchild("sh -c 'sleep 0.1; exit 7'");
    grandchildren.push(pid);
    expect(await reaper.watch(pid)).toEqual({ code: 7 });
  });

  test("SIGKILL resolves { code: 137, signal: 9 }; prints kill → resolution → exit file latency", async () => {
    const dir = tmpDir("conmon-ts-reaper-latency");
    const detect: number[] = [];
    const exitFile: number[] = [];
    try {
      for (let i = 0; i < 20; i++) {
        const pid = await spawnGrandchild("sleep 30");
        grandchildren.push(pid);
        const path = join(dir, `exit-${i}`);
        let resolvedAt = 0;
        let writtenAt = 0;
        // The server's exit path: resolution, then the exit file.
        const done = reaper.watch(pid).then((exit) => {
          resolvedAt = performance.now();
          writeExitFiles([path], exit.code, log);
          writtenAt = performance.now();
          return exit;
        });
        await Bun.sleep(5); // let it settle into sleep: we measure exit detection, not startup
        const killedAt = performance.now();
        kill(pid, "SIGKILL");
        expect(await done).toEqual({ code: 137, signal: 9 });
        expect(readFileSync(path, "utf8")).toBe("137");
        detect.push(resolvedAt - killedAt);
        exitFile.push(writtenAt - killedAt);
      }
    } finally {
      removeDir(dir);
    }
    const stats = (xs: number[]) =>
      `median ${median(xs).toFixed(3)} ms, min ${Math.min(...xs).toFixed(3)} ms, max ${Math.max(...xs).toFixed(3)} ms`;
    console.log(`kill → watch() resolved (20 runs): ${stats(detect)}`);
    console.log(`kill → exit file written (20 runs): ${stats(exitFile)}`);
  });

  test("50 grandchildren exiting at once all resolve with their own status; no zombie is left", async () => {
    const bodies = Array.from({ length: 50 }, (_, i) => `sh -c 'sleep 0.2; exit ${i % 6}'`);
    const pids = await spawnGrandchildren(bodies);
    grandchildren.push(...pids);
    const exits = await Promise.all(pids.map((pid) => reaper.watch(pid)));
    expect(exits).toEqual(pids.map((_, i) => ({ code: i % 6 })));
    const zombies = childrenOf(process.pid).filter((pid) => pids.includes(pid));
    expect(zombies).toEqual([]);
    expect(reaper.watching).toBe(0);
  });

  test("a zombie that died before watch() resolves at once with its status", async () => {
    // The short sleep makes it outlive the shell that started it (which would otherwise reap it).
    const pid = await spawnGrandchild("sh -c 'sleep 0.05; exit 3'");
    grandchildren.push(pid);
    await waitFor(() => procState(pid) === "Z", 2000, `pid ${pid} to become a zombie`);
    const started = performance.now();
    expect(await reaper.watch(pid)).toEqual({ code: 3 });
    expect(performance.now() - started).toBeLessThan(50);
    expect(procState(pid)).toBeUndefined();
  });

  test("watching the same pid twice gives the same result", async () => {
    const pid = await spawnGrandchild("sh -c 'sleep 0.1; exit 9'");
    grandchildren.push(pid);
    const [a, b] = await Promise.all([reaper.watch(pid), reaper.watch(pid)]);
    expect(a).toEqual({ code: 9 });
    expect(b).toEqual({ code: 9 });
  });

  test("a pid whose runtime is still its parent is picked up once it is re-parented to us", async () => {
    // The "runtime" shell stays alive 0.15 s after starting the process, then exits; the process
    // lives on 0.25 s longer as our (re-parented) child.
    const runtime = spawnTracked(["sh", "-c", "sh -c 'sleep 0.4; exit 4' </dev/null >/dev/null 2>&1 & echo $!; sleep 0.15"], {
      stdout: "pipe",
    });
    const reader = runtime.stdout.getReader();
    const first = new TextDecoder().decode((await reader.read()).value);
    reader.releaseLock();
    const pid = Number(first.trim());
    grandchildren.push(pid);
    expect(parentOf(pid)).toBe(runtime.pid);
    const exit = reaper.watch(pid);
    expect(await runtime.exited).toBe(0);
    expect(await exit).toEqual({ code: 4 });
  });

  test("a pid that was already reaped elsewhere resolves { code: -1 } and is logged", async () => {
    const gone = Bun.spawn(["true"]);
    await gone.exited;
    expect(await reaper.watch(gone.pid)).toEqual({ code: -1 });
    expect(log.lines.some((l) => l.startsWith("warn") && l.includes(`${gone.pid}`))).toBe(true);
  });

  test("refuses to watch a running Bun.spawn child (spawnTracked)", async () => {
    const child = spawnTracked(["sleep", "0.1"]);
    expect(isSpawned(child.pid)).toBe(true);
    await expect(reaper.watch(child.pid)).rejects.toThrow(/Bun.spawn child/);
    expect(await child.exited).toBe(0);
    expect(isSpawned(child.pid)).toBe(false);
  });
});

describe("Bun.spawn children are left to Bun", () => {
  test("proc.exited stays correct for tracked and untracked children while grandchildren are reaped", async () => {
    const rejections: unknown[] = [];
    const onRejection = (reason: unknown) => void rejections.push(reason);
    process.on("unhandledRejection", onRejection);
    try {
      const grandPids = await spawnGrandchildren(Array.from({ length: 10 }, () => "sh -c 'sleep 0.05; exit 1'"));
      grandchildren.push(...grandPids);
      const watched = grandPids.map((pid) => reaper.watch(pid));
      // Bun reaps its children in its event loop. Blocking the loop until they are all zombies
      // puts them in our children list, as zombies, exactly when the SIGCHLD handler runs: the
      // moment a careless reaper would steal them. Untracked children (plain Bun.spawn) are
      // protected by the grace period only, tracked ones also by markSpawned.
      const untracked = Array.from({ length: 20 }, (_, i) => Bun.spawn(["sh", "-c", `exit ${10 + (i % 5)}`]));
      const tracked = Array.from({ length: 20 }, (_, i) => spawnTracked(["sh", "-c", `exit ${20 + (i % 5)}`]));
      const bunChildren = [...untracked, ...tracked].map((p) => p.pid);
      const deadline = performance.now() + 5000;
      while (!bunChildren.every((pid) => procState(pid) === "Z")) {
        if (performance.now() > deadline) throw new Error("Bun children did not all become zombies");
      }
      const codes = await Promise.all([...untracked, ...tracked].map((p) => p.exited));
      expect(codes).toEqual([
        ...untracked.map((_, i) => 10 + (i % 5)),
        ...tracked.map((_, i) => 20 + (i % 5)),
      ]);
      expect(await Promise.all(watched)).toEqual(grandPids.map((): ExitInfo => ({ code: 1 })));
      // Give a late sweep (after the grace period) the chance to misbehave too.
      await Bun.sleep(1200);
      expect(rejections).toEqual([]);
    } finally {
      process.off("unhandledRejection", onRejection);
    }
  });
});

describe("unwatched zombies", () => {
  test("a re-parented zombie nobody watches is reaped after the grace period", async () => {
    const pid = await spawnGrandchild("sh -c 'sleep 0.05; exit 0'");
    grandchildren.push(pid);
    await waitFor(() => procState(pid) === "Z", 2000, `pid ${pid} to become a zombie`);
    // Still there shortly after: the grace period protects pids about to be watch()ed.
    await Bun.sleep(100);
    expect(procState(pid)).toBe("Z");
    await waitFor(() => parentOf(pid) !== process.pid, 5000, `unwatched zombie ${pid} to be reaped`);
    expect(log.lines.some((l) => l.includes(`Reaped unwatched child ${pid}`))).toBe(true);
  });

  test("a watch() that comes after the sweep reaped the zombie still gets its real status", async () => {
    const pid = await spawnGrandchild("sh -c 'sleep 0.05; exit 42'");
    grandchildren.push(pid);
    await waitFor(() => procState(pid) === "Z", 2000, `pid ${pid} to become a zombie`);
    await waitFor(() => parentOf(pid) !== process.pid, 5000, `unwatched zombie ${pid} to be reaped`);
    expect(await reaper.watch(pid)).toEqual({ code: 42 });
  });

  test("a zombie that nobody watches does not block later watches", async () => {
    const [orphan, watched] = await spawnGrandchildren(["sleep 0.05", "sh -c 'sleep 0.1; exit 5'"]);
    grandchildren.push(orphan!, watched!);
    expect(await reaper.watch(watched!)).toEqual({ code: 5 });
    expect(procState(orphan!)).toBe("Z"); // exited 50 ms before, still within the grace period
    await waitFor(() => parentOf(orphan!) !== process.pid, 5000, `unwatched zombie ${orphan} to be reaped`);
  });
});
