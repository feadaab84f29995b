// serveExec/serveAttach/servePortForward on the client side. Being written.
import type { CgroupManager, ConmonClient } from "./conmon-client.ts";

export interface ServeExecContainerConfig {
  id: string;
  command: string[];
  tty?: boolean;
  stdin?: boolean;
  stdout?: boolean;
  stderr?: boolean;
  cgroupManager?: CgroupManager;
}

export interface ServeAttachContainerConfig {
  id: string;
  stdin?: boolean;
  stdout?: boolean;
  stderr?: boolean;
}

export interface ServePortForwardContainerConfig {
  netNsPath: string;
}

export async function serveExecContainer(_client: ConmonClient, _cfg: ServeExecContainerConfig): Promise<{ url: string }> {
  throw new Error("serveExecContainer: client side not implemented yet");
}

export async function serveAttachContainer(_client: ConmonClient, _cfg: ServeAttachContainerConfig): Promise<{ url: string }> {
  throw new Error("serveAttachContainer: client side not implemented yet");
}

export async function servePortForwardContainer(_client: ConmonClient, _cfg: ServePortForwardContainerConfig): Promise<{ url: string }> {
  throw new Error("servePortForwardContainer: client side not implemented yet");
}
