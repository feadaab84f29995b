import { describe, expect, test } from "bun:test";
import {
  bundlePidFile,
  createArgs,
  defaultArgs,
  execArgs,
  isCrun,
  type LogLevel,
  type RuntimeConfig,
} from "../../src/runtime-args.ts";

const ID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

function cfg(runtimePath: string, extra: Partial<RuntimeConfig> = {}): RuntimeConfig {
  return { runtimePath, logLevel: "info", ...extra };
}

describe("isCrun (basename match only)", () => {
  const cases: Array<[string, boolean]> = [
    ["crun", true],
    ["/usr/bin/crun", true],
    ["/usr/local/bin/crun", true],
    ["./crun", true],
    ["/usr/bin/crun/", true],
    ["/usr/bin/crun-wrapper", false],
    ["/usr/bin/my-crun", false],
    ["/opt/crun/bin/runc", false],
    ["/usr/sbin/runc", false],
    ["CRUN", false],
    ["", false],
  ];
  for (const [path, expected] of cases) {
    test(`${JSON.stringify(path)} → ${expected}`, () => expect(isCrun(path)).toBe(expected));
  }
});

describe("defaultArgs", () => {
  const cases: Array<{ name: string; cfg: RuntimeConfig; systemd: boolean; want: string[] }> = [
    { name: "runc, cgroupfs, no root", cfg: cfg("/usr/sbin/runc"), systemd: false, want: [] },
    {
      name: "runc, systemd, root",
      cfg: cfg("/usr/sbin/runc", { runtimeRoot: "/run/runc", logLevel: "debug" }),
      systemd: true,
      want: ["--root=/run/runc", "--systemd-cgroup"],
    },
    {
      name: "crun, info → no level flag",
      cfg: cfg("/usr/bin/crun"),
      systemd: false,
      want: [`--log=journald:${ID}`],
    },
    {
      name: "crun, debug, root, systemd",
      cfg: cfg("/usr/bin/crun", { runtimeRoot: "R", logLevel: "debug" }),
      systemd: true,
      want: [`--log=journald:${ID}`, "--log-level=debug", "--root=R", "--systemd-cgroup"],
    },
    {
      name: "crun-wrapper is not crun",
      cfg: cfg("/usr/bin/crun-wrapper", { logLevel: "debug" }),
      systemd: false,
      want: [],
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      expect(defaultArgs(c.cfg, { containerId: ID, systemdCgroup: c.systemd })).toEqual(c.want);
    });
  }

  const levels: Array<[LogLevel, string[]]> = [
    ["trace", []],
    ["debug", ["--log-level=debug"]],
    ["info", []],
    ["warn", ["--log-level=warning"]],
    ["error", ["--log-level=error"]],
    ["off", []],
  ];
  for (const [level, flag] of levels) {
    test(`crun log level ${level} → ${JSON.stringify(flag)}`, () => {
      expect(defaultArgs(cfg("crun", { logLevel: level }), { containerId: "x", systemdCgroup: false })).toEqual([
        "--log=journald:x",
        ...flag,
      ]);
    });
    test(`runc ignores log level ${level}`, () => {
      expect(defaultArgs(cfg("runc", { logLevel: level }), { containerId: "x", systemdCgroup: false })).toEqual([]);
    });
  }
});

describe("createArgs", () => {
  const base = { id: ID, bundlePath: "B", globalArgs: [], commandArgs: [] };
  const cases: Array<{ name: string; cfg: RuntimeConfig; req: Parameters<typeof createArgs>[1]; want: string }> = [
    {
      // The example of spec §6.2, including the duplicated flags (quirk Q1).
      name: "spec example: crun, debug, root, systemd",
      cfg: cfg("crun", { runtimeRoot: "R", logLevel: "debug" }),
      req: { ...base, id: "ID", systemdCgroup: true },
      want: "--log=journald:ID --log-level=debug --root=R --systemd-cgroup --root=R --systemd-cgroup create --bundle B --pid-file B/pidfile ID",
    },
    {
      name: "runc, cgroupfs, no root",
      cfg: cfg("/usr/sbin/runc"),
      req: { ...base, systemdCgroup: false },
      want: `create --bundle B --pid-file B/pidfile ${ID}`,
    },
    {
      name: "runc, cgroupfs, root",
      cfg: cfg("/usr/sbin/runc", { runtimeRoot: "/tmp/rr" }),
      req: { ...base, bundlePath: "/b/x", systemdCgroup: false },
      want: `--root=/tmp/rr --root=/tmp/rr create --bundle /b/x --pid-file /b/x/pidfile ${ID}`,
    },
    {
      name: "runc, systemd, no root",
      cfg: cfg("runc"),
      req: { ...base, systemdCgroup: true },
      want: `--systemd-cgroup --systemd-cgroup create --bundle B --pid-file B/pidfile ${ID}`,
    },
    {
      name: "terminal: console socket right before the id",
      cfg: cfg("runc", { runtimeRoot: "R" }),
      req: { ...base, systemdCgroup: false, commandArgs: ["--no-pivot"], consoleSocket: "/tmp/conmon-term-u.sock" },
      want: `--root=R --root=R create --bundle B --pid-file B/pidfile --no-pivot --console-socket=/tmp/conmon-term-u.sock ${ID}`,
    },
    {
      name: "global args after the duplicated flags, command args after the create flags",
      cfg: cfg("/usr/local/bin/crun", { runtimeRoot: "R", logLevel: "warn" }),
      req: {
        ...base,
        systemdCgroup: true,
        globalArgs: ["--debug", "--cgroup-manager=cgroupfs"],
        commandArgs: ["--no-new-keyring", "--preserve-fds=2"],
        consoleSocket: "S",
      },
      want:
        `--log=journald:${ID} --log-level=warning --root=R --systemd-cgroup --root=R --systemd-cgroup ` +
        `--debug --cgroup-manager=cgroupfs create --bundle B --pid-file B/pidfile ` +
        `--no-new-keyring --preserve-fds=2 --console-socket=S ${ID}`,
    },
    {
      name: "bundle path with trailing slash is not doubled",
      cfg: cfg("runc"),
      req: { ...base, bundlePath: "/b/", systemdCgroup: false },
      want: `create --bundle /b/ --pid-file /b/pidfile ${ID}`,
    },
  ];
  for (const c of cases) {
    test(c.name, () => expect(createArgs(c.cfg, c.req).join(" ")).toBe(c.want));
  }

  test("arguments with spaces stay single argv entries", () => {
    const args = createArgs(cfg("runc"), {
      ...base,
      bundlePath: "/my bundle",
      systemdCgroup: false,
      globalArgs: ["--log", "/a b/log"],
    });
    expect(args).toEqual(["--log", "/a b/log", "create", "--bundle", "/my bundle", "--pid-file", "/my bundle/pidfile", ID]);
  });

  test("does not alias the request's arrays", () => {
    const globalArgs = ["--debug"];
    const args = createArgs(cfg("runc"), { ...base, systemdCgroup: false, globalArgs });
    args.push("mutated");
    expect(globalArgs).toEqual(["--debug"]);
  });
});

describe("execArgs", () => {
  const cases: Array<{ name: string; cfg: RuntimeConfig; req: Parameters<typeof execArgs>[1]; want: string }> = [
    {
      name: "runc, cgroupfs, no tty",
      cfg: cfg("/usr/sbin/runc", { runtimeRoot: "R" }),
      req: { id: ID, command: ["/busybox", "echo", "hi"], systemdCgroup: false, pidFile: "/run/x/exec_syncUpid" },
      want: `--root=R --root=R exec -d --pid-file=/run/x/exec_syncUpid ${ID} /busybox echo hi`,
    },
    {
      name: "crun, debug, systemd, tty",
      cfg: cfg("/usr/bin/crun", { runtimeRoot: "R", logLevel: "debug" }),
      req: { id: "ID", command: ["sh", "-c", "echo a b"], systemdCgroup: true, pidFile: "P", consoleSocket: "S" },
      want: "--log=journald:ID --log-level=debug --root=R --systemd-cgroup --root=R --systemd-cgroup exec -d --console-socket=S --tty --pid-file=P ID sh -c echo a b",
    },
    {
      name: "no root, no systemd, empty command",
      cfg: cfg("runc"),
      req: { id: "c", command: [], systemdCgroup: false, pidFile: "P" },
      want: "exec -d --pid-file=P c",
    },
  ];
  for (const c of cases) {
    test(c.name, () => expect(execArgs(c.cfg, c.req).join(" ")).toBe(c.want));
  }

  test("command words are kept intact after the id", () => {
    const args = execArgs(cfg("runc"), { id: "c", command: ["sh", "-c", "echo a b"], systemdCgroup: false, pidFile: "P" });
    expect(args.slice(-4)).toEqual(["c", "sh", "-c", "echo a b"]);
  });
});

describe("bundlePidFile", () => {
  const cases: Array<[string, string]> = [
    ["B", "B/pidfile"],
    ["/x/y", "/x/y/pidfile"],
    ["/x/y/", "/x/y/pidfile"],
    ["", "pidfile"],
  ];
  for (const [bundle, want] of cases) {
    test(`${JSON.stringify(bundle)} → ${want}`, () => expect(bundlePidFile(bundle)).toBe(want));
  }
});

describe("crun without --log-level support", () => {
  test("the log-level flag is left out, --log=journald stays", () => {
    const cfg = { runtimePath: "/usr/bin/crun", logLevel: "debug" as const, crunAcceptsLogLevel: false };
    expect(defaultArgs(cfg, { containerId: "ID", systemdCgroup: false })).toEqual(["--log=journald:ID"]);
    expect(defaultArgs({ ...cfg, crunAcceptsLogLevel: true }, { containerId: "ID", systemdCgroup: false })).toEqual([
      "--log=journald:ID",
      "--log-level=debug",
    ]);
  });
});
