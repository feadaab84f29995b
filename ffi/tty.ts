// Terminals: output post-processing (ONLCR), window size, pseudo-terminal pairs.
import { lastErrno, libc } from "./libc.ts";
import { SysError, sysError } from "./errors.ts";
import { O, closeQuietly, openFd } from "./fd.ts";

// struct termios on glibc x86_64/aarch64 is 60 bytes: c_iflag@0 c_oflag@4 c_cflag@8 c_lflag@12
// c_line@16 c_cc[32]@17 c_ispeed@52 c_ospeed@56. The buffer is a little larger for safety.
const termios = new Uint8Array(64);
const termiosView = new DataView(termios.buffer);
const C_OFLAG = 4;
const OPOST = 0o1;
const ONLCR = 0o4;
const TCSANOW = 0;

const TIOCGWINSZ = 0x5413;
const TIOCSWINSZ = 0x5414;

/** Makes the terminal turn "\n" into "\r\n" on output (OPOST|ONLCR), as a real console does.
 * `on = false` clears ONLCR (OPOST stays). */
export function setOnlcr(fd: number, on = true): void {
  if (libc.tcgetattr(fd, termios) < 0) throw sysError("tcgetattr", `fd ${fd}`);
  const oflag = termiosView.getUint32(C_OFLAG, true);
  termiosView.setUint32(C_OFLAG, on ? oflag | OPOST | ONLCR : oflag & ~ONLCR, true);
  if (libc.tcsetattr(fd, TCSANOW, termios) < 0) throw sysError("tcsetattr", `fd ${fd}`);
}

// struct winsize { u16 ws_row, ws_col, ws_xpixel, ws_ypixel }
const winsize = new Uint16Array(4);

export function setWindowSize(fd: number, rows: number, cols: number): void {
  if (!(isU16(rows) && isU16(cols))) throw new RangeError(`window size out of range: ${rows}x${cols}`);
  winsize[0] = rows;
  winsize[1] = cols;
  winsize[2] = 0;
  winsize[3] = 0;
  if (libc.ioctl(fd, TIOCSWINSZ, winsize) < 0) throw sysError("ioctl", `fd ${fd} TIOCSWINSZ`);
}

export function getWindowSize(fd: number): { rows: number; cols: number } {
  if (libc.ioctl(fd, TIOCGWINSZ, winsize) < 0) throw sysError("ioctl", `fd ${fd} TIOCGWINSZ`);
  return { rows: winsize[0]!, cols: winsize[1]! };
}

function isU16(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= 0xffff;
}

const ptsName = new Uint8Array(128);

/** A new pseudo-terminal pair, both ends close-on-exec and without becoming our controlling
 * terminal. `slavePath` is the /dev/pts/N name. The caller owns both fds. */
export function openPty(): { master: number; slave: number; slavePath: string } {
  const master = libc.posix_openpt(O.RDWR | O.NOCTTY | O.CLOEXEC);
  if (master < 0) throw sysError("posix_openpt");
  try {
    if (libc.grantpt(master) < 0) throw sysError("grantpt", `fd ${master}`);
    if (libc.unlockpt(master) < 0) throw sysError("unlockpt", `fd ${master}`);
    const slavePath = ptsNameOf(master);
    const slave = openFd(slavePath, O.RDWR | O.NOCTTY);
    return { master, slave, slavePath };
  } catch (e) {
    closeQuietly(master);
    throw e;
  }
}

function ptsNameOf(master: number): string {
  // ptsname_r returns the error number itself instead of -1 (and may also set errno).
  const rc = libc.ptsname_r(master, ptsName, ptsName.length);
  if (rc !== 0) throw new SysError(rc > 0 ? rc : lastErrno(), "ptsname_r", `fd ${master}`);
  const end = ptsName.indexOf(0);
  return new TextDecoder().decode(ptsName.subarray(0, end));
}
