// `conmonrs client`: the operator CLI of the compiled binary against a real server driving runc,
// plus its command-line parser. Every CLI run is a separate `dist/conmonrs client ...` process, so
// exit statuses and the exact bytes on stdout/stderr are what an operator's shell sees.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CgroupManager } from "../../src/client/index.ts";
import { Namespace } from "../../src/client/namespaces.ts";
import { parseClientArgs, parseDetachKeys, parseLogDriver, CliUsageError, type ParsedCommand } from "../../src/operator-cli.ts";
import { makeBundle, type Bundle, type BundleOptions } from "../helpers/bundle.ts";
import { pidExists, removeDir, tmpDir, uniqueId, waitFor, waitForFile } from "../helpers/proc.ts";
import { runtime } from "../helpers/runtimes.ts";
import { requireBinary, startServer, type TestServer } from "../helpers/server.ts";

// Runtime calls under a loaded machine: the waits below go up to 10 s.
setDefaultTimeout(30_000);

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `conmonrs client <args>` with `input` on stdin (none: /dev/null); kills it after `timeoutMs`. */
async function cli(args: string[], opts: { input?: string | Uint8Array; timeoutMs?: number; env?: Record<string, string> } = {}): Promise<CliResult> {
  const proc = Bun.spawn([requireBinary(), "client", ...args], {
    stdin: opts.input === undefined ? "ignore" : typeof opts.input === "string" ? new TextEncoder().encode(opts.input) : opts.input,
    stdout: "pipe",
    stderr: "pipe",
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...opts.env },
  });
  const timer = setTimeout(() => proc.kill("SIGKILL"), opts.timeoutMs ?? 20_000);
  try {
    const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    return { code, stdout, stderr };
  } finally {
    clearTimeout(timer);
  }
}

function parsed(args: string[], json?: string): ParsedCommand {
  const inv = parseClientArgs(args, {}, () => json ?? "");
  if (inv.kind !== "run") throw new Error(`expected a command, got ${inv.kind}`);
  return inv.command;
}

function usageError(args: string[], json?: string): string {
  try {
    parseClientArgs(args, {}, () => json ?? "");
  } catch (err) {
    if (err instanceof CliUsageError) return err.message;
    throw err;
  }
  throw new Error(`no usage error for ${JSON.stringify(args)}`);
}

describe("operator CLI: command line", () => {
  test("flags become the TS client's config object", () => {
    const cmd = parsed([
      "--runtime-dir", "/run/p", "create", "--id", "c", "--bundle", "/b", "--terminal", "--stdin",
      "--exit-path", "/e1", "--exit-path", "/e2", "--oom-exit-path", "/oom",
      "--log", "cri:/l.log:10M", "--log", "json:/j.json", "--log", "journald",
      "--global-arg", "--debug", "--command-arg", "--no-pivot", "--env", "A=b=c", "--env", "EMPTY=",
      "--cgroup-manager", "cgroupfs", "--cleanup-cmd", "/bin/echo", "--", "done", "--flag-like",
    ]);
    expect(cmd.method.name).toBe("create");
    expect(cmd.runtimeDir).toBe("/run/p");
    expect(cmd.request).toEqual({
      id: "c",
      bundlePath: "/b",
      terminal: true,
      stdin: true,
      exitPaths: ["/e1", "/e2"],
      oomExitPaths: ["/oom"],
      logDrivers: [{ type: "cri", path: "/l.log", maxSize: 10 * 1024 * 1024 }, { type: "json", path: "/j.json" }, { type: "journald" }],
      globalArgs: ["--debug"],
      commandArgs: ["--no-pivot"],
      envVars: { A: "b=c", EMPTY: "" },
      cgroupManager: CgroupManager.cgroupfs,
      cleanupCmd: ["/bin/echo", "done", "--flag-like"],
    });
  });

  test("exec: the command after `--` or from the first positional; global flags after the method", () => {
    expect(parsed(["--runtime-dir", "/r", "exec", "--id", "c", "--timeout", "5", "--", "ls", "-l"]).request).toEqual({ id: "c", timeoutSec: 5, command: ["ls", "-l"] });
    const cmd = parsed(["exec", "--id", "c", "--runtime-dir", "/r", "--json", "sh", "-c", "exit 3"]);
    expect(cmd.request.command).toEqual(["sh", "-c", "exit 3"]);
    expect(cmd.json).toBe(true);
  });

  test("CONMON_RUNTIME_DIR stands in for --runtime-dir", () => {
    const inv = parseClientArgs(["version"], { CONMON_RUNTIME_DIR: "/run/env" });
    expect(inv.kind === "run" && inv.command.runtimeDir).toBe("/run/env");
  });

  test("a JSON request is the client's config object; flags override its fields", () => {
    const json = JSON.stringify({
      id: "from-json",
      bundlePath: "/b",
      logDrivers: [{ type: "cri", path: "/x.log", maxSize: "1K" }, "json:/y.json:0"],
      envVars: { K: "V" },
      cgroupManager: "cgroupfs",
      exitPaths: null,
    });
    const cmd = parsed(["--runtime-dir", "/r", "create", "--json-request", "--id", "from-flag"], json);
    expect(cmd.request).toEqual({
      id: "from-flag",
      bundlePath: "/b",
      logDrivers: [{ type: "cri", path: "/x.log", maxSize: 1024 }, { type: "json", path: "/y.json", maxSize: 0 }],
      envVars: { K: "V" },
      cgroupManager: CgroupManager.cgroupfs,
    });
    expect(parsed(["--runtime-dir", "/r", "exec", "--json-request=-"], '{"id":"c","command":["true"],"timeoutSec":2,"cgroupManager":1}').request)
      .toEqual({ id: "c", command: ["true"], timeoutSec: 2, cgroupManager: CgroupManager.cgroupfs });
  });

  test("malformed requests are usage errors that name the problem", () => {
    expect(usageError(["--runtime-dir", "/r", "exec", "--id", "c", "--bogus"])).toBe("unexpected argument '--bogus' found");
    expect(usageError(["--runtime-dir", "/r", "frobnicate"])).toStartWith("unrecognized method 'frobnicate'");
    expect(usageError(["version"])).toContain("--runtime-dir <DIR>");
    expect(usageError(["--runtime-dir", "/r", "exec", "--id", "c"])).toContain("-- <COMMAND>...");
    expect(usageError(["--runtime-dir", "/r", "create", "--id", "c"])).toContain("--bundle <DIR>");
    expect(usageError(["--runtime-dir", "/r", "resize", "--id", "c", "--width", "70000", "--height", "1"])).toContain("0 to 65535");
    expect(usageError(["--runtime-dir", "/r", "exec", "--id", "a", "--id", "b", "--", "x"])).toContain("cannot be used multiple times");
    expect(usageError(["--runtime-dir", "/r", "version", "--verbose=yes"])).toContain("unexpected value 'yes'");
    expect(usageError(["--runtime-dir", "/r", "attach", "--id", "c", "--json"])).toContain("--json does not apply to attach");
    expect(usageError(["--runtime-dir", "/r", "create", "--id", "c", "--bundle", "/b", "--env", "=x"])).toContain("expected KEY=VALUE");
    expect(usageError(["--runtime-dir", "/r", "create", "--json-request"], '{"id":"c","bundlePath":"/b","extra":1}')).toContain("unknown field 'extra'");
    expect(usageError(["--runtime-dir", "/r", "create", "--json-request"], '{"id":1}')).toContain("'id' must be a string");
    expect(usageError(["--runtime-dir", "/r", "create", "--json-request"], "{not json")).toContain("not valid JSON");
    expect(usageError(["--runtime-dir", "/r", "namespaces", "--pod-id", "p", "--ns", "ipc,bogus"])).toContain("invalid namespace 'bogus'");
    expect(usageError(["--runtime-dir", "/r", "attach", "--id", "c", "--stdin-once"])).toBe("--stdin-once needs --stdin");
    expect(usageError(["--runtime-dir", "/r", "attach", "--id", "c", "--json-request"], '{"containerStdin":true}')).toContain("use --json-request=FILE");
  });

  test("namespaces: names or the client's Namespace values, one flat list without repeats", () => {
    expect(parsed(["--runtime-dir", "/r", "namespaces", "--pod-id", "p", "--ns", "ipc,net", "--ns", "uts,ipc", "--uid-map", "0 1000 1"]).request).toEqual({
      podId: "p",
      namespaces: [Namespace.ipc, Namespace.net, Namespace.uts],
      uidMappings: [{ containerId: 0, hostId: 1000, size: 1 }],
    });
    expect(parsed(["--runtime-dir", "/r", "namespaces", "--json-request"], '{"podId":"p","namespaces":["pid",2],"gidMappings":[{"containerId":0,"hostId":5,"size":2}]}').request).toEqual({
      podId: "p",
      namespaces: [Namespace.pid, Namespace.net],
      gidMappings: [{ containerId: 0, hostId: 5, size: 2 }],
    });
  });

  test("--log syntax", () => {
    expect(parseLogDriver("cri:/var/log/a.log")).toEqual({ type: "cri", path: "/var/log/a.log" });
    expect(parseLogDriver("json:/a:b.log:512K")).toEqual({ type: "json", path: "/a:b.log", maxSize: 512 * 1024 });
    expect(parseLogDriver("cri:/odd:123:0")).toEqual({ type: "cri", path: "/odd:123", maxSize: 0 });
    expect(parseLogDriver("journald:4096")).toEqual({ type: "journald", maxSize: 4096 });
    expect(() => parseLogDriver("cri")).toThrow("needs a path");
    expect(() => parseLogDriver("syslog:/x")).toThrow("cri, json or journald");
  });

  test("--detach-keys syntax (Docker's)", () => {
    expect([...parseDetachKeys("ctrl-p,ctrl-q")]).toEqual([16, 17]);
    expect([...parseDetachKeys("ctrl-@,ctrl-[,x")]).toEqual([0, 27, 120]);
    expect(parseDetachKeys("").length).toBe(0);
    expect(() => parseDetachKeys("ctrl-1")).toThrow("invalid detach key 'ctrl-1'");
  });

  test("help and usage errors of the binary: exit 0 / exit 2 with a usage line, no server needed", async () => {
    const help = await cli(["--help"]);
    expect(help.code).toBe(0);
    for (const method of ["version", "create", "exec", "attach", "reopen-log", "resize", "namespaces", "serve-exec", "serve-attach", "serve-port-forward"]) {
      expect(help.stdout).toContain(`\n  ${method} `);
    }
    const execHelp = await cli(["exec", "--help"]);
    expect(execHelp.code).toBe(0);
    expect(execHelp.stdout).toContain("--timeout <SECONDS>");

    const unknownMethod = await cli(["--runtime-dir", "/nonexistent", "frobnicate"]);
    expect(unknownMethod.code).toBe(2);
    expect(unknownMethod.stdout).toBe("");
    expect(unknownMethod.stderr).toStartWith("error: unrecognized method 'frobnicate'");
    expect(unknownMethod.stderr).toContain("\nUsage: conmonrs client");

    const unknownFlag = await cli(["--runtime-dir", "/nonexistent", "exec", "--id", "c", "--frob", "--", "true"]);
    expect(unknownFlag.code).toBe(2);
    expect(unknownFlag.stderr).toStartWith("error: unexpected argument '--frob' found\n\nUsage: conmonrs client --runtime-dir <DIR> exec ");
  });
});

const runc = runtime("runc");

describe.skipIf(!runc)("operator CLI against a running server (runc)", () => {
  let server: TestServer;
  let work: string;
  const bundles: Bundle[] = [];
  const containers: string[] = [];
  const runtimeRoot = () => join(work, "root");
  /** The CLI pointed at the test server. */
  const client = (args: string[], opts?: Parameters<typeof cli>[1]) => cli(["--runtime-dir", server.runDir, ...args], opts);

  async function runcCmd(...args: string[]): Promise<{ code: number; stderr: string }> {
    const proc = Bun.spawn([runc!.path, `--root=${runtimeRoot()}`, ...args], { stdout: "ignore", stderr: "pipe" });
    const code = await proc.exited;
    return { code, stderr: await new Response(proc.stderr).text() };
  }

  /** A bundle, an id and a directory for its files; removed in afterAll. */
  async function prepare(opts: BundleOptions) {
    const bundle = await makeBundle(opts);
    bundles.push(bundle);
    const id = uniqueId("opcli-");
    containers.push(id);
    const dir = join(work, id.slice(0, 20));
    mkdirSync(dir, { recursive: true });
    return { id, bundle, dir, exitFile: join(dir, "exit"), log: join(dir, "ctr.log") };
  }

  /** `client create` + `runc start`, asserting both worked. */
  async function createAndStart(opts: BundleOptions, extra: string[] = []) {
    const c = await prepare(opts);
    const created = await client(["create", "--id", c.id, "--bundle", c.bundle.dir, "--exit-path", c.exitFile, "--log", `cri:${c.log}`, "--cgroup-manager", "cgroupfs", ...extra]);
    expect(created.stderr).toBe("");
    expect(created.code).toBe(0);
    const started = await runcCmd("start", c.id);
    expect(started.stderr).toBe("");
    expect(started.code).toBe(0);
    return c;
  }

  let sleeper: Awaited<ReturnType<typeof createAndStart>>;

  beforeAll(async () => {
    work = tmpDir("opcli");
    server = await startServer(runc!, { runtimeRoot: join(work, "root"), logLevel: "info" });
    sleeper = await createAndStart({ args: ["sleep", "1000"] });
  });

  afterAll(async () => {
    for (const id of containers) await runcCmd("delete", "--force", id);
    await server?.stop();
    for (const b of bundles) await b.cleanup();
    removeDir(work);
  });

  test("version: text and --json name the serving process", async () => {
    const text = await client(["version"]);
    expect(text.code).toBe(0);
    expect(text.stderr).toBe("");
    expect(text.stdout).toMatch(/^version: \d+\.\d+\.\d+\ntag: .+\ncommit: .+\nbuild: .+\ntarget: .+\n/);
    expect(text.stdout).toContain(`\npid: ${server.client.pid}\n`);
    expect(text.stdout).not.toContain("cargo tree");

    const json = await client(["--json", "version"]);
    expect(json.code).toBe(0);
    expect(json.stdout.endsWith("}\n")).toBe(true);
    expect(json.stdout.trim().split("\n")).toHaveLength(1);
    const v = JSON.parse(json.stdout);
    expect(v.processId).toBe(server.client.pid);
    expect(v.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(v.cargoTree).toBe("");
    expect(JSON.parse((await client(["version", "--verbose", "--json"])).stdout).cargoTree).not.toBe("");
  });

  test("create with flags, `runc start`, the exit file and the CRI log", async () => {
    const c = await prepare({ args: ["sh", "-c", "echo hello from the container; exit 7"] });
    const created = await client(["create", "--id", c.id, "--bundle", c.bundle.dir, "--exit-path", c.exitFile, "--log", `cri:${c.log}`, "--cgroup-manager", "cgroupfs"]);
    expect(created.stderr).toBe("");
    expect(created.code).toBe(0);
    const m = /^created container (\S+), pid (\d+)\n$/.exec(created.stdout);
    expect(m?.[1]).toBe(c.id);
    expect(pidExists(Number(m![2]))).toBe(true);
    expect((await runcCmd("start", c.id)).code).toBe(0);
    expect(await waitForFile(c.exitFile, 10_000)).toBe("7");
    expect(readFileSync(c.log, "utf8")).toMatch(/ stdout F hello from the container\n$/);
  });

  test("create from a JSON request on stdin, --json output", async () => {
    const c = await prepare({ args: ["sh", "-c", "echo json-created"] });
    const request = { id: c.id, bundlePath: c.bundle.dir, exitPaths: [c.exitFile], logDrivers: [{ type: "json", path: c.log }], cgroupManager: "cgroupfs" };
    const created = await client(["create", "--json-request", "--json"], { input: JSON.stringify(request) });
    expect(created.stderr).toBe("");
    expect(created.code).toBe(0);
    const res = JSON.parse(created.stdout);
    expect(res.id).toBe(c.id);
    expect(res.pid).toBeGreaterThan(1);
    expect((await runcCmd("start", c.id)).code).toBe(0);
    expect(await waitForFile(c.exitFile, 10_000)).toBe("0");
    expect(readFileSync(c.log, "utf8")).toContain("json-created");
  });

  test("a failing create: the runtime's reason on one line, exit 1", async () => {
    const c = await prepare({ args: ["/no/such/binary"] });
    const r = await client(["create", "--id", c.id, "--bundle", c.bundle.dir, "--cgroup-manager", "cgroupfs"]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr).toStartWith("error: child command exited with: ");
  });

  test("exec prints the command's stdout and stderr raw and exits with its status", async () => {
    const r = await client(["exec", "--id", sleeper.id, "--cgroup-manager", "cgroupfs", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    expect(r).toEqual({ code: 3, stdout: "out\n", stderr: "err\n" });
    const ok = await client(["exec", "--id", sleeper.id, "--cgroup-manager", "cgroupfs", "--", "true"]);
    expect(ok).toEqual({ code: 0, stdout: "", stderr: "" });
  });

  test("exec --json: one object with the result, exit 0", async () => {
    const r = await client(["--json", "exec", "--id", sleeper.id, "--cgroup-manager", "cgroupfs", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ exitCode: 3, stdout: "out\n", stderr: "err\n", timedOut: false });
  });

  test("exec output of more than a pipe buffer arrives whole before the CLI exits", async () => {
    const r = await client(["exec", "--id", sleeper.id, "--cgroup-manager", "cgroupfs", "--", "seq", "1", "200000"]);
    expect(r.code).toBe(0);
    const lines = r.stdout.split("\n");
    expect(lines).toHaveLength(200_001);
    expect(lines[199_999]).toBe("200000");
  });

  test("exec --timeout: the message on stderr, exit 124", async () => {
    const started = performance.now();
    const r = await client(["exec", "--id", sleeper.id, "--timeout", "1", "--cgroup-manager", "cgroupfs", "--", "sh", "-c", "echo before; sleep 30"]);
    expect(r.code).toBe(124);
    expect(r.stdout).toBe("before\n");
    expect(r.stderr).toBe(`error: exec in container ${sleeper.id} timed out after 1 s\n`);
    expect(performance.now() - started).toBeLessThan(10_000);
  });

  test("exec of a command the runtime cannot start: exit 126", async () => {
    const r = await client(["exec", "--id", sleeper.id, "--cgroup-manager", "cgroupfs", "--", "/no/such/command"]);
    expect(r.code).toBe(126);
    expect(r.stderr).toStartWith(`error: the runtime could not run the command in container ${sleeper.id}`);
  });

  test("reopen-log after a rotation: logging goes on in a fresh file at the configured path", async () => {
    const c = await createAndStart({ args: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.1; done"] });
    await waitFor(() => existsSync(c.log) && readFileSync(c.log, "utf8").includes("line-2"), 5000, "first lines in the log");
    const rotated = `${c.log}.1`;
    renameSync(c.log, rotated);
    const r = await client(["reopen-log", "--id", c.id]);
    expect(r).toEqual({ code: 0, stdout: `reopened the log files of ${c.id}\n`, stderr: "" });
    await waitFor(() => existsSync(c.log) && /line-\d+/.test(readFileSync(c.log, "utf8")), 5000, "lines in the reopened log");
    const before = Math.max(...[...readFileSync(rotated, "utf8").matchAll(/line-(\d+)/g)].map((m) => Number(m[1])));
    const after = Number(/line-(\d+)/.exec(readFileSync(c.log, "utf8"))![1]);
    expect(after).toBeGreaterThan(before);
    expect((await client(["--json", "reopen-log", "--id", c.id])).stdout).toBe("{}\n");
  });

  test("resize: a terminal container sees the new size; a non-terminal one is an error line, exit 1", async () => {
    const notty = await client(["resize", "--id", sleeper.id, "--width", "10", "--height", "20"]);
    expect(notty).toEqual({ code: 1, stdout: "", stderr: "error: container has no terminal\n" });

    const c = await createAndStart({ args: ["sh", "-c", "while true; do stty size; sleep 0.1; done"], terminal: true }, ["--terminal"]);
    await waitFor(() => existsSync(c.log) && readFileSync(c.log, "utf8").includes("stdout"), 5000, "stty output");
    const r = await client(["resize", "--id", c.id, "--width", "77", "--height", "33"]);
    expect(r).toEqual({ code: 0, stdout: `resized the terminal of ${c.id} to 77x33\n`, stderr: "" });
    // stty size prints "rows columns".
    await waitFor(() => readFileSync(c.log, "utf8").includes("F 33 77"), 5000, "the new size in the container");
  });

  test("an unknown container: the server's reason, exit 1", async () => {
    for (const args of [["reopen-log", "--id", "no-such-container"], ["resize", "--id", "no-such-container", "--width", "1", "--height", "1"], ["attach", "--id", "no-such-container"]]) {
      const r = await client(args);
      expect(r).toEqual({ code: 1, stdout: "", stderr: "error: child not available\n" });
    }
  });

  test("no server: a clear error, exit 1, and nothing started or created", async () => {
    const empty = join(work, "empty-run-dir");
    mkdirSync(empty);
    const r = await cli(["--runtime-dir", empty, "version"]);
    expect(r).toEqual({ code: 1, stdout: "", stderr: `error: no conmonrs server answers on ${join(empty, "conmon.sock")}: no such socket\n` });
    expect(readdirSync(empty)).toEqual([]);

    const missing = join(work, "missing-run-dir");
    expect((await cli(["--runtime-dir", missing, "version"])).code).toBe(1);
    expect(existsSync(missing)).toBe(false);

    // A stale socket file nobody listens on (a server that was SIGKILLed).
    const stale = join(work, "stale-run-dir");
    mkdirSync(stale);
    const sock = Bun.listen({ unix: join(stale, "conmon.sock"), socket: { data() {} } });
    sock.stop(true);
    if (!existsSync(join(stale, "conmon.sock"))) writeFileSync(join(stale, "conmon.sock"), "");
    const refused = await cli(["--runtime-dir", stale, "version"]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toStartWith(`error: no conmonrs server answers on ${join(stale, "conmon.sock")}: `);
    expect(readdirSync(stale)).toEqual(["conmon.sock"]);
  });

  test("namespaces: pins the pod's namespaces and lists all five paths", async () => {
    const base = join(work, "ns");
    const podId = uniqueId("pod-").slice(0, 20);
    const r = await client(["--json", "namespaces", "--pod-id", podId, "--base-path", base, "--ns", "ipc,uts", "--ns", "net"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const { namespaces } = JSON.parse(r.stdout);
    expect(namespaces).toEqual(["ipc", "pid", "net", "user", "uts"].map((type) => ({ type, path: join(base, `${type}ns`, podId) })));
    const mounts = readFileSync("/proc/self/mounts", "utf8");
    for (const type of ["ipc", "uts", "net"]) expect(mounts).toContain(` ${join(base, `${type}ns`, podId)} nsfs `);
  });

  test("attach with piped stdin: the container reads it and its stdout/stderr come back", async () => {
    const c = await createAndStart({ args: ["sh", "-c", 'read a; echo "got $a"; read b; echo "bye $b" >&2'] }, ["--stdin"]);
    const r = await client(["attach", "--id", c.id, "--stdin"], { input: "hello\nworld\n" });
    expect(r).toEqual({ code: 0, stdout: "got hello\n", stderr: "bye world\n" });
    expect(await waitForFile(c.exitFile, 5000)).toBe("0");
    // The CLI (as the Go client) removes the attach socket path it used, which defaults to CRI-O's.
    expect(existsSync(join(server.runDir, c.id, "attach"))).toBe(false);
  });

  test("attach: ctrl-p,ctrl-q in the input detaches; the container keeps running", async () => {
    const c = await createAndStart({ args: ["cat"] }, ["--stdin"]);
    const r = await client(["attach", "--id", c.id, "--stdin"], { input: "one\n\x10\x11two\n" });
    expect(r.code).toBe(0);
    expect(r.stderr).toBe(`detached from container ${c.id}\n`);
    await waitFor(() => readFileSync(c.log, "utf8").includes("F one"), 5000, "the input before the detach keys");
    // A custom sequence passes ctrl-p,ctrl-q through and detaches on its own keys.
    const custom = await client(["attach", "--id", c.id, "--stdin", "--detach-keys", "ctrl-x,x"], { input: "three\x10\x11\n\x18xfour\n" });
    expect(custom.code).toBe(0);
    await waitFor(() => readFileSync(c.log, "utf8").includes("three\x10\x11"), 5000, "ctrl-p,ctrl-q passed through");
    await Bun.sleep(200);
    expect(readFileSync(c.log, "utf8")).not.toContain("two");
    expect(readFileSync(c.log, "utf8")).not.toContain("four");
    expect(existsSync(c.exitFile)).toBe(false);
  });

  test("attach --stdin-once: the end of our input closes the container's stdin; its last output still arrives", async () => {
    const c = await createAndStart({ args: ["sh", "-c", 'cat; echo "stdin closed" >&2'] }, ["--stdin"]);
    const r = await client(["attach", "--id", c.id, "--stdin", "--stdin-once"], { input: "only line\n" });
    expect(r).toEqual({ code: 0, stdout: "only line\n", stderr: "stdin closed\n" });
    expect(await waitForFile(c.exitFile, 10_000)).toBe("0");
    expect(readFileSync(c.log, "utf8")).toContain("stdout F only line");
  });
});
