// Pins the wire contract. Node IDs, ordinals, types and field locations are the Cap'n Proto wire
// format: if any of them changes, upstream's Go client and CRI-O can no longer talk to us.
// The golden (schema.golden.txt) was written from `capnp compile -ocapnp` and cross-checked line by
// line against the spec (conmon-rs-behaviour.md §4.2–4.4).
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Message, Struct, type StructCtor } from "capnp-es";
import { CodeGeneratorRequest, Node, Type } from "capnp-es/capnp/schema";
import { isFresh, REPO_ROOT } from "../../schema/generate.ts";
import * as generated from "../../schema/conmon.ts";

const GOLDEN_FILE = join(import.meta.dir, "schema.golden.txt");
const goldenLines = () =>
  readFileSync(GOLDEN_FILE, "utf8")
    .split("\n")
    .filter((l) => l !== "" && !l.startsWith("#"));

function capnp(args: string[]): Uint8Array {
  const r = Bun.spawnSync(["capnp", ...args], { cwd: REPO_ROOT, stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`capnp ${args.join(" ")} failed: ${r.stderr.toString()}`);
  return r.stdout;
}

/** Flattens `capnp compile -ocapnp` output into one line per declaration, full names, capnp's own
 * layout comments verbatim. Unknown line shapes throw so new constructs (unions, groups, consts)
 * get noticed instead of silently skipped. */
function layoutTable(ocapnp: string, methodStructs: Map<string, string>): string[] {
  const out: string[] = [];
  const scope: string[] = [];
  const name = (n: string) => [...scope, n].join(".");
  for (const raw of ocapnp.split("\n")) {
    const line = raw.trim();
    let m: RegExpMatchArray | null;
    if (line === "" || /^# \S+\.capnp$/.test(line)) continue;
    if ((m = line.match(/^@(0x[0-9a-f]{16});$/))) {
      out.push(`file ${m[1]}`);
    } else if ((m = line.match(/^(interface|struct|enum) (\w+) @(0x[0-9a-f]{16}) \{(?:  # (.*))?$/))) {
      out.push(`${m[1]} ${name(m[2]!)} ${m[3]}${m[4] ? ` ${m[4]}` : ""}`);
      scope.push(m[2]!);
    } else if (line === "}") {
      if (!scope.pop()) throw new Error("unbalanced } in capnp output");
    } else if ((m = line.match(/^(\w+) @(\d+) (\(.*\) -> \(.*\));$/))) {
      const full = name(m[1]!);
      out.push(`method ${full} @${m[2]} ${m[3]} ${methodStructs.get(full) ?? "?"}`);
    } else if ((m = line.match(/^(\w+) @(\d+) :(\S+);  # (.*)$/))) {
      out.push(`field ${name(m[1]!)} @${m[2]} :${m[3]} ${m[4]}`);
    } else if ((m = line.match(/^(\w+) @(\d+);$/))) {
      out.push(`enumerant ${name(m[1]!)} @${m[2]}`);
    } else {
      throw new Error(`unrecognised capnp output line: ${JSON.stringify(raw)}`);
    }
  }
  if (scope.length) throw new Error(`unclosed scope ${scope.join(".")}`);
  return out;
}

const hex = (id: bigint) => `0x${id.toString(16).padStart(16, "0")}`;

/** The implicit `$Params`/`$Results` structs of each method are not printed by -ocapnp; read them
 * from the CodeGeneratorRequest that capnp hands to plugins. */
function methodStructs(): { byMethod: Map<string, string>; nodeCount: number } {
  const req = new Message(capnp(["compile", "-o-", "schema/conmon.capnp"]), false).getRoot(CodeGeneratorRequest);
  const nodes = new Map<bigint, Node>();
  for (const n of req.nodes) nodes.set(n.id, n);
  const layoutOf = (id: bigint) => {
    const s = nodes.get(id)!.struct;
    const where = (f: (typeof s.fields)[number]) =>
      f.slot.type.which() === Type.STRUCT ? `ptr[${f.slot.offset}]` : `non-struct slot ${f.slot.offset}`;
    const fields = [...s.fields].map((f) => `${f.name} ${where(f)}`).join(", ");
    return `${hex(id)} (${s.dataWordCount * 8} bytes, ${s.pointerCount} ptrs; ${fields})`;
  };
  const byMethod = new Map<string, string>();
  for (const n of req.nodes) {
    if (n.which() !== Node.INTERFACE) continue;
    const iface = n.displayName.slice(n.displayNamePrefixLength);
    for (const m of n.interface.methods) {
      byMethod.set(`${iface}.${m.name}`, `params ${layoutOf(m.paramStructType)} results ${layoutOf(m.resultStructType)}`);
    }
  }
  return { byMethod, nodeCount: req.nodes.length };
}

describe("schema/conmon.ts", () => {
  test("is fresh (byte-identical to a regeneration from schema/conmon.capnp)", async () => {
    const { fresh, committed } = await isFresh();
    if (!fresh) {
      throw new Error(
        committed === null
          ? "schema/conmon.ts is missing: run `bun schema/generate.ts`"
          : "schema/conmon.ts is stale: run `bun schema/generate.ts` and commit the result",
      );
    }
    expect(fresh).toBe(true);
  }, 30_000);

  test("Conmon$Client carries the upstream interface id and the 11 methods in ordinal order", () => {
    const { Conmon$Client } = generated;
    expect(Conmon$Client.interfaceId).toBe(0xb737e899dd6633f1n);
    const methods = Conmon$Client.methods.map((m) => [m.methodId, m.methodName, m.interfaceId, m.interfaceName]);
    const names = [
      "version",
      "createContainer",
      "execSyncContainer",
      "attachContainer",
      "reopenLogContainer",
      "setWindowSizeContainer",
      "createNamespaces",
      "startFdSocket",
      "serveExecContainer",
      "serveAttachContainer",
      "servePortForwardContainer",
    ];
    expect(methods).toEqual(names.map((n, i) => [i, n, 0xb737e899dd6633f1n, "conmon.capnp:Conmon"]));
  });

  test("every generated struct class has the id and size capnp assigns", () => {
    const golden = goldenLines().join("\n");
    const expected = new Map<string, string>();
    for (const m of golden.matchAll(/^struct \S+ (0x[0-9a-f]{16}) (\d+) bytes, (\d+) ptrs$/gm)) {
      expected.set(m[1]!, `${m[2]}/${m[3]}`);
    }
    for (const m of golden.matchAll(/(?:params|results) (0x[0-9a-f]{16}) \((\d+) bytes, (\d+) ptrs;/g)) {
      expected.set(m[1]!, `${m[2]}/${m[3]}`);
    }
    const actual = new Map<string, string>();
    for (const value of Object.values(generated)) {
      if (typeof value !== "function" || !(value.prototype instanceof Struct)) continue;
      const { id, size } = (value as unknown as StructCtor<Struct>)._capnp;
      actual.set(`0x${id}`, `${size.dataByteLength}/${size.pointerLength}`);
    }
    expect(expected.size).toBe(25 + 22);
    expect(Object.fromEntries(actual)).toEqual(Object.fromEntries(expected));
  });
});

describe("schema/conmon.capnp wire layout", () => {
  const ocapnp = new TextDecoder().decode(capnp(["compile", "-ocapnp", "schema/conmon.capnp"]));
  const { byMethod, nodeCount } = methodStructs();
  const table = layoutTable(ocapnp, byMethod);

  test("matches the golden table (IDs, ordinals, types, locations, sizes)", () => {
    expect(table).toEqual(goldenLines());
  });

  test("has 30 IDs in the file (file, interface, 25 structs, 3 enums) plus 22 method structs, all unique", () => {
    const kinds = table.map((l) => l.split(" ")[0]);
    const count = (k: string) => kinds.filter((x) => x === k).length;
    expect([count("file"), count("interface"), count("struct"), count("enum")]).toEqual([1, 1, 25, 3]);
    expect(count("method")).toBe(11);
    expect(nodeCount).toBe(30 + 22);
    const ids = table.join("\n").match(/0x[0-9a-f]{16}/g)!;
    expect(ids.length).toBe(30 + 22);
    expect(new Set(ids).size).toBe(ids.length);
  });

  test("the layout parser rejects lines it does not understand", () => {
    expect(() => layoutTable("struct S @0x0123456789abcdef {\n  u :union {\n}\n", new Map())).toThrow(/unrecognised/);
  });
});
