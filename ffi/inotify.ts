// inotify, for watching a directory for files to appear (the benchmarks time exit files with it).
import { cString, libc } from "./libc.ts";
import { sysError } from "./errors.ts";

export const IN = { NONBLOCK: 0o4000, CLOEXEC: 0o2000000, CLOSE_WRITE: 0x8, MOVED_TO: 0x80, CREATE: 0x100 } as const;

/** A non-blocking, close-on-exec inotify instance. */
export function inotifyInit(): number {
  const fd = libc.inotify_init1(IN.NONBLOCK | IN.CLOEXEC);
  if (fd < 0) throw sysError("inotify_init1");
  return fd;
}

export function inotifyAddWatch(fd: number, path: string, mask: number): number {
  const wd = libc.inotify_add_watch(fd, cString(path) as any, mask);
  if (wd < 0) throw sysError("inotify_add_watch", path);
  return wd;
}
