import { describe, expect, test } from "bun:test";
import { parseCommandLine, UsageError, type Invocation } from "../../src/cli.ts";

const BASE = ["--runtime", "/usr/sbin/runc", "--runtime-dir", "/run/x"];

function server(args: string[], env: Record<string, string> = {}) {
  const inv = parseCommandLine(args, env);
  if (inv.kind !== "server") throw new Error(`expected server, got ${inv.kind}`);
  return inv.config;
}

describe("command line", () => {
  test("defaults as upstream", () => {
    expect(server(BASE)).toEqual({
      runtime: "/usr/sbin/runc",
      runtimeDir: "/run/x",
      runtimeRoot: undefined,
      logLevel: "info",
      logDriver: "systemd",
      skipFork: false,
      enableTracing: false,
      tracingEndpoint: "http://127.0.0.1:4317",
    });
    // No flags at all: the one-space defaults that validate() rejects.
    expect(server([]).runtime).toBe(" ");
  });

  test.each<[string, string[], Partial<ReturnType<typeof server>>]>([
    ["short flags", ["-r", "/bin/crun", "--runtime-dir", "/d", "-l", "debug", "-d", "stdout", "-e", "-t", "http://h:1"], { runtime: "/bin/crun", logLevel: "debug", logDriver: "stdout", enableTracing: true, tracingEndpoint: "http://h:1" }],
    ["--flag=value", ["--runtime=/bin/crun", "--runtime-dir=/d", "--log-level=warn", "--runtime-root=/rr"], { runtime: "/bin/crun", runtimeDir: "/d", logLevel: "warn", runtimeRoot: "/rr" }],
    ["attached short value", ["-r/bin/crun", "--runtime-dir", "/d", "-loff"], { runtime: "/bin/crun", logLevel: "off" }],
    ["skip fork", [...BASE, "--skip-fork"], { skipFork: true }],
  ])("%s", (_name, args, expected) => {
    expect(server(args)).toMatchObject(expected);
  });

  test("CONMON_* env vars, overridden by flags", () => {
    const env = {
      CONMON_RUNTIME: "/env/runc",
      CONMON_RUNTIME_DIR: "/env/dir",
      CONMON_RUNTIME_ROOT: "/env/root",
      CONMON_LOG_LEVEL: "trace",
      CONMON_LOG_DRIVER: "none",
      CONMON_SKIP_FORK: "true",
      CONMON_ENABLE_TRACING: "false",
      CONMON_TRACING_ENDPOINT: "http://env:2",
    };
    expect(server([], env)).toEqual({
      runtime: "/env/runc",
      runtimeDir: "/env/dir",
      runtimeRoot: "/env/root",
      logLevel: "trace",
      logDriver: "none",
      skipFork: true,
      enableTracing: false,
      tracingEndpoint: "http://env:2",
    });
    expect(server(["--log-level", "error"], env).logLevel).toBe("error");
  });

  test.each<[string[], Invocation]>([
    [["--version"], { kind: "version", json: false, full: false }],
    [["-v", "full"], { kind: "version", json: false, full: true }],
    [["--version-json"], { kind: "version", json: true, full: false }],
    [["-j", "full"], { kind: "version", json: true, full: true }],
    [["--vj"], { kind: "version", json: true, full: false }],
    [["--version", "--runtime", "/x"], { kind: "version", json: false, full: false }],
  ])("version %p", (args, expected) => {
    expect(parseCommandLine(args, {})).toEqual(expected);
  });

  test.each<[string[], RegExp]>([
    [["--x"], /^error: unexpected argument '--x' found\n/],
    [["--cgroup-manager", "systemd"], /^error: unexpected argument '--cgroup-manager' found/],
    [["-z"], /^error: unexpected argument '-z' found/],
    [["--log-level", "loud"], /^error: invalid value 'loud' for '--log-level <LOG_LEVEL>'\n  \[possible values: trace, debug, info, warn, error, off\]/],
    [["--runtime"], /^error: a value is required for '--runtime <RUNTIME>' but none was supplied/],
    [["--skip-fork=yes"], /^error: unexpected value 'yes' for '--skip-fork' found/],
    [["--version", "loud"], /^error: invalid value 'loud' for '--version \[<VERBOSITY>\]'/],
    [["frobnicate"], /^error: unrecognized subcommand 'frobnicate'/],
    [["pause"], /^error: the following required arguments were not provided:\n  --pod-id <POD_ID>/],
    [["pause", "--pod-id", "p", "--user"], /--uid-mappings/],
  ])("usage error %p", (args, message) => {
    expect(() => parseCommandLine(args, {})).toThrow(UsageError);
    expect(() => parseCommandLine(args, {})).toThrow(message);
  });

  test("pause flags", () => {
    expect(parseCommandLine(["pause", "-p", "/b", "--pod-id", "pod", "--ipc", "--net", "--user", "-u", "0 1000 1", "--uid-mappings=1 2000 1", "-g", "0 1000 1"], {})).toEqual({
      kind: "pause",
      config: { basePath: "/b", podId: "pod", ipc: true, pid: false, net: true, user: true, uts: false, uidMappings: ["0 1000 1", "1 2000 1"], gidMappings: ["0 1000 1"] },
    });
    expect(parseCommandLine(["pause"], { CONMON_PAUSE_POD_ID: "p2" })).toMatchObject({ kind: "pause", config: { podId: "p2", basePath: "/var/run" } });
  });

  test("help renders every flag", async () => {
    const inv = parseCommandLine(["--help"], {});
    if (inv.kind !== "help") throw new Error("expected help");
    const text = await inv.text;
    for (const flag of ["--runtime", "--runtime-dir", "--runtime-root", "--log-level", "--log-driver", "--skip-fork", "--enable-tracing", "--tracing-endpoint", "--version", "--version-json"]) {
      expect(text).toContain(flag);
    }
  });
});
