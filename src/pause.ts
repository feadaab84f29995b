// `conmonrs pause`: pins pod namespaces (createNamespaces). Implemented with issue 5.

import type { PauseConfig } from "./cli.ts";

export async function runPause(_config: PauseConfig): Promise<void> {
  throw new Error("the pause subcommand is not implemented yet");
}
