// Upstream forks: the parent writes <runtime-dir>/pidfile and exits, the child serves. Bun cannot
// fork, so the process the engine starts re-executes itself with --skip-fork as the long-lived
// server, and exits 0 only once that server's socket accepts connections (upstream's parent exits
// before the child binds; being stricter spares clients a retry loop).

import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ServerConfig } from "./cli.ts";
import { withShortPath } from "./rpc/listener.ts";
import { SOCKET_NAME, validateConfig } from "./server.ts";

const READY_TIMEOUT_MS = 10_000;

/** argv that starts this same program again: compiled binary, or bun + script when run from source. */
export function selfCommand(): string[] {
  const compiled = Bun.main.startsWith("/$bunfs/") || Bun.main.startsWith("B:/~BUN/");
  return compiled ? [executablePath()] : [process.execPath, Bun.main];
}

/**
 * Our binary's path. When it was replaced on disk while we run (an upgrade with pods running),
 * the kernel names it `<path> (deleted)`: use the new file at the same path if there is one.
 * /proc/self/exe is no answer: a launcher prefix such as unshare(1) resolves it to itself, and a
 * process in a fresh user namespace may not read our /proc/<pid>/exe.
 */
function executablePath(): string {
  const deleted = " (deleted)";
  const path = process.execPath;
  if (!path.endsWith(deleted)) return path;
  const replaced = path.slice(0, -deleted.length);
  return existsSync(replaced) ? replaced : `/proc/${process.pid}/exe`;
}

function accepts(socketPath: string): Promise<boolean> {
  if (!existsSync(socketPath)) return Promise.resolve(false);
  return new Promise((resolve) => {
    try {
      withShortPath(socketPath, (shortPath) =>
        Bun.connect({
          unix: shortPath,
          socket: {
            open(socket) {
              socket.end();
              resolve(true);
            },
            connectError() {
              resolve(false);
            },
            data() {},
            error() {
              resolve(false);
            },
          },
        }).catch(() => resolve(false)),
      );
    } catch {
      resolve(false);
    }
  });
}

/** Returns the exit status for the launcher process. */
export async function launch(config: ServerConfig, args: string[]): Promise<number> {
  validateConfig(config);
  const child = Bun.spawn([...selfCommand(), ...args, "--skip-fork"], {
    stdio: ["inherit", "inherit", "inherit"],
    env: process.env,
  });
  let exited: number | undefined;
  child.exited.then((code) => (exited = code));
  const socketPath = join(config.runtimeDir, SOCKET_NAME);
  const deadline = performance.now() + READY_TIMEOUT_MS;
  while (exited === undefined && performance.now() < deadline) {
    if (await accepts(socketPath)) {
      // Bare digits, no newline: the Go client parses it with strconv.ParseUint.
      writeFileSync(join(config.runtimeDir, "pidfile"), String(child.pid));
      child.unref();
      return 0;
    }
    await Bun.sleep(2);
  }
  if (exited !== undefined) return exited === 0 ? 1 : exited;
  process.stderr.write(`Error: start server\n\nCaused by:\n    server did not accept connections on '${socketPath}' within ${READY_TIMEOUT_MS} ms\n`);
  child.kill("SIGKILL");
  return 1;
}
