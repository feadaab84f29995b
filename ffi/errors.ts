// Errors from failed libc calls. They look like Node's system errors (`err.code === "ENOENT"`), so
// callers can handle fs/net errors and ours the same way.
import { lastErrno, libc } from "./libc.ts";

// Linux errno numbers are shared by x86_64 and aarch64 (asm-generic/errno*.h).
const ERRNO_NAMES: readonly (string | undefined)[] = (() => {
  const names: (string | undefined)[] = [];
  const table: [number, string][] = [
    [1, "EPERM"], [2, "ENOENT"], [3, "ESRCH"], [4, "EINTR"], [5, "EIO"], [6, "ENXIO"], [7, "E2BIG"],
    [8, "ENOEXEC"], [9, "EBADF"], [10, "ECHILD"], [11, "EAGAIN"], [12, "ENOMEM"], [13, "EACCES"],
    [14, "EFAULT"], [15, "ENOTBLK"], [16, "EBUSY"], [17, "EEXIST"], [18, "EXDEV"], [19, "ENODEV"],
    [20, "ENOTDIR"], [21, "EISDIR"], [22, "EINVAL"], [23, "ENFILE"], [24, "EMFILE"], [25, "ENOTTY"],
    [26, "ETXTBSY"], [27, "EFBIG"], [28, "ENOSPC"], [29, "ESPIPE"], [30, "EROFS"], [31, "EMLINK"],
    [32, "EPIPE"], [33, "EDOM"], [34, "ERANGE"], [35, "EDEADLK"], [36, "ENAMETOOLONG"], [37, "ENOLCK"],
    [38, "ENOSYS"], [39, "ENOTEMPTY"], [40, "ELOOP"], [42, "ENOMSG"], [43, "EIDRM"], [44, "ECHRNG"],
    [45, "EL2NSYNC"], [46, "EL3HLT"], [47, "EL3RST"], [48, "ELNRNG"], [49, "EUNATCH"], [50, "ENOCSI"],
    [51, "EL2HLT"], [52, "EBADE"], [53, "EBADR"], [54, "EXFULL"], [55, "ENOANO"], [56, "EBADRQC"],
    [57, "EBADSLT"], [59, "EBFONT"], [60, "ENOSTR"], [61, "ENODATA"], [62, "ETIME"], [63, "ENOSR"],
    [64, "ENONET"], [65, "ENOPKG"], [66, "EREMOTE"], [67, "ENOLINK"], [68, "EADV"], [69, "ESRMNT"],
    [70, "ECOMM"], [71, "EPROTO"], [72, "EMULTIHOP"], [73, "EDOTDOT"], [74, "EBADMSG"],
    [75, "EOVERFLOW"], [76, "ENOTUNIQ"], [77, "EBADFD"], [78, "EREMCHG"], [79, "ELIBACC"],
    [80, "ELIBBAD"], [81, "ELIBSCN"], [82, "ELIBMAX"], [83, "ELIBEXEC"], [84, "EILSEQ"],
    [85, "ERESTART"], [86, "ESTRPIPE"], [87, "EUSERS"], [88, "ENOTSOCK"], [89, "EDESTADDRREQ"],
    [90, "EMSGSIZE"], [91, "EPROTOTYPE"], [92, "ENOPROTOOPT"], [93, "EPROTONOSUPPORT"],
    [94, "ESOCKTNOSUPPORT"], [95, "EOPNOTSUPP"], [96, "EPFNOSUPPORT"], [97, "EAFNOSUPPORT"],
    [98, "EADDRINUSE"], [99, "EADDRNOTAVAIL"], [100, "ENETDOWN"], [101, "ENETUNREACH"],
    [102, "ENETRESET"], [103, "ECONNABORTED"], [104, "ECONNRESET"], [105, "ENOBUFS"], [106, "EISCONN"],
    [107, "ENOTCONN"], [108, "ESHUTDOWN"], [109, "ETOOMANYREFS"], [110, "ETIMEDOUT"],
    [111, "ECONNREFUSED"], [112, "EHOSTDOWN"], [113, "EHOSTUNREACH"], [114, "EALREADY"],
    [115, "EINPROGRESS"], [116, "ESTALE"], [117, "EUCLEAN"], [118, "ENOTNAM"], [119, "ENAVAIL"],
    [120, "EISNAM"], [121, "EREMOTEIO"], [122, "EDQUOT"], [123, "ENOMEDIUM"], [124, "EMEDIUMTYPE"],
    [125, "ECANCELED"], [126, "ENOKEY"], [127, "EKEYEXPIRED"], [128, "EKEYREVOKED"],
    [129, "EKEYREJECTED"], [130, "EOWNERDEAD"], [131, "ENOTRECOVERABLE"], [132, "ERFKILL"],
    [133, "EHWPOISON"],
  ];
  for (const [num, name] of table) names[num] = name;
  return names;
})();

/** errno numbers by name, for comparisons without magic numbers (`e.errno === ERRNO.EAGAIN`). */
export const ERRNO = {
  EPERM: 1, ENOENT: 2, ESRCH: 3, EINTR: 4, EIO: 5, ENXIO: 6, E2BIG: 7, EBADF: 9, ECHILD: 10,
  EAGAIN: 11, EWOULDBLOCK: 11, ENOMEM: 12, EACCES: 13, EFAULT: 14, EBUSY: 16, EEXIST: 17,
  ENOTDIR: 20, EISDIR: 21, EINVAL: 22, ENFILE: 23, EMFILE: 24, ENOTTY: 25, ENOSPC: 28, ESPIPE: 29,
  EPIPE: 32, ENAMETOOLONG: 36, ENOSYS: 38, ELOOP: 40, ENOTSOCK: 88, EMSGSIZE: 90, EPROTOTYPE: 91,
  EOPNOTSUPP: 95, EADDRINUSE: 98, ECONNABORTED: 103, ECONNRESET: 104, ENOBUFS: 105,
  ENOTCONN: 107, ETIMEDOUT: 110, ECONNREFUSED: 111,
} as const;

/** "ENOENT" for 2; "E<number>" for numbers missing from the table. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `E${errno}`;
}

/** libc's description of an errno ("No such file or directory"). */
export function strerror(errno: number): string {
  return libc.strerror(errno) ?? `Unknown error ${errno}`;
}

export class SysError extends Error {
  readonly errno: number;
  /** errno name, e.g. "ENOENT". */
  readonly code: string;
  /** The libc function that failed, e.g. "open". */
  readonly syscall: string;
  /** What the call was about (a path, "fd 7", ...), when known. */
  readonly context?: string;

  constructor(errno: number, syscall: string, context?: string) {
    const code = errnoName(errno);
    super(`${syscall}${context ? ` '${context}'` : ""}: ${code} (${strerror(errno)})`);
    this.name = "SysError";
    this.errno = errno;
    this.code = code;
    this.syscall = syscall;
    if (context !== undefined) this.context = context;
  }
}

/** A SysError for the errno that the call just before this one left behind. */
export function sysError(syscall: string, context?: string): SysError {
  return new SysError(lastErrno(), syscall, context);
}

/** True when `e` is a SysError (or a Node system error) with the given errno name. */
export function isErrno(e: unknown, code: string): boolean {
  return typeof e === "object" && e !== null && (e as { code?: unknown }).code === code;
}
