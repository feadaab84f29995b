// Starting the compiled `dist/conmonrs` the way engines do, for the integration suites.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ConmonClient, type ConmonServerConfig } from "../../src/client/index.ts";
import { tmpDir, removeDir } from "./proc.ts";
import { spawnPrefix, type Runtime } from "./runtimes.ts";

export const BINARY = join(import.meta.dir, "../../dist/conmonrs");

export function requireBinary(): string {
  if (!existsSync(BINARY)) throw new Error(`${BINARY} missing: run \`make build\` (make test does)`);
  return BINARY;
}

export interface TestServer {
  client: ConmonClient;
  runDir: string;
  /** Shuts the server down and removes its run dir. */
  stop(): Promise<void>;
}

/** Starts a server through ConmonClient.new (launcher, pidfile, version probe), as the Go client does. */
export async function startServer(
  runtime: Runtime | { name: "runc" | "crun"; path: string },
  extra: Partial<ConmonServerConfig> = {},
): Promise<TestServer> {
  const runDir = extra.serverRunDir ?? tmpDir(`conmon-${runtime.name}`);
  const client = await ConmonClient.new({
    conmonServerPath: requireBinary(),
    runtime: runtime.path,
    serverRunDir: runDir,
    logDriver: "none",
    wrapper: spawnPrefix(runtime.name),
    ...extra,
  });
  return {
    client,
    runDir,
    async stop() {
      try {
        await client.shutdown();
      } finally {
        removeDir(runDir);
      }
    },
  };
}
