// Smoke test of the test helpers against the real runtimes: if this file fails, every other
// integration suite would fail for reasons that have nothing to do with conmon-ts.
//
// stdio of `create` and `exec -d` goes to FILES, never pipes: without a terminal the runtime
// hands its own stdio to the container process, so a pipe reader would wait for EOF until the
// container exits.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { closeSync, existsSync, openSync } from "node:fs";
import { join } from "node:path";
import { bundlePidFile, createArgs, execArgs, type RuntimeConfig } from "../../src/runtime-args.ts";
import { makeBundle } from "../helpers/bundle.ts";
import {
  childrenOf,
  openFdCount,
  pidExists,
  readText,
  removeDir,
  rssAnonKiB,
  tmpDir,
  uniqueId,
  waitFor,
  waitForFile,
  zombieChildren,
} from "../helpers/proc.ts";
import {
  crunSupportsLogLevel,
  isHybridCgroup,
  legacyNsPrefix,
  runtimes,
  spawnPrefix,
  type Runtime,
} from "../helpers/runtimes.ts";

const TEST_TIMEOUT_MS = 15_000;

type Result = { code: number; stdout: string; stderr: string };

/**
 * Run `<runtime> args…` (under the runtime's namespace prefix) to completion. With `files`,
 * stdout/stderr go to those files (for commands whose stdio the container inherits);
 * otherwise they are captured through pipes.
 */
async function runRuntime(rt: Runtime, args: string[], files?: { stdout: string; stderr: string }): Promise<Result> {
  const argv = [...spawnPrefix(rt), rt.path, ...args];
  if (files === undefined) {
    const proc = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    const [stdout, stderr, code] = await Promise.all([
      new Response(proc.stdout).text(),
      new Response(proc.stderr).text(),
      proc.exited,
    ]);
    return { code, stdout, stderr };
  }
  // "w" truncates; the fds are ours to close once the runtime has exited (the container keeps
  // its own duplicates).
  const out = openSync(files.stdout, "w");
  const err = openSync(files.stderr, "w");
  try {
    const proc = Bun.spawn(argv, { stdin: "ignore", stdout: out, stderr: err });
    const code = await proc.exited;
    return { code, stdout: readText(files.stdout), stderr: readText(files.stderr) };
  } finally {
    closeSync(out);
    closeSync(err);
  }
}

function expectOk(what: string, r: Result): void {
  if (r.code !== 0) throw new Error(`${what} exited ${r.code}: ${r.stderr.trim()}`);
}

async function containerStatus(rt: Runtime, root: string, id: string): Promise<string> {
  const r = await runRuntime(rt, [`--root=${root}`, "state", id]);
  expectOk(`${rt.name} state`, r);
  return (JSON.parse(r.stdout) as { status: string }).status;
}

/** The pid in a runtime pidfile; upstream parses it as a bare u32, so no newline is allowed. */
function readPidFile(path: string): number {
  const text = readText(path);
  expect(text).toMatch(/^\d+$/);
  return Number(text);
}

describe("helpers", () => {
  test("at least runc is installed", () => {
    expect(runtimes().map((r) => r.name)).toContain("runc");
  });

  test("legacyNsPrefix execs in place and hides the unified hierarchy", async () => {
    const prefix = legacyNsPrefix();
    if (!isHybridCgroup()) {
      expect(prefix).toEqual([]);
      return;
    }
    expect(prefix.length).toBeGreaterThan(0);
    const proc = Bun.spawn(
      [...prefix, "/bin/sh", "-c", `echo $$; grep -c ' /sys/fs/cgroup/unified ' /proc/self/mounts || true`],
      { stdout: "pipe", stderr: "pipe" },
    );
    const [stdout, stderr, code] = await Promise.all([
      new Response(proc.stdout).text(),
      new Response(proc.stderr).text(),
      proc.exited,
    ]);
    expect({ code, stderr }).toEqual({ code: 0, stderr: "" });
    const [pid, unifiedMounts] = stdout.trim().split("\n");
    expect(Number(pid)).toBe(proc.pid); // tests treat proc.pid as the server's pid
    expect(unifiedMounts).toBe("0");
    expect(isHybridCgroup()).toBe(true); // the host namespace is untouched
  });

  test("proc helpers see children, zombies, fds and memory", async () => {
    // sh forks `true` and then execs sleep, which never reaps it: a zombie child of proc.pid.
    const proc = Bun.spawn(["/bin/sh", "-c", "/bin/true & exec /bin/sleep 10"], { stdin: "ignore" });
    try {
      expect(childrenOf(process.pid)).toContain(proc.pid);
      // The predicate returns the list only when non-empty: an empty array is truthy.
      const zombies = await waitFor(() => {
        const z = zombieChildren(proc.pid);
        return z.length > 0 && z;
      }, 2000, "a zombie under sleep");
      expect(zombies.length).toBe(1);
      expect(openFdCount(process.pid)).toBeGreaterThan(2);
      expect(rssAnonKiB(process.pid)).toBeGreaterThan(0);
    } finally {
      proc.kill("SIGKILL");
      await proc.exited;
    }
    expect(pidExists(proc.pid)).toBe(false);
    await expect(waitFor(() => false, 30, "nothing")).rejects.toThrow("timed out waiting for nothing");
    expect(uniqueId()).toMatch(/^[0-9a-f]{64}$/);
    expect(uniqueId("smoke-")).toMatch(/^smoke-[0-9a-f]{58}$/);
  });
});

for (const rt of runtimes()) {
  describe(rt.name, () => {
    let root = ""; // private runtime state dir, so nothing leaks into /run/<runtime>
    beforeAll(() => {
      root = tmpDir(`conmon-ts-smoke-${rt.name}`);
    });
    afterAll(() => removeDir(root));

    test("run echo hello", async () => {
      const bundle = await makeBundle({ args: ["echo", "hello"] });
      const id = uniqueId("smoke-run-");
      try {
        // Foreground `run` waits for the container, so capturing through pipes is fine here.
        const r = await runRuntime(rt, [`--root=${root}`, "run", "--bundle", bundle.dir, id]);
        expectOk(`${rt.name} run`, r);
        expect(r.stdout).toBe("hello\n");
      } finally {
        await runRuntime(rt, [`--root=${root}`, "delete", "-f", id]);
        await bundle.cleanup();
      }
    }, TEST_TIMEOUT_MS);

    // Reads the v1 memory controller, which is what this machine runs (hybrid: v1 + hugetlb-only v2).
    test.skipIf(!existsSync("/sys/fs/cgroup/memory/memory.limit_in_bytes"))("memory limit reaches the cgroup, swap disabled", async () => {
      const limit = 64 * 1024 * 1024;
      const bundle = await makeBundle({
        args: ["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"],
        memoryLimit: limit,
      });
      const id = uniqueId("smoke-mem-");
      try {
        const r = await runRuntime(rt, [`--root=${root}`, "run", "--bundle", bundle.dir, id]);
        expectOk(`${rt.name} run`, r);
        expect(r.stdout).toBe(`${limit}\n${limit}\n`);
      } finally {
        await runRuntime(rt, [`--root=${root}`, "delete", "-f", id]);
        await bundle.cleanup();
      }
    }, TEST_TIMEOUT_MS);

    test("create, start, exec, kill, delete with our argv builders", async () => {
      const bundle = await makeBundle({ args: ["sh", "-c", "echo started; exec sleep 60"] });
      const work = tmpDir("conmon-ts-smoke-io");
      const id = uniqueId();
      // info: crun 1.8.1 rejects the --log-level flag upstream adds at debug/warn/error.
      const cfg: RuntimeConfig = { runtimePath: rt.path, runtimeRoot: root, logLevel: "info" };
      try {
        const created = await runRuntime(
          rt,
          createArgs(cfg, { id, bundlePath: bundle.dir, systemdCgroup: false, globalArgs: [], commandArgs: [] }),
          { stdout: join(work, "out"), stderr: join(work, "err") },
        );
        expectOk(`${rt.name} create`, created);
        const pid = readPidFile(bundlePidFile(bundle.dir));
        expect(pidExists(pid)).toBe(true);
        expect(await containerStatus(rt, root, id)).toBe("created");

        expectOk(`${rt.name} start`, await runRuntime(rt, [`--root=${root}`, "start", id]));
        await waitFor(() => readText(join(work, "out")) === "started\n", 5000, "the container's first output");
        expect(await containerStatus(rt, root, id)).toBe("running");

        const execPidFile = join(work, "exec.pid");
        const exec = await runRuntime(
          rt,
          execArgs(cfg, { id, command: ["sh", "-c", "echo exec-ok"], systemdCgroup: false, pidFile: execPidFile }),
          { stdout: join(work, "exec.out"), stderr: join(work, "exec.err") },
        );
        expectOk(`${rt.name} exec`, exec);
        await waitForFile(execPidFile, 1000);
        expect(readPidFile(execPidFile)).toBeGreaterThan(0);
        await waitFor(() => readText(join(work, "exec.out")) === "exec-ok\n", 5000, "the exec's output");

        // sleep as PID 1 ignores TERM (no handler), so KILL; then delete -f, which does not need
        // the "stopped" state. Waiting for "stopped" would take 1-2 s here: the exec'd process
        // is an orphan of the host's PID 1 (not systemd), which reaps only every 1-2 s, and the
        // dying container init lingers until every process of its pid namespace is reaped.
        // (runc's delete -f waits for that; crun's returns at once.) The server avoids this by
        // being a subreaper.
        expectOk(`${rt.name} kill`, await runRuntime(rt, [`--root=${root}`, "kill", id, "KILL"]));
        expectOk(`${rt.name} delete`, await runRuntime(rt, [`--root=${root}`, "delete", "-f", id]));
        expect((await runRuntime(rt, [`--root=${root}`, "state", id])).code).not.toBe(0);
      } finally {
        await runRuntime(rt, [`--root=${root}`, "delete", "-f", id]);
        removeDir(work);
        await bundle.cleanup();
      }
    }, TEST_TIMEOUT_MS);

    if (rt.name === "crun") {
      test("crunSupportsLogLevel matches crun's behaviour", async () => {
        const r = await runRuntime(rt, ["--log-level=error", "--version"]);
        expect(crunSupportsLogLevel(rt.path)).toBe(r.code === 0);
      });
    }
  });
}
