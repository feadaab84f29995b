// Shared by the ffi suites: fd-leak checks and catching a thrown error.
import { afterAll, beforeAll, expect } from "bun:test";
import { fdTarget, listOpenFds } from "../../ffi/fd.ts";

/** fds opened since `before`, described. Bun closes the stdio sockets of finished Bun.spawn
 * children lazily, so give it a moment (and a GC) before calling anything a leak. */
export async function leakedFds(before: number[]): Promise<string[]> {
  let leaked: number[] = [];
  for (let attempt = 0; attempt < 20; attempt++) {
    leaked = listOpenFds().filter((fd) => !before.includes(fd));
    if (leaked.length === 0) return [];
    Bun.gc(true);
    await Bun.sleep(25);
  }
  return leaked.map((fd) => {
    try {
      return `${fd} -> ${fdTarget(fd)}`;
    } catch {
      return `${fd} (closed meanwhile)`;
    }
  });
}

export function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error("expected a throw");
}

/** "<fd> -> <target>", or null when the fd was closed meanwhile (Bun's own threads open and close
 * fds at any time). */
export function describeFd(fd: number): string | null {
  try {
    return `${fd} -> ${fdTarget(fd)}`;
  } catch {
    return null;
  }
}

/** Registers hooks that fail the file if it ends with fds it did not have when it started. */
export function expectNoFdLeaks(): void {
  let before: number[] = [];
  beforeAll(() => {
    before = listOpenFds();
  });
  afterAll(async () => {
    expect(await leakedFds(before)).toEqual([]);
  });
}
