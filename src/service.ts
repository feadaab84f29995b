// The `Conmon` capability: method ordinal → handler. Each concern (version, containers, exec, ...)
// supplies its handlers; ordinals and param/result classes come from the generated schema.

import { Conmon$Client } from "../schema/conmon.ts";
import type { RpcMethod, RpcService } from "./rpc/connection.ts";

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

/** Builds the service; a method without a handler answers `unimplemented`. */
export function conmonService(handlers: Partial<Record<MethodName, Handler>>): RpcService {
  const methods: Array<RpcMethod | undefined> = Conmon$Client.methods.map((method) => {
    const handler = handlers[method.methodName as MethodName];
    if (!handler) return undefined;
    return {
      name: method.methodName ?? `method ${method.methodId}`,
      ParamsClass: method.ParamsClass as any,
      ResultsClass: method.ResultsClass as any,
      handler,
    };
  });
  return { interfaceId: Conmon$Client.interfaceId, interfaceName: "Conmon", methods };
}
