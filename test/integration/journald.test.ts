// journald native protocol against a real systemd-journald.
//
// How journald runs here: PID 1 is not systemd on the dev/CI VMs, so nothing serves
// /run/systemd/journal/socket by default. systemd-journald runs fine standalone as root: started
// without socket activation it creates /run/systemd/journal/{socket,stdout,dev-log,...} itself and
// writes a runtime journal to /run/log/journal/<machine-id>/, which `journalctl` reads.
//
//   1. If the socket already accepts a datagram (a real systemd host, or a journald left running),
//      it is used as is and left alone.
//   2. Otherwise /lib/systemd/systemd-journald is spawned (mkdir -p /run/systemd/journal first) and
//      we wait until its socket accepts datagrams. afterAll stops it with SIGTERM; the socket files
//      it leaves behind are stale (ECONNREFUSED), which JournalSender reports as "absent".
//   3. If that is impossible (not root, no binary, it exits), the tests are skipped and the reason
//      is printed.
//
// Entries are read back with `journalctl -o json --all CONTAINER_ID_FULL=<uuid>` (or `_PID=` for
// the own-log style entry), polling until they show up.

import { afterAll, describe, expect, test } from "bun:test";
import { ContainerLog } from "../../src/container-log.ts";
import { JournalSender, encodeJournalEntry } from "../../src/journal.ts";
import { ensureJournald, fieldText, journalEntries, waitForEntries, type JsonEntry } from "../helpers/journald.ts";

const journald = await ensureJournald();
if (!journald.available) console.warn(`journald integration tests skipped: ${journald.reason}`);
afterAll(() => journald.stop());

describe.skipIf(!journald.available)("journald (real systemd-journald)", () => {
  test("container log driver: one entry per line with container fields", async () => {
    const id = crypto.randomUUID().replaceAll("-", "");
    const log = await ContainerLog.open(id, [{ type: "journald", path: "", maxSize: 0 }]);
    log.write("stdout", Buffer.from("first line\nsecond line\npartial"));
    log.write("stderr", Buffer.from("an error\n"));
    await log.flush();
    log.close();

    const entries = await waitForEntries(`CONTAINER_ID_FULL=${id}`, 4);
    expect(entries.map((e) => [fieldText(e.MESSAGE), e.CONTAINER_STREAM, e.PRIORITY])).toEqual([
      ["first line\n", "stdout", "5"],
      ["second line\n", "stdout", "5"],
      ["partial", "stdout", "5"],
      ["an error\n", "stderr", "5"],
    ]);
    expect(entries[0]!._PID).toBe(String(process.pid));
    expect(entries[0]!._TRANSPORT).toBe("journal");
  });

  test("invalid UTF-8 arrives byte for byte", async () => {
    const id = crypto.randomUUID().replaceAll("-", "");
    const log = await ContainerLog.open(id, [{ type: "journald", path: "", maxSize: 0 }]);
    log.write("stdout", Uint8Array.from([0x62, 0x61, 0x64, 0xff, 0xfe, 0x0a]));
    await log.flush();
    log.close();
    const [entry] = await waitForEntries(`CONTAINER_ID_FULL=${id}`, 1);
    expect(entry!.MESSAGE).toEqual([0x62, 0x61, 0x64, 0xff, 0xfe, 0x0a]);
  });

  test("a burst larger than journald's receive queue arrives complete and in order", async () => {
    const id = crypto.randomUUID().replaceAll("-", "");
    const log = await ContainerLog.open(id, [{ type: "journald", path: "", maxSize: 0 }]);
    const lines = Array.from({ length: 1000 }, (_, i) => `burst ${i}\n`);
    const pending = log.write("stdout", Buffer.from(lines.join("")));
    await pending;
    log.close();
    const entries = await waitForEntries(`CONTAINER_ID_FULL=${id}`, lines.length);
    expect(entries.map((e) => fieldText(e.MESSAGE))).toEqual(lines);
  });

  test("an entry over 250 KB goes through the memfd path", async () => {
    const id = crypto.randomUUID().replaceAll("-", "");
    const big = `${"x".repeat(300 * 1024)}\n`;
    const sender = new JournalSender();
    try {
      expect(sender.send([["MESSAGE", big], ["CONTAINER_ID_FULL", id], ["CONTAINER_STREAM", "stdout"]])).toBe(true);
    } finally {
      sender.close();
    }
    const [entry] = await waitForEntries(`CONTAINER_ID_FULL=${id}`, 1);
    expect(entry).toBeDefined();
    expect(fieldText(entry!.MESSAGE)).toBe(big);
    expect(entry!.CONTAINER_STREAM).toBe("stdout");
  });

  test("own-log style entry (PRIORITY + MESSAGE, as src/logger.ts sends)", async () => {
    const marker = `conmon-ts own-log ${crypto.randomUUID()}`;
    const sender = new JournalSender();
    try {
      expect(sender.send([["PRIORITY", "6"], ["MESSAGE", `${marker}\n`]])).toBe(true);
    } finally {
      sender.close();
    }
    const deadline = Date.now() + 10_000;
    let found: JsonEntry | undefined;
    while (!found && Date.now() < deadline) {
      found = journalEntries(`_PID=${process.pid}`).find((e) => fieldText(e.MESSAGE)?.startsWith(marker));
      if (!found) await Bun.sleep(50);
    }
    expect(found).toBeDefined();
    expect(fieldText(found!.MESSAGE)).toBe(`${marker}\n`);
    expect(found!.PRIORITY).toBe("6");
  });
});
