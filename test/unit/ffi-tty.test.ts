import { describe, expect, test } from "bun:test";
import {
  SysError, closeFd, fdTarget, getWindowSize, isCloexec, openPty, pipe, readFd,
  setNonBlocking, setOnlcr, setWindowSize, writeAll,
} from "../../ffi/index.ts";
import { expectNoFdLeaks, thrown } from "../helpers/fds.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

expectNoFdLeaks();

/** Reads from a non-blocking master until `expected` bytes arrived (the pty layer forwards
 * output through a kernel work queue, so it is not always readable right after the write). */
async function readMaster(master: number, expected: number): Promise<string> {
  const buf = new Uint8Array(256);
  let got = "";
  const deadline = performance.now() + 1000;
  while (enc.encode(got).length < expected && performance.now() < deadline) {
    const n = readFd(master, buf);
    if (n > 0) got += dec.decode(buf.subarray(0, n));
    else await Bun.sleep(2);
  }
  return got;
}

function withPty<T>(body: (pty: { master: number; slave: number; slavePath: string }) => T): T {
  const pty = openPty();
  try {
    return body(pty);
  } finally {
    closeFd(pty.slave);
    closeFd(pty.master);
  }
}

describe("pty", () => {
  test("openPty gives close-on-exec ends and the slave's /dev/pts name", () => {
    withPty(({ master, slave, slavePath }) => {
      expect(slavePath).toMatch(/^\/dev\/pts\/\d+$/);
      expect(fdTarget(slave)).toBe(slavePath);
      expect(fdTarget(master)).toMatch(/^\/dev\/(pts\/)?ptmx$/);
      expect(isCloexec(master) && isCloexec(slave)).toBe(true);
    });
  });

  test("setOnlcr turns \\n written to the slave into \\r\\n on the master", async () => {
    const pty = openPty();
    try {
      setNonBlocking(pty.master);
      setOnlcr(pty.slave, false); // new ptys start with ONLCR on; prove the difference
      writeAll(pty.slave, enc.encode("a\n"));
      expect(await readMaster(pty.master, 2)).toBe("a\n");
      setOnlcr(pty.slave);
      writeAll(pty.slave, enc.encode("a\n"));
      expect(await readMaster(pty.master, 3)).toBe("a\r\n");
    } finally {
      closeFd(pty.slave);
      closeFd(pty.master);
    }
  });

  test("window size round trip, on either end", () => {
    withPty(({ master, slave }) => {
      setWindowSize(master, 33, 101);
      expect(getWindowSize(slave)).toEqual({ rows: 33, cols: 101 });
      setWindowSize(slave, 65535, 1);
      expect(getWindowSize(master)).toEqual({ rows: 65535, cols: 1 });
      expect(() => setWindowSize(master, 70000, 1)).toThrow(RangeError);
    });
  });

  test("terminal calls on a pipe fail with ENOTTY", () => {
    const [r, w] = pipe();
    try {
      expect((thrown(() => getWindowSize(r)) as SysError).code).toBe("ENOTTY");
      expect((thrown(() => setWindowSize(r, 1, 1)) as SysError).code).toBe("ENOTTY");
      const err = thrown(() => setOnlcr(w)) as SysError;
      expect(err.code).toBe("ENOTTY");
      expect(err.message).toBe(`tcgetattr 'fd ${w}': ENOTTY (Inappropriate ioctl for device)`);
    } finally {
      closeFd(r);
      closeFd(w);
    }
  });
});
