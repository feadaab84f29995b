// Exit files, OOM files and the cleanup command, against a real filesystem and real processes.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { listOpenFds } from "../../ffi/fd.ts";
import { isSpawned } from "../../src/child-reaper.ts";
import { runCleanupCommand, writeExitFiles, writeOomFiles } from "../../src/exit-files.ts";
import type { Logger } from "../../src/logger.ts";
import { removeDir, tmpDir } from "../helpers/proc.ts";
import { describeFd } from "../helpers/fds.ts";

type Recorded = { level: string; msg: string };

function recordingLogger(): Logger & { lines: Recorded[] } {
  const lines: Recorded[] = [];
  const at = (level: string) => (msg: string) => void lines.push({ level, msg });
  return {
    level: "trace",
    lines,
    trace: at("trace"),
    debug: at("debug"),
    info: at("info"),
    warn: at("warn"),
    error: at("error"),
  };
}

let dir: string;
let fdsBefore: number[];


beforeAll(() => {
  dir = tmpDir("conmon-ts-exit-files");
  fdsBefore = listOpenFds();
});

afterAll(() => {
  removeDir(dir);
  const leaked = listOpenFds().filter((fd) => !fdsBefore.includes(fd));
  expect(leaked.map(describeFd).filter((d) => d !== null)).toEqual([]);
});

/** Names in `d` that look like our temporary files: a failed or interrupted write leaves these. */
function leftoverTemps(d: string): string[] {
  return readdirSync(d).filter((name) => name.includes(".tmp-"));
}

describe("writeExitFiles", () => {
  test.each([0, 137, -3, 255])("writes %p in decimal without a newline", (code) => {
    const log = recordingLogger();
    const path = join(dir, `exit-${code}`);
    writeExitFiles([path], code, log);
    expect(readFileSync(path, "utf8")).toBe(String(code));
    expect(log.lines.filter((l) => l.level === "error")).toEqual([]);
  });

  test("writes every path and replaces an existing, longer file completely", () => {
    const log = recordingLogger();
    const a = join(dir, "replace-a");
    const b = join(dir, "replace-b");
    writeFileSync(a, "previous content that is much longer");
    writeExitFiles([a, b], 1, log);
    expect(readFileSync(a, "utf8")).toBe("1");
    expect(readFileSync(b, "utf8")).toBe("1");
    expect(leftoverTemps(dir)).toEqual([]);
  });

  test("a missing parent directory is logged with the path and not created; the other paths are written", () => {
    const log = recordingLogger();
    const missingParent = join(dir, "no-such-dir");
    const bad = join(missingParent, "exit");
    const good1 = join(dir, "good-1");
    const good2 = join(dir, "good-2");
    writeExitFiles([good1, bad, good2], 137, log);
    expect(readFileSync(good1, "utf8")).toBe("137");
    expect(readFileSync(good2, "utf8")).toBe("137");
    expect(existsSync(missingParent)).toBe(false);
    const errors = log.lines.filter((l) => l.level === "error");
    expect(errors).toHaveLength(1);
    expect(errors[0]!.msg).toContain(`'${bad}'`);
    expect(errors[0]!.msg).toContain("ENOENT");
  });

  test("a target that cannot be replaced (a directory) leaves no temporary file behind", () => {
    const log = recordingLogger();
    const sub = tmpDir("conmon-ts-exit-dir");
    try {
      const target = join(sub, "is-a-dir");
      mkdirSync(join(target, "child"), { recursive: true });
      writeExitFiles([target], 0, log);
      expect(log.lines.filter((l) => l.level === "error")).toHaveLength(1);
      expect(leftoverTemps(sub)).toEqual([]);
      expect(statSync(target).isDirectory()).toBe(true);
    } finally {
      removeDir(sub);
    }
  });

  test("a concurrent reader never sees an empty or partial file during 500 rewrites", async () => {
    const log = recordingLogger();
    const path = join(dir, "atomic");
    const stop = join(dir, "atomic.stop");
    const allowed = ["0", "137", "-3", "1234567"];
    writeExitFiles([path], 0, log);
    // The reader runs in another process, on the other core, reading as fast as it can.
    const reader = Bun.spawn(
      [
        process.execPath,
        "-e",
        `const fs = require("node:fs");
         const [path, stop, allowed] = [process.argv[1], process.argv[2], process.argv[3].split(",")];
         let reads = 0; const bad = [];
         console.error("ready");
         while (!fs.existsSync(stop)) {
           let text;
           try { text = fs.readFileSync(path, "utf8"); } catch (e) { text = "<" + e.code + ">"; }
           reads++;
           if (!allowed.includes(text) && bad.length < 10) bad.push(text);
         }
         console.log(JSON.stringify({ reads, bad }));`,
        path,
        stop,
        allowed.join(","),
      ],
      { stdout: "pipe", stderr: "pipe" },
    );
    // Wait until the reader loops before writing.
    const stderr = reader.stderr.getReader();
    await stderr.read();
    stderr.releaseLock();
    for (let i = 0; i < 500; i++) {
      writeExitFiles([path], Number(allowed[i % allowed.length]), log);
      // Let the reader get several reads in per rewrite; without this pause, an in-place write
      // (truncate, then write) slipped through unnoticed in about half of the runs.
      const until = performance.now() + 0.5;
      while (performance.now() < until);
    }
    await Bun.sleep(20);
    writeFileSync(stop, "");
    const result = JSON.parse(await new Response(reader.stdout).text()) as { reads: number; bad: string[] };
    expect(await reader.exited).toBe(0);
    console.log(`atomicity: ${result.reads} concurrent reads during 500 rewrites, ${result.bad.length} bad`);
    expect(result.reads).toBeGreaterThan(100);
    expect(result.bad).toEqual([]);
    expect(log.lines.filter((l) => l.level === "error")).toEqual([]);
    expect(leftoverTemps(dir)).toEqual([]);
  });
});

describe("writeOomFiles", () => {
  test("creates empty files and truncates existing ones; a bad path is logged, the others written", () => {
    const log = recordingLogger();
    const fresh = join(dir, "oom-fresh");
    const existing = join(dir, "oom-existing");
    const bad = join(dir, "missing", "oom");
    writeFileSync(existing, "stale");
    writeOomFiles([fresh, bad, existing], log);
    expect(readFileSync(fresh, "utf8")).toBe("");
    expect(readFileSync(existing, "utf8")).toBe("");
    const errors = log.lines.filter((l) => l.level === "error");
    expect(errors).toHaveLength(1);
    expect(errors[0]!.msg).toContain(`'${bad}'`);
  });
});

describe("runCleanupCommand", () => {
  test("runs argv[0] from PATH with its arguments and the server's environment", async () => {
    const log = recordingLogger();
    const out = join(dir, "cleanup-out");
    process.env.CONMON_TS_CLEANUP_TEST = "from-env";
    try {
      const code = await runCleanupCommand(["sh", "-c", 'printf "%s %s" "$0" "$CONMON_TS_CLEANUP_TEST" > "$1"', "arg0", out], log);
      expect(code).toBe(0);
      expect(readFileSync(out, "utf8")).toBe("arg0 from-env");
    } finally {
      delete process.env.CONMON_TS_CLEANUP_TEST;
    }
  });

  test("a failing command's status is logged", async () => {
    const log = recordingLogger();
    expect(await runCleanupCommand(["sh", "-c", "exit 3"], log)).toBe(3);
    expect(log.lines.some((l) => l.level === "warn" && l.msg.includes("exited with 3"))).toBe(true);
  });

  test("a command that does not exist is logged, not thrown", async () => {
    const log = recordingLogger();
    expect(await runCleanupCommand(["conmon-ts-no-such-command-xyz"], log)).toBeNull();
    expect(log.lines.some((l) => l.level === "error" && l.msg.includes("conmon-ts-no-such-command-xyz"))).toBe(true);
  });

  test("an empty command does nothing", async () => {
    expect(await runCleanupCommand([], recordingLogger())).toBeNull();
  });

  test("the cleanup process is tracked as Bun's child while it runs, and forgotten after", async () => {
    const log = recordingLogger();
    const done = runCleanupCommand(["sleep", "0.1"], log);
    const started = log.lines.find((l) => l.msg.startsWith("Started cleanup command"));
    const pid = Number(/pid (\d+)/.exec(started!.msg)![1]);
    expect(isSpawned(pid)).toBe(true);
    expect(await done).toBe(0);
    expect(isSpawned(pid)).toBe(false);
  });
});
