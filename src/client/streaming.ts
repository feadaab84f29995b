// serveExec/serveAttach/servePortForward on the client side (mirrors the Go client's
// ServeExecContainer, ServeAttachContainer and ServePortForwardContainer): each RPC answers the
// URL of a single-use WebSocket session on the server's streaming server.
import { CgroupManager, type ConmonClient } from "./conmon-client.ts";

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
  /** Path of the pod's network namespace (e.g. /var/run/netns/<name>); "" = the server's own. */
  netNsPath: string;
}

export interface ServeContainerResult {
  /** `http://127.0.0.1:<port>/<exec|attach|port-forward>/<token>`; connect a WebSocket to it once. */
  url: string;
}

const METHOD = { serveExecContainer: 8, serveAttachContainer: 9, servePortForwardContainer: 10 } as const;

const readUrl = (res: any): ServeContainerResult => ({ url: res.url as string });

export function serveExecContainer(client: ConmonClient, cfg: ServeExecContainerConfig): Promise<ServeContainerResult> {
  return client.call(
    METHOD.serveExecContainer,
    (req) => {
      req.id = cfg.id;
      // As the Go client: an empty list stays unset.
      if (cfg.command.length > 0) {
        const list = req._initCommand(cfg.command.length);
        cfg.command.forEach((arg, i) => list.set(i, arg));
      }
      req.tty = cfg.tty ?? false;
      req.stdin = cfg.stdin ?? false;
      req.stdout = cfg.stdout ?? false;
      req.stderr = cfg.stderr ?? false;
      req.cgroupManager = cfg.cgroupManager ?? client.config.cgroupManager ?? CgroupManager.systemd;
    },
    readUrl,
  );
}

export function serveAttachContainer(client: ConmonClient, cfg: ServeAttachContainerConfig): Promise<ServeContainerResult> {
  return client.call(
    METHOD.serveAttachContainer,
    (req) => {
      req.id = cfg.id;
      req.stdin = cfg.stdin ?? false;
      req.stdout = cfg.stdout ?? false;
      req.stderr = cfg.stderr ?? false;
    },
    readUrl,
  );
}

export function servePortForwardContainer(client: ConmonClient, cfg: ServePortForwardContainerConfig): Promise<ServeContainerResult> {
  return client.call(
    METHOD.servePortForwardContainer,
    (req) => {
      req.netNsPath = cfg.netNsPath;
    },
    readUrl,
  );
}
