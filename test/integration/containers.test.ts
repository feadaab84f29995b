// createContainer / reopenLogContainer and a container's life until its exit is recorded, with
// the compiled binary, our client, and real runc and crun (busybox bundles built here).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, readlinkSync, renameSync, statSync } from "node:fs";
import { join } from "node:path";
import { CgroupManager } from "../../src/client/index.ts";
import { makeBundle, type BundleOptions } from "../helpers/bundle.ts";
import { childrenOf, openFdCount, removeDir, tmpDir, uniqueId, waitFor, waitForFile, zombieChildren } from "../helpers/proc.ts";
import { runtimes, spawnPrefix, type Runtime } from "../helpers/runtimes.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { ensureJournald, fieldText, journalEntries, waitForEntries, type Journald } from "../helpers/journald.ts";

const CRI_LINE = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z) (stdout|stderr) ([FP]) (.*)$/;

/** Parses a CRI log into records. */
function criRecords(path: string): Array<{ ts: string; stream: string; tag: string; text: string }> {
  const text = readFileSync(path, "utf8");
  return text
    .split("\n")
    .filter((l) => l !== "")
    .map((line) => {
      const m = CRI_LINE.exec(line);
      if (!m) throw new Error(`not a CRI record: ${JSON.stringify(line)}`);
      return { ts: m[1]!, stream: m[2]!, tag: m[3]!, text: m[4]! };
    });
}

describe.each(runtimes())("containers with $name", (rt: Runtime) => {
  let server: TestServer;
  let work: string;
  const runtimeRoot = () => join(work, "root");

  /** `runtime <args>` as the engine runs it (crun in the same private mount namespace as the server). */
  async function runtime(...args: string[]): Promise<{ code: number; stderr: string }> {
    const proc = Bun.spawn([...spawnPrefix(rt), rt.path, `--root=${runtimeRoot()}`, ...args], { stdout: "ignore", stderr: "pipe" });
    const code = await proc.exited;
    return { code, stderr: await new Response(proc.stderr).text() };
  }

  /** Creates a container through the RPC; returns its paths and a cleanup. */
  async function create(opts: BundleOptions & { id?: string; logs?: Array<{ type: "cri" | "json" | "journald"; maxSize?: number }>; stdin?: boolean; cleanupCmd?: string[]; globalArgs?: string[]; oom?: boolean }) {
    const id = opts.id ?? uniqueId(`${rt.name}-`);
    const bundle = await makeBundle(opts);
    const dir = join(work, id.slice(0, 24));
    const exitFile = join(dir, "exit");
    const oomFile = join(dir, "oom");
    const logs = (opts.logs ?? [{ type: "cri" as const }]).map((l, i) => ({ ...l, path: join(dir, `log-${i}.${l.type}`) }));
    Bun.spawnSync(["mkdir", "-p", dir]);
    const { pid } = await server.client.createContainer({
      id,
      bundlePath: bundle.dir,
      terminal: opts.terminal,
      stdin: opts.stdin,
      exitPaths: [exitFile, join(dir, "exit-copy")],
      oomExitPaths: [oomFile],
      logDrivers: logs,
      cleanupCmd: opts.cleanupCmd,
      globalArgs: opts.globalArgs,
      cgroupManager: CgroupManager.cgroupfs,
    });
    return {
      id,
      pid,
      dir,
      exitFile,
      oomFile,
      log: logs[0]!.path,
      logs: logs.map((l) => l.path),
      async start() {
        const r = await runtime("start", id);
        expect(r.stderr).toBe("");
        expect(r.code).toBe(0);
      },
      async exitCode(timeoutMs = 10_000): Promise<string> {
        return waitForFile(exitFile, timeoutMs);
      },
      async remove() {
        await runtime("delete", "--force", id);
        await bundle.cleanup();
      },
    };
  }

  beforeAll(async () => {
    work = tmpDir(`ctr-${rt.name}`);
    server = await startServer(rt, { runtimeRoot: join(work, "root"), logLevel: "info" });
  });
  afterAll(async () => {
    await server?.stop();
    removeDir(work);
  });

  test("a container that echoes lines: CRI log content and format, exit file 0", async () => {
    const c = await create({ args: ["sh", "-c", "echo hello; echo world >&2; printf partial; echo x > /dev/stdout"] });
    try {
      expect(c.pid).toBeGreaterThan(1);
      await c.start();
      expect(await c.exitCode()).toBe("0");
      expect(readFileSync(join(c.dir, "exit-copy"), "utf8")).toBe("0");
      const records = criRecords(c.log);
      const out = records.filter((r) => r.stream === "stdout").map((r) => `${r.tag} ${r.text}`);
      // `echo x > /dev/stdout` works: the container's stdout is a real pipe, not a socket.
      expect(out.join("|")).toMatch(/^F hello\|(P partial\|F x|P partial\|P x|F partialx)/);
      expect(records.filter((r) => r.stream === "stderr").map((r) => `${r.tag} ${r.text}`)).toEqual(["F world"]);
      expect(statSync(c.log).mode & 0o777).toBe(0o600);
      expect(existsSync(c.oomFile)).toBe(false);
    } finally {
      await c.remove();
    }
  });

  test("exit status 1 and a SIGKILLed container (137)", async () => {
    const failing = await create({ args: ["sh", "-c", "exit 1"] });
    const sleeper = await create({ args: ["sleep", "100"] });
    try {
      await failing.start();
      await sleeper.start();
      expect(await failing.exitCode()).toBe("1");
      expect((await runtime("kill", sleeper.id, "KILL")).code).toBe(0);
      expect(await sleeper.exitCode()).toBe("137");
    } finally {
      await failing.remove();
      await sleeper.remove();
    }
  });

  test("an invalid command fails the RPC with the runtime's error and leaves nothing behind", async () => {
    const bundle = await makeBundle({ args: ["invalid"] });
    const id = uniqueId(`${rt.name}-bad-`);
    try {
      const attempt = server.client.createContainer({ id, bundlePath: bundle.dir, cgroupManager: CgroupManager.cgroupfs });
      await expect(attempt).rejects.toThrow(/^child command exited with: \d+: .*not found in \$PATH/s);
      // Nothing registered: reopen does not know the id; the server still serves.
      await expect(server.client.reopenLogContainer({ id })).rejects.toThrow("child not available");
      expect((await server.client.version()).processId).toBe(server.client.pid);
    } finally {
      await runtime("delete", "--force", id);
      await bundle.cleanup();
    }
  });

  test("a log path in a missing directory fails the RPC and starts nothing", async () => {
    const bundle = await makeBundle({ args: ["true"] });
    const id = uniqueId(`${rt.name}-nolog-`);
    try {
      const attempt = server.client.createContainer({
        id,
        bundlePath: bundle.dir,
        logDrivers: [{ type: "cri", path: "/nonexistent-dir/x.log" }],
        cgroupManager: CgroupManager.cgroupfs,
      });
      await expect(attempt).rejects.toThrow("open log file path '/nonexistent-dir/x.log': No such file or directory");
      expect((await runtime("state", id)).code).not.toBe(0);
    } finally {
      await bundle.cleanup();
    }
  });

  test("a terminal container logs its output with \\r\\n", async () => {
    const c = await create({ args: ["sh", "-c", "echo tty-line; test -t 1 && echo is-a-tty"], terminal: true });
    try {
      await c.start();
      expect(await c.exitCode()).toBe("0");
      await waitFor(() => readFileSync(c.log, "utf8").includes("is-a-tty"), 2000, "tty output in the log");
      const text = readFileSync(c.log, "utf8");
      expect(text).toMatch(/stdout F tty-line\r\n/);
      expect(text).toMatch(/stdout F is-a-tty\r\n/);
      expect(text).not.toContain(" stderr ");
    } finally {
      await c.remove();
    }
  });

  test("stdin=true gives the container a pipe on stdin; without it stdin is not a pipe", async () => {
    const withStdin = await create({ args: ["sh", "-c", "ls -l /proc/self/fd/0"], stdin: true });
    const without = await create({ args: ["sh", "-c", "ls -l /proc/self/fd/0"] });
    try {
      await withStdin.start();
      await without.start();
      expect(await withStdin.exitCode()).toBe("0");
      expect(await without.exitCode()).toBe("0");
      expect(readFileSync(withStdin.log, "utf8")).toContain("pipe:");
      expect(readFileSync(without.log, "utf8")).not.toContain("pipe:");
    } finally {
      await withStdin.remove();
      await without.remove();
    }
  });

  test("maxSize 50 truncates: `echo hello && echo world` leaves no hello", async () => {
    const c = await create({ args: ["sh", "-c", "echo hello && echo world"], logs: [{ type: "cri", maxSize: 50 }] });
    try {
      await c.start();
      expect(await c.exitCode()).toBe("0");
      const text = readFileSync(c.log, "utf8");
      expect(text).toContain("world");
      expect(text).not.toContain("hello");
    } finally {
      await c.remove();
    }
  });

  test("JSON and CRI drivers at once", async () => {
    const c = await create({ args: ["sh", "-c", 'echo "say \\"hi\\""; echo oops >&2'], logs: [{ type: "json" }, { type: "cri" }] });
    try {
      await c.start();
      expect(await c.exitCode()).toBe("0");
      const entries = readFileSync(c.logs[0]!, "utf8").trim().split("\n").map((l) => JSON.parse(l));
      expect(entries.map((e) => [e.pipe, e.message])).toEqual(expect.arrayContaining([["stdout", 'say "hi"'], ["stderr", "oops"]]));
      expect(Object.keys(entries[0])).toEqual(["timestamp", "pipe", "message"]);
      expect(Math.abs(entries[0].timestamp - Date.now() / 1000)).toBeLessThan(60);
      expect(criRecords(c.logs[1]!).map((r) => r.text)).toEqual(expect.arrayContaining(['say "hi"', "oops"]));
    } finally {
      await c.remove();
    }
  });

  test("reopen under load: no line lost or duplicated across renames", async () => {
    const lines = 400_000;
    const c = await create({ args: ["seq", "1", String(lines)] });
    try {
      await c.start();
      const rotated: string[] = [];
      for (let i = 0; !existsSync(c.exitFile) && i < 50; i++) {
        await Bun.sleep(5);
        const old = `${c.log}.${i}`;
        renameSync(c.log, old);
        rotated.push(old);
        try {
          await server.client.reopenLogContainer({ id: c.id });
        } catch (err) {
          // The container may exit between our check and the call; then it is gone from the registry.
          if (!existsSync(c.exitFile)) throw err;
          break;
        }
      }
      expect(await c.exitCode()).toBe("0");
      const numbers: string[] = [];
      let partial = "";
      // If the last reopen lost the race with the exit, the last renamed file is the final one.
      for (const file of existsSync(c.log) ? [...rotated, c.log] : rotated) {
        for (const r of criRecords(file)) {
          partial += r.text;
          if (r.tag === "F") {
            numbers.push(partial);
            partial = "";
          }
        }
      }
      expect(rotated.length).toBeGreaterThan(1);
      expect(numbers.length).toBe(lines);
      for (let i = 0; i < lines; i++) if (numbers[i] !== String(i + 1)) throw new Error(`line ${i + 1} is ${numbers[i]}`);
    } finally {
      await c.remove();
    }
  });

  test("cleanupCmd runs once after the exit file is written", async () => {
    const marker = join(work, `cleanup-${rt.name}`);
    const c = await create({ args: ["true"], cleanupCmd: ["sh", "-c", `cat ${join(work, "*", "exit")} >/dev/null; echo ran >> ${marker}`] });
    try {
      await c.start();
      expect(await c.exitCode()).toBe("0");
      expect(await waitForFile(marker, 5000)).toBe("ran\n");
      await Bun.sleep(100);
      expect(readFileSync(marker, "utf8")).toBe("ran\n");
    } finally {
      await c.remove();
    }
  });

  test("global args reach the runtime (--log <file> --debug)", async () => {
    const runtimeLog = join(work, `runtime-${rt.name}.log`);
    const c = await create({ args: ["true"], globalArgs: ["--log", runtimeLog, "--debug"] });
    try {
      // The runtime created its log file; runc also writes its debug lines there.
      expect(existsSync(runtimeLog)).toBe(true);
      if (rt.name === "runc") expect(readFileSync(runtimeLog, "utf8")).toContain("level=debug");
      await c.start();
      expect(await c.exitCode()).toBe("0");
    } finally {
      await c.remove();
    }
  });

  test("OOM-killed container: empty OOM file, exit 137", async () => {
    const c = await create({ args: ["tail", "/dev/zero"], memoryLimit: 4 * 1024 * 1024 });
    try {
      await c.start();
      expect(await c.exitCode(15_000)).toBe("137");
      expect(existsSync(c.oomFile)).toBe(true);
      expect(readFileSync(c.oomFile, "utf8")).toBe("");
    } finally {
      await c.remove();
    }
  });

  test("50 containers created concurrently: all reaped, no zombie, no fd leak", async () => {
    const pid = server.client.pid;
    // Warm up first: Bun opens some fds of its own lazily on the first spawns.
    const warm = await create({ args: ["true"] });
    await warm.start();
    await warm.exitCode();
    await warm.remove();
    const fdsBefore = openFdCount(pid);
    const fdList = () => readdirSync(`/proc/${pid}/fd`).map((fd) => { try { return `${fd}->${readlinkSync(`/proc/${pid}/fd/${fd}`)}`; } catch { return fd; } }).join(", ");
    const listBefore = fdList();
    const all = await Promise.all(Array.from({ length: 50 }, (_, i) => create({ args: ["sh", "-c", `echo c${i}`] })));
    try {
      await Promise.all(all.map((c) => c.start()));
      const codes = await Promise.all(all.map((c) => c.exitCode(30_000)));
      expect(codes).toEqual(all.map(() => "0"));
      all.forEach((c, i) => expect(readFileSync(c.log, "utf8")).toContain(`stdout F c${i}`));
      await waitFor(() => zombieChildren(pid).length === 0, 5000, "no zombie children of the server").catch((err) => {
        throw new Error(`${err.message}: ${zombieChildren(pid).map((z) => `${readFileSync(`/proc/${z}/stat`, "utf8")}`).join("; ")}`);
      });
      await waitFor(() => openFdCount(pid) <= fdsBefore, 5000, "server fds back to the count before").catch((err) => {
        throw new Error(`${err.message}: before [${listBefore}] now [${fdList()}]`);
      });
      expect(childrenOf(pid)).toEqual([]);
    } finally {
      await Promise.all(all.map((c) => c.remove()));
    }
  }, 120_000);

  test("SIGTERM of the server writes 137 for a running container", async () => {
    const own = await startServer(rt, { runtimeRoot: runtimeRoot(), logLevel: "info" });
    const bundle = await makeBundle({ args: ["sleep", "1000"] });
    const id = uniqueId(`${rt.name}-term-`);
    const exitFile = join(own.runDir, "exit");
    try {
      await own.client.createContainer({ id, bundlePath: bundle.dir, exitPaths: [exitFile], cgroupManager: CgroupManager.cgroupfs });
      expect((await runtime("start", id)).code).toBe(0);
      process.kill(own.client.pid, "SIGTERM");
      await waitFor(() => existsSync(exitFile) && readFileSync(exitFile, "utf8"), 10_000, "exit file after SIGTERM");
      expect(readFileSync(exitFile, "utf8")).toBe("137");
    } finally {
      await runtime("delete", "--force", id);
      await bundle.cleanup();
      await own.stop();
    }
  });
});

describe("journald", () => {
  let journald: Journald;
  let server: TestServer;
  let work: string;
  beforeAll(async () => {
    journald = await ensureJournald();
    if (!journald.available) console.warn(`journald container tests skipped: ${journald.reason}`);
    work = tmpDir("ctr-journald");
  });
  afterAll(async () => {
    await server?.stop();
    await journald?.stop();
    removeDir(work);
  });

  test("journald driver: a container's lines arrive from conmonrs with its id and stream", async () => {
    if (!journald.available) return;
    const runc = runtimes().find((r) => r.name === "runc")!;
    // The server's own log goes to journald too (--log-driver systemd).
    server = await startServer(runc, { runtimeRoot: join(work, "root"), logDriver: "systemd", logLevel: "debug" });
    const id = uniqueId("jd-");
    const bundle = await makeBundle({ args: ["sh", "-c", "echo to-journal; echo err-journal >&2"] });
    const exitFile = join(work, "exit");
    try {
      await server.client.createContainer({ id, bundlePath: bundle.dir, exitPaths: [exitFile], logDrivers: [{ type: "journald" }], cgroupManager: CgroupManager.cgroupfs });
      const start = Bun.spawnSync([runc.path, `--root=${join(work, "root")}`, "start", id]);
      expect(start.exitCode).toBe(0);
      expect(await waitForFile(exitFile, 10_000)).toBe("0");
      const entries = await waitForEntries(`CONTAINER_ID_FULL=${id}`, 2);
      expect(entries.map((e) => [fieldText(e.MESSAGE), e.CONTAINER_STREAM, e._COMM]).sort()).toEqual([
        ["err-journal\n", "stderr", "conmonrs"],
        ["to-journal\n", "stdout", "conmonrs"],
      ]);
      // The server's own log lines carry _COMM=conmonrs as well.
      const own = journalEntries(`_PID=${server.client.pid}`).map((e) => fieldText(e.MESSAGE) ?? "");
      expect(own.some((m) => m.includes(`Registered container ${id}`))).toBe(true);
    } finally {
      Bun.spawnSync([runc.path, `--root=${join(work, "root")}`, "delete", "--force", id]);
      await bundle.cleanup();
    }
  });
});
