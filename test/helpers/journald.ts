// A real systemd-journald for the suites that need one (see journald.test.ts's header for how it
// runs without systemd as PID 1), and reading entries back with journalctl.
import { existsSync, mkdirSync } from "node:fs";
import { DEFAULT_JOURNAL_SOCKET, JournalSender, encodeJournalEntry } from "../../src/journal.ts";

const JOURNALD = "/lib/systemd/systemd-journald";

export interface Journald {
  available: boolean;
  reason?: string;
  stop(): Promise<void>;
}

function socketServed(): boolean {
  const probe = new JournalSender();
  try {
    return probe.trySend(encodeJournalEntry([["MESSAGE", "conmon-ts journald test: probe"]])) !== "absent";
  } catch {
    return false;
  } finally {
    probe.close();
  }
}

export async function ensureJournald(): Promise<Journald> {
  const nothingToStop = async () => {};
  if (socketServed()) return { available: true, stop: nothingToStop };
  if (!existsSync(JOURNALD)) return { available: false, reason: `${JOURNALD} is not installed`, stop: nothingToStop };
  if (Bun.which("journalctl") === null) return { available: false, reason: "journalctl is not installed", stop: nothingToStop };
  if (process.getuid?.() !== 0) return { available: false, reason: "systemd-journald needs root to run standalone", stop: nothingToStop };

  mkdirSync("/run/systemd/journal", { recursive: true });
  const proc = Bun.spawn([JOURNALD], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const stop = async () => {
    if (proc.exitCode === null) proc.kill("SIGTERM");
    await proc.exited;
  };
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (socketServed()) return { available: true, stop };
    if (proc.exitCode !== null) {
      const output = (await new Response(proc.stderr).text()) + (await new Response(proc.stdout).text());
      return { available: false, reason: `${JOURNALD} exited with ${proc.exitCode}: ${output.trim()}`, stop: nothingToStop };
    }
    await Bun.sleep(50);
  }
  await stop();
  return { available: false, reason: `${JOURNALD} started but ${DEFAULT_JOURNAL_SOCKET} never accepted a datagram`, stop: nothingToStop };
}

export type JsonEntry = Record<string, string | number[] | null>;

export function journalEntries(match: string): JsonEntry[] {
  const run = Bun.spawnSync(["journalctl", "-o", "json", "--all", "--no-pager", match], { stderr: "pipe" });
  const out = run.stdout.toString().trim();
  return out ? out.split("\n").map((line) => JSON.parse(line) as JsonEntry) : [];
}

/** journald writes asynchronously; poll until `count` entries match. */
export async function waitForEntries(match: string, count: number, timeoutMs = 10_000): Promise<JsonEntry[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const entries = journalEntries(match);
    if (entries.length >= count || Date.now() > deadline) return entries;
    await Bun.sleep(50);
  }
}

/** journalctl prints printable values as strings and anything else as a byte array. */
export function fieldText(value: JsonEntry[string] | undefined): string | undefined {
  if (value === undefined || value === null) return undefined;
  return typeof value === "string" ? value : Buffer.from(value).toString("latin1");
}

