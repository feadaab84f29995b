// The server's own log (not the containers' logs): `--log-driver stdout|systemd|none` and
// `--log-level`. Content is not an interface, but operators grep for upstream's messages, so the
// important ones keep upstream's wording.

import type { LogDriver, LogLevel } from "./cli.ts";
import { JournalSender } from "./journal.ts";

const SEVERITY: Record<Exclude<LogLevel, "off">, number> = { trace: 0, debug: 1, info: 2, warn: 3, error: 4 };
/** syslog priorities for journald; upstream sends everything as notice (5), we keep the real level. */
const PRIORITY: Record<Exclude<LogLevel, "off">, number> = { trace: 7, debug: 7, info: 6, warn: 4, error: 3 };

export interface Logger {
  trace(msg: string): void;
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
  readonly level: LogLevel;
}

type Sink = (level: Exclude<LogLevel, "off">, line: string) => void;

function stdoutSink(): Sink {
  return (level, line) => {
    process.stdout.write(`${new Date().toISOString()} ${level.toUpperCase().padStart(5)} ${line}\n`);
  };
}

function stderrSink(): Sink {
  return (level, line) => {
    process.stderr.write(`${level.toUpperCase().padStart(5)} ${line}\n`);
  };
}

/** journald native protocol; falls back to stderr silently when no journald listens. */
function systemdSink(): Sink {
  let journal: JournalSender | undefined = new JournalSender();
  const fallback = stderrSink();
  return (level, line) => {
    if (journal) {
      try {
        if (journal.send([["PRIORITY", String(PRIORITY[level])], ["MESSAGE", `${level.toUpperCase()} ${line}\n`]])) return;
      } catch {
        // journald is there but its queue stayed full: lose this line rather than block or
        // switch destinations for good.
        return;
      }
      // No journald listens: stderr from now on (upstream's behaviour when the socket is absent).
      journal.close();
      journal = undefined;
    }
    fallback(level, line);
  };
}

export function createLogger(driver: LogDriver, level: LogLevel): Logger {
  const threshold = level === "off" ? Infinity : SEVERITY[level];
  const sink: Sink | undefined = driver === "stdout" ? stdoutSink() : driver === "systemd" ? systemdSink() : undefined;
  const at = (l: Exclude<LogLevel, "off">) =>
    sink && SEVERITY[l] >= threshold ? (msg: string) => sink(l, msg) : () => {};
  const logger: Logger = {
    level,
    trace: at("trace"),
    debug: at("debug"),
    info: at("info"),
    warn: at("warn"),
    error: at("error"),
  };
  if (driver === "stdout") logger.info("Using stdout logger");
  else if (driver === "systemd") logger.info("Using systemd/journald logger");
  logger.info(`Set log level to: ${level}`);
  return logger;
}

/** For tests and tools that need a logger but no output. */
export const silentLogger: Logger = createLogger("none", "off");
