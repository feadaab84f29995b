// Entry point of the `conmonrs` binary.

import { parseCommandLine, UsageError } from "./cli.ts";
import { errorChain } from "./errors.ts";
import { launch } from "./launcher.ts";
import { runServer } from "./server.ts";
import { versionJson, versionText } from "./version.ts";

/** upstream's anyhow report: `Error: <context>` then the causes. */
function fatal(context: string, err: unknown): never {
  const chain = errorChain(err);
  process.stderr.write(`Error: ${context}\n\nCaused by:\n    ${chain.split(": ").join("\n    ")}\n`);
  process.exit(1);
}

async function main(): Promise<void> {
  const args = Bun.argv.slice(2);
  let invocation;
  try {
    invocation = parseCommandLine(args);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  switch (invocation.kind) {
    case "help":
      {
        const text = await invocation.text;
        // citty colours unconditionally; keep pipes and files plain.
        const plain = process.stdout.isTTY ? text : text.replace(/\x1b\[[0-9;]*m/g, "");
        process.stdout.write(`${plain}\nMore info at: https://github.com/containers/conmon-rs\n`);
      }
      process.exit(0);
    case "version":
      process.stdout.write(`${invocation.json ? versionJson(invocation.full) : versionText(invocation.full)}\n`);
      process.exit(0);
    case "pause": {
      const { runPause } = await import("./pause.ts");
      try {
        await runPause(invocation.config);
      } catch (err) {
        fatal("run pause", err);
      }
      process.exit(0);
    }
    case "client": {
      const { runOperatorCli } = await import("./operator-cli.ts");
      process.exit(await runOperatorCli(invocation.args));
    }
    case "server":
      if (invocation.config.skipFork) {
        try {
          runServer(invocation.config);
        } catch (err) {
          fatal("create server", err);
        }
        return;
      }
      try {
        process.exit(await launch(invocation.config, args));
      } catch (err) {
        fatal("create server", err);
      }
  }
}

main().catch((err) => fatal("conmonrs", err));
