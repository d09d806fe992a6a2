"""Per-shard access for the trainer: shard files opened lazily, at most K shards open at once.

A build's size must not show in a rank's memory or open files: the manifest's `segments` table (one row per piece
of every document) is never read. Each shard's own index `shard-NNNNN.idx.arrow` (docs/FORMAT.md) is read only when
a unit of that shard is needed — memory-mapped, only its `row, start, length` columns, copied into compact arrays
and closed at once — and checked then (segments must tile each row from 0, padding only at the end). Token and
loss-mask files are memory-mapped on first use. An LRU keeps at most `max_open` shards: an evicted shard's maps are
dropped, which closes their file descriptors, so a rank never holds more than 2·K shard files open.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.shards.format import index_path_of, mask_path_of

DEFAULT_MAX_OPEN_SHARDS = 64
INDEX_COLUMNS = ("row", "start", "length")


@dataclass(frozen=True)
class ShardIndex:
    """Where the segments of one shard sit: segments of row r are [row_first_seg[r], row_first_seg[r + 1])."""

    row_first_seg: np.ndarray  # int64 [n_rows + 1]
    seg_start: np.ndarray  # int32 [n_segments], offset inside the row
    seg_len: np.ndarray  # int32 [n_segments]
    covered: np.ndarray  # int32 [n_rows], tokens of the row covered by segments (the rest is trailing padding)


def index_path(build: Path, shard: str) -> Path:
    return build / index_path_of(shard)


def mask_path(build: Path, shard: str) -> Path:
    return build / mask_path_of(shard)


def load_shard_index(build: Path, shard: str, n_rows: int, seq_len: int) -> ShardIndex:
    """Read and check one shard's index (the format promises segments sorted by row then start that tile each row
    from 0, with padding only at the end). Memory-mapped and read a record batch at a time, only the `row, start,
    length` columns: what stays is two int32 per segment, whatever the shard's size."""
    import pyarrow as pa

    path = index_path(build, shard)
    if not path.exists():
        raise FileNotFoundError(f"{path}: shard index missing (every shard has one, docs/FORMAT.md)")
    seg_start, seg_len = [], []
    per_row = np.zeros(n_rows, dtype=np.int64)
    covered = np.zeros(n_rows, dtype=np.int64)
    last_row, last_end = -1, 0  # the previous batch's last segment: rows and tiling continue across batches
    with pa.memory_map(str(path)) as source:  # zero-copy: only the three columns' pages are read
        reader = pa.ipc.open_file(source)
        missing = [c for c in INDEX_COLUMNS if c not in reader.schema.names]
        if missing:
            raise ValueError(f"{path}: shard index lacks column(s) {missing}")
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            nulls = [c for c in INDEX_COLUMNS if batch.column(c).null_count]
            if nulls:
                raise ValueError(f"{path}: shard index has nulls in column(s) {nulls}")
            row, start, length = (batch.column(c).to_numpy().astype(np.int64) for c in INDEX_COLUMNS)
            if not len(row):
                continue
            _check_segments(path, shard, row, start, length, n_rows, seq_len, last_row, last_end)
            last_row, last_end = int(row[-1]), int(start[-1] + length[-1])
            per_row += np.bincount(row, minlength=n_rows)
            covered += np.bincount(row, weights=length, minlength=n_rows).astype(np.int64)
            seg_start.append(start.astype(np.int32))
            seg_len.append(length.astype(np.int32))
    row_first_seg = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int32)  # noqa: E731
    return ShardIndex(row_first_seg, cat(seg_start), cat(seg_len), covered.astype(np.int32))


def _check_segments(path: Path, shard: str, row: np.ndarray, start: np.ndarray, length: np.ndarray, n_rows: int,
                    seq_len: int, last_row: int, last_end: int) -> None:
    """One batch of an index: rows in range and sorted, lengths positive, segments tiling each row from 0."""
    if row.min() < 0 or row.max() >= n_rows:
        raise ValueError(f"{path}: segment rows outside [0, {n_rows}) of {shard}")
    if row[0] < last_row or np.any(np.diff(row) < 0):
        raise ValueError(f"{path}: segments are not sorted by row")
    if np.any(length <= 0):
        i = int(np.argmax(length <= 0))
        raise ValueError(f"{path}: segment of {shard} row {row[i]} has length {length[i]}")
    first = np.ones(len(row), dtype=bool)
    first[1:] = row[1:] != row[:-1]
    expected = np.zeros_like(start)
    expected[1:] = start[:-1] + length[:-1]
    expected[first] = 0
    if row[0] == last_row:
        expected[0] = last_end
    bad = np.nonzero((expected != start) | (start + length > seq_len))[0]
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"{path}: segments of {shard} row {row[i]} do not tile the row "
                         f"(segment at start {start[i]} length {length[i]}, expected start {expected[i]}, "
                         f"row length {seq_len})")


class OpenShard:
    """One shard's tokens, optional loss mask and index, each loaded on first use."""

    def __init__(self, build: Path, shard: str, n_rows: int, seq_len: int) -> None:
        self.build, self.shard, self.n_rows, self.seq_len = build, shard, n_rows, seq_len
        self._tokens: np.ndarray | None = None
        self._mask: np.ndarray | None | bool = False  # False = not looked for yet
        self._index: ShardIndex | None = None

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            arr = np.load(self.build / self.shard, mmap_mode="r")
            if arr.shape != (self.n_rows, self.seq_len):
                raise ValueError(f"{self.build / self.shard}: shape {arr.shape} but the manifest says "
                                 f"({self.n_rows}, {self.seq_len})")
            self._tokens = arr
        return self._tokens

    @property
    def mask(self) -> np.ndarray | None:
        if self._mask is False:
            path = mask_path(self.build, self.shard)
            self._mask = np.load(path, mmap_mode="r") if path.exists() else None
        return self._mask  # type: ignore[return-value]

    @property
    def index(self) -> ShardIndex:
        if self._index is None:
            self._index = load_shard_index(self.build, self.shard, self.n_rows, self.seq_len)
        return self._index


class ShardCache:
    """LRU of at most `max_open` OpenShard; counts loads and the most shards ever open (for tests/benchmarks)."""

    def __init__(self, build: Path, shards: tuple[tuple[str, int], ...], seq_len: int,
                 max_open: int = DEFAULT_MAX_OPEN_SHARDS) -> None:
        if max_open < 1:
            raise ValueError(f"max_open_shards must be >= 1, got {max_open}")
        self.build, self.shards, self.seq_len, self.max_open = build, shards, seq_len, max_open
        self._open: OrderedDict[int, OpenShard] = OrderedDict()
        self.n_opened = 0
        self.peak_open = 0

    def __len__(self) -> int:
        return len(self._open)

    def get(self, s: int) -> OpenShard:
        shard = self._open.get(s)
        if shard is not None:
            self._open.move_to_end(s)
            return shard
        while len(self._open) >= self.max_open:
            self._open.popitem(last=False)  # dropping the maps closes their files
        path, n_rows = self.shards[s]
        shard = self._open[s] = OpenShard(self.build, path, n_rows, self.seq_len)
        self.n_opened += 1
        self.peak_open = max(self.peak_open, len(self._open))
        return shard
