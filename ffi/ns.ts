// Namespaces, bind mounts and credentials (the `pause` helper of createNamespaces).
//
// Bun runs several threads. The kernel refuses unshare(CLONE_NEWUSER) in a multi-threaded process
// (EINVAL), so a user namespace must be created by a single-threaded helper (e.g. unshare(1)), not
// from Bun. unshare of IPC, NET, UTS, PID and mount namespaces works from Bun. CLONE_NEWPID only
// affects children spawned afterwards.
import { checkNoNul, libc } from "./libc.ts";
import { sysError } from "./errors.ts";

export const CLONE_NEWNS = 0x00020000;
export const CLONE_NEWUTS = 0x04000000;
export const CLONE_NEWIPC = 0x08000000;
export const CLONE_NEWUSER = 0x10000000;
export const CLONE_NEWPID = 0x20000000;
export const CLONE_NEWNET = 0x40000000;

export const MNT_FORCE = 1;
export const MNT_DETACH = 2;

const MS_BIND = 0x1000;
const MS_REC = 0x4000;

export function unshare(flags: number): void {
  if (libc.unshare(flags) < 0) throw sysError("unshare", `flags 0x${flags.toString(16)}`);
}

/** Joins the namespace behind `fd` (an open /proc/<pid>/ns/<type> file or a pidfd); nstype 0
 * accepts any type. */
export function setns(fd: number, nstype = 0): void {
  if (libc.setns(fd, nstype) < 0) throw sysError("setns", `fd ${fd}`);
}

/** mount --bind src target (the target must exist: a file for a file, a directory for a
 * directory). `recursive` also binds the mounts below src. */
export function mountBind(src: string, target: string, recursive = false): void {
  checkNoNul(src, "source");
  checkNoNul(target, "target");
  if (libc.mount(src, target, null, MS_BIND | (recursive ? MS_REC : 0), null) < 0) {
    throw sysError("mount", `${src} -> ${target}`);
  }
}

/** umount2(2); pass MNT_DETACH for a lazy unmount. */
export function umount(target: string, flags = 0): void {
  if (libc.umount2(checkNoNul(target, "target"), flags) < 0) throw sysError("umount2", target);
}

const KEEP = -1;

function idArg(id: number): number {
  if (id === KEEP) return 0xffffffff;
  if (!(Number.isInteger(id) && id >= 0 && id < 0xffffffff)) throw new RangeError(`invalid id ${id}`);
  return id;
}

/** setresuid(2); -1 leaves an id unchanged. glibc applies it to every thread of the process. */
export function setresuid(ruid: number, euid: number, suid: number): void {
  if (libc.setresuid(idArg(ruid), idArg(euid), idArg(suid)) < 0) throw sysError("setresuid", `${ruid} ${euid} ${suid}`);
}

/** setresgid(2); -1 leaves an id unchanged. glibc applies it to every thread of the process. */
export function setresgid(rgid: number, egid: number, sgid: number): void {
  if (libc.setresgid(idArg(rgid), idArg(egid), idArg(sgid)) < 0) throw sysError("setresgid", `${rgid} ${egid} ${sgid}`);
}
