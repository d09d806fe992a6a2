"""One build at a time per output directory.

Two builds into the same `--out` would share the stage-A work files and the stage-B temporary names (one truncating
the other's intermediates), so a build holds an exclusive `flock` on OUT/.lock for its whole run; a second one fails
at once naming the holder. The lock is released by the kernel when the holder exits, however it exits, so a killed
build never leaves a stale lock behind. (flock is per host on local disks and cluster-wide on NFSv4/Lustre mounts
that support it; with slurm/ray the lock covers the submission, not the remote run.)
"""
from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.errors import OutputDirError

LOCK_NAME = ".lock"


def check_out_dir(out: str | Path) -> Path:
    """`out` as a Path; OutputDirError when it exists but is not a directory."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"--out {out}: exists and is not a directory")
    return out


@contextmanager
def out_lock(out: str | Path) -> Iterator[None]:
    """Hold OUT/.lock exclusively (creating OUT), or raise OutputDirError naming the process that holds it."""
    out = check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK_NAME, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise OutputDirError(f"--out {out}: another build is writing there ({holder}); wait for it to finish or "
                             "choose another --out") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
