import { afterEach, describe, expect, spyOn, test } from "bun:test";
import {
  O, type Readiness, SysError, closeFd, eventfd, readEventfd, writeEventfd, closeQuietly, getStatusFlags, isOpenFd,
  pipe, readFd, socketPair, watch, watchedCount, writeFd,
} from "../../ffi/index.ts";
import { expectNoFdLeaks } from "../helpers/fds.ts";

const enc = new TextEncoder();
const ffiDir = new URL("../../ffi/index.ts", import.meta.url).pathname;

expectNoFdLeaks();

afterEach(() => {
  expect(watchedCount()).toBe(0);
});

/** Resolves when `check` is true, polling every few ms; rejects after `ms`. */
async function until(check: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = performance.now() + ms;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await Bun.sleep(2);
  }
}

function drain(fd: number): number {
  const buf = new Uint8Array(4096);
  let total = 0;
  let n: number;
  while ((n = readFd(fd, buf)) > 0) total += n;
  return total;
}

describe("poller", () => {
  test("a write to a watched pipe wakes the callback through SIGIO within 50 ms", async () => {
    const [r, w] = pipe();
    try {
      let firedAt = 0;
      const wt = watch(r, { read: true }, (ev) => {
        if (ev.readable) firedAt = performance.now();
        drain(r);
      });
      try {
        expect(getStatusFlags(r) & (O.ASYNC | O.NONBLOCK)).toBe(O.ASYNC | O.NONBLOCK);
        await Bun.sleep(20); // let the initial pump pass: nothing to read yet
        expect(firedAt).toBe(0);
        const writtenAt = performance.now();
        writeFd(w, enc.encode("x"));
        // Far below the 1 s safety pump: only the SIGIO path can be this fast.
        await until(() => firedAt > 0, 50, "the readable callback");
        expect(firedAt - writtenAt).toBeLessThan(50);
      } finally {
        wt.close();
      }
    } finally {
      closeFd(r);
      closeFd(w);
    }
  });

  test("level-triggered: a callback reading 1 byte of 3 is called 3 times", async () => {
    const [r, w] = pipe();
    try {
      const seen: string[] = [];
      const one = new Uint8Array(1);
      const wt = watch(r, { read: true }, (ev) => {
        expect(ev.readable).toBe(true);
        if (readFd(r, one) === 1) seen.push(String.fromCharCode(one[0]!));
      });
      try {
        writeFd(w, enc.encode("abc"));
        await until(() => seen.length === 3, 200, "three callbacks");
        await Bun.sleep(30); // drained: no fourth call
        expect(seen).toEqual(["a", "b", "c"]);
      } finally {
        wt.close();
      }
    } finally {
      closeFd(r);
      closeFd(w);
    }
  });

  test("200 watched pipes each get their own callback", async () => {
    const pipes = Array.from({ length: 200 }, () => pipe());
    const got = new Map<number, number>();
    const watches = pipes.map(([r]) =>
      watch(r, { read: true }, () => {
        got.set(r, (got.get(r) ?? 0) + drain(r));
      }),
    );
    try {
      expect(watchedCount()).toBe(200);
      await Bun.sleep(5);
      const order = pipes.map((_, i) => i).sort(() => Math.random() - 0.5);
      for (const i of order) writeFd(pipes[i]![1], enc.encode("x".repeat(1 + (i % 7))));
      await until(() => got.size === 200, 2000, "200 callbacks");
      pipes.forEach(([r], i) => expect(got.get(r)).toBe(1 + (i % 7)));
    } finally {
      for (const wt of watches) wt.close();
      for (const [r, w] of pipes) {
        closeFd(r);
        closeFd(w);
      }
    }
    expect(watchedCount()).toBe(0);
  });

  test("close() stops callbacks, clears O_ASYNC and leaves the fd open", async () => {
    const [r, w] = pipe();
    try {
      let calls = 0;
      const wt = watch(r, { read: true }, () => calls++);
      expect(watchedCount()).toBe(1);
      wt.close();
      wt.close(); // idempotent
      expect(wt.active).toBe(false);
      expect(watchedCount()).toBe(0);
      expect(getStatusFlags(r) & O.ASYNC).toBe(0);
      expect(isOpenFd(r)).toBe(true);
      writeFd(w, enc.encode("x"));
      await Bun.sleep(50);
      expect(calls).toBe(0);
    } finally {
      closeFd(r);
      closeFd(w);
    }
  });

  test("setInterest({}) pauses and a new interest resumes", async () => {
    const [r, w] = pipe();
    try {
      let calls = 0;
      const wt = watch(r, {}, () => {
        calls++;
        drain(r);
      });
      try {
        writeFd(w, enc.encode("x"));
        await Bun.sleep(30);
        expect(calls).toBe(0);
        wt.setInterest({ read: true });
        await until(() => calls === 1, 100, "the resumed callback");
      } finally {
        wt.close();
      }
    } finally {
      closeFd(r);
      closeFd(w);
    }
  });

  test("write interest reports writable; hangup is reported when the writer goes away", async () => {
    const [r, w] = pipe();
    try {
      const writable: Readiness[] = [];
      const wtw = watch(w, { write: true }, (ev) => {
        writable.push(ev);
        wtw.setInterest({}); // nothing more to write
      });
      const hangups: Readiness[] = [];
      const wtr = watch(r, { read: true }, (ev) => {
        hangups.push(ev);
        if (ev.hangup) wtr.close();
      });
      try {
        await until(() => writable.length === 1, 100, "writable");
        expect(writable[0]).toEqual({ readable: false, writable: true, hangup: false, error: false });
        wtw.close();
        closeFd(w);
        await until(() => hangups.length === 1, 100, "hangup");
        expect(hangups[0]!.hangup).toBe(true);
        expect(wtr.active).toBe(false);
      } finally {
        wtw.close();
        wtr.close();
      }
    } finally {
      closeFd(r);
      closeQuietly(w);
    }
  });

  test("works on sockets: a socketpair peer write wakes the watch", async () => {
    const [a, b] = socketPair("seqpacket");
    try {
      let fired = false;
      const wt = watch(a, { read: true }, () => {
        fired = true;
        wt.close();
      });
      try {
        await Bun.sleep(10);
        writeFd(b, enc.encode("ping"));
        await until(() => fired, 50, "socket readable");
      } finally {
        wt.close();
      }
    } finally {
      closeFd(a);
      closeFd(b);
    }
  });

  test("an fd closed before the first pump reports error (POLLNVAL) and is unwatched", async () => {
    const [r, w] = pipe();
    const events: Readiness[] = [];
    const wt = watch(r, { read: true }, (ev) => events.push(ev));
    closeFd(r); // the pump scheduled by watch() has not run yet
    try {
      await until(() => events.length === 1, 100, "the error callback");
      expect(events[0]!.error).toBe(true);
      expect(wt.active).toBe(false);
      expect(watchedCount()).toBe(0);
    } finally {
      wt.close();
      closeFd(w);
    }
  });

  test("an fd closed while watched is found by the 1 s safety pump", async () => {
    const [r, w] = pipe();
    const events: Readiness[] = [];
    const wt = watch(r, { read: true }, (ev) => events.push(ev));
    try {
      await Bun.sleep(20); // initial pump done, nothing ready
      closeFd(r); // no signal comes for this
      await until(() => events.length === 1, 1600, "the safety pump");
      expect(events[0]!.error).toBe(true);
      expect(watchedCount()).toBe(0);
    } finally {
      wt.close();
      closeFd(w);
    }
  });

  test("a throwing callback is logged and the others keep running", async () => {
    const [r1, w1] = pipe();
    const [r2, w2] = pipe();
    const errors = spyOn(console, "error").mockImplementation(() => {});
    try {
      let bad = 0;
      let good = 0;
      const wt1 = watch(r1, { read: true }, () => {
        bad++;
        throw new Error("boom");
      });
      const wt2 = watch(r2, { read: true }, () => {
        good++;
        drain(r2);
      });
      try {
        writeFd(w1, enc.encode("x"));
        writeFd(w2, enc.encode("y"));
        await until(() => good === 1 && bad >= 2, 200, "both callbacks");
        expect(errors).toHaveBeenCalled();
        expect(String(errors.mock.calls[0]![0])).toContain(`fd ${r1}`);
      } finally {
        wt1.close();
        wt2.close();
      }
    } finally {
      errors.mockRestore();
      for (const fd of [r1, w1, r2, w2]) closeFd(fd);
    }
  });

  test("fds without SIGIO support (eventfd) are flagged and still served by the safety pump", async () => {
    const [r, w] = pipe();
    const ev = eventfd(0);
    let fired = 0;
    const pipeWatch = watch(r, { read: true }, () => {});
    const evWatch = watch(ev, { read: true }, () => {
      fired = performance.now();
      readEventfd(ev);
    });
    try {
      expect(pipeWatch.signalDriven).toBe(true);
      expect(evWatch.signalDriven).toBe(false);
      await Bun.sleep(10);
      const writtenAt = performance.now();
      writeEventfd(ev, 1);
      await until(() => fired > 0, 1600, "the eventfd callback");
      expect(fired - writtenAt).toBeGreaterThan(0);
    } finally {
      pipeWatch.close();
      evWatch.close();
      closeFd(r);
      closeFd(w);
      closeFd(ev);
    }
  });

  test("watching twice or watching a closed fd throws", () => {
    const [r, w] = pipe();
    try {
      const wt = watch(r, { read: true }, () => {});
      try {
        expect(() => watch(r, { read: true }, () => {})).toThrow(/already watched/);
      } finally {
        wt.close();
      }
    } finally {
      closeFd(r);
      closeFd(w);
    }
    let err: unknown;
    try {
      watch(r, { read: true }, () => {});
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SysError);
    expect((err as SysError).code).toBe("EBADF");
    expect(watchedCount()).toBe(0);
  });

  test("a watch keeps the process alive unless unref()'d", async () => {
    const script = (unref: boolean) => `
      import { pipe, watch, writeFd } from ${JSON.stringify(ffiDir)};
      const [r, w] = pipe();
      const wt = watch(r, { read: true }, () => { console.log("fired"); wt.close(); });
      ${unref ? "wt.unref();" : ""}
      setTimeout(() => writeFd(w, new Uint8Array([1])), 200).unref();
    `;
    for (const unref of [false, true]) {
      const child = Bun.spawn(["bun", "-e", script(unref)], { stdout: "pipe", stderr: "inherit" });
      const out = await new Response(child.stdout).text();
      expect(await child.exited).toBe(0);
      expect(out.trim()).toBe(unref ? "" : "fired");
    }
  });
});
