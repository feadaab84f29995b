import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import {
  type WaitStatus, SysError, closeFd, fdTarget, getpgid, getpid, getProcessName, isSubreaper, kill,
  killProcessGroup, pidfdOpen, pidfdSendSignal, setProcessName, subreaper, umask,
  waitPidfd,
} from "../../ffi/index.ts";
import { expectNoFdLeaks, thrown } from "../helpers/fds.ts";

const ffiDir = new URL("../../ffi/index.ts", import.meta.url).pathname;

expectNoFdLeaks();

/** Direct children of this process, from every thread's children list. */
function ourChildren(): number[] {
  const pids = new Set<number>();
  for (const tid of readdirSync("/proc/self/task")) {
    let list = "";
    try {
      list = readFileSync(`/proc/self/task/${tid}/children`, "utf8");
    } catch {
      continue; // the thread exited meanwhile
    }
    for (const pid of list.split(" ").filter(Boolean)) pids.add(Number(pid));
  }
  return [...pids];
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean).join(" ");
  } catch {
    return "";
  }
}

async function until(check: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = performance.now() + ms;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await Bun.sleep(2);
  }
}

/** Starts `sh -c "<sleep> & exit 0"` and returns the pid of the orphaned sleep, re-parented to us. */
async function orphanedSleep(seconds: string): Promise<number> {
  const shell = Bun.spawn(["sh", "-c", `sleep ${seconds} & exit 0`]);
  expect(await shell.exited).toBe(0); // Bun reaps the shell itself
  let orphan = 0;
  await until(() => {
    orphan = ourChildren().find((pid) => cmdline(pid) === `sleep ${seconds}`) ?? 0;
    return orphan > 0;
  }, 1000, `the re-parented sleep ${seconds}`);
  return orphan;
}

/** Reaps `pidfd` on the first SIGCHLD after which it has exited. */
function reapOnSigchld(pidfd: number): Promise<WaitStatus> {
  return new Promise((resolve, reject) => {
    const timeout = setTimeout(() => {
      process.off("SIGCHLD", onSigchld);
      reject(new Error("no SIGCHLD for the orphan"));
    }, 3000);
    function onSigchld() {
      try {
        const status = waitPidfd(pidfd);
        if (status === null) return; // some other child
        clearTimeout(timeout);
        process.off("SIGCHLD", onSigchld);
        resolve(status);
      } catch (e) {
        clearTimeout(timeout);
        process.off("SIGCHLD", onSigchld);
        reject(e);
      }
    }
    process.on("SIGCHLD", onSigchld);
  });
}

describe("subreaper and pidfd reaping", () => {
  beforeAll(() => subreaper());
  afterAll(() => subreaper(false));

  test("isSubreaper reflects the prctl", () => {
    expect(isSubreaper()).toBe(true);
    subreaper(false);
    expect(isSubreaper()).toBe(false);
    subreaper(true);
    expect(isSubreaper()).toBe(true);
  });

  test("an orphaned grandchild is re-parented to us and reaped through its pidfd", async () => {
    const orphan = await orphanedSleep("0.2");
    const pidfd = pidfdOpen(orphan);
    try {
      expect(fdTarget(pidfd)).toBe("anon_inode:[pidfd]");
      expect(waitPidfd(pidfd)).toBeNull(); // still sleeping
      const status = await reapOnSigchld(pidfd);
      expect(status).toEqual({ pid: orphan, exited: true, code: 0 });
      expect(existsSync(`/proc/${orphan}`)).toBe(false); // no zombie left
      expect((thrown(() => waitPidfd(pidfd)) as SysError).code).toBe("ECHILD");
    } finally {
      closeFd(pidfd);
    }
  });

  test("a grandchild killed by SIGKILL reports signal 9", async () => {
    const orphan = await orphanedSleep("30");
    const pidfd = pidfdOpen(orphan);
    try {
      const reaped = reapOnSigchld(pidfd);
      kill(orphan, "SIGKILL");
      expect(await reaped).toEqual({ pid: orphan, exited: false, signal: 9 });
      expect(existsSync(`/proc/${orphan}`)).toBe(false);
    } finally {
      closeFd(pidfd);
    }
  });

  test("pidfdSendSignal signals through the pidfd", async () => {
    const orphan = await orphanedSleep("31");
    const pidfd = pidfdOpen(orphan);
    try {
      const reaped = reapOnSigchld(pidfd);
      pidfdSendSignal(pidfd, "SIGTERM");
      expect(await reaped).toEqual({ pid: orphan, exited: false, signal: 15 });
    } finally {
      closeFd(pidfd);
    }
  });

  test("peek reads a Bun child's exit status without stealing it from Bun", async () => {
    const child = Bun.spawn(["sh", "-c", "exit 7"]);
    const pidfd = pidfdOpen(child.pid);
    try {
      // Bun reaps its children from its own event loop; spin without yielding so we look first.
      let status: WaitStatus | null = null;
      const deadline = performance.now() + 2000;
      while ((status = waitPidfd(pidfd, { peek: true })) === null && performance.now() < deadline);
      expect(status!).toEqual({ pid: child.pid, exited: true, code: 7 });
      expect(waitPidfd(pidfd, { peek: true })).toEqual(status); // still there: peeking did not reap
      expect(await child.exited).toBe(7); // and Bun can still reap it
    } finally {
      closeFd(pidfd);
    }
  });

  test("pidfdOpen of a missing pid throws ESRCH", async () => {
    const gone = Bun.spawn(["true"]);
    await gone.exited;
    expect((thrown(() => pidfdOpen(gone.pid)) as SysError).code).toBe("ESRCH");
  });
});

describe("signals and process groups", () => {
  test("getpgid: our group, and -1 for a pid that does not exist", async () => {
    expect(getpgid(getpid())).toBe(Number(readFileSync("/proc/self/stat", "utf8").split(") ")[1]!.split(" ")[2]));
    const gone = Bun.spawn(["true"]);
    await gone.exited;
    expect(getpgid(gone.pid)).toBe(-1);
  });

  test("kill of a missing pid throws ESRCH; signal names resolve", async () => {
    const gone = Bun.spawn(["true"]);
    await gone.exited;
    const err = thrown(() => kill(gone.pid, "SIGTERM")) as SysError;
    expect(err.code).toBe("ESRCH");
    expect(err.message).toContain(`pid ${gone.pid} signal 15`);
    expect(() => kill(gone.pid, "SIGNOPE")).toThrow(TypeError);
  });

  test("killProcessGroup signals every member and refuses pgid <= 1", async () => {
    expect(() => killProcessGroup(0, "SIGTERM")).toThrow(RangeError);
    expect(() => killProcessGroup(1, "SIGTERM")).toThrow(RangeError);
    expect(() => killProcessGroup(-5, "SIGTERM")).toThrow(RangeError);
    // setsid(1) makes the shell lead its own group, with a sleep in it.
    const leader = Bun.spawn(["setsid", "sh", "-c", "sleep 30 & wait"]);
    await until(() => ourChildren().includes(leader.pid) && getpgid(leader.pid) === leader.pid, 2000, "setsid");
    let member = 0;
    await until(() => {
      member = Number(readFileSync(`/proc/${leader.pid}/task/${leader.pid}/children`, "utf8").trim() || 0);
      return member > 0;
    }, 2000, "the sleep in the group");
    expect(getpgid(member)).toBe(leader.pid);
    killProcessGroup(leader.pid, "SIGKILL");
    expect(await leader.exited).not.toBe(0);
    expect(leader.signalCode).toBe("SIGKILL");
    await until(() => getpgid(member) === -1 || readFileSync(`/proc/${member}/stat`, "utf8").includes(") Z "), 2000, "the member to die");
  });
});

describe("process attributes", () => {
  test("setProcessName changes /proc/self/comm", () => {
    const original = readFileSync("/proc/self/comm", "utf8").trim();
    try {
      setProcessName("conmonrs");
      expect(readFileSync("/proc/self/comm", "utf8")).toBe("conmonrs\n");
      expect(getProcessName()).toBe("conmonrs");
      setProcessName("a-name-longer-than-fifteen-bytes");
      expect(readFileSync("/proc/self/comm", "utf8")).toBe("a-name-longer-t\n");
    } finally {
      setProcessName(original);
    }
    expect(readFileSync("/proc/self/comm", "utf8").trim()).toBe(original);
  });

  test("getpid and umask", () => {
    expect(getpid()).toBe(process.pid);
    const old = umask(0o027);
    try {
      expect(umask(0o027)).toBe(0o027);
    } finally {
      umask(old);
    }
  });

  test("setsid starts a new session in a child that is not a group leader", async () => {
    const script = `import { setsid, getpgid } from ${JSON.stringify(ffiDir)};
      const sid = setsid();
      console.log(sid === process.pid && getpgid(process.pid) === process.pid ? "ok" : "bad " + sid);
      try { setsid(); } catch (e) { console.log(e.code); }`;
    const child = Bun.spawn(["bun", "-e", script], { stdout: "pipe", stderr: "inherit" });
    expect((await new Response(child.stdout).text()).trim().split("\n")).toEqual(["ok", "EPERM"]);
    expect(await child.exited).toBe(0);
  });
});
