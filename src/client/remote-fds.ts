// startFdSocket on the client side. Being written.
import type { ConmonClient } from "./conmon-client.ts";

export interface RemoteFDs {
  send(...fds: number[]): Promise<bigint[]>;
  close(): void;
}

export async function remoteFds(_client: ConmonClient): Promise<RemoteFDs> {
  throw new Error("remoteFds: client side not implemented yet");
}
