// The `Conmon` capability: method ordinal → handler. Each concern (version, containers, exec, ...)
// supplies its handlers; ordinals and param/result classes come from the generated schema.

import { Conmon$Client } from "../schema/conmon.ts";
import type { RpcMethod, RpcService } from "./rpc/connection.ts";
import type { FrameReader } from "./rpc/wire.ts";

/** Every method but `version`: served by the concerns that server.ts loads on first use. */
export const CONCERN_METHODS = [
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
] as const;
export type ConcernMethod = (typeof CONCERN_METHODS)[number];
export type MethodName = "version" | ConcernMethod;

export type Handler = (params: any, results: any) => Promise<void> | void;
/** Reads a method's params from the received frame by hand (see RpcMethod.readParams). */
export type ParamsReader = (reader: FrameReader, seg: number, at: number) => unknown;

/**
 * Builds the service; a method without a handler answers `unimplemented`. A method with a
 * params reader gets what that returns as its params instead of a capnp-es struct.
 */
export function conmonService(
  handlers: Partial<Record<MethodName, Handler>>,
  paramsReaders: Partial<Record<MethodName, ParamsReader>> = {},
): RpcService {
  const methods: Array<RpcMethod | undefined> = Conmon$Client.methods.map((method) => {
    const handler = handlers[method.methodName as MethodName];
    if (!handler) return undefined;
    return {
      name: method.methodName ?? `method ${method.methodId}`,
      ParamsClass: method.ParamsClass as any,
      ResultsClass: method.ResultsClass as any,
      handler,
      readParams: paramsReaders[method.methodName as MethodName],
    };
  });
  return { interfaceId: Conmon$Client.interfaceId, interfaceName: "Conmon", methods };
}
