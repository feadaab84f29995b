// What the server leaves behind when a container exits: exit files (the exit code), OOM files
// (empty markers) and the client's cleanup command.
import { closeSync, fsyncSync, openSync, renameSync, unlinkSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { spawnTracked } from "./child-reaper.ts";
import type { Logger } from "./logger.ts";

let tempCounter = 0;

/** A hidden name next to `path`, unique within this process and across processes. Same directory,
 * so the rename that publishes it stays on one filesystem and is atomic. */
function tempPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${tempCounter++}`);
}

function closeQuietly(fd: number): void {
  if (fd < 0) return;
  try {
    closeSync(fd);
  } catch {
    // the fd is gone either way
  }
}

function removeQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // never created, or already renamed
  }
}

/**
 * Writes `code` in decimal, without a newline (`0`, `137`, `-3`; C conmon's format too), to every
 * path. Upstream truncates and writes in place, so a reader polling for the file may see it empty;
 * here each file is written under a temporary name and renamed over the target, so a reader sees
 * either no file or the whole code. (One consequence: a symlink at the target is replaced, not
 * written through.) Parent directories are not created. Failures are logged and the remaining
 * paths are still written. No fsync: the files matter to the live system, not across a crash, and
 * exit latency matters.
 */
export function writeExitFiles(paths: string[], code: number, log: Logger): void {
  const content = String(code);
  for (const path of paths) {
    const temp = tempPathFor(path);
    try {
      writeFileSync(temp, content, { flag: "wx" });
      renameSync(temp, path);
      log.debug(`Wrote exit file ${path}: ${content}`);
    } catch (err) {
      removeQuietly(temp);
      log.error(`Write exit file '${path}': ${(err as Error).message}`);
    }
  }
}

/** Creates (or truncates) each path as an empty file and fsyncs it: the OOM marker. Failures are
 * logged and the remaining paths are still written. */
export function writeOomFiles(paths: string[], log: Logger): void {
  for (const path of paths) {
    let fd = -1;
    try {
      fd = openSync(path, "w");
      fsyncSync(fd);
      log.debug(`Wrote OOM file ${path}`);
    } catch (err) {
      log.error(`Write OOM file '${path}': ${(err as Error).message}`);
    } finally {
      closeQuietly(fd);
    }
  }
}

/**
 * Runs the client's cleanup command (argv[0] looked up in PATH) with the server's environment,
 * stdio and working directory. Nobody has to wait for it: Bun reaps it (it is a tracked Bun.spawn
 * child, so the ChildReaper leaves it alone) and its status is only logged. The returned promise,
 * for those who want to wait anyway, resolves with the exit code (null when it could not start or
 * was killed by a signal) and never rejects.
 */
export function runCleanupCommand(argv: string[], log: Logger): Promise<number | null> {
  if (argv.length === 0) return Promise.resolve(null);
  const command = argv.join(" ");
  let proc: Bun.Subprocess<"inherit", "inherit", "inherit">;
  try {
    proc = spawnTracked(argv, { stdio: ["inherit", "inherit", "inherit"], env: process.env });
  } catch (err) {
    log.error(`Run cleanup command '${command}': ${(err as Error).message}`);
    return Promise.resolve(null);
  }
  log.debug(`Started cleanup command '${command}' (pid ${proc.pid})`);
  return proc.exited.then(
    (code) => {
      if (proc.signalCode) log.warn(`Cleanup command '${command}' was killed by ${proc.signalCode}`);
      else if (code !== 0) log.warn(`Cleanup command '${command}' exited with ${code}`);
      else log.debug(`Cleanup command '${command}' exited with 0`);
      return proc.signalCode ? null : code;
    },
    (err: unknown) => {
      log.error(`Waiting for cleanup command '${command}': ${(err as Error).message}`);
      return null;
    },
  );
}
