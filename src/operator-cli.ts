// `conmonrs client --runtime-dir DIR <method> [flags]`: talk to a running server from a shell.
// Being written (issue 6).

export async function runOperatorCli(_args: string[]): Promise<number> {
  process.stderr.write("error: the client subcommand is not implemented yet\n");
  return 2;
}
