// The params of the client's two hot calls, createContainer and execSyncContainer, written by hand
// (SegmentBuilder) instead of through capnp-es. Layouts are schema/conmon.capnp's, as `capnp
// compile -ocapnp` prints them; test/unit/client-params.test.ts reads what these write back
// through capnp-es field by field. Unset lists stay null, as the Go client leaves them.

import { SegmentBuilder } from "../rpc/segment-builder.ts";
import {
  CREATE_CGROUP_MANAGER_BYTE,
  CREATE_DATA_WORDS,
  CREATE_PTRS,
  CREATE_STDIN_BIT,
  CREATE_TERMINAL_BIT,
  CreatePtr,
  ENTRY_PTRS,
  EXEC_CGROUP_MANAGER_BYTE,
  EXEC_DATA_WORDS,
  EXEC_PTRS,
  EXEC_TERMINAL_BIT,
  EXEC_TIMEOUT_BYTE,
  ExecPtr,
  LOG_DRIVER_DATA_WORDS,
  LOG_DRIVER_PTRS,
} from "../request-params.ts";

// Layouts: src/request-params.ts, which the server reads these requests with.

export interface CreateParams {
  id: string;
  bundlePath: string;
  terminal: boolean;
  stdin: boolean;
  exitPaths?: readonly string[];
  oomExitPaths?: readonly string[];
  logDrivers?: ReadonlyArray<{ type: number; path: string; maxSize: bigint }>;
  cleanupCmd?: readonly string[];
  globalArgs?: readonly string[];
  commandArgs?: readonly string[];
  envVars?: Readonly<Record<string, string>>;
  cgroupManager: number;
  additionalFds?: readonly bigint[];
  leakFds?: readonly bigint[];
}

export interface ExecParams {
  id: string;
  command: readonly string[];
  timeoutSec: bigint;
  terminal: boolean;
  envVars?: Readonly<Record<string, string>>;
  cgroupManager: number;
}

/** The `request` pointer of a `(request: X)` params struct: no data, one pointer. */
function paramsRequest(b: SegmentBuilder, dataWords: number, ptrCount: number): number {
  const params = b.root(0, 1);
  return b.struct(params, dataWords, ptrCount);
}

function ptr(request: number, dataWords: number, index: number): number {
  return request + dataWords * 8 + index * 8;
}

function texts(b: SegmentBuilder, at: number, values: readonly string[] | undefined): void {
  if (values && values.length > 0) b.textList(at, values);
}

function entries(b: SegmentBuilder, at: number, map: Readonly<Record<string, string>> | undefined): void {
  const pairs = Object.entries(map ?? {});
  if (pairs.length === 0) return;
  const first = b.structList(at, pairs.length, 0, ENTRY_PTRS);
  pairs.forEach(([key, value], i) => {
    const entry = first + i * ENTRY_PTRS * 8;
    b.text(entry, key);
    b.text(entry + 8, value);
  });
}

/** A single-segment createContainer params message. */
export function createContainerParams(p: CreateParams): Uint8Array {
  const b = new SegmentBuilder(1024);
  const req = paramsRequest(b, CREATE_DATA_WORDS, CREATE_PTRS);
  const at = (index: number) => ptr(req, CREATE_DATA_WORDS, index);
  b.setBit(req, CREATE_TERMINAL_BIT, p.terminal);
  b.setBit(req, CREATE_STDIN_BIT, p.stdin);
  b.setU16(req + CREATE_CGROUP_MANAGER_BYTE, p.cgroupManager);
  b.text(at(CreatePtr.id), p.id);
  b.text(at(CreatePtr.bundlePath), p.bundlePath);
  texts(b, at(CreatePtr.exitPaths), p.exitPaths);
  texts(b, at(CreatePtr.oomExitPaths), p.oomExitPaths);
  const drivers = p.logDrivers ?? [];
  if (drivers.length > 0) {
    const first = b.structList(at(CreatePtr.logDrivers), drivers.length, LOG_DRIVER_DATA_WORDS, LOG_DRIVER_PTRS);
    drivers.forEach((d, i) => {
      const driver = first + i * (LOG_DRIVER_DATA_WORDS + LOG_DRIVER_PTRS) * 8;
      b.setU16(driver, d.type);
      b.setU64(driver + 8, d.maxSize);
      b.text(driver + LOG_DRIVER_DATA_WORDS * 8, d.path);
    });
  }
  texts(b, at(CreatePtr.cleanupCmd), p.cleanupCmd);
  texts(b, at(CreatePtr.globalArgs), p.globalArgs);
  texts(b, at(CreatePtr.commandArgs), p.commandArgs);
  entries(b, at(CreatePtr.envVars), p.envVars);
  if (p.additionalFds && p.additionalFds.length > 0) b.u64List(at(CreatePtr.additionalFds), p.additionalFds);
  if (p.leakFds && p.leakFds.length > 0) b.u64List(at(CreatePtr.leakFds), p.leakFds);
  return b.finish();
}

/** A single-segment execSyncContainer params message. */
export function execSyncParams(p: ExecParams): Uint8Array {
  const b = new SegmentBuilder(512);
  const req = paramsRequest(b, EXEC_DATA_WORDS, EXEC_PTRS);
  const at = (index: number) => ptr(req, EXEC_DATA_WORDS, index);
  b.setU64(req + EXEC_TIMEOUT_BYTE, p.timeoutSec);
  b.setBit(req, EXEC_TERMINAL_BIT, p.terminal);
  b.setU16(req + EXEC_CGROUP_MANAGER_BYTE, p.cgroupManager);
  b.text(at(ExecPtr.id), p.id);
  texts(b, at(ExecPtr.command), p.command);
  entries(b, at(ExecPtr.envVars), p.envVars);
  return b.finish();
}
