// What the server declares at start-up. build.ts splits the executable into chunks so that the
// concerns behind createContainer, exec-sync, streaming, namespaces and the client CLI load with
// the first call that needs them (an idle monitor keeps less memory, docs/performance.md). One
// static import in the wrong place silently pulls them all back into the start-up chunk; these
// tests catch that from the same bundle build.ts makes (without minification, so Bun's
// `// <source path>` markers stay in).

import { describe, expect, test } from "bun:test";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..", "..");

type Chunk = { path: string; text: string };

async function bundle(): Promise<Chunk[]> {
  const result = await Bun.build({
    entrypoints: [join(ROOT, "src/main.ts")],
    target: "bun",
    format: "esm",
    splitting: true,
  });
  if (!result.success) throw new AggregateError(result.logs, "bun build failed");
  return Promise.all(result.outputs.map(async (o) => ({ path: o.path.replace(/^\.\//, ""), text: await o.text() })));
}

/** Chunks reachable from the entry through static imports: what runs before main() does. */
function startupChunks(chunks: Chunk[]): Chunk[] {
  const byName = new Map(chunks.map((c) => [c.path, c]));
  const entry = chunks.find((c) => c.path === "main.js");
  if (!entry) throw new Error(`no main.js among ${chunks.map((c) => c.path).join(", ")}`);
  const seen = new Set<Chunk>();
  const visit = (chunk: Chunk) => {
    if (seen.has(chunk)) return;
    seen.add(chunk);
    for (const m of chunk.text.matchAll(/^import\s*(?:[^"'()]*?\sfrom\s*)?["']\.\/([^"']+)["']/gm)) {
      const next = byName.get(m[1]!);
      if (!next) throw new Error(`${chunk.path} imports ./${m[1]}, which the build did not emit`);
      visit(next);
    }
  };
  visit(entry);
  return [...seen];
}

/** Source files a chunk carries, from Bun's `// path` markers. */
function sources(chunk: Chunk): Set<string> {
  return new Set([...chunk.text.matchAll(/^\/\/ ((?:src|ffi|schema|node_modules)\/\S+)$/gm)].map((m) => m[1]!));
}

describe("start-up chunks of the conmonrs executable", async () => {
  const chunks = await bundle();
  const eager = new Set(startupChunks(chunks).flatMap((c) => [...sources(c)]));
  const all = new Set(chunks.flatMap((c) => [...sources(c)]));

  test("the RPC server, the CLI and version are loaded at start-up", () => {
    for (const path of ["src/main.ts", "src/cli.ts", "src/server.ts", "src/rpc/connection.ts", "src/version.ts", "schema/conmon.ts"]) {
      expect(eager).toContain(path);
    }
  });

  test("the concerns and the client CLI are split out and loaded on first use", () => {
    const deferred = [
      "src/concerns.ts",
      "src/containers.ts",
      "src/exec-sync.ts",
      "src/streaming-server.ts",
      "src/namespaces.ts",
      "src/fd-socket.ts",
      "src/child-reaper.ts",
      "src/pause.ts",
      "src/operator-cli.ts",
      "src/client/conmon-client.ts",
      "ffi/poller.ts",
      "ffi/tty.ts",
    ];
    for (const path of deferred) {
      expect(all).toContain(path); // still in the executable
      expect(eager).not.toContain(path);
    }
  });

  test("no chunk imports node:crypto (1.6 MB of start-up heap for one randomUUID)", () => {
    const importing = chunks.filter((c) => /from\s*["'](node:)?crypto["']/.test(c.text)).map((c) => c.path);
    expect(importing).toEqual([]);
  });
});
