// The params of the two hot calls, createContainer and execSyncContainer, on the wire: their
// layouts, shared with the client's writers (src/client/params.ts), and the server's readers.
// The server reads them by hand straight from the received frame: through capnp-es, the copy of
// the frame and a Pointer object per field cost 0.35–0.6 ms per call, run cold, on the way to the
// runtime's spawn. This module is part of the start-up chunk, since params are read before a
// lazily loaded handler runs.
//
// Layouts are schema/conmon.capnp's, as `capnp compile -ocapnp` prints them (pinned by
// test/unit/schema.golden.txt). Each params struct holds `request` (pointer 0).

import { ListRef, StructRef, type FrameReader } from "./rpc/wire.ts";

// CreateContainerRequest: 8 bytes, 12 pointers.
export const CREATE_DATA_WORDS = 1;
export const CREATE_PTRS = 12;
export const CreatePtr = {
  id: 0,
  bundlePath: 1,
  exitPaths: 2,
  oomExitPaths: 3,
  logDrivers: 4,
  cleanupCmd: 5,
  globalArgs: 6,
  commandArgs: 7,
  metadata: 8,
  envVars: 9,
  additionalFds: 10,
  leakFds: 11,
} as const;
export const CREATE_TERMINAL_BIT = 0;
export const CREATE_STDIN_BIT = 1;
export const CREATE_CGROUP_MANAGER_BYTE = 2;

// LogDriver: 16 bytes, 1 pointer (type: UInt16 at byte 0, maxSize: UInt64 at byte 8, path: ptr 0).
export const LOG_DRIVER_DATA_WORDS = 2;
export const LOG_DRIVER_PTRS = 1;
const LOG_DRIVER_MAX_SIZE_BYTE = 8;

// ExecSyncContainerRequest: 16 bytes, 4 pointers (timeoutSec: UInt64 at byte 0, terminal: bit 64,
// cgroupManager: UInt16 at byte 10).
export const EXEC_DATA_WORDS = 2;
export const EXEC_PTRS = 4;
export const EXEC_TIMEOUT_BYTE = 0;
export const EXEC_TERMINAL_BIT = 64;
export const EXEC_CGROUP_MANAGER_BYTE = 10;
export const ExecPtr = { id: 0, command: 1, metadata: 2, envVars: 3 } as const;

/** TextTextMapEntry: no data, key and value pointers. */
export const ENTRY_PTRS = 2;

/** What the exec-sync handler reads of its request. */
export interface ExecSyncRequest {
  id: string;
  command: string[];
  timeoutSec: number;
  terminal: boolean;
  /** Later entries win over earlier ones with the same key. */
  envVars: Record<string, string>;
  /** Conmon.CgroupManager: 0 systemd (the default), 1 cgroupfs. */
  cgroupManager: number;
}

export interface ExecSyncParams {
  readonly request: ExecSyncRequest;
}

/** What the create handler reads of its request. */
export interface CreateContainerRequest {
  id: string;
  bundlePath: string;
  terminal: boolean;
  stdin: boolean;
  exitPaths: string[];
  oomExitPaths: string[];
  /** `type` is Conmon.LogDriver.Type's ordinal; the handler refuses ones it does not know. */
  logDrivers: { type: number; path: string; maxSize: number }[];
  cleanupCmd: string[];
  globalArgs: string[];
  commandArgs: string[];
  envVars: Record<string, string>;
  cgroupManager: number;
  additionalFds: bigint[];
  leakFds: bigint[];
}

export interface CreateContainerParams {
  readonly request: CreateContainerRequest;
}

// Scratch: reading is synchronous and never re-entered.
const paramsRef = new StructRef();
const requestRef = new StructRef();
const elementRef = new StructRef();
const listRef = new ListRef();

/**
 * Reads the execSyncContainer params at `seg`/`at` of the frame in `reader` (see
 * RpcMethod.readParams). Null pointers and fields past a shorter struct read as defaults, as
 * capnp-es reads them; malformed pointers throw WireError, which answers the call with an
 * exception.
 */
export function readExecSyncParams(reader: FrameReader, seg: number, at: number): ExecSyncParams {
  const request: ExecSyncRequest = { id: "", command: [], timeoutSec: 0, terminal: false, envVars: Object.create(null), cgroupManager: 0 };
  if (!reader.readWrapped(seg, at, paramsRef, requestRef)) return { request };
  const r = requestRef;
  request.timeoutSec = u64(reader, r, EXEC_TIMEOUT_BYTE);
  request.terminal = reader.bit(r, EXEC_TERMINAL_BIT);
  request.cgroupManager = reader.u16(r, EXEC_CGROUP_MANAGER_BYTE);
  request.id = reader.text(r.seg, reader.pointer(r, ExecPtr.id));
  request.command = texts(reader, r, ExecPtr.command);
  readEntries(reader, r, ExecPtr.envVars, request.envVars);
  return { request };
}

/** Reads the createContainer params; as readExecSyncParams. */
export function readCreateContainerParams(reader: FrameReader, seg: number, at: number): CreateContainerParams {
  const request: CreateContainerRequest = {
    id: "",
    bundlePath: "",
    terminal: false,
    stdin: false,
    exitPaths: [],
    oomExitPaths: [],
    logDrivers: [],
    cleanupCmd: [],
    globalArgs: [],
    commandArgs: [],
    envVars: Object.create(null),
    cgroupManager: 0,
    additionalFds: [],
    leakFds: [],
  };
  if (!reader.readWrapped(seg, at, paramsRef, requestRef)) return { request };
  const r = requestRef;
  request.terminal = reader.bit(r, CREATE_TERMINAL_BIT);
  request.stdin = reader.bit(r, CREATE_STDIN_BIT);
  request.cgroupManager = reader.u16(r, CREATE_CGROUP_MANAGER_BYTE);
  request.id = reader.text(r.seg, reader.pointer(r, CreatePtr.id));
  request.bundlePath = reader.text(r.seg, reader.pointer(r, CreatePtr.bundlePath));
  request.exitPaths = texts(reader, r, CreatePtr.exitPaths);
  request.oomExitPaths = texts(reader, r, CreatePtr.oomExitPaths);
  if (reader.readList(r.seg, reader.pointer(r, CreatePtr.logDrivers), listRef)) {
    for (let i = 0; i < listRef.count; i++) {
      const driver = reader.listStruct(listRef, i, elementRef);
      request.logDrivers.push({
        type: reader.u16(driver, 0),
        path: reader.text(driver.seg, reader.pointer(driver, 0)),
        maxSize: u64(reader, driver, LOG_DRIVER_MAX_SIZE_BYTE),
      });
    }
  }
  request.cleanupCmd = texts(reader, r, CreatePtr.cleanupCmd);
  request.globalArgs = texts(reader, r, CreatePtr.globalArgs);
  request.commandArgs = texts(reader, r, CreatePtr.commandArgs);
  readEntries(reader, r, CreatePtr.envVars, request.envVars);
  request.additionalFds = reader.u64List(r.seg, reader.pointer(r, CreatePtr.additionalFds));
  request.leakFds = reader.u64List(r.seg, reader.pointer(r, CreatePtr.leakFds));
  return { request };
}

/** A UInt64 field as a number (exact up to 2^53: timeouts and log sizes). */
function u64(reader: FrameReader, s: StructRef, byteOffset: number): number {
  return reader.u32(s, byteOffset) + reader.u32(s, byteOffset + 4) * 2 ** 32;
}

/** The List(Text) in pointer `index` of `s`. */
function texts(reader: FrameReader, s: StructRef, index: number): string[] {
  const out: string[] = [];
  if (!reader.readList(s.seg, reader.pointer(s, index), listRef)) return out;
  for (let i = 0; i < listRef.count; i++) {
    const element = reader.listStruct(listRef, i, elementRef);
    out.push(reader.text(element.seg, reader.pointer(element, 0)));
  }
  return out;
}

/** The List(TextTextMapEntry) in pointer `index` of `s`, into `map` (later keys win). */
function readEntries(reader: FrameReader, s: StructRef, index: number, map: Record<string, string>): void {
  if (!reader.readList(s.seg, reader.pointer(s, index), listRef)) return;
  for (let i = 0; i < listRef.count; i++) {
    const entry = reader.listStruct(listRef, i, elementRef);
    map[reader.text(entry.seg, reader.pointer(entry, 0))] = reader.text(entry.seg, reader.pointer(entry, 1));
  }
}
