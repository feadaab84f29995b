// Everything behind the methods other than `version`: containers, exec-sync, the fd socket, the
// streaming server and pod namespaces, wired to one child reaper. server.ts loads this module with
// the first call that needs it (see LazyConcerns there).

import type { ServerConfig } from "./cli.ts";
import type { Logger } from "./logger.ts";
import type { ConcernMethod, Handler } from "./service.ts";
import { ChildReaper } from "./child-reaper.ts";
import { Containers } from "./containers.ts";
import { ExecSync } from "./exec-sync.ts";
import { FdSocket } from "./fd-socket.ts";
import { Namespaces } from "./namespaces.ts";
import { StreamingServer } from "./streaming-server.ts";

export interface Concerns {
  handlers: Record<ConcernMethod, Handler>;
  /** Run in this order at server shutdown, each on its own (one failing does not skip the next). */
  shutdownHooks: Array<() => Promise<void> | void>;
}

export function buildConcerns(config: ServerConfig, fdSocketPath: string, logger: Logger): Concerns {
  const reaper = new ChildReaper(logger);
  const containers = new Containers(config, reaper, logger);
  // The slots the fd socket fills are what createContainer's additionalFds/leakFds take.
  const fdSocket = new FdSocket(fdSocketPath, logger);
  containers.fdStore = fdSocket;
  const execSync = new ExecSync(config, reaper, logger);
  // The WebSocket server itself starts with the first serve* call.
  const streaming = new StreamingServer(config, containers, reaper, logger);
  // One pause process per pod; its namespace pins outlive the containers that joined them.
  const namespaces = new Namespaces(logger);
  return {
    handlers: {
      createContainer: containers.handleCreate,
      reopenLogContainer: containers.handleReopenLog,
      attachContainer: containers.handleAttach,
      setWindowSizeContainer: containers.handleSetWindowSize,
      startFdSocket: fdSocket.handleStart,
      execSyncContainer: execSync.handle,
      serveExecContainer: streaming.handleServeExec,
      serveAttachContainer: streaming.handleServeAttach,
      servePortForwardContainer: streaming.handleServePortForward,
      createNamespaces: namespaces.handle,
    },
    // Streaming sessions end before their containers are killed; pins go after the containers.
    shutdownHooks: [
      () => fdSocket.close(),
      () => streaming.shutdown(),
      () => Promise.all([containers.killAll(), execSync.killAll()]).then(() => {}),
      () => namespaces.stopAll(),
    ],
  };
}
