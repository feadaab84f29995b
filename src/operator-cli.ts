// `conmonrs client`: drive a RUNNING conmonrs server from a shell (an operator's debugging tool and
// a scripting interface). It never starts a server: `ConmonClient.new` would launch one when none
// answers, which from an operator's shell would leave a stray monitor behind; we use
// `ConmonClient.connect` and fail with one clear line instead.
//
//   conmonrs client [--runtime-dir <DIR>] [--json] <METHOD> [OPTIONS] [-- ARGS...]
//
// Every method's options are declared once in a table (METHODS) that the parser, the JSON request
// reader and --help all use. Each option names the field of the TS client's config object it fills
// (`key`), so a JSON request (`--json-request`) is simply that config object, with the same
// validation as the flags; flags given alongside override its fields.
//
// Exit status: 0 success, 1 the server (or the connection) failed the request, 2 command-line
// mistake; `exec` exits with the command's status (124 timed out, 126 the runtime could not run it).

import { versionText } from "./version.ts";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { CgroupManager, ConmonClient } from "./client/conmon-client.ts";
import { DEFAULT_DETACH_KEYS, DetachError, type TerminalSize } from "./client/attach.ts";
import { Namespace, type IdMapping } from "./client/namespaces.ts";
import { errorChain } from "./errors.ts";

// ---- errors ---------------------------------------------------------------------------------------

/** A command-line mistake: `error: ...` plus the usage line, exit 2 (as the server's own CLI). */
export class CliUsageError extends Error {
  override name = "CliUsageError";
  constructor(
    message: string,
    readonly method?: Method,
  ) {
    super(message);
  }
}

/** A failure once the command line was accepted: `error: ...`, exit `status`. */
export class CliError extends Error {
  override name = "CliError";
  constructor(
    message: string,
    readonly status = 1,
  ) {
    super(message);
  }
}

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
/** `exec` timed out (the convention of timeout(1)). */
export const EXIT_EXEC_TIMEOUT = 124;
/** `exec`: the runtime could not run the command (the server answered exitCode -2). */
export const EXIT_EXEC_NOT_RUN = 126;

/** How long the first `version` call may take before the server counts as not answering. */
const CONNECT_TIMEOUT_MS = 10_000;
const SOCKET_NAME = "conmon.sock";

// ---- option table ---------------------------------------------------------------------------------

type Kind = "flag" | "value" | "multi";

interface Opt {
  /** Long name without `--`. */
  name: string;
  /** Field of the request (the TS client's config object, and the JSON request). */
  key: string;
  kind: Kind;
  valueName?: string;
  help: string;
  /** Command-line values (all occurrences; `[]` for a flag) → the field's value. */
  fromArgs(values: string[], flag: string): unknown;
  /** A JSON request's field → the field's value (throws CliUsageError when malformed). */
  fromJson(value: unknown, field: string): unknown;
}

function usageFail(message: string): never {
  throw new CliUsageError(message);
}

function describeJson(value: unknown): string {
  return value === null ? "null" : Array.isArray(value) ? "an array" : typeof value;
}

function jsonString(value: unknown, field: string): string {
  if (typeof value !== "string") usageFail(`JSON request field '${field}' must be a string, not ${describeJson(value)}`);
  return value;
}

function jsonArray(value: unknown, field: string): unknown[] {
  if (!Array.isArray(value)) usageFail(`JSON request field '${field}' must be an array, not ${describeJson(value)}`);
  return value;
}

function jsonObject(value: unknown, field: string): Record<string, unknown> {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    usageFail(`JSON request field '${field}' must be an object, not ${describeJson(value)}`);
  }
  return value as Record<string, unknown>;
}

/** A flag: present means true. */
function boolOpt(name: string, key: string, help: string): Opt {
  return {
    name,
    key,
    kind: "flag",
    help,
    fromArgs: () => true,
    fromJson(value, field) {
      if (typeof value !== "boolean") usageFail(`JSON request field '${field}' must be true or false, not ${describeJson(value)}`);
      return value;
    },
  };
}

/** One value; the last occurrence wins. `parse` validates it (and converts it). */
function valueOpt(name: string, key: string, valueName: string, help: string, parse: (raw: string, flag: string) => unknown = (raw) => raw, fromJson?: Opt["fromJson"]): Opt {
  return {
    name,
    key,
    kind: "value",
    valueName,
    help,
    fromArgs: (values, flag) => parse(values[values.length - 1]!, flag),
    fromJson: fromJson ?? ((value, field) => parse(jsonString(value, field), `JSON request field '${field}'`)),
  };
}

/** Repeatable; every occurrence adds one item. A JSON array may hold items in the flag syntax. */
function listOpt(name: string, key: string, valueName: string, help: string, parseItem: (raw: string, flag: string) => unknown = (raw) => raw, jsonItem?: (value: unknown, field: string) => unknown): Opt {
  return {
    name,
    key,
    kind: "multi",
    valueName,
    help,
    fromArgs: (values, flag) => values.map((v) => parseItem(v, flag)),
    fromJson: (value, field) =>
      jsonArray(value, field).map((item, i) =>
        jsonItem ? jsonItem(item, `${field}[${i}]`) : parseItem(jsonString(item, `${field}[${i}]`), `JSON request field '${field}[${i}]'`),
      ),
  };
}

// -- value parsers (the flag syntaxes, documented in docs/usage.md) --

function parseUint(raw: string, what: string, max: number): number {
  if (!/^\d+$/.test(raw) || Number(raw) > max) usageFail(`invalid value '${raw}' for ${what}: expected an integer from 0 to ${max}`);
  return Number(raw);
}

function jsonUint(max: number): Opt["fromJson"] {
  return (value, field) => {
    if (typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= max) return value;
    if (typeof value === "string") return parseUint(value, `JSON request field '${field}'`, max);
    return usageFail(`JSON request field '${field}' must be an integer from 0 to ${max}, not ${JSON.stringify(value)}`);
  };
}

const CGROUP_MANAGERS: Record<string, CgroupManager> = { systemd: CgroupManager.systemd, cgroupfs: CgroupManager.cgroupfs };

function parseCgroupManager(raw: string, what: string): CgroupManager {
  const manager = CGROUP_MANAGERS[raw];
  if (manager === undefined) usageFail(`invalid value '${raw}' for ${what}: expected systemd or cgroupfs`);
  return manager;
}

/** A JSON request may name the manager or give the wire value (0 systemd, 1 cgroupfs). */
function jsonCgroupManager(value: unknown, field: string): CgroupManager {
  if (value === CgroupManager.systemd || value === CgroupManager.cgroupfs) return value;
  return parseCgroupManager(jsonString(value, field), `JSON request field '${field}'`);
}

/** `KEY=VALUE`; the value may contain '=' and be empty. */
function parseEnvEntry(raw: string, what: string): [string, string] {
  const eq = raw.indexOf("=");
  if (eq <= 0) usageFail(`invalid value '${raw}' for ${what}: expected KEY=VALUE`);
  return [raw.slice(0, eq), raw.slice(eq + 1)];
}

function envOpt(help: string): Opt {
  return {
    name: "env",
    key: "envVars",
    kind: "multi",
    valueName: "KEY=VALUE",
    help,
    fromArgs: (values, flag) => Object.fromEntries(values.map((v) => parseEnvEntry(v, flag))),
    // The client's shape (an object of strings) or a list in the flag syntax.
    fromJson(value, field) {
      if (Array.isArray(value)) return Object.fromEntries(value.map((v, i) => parseEnvEntry(jsonString(v, `${field}[${i}]`), `JSON request field '${field}[${i}]'`)));
      const env = jsonObject(value, field);
      for (const [k, v] of Object.entries(env)) jsonString(v, `${field}.${k}`);
      return env;
    },
  };
}

const SIZE_UNITS: Record<string, number> = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };

/** Bytes: `1048576`, or with a 1024-based unit `512K`, `10M`, `1G` (`Ki`/`KiB`/`KB` read the same). */
function parseSize(raw: string, what: string): number {
  const m = /^(\d+)(?:([kKmMgG])i?[bB]?)?$/.exec(raw);
  const bytes = m ? Number(m[1]) * SIZE_UNITS[(m[2] ?? "").toLowerCase()]! : NaN;
  if (!Number.isSafeInteger(bytes)) usageFail(`invalid size '${raw}' for ${what}: expected bytes, or a number with K, M or G`);
  return bytes;
}

type LogType = "cri" | "json" | "journald";
const LOG_TYPES: readonly LogType[] = ["cri", "json", "journald"];

/**
 * `--log TYPE[:PATH][:MAXSIZE]`: `cri:/var/log/pods/x/0.log`, `json:/tmp/c.json:10M`, `journald`.
 * The type is what precedes the first ':'; a trailing `:SIZE` (digits with an optional K/M/G) is
 * the max size, so a path that itself ends in `:<digits>` needs an explicit `:0` after it.
 */
export function parseLogDriver(raw: string, what = "--log"): { type: LogType; path?: string; maxSize?: number } {
  const colon = raw.indexOf(":");
  const type = (colon === -1 ? raw : raw.slice(0, colon)) as LogType;
  if (!LOG_TYPES.includes(type)) usageFail(`invalid value '${raw}' for ${what}: the type must be cri, json or journald`);
  let rest = colon === -1 ? "" : raw.slice(colon + 1);
  let maxSize: number | undefined;
  const size = /:(\d+(?:[kKmMgG]i?[bB]?)?)$/.exec(`:${rest}`);
  if (size) {
    maxSize = parseSize(size[1]!, what);
    rest = rest.slice(0, Math.max(0, rest.length - size[0].length));
  }
  if (type !== "journald" && rest === "") usageFail(`invalid value '${raw}' for ${what}: the ${type} driver needs a path (${type}:PATH[:MAXSIZE])`);
  const driver: { type: LogType; path?: string; maxSize?: number } = { type };
  if (rest !== "") driver.path = rest;
  if (maxSize !== undefined) driver.maxSize = maxSize;
  return driver;
}

/** A JSON log driver: the client's `{type, path, maxSize}` (maxSize may be a size string) or the flag syntax. */
function jsonLogDriver(value: unknown, field: string): unknown {
  if (typeof value === "string") return parseLogDriver(value, `JSON request field '${field}'`);
  const obj = jsonObject(value, field);
  for (const key of Object.keys(obj)) {
    if (!["type", "path", "maxSize"].includes(key)) usageFail(`JSON request field '${field}' has an unknown key '${key}' (known: type, path, maxSize)`);
  }
  const type = jsonString(obj.type, `${field}.type`) as LogType;
  if (!LOG_TYPES.includes(type)) usageFail(`JSON request field '${field}.type' must be cri, json or journald, not '${type}'`);
  const driver: { type: LogType; path?: string; maxSize?: number } = { type };
  if (obj.path !== undefined) driver.path = jsonString(obj.path, `${field}.path`);
  if (type !== "journald" && !driver.path) usageFail(`JSON request field '${field}' needs a path for the ${type} driver`);
  if (obj.maxSize !== undefined) driver.maxSize = jsonUint(Number.MAX_SAFE_INTEGER)(typeof obj.maxSize === "string" ? parseSize(obj.maxSize, `JSON request field '${field}.maxSize'`) : obj.maxSize, `${field}.maxSize`) as number;
  return driver;
}

const NAMESPACE_NAMES = Object.keys(Namespace) as Array<keyof typeof Namespace>;

/** `ipc,net` (repeatable): the namespaces to pin. */
function parseNamespaces(raw: string, what: string): Namespace[] {
  return raw.split(",").map((name) => {
    const ns = Namespace[name.trim() as keyof typeof Namespace];
    if (ns === undefined) usageFail(`invalid namespace '${name}' for ${what}: expected ${NAMESPACE_NAMES.join(", ")}`);
    return ns;
  });
}

/** A JSON namespace: a name, or the client's `Namespace` value (0 ipc, 1 pid, 2 net, 3 user, 4 uts). */
function jsonNamespace(value: unknown, field: string): Namespace[] {
  if (typeof value === "number" && (Object.values(Namespace) as number[]).includes(value)) return [value as Namespace];
  return parseNamespaces(jsonString(value, field), `JSON request field '${field}'`);
}

/** `"CONTAINER_ID HOST_ID SIZE"`, as `conmonrs pause --uid-mappings` takes them. */
function parseIdMapping(raw: string, what: string): IdMapping {
  const m = /^\s*(\d+)\s+(\d+)\s+(\d+)\s*$/.exec(raw);
  if (!m) usageFail(`invalid mapping '${raw}' for ${what}: expected "CONTAINER_ID HOST_ID SIZE"`);
  return { containerId: Number(m[1]), hostId: Number(m[2]), size: Number(m[3]) };
}

function jsonIdMapping(value: unknown, field: string): IdMapping {
  if (typeof value === "string") return parseIdMapping(value, `JSON request field '${field}'`);
  const obj = jsonObject(value, field);
  const uint = jsonUint(0xffff_ffff);
  return { containerId: uint(obj.containerId, `${field}.containerId`) as number, hostId: uint(obj.hostId, `${field}.hostId`) as number, size: uint(obj.size, `${field}.size`) as number };
}

const CTRL_KEYS: Record<string, number> = { "@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, _: 31 };

/**
 * Docker's detach-key syntax: a comma-separated sequence of `ctrl-<a..z|@|[|\|]|^|_>` or single
 * characters (`ctrl-p,ctrl-q`, `ctrl-x,x`). The empty string disables detaching (binary stdin).
 */
export function parseDetachKeys(raw: string, what = "--detach-keys"): Uint8Array {
  if (raw === "") return new Uint8Array();
  const bytes = raw.split(",").map((key) => {
    const lower = key.toLowerCase();
    if (lower.startsWith("ctrl-") && key.length === 6) {
      const c = lower[5]!;
      if (c >= "a" && c <= "z") return c.charCodeAt(0) - 96;
      if (c in CTRL_KEYS) return CTRL_KEYS[c]!;
    }
    if (key.length === 1 && key.charCodeAt(0) < 128) return key.charCodeAt(0);
    return usageFail(`invalid detach key '${key}' for ${what}: expected ctrl-<a-z|@|[|\\|]|^|_> or one character`);
  });
  return Uint8Array.from(bytes);
}

/** For options whose every item is itself a list (`--ns ipc,net`): one flat list, repeats dropped. */
function flattened(opt: Opt): Opt {
  const flat = (value: unknown) => [...new Set((value as unknown[][]).flat())];
  return { ...opt, fromArgs: (values, flag) => flat(opt.fromArgs(values, flag)), fromJson: (value, field) => flat(opt.fromJson(value, field)) };
}

// -- option definitions shared by several methods --

const idOpt = (help = "Container ID") => valueOpt("id", "id", "ID", help);
const cgroupManagerOpt = valueOpt(
  "cgroup-manager",
  "cgroupManager",
  "MANAGER",
  "systemd or cgroupfs; systemd makes the runtime use --systemd-cgroup [default: systemd, the wire default]",
  parseCgroupManager,
  jsonCgroupManager,
);

// ---- methods --------------------------------------------------------------------------------------

interface Context {
  runtimeDir: string;
  json: boolean;
  out: Output;
}

type Request = Record<string, any>;

interface Method {
  name: string;
  summary: string;
  /** What follows the method name in the usage line. */
  synopsis: string;
  opts: Opt[];
  /** Request field filled by the arguments after `--` (or from the first positional on). */
  rest?: { key: string; valueName: string };
  /** Request fields that must end up set, as `[key, how the user sets it]`. */
  required: Array<[string, string]>;
  /** false: --json is refused (the output is a raw stream). */
  jsonOutput: boolean;
  /** Checks across fields, before any connection is made (throws CliUsageError). */
  validate?(req: Request): void;
  run(client: ConmonClient, req: Request, ctx: Context): Promise<number>;
}

const METHODS: Method[] = [
  {
    name: "version",
    summary: "Show the server's version and pid",
    synopsis: "version [--verbose]",
    opts: [boolOpt("verbose", "verbose", "Also show the dependency tree (cargoTree)")],
    required: [],
    jsonOutput: true,
    async run(client, req, ctx) {
      const v = await client.version(req.verbose ?? false);
      if (ctx.json) return ctx.out.json(v);
      // The server's `--version` layout, then its pid (which `--version` cannot know).
      const [head, tree] = versionText(req.verbose, v).split("\n\ncargo tree: ");
      const lines = [head, `pid: ${v.processId}`];
      if (tree !== undefined) lines.push("", `cargo tree: ${tree}`);
      return ctx.out.text(`${lines.join("\n")}\n`);
    },
  },
  {
    name: "create",
    summary: "Create a container through the runtime (start it with `<runtime> start <id>`)",
    synopsis: "create --id <ID> --bundle <DIR> [OPTIONS] [-- CLEANUP_CMD...]",
    opts: [
      idOpt(),
      valueOpt("bundle", "bundlePath", "DIR", "OCI bundle directory (holds config.json)"),
      boolOpt("terminal", "terminal", "Give the container a pty (the bundle's process.terminal must be true)"),
      boolOpt("stdin", "stdin", "Keep the container's stdin open for attach clients"),
      listOpt("exit-path", "exitPaths", "PATH", "File to write the exit code into (repeatable)"),
      listOpt("oom-exit-path", "oomExitPaths", "PATH", "File to create when the container is OOM-killed (repeatable)"),
      listOpt("log", "logDrivers", "TYPE[:PATH][:MAXSIZE]", "Log driver: cri:PATH, json:PATH or journald; MAXSIZE in bytes or with K/M/G (repeatable)", parseLogDriver, jsonLogDriver),
      listOpt("cleanup-cmd", "cleanupCmd", "ARG", "One word of the command run after the container exits (repeatable; or give the command after `--`)"),
      listOpt("global-arg", "globalArgs", "ARG", "Runtime argument before `create` (repeatable)"),
      listOpt("command-arg", "commandArgs", "ARG", "Runtime argument after `create`'s own options (repeatable)"),
      envOpt("Environment variable of the runtime process (repeatable)"),
      cgroupManagerOpt,
    ],
    rest: { key: "cleanupCmd", valueName: "CLEANUP_CMD" },
    required: [["id", "--id <ID>"], ["bundlePath", "--bundle <DIR>"]],
    jsonOutput: true,
    async run(client, req, ctx) {
      const { pid } = await client.createContainer(req as any);
      if (ctx.json) return ctx.out.json({ id: req.id, pid });
      return ctx.out.text(`created container ${req.id}, pid ${pid}\n`);
    },
  },
  {
    name: "exec",
    summary: "Run a command in a container; its output is printed and its exit status returned",
    synopsis: "exec --id <ID> [OPTIONS] -- <COMMAND>...",
    opts: [
      idOpt(),
      valueOpt("timeout", "timeoutSec", "SECONDS", "Kill the command after this many seconds; 0 = never [default: 0]", (raw, flag) => parseUint(raw, flag, Number.MAX_SAFE_INTEGER), jsonUint(Number.MAX_SAFE_INTEGER)),
      boolOpt("tty", "terminal", "Run the command on a pty (stdout and stderr arrive merged, with \\r\\n)"),
      envOpt("Environment variable of the runtime `exec` process, not of the command (as upstream) (repeatable)"),
      cgroupManagerOpt,
    ],
    rest: { key: "command", valueName: "COMMAND" },
    required: [["id", "--id <ID>"], ["command", "-- <COMMAND>..."]],
    jsonOutput: true,
    run: runExec,
  },
  {
    name: "attach",
    summary: "Attach to a container's output (and with --stdin, its input)",
    synopsis: "attach --id <ID> [OPTIONS]",
    opts: [
      idOpt(),
      valueOpt("socket-path", "socketPath", "PATH", "Attach socket to create/use [default: <runtime-dir>/<id>/attach, as CRI-O]"),
      boolOpt("stdin", "containerStdin", "Send this terminal's (or pipe's) input to the container (created with --stdin)"),
      boolOpt("stdin-once", "stopAfterStdinEof", "When our input ends, the server closes the container's stdin (needs --stdin)"),
      boolOpt("tty", "tty", "The container has a terminal: put the local terminal in raw mode and forward its size"),
      valueOpt("detach-keys", "detachKeys", "KEYS", "Key sequence that detaches; \"\" disables [default: ctrl-p,ctrl-q]", (raw, flag) => parseDetachKeys(raw, flag)),
    ],
    required: [["id", "--id <ID>"]],
    jsonOutput: false,
    validate(req) {
      if (req.stopAfterStdinEof && !req.containerStdin) throw new CliUsageError("--stdin-once needs --stdin");
    },
    run: runAttach,
  },
  {
    name: "reopen-log",
    summary: "Reopen a container's log files (after they were rotated)",
    synopsis: "reopen-log --id <ID>",
    opts: [idOpt()],
    required: [["id", "--id <ID>"]],
    jsonOutput: true,
    async run(client, req, ctx) {
      await client.reopenLogContainer({ id: req.id });
      return ctx.json ? ctx.out.json({}) : ctx.out.text(`reopened the log files of ${req.id}\n`);
    },
  },
  {
    name: "resize",
    summary: "Set the size of a container's terminal",
    synopsis: "resize --id <ID> --width <COLUMNS> --height <ROWS>",
    opts: [
      idOpt(),
      valueOpt("width", "width", "COLUMNS", "Columns", (raw, flag) => parseUint(raw, flag, 0xffff), jsonUint(0xffff)),
      valueOpt("height", "height", "ROWS", "Rows", (raw, flag) => parseUint(raw, flag, 0xffff), jsonUint(0xffff)),
    ],
    required: [["id", "--id <ID>"], ["width", "--width <COLUMNS>"], ["height", "--height <ROWS>"]],
    jsonOutput: true,
    async run(client, req, ctx) {
      await client.setWindowSizeContainer({ id: req.id, size: { width: req.width, height: req.height } });
      return ctx.json ? ctx.out.json({}) : ctx.out.text(`resized the terminal of ${req.id} to ${req.width}x${req.height}\n`);
    },
  },
  {
    name: "namespaces",
    summary: "Pin the pod's namespaces (createNamespaces)",
    synopsis: "namespaces --pod-id <POD_ID> [--ns <NS,...>] [OPTIONS]",
    opts: [
      valueOpt("pod-id", "podId", "POD_ID", "Pod identifier"),
      valueOpt("base-path", "basePath", "DIR", "Where the namespaces are bind-mounted [default: /var/run]"),
      flattened(listOpt("ns", "namespaces", "NS,...", `Namespaces to pin: ${NAMESPACE_NAMES.join(", ")} (comma-separated, repeatable)`, parseNamespaces, jsonNamespace)),
      listOpt("uid-map", "uidMappings", "\"C H S\"", "User ID mapping CONTAINER_ID HOST_ID SIZE (repeatable; required with user)", parseIdMapping, jsonIdMapping),
      listOpt("gid-map", "gidMappings", "\"C H S\"", "Group ID mapping CONTAINER_ID HOST_ID SIZE (repeatable; required with user)", parseIdMapping, jsonIdMapping),
    ],
    required: [["podId", "--pod-id <POD_ID>"]],
    jsonOutput: true,
    async run(client, req, ctx) {
      const res = await client.createNamespaces({ ...req, namespaces: req.namespaces ?? [] } as any);
      const named = res.namespaces.map((ns) => ({ type: NAMESPACE_NAMES.find((n) => Namespace[n] === ns.type) ?? String(ns.type), path: ns.path }));
      if (ctx.json) return ctx.out.json({ namespaces: named });
      return ctx.out.text(named.map((ns) => `${ns.type}\t${ns.path}\n`).join(""));
    },
  },
  {
    name: "serve-exec",
    summary: "Start a Kubernetes exec session on the streaming server; prints its URL",
    synopsis: "serve-exec --id <ID> [OPTIONS] -- <COMMAND>...",
    opts: [
      idOpt(),
      boolOpt("tty", "tty", "Allocate a pty"),
      boolOpt("stdin", "stdin", "Stream stdin"),
      boolOpt("stdout", "stdout", "Stream stdout"),
      boolOpt("stderr", "stderr", "Stream stderr"),
      cgroupManagerOpt,
    ],
    rest: { key: "command", valueName: "COMMAND" },
    required: [["id", "--id <ID>"], ["command", "-- <COMMAND>..."]],
    jsonOutput: true,
    run: async (client, req, ctx) => printUrl(await client.serveExecContainer(req as any), ctx),
  },
  {
    name: "serve-attach",
    summary: "Start a Kubernetes attach session on the streaming server; prints its URL",
    synopsis: "serve-attach --id <ID> [OPTIONS]",
    opts: [idOpt(), boolOpt("stdin", "stdin", "Stream stdin"), boolOpt("stdout", "stdout", "Stream stdout"), boolOpt("stderr", "stderr", "Stream stderr")],
    required: [["id", "--id <ID>"]],
    jsonOutput: true,
    run: async (client, req, ctx) => printUrl(await client.serveAttachContainer(req as any), ctx),
  },
  {
    name: "serve-port-forward",
    summary: "Start a Kubernetes port-forward session in a network namespace; prints its URL",
    synopsis: "serve-port-forward --netns-path <PATH>",
    opts: [valueOpt("netns-path", "netNsPath", "PATH", "The pod's network namespace (e.g. /var/run/netns/<pod>)")],
    required: [["netNsPath", "--netns-path <PATH>"]],
    jsonOutput: true,
    run: async (client, req, ctx) => printUrl(await client.servePortForwardContainer(req as any), ctx),
  },
];

function printUrl(res: { url: string }, ctx: Context): Promise<number> {
  return ctx.json ? ctx.out.json({ url: res.url }) : ctx.out.text(`${res.url}\n`);
}

// ---- exec -----------------------------------------------------------------------------------------

async function runExec(client: ConmonClient, req: Request, ctx: Context): Promise<number> {
  const result = await client.execSyncContainer(req as any);
  if (ctx.json) {
    // The result itself is the answer: scripts read exitCode/timedOut from the object.
    const decoder = new TextDecoder();
    return ctx.out.json({ exitCode: result.exitCode, stdout: decoder.decode(result.stdout), stderr: decoder.decode(result.stderr), timedOut: result.timedOut });
  }
  await ctx.out.write(result.stdout);
  await ctx.out.writeErr(result.stderr);
  if (result.timedOut) throw new CliError(`exec in container ${req.id} timed out after ${req.timeoutSec} s`, EXIT_EXEC_TIMEOUT);
  if (result.exitCode === -2) throw new CliError(`the runtime could not run the command in container ${req.id} (its error is in the server's log)`, EXIT_EXEC_NOT_RUN);
  if (result.exitCode < 0 || result.exitCode > 255) throw new CliError(`exec in container ${req.id} ended with status ${result.exitCode}`);
  return result.exitCode;
}

// ---- attach ---------------------------------------------------------------------------------------

/** Sizes of the local terminal: the current one, then one per SIGWINCH (only the latest is kept). */
class TerminalSizes implements AsyncIterable<TerminalSize> {
  private latest: TerminalSize | null;
  private wake: (() => void) | null = null;
  private stopped = false;
  private readonly onWinch = () => {
    this.latest = currentSize();
    this.wake?.();
  };

  constructor() {
    this.latest = currentSize();
    process.on("SIGWINCH", this.onWinch);
  }

  stop(): void {
    this.stopped = true;
    process.off("SIGWINCH", this.onWinch);
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<TerminalSize> {
    while (!this.stopped) {
      if (this.latest) {
        const size = this.latest;
        this.latest = null;
        yield size;
        continue;
      }
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = null;
    }
  }
}

function currentSize(): TerminalSize | null {
  const { columns, rows } = process.stdout;
  return columns && rows ? { width: columns, height: rows } : null;
}

/** Signals that end an attach from outside; raw mode must not outlive them. */
const FATAL_SIGNALS = { SIGTERM: 15, SIGHUP: 1 } as const;

/** Raw mode on the local terminal while attached; restored on every way out (exit and SIGTERM/SIGHUP included). */
function enterRawMode(): () => void {
  const stdin = process.stdin;
  stdin.setRawMode(true);
  const restore = () => {
    try {
      stdin.setRawMode(false);
    } catch {
      // the terminal is gone: nothing to restore
    }
  };
  // With a listener installed the signal no longer kills us, so exit as it would have.
  const onSignal = (signal: keyof typeof FATAL_SIGNALS) => process.exit(128 + FATAL_SIGNALS[signal]);
  process.once("exit", restore);
  for (const signal of Object.keys(FATAL_SIGNALS)) process.once(signal, onSignal);
  return () => {
    process.off("exit", restore);
    for (const signal of Object.keys(FATAL_SIGNALS)) process.off(signal, onSignal);
    restore();
  };
}

async function runAttach(client: ConmonClient, req: Request, ctx: Context): Promise<number> {
  const socketPath: string = req.socketPath ?? join(ctx.runtimeDir, req.id, "attach");
  const interactive = Boolean(req.tty && req.containerStdin && process.stdin.isTTY);
  const sizes = req.tty && process.stdout.isTTY ? new TerminalSizes() : undefined;
  const restoreTerminal = interactive ? enterRawMode() : undefined;
  try {
    if (req.stopAfterStdinEof) {
      // --stdin-once: the server must close the container's stdin at our EOF, but a client that
      // asks for that returns at its EOF and closes the socket at once; the server then often
      // sees the close (ECONNRESET/EPIPE, with output still queued for us) instead of the EOF and
      // leaves the container's stdin open. So the listener is created with stopAfterStdinEof
      // (RPC only), and the session below reuses it (an existing attach socket keeps its first
      // options, spec §9) while waiting for the output to end like a plain attach.
      await client.attachContainer({ id: req.id, socketPath, stopAfterStdinEof: true, passthrough: true });
    }
    await client.attachContainer({
      id: req.id,
      socketPath,
      tty: req.tty ?? false,
      containerStdin: req.containerStdin ?? false,
      stopAfterStdinEof: false,
      detachKeys: req.detachKeys ?? DEFAULT_DETACH_KEYS,
      resize: sizes,
      streams: {
        stdin: req.containerStdin ? process.stdin : undefined,
        stdout: (chunk) => void ctx.out.write(chunk),
        stderr: (chunk) => void ctx.out.writeErr(chunk),
      },
    });
  } catch (err) {
    if (!(err instanceof DetachError)) throw err;
    await ctx.out.flush();
    process.stderr.write(`${interactive ? "\r\n" : ""}detached from container ${req.id}\n`);
  } finally {
    sizes?.stop();
    restoreTerminal?.();
  }
  await ctx.out.flush();
  return EXIT_OK;
}

// ---- output ---------------------------------------------------------------------------------------

/**
 * stdout/stderr writes that can be awaited. Bun's stream writes are asynchronous for pipes and a
 * `process.exit` drops what is still queued (an empty write's callback does not wait for earlier
 * ones), so every write's own callback is tracked and `flush` awaits the last one.
 */
class Output {
  private lastOut: Promise<void> = Promise.resolve();
  private lastErr: Promise<void> = Promise.resolve();

  constructor() {
    // A reader that went away (`| head`) must not crash us with an unhandled EPIPE.
    process.stdout.on("error", () => {});
    process.stderr.on("error", () => {});
  }

  write(data: Uint8Array | string): Promise<void> {
    return (this.lastOut = writeTo(process.stdout, data, this.lastOut));
  }

  writeErr(data: Uint8Array | string): Promise<void> {
    return (this.lastErr = writeTo(process.stderr, data, this.lastErr));
  }

  async text(text: string): Promise<number> {
    await this.write(text);
    return EXIT_OK;
  }

  /** One JSON object on one line: the --json contract. */
  async json(value: unknown): Promise<number> {
    await this.write(`${JSON.stringify(value)}\n`);
    return EXIT_OK;
  }

  async flush(): Promise<void> {
    await Promise.all([this.lastOut, this.lastErr]);
  }
}

function writeTo(stream: NodeJS.WriteStream, data: Uint8Array | string, previous: Promise<void>): Promise<void> {
  if (data.length === 0) return previous;
  return new Promise((resolve) => {
    // Errors (EPIPE) resolve too: the output is lost either way, the exit status still counts.
    stream.write(data, () => resolve());
  });
}

// ---- command line ---------------------------------------------------------------------------------

const GLOBAL_OPTS = {
  runtimeDir: { name: "runtime-dir", valueName: "DIR", help: "The server's runtime dir, holding conmon.sock [env: CONMON_RUNTIME_DIR=]" },
  json: { name: "json", help: "Print one JSON object on stdout instead of text" },
  jsonRequest: { name: "json-request", help: "Read the request as JSON (the TS client's config object) from stdin, or from FILE with --json-request=FILE" },
};

export interface ParsedCommand {
  method: Method;
  runtimeDir: string;
  json: boolean;
  /** The request: JSON request fields overridden by flags. */
  request: Request;
}

export type Invocation = { kind: "help"; text: string } | { kind: "run"; command: ParsedCommand };

function methodByName(name: string): Method | undefined {
  return METHODS.find((m) => m.name === name);
}

/**
 * Parses `conmonrs client` arguments strictly: unknown flags, a flag given a value it does not
 * take, repeated single-value flags are all usage errors. Global options may come before or after
 * the method name. `readJson` supplies the JSON request text (stdin or a file).
 */
export function parseClientArgs(args: string[], env: Record<string, string | undefined> = process.env, readJson: (source: string) => string = readJsonSource): Invocation {
  let runtimeDir: string | undefined;
  let json = false;
  let jsonRequest: string | undefined;
  let help = false;
  let method: Method | undefined;
  const values = new Map<Opt, string[]>();
  let rest: string[] | undefined;

  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === "--") {
      if (!method) throw new CliUsageError("a method is required before '--'");
      rest = args.slice(i + 1);
      break;
    }
    if (arg === "-h" || arg === "--help") {
      help = true;
      continue;
    }
    if (!arg.startsWith("-") || arg === "-") {
      if (!method) {
        method = methodByName(arg);
        if (!method) throw new CliUsageError(`unrecognized method '${arg}' (methods: ${METHODS.map((m) => m.name).join(", ")})`);
        continue;
      }
      if (!method.rest) throw new CliUsageError(`unexpected argument '${arg}' found`, method);
      rest = args.slice(i); // `exec --id x ls -l` as well as `exec --id x -- ls -l`
      break;
    }
    if (!arg.startsWith("--")) throw new CliUsageError(`unexpected argument '${arg}' found (options are --long only)`, method);
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq === -1 ? undefined : eq);
    const inline = eq === -1 ? undefined : arg.slice(eq + 1);
    const takeValue = (valueName: string): string => {
      if (inline !== undefined) return inline;
      const next = args[i + 1];
      if (next === undefined) throw new CliUsageError(`a value is required for '--${name} <${valueName}>' but none was supplied`, method);
      i++;
      return next;
    };
    const refuseValue = () => {
      if (inline !== undefined) throw new CliUsageError(`unexpected value '${inline}' for '--${name}' found; no more were expected`, method);
    };

    if (name === GLOBAL_OPTS.runtimeDir.name) {
      runtimeDir = takeValue(GLOBAL_OPTS.runtimeDir.valueName);
      continue;
    }
    if (name === GLOBAL_OPTS.json.name) {
      refuseValue();
      json = true;
      continue;
    }
    if (name === GLOBAL_OPTS.jsonRequest.name && method) {
      // A file only in the inline form, so `exec --json-request ls` cannot swallow the command;
      // `--json-request -` reads stdin like the bare flag.
      if (inline === undefined && args[i + 1] === "-") i++;
      jsonRequest = inline === undefined || inline === "" ? "-" : inline;
      continue;
    }
    const opt = method?.opts.find((o) => o.name === name);
    if (!opt) throw new CliUsageError(`unexpected argument '--${name}' found`, method);
    if (opt.kind === "flag") {
      refuseValue();
      values.set(opt, []);
      continue;
    }
    const value = takeValue(opt.valueName ?? "VALUE");
    if (opt.kind === "value" && values.has(opt)) throw new CliUsageError(`the argument '--${name} <${opt.valueName}>' cannot be used multiple times`, method);
    values.set(opt, [...(values.get(opt) ?? []), value]);
  }

  if (help) return { kind: "help", text: method ? methodHelp(method) : generalHelp() };
  if (!method) throw new CliUsageError("a method is required");
  runtimeDir ??= env.CONMON_RUNTIME_DIR;
  if (runtimeDir === undefined || runtimeDir.trim() === "") {
    throw new CliUsageError("the server's runtime dir is required: --runtime-dir <DIR> (or CONMON_RUNTIME_DIR)", method);
  }
  if (json && !method.jsonOutput) throw new CliUsageError(`--json does not apply to ${method.name}: its output is the container's stream`, method);

  const request = buildRequest(method, jsonRequest === undefined ? undefined : readJson(jsonRequest), values, rest);
  if (jsonRequest === "-" && request.containerStdin) {
    throw new CliUsageError("stdin cannot carry both the JSON request and the container's input: use --json-request=FILE", method);
  }
  return { kind: "run", command: { method, runtimeDir, json, request } };
}

function readJsonSource(source: string): string {
  try {
    return readFileSync(source === "-" ? 0 : source, "utf8");
  } catch (err) {
    throw new CliUsageError(`read the JSON request from ${source === "-" ? "stdin" : `'${source}'`}: ${(err as Error).message}`);
  }
}

/** JSON request fields first, then every flag given replaces its field; `rest` extends its field. */
function buildRequest(method: Method, jsonText: string | undefined, values: Map<Opt, string[]>, rest: string[] | undefined): Request {
  const request: Request = {};
  if (jsonText !== undefined) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(jsonText);
    } catch (err) {
      throw new CliUsageError(`the JSON request is not valid JSON: ${(err as Error).message}`, method);
    }
    const obj = (() => {
      try {
        return jsonObject(parsed, "(request)");
      } catch {
        throw new CliUsageError("the JSON request must be an object", method);
      }
    })();
    const keys = [...method.opts.map((o) => o.key), ...(method.rest ? [method.rest.key] : [])];
    for (const [key, value] of Object.entries(obj)) {
      if (!keys.includes(key)) throw new CliUsageError(`the JSON request has an unknown field '${key}' (${method.name} knows: ${[...new Set(keys)].join(", ")})`, method);
      if (value === null) continue; // null = unset, as the wire's null pointers
      const opt = method.opts.find((o) => o.key === key);
      request[key] = withMethod(method, () =>
        opt ? opt.fromJson(value, key) : jsonArray(value, key).map((v, i) => jsonString(v, `${key}[${i}]`)),
      );
    }
  }
  for (const [opt, raw] of values) request[opt.key] = withMethod(method, () => opt.fromArgs(raw, `'--${opt.name}'`));
  if (rest !== undefined && method.rest) {
    const { key } = method.rest;
    // create: `--cleanup-cmd` words (if any) then the words after `--`.
    request[key] = values.has(method.opts.find((o) => o.key === key)!) ? [...request[key], ...rest] : rest;
  } else if (rest !== undefined && rest.length > 0) {
    throw new CliUsageError(`unexpected argument '${rest[0]}' found`, method);
  }
  for (const [key, how] of method.required) {
    const value = request[key];
    if (value === undefined || value === "" || (Array.isArray(value) && value.length === 0)) {
      throw new CliUsageError(`the following required argument was not provided: ${how}`, method);
    }
  }
  withMethod(method, () => method.validate?.(request));
  return request;
}

/** Attaches the method to a usage error from a value parser, for the usage line. */
function withMethod<T>(method: Method, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof CliUsageError && !err.method) throw new CliUsageError(err.message, method);
    throw err;
  }
}

// ---- help -----------------------------------------------------------------------------------------

const SYNOPSIS = "conmonrs client [--runtime-dir <DIR>] [--json] <METHOD> [OPTIONS]";

function usageLine(method?: Method): string {
  return method ? `conmonrs client --runtime-dir <DIR> ${method.synopsis}` : SYNOPSIS;
}

function optionLines(rows: Array<[string, string]>): string {
  const width = Math.max(...rows.map(([left]) => left.length));
  return rows.map(([left, right]) => `  ${left.padEnd(width)}  ${right}`).join("\n");
}

function globalRows(): Array<[string, string]> {
  return [
    [`--runtime-dir <${GLOBAL_OPTS.runtimeDir.valueName}>`, GLOBAL_OPTS.runtimeDir.help],
    [`--${GLOBAL_OPTS.json.name}`, GLOBAL_OPTS.json.help],
    ["-h, --help", "Print help"],
  ];
}

function generalHelp(): string {
  return [
    "Talk to a running conmonrs server (never starts one)",
    "",
    `Usage: ${SYNOPSIS}`,
    "",
    "Methods:",
    optionLines(METHODS.map((m) => [m.name, m.summary])),
    "",
    "Options:",
    optionLines(globalRows()),
    "",
    "Every method also takes --json-request[=FILE]: the request as JSON (stdin by default).",
    "Exit status: 0 ok, 1 the server failed the request, 2 usage error; exec: the command's status.",
    "See 'conmonrs client <METHOD> --help'.",
    "",
  ].join("\n");
}

function methodHelp(method: Method): string {
  const rows: Array<[string, string]> = method.opts.map((o) => [o.kind === "flag" ? `--${o.name}` : `--${o.name} <${o.valueName}>`, o.help]);
  rows.push([`--${GLOBAL_OPTS.jsonRequest.name}[=FILE]`, GLOBAL_OPTS.jsonRequest.help]);
  if (method.jsonOutput) rows.push([`--${GLOBAL_OPTS.json.name}`, GLOBAL_OPTS.json.help]);
  rows.push(globalRows()[0]!, ["-h, --help", "Print help"]);
  const jsonKeys = [...new Set([...method.opts.map((o) => o.key), ...(method.rest ? [method.rest.key] : [])])];
  return [
    method.summary,
    "",
    `Usage: ${usageLine(method)}`,
    "",
    "Options:",
    optionLines(rows),
    "",
    `JSON request fields: ${jsonKeys.join(", ")}`,
    "",
  ].join("\n");
}

// ---- running ----------------------------------------------------------------------------------------

/**
 * Connects to the server of `runtimeDir` without ever starting one. Checks the socket file first:
 * dialing creates the directory of the socket (the long-path trick opens it), and a typo in
 * --runtime-dir must not leave directories behind.
 */
export async function connectToServer(runtimeDir: string, cgroupManager?: CgroupManager): Promise<ConmonClient> {
  const socket = join(runtimeDir, SOCKET_NAME);
  if (!existsSync(socket)) throw new CliError(`no conmonrs server answers on ${socket}: no such socket`);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${CONNECT_TIMEOUT_MS / 1000} s`)), CONNECT_TIMEOUT_MS);
  });
  try {
    return await Promise.race([ConmonClient.connect(runtimeDir, { cgroupManager }), timeout]);
  } catch (err) {
    throw new CliError(`no conmonrs server answers on ${socket}: ${errorChain(err)}`);
  } finally {
    clearTimeout(timer);
  }
}

function reportUsage(err: CliUsageError): number {
  process.stderr.write(`error: ${err.message}\n\nUsage: ${usageLine(err.method)}\n\nFor more information, try '--help'.\n`);
  return EXIT_USAGE;
}

/** `conmonrs client ...`; returns the exit status (src/main.ts exits with it). */
export async function runOperatorCli(args: string[]): Promise<number> {
  let invocation: Invocation;
  try {
    invocation = parseClientArgs(args);
  } catch (err) {
    if (err instanceof CliUsageError) return reportUsage(err);
    throw err;
  }
  const out = new Output();
  if (invocation.kind === "help") {
    await out.write(invocation.text);
    return EXIT_OK;
  }
  const { method, runtimeDir, json, request } = invocation.command;
  let client: ConmonClient | undefined;
  try {
    client = await connectToServer(runtimeDir);
    const status = await method.run(client, request, { runtimeDir, json, out });
    await out.flush();
    return status;
  } catch (err) {
    await out.flush();
    if (err instanceof CliUsageError) return reportUsage(err);
    process.stderr.write(`error: ${errorChain(err)}\n`);
    return err instanceof CliError ? err.status : EXIT_FAILURE;
  } finally {
    client?.resetConnection();
  }
}
