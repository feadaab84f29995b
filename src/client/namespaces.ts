// createNamespaces on the client side. Being written.
import type { ConmonClient } from "./conmon-client.ts";

export const Namespace = { ipc: 0, pid: 1, net: 2, user: 3, uts: 4 } as const;
export type Namespace = (typeof Namespace)[keyof typeof Namespace];

export interface IdMapping {
  containerId: number;
  hostId: number;
  size: number;
}

export interface CreateNamespacesConfig {
  namespaces: Namespace[];
  uidMappings?: IdMapping[];
  gidMappings?: IdMapping[];
  basePath?: string;
  podId: string;
}

export interface CreateNamespacesResponse {
  namespaces: Array<{ type: Namespace; path: string }>;
}

export async function createNamespaces(_client: ConmonClient, _cfg: CreateNamespacesConfig): Promise<CreateNamespacesResponse> {
  throw new Error("createNamespaces: client side not implemented yet");
}
