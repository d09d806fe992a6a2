"""One build at a time per output directory.

Two builds into the same `--out` would share the stage-A work files and the stage-B temporary names (one truncating
the other's intermediates), so a build (and `verify`, which may restore an interrupted swap) holds an exclusive lock on
OUT/.lock for its whole run; a second one fails at once naming the holder.

The lock is a POSIX record lock (`fcntl.lockf`), owned by the process that took it: forked children (datatrove's
workers and its `multiprocess.Manager`) do not inherit it, and the kernel drops it when that process exits, however
it exits. (An `flock` belongs to the open file instead: a child that outlived a `kill -9` of the build kept it
forever, issue 20.) Record locks do not exclude the process's own threads, so a set of the paths this process holds
does. (Per host on local disks, cluster-wide on NFS/Lustre mounts with lock support; with slurm/ray the lock covers
the submission, not the remote run.)
"""
from __future__ import annotations

import fcntl
import os
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.errors import OutputDirError

LOCK_NAME = ".lock"
_HELD: set[str] = set()  # OUT/.lock paths this process holds (record locks do not exclude the own process)
_HELD_GUARD = threading.Lock()


def check_out_dir(out: str | Path) -> Path:
    """`out` as a Path; OutputDirError when it exists but is not a directory."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"--out {out}: exists and is not a directory")
    return out


def _holder(f, path: Path) -> str:
    """Who holds the lock on `f`: the kernel's answer (F_GETLK) and what the holder wrote into the file."""
    text = ""
    try:
        f.seek(0)
        text = f.read().strip()
    except OSError:
        pass
    try:  # struct flock: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
        query = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
        pid = struct.unpack("hhqqi", fcntl.fcntl(f, fcntl.F_GETLK, query))[4]
    except OSError:
        pid = 0
    if pid and f"pid {pid} " not in text + " ":
        return f"pid {pid}" + (f"; the file says {text}" if text else "")
    return text or "another process"


@contextmanager
def out_lock(out: str | Path) -> Iterator[None]:
    """Hold OUT/.lock exclusively (creating OUT), or raise OutputDirError naming the process that holds it and how
    to recover."""
    out = check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    key = str(path.resolve())
    with _HELD_GUARD:
        if key in _HELD:
            raise OutputDirError(f"--out {out}: another build of this process (pid {os.getpid()}) is writing "
                                 "there; wait for it to finish or choose another --out")
        _HELD.add(key)
    f = None
    try:
        f = open(path, "a+", encoding="utf-8")
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EACCES or EAGAIN: held by another process
            holder = _holder(f, path)
            raise OutputDirError(
                f"--out {out}: another build is writing there ({holder}); wait for it to finish or choose another "
                f"--out. The lock ends with that process: stop it to take over (a rerun resumes its work)") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield
    finally:
        if f is not None:
            f.close()  # closing releases the record lock
        with _HELD_GUARD:
            _HELD.discard(key)
