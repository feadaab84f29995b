// The RPC listener: AF_UNIX SOCK_STREAM at <runtime-dir>/conmon.sock, one RpcConnection per peer.
// Bound through /proc/self/fd/<dirfd>/<name> so runtime dirs longer than sun_path (108 bytes)
// work, the same trick upstream and its Go client use.

import { closeSync, constants, mkdirSync, openSync } from "node:fs";
import { basename, dirname } from "node:path";
import type { Socket, UnixSocketListener } from "bun";
import { RpcConnection, type RpcLog, type RpcService } from "./connection.ts";

interface PeerState {
  connection: RpcConnection;
  /** Bytes the kernel did not take yet; flushed on drain. */
  backlog: Uint8Array[];
}

export interface RpcListener {
  readonly path: string;
  readonly connectionCount: number;
  stop(): void;
}

/** Runs `fn` with a path that names `path` through an open fd of its directory. */
export function withShortPath<T>(path: string, fn: (shortPath: string) => T): T {
  mkdirSync(dirname(path), { recursive: true });
  const dirFd = openSync(dirname(path), constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    return fn(`/proc/self/fd/${dirFd}/${basename(path)}`);
  } finally {
    closeSync(dirFd);
  }
}

function flush(socket: Socket<PeerState>): void {
  const { backlog } = socket.data;
  while (backlog.length > 0) {
    const head = backlog[0]!;
    const written = socket.write(head);
    if (written === head.byteLength) {
      backlog.shift();
    } else {
      if (written > 0) backlog[0] = head.subarray(written);
      return;
    }
  }
}

export function listenRpc(path: string, service: RpcService, log: RpcLog): RpcListener {
  const peers = new Set<Socket<PeerState>>();
  const listener: UnixSocketListener<PeerState> = withShortPath(path, (shortPath) =>
    Bun.listen<PeerState>({
      unix: shortPath,
      socket: {
        open(socket) {
          peers.add(socket);
          socket.data = {
            backlog: [],
            connection: new RpcConnection(
              service,
              {
                write(bytes) {
                  if (socket.data.backlog.length > 0) {
                    socket.data.backlog.push(bytes);
                    return;
                  }
                  const written = socket.write(bytes);
                  if (written < bytes.byteLength) socket.data.backlog.push(bytes.subarray(Math.max(written, 0)));
                },
                close() {
                  socket.end();
                },
              },
              log,
            ),
          };
        },
        data(socket, chunk) {
          socket.data.connection.receive(chunk);
        },
        drain(socket) {
          flush(socket);
        },
        close(socket) {
          peers.delete(socket);
          socket.data.connection.close();
          socket.data.backlog.length = 0;
        },
        error(socket, err) {
          log.debug(`RPC connection error: ${err.message}`);
        },
      },
    }),
  );
  return {
    path,
    get connectionCount() {
      return peers.size;
    },
    stop() {
      listener.stop(true);
      for (const socket of peers) socket.end();
      peers.clear();
    },
  };
}
