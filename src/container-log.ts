// A container's log: the drivers configured at createContainer (any mix, duplicates allowed, none
// allowed), fed with every chunk the container's stdout/stderr read loops produce.
//
// Unlike upstream, where a driver error aborts the stream's read loop, a failing driver is
// reported through `onError` and the others keep going: one full disk must not silence journald.

import { type JournalSender, defaultJournalSender } from "./journal.ts";
import { CachedCriClock, CriLogDriver, type TimestampClock } from "./log-cri.ts";
import { JournaldLogDriver } from "./log-journald.ts";
import { JsonLogDriver, unixSeconds } from "./log-json.ts";

export type LogStream = "stdout" | "stderr";
export type LogDriverType = "cri" | "json" | "journald";

export interface LogDriverConfig {
  type: LogDriverType;
  /** Ignored by journald. */
  path: string;
  /** Bytes; 0 (or less) = unlimited. Ignored by journald. */
  maxSize: number | bigint;
}

/** What every driver does. `write` may return a promise while it has output waiting (journald). */
export interface LogDriver {
  write(stream: LogStream, chunk: Uint8Array): Promise<void> | undefined | void;
  reopen(): void;
  close(): void;
  flush?(): Promise<void>;
}

export interface ContainerLogOptions {
  /** Driver failures that did not stop the others; the server logs them. */
  onError?: (error: Error, driver: LogDriverConfig) => void;
  /** journald connection (tests use a temp socket); defaults to the process-wide sender. */
  journal?: JournalSender;
  /** CRI timestamps; tests pin them. */
  criClock?: TimestampClock;
  /** JSON timestamps in unix seconds. */
  jsonClock?: () => number;
}

function openDriver(containerId: string, config: LogDriverConfig, options: ContainerLogOptions): LogDriver {
  const maxSize = Number(config.maxSize);
  switch (config.type) {
    case "cri":
      return CriLogDriver.open(config.path, maxSize, options.criClock ?? new CachedCriClock());
    case "json":
      return JsonLogDriver.open(config.path, maxSize, options.jsonClock ?? unixSeconds);
    case "journald":
      return new JournaldLogDriver(containerId, options.journal ?? defaultJournalSender(), {
        onError: (error) => options.onError?.(error, config),
      });
    default:
      throw new Error(`unknown log driver type '${(config as { type: unknown }).type}'`);
  }
}

export class ContainerLog {
  private closed = false;

  private constructor(
    readonly containerId: string,
    private readonly configs: readonly LogDriverConfig[],
    private readonly drivers: readonly LogDriver[],
    private readonly onError: (error: Error, driver: LogDriverConfig) => void,
  ) {}

  /**
   * Opens every driver now (files are created and truncated here, as upstream does at
   * createContainer). On the first failure the ones already opened are closed again and the
   * error, e.g. `open log file path '/x/y.log': No such file or directory (os error 2)`, is thrown.
   */
  static async open(
    containerId: string,
    configs: readonly LogDriverConfig[],
    options: ContainerLogOptions = {},
  ): Promise<ContainerLog> {
    const drivers: LogDriver[] = [];
    try {
      for (const config of configs) drivers.push(openDriver(containerId, config, options));
    } catch (err) {
      for (const driver of drivers) closeQuietly(driver);
      throw err;
    }
    return new ContainerLog(containerId, configs, drivers, options.onError ?? (() => {}));
  }

  get driverCount(): number {
    return this.drivers.length;
  }

  /**
   * One chunk to every driver. Synchronous for the file drivers (one write(2) each, nothing
   * buffered in user space). Returns a promise only while a driver (journald) has entries waiting;
   * a read loop may await it to pass backpressure on to the container.
   */
  write(stream: LogStream, chunk: Uint8Array): Promise<void> | undefined {
    if (this.closed) return undefined;
    let waiting: Promise<void>[] | undefined;
    for (let i = 0; i < this.drivers.length; i++) {
      try {
        const pending = this.drivers[i]!.write(stream, chunk);
        if (pending) (waiting ??= []).push(pending);
      } catch (err) {
        this.onError(asError(err), this.configs[i]!);
      }
    }
    if (!waiting) return undefined;
    return waiting.length === 1 ? waiting[0] : Promise.all(waiting).then(() => {});
  }

  /**
   * reopenLogContainer: every file driver syncs and starts a fresh file at its path (the kubelet
   * renamed the old one). All drivers are tried; the first error is thrown afterwards.
   */
  reopen(): void {
    let first: unknown;
    for (const driver of this.drivers) {
      try {
        driver.reopen();
      } catch (err) {
        first ??= err;
      }
    }
    if (first !== undefined) throw first;
  }

  /** Resolves once no driver has output waiting. */
  async flush(): Promise<void> {
    await Promise.all(this.drivers.map((driver) => driver.flush?.()));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (let i = 0; i < this.drivers.length; i++) {
      try {
        this.drivers[i]!.close();
      } catch (err) {
        this.onError(asError(err), this.configs[i]!);
      }
    }
  }
}

function closeQuietly(driver: LogDriver): void {
  try {
    driver.close();
  } catch {
    // already failing; the open error is the one worth reporting
  }
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
