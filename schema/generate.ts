// Regenerates schema/conmon.ts from schema/conmon.capnp with the pinned capnp-es.
//
//   bun schema/generate.ts          write schema/conmon.ts
//   bun schema/generate.ts --check  exit 1 if the committed file is stale
//
// capnp-es is run with cwd = schema/ and the bare file name, because it embeds the path it was
// given into every method descriptor (`interfaceName: "conmon.capnp:Conmon"`); running it from
// elsewhere would change the output.
import { mkdtemp, readFile, rm, copyFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const SCHEMA_DIR = import.meta.dir;
export const REPO_ROOT = join(SCHEMA_DIR, "..");
export const SCHEMA_FILE = join(SCHEMA_DIR, "conmon.capnp");
export const GENERATED_FILE = join(SCHEMA_DIR, "conmon.ts");
const CAPNP_ES = join(REPO_ROOT, "node_modules/capnp-es/dist/compiler/capnpc-js.mjs");

/** Generates conmon.ts into `outDir` and returns its path. */
export async function generateInto(outDir: string): Promise<string> {
  const proc = Bun.spawn([process.execPath, CAPNP_ES, "conmon.capnp", `-ots:${outDir}`], {
    cwd: SCHEMA_DIR,
    // capnp-es reads a CodeGeneratorRequest from stdin unless stdin is empty or a TTY;
    // an inherited pipe would make it wait forever.
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const [out, err, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  const file = join(outDir, "conmon.ts");
  if (code !== 0 || !(await Bun.file(file).exists())) {
    throw new Error(`capnp-es failed (exit ${code}); is capnpc on PATH?\n${out}${err}`);
  }
  return file;
}

/** Returns whether the committed schema/conmon.ts equals a fresh generation. */
export async function isFresh(): Promise<{ fresh: boolean; generated: Uint8Array; committed: Uint8Array | null }> {
  const dir = await mkdtemp(join(tmpdir(), "conmon-schema-"));
  try {
    const generated = new Uint8Array(await readFile(await generateInto(dir)));
    const committed = (await Bun.file(GENERATED_FILE).exists())
      ? new Uint8Array(await readFile(GENERATED_FILE))
      : null;
    const fresh = committed !== null && Buffer.from(generated).equals(Buffer.from(committed));
    return { fresh, generated, committed };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  if (args.some((a) => a !== "--check")) {
    console.error("usage: bun schema/generate.ts [--check]");
    return 2;
  }
  if (args.includes("--check")) {
    const { fresh, committed } = await isFresh();
    if (fresh) return 0;
    console.error(
      committed === null
        ? "schema/conmon.ts is missing; run `bun schema/generate.ts`"
        : "schema/conmon.ts is stale (differs from what schema/conmon.capnp generates); run `bun schema/generate.ts`",
    );
    return 1;
  }
  const dir = await mkdtemp(join(tmpdir(), "conmon-schema-"));
  try {
    await copyFile(await generateInto(dir), GENERATED_FILE);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  console.log("wrote schema/conmon.ts");
  return 0;
}

if (import.meta.main) process.exit(await main());
