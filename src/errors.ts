// Errors carry context the way upstream's anyhow chains do: `open log file path '/x': <cause>`.
// Over RPC the chain is joined by ": " (upstream formats with `{:#}`), so clients that match on
// upstream's texts keep working.

/** Wraps `cause` in a new error whose message is the context; the chain keeps the cause. */
export function withContext(context: string, cause: unknown): Error {
  return new Error(context, { cause });
}

/** `context: cause: cause-of-cause`, skipping repeats of an identical message. */
export function errorChain(err: unknown): string {
  const parts: string[] = [];
  let current: unknown = err;
  for (let depth = 0; current !== undefined && current !== null && depth < 16; depth++) {
    const message = current instanceof Error ? current.message : String(current);
    if (message && parts[parts.length - 1] !== message) parts.push(message);
    current = current instanceof Error ? current.cause : undefined;
  }
  return parts.join(": ");
}
