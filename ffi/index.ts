// The project's only door to libc. Everything here takes and returns numbers, strings and
// Uint8Arrays; pointers never leave ffi/.
export { SysError, ERRNO, errnoName, strerror, isErrno } from "./errors.ts";
export {
  O, F, FD_CLOEXEC, EFD, MFD, SEAL,
  pipe, closeFd, closeQuietly, getStatusFlags, updateStatusFlags, setNonBlocking, isNonBlocking,
  setCloexec, isCloexec, setOwner, isOpenFd, readFd, writeFd, writeAll, dupFd, openFd, mkdirP,
  readLink, fdTarget, listOpenFds, fsyncFd, memfdCreate, sealFd, eventfd, readEventfd, writeEventfd,
  getPipeSize, setPipeSize,
} from "./fd.ts";
export {
  type WaitStatus,
  subreaper, isSubreaper, setProcessName, getProcessName, pidfdOpen, pidfdSendSignal, waitPidfd,
  signalNumber, kill, killProcessGroup, getpgid, getpid, umask, setsid,
} from "./process.ts";
export {
  type UnixSocketType, type ReceivedMessage, MAX_FDS_PER_MESSAGE,
  listenUnix, bindDgram, acceptConn, connectUnix, dgramSocket, socketPair, shutdownFd,
  sendMsg, sendDatagram, recvMsg,
} from "./socket.ts";
export { setOnlcr, setWindowSize, getWindowSize, openPty } from "./tty.ts";
export { type Interest, type Readiness, type ReadyCallback, type Watch, watch, watchedCount } from "./poller.ts";
export {
  CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET,
  MNT_FORCE, MNT_DETACH, unshare, setns, mountBind, umount, setresuid, setresgid,
} from "./ns.ts";
