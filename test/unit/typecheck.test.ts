// The whole tree type-checks (src, ffi, schema, test, bench, build.ts): bun runs TypeScript
// without checking types, so this is the only place a type error is caught.
import { expect, test } from "bun:test";
import { join } from "node:path";

test("tsc --noEmit reports no errors", () => {
  const root = join(import.meta.dir, "../..");
  const tsc = Bun.spawnSync([process.execPath, join(root, "node_modules/typescript/bin/tsc"), "--noEmit", "-p", root], {
    cwd: root,
    env: { ...process.env, BUN_BE_BUN: "1" },
  });
  const output = tsc.stdout.toString() + tsc.stderr.toString();
  expect(output).toBe("");
  expect(tsc.exitCode).toBe(0);
}, 120_000);
