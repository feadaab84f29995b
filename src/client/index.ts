export { ConmonClient, CgroupManager, type ConmonServerConfig, type VersionResponse, type CreateContainerConfig, type ContainerLogDriver, type LogLevel, type LogDriver } from "./conmon-client.ts";
export { RemoteError, RpcClient } from "./rpc-client.ts";
