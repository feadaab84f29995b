import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bindDgram, closeFd, listOpenFds, recvMsg } from "../../ffi/index.ts";
import { ContainerLog, type LogDriverConfig } from "../../src/container-log.ts";
import { JournalSender } from "../../src/journal.ts";

const TS = "2026-01-02T03:04:05.5Z";
const T = 1767323045;
const bytes = (s: string) => new TextEncoder().encode(s);
const fixed = { criClock: { now: () => TS }, jsonClock: () => T };

describe("ContainerLog", () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "container-log-"));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  test("zero drivers: writes, reopen and close are no-ops", async () => {
    const log = await ContainerLog.open("id", []);
    expect(log.driverCount).toBe(0);
    expect(log.write("stdout", bytes("x\n"))).toBeUndefined();
    log.reopen();
    await log.flush();
    log.close();
  });

  test("fans out to a mix of drivers, duplicates included", async () => {
    const cri1 = join(dir, "a.log");
    const cri2 = join(dir, "b.log");
    const json = join(dir, "c.json");
    const log = await ContainerLog.open(
      "id",
      [
        { type: "cri", path: cri1, maxSize: 0 },
        { type: "cri", path: cri2, maxSize: 0n },
        { type: "json", path: json, maxSize: 0 },
      ],
      fixed,
    );
    log.write("stdout", bytes("hello\npar"));
    log.write("stderr", bytes("err\n"));
    log.close();
    const cri = `${TS} stdout F hello\n${TS} stdout P par\n${TS} stderr F err\n`;
    expect(readFileSync(cri1, "utf8")).toBe(cri);
    expect(readFileSync(cri2, "utf8")).toBe(cri);
    expect(readFileSync(json, "utf8").trim().split("\n").map((l) => JSON.parse(l))).toEqual([
      { timestamp: T, pipe: "stdout", message: "hello" },
      { timestamp: T, pipe: "stdout", message: "par" },
      { timestamp: T, pipe: "stderr", message: "err" },
    ]);
  });

  test("journald driver next to a file driver", async () => {
    const socketPath = join(dir, "journal.sock");
    const receiver = bindDgram(socketPath);
    const journal = new JournalSender({ socketPath });
    try {
      const log = await ContainerLog.open(
        "cid",
        [
          { type: "journald", path: "", maxSize: 0 },
          { type: "cri", path: join(dir, "a.log"), maxSize: 0 },
        ],
        { ...fixed, journal },
      );
      log.write("stdout", bytes("to both\n"));
      await log.flush();
      log.close();
      const buf = new Uint8Array(4096);
      const msg = recvMsg(receiver, buf)!;
      expect(Buffer.from(buf.subarray(0, msg.n)).toString()).toContain("CONTAINER_ID_FULL=cid\n");
      expect(readFileSync(join(dir, "a.log"), "utf8")).toBe(`${TS} stdout F to both\n`);
    } finally {
      journal.close();
      closeFd(receiver);
    }
  });

  test("an open failure closes what was opened and throws upstream's text", async () => {
    const before = listOpenFds();
    const configs: LogDriverConfig[] = [
      { type: "cri", path: join(dir, "ok.log"), maxSize: 0 },
      { type: "json", path: "/no/such/dir/x.log", maxSize: 0 },
    ];
    await expect(ContainerLog.open("id", configs)).rejects.toThrow(
      "open log file path '/no/such/dir/x.log': No such file or directory (os error 2)",
    );
    expect(listOpenFds()).toEqual(before);
  });

  test("a failing driver is reported and does not stop the others", async () => {
    const errors: string[] = [];
    const good = join(dir, "good.log");
    const log = await ContainerLog.open(
      "id",
      [
        { type: "json", path: "/dev/full", maxSize: 0 }, // every write fails with ENOSPC
        { type: "cri", path: good, maxSize: 0 },
      ],
      { ...fixed, onError: (e, d) => errors.push(`${d.type}: ${e.message}`) },
    );
    log.write("stdout", bytes("one\n"));
    log.write("stdout", bytes("two\n"));
    log.close();
    expect(readFileSync(good, "utf8")).toBe(`${TS} stdout F one\n${TS} stdout F two\n`);
    expect(errors).toEqual([
      "json: write to log file '/dev/full': No space left on device (os error 28)",
      "json: write to log file '/dev/full': No space left on device (os error 28)",
    ]);
  });

  test("reopen reopens every file driver; after close writes are ignored", async () => {
    const cri = join(dir, "a.log");
    const json = join(dir, "b.json");
    const log = await ContainerLog.open(
      "id",
      [
        { type: "cri", path: cri, maxSize: 0 },
        { type: "json", path: json, maxSize: 0 },
        { type: "journald", path: "", maxSize: 0 },
      ],
      { ...fixed, journal: new JournalSender({ socketPath: join(dir, "absent") }) },
    );
    log.write("stdout", bytes("before\n"));
    renameSync(cri, `${cri}.1`);
    renameSync(json, `${json}.1`);
    log.reopen();
    log.write("stdout", bytes("after\n"));
    log.close();
    log.close();
    expect(log.write("stdout", bytes("late\n"))).toBeUndefined();
    expect(readFileSync(`${cri}.1`, "utf8")).toBe(`${TS} stdout F before\n`);
    expect(readFileSync(cri, "utf8")).toBe(`${TS} stdout F after\n`);
    expect(readFileSync(`${json}.1`, "utf8")).toContain('"message":"before"');
    expect(readFileSync(json, "utf8")).toContain('"message":"after"');
  });

  test("reopen tries every driver and throws the first error", async () => {
    const sub = join(dir, "sub");
    require("node:fs").mkdirSync(sub);
    const broken = join(sub, "a.log");
    const fine = join(dir, "b.log");
    const log = await ContainerLog.open(
      "id",
      [
        { type: "cri", path: broken, maxSize: 0 },
        { type: "cri", path: fine, maxSize: 0 },
      ],
      fixed,
    );
    log.write("stdout", bytes("x\n"));
    rmSync(sub, { recursive: true });
    expect(() => log.reopen()).toThrow(`open log file path '${broken}': No such file or directory (os error 2)`);
    log.write("stdout", bytes("y\n"));
    log.close();
    expect(readFileSync(fine, "utf8")).toBe(`${TS} stdout F y\n`); // the second one was reopened
  });
});
