// The TypeScript client of conmonrs, mirroring upstream's Go client (pkg/client).
export {
  ConmonClient,
  CgroupManager,
  type ConmonServerConfig,
  type VersionResponse,
  type CreateContainerConfig,
  type ContainerLogDriver,
  type LogLevel,
  type LogDriver,
} from "./conmon-client.ts";
export { RemoteError, RpcClient } from "./rpc-client.ts";
export { type ExecSyncConfig, type ExecContainerResult } from "./exec.ts";
export { type AttachConfig, type TerminalSize } from "./attach.ts";
export { Namespace, type IdMapping, type CreateNamespacesConfig, type CreateNamespacesResponse } from "./namespaces.ts";
export { type RemoteFDs } from "./remote-fds.ts";
export { type ServeExecContainerConfig, type ServeAttachContainerConfig, type ServePortForwardContainerConfig } from "./streaming.ts";
