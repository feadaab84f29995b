// createNamespaces on the client side (mirrors the Go client's CreateNamespaces).
//
// The Go client numbers its Namespace constants in its own order (IPC, PID, Net, User, UTS),
// which differs from the wire enum (ipc, net, pid, user, uts): both directions map explicitly.
import { Conmon_Namespace } from "../../schema/conmon.ts";
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
  /** Default: /var/run (as the Go client). */
  basePath?: string;
  podId: string;
}

export interface CreateNamespacesResponse {
  namespaces: Array<{ type: Namespace; path: string }>;
}

/** The Go client's ErrMissingIDMappings text. */
export const ERR_MISSING_ID_MAPPINGS = "unsharing user namespace selected but no IDMappings provided";

const DEFAULT_BASE_PATH = "/var/run";

const TO_WIRE: Record<Namespace, number> = {
  [Namespace.ipc]: Conmon_Namespace.IPC,
  [Namespace.pid]: Conmon_Namespace.PID,
  [Namespace.net]: Conmon_Namespace.NET,
  [Namespace.user]: Conmon_Namespace.USER,
  [Namespace.uts]: Conmon_Namespace.UTS,
};

const FROM_WIRE = new Map<number, Namespace>(
  (Object.entries(TO_WIRE) as unknown as Array<[string, number]>).map(([ours, wire]) => [wire, Number(ours) as Namespace]),
);

/** `"%d %d %d"`: container id, host id, size. */
export function formatIdMapping(m: IdMapping): string {
  return `${m.containerId} ${m.hostId} ${m.size}`;
}

function setTexts(list: { set(i: number, v: string): void }, values: string[]): void {
  values.forEach((v, i) => list.set(i, v));
}

/** Fails before anything is sent, as the Go client does, when a user namespace lacks mappings. */
function checkMappings(cfg: CreateNamespacesConfig): void {
  if (!cfg.namespaces.includes(Namespace.user)) return;
  if (!cfg.uidMappings?.length || !cfg.gidMappings?.length) throw new Error(ERR_MISSING_ID_MAPPINGS);
}

function fillRequest(req: any, cfg: CreateNamespacesConfig): void {
  const list = req._initNamespaces(cfg.namespaces.length);
  cfg.namespaces.forEach((ns, i) => {
    const wire = TO_WIRE[ns];
    if (wire === undefined) throw new Error(`unknown namespace ${ns}`);
    list.set(i, wire);
  });
  if (cfg.namespaces.includes(Namespace.user)) {
    setTexts(req._initUidMappings(cfg.uidMappings!.length), cfg.uidMappings!.map(formatIdMapping));
    setTexts(req._initGidMappings(cfg.gidMappings!.length), cfg.gidMappings!.map(formatIdMapping));
  }
  req.basePath = cfg.basePath || DEFAULT_BASE_PATH;
  req.podId = cfg.podId;
}

function readResponse(res: any): CreateNamespacesResponse {
  const list = res.namespaces;
  const namespaces: CreateNamespacesResponse["namespaces"] = [];
  for (let i = 0; i < list.length; i++) {
    const entry = list.get(i);
    // The Go client leaves an unknown type at its zero value (IPC).
    namespaces.push({ type: FROM_WIRE.get(entry.type) ?? Namespace.ipc, path: entry.path });
  }
  return { namespaces };
}

export async function createNamespaces(client: ConmonClient, cfg: CreateNamespacesConfig): Promise<CreateNamespacesResponse> {
  checkMappings(cfg);
  return client.call(6, (req) => fillRequest(req, cfg), readResponse);
}
