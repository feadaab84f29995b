// attachContainer on the client side (mirrors the Go client's AttachContainer). Being written.
import type { ConmonClient } from "./conmon-client.ts";

export interface TerminalSize {
  width: number;
  height: number;
}

export interface AttachConfig {
  id: string;
  socketPath: string;
  execSession?: string;
  tty?: boolean;
  stopAfterStdinEof?: boolean;
  containerStdin?: boolean;
  passthrough?: boolean;
  resize?: AsyncIterable<TerminalSize>;
  streams?: {
    stdin?: AsyncIterable<Uint8Array>;
    stdout?: (chunk: Uint8Array) => void;
    stderr?: (chunk: Uint8Array) => void;
  };
  preAttach?: () => void | Promise<void>;
  postAttach?: () => void | Promise<void>;
  detachKeys?: Uint8Array;
}

export async function attachContainer(_client: ConmonClient, _cfg: AttachConfig): Promise<void> {
  throw new Error("attachContainer: client side not implemented yet");
}
