"""What the trainer checks about its data before and while it trains (issue 20).

- A run is pinned to the build it started on: `build_fingerprint` (the build's spec hash and the sha256 of every file
  the trainer reads, from the manifest) is stored in RUN/train_config.json and in every checkpoint; `--resume` on a
  build with another fingerprint is refused unless `--allow-data-change`.
- The shard files are opened through `PinnedFiles`, a handle on the build's shard directory taken at start: a build
  swapped in under a running trainer (`swap_in` renames `shards/`) cannot mix its files into this run; the run keeps
  reading its own files while they exist and stops with `BuildChangedError` when they are gone.
- `check_build_files` is cheap (headers and sizes of every shard, index and mask file, index rows against the
  manifest, the verify marker) and runs at every start; `verify_build_data` (`train --verify-data`) re-hashes every
  file first.
"""
from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.lib import format as npy_format

from pipelines.shards.format import (
    VERIFIED_MARKER,
    file_stats,
    index_path_of,
    mask_path_of,
    sha256_file,
)

# the identity of a build is part of the format (pipelines.shards.reader); re-exported for the trainer's callers
from pipelines.shards.reader import (  # noqa: F401
    BuildFingerprint,
    ShardRecord,
    build_fingerprint,
    read_shard_records,
    trainer_files,
    write_verified_marker,
)


class DataError(ValueError):
    """Training data that is damaged or is not the build this run is pinned to (the CLI exits 2 with the message)."""

    exit_code = 2  # cli.py's one handler: one line, exit 2


class BuildChangedError(DataError):
    """The build was replaced (or its files changed) under this run or between a checkpoint and its resume."""


def check_resume_build(saved: dict | None, current: BuildFingerprint, checkpoint: Path, build: str,
                       allow_change: bool) -> str | None:
    """Refuse (BuildChangedError) to resume a checkpoint on another build than the one it trained on; with
    `allow_change`, return a warning line instead. Checkpoints from before fingerprints carry none: a warning."""
    if saved is None:
        return (f"{checkpoint} records no build fingerprint (written before issue 20); cannot tell whether "
                f"{build} is the build it trained on")
    if saved.get("fingerprint") == current.fingerprint:
        return None
    what = "its spec changed" if saved.get("spec_hash") != current.spec_hash else "its shards changed"
    msg = (f"{checkpoint} trained on build fingerprint {saved.get('fingerprint', '?')[:12]}, but {build} is now "
           f"{current.fingerprint[:12]} ({what})")
    if allow_change:
        return msg + "; continuing on the new build (--allow-data-change)"
    raise BuildChangedError(msg + "; resuming would mix two builds in one run. Rebuild the original, or pass "
                            "--allow-data-change to continue on this build on purpose")


# ---------------------------------------------------------------------------------------------------- pinned files


class PinnedFiles:
    """The build's shard directories, opened once; every later open goes through these directory handles.

    `swap_in` renames `shards/` aside and the new build's directory into place: a handle taken before still names
    the old directory, so this run never reads a file of the new build. When the old directory is deleted, an open
    fails and the run stops with BuildChangedError naming the build (a mix of two builds is never trained on)."""

    def __init__(self, build: str | Path, subdirs: set[str]) -> None:
        self.build = Path(build)
        self._dirs: dict[str, int] = {}
        for sub in sorted(subdirs):
            try:
                self._dirs[sub] = os.open(self.build / sub, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                raise DataError(f"{self.build / sub}: shard directory missing (unfinished or damaged build)") from None

    def still_in_place(self) -> list[str]:
        """Subdirectories whose path no longer names the directory pinned at start (a build was swapped in)."""
        moved = []
        for sub, fd in self._dirs.items():
            pinned = os.fstat(fd)
            try:
                now = os.stat(self.build / sub)
            except FileNotFoundError:
                moved.append(sub)
                continue
            if (now.st_dev, now.st_ino) != (pinned.st_dev, pinned.st_ino):
                moved.append(sub)
        return moved

    def _open(self, rel: str | Path) -> int:
        rel = Path(rel)
        fd = self._dirs.get(str(rel.parent))
        if fd is None:
            raise DataError(f"{self.build / rel}: not under a pinned shard directory")
        try:
            return os.open(rel.name, os.O_RDONLY, dir_fd=fd)
        except FileNotFoundError:
            if self.still_in_place():
                raise BuildChangedError(
                    f"{self.build}: the build was replaced while this run trained on it ({rel} of the build the "
                    "run started on is gone); stopped rather than train on a mix of two builds. Resume from the "
                    "last checkpoint with --resume (and --allow-data-change to continue on the new build)") from None
            raise DataError(f"{self.build / rel}: missing") from None

    def exists(self, rel: str | Path) -> bool:
        try:
            os.close(self._open(rel))
            return True
        except DataError:
            return False

    def load_npy(self, rel: str | Path) -> np.ndarray:
        """Memory-map an .npy file through the pinned directory (np.load(mmap_mode) needs a path)."""
        with os.fdopen(self._open(rel), "rb") as f:
            shape, order, dtype, offset = _npy_header(f, self.build / rel)
            return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)

    def memory_map(self, rel: str | Path) -> pa.BufferReader:
        """A zero-copy Arrow reader over the file (its map keeps the file readable after a swap)."""
        with os.fdopen(self._open(rel), "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise DataError(f"{self.build / rel}: empty file")
            return pa.BufferReader(pa.py_buffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)))

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def _npy_header(f, path: Path) -> tuple[tuple[int, ...], str, np.dtype, int]:
    """(shape, order, dtype, data offset) of an open .npy file; DataError when it is not one."""
    try:
        version = npy_format.read_magic(f)
        read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except (ValueError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable .npy file ({e})") from None
    return shape, "F" if fortran else "C", dtype, f.tell()


# ------------------------------------------------------------------------------------------------------ the checks


def check_build_files(build: str | Path, seq_len: int) -> list[str]:
    """Cheap checks of every file the trainer will read (no hashing): .npy headers (shape, dtype) and sizes, index
    rows against the manifest's `n_segments` and the shard's rows, mask files present and shaped as their shard, and
    the verify marker (a build verified at another fingerprint, or a file changed since it was verified). Returns
    the problems, each naming its file."""
    build = Path(build)
    spec_hash, dtype, has_mask, shards = read_shard_records(build)
    problems: list[str] = []
    for s in shards:
        problems += _check_npy(build, s.path, (s.n_rows, seq_len), np.dtype(dtype))
        mask = mask_path_of(s.path)
        if (build / mask).exists():
            problems += _check_npy(build, str(mask), (s.n_rows, seq_len), None)
        elif has_mask:
            problems.append(f"{build / mask}: loss mask missing (the build has loss masks)")
        problems += _check_index(build, s)
    problems += _check_verified_marker(build, build_fingerprint(build))
    return problems


def _check_npy(build: Path, rel: str, shape: tuple[int, int], dtype: np.dtype | None) -> list[str]:
    path = build / rel
    if not path.exists():
        return [f"{path}: missing"]
    with open(path, "rb") as f:
        try:
            got_shape, _, got_dtype, offset = _npy_header(f, path)
        except DataError as e:
            return [str(e)]
    problems = []
    if tuple(got_shape) != shape:
        problems.append(f"{path}: shape {tuple(got_shape)}, manifest says {shape}")
    if dtype is not None and got_dtype != dtype:
        problems.append(f"{path}: dtype {got_dtype}, manifest says {dtype}")
    want = offset + int(np.prod(got_shape)) * got_dtype.itemsize
    size = path.stat().st_size
    if size != want:
        problems.append(f"{path}: {size} bytes, its header needs {want} (truncated or padded)")
    return problems


def _check_index(build: Path, s: ShardRecord) -> list[str]:
    path = build / index_path_of(s.path)
    if not path.exists():
        return [f"{path}: shard index missing"]
    try:
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_file(source)
            n, last_row = 0, -1
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                n += batch.num_rows
                if batch.num_rows:
                    last_row = max(last_row, int(pc.max(batch.column("row")).as_py()))
    except (OSError, pa.ArrowInvalid, KeyError) as e:
        return [f"{path}: unreadable shard index ({str(e).splitlines()[0]})"]
    problems = []
    if s.n_segments is not None and n != s.n_segments:
        problems.append(f"{path}: {n} segments, manifest `shards.n_segments` says {s.n_segments}")
    if last_row >= s.n_rows:
        problems.append(f"{path}: segments in row {last_row}, but manifest `shards.n_rows` says {s.n_rows}")
    return problems


def _check_verified_marker(build: Path, fp: BuildFingerprint) -> list[str]:
    path = build / VERIFIED_MARKER
    if not path.exists():
        return []
    try:
        marker = json.loads(path.read_text())
        files = marker["files"]
    except (ValueError, KeyError, TypeError):
        return [f"{path}: unreadable verify marker (run `cli.py verify {build}` again)"]
    if marker.get("fingerprint") != fp.fingerprint:
        return [f"{path}: the build was verified with another manifest (fingerprint "
                f"{str(marker.get('fingerprint'))[:12]}, now {fp.fingerprint[:12]}): the manifest changed since"]
    now = file_stats(build, list(files))
    return [f"{build / rel}: changed since `verify` passed (size/mtime {now.get(rel)} vs {files[rel]})"
            for rel in sorted(files) if now.get(rel) != files[rel]]


def verify_build_data(build: str | Path) -> list[str]:
    """`train --verify-data`: re-hash every shard (and index/mask file where the manifest records their hashes)
    against the manifest. Returns the problems, each naming its file."""
    build = Path(build)
    _, _, _, shards = read_shard_records(build)
    problems = []
    for s in shards:
        files = {"sha256": s.path, "index_sha256": str(index_path_of(s.path)),
                 "mask_sha256": str(mask_path_of(s.path))}
        for col, rel in files.items():
            want = s.hashes.get(col)
            if want is None:
                continue
            if not (build / rel).exists():
                problems.append(f"{build / rel}: missing")
            elif sha256_file(build / rel) != want:
                problems.append(f"{build / rel}: sha256 differs from the manifest (`shards.{col}`)")
    return problems


def raise_problems(build: str | Path, problems: list[str], what: str) -> None:
    """DataError with the first problem on one line (and how many more)."""
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise DataError(f"{what} {build}: {problems[0]}{more}; run `cli.py verify {build}` for the full list")
