"""Checkpoint and export files that cannot be silently damaged or half-written (issue 20).

- Every checkpoint carries `checksums.json` (sha256 and size of each of its files), written after the files and
  before the rename that publishes `step-N`; resume, merge, export and `--init-from` check it, and a mismatch is a
  CheckpointError naming the file (exit 2). Ranks hash the files they wrote themselves, in parallel.
- Exports record the sha256 of `model.safetensors` in `config.json`, which is written last: a directory whose
  `config.json` is missing is an unfinished export, never a finished one.
- A full disk during a save is one line naming the path and the space needed (`DiskFullError`), not a traceback.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pipelines.io import free_bytes, sha256_file  # noqa: F401  (re-exported for trainer/checkpoint.py)

CHECKSUMS = "checksums.json"


class DiskFullError(OSError):
    """Not enough free space to write a checkpoint or export (the CLI exits 2 with the message)."""

    exit_code = 2  # cli.py's one handler: one line, exit 2


file_sha256 = sha256_file  # the one file hash (pipelines/io.py)


def hash_files(root: Path, names: list[str]) -> dict[str, dict]:
    return {n: {"sha256": file_sha256(root / n), "bytes": (root / n).stat().st_size} for n in sorted(names)}


def write_checksums(root: Path, entries: dict[str, dict]) -> None:
    """Write ROOT/checksums.json for `entries` (name -> {sha256, bytes}); every other file of ROOT must be listed."""
    unlisted = sorted(p.name for p in root.iterdir() if p.is_file() and p.name not in entries and p.name != CHECKSUMS)
    if unlisted:  # a file no rank hashed would load unchecked
        raise RuntimeError(f"{root}: files without a checksum: {unlisted}")
    tmp = root / (CHECKSUMS + ".tmp")
    tmp.write_text(json.dumps({"algorithm": "sha256", "files": entries}, indent=1, sort_keys=True))
    fsync_file(tmp)
    os.replace(tmp, root / CHECKSUMS)


def read_checksums(root: Path) -> dict[str, dict] | None:
    path = root / CHECKSUMS
    if not path.exists():
        return None
    try:
        return dict(json.loads(path.read_text())["files"])
    except (ValueError, KeyError, TypeError):
        return {CHECKSUMS: {"sha256": "unreadable", "bytes": -1}}


def checksum_problems(root: Path, entries: dict[str, dict], rank: int = 0, world: int = 1) -> list[str]:
    """Problems of this rank's share (every world-th file) of a checksummed directory, each naming the file."""
    if CHECKSUMS in entries:
        return [f"{root / CHECKSUMS}: unreadable checksum manifest"]
    problems = []
    on_disk = {p.name for p in root.iterdir() if p.is_file()} - {CHECKSUMS}
    if rank == 0:
        problems += [f"{root / n}: not listed in {CHECKSUMS} (added after the checkpoint was written)"
                     for n in sorted(on_disk - set(entries))]
    for i, (name, want) in enumerate(sorted(entries.items())):
        if i % world != rank:
            continue
        path = root / name
        if not path.exists():
            problems.append(f"{path}: missing (listed in {CHECKSUMS})")
        elif path.stat().st_size != want["bytes"]:
            problems.append(f"{path}: {path.stat().st_size} bytes, {CHECKSUMS} says {want['bytes']}")
        elif file_sha256(path) != want["sha256"]:
            problems.append(f"{path}: sha256 differs from {CHECKSUMS} (the file was damaged or changed)")
    return problems


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------------- disk space


def is_disk_full(exc: BaseException) -> bool:
    """`pipelines.io.is_disk_full`, also looking inside DCP's per-rank failures (torch's zip writer reports a
    short write as `unexpected pos`, which that function knows)."""
    from pipelines.io import is_disk_full as caused_by_full_disk

    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if caused_by_full_disk(e):
            return True
        stack += [x for x in getattr(e, "failures", {}).values() if isinstance(x, BaseException)]  # DCP's
        stack += [x for x in getattr(e, "args", ()) if isinstance(x, BaseException)]
    return False


def disk_full_message(path: Path, need: int, what: str) -> str:
    return (f"{path}: no space left for {what}: needs about {_mb(need)} free, {_mb(free_bytes(path))} free on "
            "that filesystem; free some space (or pick another --out) and rerun (resume with --resume)")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"
