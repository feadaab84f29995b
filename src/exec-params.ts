// execSyncContainer's params on the wire: the layout, shared with the client's writer
// (src/client/params.ts), and the server's reader. The server reads them by hand straight from
// the received frame: through capnp-es, the copy of the frame and a Pointer object per field cost
// 0.35 ms per exec, run cold, on the way to the runtime's spawn. This module is part of the
// start-up chunk, since params are read before a lazily loaded handler runs.
//
// Layout (schema/conmon.capnp, as `capnp compile -ocapnp` prints it): the params struct holds
// `request` (pointer 0); ExecSyncContainerRequest has 16 bytes of data (timeoutSec: UInt64 at
// byte 0, terminal: bit 64, cgroupManager: UInt16 at byte 10) and 4 pointers (id: Text,
// command: List(Text), metadata and envVars: List(TextTextMapEntry)).

import { ListRef, StructRef, type FrameReader } from "./rpc/wire.ts";

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

// Scratch: reading is synchronous and never re-entered.
const paramsRef = new StructRef();
const requestRef = new StructRef();
const elementRef = new StructRef();
const listRef = new ListRef();

/**
 * Reads the params at `seg`/`at` of the frame in `reader` (see RpcMethod.readParams). Null
 * pointers and fields past a shorter struct read as defaults, as capnp-es reads them; malformed
 * pointers throw WireError, which answers the call with an exception.
 */
export function readExecSyncParams(reader: FrameReader, seg: number, at: number): ExecSyncParams {
  const envVars: Record<string, string> = Object.create(null);
  const request: ExecSyncRequest = { id: "", command: [], timeoutSec: 0, terminal: false, envVars, cgroupManager: 0 };
  if (seg < 0 || !reader.readStruct(seg, at, paramsRef)) return { request };
  const requestAt = reader.pointer(paramsRef, 0);
  if (requestAt < 0 || !reader.readStruct(paramsRef.seg, requestAt, requestRef)) return { request };
  const r = requestRef;
  request.timeoutSec = reader.u32(r, EXEC_TIMEOUT_BYTE) + reader.u32(r, EXEC_TIMEOUT_BYTE + 4) * 2 ** 32;
  request.terminal = reader.bit(r, EXEC_TERMINAL_BIT);
  request.cgroupManager = reader.u16(r, EXEC_CGROUP_MANAGER_BYTE);
  request.id = reader.text(r.seg, reader.pointer(r, ExecPtr.id));
  if (reader.readList(r.seg, reader.pointer(r, ExecPtr.command), listRef)) {
    for (let i = 0; i < listRef.count; i++) {
      const element = reader.listStruct(listRef, i, elementRef);
      request.command.push(reader.text(element.seg, reader.pointer(element, 0)));
    }
  }
  if (reader.readList(r.seg, reader.pointer(r, ExecPtr.envVars), listRef)) {
    for (let i = 0; i < listRef.count; i++) {
      const entry = reader.listStruct(listRef, i, elementRef);
      const key = reader.text(entry.seg, reader.pointer(entry, 0));
      envVars[key] = reader.text(entry.seg, reader.pointer(entry, 1));
    }
  }
  return { request };
}
