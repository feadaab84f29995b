import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, statSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  ERRNO, O, SysError, closeFd, fsyncFd, isErrno, readLink, closeQuietly, dupFd, errnoName, eventfd, fdTarget, getStatusFlags,
  isCloexec, isNonBlocking, isOpenFd, listOpenFds, memfdCreate, mkdirP, openFd, pipe, readEventfd,
  readFd, sealFd, setCloexec, setNonBlocking, writeAll, writeEventfd, writeFd, getPipeSize, setPipeSize,
} from "../../ffi/index.ts";
import { expectNoFdLeaks, thrown } from "../helpers/fds.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

expectNoFdLeaks();

describe("SysError", () => {
  test("closeFd(9999) throws EBADF with errno, syscall and a readable message", () => {
    const e = thrown(() => closeFd(9999));
    expect(e).toBeInstanceOf(SysError);
    const err = e as SysError;
    expect(err.code).toBe("EBADF");
    expect(err.errno).toBe(9);
    expect(err.syscall).toBe("close");
    expect(err.message).toBe("close 'fd 9999': EBADF (Bad file descriptor)");
  });

  test("openFd of a missing path carries ENOENT and the path", () => {
    const err = thrown(() => openFd("/nonexistent-dir/x", O.RDONLY)) as SysError;
    expect(err.code).toBe("ENOENT");
    expect(err.message).toBe("open '/nonexistent-dir/x': ENOENT (No such file or directory)");
  });

  test("errno table names the common errors", () => {
    const expected = {
      EPERM: 1, ENOENT: 2, ESRCH: 3, EINTR: 4, EIO: 5, ENXIO: 6, E2BIG: 7, EBADF: 9, ECHILD: 10,
      EAGAIN: 11, ENOMEM: 12, EACCES: 13, EFAULT: 14, EBUSY: 16, EEXIST: 17, ENOTDIR: 20, EISDIR: 21,
      EINVAL: 22, ENFILE: 23, EMFILE: 24, ENOTTY: 25, ENOSPC: 28, ESPIPE: 29, EPIPE: 32,
      ENAMETOOLONG: 36, ENOSYS: 38, ENOTSOCK: 88, EMSGSIZE: 90, EPROTOTYPE: 91, EOPNOTSUPP: 95,
      EADDRINUSE: 98, ECONNRESET: 104, ENOTCONN: 107, ETIMEDOUT: 110, ECONNREFUSED: 111,
    };
    for (const [name, num] of Object.entries(expected)) expect(errnoName(num)).toBe(name);
    expect(errnoName(4095)).toBe("E4095");
    expect(new SysError(4095, "x").message).toContain("E4095 (Unknown error 4095)");
  });

  test("isErrno matches our errors and Node's alike", () => {
    expect(isErrno(thrown(() => closeFd(9999)), "EBADF")).toBe(true);
    expect(isErrno(thrown(() => readFileSync("/nonexistent-dir/x")), "ENOENT")).toBe(true);
    expect(isErrno(new Error("x"), "ENOENT")).toBe(false);
    expect(isErrno(null, "ENOENT")).toBe(false);
  });

  test("NUL bytes in paths are refused instead of silently cutting the path", () => {
    expect(() => openFd("/etc/hostname\0/x", O.RDONLY)).toThrow(TypeError);
  });
});

describe("pipes", () => {
  test("pipe() gives blocking, close-on-exec ends", () => {
    const [r, w] = pipe();
    try {
      expect(isCloexec(r) && isCloexec(w)).toBe(true);
      expect(isNonBlocking(r) || isNonBlocking(w)).toBe(false);
      expect(fdTarget(r)).toMatch(/^pipe:\[\d+\]$/);
      expect(fdTarget(r)).toBe(fdTarget(w));
    } finally {
      closeFd(r);
      closeFd(w);
    }
  });

  test("read/write, EAGAIN as -1, EOF as 0", () => {
    const [r, w] = pipe();
    try {
      setNonBlocking(r);
      expect(isNonBlocking(r)).toBe(true);
      const buf = new Uint8Array(16);
      expect(readFd(r, buf)).toBe(-1);
      expect(writeFd(w, enc.encode("hello"))).toBe(5);
      expect(readFd(r, buf)).toBe(5);
      expect(dec.decode(buf.subarray(0, 5))).toBe("hello");
      closeFd(w);
      expect(readFd(r, buf)).toBe(0);
      setNonBlocking(r, false);
      expect(isNonBlocking(r)).toBe(false);
    } finally {
      closeFd(r);
      closeQuietly(w);
    }
  });

  test("offset/length and subarray views land in the right bytes", () => {
    const [r, w] = pipe();
    try {
      const backing = new Uint8Array(32).fill(0xff);
      const view = backing.subarray(10, 20); // byteOffset 10
      writeFd(w, enc.encode("abcdefgh"), 2, 3); // "cde"
      expect(readFd(r, view, 4, 2)).toBe(2); // "cd" -> backing[14..15]
      expect(readFd(r, view, 9)).toBe(1); // "e" -> backing[19]
      expect([...backing.subarray(12, 22)]).toEqual([0xff, 0xff, 99, 100, 0xff, 0xff, 0xff, 101, 0xff, 0xff]);
      expect(() => readFd(r, view, 8, 3)).toThrow(RangeError);
      expect(() => readFd(r, view, 10)).toThrow(RangeError); // zero length would look like EOF
      expect(writeFd(w, view, 10)).toBe(0);
    } finally {
      closeFd(r);
      closeFd(w);
    }
  });

  test("writeFd returns -1 when a non-blocking pipe is full", () => {
    const [r, w] = pipe();
    try {
      setNonBlocking(w);
      const chunk = new Uint8Array(65536);
      let total = 0;
      let n: number;
      while ((n = writeFd(w, chunk)) > 0) total += n;
      expect(n).toBe(-1);
      expect(total).toBeGreaterThan(0);
    } finally {
      closeFd(r);
      closeFd(w);
    }
  });

  test("writing to a pipe without reader throws EPIPE (no SIGPIPE death)", () => {
    const [r, w] = pipe();
    closeFd(r);
    try {
      expect((thrown(() => writeFd(w, enc.encode("x"))) as SysError).code).toBe("EPIPE");
    } finally {
      closeFd(w);
    }
  });

  test("setPipeSize grows a pipe (either end) and getPipeSize reads it back; shrinking below the content is EBUSY", () => {
    const [r, w] = pipe();
    try {
      expect(getPipeSize(w)).toBe(64 * 1024);
      expect(setPipeSize(r, 1024 * 1024)).toBe(1024 * 1024);
      expect(getPipeSize(w)).toBe(1024 * 1024);
      setNonBlocking(w);
      expect(writeFd(w, new Uint8Array(256 * 1024))).toBe(256 * 1024); // room beyond the default 64 KiB
      expect((thrown(() => setPipeSize(w, 4096)) as SysError).code).toBe("EBUSY");
    } finally {
      closeFd(r);
      closeFd(w);
    }
  });

  for (const nonBlocking of [false, true]) {
    test(`writeAll delivers 1 MiB through a 64 KiB pipe (${nonBlocking ? "non-blocking" : "blocking"} fd)`, async () => {
      const [r, w] = pipe();
      const counter = Bun.spawn(["wc", "-c"], { stdin: r, stdout: "pipe" });
      closeFd(r);
      try {
        if (nonBlocking) setNonBlocking(w);
        const data = new Uint8Array(1 << 20).fill(0x61);
        writeAll(w, data);
      } finally {
        closeFd(w);
      }
      expect((await new Response(counter.stdout).text()).trim()).toBe(String(1 << 20));
      expect(await counter.exited).toBe(0);
    });
  }
});

describe("fd utilities", () => {
  test("dupFd is close-on-exec by default and refers to the same pipe", () => {
    const [r, w] = pipe();
    const d = dupFd(w);
    const inheritable = dupFd(w, false);
    try {
      expect(d).not.toBe(w);
      expect(isCloexec(d)).toBe(true);
      expect(isCloexec(inheritable)).toBe(false);
      expect(fdTarget(d)).toBe(fdTarget(w));
      writeFd(d, enc.encode("z"));
      const buf = new Uint8Array(1);
      expect(readFd(r, buf)).toBe(1);
      expect(buf[0]).toBe(0x7a);
    } finally {
      for (const fd of [r, w, d, inheritable]) closeFd(fd);
    }
  });

  test("setCloexec toggles FD_CLOEXEC", () => {
    const [r, w] = pipe();
    try {
      setCloexec(r, false);
      expect(isCloexec(r)).toBe(false);
      setCloexec(r, true);
      expect(isCloexec(r)).toBe(true);
    } finally {
      closeFd(r);
      closeFd(w);
    }
  });

  test("listOpenFds sees new fds and forgets closed ones", () => {
    const [r, w] = pipe();
    expect(listOpenFds()).toEqual(expect.arrayContaining([r, w]));
    closeFd(r);
    closeFd(w);
    expect(listOpenFds()).not.toContain(r);
    expect(isOpenFd(r)).toBe(false);
    expect((thrown(() => fdTarget(r)) as SysError).code).toBe("ENOENT");
  });

  test("openFd adds O_CLOEXEC and honours flags", () => {
    const dir = mkdtempSync(join(tmpdir(), "ffi-fd-"));
    try {
      const path = join(dir, "f");
      const fd = openFd(path, O.WRONLY | O.CREAT | O.EXCL | O.APPEND, 0o600);
      try {
        expect(isCloexec(fd)).toBe(true);
        expect(getStatusFlags(fd) & O.APPEND).toBe(O.APPEND);
        writeAll(fd, enc.encode("data"));
      } finally {
        closeFd(fd);
      }
      expect(statSync(path).size).toBe(4);
      expect(statSync(path).mode & 0o777).toBe(0o600);
      expect((thrown(() => openFd(path, O.WRONLY | O.CREAT | O.EXCL)) as SysError).code).toBe("EEXIST");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("fsyncFd flushes files and refuses pipes; readLink reads symlinks", () => {
    const dir = mkdtempSync(join(tmpdir(), "ffi-fd-"));
    const [r, w] = pipe();
    try {
      const fd = openFd(join(dir, "f"), O.WRONLY | O.CREAT);
      try {
        writeAll(fd, enc.encode("x"));
        fsyncFd(fd);
      } finally {
        closeFd(fd);
      }
      expect((thrown(() => fsyncFd(w)) as SysError).code).toBe("EINVAL");
      symlinkSync("target/of/link", join(dir, "link"));
      expect(readLink(join(dir, "link"))).toBe("target/of/link");
      expect((thrown(() => readLink(join(dir, "f"))) as SysError).code).toBe("EINVAL");
    } finally {
      closeFd(r);
      closeFd(w);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("mkdirP creates every level and reports ENOTDIR for a file in the way", () => {
    const dir = mkdtempSync(join(tmpdir(), "ffi-fd-"));
    try {
      mkdirP(join(dir, "a/b/c"));
      mkdirP(join(dir, "a/b/c")); // idempotent
      expect(statSync(join(dir, "a/b/c")).isDirectory()).toBe(true);
      expect((thrown(() => mkdirP("/etc/hostname/sub")) as SysError).code).toBe("ENOTDIR");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("eventfd counts and reads back null when empty", () => {
    const fd = eventfd(0);
    try {
      expect(isNonBlocking(fd) && isCloexec(fd)).toBe(true);
      expect(readEventfd(fd)).toBeNull();
      writeEventfd(fd, 2);
      writeEventfd(fd, 5);
      expect(readEventfd(fd)).toBe(7);
      expect(readEventfd(fd)).toBeNull();
    } finally {
      closeFd(fd);
    }
  });

  test("memfdCreate gives a sealable anonymous file", () => {
    const fd = memfdCreate("journal-entry");
    try {
      expect(fdTarget(fd)).toBe("/memfd:journal-entry (deleted)");
      expect(isCloexec(fd)).toBe(true);
      writeAll(fd, enc.encode("MESSAGE=x\n"));
      sealFd(fd);
      expect((thrown(() => writeFd(fd, enc.encode("more"))) as SysError).errno).toBe(ERRNO.EPERM);
    } finally {
      closeFd(fd);
    }
  });
});
