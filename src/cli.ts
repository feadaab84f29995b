// Command line of `conmonrs`, flag for flag and env var for env var as upstream's clap parser.
// citty holds the definitions and renders --help; the parsing itself is strict (citty accepts
// unknown flags silently) because the Go client greps clap's `error: unexpected argument` text to
// detect an older server, and usage errors must exit 2 with clap's wording.

import { defineCommand, renderUsage, type ArgsDef } from "citty";

export const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "off"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export const LOG_DRIVERS = ["none", "stdout", "systemd"] as const;
export type LogDriver = (typeof LOG_DRIVERS)[number];
const VERBOSITIES = ["default", "full"] as const;

export interface ServerConfig {
  runtime: string;
  runtimeDir: string;
  runtimeRoot?: string;
  logLevel: LogLevel;
  logDriver: LogDriver;
  skipFork: boolean;
  enableTracing: boolean;
  tracingEndpoint: string;
}

export interface PauseConfig {
  basePath: string;
  podId: string;
  ipc: boolean;
  pid: boolean;
  net: boolean;
  user: boolean;
  uts: boolean;
  uidMappings: string[];
  gidMappings: string[];
}

export type Invocation =
  | { kind: "help"; text: Promise<string> }
  | { kind: "version"; json: boolean; full: boolean }
  | { kind: "pause"; config: PauseConfig }
  /** `conmonrs client ...`: the operator CLI talking to a running server (src/operator-cli.ts). */
  | { kind: "client"; args: string[] }
  | { kind: "server"; config: ServerConfig };

/** A command-line mistake: printed to stderr, exit status 2 (clap's convention). */
export class UsageError extends Error {
  override name = "UsageError";
}

type Kind = "flag" | "value" | "optional" | "multi";
interface Spec {
  name: string;
  kind: Kind;
  short?: string;
  aliases?: string[];
  env?: string;
  values?: readonly string[];
  valueName: string;
  description: string;
  default?: string;
}

const SERVER_SPECS: Spec[] = [
  { name: "version", kind: "optional", short: "v", env: "CONMON_VERSION", values: VERBOSITIES, valueName: "VERBOSITY", description: "Show version information, specify \"full\" for verbose output" },
  { name: "version-json", kind: "optional", short: "j", aliases: ["vj"], env: "CONMON_VERSION_JSON", values: VERBOSITIES, valueName: "VERBOSITY", description: "Show version information as JSON, specify \"full\" for verbose output" },
  { name: "log-level", kind: "value", short: "l", env: "CONMON_LOG_LEVEL", values: LOG_LEVELS, valueName: "LOG_LEVEL", description: "The logging level of the conmon server", default: "info" },
  { name: "log-driver", kind: "value", short: "d", env: "CONMON_LOG_DRIVER", values: LOG_DRIVERS, valueName: "LOG_DRIVER", description: "The logging driver used by the conmon server", default: "systemd" },
  { name: "runtime", kind: "value", short: "r", env: "CONMON_RUNTIME", valueName: "RUNTIME", description: "Path of the OCI runtime binary (runc, crun)", default: " " },
  { name: "runtime-dir", kind: "value", env: "CONMON_RUNTIME_DIR", valueName: "RUNTIME_DIR", description: "Directory for the server socket, pidfile and exec pid files", default: " " },
  { name: "runtime-root", kind: "value", env: "CONMON_RUNTIME_ROOT", valueName: "RUNTIME_ROOT", description: "Root directory passed to the runtime as --root" },
  { name: "skip-fork", kind: "flag", env: "CONMON_SKIP_FORK", valueName: "", description: "Do not fork: run the server in the foreground and write no pidfile" },
  { name: "enable-tracing", kind: "flag", short: "e", env: "CONMON_ENABLE_TRACING", valueName: "", description: "Enable OpenTelemetry tracing (accepted; this build exports no traces)" },
  { name: "tracing-endpoint", kind: "value", short: "t", env: "CONMON_TRACING_ENDPOINT", valueName: "TRACING_ENDPOINT", description: "OpenTelemetry GRPC endpoint", default: "http://127.0.0.1:4317" },
];

const PAUSE_SPECS: Spec[] = [
  { name: "base-path", kind: "value", short: "p", env: "CONMON_PAUSE_BASE_PATH", valueName: "BASE_PATH", description: "Base directory of the pinned namespaces", default: "/var/run" },
  { name: "pod-id", kind: "value", env: "CONMON_PAUSE_POD_ID", valueName: "POD_ID", description: "The pod identifier" },
  { name: "ipc", kind: "flag", valueName: "", description: "Unshare the IPC namespace" },
  { name: "pid", kind: "flag", valueName: "", description: "Unshare the PID namespace" },
  { name: "net", kind: "flag", valueName: "", description: "Unshare the network namespace" },
  { name: "user", kind: "flag", valueName: "", description: "Unshare the user namespace" },
  { name: "uts", kind: "flag", valueName: "", description: "Unshare the UTS namespace" },
  { name: "uid-mappings", kind: "multi", short: "u", valueName: "UID_MAPPINGS", description: "User ID mappings \"CONTAINER_ID HOST_ID SIZE\" (repeatable)" },
  { name: "gid-mappings", kind: "multi", short: "g", valueName: "GID_MAPPINGS", description: "Group ID mappings \"CONTAINER_ID HOST_ID SIZE\" (repeatable)" },
];

const USAGE_HINT = "\n\nUsage: conmonrs [OPTIONS] [COMMAND]\n\nFor more information, try '--help'.";

type Parsed = Map<string, string[] | true>;

function display(spec: Spec): string {
  switch (spec.kind) {
    case "flag":
      return `--${spec.name}`;
    case "optional":
      return `--${spec.name} [<${spec.valueName}>]`;
    default:
      return `--${spec.name} <${spec.valueName}>`;
  }
}

function checkValue(spec: Spec, value: string): string {
  if (spec.values && !spec.values.includes(value)) {
    throw new UsageError(
      `error: invalid value '${value}' for '${display(spec)}'\n  [possible values: ${spec.values.join(", ")}]${USAGE_HINT}`,
    );
  }
  return value;
}

/** Parses `args` against `specs`; stops at the first positional, which is returned as `rest`. */
function parseFlags(args: string[], specs: Spec[]): { parsed: Parsed; rest: string[]; help: boolean } {
  const parsed: Parsed = new Map();
  const byLong = new Map<string, Spec>();
  const byShort = new Map<string, Spec>();
  for (const spec of specs) {
    byLong.set(spec.name, spec);
    for (const alias of spec.aliases ?? []) byLong.set(alias, spec);
    if (spec.short) byShort.set(spec.short, spec);
  }
  let help = false;
  let i = 0;
  const store = (spec: Spec, value: string | true) => {
    if (value === true) {
      parsed.set(spec.name, true);
      return;
    }
    const previous = parsed.get(spec.name);
    if (spec.kind === "multi" && Array.isArray(previous)) previous.push(value);
    else parsed.set(spec.name, [value]);
  };
  const takeValue = (spec: Spec, inline: string | undefined): void => {
    if (spec.kind === "flag") {
      if (inline !== undefined) {
        throw new UsageError(`error: unexpected value '${inline}' for '${display(spec)}' found; no more were expected${USAGE_HINT}`);
      }
      store(spec, true);
      return;
    }
    if (inline !== undefined) {
      store(spec, checkValue(spec, inline));
      return;
    }
    const next = args[i + 1];
    if (spec.kind === "optional") {
      if (next !== undefined && !next.startsWith("-")) {
        i++;
        store(spec, checkValue(spec, next));
      } else {
        store(spec, "default");
      }
      return;
    }
    if (next === undefined) {
      throw new UsageError(`error: a value is required for '${display(spec)}' but none was supplied${USAGE_HINT}`);
    }
    i++;
    store(spec, checkValue(spec, next));
  };

  for (; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === "--") {
      return { parsed, rest: args.slice(i + 1), help };
    }
    if (arg === "-h" || arg === "--help") {
      help = true;
      continue;
    }
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      const name = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
      const spec = byLong.get(name);
      if (!spec) throw new UsageError(`error: unexpected argument '${eq === -1 ? arg : arg.slice(0, eq)}' found${USAGE_HINT}`);
      takeValue(spec, eq === -1 ? undefined : arg.slice(eq + 1));
      continue;
    }
    if (arg.startsWith("-") && arg.length > 1) {
      const spec = byShort.get(arg[1]!);
      if (!spec) throw new UsageError(`error: unexpected argument '${arg.slice(0, 2)}' found${USAGE_HINT}`);
      const inline = arg.length > 2 ? arg.slice(arg[2] === "=" ? 3 : 2) : undefined;
      takeValue(spec, inline);
      continue;
    }
    return { parsed, rest: args.slice(i), help };
  }
  return { parsed, rest: [], help };
}

function envBool(name: string, env: Record<string, string | undefined>, spec: Spec): boolean {
  const raw = env[name];
  if (raw === undefined) return false;
  const value = raw.toLowerCase();
  if (["true", "1", "yes", "on"].includes(value)) return true;
  if (["false", "0", "no", "off", ""].includes(value)) return false;
  throw new UsageError(`error: invalid value '${raw}' for '${display(spec)}'\n  [possible values: true, false]${USAGE_HINT}`);
}

/** Value of a flag: command line first, then its env var, then the default. */
function resolve(parsed: Parsed, spec: Spec, env: Record<string, string | undefined>): string | undefined {
  const value = parsed.get(spec.name);
  if (Array.isArray(value)) return value[value.length - 1];
  if (spec.env && env[spec.env] !== undefined) return checkValue(spec, env[spec.env]!);
  return spec.default;
}

function flag(parsed: Parsed, spec: Spec, env: Record<string, string | undefined>): boolean {
  if (parsed.get(spec.name) === true) return true;
  return spec.env ? envBool(spec.env, env, spec) : false;
}

function specOf(specs: Spec[], name: string): Spec {
  return specs.find((s) => s.name === name)!;
}

export function parseCommandLine(args: string[], env: Record<string, string | undefined> = process.env): Invocation {
  const { parsed, rest, help } = parseFlags(args, SERVER_SPECS);
  const get = (name: string) => resolve(parsed, specOf(SERVER_SPECS, name), env);

  if (rest.length > 0) {
    if (rest[0] === "client") return { kind: "client", args: rest.slice(1) };
    if (rest[0] !== "pause") throw new UsageError(`error: unrecognized subcommand '${rest[0]}'${USAGE_HINT}`);
    return parsePause(rest.slice(1), env);
  }
  if (help) return { kind: "help", text: usage(SERVER_SPECS, "conmonrs [OPTIONS] [COMMAND]") };

  // Upstream checks --version before --version-json; both only when given (flag or env).
  const version = parsed.get("version") ?? (env.CONMON_VERSION !== undefined ? [checkValue(specOf(SERVER_SPECS, "version"), env.CONMON_VERSION || "default")] : undefined);
  if (Array.isArray(version)) return { kind: "version", json: false, full: version[0] === "full" };
  const versionJson = parsed.get("version-json") ?? (env.CONMON_VERSION_JSON !== undefined ? [checkValue(specOf(SERVER_SPECS, "version-json"), env.CONMON_VERSION_JSON || "default")] : undefined);
  if (Array.isArray(versionJson)) return { kind: "version", json: true, full: versionJson[0] === "full" };

  const runtimeRoot = get("runtime-root");
  return {
    kind: "server",
    config: {
      runtime: get("runtime")!,
      runtimeDir: get("runtime-dir")!,
      runtimeRoot: runtimeRoot === undefined ? undefined : runtimeRoot,
      logLevel: get("log-level") as LogLevel,
      logDriver: get("log-driver") as LogDriver,
      skipFork: flag(parsed, specOf(SERVER_SPECS, "skip-fork"), env),
      enableTracing: flag(parsed, specOf(SERVER_SPECS, "enable-tracing"), env),
      tracingEndpoint: get("tracing-endpoint")!,
    },
  };
}

function parsePause(args: string[], env: Record<string, string | undefined>): Invocation {
  const { parsed, rest, help } = parseFlags(args, PAUSE_SPECS);
  if (rest.length > 0) throw new UsageError(`error: unexpected argument '${rest[0]}' found${USAGE_HINT.replace("[OPTIONS] [COMMAND]", "pause [OPTIONS] --pod-id <POD_ID>")}`);
  if (help) return { kind: "help", text: usage(PAUSE_SPECS, "conmonrs pause [OPTIONS] --pod-id <POD_ID>") };
  const get = (name: string) => resolve(parsed, specOf(PAUSE_SPECS, name), env);
  const podId = get("pod-id");
  if (podId === undefined) {
    throw new UsageError(
      "error: the following required arguments were not provided:\n  --pod-id <POD_ID>\n\nUsage: conmonrs pause --pod-id <POD_ID>\n\nFor more information, try '--help'.",
    );
  }
  const list = (name: string) => {
    const value = parsed.get(name);
    return Array.isArray(value) ? value : [];
  };
  const config: PauseConfig = {
    basePath: get("base-path")!,
    podId,
    ipc: parsed.get("ipc") === true,
    pid: parsed.get("pid") === true,
    net: parsed.get("net") === true,
    user: parsed.get("user") === true,
    uts: parsed.get("uts") === true,
    uidMappings: list("uid-mappings"),
    gidMappings: list("gid-mappings"),
  };
  if (config.user && config.uidMappings.length === 0) {
    throw new UsageError(`error: the following required arguments were not provided:\n  --uid-mappings <UID_MAPPINGS>${USAGE_HINT}`);
  }
  if (config.user && config.gidMappings.length === 0) {
    throw new UsageError(`error: the following required arguments were not provided:\n  --gid-mappings <GID_MAPPINGS>${USAGE_HINT}`);
  }
  return { kind: "pause", config };
}

/** --help text, rendered by citty from the same definitions the parser uses. */
function usage(specs: Spec[], synopsis: string): Promise<string> {
  const args: ArgsDef = {};
  for (const spec of specs) {
    const env = spec.env ? ` [env: ${spec.env}=]` : "";
    const def = spec.default !== undefined && spec.default.trim() !== "" ? ` [default: ${spec.default}]` : "";
    const values = spec.values ? ` [possible values: ${spec.values.join(", ")}]` : "";
    args[spec.name] = {
      type: spec.kind === "flag" ? "boolean" : "string",
      alias: spec.short ? [spec.short, ...(spec.aliases ?? [])] : spec.aliases,
      valueHint: spec.kind === "flag" ? undefined : spec.valueName,
      description: `${spec.description}${values}${def}${env}`,
    };
  }
  const command = defineCommand({
    meta: {
      name: "conmonrs",
      description:
        `Pod-level OCI container runtime monitor (usage: ${synopsis})\n\n` +
        "Subcommands:\n  pause    pin pod namespaces (used by createNamespaces)\n  client   talk to a running server: conmonrs client --help",
    },
    args,
  });
  return renderUsage(command);
}

/** Errors of `validate()`, fatal: `Error: create server` + the chain, exit 1 (as upstream). */
export function validationError(config: ServerConfig): string | undefined {
  if (config.runtime.trim() === "") return "--runtime flag not set";
  if (config.runtimeDir.trim() === "") return "--runtime-dir flag not set";
  return undefined;
}
