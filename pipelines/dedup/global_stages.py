"""Global decisions of a build as parallel datatrove stages with bounded memory: exclusion, dedup, unique doc ids.

Stage A leaves one `*.docs.parquet` per input file. These stages decide, over the whole build, which documents go
(`excluded`, `exact-dup`, `url-dup`, `near-dup`) and which record ids must be repaired, and write one decisions file
per stage-A task (`pipelines.dedup.decisions`). No process ever holds the document table:

1. `dedup_sign` (per-file, one task per stage-A task): read only the key columns of the task's docs and emit
   records (h1, h2, key) of four kinds: ID (128-bit hash of the record id, and of its repaired form), EXACT
   (normalised-text hash), URL (128-bit hash) and BAND (one per MinHash band, the band index in h2). Records are
   range-partitioned on h1 into P buckets and written sorted, with per-(bucket, kind) offsets.
   `dedup_exclude` (only with `--exclude`, one task per other build) streams that build's segment doc ids into the
   same layout, with a marker instead of a key.
2. `dedup_buckets` (P tasks): for bucket b, memory-map slice b of every sign file and sort it in hash sub-ranges
   of at most `chunk_records` records (P only sets the parallelism, never the memory); every run of equal hashes
   with at least two members is a group, written as (group id, member key) pairs. Documents without a duplicate
   never leave this stage.
3. `dedup_clusters` (1 task): only the members of groups, i.e. integer keys of documents that share a hash with
   another one, are loaded; the decisions are made in this fixed order, each among what is still kept:
   - ids: the first record of an id (build order) keeps it; a later repeat gets `<id>@<file path>:<line>`.
     A repaired id that still collides with another id in the build is an error raised before anything is written.
   - exclusion: a kept document whose final id appears in another build's segments is dropped as `excluded`; it
     takes part in nothing after (it can be no survivor).
   - `exact-dup`: equal normalised text; `url-dup`: equal URL; `near-dup`: connected through candidate pairs
     (sharing a MinHash band) that are confirmed by their estimated Jaccard (share of equal signature values,
     from the `minhash_sig` stage A stored) >= the configured threshold; the estimate between a dropped document
     and its survivor is kept in the decisions (`jaccard`) and shown in `documents.detail`. Candidate pairs of a
     group: all pairs up to GROUP_ALL_PAIRS members, beyond that the first member with every other and each
     member with the next (a large group of boilerplate is linked without a quadratic number of checks). In each
     step the lowest key (first in build order) of a group survives.
   The reason says why the document itself went (the step that removed it); `duplicate_of` is the *final*
   survivor of its cluster, following the chain (an exact copy of a document that was then removed as a near
   duplicate points at the near duplicate's survivor), so it always names a kept document.

Results depend only on the build order: not on P, --workers or the executor (groups are runs of equal hashes,
whichever bucket or sub-range finds them).

Hash collisions: ids and URLs use 128-bit hashes (collision-free in practice). Text and band hashes come from stage
A as 64-bit values: among n documents the chance that any two unrelated texts collide is about n**2 / 2**65
(1.5% at 750M documents, i.e. about 0.015 wrongly dropped documents expected), and 20 bands make it 20 times that
for near-dup links; we accept it rather than carry a second text hash through stage A.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep

from pipelines.dedup.decisions import DECISIONS_SCHEMA, write_decisions
from pipelines.errors import InputError
from pipelines.io import atomic_save_npy
from pipelines.stages import Stage
from pipelines.steps.intermediate import intermediate_paths

RECORD = np.dtype([("h1", "<u8"), ("h2", "<u8"), ("key", "<i8")])
KINDS = ("id", "exact", "url", "band")
ID, EXACT, URL, BAND = range(len(KINDS))
EXCLUDED_MARK = np.iinfo(np.int64).min  # key of an id record that comes from another build's segments
MAX_BUCKETS = 1024
CHUNK_RECORDS = 1 << 21  # records sorted at once by a bucket task (~50 MB + sort temporaries: ~250 MB)
GROUP_ALL_PAIRS = 64  # band groups up to this size have every member pair checked
SIGN_RUN_DOCS = 1 << 15  # documents per sorted run of a dedup_sign task (~40 records each with MinHash bands)
EXCLUDE_RUN_IDS = 1 << 20  # ids (Python strings) per sorted run written by an exclusion task


class DuplicateIdError(InputError):
    """Two documents of a build would get the same id even after repair (e.g. the same file listed twice)."""


def repaired_doc_id(doc_id: str, file: str, line: int) -> str:
    """The id given to a later repeat of a record id: the whole path of its file and its line."""
    return f"{doc_id}@{file}:{line}"


def n_buckets_for(n_files: int) -> int:
    """Hash-range buckets: one per input file (a data-size measure, never the worker count), at most MAX_BUCKETS.
    Memory per bucket task is bounded by CHUNK_RECORDS whatever P is; P only sets the parallelism."""
    return max(1, min(MAX_BUCKETS, n_files))


@dataclass(frozen=True)
class GlobalDedupConfig:
    """Plain data the stages need (pickled for every worker)."""

    work_dir: str  # the build's stage-A work dir
    n_tasks: int  # stage-A tasks
    n_buckets: int
    exact: bool = False
    url: bool = False
    minhash: bool = False
    exclude: tuple[str, ...] = ()
    chunk_records: int = CHUNK_RECORDS
    sign_run_docs: int = SIGN_RUN_DOCS
    minhash_threshold: float | None = None  # confirm candidate pairs by estimated Jaccard (None: band-only)

    @property
    def root(self) -> str:
        return os.path.join(self.work_dir, "dedup", f"p{self.n_buckets:04d}")

    def sign_path(self, task: int) -> str:
        return os.path.join(self.root, "sign", f"{task:05d}.rec")

    @property
    def exclude_dir(self) -> str:
        tag = hashlib.sha256(json.dumps(list(self.exclude)).encode()).hexdigest()[:12]
        return os.path.join(self.root, f"exclude-{tag}")

    def groups_path(self, bucket: int) -> str:
        return os.path.join(self.root, "groups", f"{bucket:05d}.npz")

    @property
    def stats_path(self) -> str:
        return os.path.join(self.root, "clusters.json")


# ---------------------------------------------------------------------------------------------------- hashing


def _hash128(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    import xxhash

    h = [xxhash.xxh3_128_intdigest(v.encode("utf-8")) for v in values]
    mask = (1 << 64) - 1
    return (np.array([x & mask for x in h], dtype=np.uint64), np.array([x >> 64 for x in h], dtype=np.uint64))


def _records(h1: np.ndarray, h2: np.ndarray | int, key: np.ndarray | int) -> np.ndarray:
    out = np.empty(len(h1), RECORD)
    out["h1"], out["h2"], out["key"] = h1, h2, key
    return out


def bucket_of(h1: np.ndarray, n_buckets: int) -> np.ndarray:
    """Range partition on the top 32 bits, so a bucket is a contiguous hash range (sub-ranges need no re-read)."""
    return ((h1 >> np.uint64(32)) * np.uint64(n_buckets)) >> np.uint64(32)


def _bucket_bounds(bucket: int, n_buckets: int) -> tuple[int, int]:
    """[lo, hi) of h1 values in `bucket` (Python ints; hi may be 2**64)."""
    t0 = -(-bucket * 2**32 // n_buckets)
    t1 = -(-(bucket + 1) * 2**32 // n_buckets)
    return t0 << 32, t1 << 32


def partition_records(records: list[np.ndarray], kinds: list[int], n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Records grouped by (bucket, kind), each group sorted by h1 (ties in any order: the bucket step sorts them
    fully), and the offsets of the groups."""
    rec = np.concatenate(records) if records else np.empty(0, RECORD)
    kind = np.repeat(np.asarray(kinds, np.int64), [len(r) for r in records]) if records else np.empty(0, np.int64)
    h1 = rec["h1"]
    by_kind = np.argsort(kind, kind="stable")  # index permutations only: one record gather at the end
    cuts = np.searchsorted(kind[by_kind], np.arange(len(KINDS) + 1))
    perm = np.concatenate([idx[np.argsort(h1[idx])] for idx in np.split(by_kind, cuts[1:-1])])
    # bucket is monotone in h1, so a stable sort on (bucket, kind) keeps every group sorted by h1
    code = bucket_of(h1[perm], n_buckets).astype(np.int64) * len(KINDS) + kind[perm]
    perm = perm[np.argsort(code.astype(np.uint16) if code.size and code.max() < 2**16 else code, kind="stable")]
    rec, code = rec[perm], np.sort(code, kind="stable")
    return rec, np.searchsorted(code, np.arange(n_buckets * len(KINDS) + 1)).astype(np.int64)


def write_partitioned(path: str, records: list[np.ndarray], kinds: list[int], n_buckets: int) -> None:
    """One sorted run (`partition_records`) as .npy + its offsets (atomically, offsets last)."""
    rec, offsets = partition_records(records, kinds, n_buckets)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_save_npy(path, rec)
    atomic_save_npy(offsets_path(path), offsets)


def offsets_path(records_path: str) -> str:
    return records_path.rsplit(".", 1)[0] + ".offsets.npy"


# ---------------------------------------------------------------------------------------------------- stage 1


def sign_task(cfg: GlobalDedupConfig, task: int) -> None:
    """Emit the records of stage-A task `task` (ids of every row; dedup keys of kept rows only), as sorted runs of
    `cfg.sign_run_docs` documents appended to one records file; the offsets file has one row of group offsets per
    run. Memory is bounded by a run, whatever the size of the input file."""
    docs_path = intermediate_paths(os.path.join(cfg.work_dir, "docs"), task)[0]
    pf = pq.ParquetFile(docs_path)
    names = set(pf.schema_arrow.names)
    cols = ["doc_id", "file", "line", "status"]
    cols += [c for c, on in (("text_hash", cfg.exact), ("url", cfg.url), ("minhash", cfg.minhash))
             if on and c in names]
    path = cfg.sign_path(task)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    records: list[np.ndarray] = []
    kinds: list[int] = []
    run_offsets: list[np.ndarray] = []
    written = pending_docs = row0 = 0
    with open(tmp, "wb") as out:
        def flush() -> None:
            nonlocal written, pending_docs
            rec, offsets = partition_records(records, kinds, cfg.n_buckets)
            out.write(rec.tobytes())
            run_offsets.append(offsets + written)
            written += len(rec)
            records.clear()
            kinds.clear()
            pending_docs = 0

        for batch in pf.iter_batches(batch_size=min(1 << 14, cfg.sign_run_docs), columns=cols):
            n = batch.num_rows
            keys = (np.int64(task) << np.int64(32)) | np.arange(row0, row0 + n, dtype=np.int64)
            row0 += n
            _sign_batch(batch, cols, keys, records, kinds)
            pending_docs += n
            if pending_docs >= cfg.sign_run_docs:
                flush()
        if pending_docs or not run_offsets:
            flush()
    os.replace(tmp, path)
    atomic_save_npy(offsets_path(path), np.stack(run_offsets))


def _sign_batch(batch: pa.RecordBatch, cols: list[str], keys: np.ndarray, records: list[np.ndarray],
                kinds: list[int]) -> None:
    n = batch.num_rows
    d = {c: batch.column(c).to_pylist() for c in ("doc_id", "file", "line", "status", "url") if c in cols}
    h1, h2 = _hash128(d["doc_id"])
    records.append(_records(h1, h2, keys))
    h1, h2 = _hash128([repaired_doc_id(i, f, ln) for i, f, ln in zip(d["doc_id"], d["file"], d["line"])])
    records.append(_records(h1, h2, ~keys))  # the repaired form of doc k is stored under ~k (< 0)
    kinds += [ID, ID]
    kept = np.array([s == "kept" for s in d["status"]], dtype=bool)
    if "text_hash" in cols:
        th = batch.column("text_hash").fill_null(0).to_numpy(zero_copy_only=False)
        ok = kept & batch.column("text_hash").is_valid().to_numpy(zero_copy_only=False)
        records.append(_records(th[ok].astype(np.int64).view(np.uint64), 0, keys[ok]))
        kinds.append(EXACT)
    if "url" in d:
        sel = [i for i, u in enumerate(d["url"]) if u and kept[i]]
        if sel:
            h1, h2 = _hash128([d["url"][i] for i in sel])
            records.append(_records(h1, h2, keys[sel]))
            kinds.append(URL)
    if "minhash" in cols:
        mh = batch.column("minhash")
        lens = mh.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        lens[~kept] = 0
        if lens.sum():
            starts = mh.offsets.to_numpy()[:-1].astype(np.int64)  # into mh.values, nulls included
            values = mh.values.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64)
            owner = np.repeat(np.arange(n), lens)
            band = np.arange(len(owner)) - np.repeat(np.cumsum(lens) - lens, lens)
            records.append(_records(values[starts[owner] + band], band.astype(np.uint64), keys[owner]))
            kinds.append(BAND)


def exclude_task(cfg: GlobalDedupConfig, index: int) -> None:
    """Hash the doc ids in the segments of build `cfg.exclude[index]` into sorted runs (marker keys)."""
    from pipelines.shards.reader import connect

    prefix = os.path.join(cfg.exclude_dir, f"{index:03d}-")
    for stale in glob.glob(prefix + "*"):  # a previous, killed attempt
        os.remove(stale)
    con = connect(cfg.exclude[index])
    try:
        reader = con.sql("SELECT doc_id FROM segments").to_arrow_reader(1 << 16)
        pending: list[str] = []
        n_runs = 0

        def flush() -> None:
            nonlocal n_runs
            h1, h2 = _hash128(pending)
            rec = np.unique(_records(h1, h2, EXCLUDED_MARK))  # segments repeat ids (copies, windows)
            write_partitioned(f"{prefix}{n_runs:05d}.npy", [rec], [ID], cfg.n_buckets)
            n_runs += 1
            pending.clear()

        for batch in reader:
            pending += [x for x in batch.column(0).to_pylist() if x is not None]
            if len(pending) >= EXCLUDE_RUN_IDS:
                flush()
        if pending:
            flush()
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------------- stage 2


def _sign_files(cfg: GlobalDedupConfig) -> list[str]:
    files = [cfg.sign_path(t) for t in range(cfg.n_tasks)]
    if cfg.exclude:
        files += sorted(glob.glob(os.path.join(cfg.exclude_dir, "*[0-9].npy")))
    return files


class RunFile:
    """A file of sorted record runs, read with `pread` only: a memory map would put the pages around every probe
    (kernel fault-around) into the bucket task's RSS, which would then grow with its bucket."""

    def __init__(self, path: str):
        self.path = path
        self.offset = 0
        if path.endswith(".npy"):  # an exclusion run: a .npy header before the records
            with open(path, "rb") as f:
                np.lib.format.read_magic(f)
                np.lib.format.read_array_header_1_0(f)
                self.offset = f.tell()
        self._fd: int | None = None

    @property
    def fd(self) -> int:
        """Opened on use and closed by `close` after each pass: a bucket task reads one file per input file and
        must not hold thousands of descriptors at once."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def h1_at(self, i: int) -> int:
        return int.from_bytes(os.pread(self.fd, 8, self.offset + i * RECORD.itemsize), "little")

    def read(self, s: int, e: int) -> np.ndarray:
        from pipelines.io import pread_into

        out = np.empty(e - s, RECORD)
        pread_into(self.fd, out, self.offset + s * RECORD.itemsize, self.path)
        return out

    def lower_bound(self, a: int, b: int, value: int) -> int:
        """First index in [a, b) whose h1 >= value (the records of [a, b) are sorted by h1)."""
        while a < b:
            mid = (a + b) // 2
            if self.h1_at(mid) < value:
                a = mid + 1
            else:
                b = mid
        return a

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def load_run_file(cfg: GlobalDedupConfig, path: str, c0: int, c1: int) -> tuple[RunFile, np.ndarray]:
    """(records, offsets[:, c0:c1]) of a file of sorted runs: a sign file (raw records, one offsets row per run) or an
    exclusion run (.npy, one offsets row)."""
    offsets = np.load(offsets_path(path), mmap_mode="r")
    offsets = offsets.reshape(-1, offsets.shape[-1])
    if offsets.shape[1] != cfg.n_buckets * len(KINDS) + 1:
        raise ValueError(f"{path}: written for another bucket count")
    return RunFile(path), np.array(offsets[:, c0:c1])


def group_runs(rec: np.ndarray, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs of equal (h1, h2) with two members or more in sorted `rec`: (run number, key) of each member."""
    n = len(rec)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    h1, h2, key = rec["h1"], rec["h2"], rec["key"]
    new = np.ones(n, bool)
    new[1:] = (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])
    run = np.cumsum(new) - 1
    size = np.bincount(run)
    keep = size[run] >= 2
    if kind == ID:  # a run of other builds' ids only concerns no document of ours
        has_doc = np.bincount(run, weights=(key != EXCLUDED_MARK).astype(np.float64)) > 0
        keep &= has_doc[run]
    return run[keep], key[keep]


def bucket_task(cfg: GlobalDedupConfig, bucket: int) -> None:
    """Groups of bucket `bucket`, each kind sorted and scanned in hash sub-ranges of at most chunk_records."""
    c0 = bucket * len(KINDS)
    files = [load_run_file(cfg, path, c0, c0 + len(KINDS) + 1) for path in _sign_files(cfg)]
    lo_h, hi_h = _bucket_bounds(bucket, cfg.n_buckets)
    out: dict[str, np.ndarray] = {}
    n_runs = 0
    for kind, name in enumerate(KINDS):
        slices = [(rec, int(a), int(b)) for rec, off in files for a, b in zip(off[:, kind], off[:, kind + 1])
                  if b > a]
        total = sum(b - a for _, a, b in slices)
        n_sub = max(1, -(-total // cfg.chunk_records))
        edges = [lo_h + (hi_h - lo_h) * i // n_sub for i in range(n_sub + 1)]
        gids, keys = [], []
        for i in range(n_sub):
            parts = []
            for rec, a, b in slices:
                s = rec.lower_bound(a, b, edges[i]) if i > 0 else a
                e = rec.lower_bound(a, b, edges[i + 1]) if i < n_sub - 1 else b
                if e > s:
                    parts.append(rec.read(s, e))
                rec.close()
            if not parts:
                continue
            chunk = np.concatenate(parts)
            # parts are sorted by h1: a stable (tim)sort merges them; only records whose h1 repeats are sorted
            # further, by (h1, h2, key): those are the few that can form groups
            order = np.argsort(chunk["h1"], kind="stable")
            h1 = chunk["h1"][order]
            same = h1[1:] == h1[:-1]
            cand = np.zeros(len(h1), bool)
            cand[1:] |= same
            cand[:-1] |= same
            chunk = chunk[order[cand]]
            chunk = chunk[np.lexsort((chunk["key"], chunk["h2"], chunk["h1"]))]
            run, key = group_runs(chunk, kind)
            if len(run):
                gids.append((np.int64(bucket) << np.int64(40)) | (run + n_runs))
                keys.append(key)
                n_runs += int(run[-1]) + 1
        out[f"{name}_gid"] = np.concatenate(gids) if gids else np.empty(0, np.int64)
        out[f"{name}_key"] = np.concatenate(keys) if keys else np.empty(0, np.int64)
    path = cfg.groups_path(bucket)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **out)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- stage 3


def _first_of_group(gid: np.ndarray) -> np.ndarray:
    """Mask of the first member of each group in a (gid-contiguous, key-sorted within a group) list."""
    first = np.ones(len(gid), bool)
    first[1:] = gid[1:] != gid[:-1]
    return first


def _roots(gid: np.ndarray) -> np.ndarray:
    """Index of each member's group's first member."""
    first_idx = np.flatnonzero(_first_of_group(gid))
    return first_idx[np.cumsum(_first_of_group(gid)) - 1]


def _group_signatures(gid: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Two order-free 64-bit hashes of each group's member set (equal sets, equal signatures), shape [groups, 2]."""
    from pipelines.text import mix64

    starts = np.flatnonzero(_first_of_group(gid))
    k = key.view(np.uint64)
    with np.errstate(over="ignore"):  # uint64 sums wrap, on purpose
        a = np.add.reduceat(mix64(k ^ np.uint64(0x9E3779B97F4A7C15)), starts)
        b = np.add.reduceat(mix64(k + np.uint64(0x632BE59BD9B4E019)), starts)
    return np.stack([a, b], axis=1)


def unique_groups(gid: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first group (in gid order) of each member set: a near-duplicate pair sharing 15 of 20 bands is
    15 identical groups, and only one of them is worth holding."""
    if len(gid) == 0:
        return gid, key
    sig = _group_signatures(gid, key)
    grp = np.cumsum(_first_of_group(gid)) - 1
    order = np.lexsort((np.arange(len(sig)), sig[:, 1], sig[:, 0]))
    repeat = np.zeros(len(sig), bool)
    repeat[order[1:]] = (sig[order[1:], 0] == sig[order[:-1], 0]) & (sig[order[1:], 1] == sig[order[:-1], 1])
    keep = ~repeat[grp]
    return gid[keep], key[keep]


def _isin_sorted(x: np.ndarray, sorted_arr: np.ndarray) -> np.ndarray:
    if len(sorted_arr) == 0 or len(x) == 0:
        return np.zeros(len(x), bool)
    i = np.searchsorted(sorted_arr, x)
    i[i == len(sorted_arr)] = 0
    return sorted_arr[i] == x


@dataclass
class Clusters:
    """Outcome of the clustering step, keys only (all arrays sorted by key)."""

    dropped: np.ndarray  # keys removed as duplicates
    reason: np.ndarray  # index into DEDUP_REASONS
    survivor: np.ndarray  # key of the cluster's final survivor
    excluded: np.ndarray  # keys whose final id is in an excluded build (filtered to kept docs when written)
    repaired: np.ndarray  # keys whose record id repeats an earlier one
    keys_held: int  # distinct document keys loaded: only those sharing a hash with another record
    band_members_held: int  # (group, key) pairs of MinHash band groups kept after collapsing identical ones
    jaccard: np.ndarray | None = None  # near-dups: estimated Jaccard with the survivor (NaN: not estimated)


DEDUP_REASONS = ("exact-dup", "url-dup", "near-dup")


def load_groups(cfg: GlobalDedupConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every bucket's groups; band groups are collapsed to distinct member sets whenever the not yet collapsed
    part outgrows the collapsed one (amortised: each member is re-examined O(log) times)."""
    parts: dict[str, list] = {k: [] for k in KINDS}
    band, pending = (np.empty(0, np.int64), np.empty(0, np.int64)), []
    for b in range(cfg.n_buckets):
        with np.load(cfg.groups_path(b)) as z:
            for k in KINDS:
                gid, key = z[f"{k}_gid"], z[f"{k}_key"]
                (pending if k == "band" else parts[k]).append((gid, key))
        n_pending = sum(len(g) for g, _ in pending)
        if n_pending and (n_pending >= max(cfg.chunk_records, len(band[0])) or b == cfg.n_buckets - 1):
            band = unique_groups(np.concatenate([band[0]] + [g for g, _ in pending]),
                                 np.concatenate([band[1]] + [x for _, x in pending]))
            pending = []
    out = {k: (np.concatenate([g for g, _ in v]) if v else np.empty(0, np.int64),
               np.concatenate([x for _, x in v]) if v else np.empty(0, np.int64)) for k, v in parts.items()}
    out["band"] = band
    return out


def _drop_members(gid: np.ndarray, key: np.ndarray, gone: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = ~_isin_sorted(key, gone)
    return gid[keep], key[keep]


def first_survives(gid: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dropped keys, their group's first key) in groups where the lowest key survives."""
    if len(gid) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    first = _first_of_group(gid)
    root = key[_roots(gid)]
    return key[~first], root[~first]


def _components(gid: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dropped keys, component's lowest key): documents linked through any shared group form one component."""
    if len(gid) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    roots = key[_roots(gid)]
    return _components_of_edges(roots[roots != key], key[roots != key])


def _components_of_edges(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dropped keys, component's lowest key) of the graph of edges u[i] - v[i]."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(u) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    nodes, inv = np.unique(np.concatenate([u, v]), return_inverse=True)
    n = len(nodes)
    _, label = connected_components(coo_matrix((np.ones(len(u), np.int8), (inv[:len(u)], inv[len(u):])),
                                               shape=(n, n)), directed=False)
    low = np.full(label.max() + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(low, label, nodes)  # nodes are sorted, so the lowest key of a component
    comp_root = low[label]
    return nodes[nodes != comp_root], comp_root[nodes != comp_root]


def candidate_pairs(gid: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (u < v) key pairs proposed by band groups: all pairs of a group up to GROUP_ALL_PAIRS members,
    else the first member with each other one and each member with the next."""
    if len(gid) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    starts = np.flatnonzero(_first_of_group(gid))
    sizes = np.diff(np.append(starts, len(gid)))
    us, vs = [], []
    for m in np.unique(sizes[sizes > 1]).tolist():  # all groups of one size at once: a (groups, m) index matrix
        first = starts[sizes == m][:, None]
        if m <= GROUP_ALL_PAIRS:
            i, j = np.triu_indices(m, 1)
        else:  # star from the first member, and a chain
            i = np.concatenate([np.zeros(m - 1, np.int64), np.arange(1, m - 1)])
            j = np.concatenate([np.arange(1, m), np.arange(2, m)])
        us.append(key[first + i].ravel()), vs.append(key[first + j].ravel())
    if not us:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    u, v = np.concatenate(us), np.concatenate(vs)
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    order = np.lexsort((hi, lo))
    lo, hi = lo[order], hi[order]
    new = np.ones(len(lo), bool)
    new[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[new], hi[new]


class Signatures:
    """The stored MinHash signatures (stage A's `minhash_sig`) of some documents, read task by task."""

    def __init__(self, cfg: GlobalDedupConfig, keys: np.ndarray):
        self.keys = np.unique(keys)
        self.sig: np.ndarray | None = None
        self.known = np.zeros(len(self.keys), bool)
        tasks = self.keys >> 32
        for t in np.unique(tasks).tolist():
            path = intermediate_paths(os.path.join(cfg.work_dir, "docs"), t)[0]
            with pq.ParquetFile(path) as pf:  # (not pq.read_table: its dataset module imports pandas, ~0.4 s)
                if "minhash_sig" not in pf.schema_arrow.names:
                    continue  # intermediates from before signatures were stored: candidates stay unconfirmed
                col = pf.read(columns=["minhash_sig"]).column(0)
            sel = np.flatnonzero(tasks == t)
            col = col.take(pa.array(self.keys[sel] & 0xFFFFFFFF))
            rows, sig = _fixed_width_rows(col.combine_chunks())
            if len(rows):
                if self.sig is None:
                    self.sig = np.zeros((len(self.keys), sig.shape[1]), np.uint32)
                self.sig[sel[rows]] = sig
                self.known[sel[rows]] = True

    def jaccard(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Estimated Jaccard of each pair; NaN where a signature is missing."""
        out = np.full(len(u), np.nan)
        if self.sig is None or len(u) == 0:
            return out
        iu, iv = np.searchsorted(self.keys, u), np.searchsorted(self.keys, v)
        ok = self.known[iu] & self.known[iv]
        out[ok] = (self.sig[iu[ok]] == self.sig[iv[ok]]).mean(axis=1)
        return out


def _fixed_width_rows(col: pa.BinaryArray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the non-empty values, those values as uint32 rows) of a binary column whose non-empty values all
    have one length (MinHash signatures; empty or null: not signed)."""
    offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset:col.offset + len(col) + 1]
    lengths = np.diff(offsets)
    if col.null_count:
        lengths = np.where(col.is_valid().to_numpy(zero_copy_only=False), lengths, 0)
    rows = np.flatnonzero(lengths)
    if len(rows) == 0:
        return rows, np.empty((0, 0), np.uint32)
    width = int(lengths[rows[0]])
    if (lengths[rows] != width).any():
        raise ValueError("MinHash signatures of different lengths in one intermediate")
    data = np.frombuffer(col.buffers()[2], np.uint8)
    return rows, data[offsets[rows][:, None] + np.arange(width)].view(np.uint32)


def _near_dups(cfg: GlobalDedupConfig, gid: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dropped keys, survivor keys, estimated Jaccard with the survivor) of near-duplicate clusters: candidate
    pairs confirmed by their estimated Jaccard when a threshold is configured (unconfirmable pairs, without stored
    signatures, stay linked as before)."""
    if cfg.minhash_threshold is None:
        d, p = _components(gid, key)
        return d, p, np.full(len(d), np.nan)
    u, v = candidate_pairs(gid, key)
    sigs = Signatures(cfg, np.concatenate([u, v]))
    est = sigs.jaccard(u, v)
    keep = np.isnan(est) | (est >= cfg.minhash_threshold)
    d, p = _components_of_edges(u[keep], v[keep])
    return d, p, sigs.jaccard(d, p)


def cluster(cfg: GlobalDedupConfig) -> Clusters:
    g = load_groups(cfg)
    keys_held = len(np.unique(np.concatenate(
        [k[k >= 0] for _, k in g.values()] + [~k[(k < 0) & (k != EXCLUDED_MARK)] for _, k in g.values()])))

    # ids: first raw record of an id keeps it, later raw repeats are repaired
    gid, key = g["id"]
    raw = key >= 0
    repaired = np.unique(key[raw][~_first_of_group(gid[raw])])
    repaired_form = (key < 0) & (key != EXCLUDED_MARK)
    final = (raw & ~_isin_sorted(key, repaired)) | (repaired_form & _isin_sorted(~key, repaired))
    doc = np.where(key >= 0, key, ~key)
    if final.any():
        fg = gid[final]
        clash = fg[1:] == fg[:-1]
        if clash.any():
            j = np.flatnonzero(clash)[0]
            a, b = np.flatnonzero(final)[j:j + 2]
            raise DuplicateIdError(f"documents {describe_key(cfg, int(doc[a]))} and "
                                   f"{describe_key(cfg, int(doc[b]))} have the same id even after repair")
    marked = np.unique(gid[key == EXCLUDED_MARK])
    excluded = np.unique(doc[final & _isin_sorted(gid, marked)])

    # dedup among what is left, in order exact -> url -> near; each step's losers leave the later steps
    gone = excluded
    dropped, parent, reason, jac = [], [], [], []
    for r, name in enumerate(("exact", "url")):
        gid, key = _drop_members(*g[name], gone)
        d, p = first_survives(gid, key)
        dropped.append(d), parent.append(p), reason.append(np.full(len(d), r, np.int8))
        jac.append(np.full(len(d), np.nan))
        gone = np.union1d(gone, d)
    d, p, j = _near_dups(cfg, *_drop_members(*g["band"], gone))
    dropped.append(d), parent.append(p), reason.append(np.full(len(d), 2, np.int8)), jac.append(j)
    dropped_k, parent_k, reason_k = np.concatenate(dropped), np.concatenate(parent), np.concatenate(reason)
    order = np.argsort(dropped_k, kind="stable")
    dropped_k, parent_k, reason_k = dropped_k[order], parent_k[order], reason_k[order]
    jaccard_k = np.concatenate(jac)[order]
    # follow parents to the final survivor (an exact copy's root may have gone as a url- or near-dup)
    survivor = parent_k.copy()
    while True:
        i = np.searchsorted(dropped_k, survivor)
        i[i == len(dropped_k)] = 0
        hop = dropped_k[i] == survivor if len(dropped_k) else np.zeros(0, bool)
        if not hop.any():
            break
        survivor[hop] = parent_k[i[hop]]
    return Clusters(dropped_k, reason_k, survivor, excluded, repaired, keys_held, len(g["band"][0]), jaccard_k)


def describe_key(cfg: GlobalDedupConfig, key: int) -> str:
    task, idx = key >> 32, key & 0xFFFFFFFF
    t = pq.read_table(intermediate_paths(os.path.join(cfg.work_dir, "docs"), task)[0],
                      columns=["doc_id", "file", "line"]).slice(idx, 1).to_pylist()[0]
    return f"{t['file']}:{t['line']} (id {t['doc_id']!r})"


def write_all_decisions(cfg: GlobalDedupConfig, c: Clusters) -> None:
    """One decisions file per stage-A task, written task by task (only that task's rows in memory)."""
    def per_task(keys: np.ndarray) -> np.ndarray:
        return np.searchsorted(keys >> 32, np.arange(cfg.n_tasks + 1))

    cut_d, cut_e, cut_r = per_task(c.dropped), per_task(c.excluded), per_task(c.repaired)
    for t in range(cfg.n_tasks):
        d = slice(cut_d[t], cut_d[t + 1])
        excl = c.excluded[cut_e[t]:cut_e[t + 1]] & 0xFFFFFFFF
        rep = c.repaired[cut_r[t]:cut_r[t + 1]] & 0xFFFFFFFF
        rows: dict[int, dict] = {}
        jac = c.jaccard[d] if c.jaccard is not None else np.full(d.stop - d.start, np.nan)
        for idx, r, s, j in zip((c.dropped[d] & 0xFFFFFFFF).tolist(), c.reason[d].tolist(), c.survivor[d].tolist(),
                                jac.tolist()):
            rows[idx] = {"idx": idx, "reason": DEDUP_REASONS[r], "duplicate_of": s, "doc_id": None,
                         "jaccard": None if j != j else round(j, 4)}
        if len(excl) or len(rep):
            cols = pq.read_table(intermediate_paths(os.path.join(cfg.work_dir, "docs"), t)[0],
                                 columns=["doc_id", "file", "line", "status"])
            status = cols.column("status").take(pa.array(excl)).to_pylist()
            for idx, st in zip(excl.tolist(), status):
                if st == "kept":
                    rows[idx] = {"idx": idx, "reason": "excluded", "duplicate_of": None, "doc_id": None,
                                 "jaccard": None}
            sub = cols.take(pa.array(rep)).to_pydict()
            for idx, i, f, ln in zip(rep.tolist(), sub["doc_id"], sub["file"], sub["line"]):
                row = rows.setdefault(idx, {"idx": idx, "reason": None, "duplicate_of": None, "doc_id": None,
                                            "jaccard": None})
                row["doc_id"] = repaired_doc_id(i, f, ln)
        table = pa.Table.from_pylist(list(rows.values()), schema=DECISIONS_SCHEMA)
        write_decisions(cfg.work_dir, t, table)


def cluster_and_decide(cfg: GlobalDedupConfig) -> Clusters:
    c = cluster(cfg)
    write_all_decisions(cfg, c)
    stats = {"keys_held": c.keys_held, "band_members_held": c.band_members_held, "dropped": len(c.dropped),
             "excluded_candidates": len(c.excluded),
             "repaired": len(c.repaired), "n_buckets": cfg.n_buckets}
    tmp = cfg.stats_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(stats, f)
    os.replace(tmp, cfg.stats_path)
    return c


# ---------------------------------------------------------------------------------------------------- stages


class _GlobalStep(PipelineStep):
    type = "🫂 - DEDUP"

    def __init__(self, cfg: GlobalDedupConfig):
        super().__init__()
        self.cfg = cfg


class SignDocuments(_GlobalStep):
    name = "🫂 id/dedup hashes per file"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        sign_task(self.cfg, rank)
        return iter(())


class HashExcludedIds(_GlobalStep):
    name = "🫂 hash excluded builds' ids"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        exclude_task(self.cfg, rank)
        return iter(())


class GroupBucket(_GlobalStep):
    name = "🫂 group equal hashes per bucket"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        bucket_task(self.cfg, rank)
        return iter(())


class ClusterAndDecide(_GlobalStep):
    name = "🫂 clusters and decisions"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        cluster_and_decide(self.cfg)
        return iter(())


def config_for(ctx) -> GlobalDedupConfig:
    from pipelines.dedup.signatures import DedupConfig

    dc = DedupConfig.from_spec(ctx.spec.dedup) if ctx.spec.dedup is not None else None
    return GlobalDedupConfig(work_dir=ctx.work_dir, n_tasks=len(ctx.tasks), n_buckets=n_buckets_for(len(ctx.tasks)),
                             exact=bool(dc and dc.exact), url=bool(dc and dc.url), minhash=bool(dc and dc.minhash),
                             exclude=tuple(ctx.opts.exclude), sign_run_docs=SIGN_RUN_DOCS,
                             minhash_threshold=dc.verify_threshold if dc else None)


def stages_for(cfg: GlobalDedupConfig) -> list[Stage]:
    """The global stages for a config (also used by bench/scale_dedup.py on synthetic intermediates)."""
    stages = [Stage("dedup_sign", [SignDocuments(cfg)], cfg.n_tasks, kind="per-file",
                    description=f"hash ids and dedup keys of {cfg.n_tasks} files",
                    memory_bytes=512 << 20)]  # one run of SIGN_RUN_DOCS: 0.36 GB measured (bench/scale_dedup.py)
    if cfg.exclude:
        stages.append(Stage("dedup_exclude", [HashExcludedIds(cfg)], len(cfg.exclude), kind="global",
                            description="hash the ids of excluded builds"))
    stages += [
        Stage("dedup_buckets", [GroupBucket(cfg)], cfg.n_buckets, kind="global",
              description=f"group equal hashes in {cfg.n_buckets} buckets",
              memory_bytes=4 * cfg.chunk_records * RECORD.itemsize + (256 << 20)),  # chunk, sort copies, python
        Stage("dedup_clusters", [ClusterAndDecide(cfg)], 1, kind="global",
              description="cluster duplicates, write decisions"),
    ]
    return stages


def global_dedup_stages(ctx) -> list[Stage]:
    """Stages between stage A and stage B: they leave `decisions/NNNNN.parquet` for every stage-A task."""
    if not ctx.tasks:
        return []
    return stages_for(config_for(ctx))
