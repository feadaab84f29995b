// contrib/systemd/conmonrs@.service and its default env file.
//
// PID 1 is not systemd on the test machine, so the unit cannot be started for real. What can be
// checked is checked: `systemd-analyze verify` (the unit loads warning-free, with ExecStart pointed
// at an existing copy of the binary), the directives the design depends on, and the start and stop
// the unit describes, done by hand the way systemd would do them: the env files loaded in order,
// the specifiers expanded, NOTIFY_SOCKET set, READY=1 awaited, SIGTERM to the main process only.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { bindDgram, closeFd, recvMsg } from "../../ffi/index.ts";
import { removeDir, tmpDir, waitFor } from "../helpers/proc.ts";
import { requireBinary } from "../helpers/server.ts";

// Real processes and runc: keep clear of bun's 5 s default when the machine is busy.
setDefaultTimeout(30_000);

const CONTRIB = join(import.meta.dir, "../../contrib/systemd");
const UNIT_FILE = join(CONTRIB, "conmonrs@.service");
const ENV_FILE = join(CONTRIB, "conmonrs.env");
const INSTALLED_BINARY = "/usr/local/bin/conmonrs";
const SYSTEMD_ANALYZE = Bun.which("systemd-analyze") ?? "/usr/bin/systemd-analyze";

type Unit = Map<string, Map<string, string[]>>;

/** A unit file as sections of directives; repeated directives keep every value in order. */
function parseUnit(text: string): Unit {
  const unit: Unit = new Map();
  let section: Map<string, string[]> | undefined;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = new Map();
      unit.set(header[1]!, section);
      continue;
    }
    const eq = line.indexOf("=");
    if (section === undefined || eq === -1) throw new Error(`unit line outside a section or without '=': ${raw}`);
    const key = line.slice(0, eq);
    section.set(key, [...(section.get(key) ?? []), line.slice(eq + 1)]);
  }
  return unit;
}

function directive(unit: Unit, section: string, key: string): string[] {
  return unit.get(section)?.get(key) ?? [];
}

/** KEY=value lines as systemd's EnvironmentFile= reads them; this file must need no quoting. */
function parseEnvFile(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) throw new Error(`not a KEY=value line: ${raw}`);
    if (/["'\\$]/.test(m[2]!)) throw new Error(`value needs quoting rules this test does not implement: ${raw}`);
    env[m[1]!] = m[2]!;
  }
  return env;
}

/** %i and %% as systemd expands them for an instance whose name needs no escaping. */
function expandSpecifiers(value: string, instance: string): string {
  return value.replace(/%[i%]/g, (s) => (s === "%i" ? instance : "%"));
}

const unitText = readFileSync(UNIT_FILE, "utf8");
const unit = parseUnit(unitText);

describe("conmonrs@.service", () => {
  let work: string;
  beforeAll(() => {
    work = tmpDir("unit");
  });
  afterAll(() => removeDir(work));

  /** The unit file with ExecStart pointing at a copy of the built binary (verify wants it to exist). */
  function unitWithBinary(dir: string, text = unitText): string {
    mkdirSync(dir, { recursive: true });
    const binary = join(dir, "conmonrs");
    if (!existsSync(binary)) copyFileSync(requireBinary(), binary);
    const path = join(dir, "conmonrs@.service");
    writeFileSync(path, text.replaceAll(INSTALLED_BINARY, binary));
    return path;
  }

  function verify(unitPath: string): { code: number; output: string } {
    const run = Bun.spawnSync([SYSTEMD_ANALYZE, "verify", unitPath], { stdout: "pipe", stderr: "pipe", env: { PATH: process.env.PATH!, SYSTEMD_LOG_COLOR: "0" } });
    return { code: run.exitCode, output: `${run.stdout}${run.stderr}`.trim() };
  }

  test.skipIf(!existsSync(SYSTEMD_ANALYZE))("systemd-analyze verify: the template and an instance load without a single warning", () => {
    const dir = join(work, "verify");
    const path = unitWithBinary(dir);
    for (const target of [path, join(dir, "conmonrs@0123456789abcdef.service")]) {
      const result = verify(target);
      expect(result.output).toBe("");
      expect(result.code).toBe(0);
    }
  });

  test.skipIf(!existsSync(SYSTEMD_ANALYZE))("systemd-analyze verify catches mistakes here (so the clean run above means something)", () => {
    const broken = unitWithBinary(join(work, "broken"), unitText.replace("KillMode=mixed", "KillMode=mixd"));
    expect(verify(broken).output).toContain("Failed to parse kill mode specification, ignoring: mixd");
    const missing = join(work, "missing", "conmonrs@.service");
    mkdirSync(join(work, "missing"), { recursive: true });
    writeFileSync(missing, unitText);
    if (!existsSync(INSTALLED_BINARY)) {
      const result = verify(missing);
      expect(result.code).not.toBe(0);
      expect(result.output).toContain(`Command ${INSTALLED_BINARY} is not executable`);
    }
  });

  test("the directives the design depends on", () => {
    expect(directive(unit, "Service", "Type")).toEqual(["notify"]);
    expect(directive(unit, "Service", "NotifyAccess")).toEqual(["main"]);
    expect(directive(unit, "Service", "KillMode")).toEqual(["mixed"]);
    expect(directive(unit, "Service", "Restart")).toEqual(["on-failure"]);
    expect(directive(unit, "Service", "OOMScoreAdjust")).toEqual(["-1000"]);
    expect(directive(unit, "Service", "RuntimeDirectory")).toEqual(["conmonrs/%i"]);
    // The shared defaults are required, the per-pod file optional and read last (its values win).
    expect(directive(unit, "Service", "EnvironmentFile")).toEqual(["/etc/conmonrs/default.env", "-/etc/conmonrs/%i.env"]);
    const execStart = directive(unit, "Service", "ExecStart");
    expect(execStart.length).toBe(1);
    const argv = execStart[0]!.split(/\s+/);
    expect(argv[0]).toBe(INSTALLED_BINARY);
    expect(argv).toContain("--skip-fork");
    expect(argv.join(" ")).toContain("--log-driver systemd");
    expect(argv.join(" ")).toContain("--runtime-dir /run/conmonrs/%i");
    // The runtime comes from the env file, not the command line.
    expect(argv).not.toContain("--runtime");
    // Nothing that would give the service its own mount namespace or a seccomp filter its
    // containers inherit (see the comment in the unit).
    const service = unit.get("Service")!;
    for (const key of ["ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "SystemCallFilter", "NoNewPrivileges", "MemoryDenyWriteExecute", "ProtectControlGroups", "CapabilityBoundingSet"]) {
      expect(service.has(key)).toBe(false);
    }
  });

  test("the default env file names an existing runtime and only variables the binary reads", () => {
    const env = parseEnvFile(readFileSync(ENV_FILE, "utf8"));
    expect(Object.keys(env).sort()).toEqual(["CONMON_LOG_LEVEL", "CONMON_RUNTIME"]);
    expect(existsSync(env.CONMON_RUNTIME!)).toBe(true);
    const help = Bun.spawnSync([requireBinary(), "--help"], { stdout: "pipe" }).stdout.toString();
    for (const key of Object.keys(env)) expect(help).toContain(`[env: ${key}=]`);
  });

  test("started and stopped as systemd would: env files, %i, NOTIFY_SOCKET, SIGTERM to the main process", async () => {
    const pod = "pod-0123456789abcdef";
    const etc = join(work, "etc");
    const runBase = join(work, "run");
    mkdirSync(etc, { recursive: true });
    copyFileSync(ENV_FILE, join(etc, "default.env"));
    // The per-pod file overrides the default one.
    writeFileSync(join(etc, `${pod}.env`), "CONMON_LOG_LEVEL=debug\n");
    const env: Record<string, string> = { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" };
    for (const file of directive(unit, "Service", "EnvironmentFile")) {
      const optional = file.startsWith("-");
      const path = expandSpecifiers(file.replace(/^-/, ""), pod).replace("/etc/conmonrs", etc);
      if (!existsSync(path)) {
        if (optional) continue;
        throw new Error(`required EnvironmentFile ${path} missing`);
      }
      Object.assign(env, parseEnvFile(readFileSync(path, "utf8")));
    }
    expect(env.CONMON_LOG_LEVEL).toBe("debug");

    // RuntimeDirectory=conmonrs/%i is created by systemd below /run before ExecStart.
    const runtimeDir = join(runBase, "conmonrs", pod);
    expect(expandSpecifiers(`/run/${directive(unit, "Service", "RuntimeDirectory")[0]}`, pod)).toBe(`/run/conmonrs/${pod}`);
    mkdirSync(runtimeDir, { recursive: true });
    const argv = expandSpecifiers(directive(unit, "Service", "ExecStart")[0]!, pod)
      .split(/\s+/)
      .map((arg) => arg.replace(INSTALLED_BINARY, requireBinary()).replace("/run/conmonrs", join(runBase, "conmonrs")));

    const notifyPath = join(work, "notify");
    const notifyFd = bindDgram(notifyPath);
    const buf = new Uint8Array(4096);
    const received: string[] = [];
    const receive = (want: string) =>
      waitFor(() => {
        for (let m = recvMsg(notifyFd, buf); m !== null; m = recvMsg(notifyFd, buf)) received.push(new TextDecoder().decode(buf.subarray(0, m.n)));
        return received.some((r) => r.split("\n").includes(want));
      }, 10_000, want);

    const main = Bun.spawn(argv, { env: { ...env, NOTIFY_SOCKET: notifyPath }, stdio: ["ignore", "pipe", "pipe"] });
    try {
      await receive("READY=1");
      expect(received[0]).toContain(`MAINPID=${main.pid}`);
      expect(existsSync(join(runtimeDir, "conmon.sock"))).toBe(true);
      // The runtime came from the env file alone (without it: the last test in this file).
      main.kill("SIGTERM"); // KillMode=mixed: the main process only
      await receive("STOPPING=1");
      expect(await main.exited).toBe(0);
      expect(existsSync(join(runtimeDir, "conmon.sock"))).toBe(false);
    } finally {
      main.kill("SIGKILL");
      closeFd(notifyFd);
    }
  });

  test("without its env file the monitor refuses to start and says why (what journalctl -u would show)", () => {
    const argv = expandSpecifiers(directive(unit, "Service", "ExecStart")[0]!, "pod-x")
      .split(/\s+/)
      .map((arg) => arg.replace(INSTALLED_BINARY, requireBinary()).replace("/run/conmonrs", join(work, "run-noenv")));
    const run = Bun.spawnSync(argv, { env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" }, stderr: "pipe", timeout: 10_000 });
    expect(run.exitCode).toBe(1);
    expect(run.stderr.toString()).toContain("--runtime flag not set");
  });
});
