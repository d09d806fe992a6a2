"""Exact copies decided before tokenization: stage A does not tokenize a document that global dedup is certain to
drop as `exact-dup`.

A cheap pass over the input runs before stage A (only when `dedup.exact` is on, see `copies_enabled`):

1. `copies_sign` (per file): read and sample the file exactly as stage A does (the same steps, so the same rows and
   statuses) and write one record per kept document: the 128-bit hash of its *raw* text and its key
   `(file << 32) | row`, as sorted runs in the layout of `pipelines.dedup.global_stages` (kind EXACT).
2. `copies_buckets` (P tasks): the global dedup bucket step on those records: groups of equal raw texts.
3. `copies_decide` (1 task): in each group, every member but the first (lowest key = first in build order) is a
   copy; writes `copies/NNNNN.npy` per stage-A task: (row, key of the group's first member), sorted by row.

Stage A's `MarkExactCopies` sets `copy_of` on those documents: the tokenizer skips them, the MinHash step skips
them, every other step runs as before (decontamination included: a copy keeps its own `contamination` rows).

Why the result is the build without this pass, byte for byte (shards and manifest): a copy D and the first member
R of its group have the same raw text, R comes first, both are kept after sampling. Decontamination is a function
of the text, so D and R are both contaminated (D is then not tokenized anyway) or both kept. If kept, they share
their exact-dedup key (`fold_exact` of the same text), so in `dedup_clusters` D's exact group has a member before
it and D is dropped as `exact-dup`, with the same `duplicate_of` as before (its group and its members are
unchanged: D still has its exact key). A document dropped at the exact step takes part in no later step (URL,
MinHash), so D's missing MinHash bands change nothing. D's `n_tokens` in the manifest is R's (the same text, the
same tokens), filled in by the documents stage (`copy_token_counts`). Not enabled with `--exclude` (an excluded R
would leave D the survivor) nor with loss masks; chat, MDS and fetched sources take no part (`plain_task`).

Memory: a sign task holds one run of `SIGN_RUN_DOCS` records; bucket tasks are the global dedup ones; the decide
task holds the keys of the copies only (O(copies), as `dedup_clusters` holds the members of duplicate groups).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import xxhash
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from pipelines.dedup.global_stages import (
    EXACT,
    RECORD,
    SIGN_RUN_DOCS,
    GlobalDedupConfig,
    atomic_save_npy,
    bucket_task,
    first_survives,
    load_groups,
    offsets_path,
    partition_records,
)
from pipelines.stages import Stage
from pipelines.steps.intermediate import intermediate_paths

COPIES_DIR = "copies"


@dataclass(frozen=True)
class CopiesConfig:
    """Plain data the copies stages need. `groups` is the global dedup config its bucket step runs with (its files
    under `<work_dir>/copies/`)."""

    work_dir: str  # the build's stage-A work dir
    n_tasks: int
    n_buckets: int
    sign_run_docs: int = SIGN_RUN_DOCS

    @property
    def groups(self) -> GlobalDedupConfig:
        return GlobalDedupConfig(work_dir=os.path.join(self.work_dir, COPIES_DIR), n_tasks=self.n_tasks,
                                 n_buckets=self.n_buckets, exact=True, sign_run_docs=self.sign_run_docs)

    def copies_path(self, task: int) -> str:
        return copies_path(self.work_dir, task)


def copies_path(work_dir: str, task: int) -> str:
    return os.path.join(work_dir, COPIES_DIR, f"{task:05d}.npy")


# ---------------------------------------------------------------------------------------------------- stage 1
class SignRawTexts(PipelineStep):
    """Consumes stage A's read + sample output for file `rank`: the raw-text hash of every kept document, as sorted
    runs (one records file + one offsets row per run, like `dedup_sign`)."""

    name = "🫂 raw-text hashes per file"
    type = "🫂 - DEDUP"

    def __init__(self, cfg: CopiesConfig):
        super().__init__()
        self.cfg = cfg

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        groups = self.cfg.groups
        path = groups.sign_path(rank)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp.{os.getpid()}"
        hashes: list[int] = []  # 128-bit
        keys: list[int] = []
        run_offsets: list[np.ndarray] = []
        written = 0
        with open(tmp, "wb") as out:
            def flush() -> None:
                nonlocal written
                rec = np.empty(len(keys), RECORD)
                rec["h1"] = np.array([x & 0xFFFFFFFFFFFFFFFF for x in hashes], np.uint64)
                rec["h2"] = np.array([x >> 64 for x in hashes], np.uint64)
                rec["key"] = np.array(keys, np.int64)
                part, offsets = partition_records([rec], [EXACT], groups.n_buckets)
                out.write(part.tobytes())
                run_offsets.append(offsets + written)
                written += len(part)
                hashes.clear()
                keys.clear()

            for row, doc in enumerate(data):
                if doc.metadata["status"] == "kept":
                    hashes.append(xxhash.xxh3_128_intdigest(doc.text.encode("utf-8", "surrogatepass")))
                    keys.append((rank << 32) | row)
                    if len(keys) >= self.cfg.sign_run_docs:
                        flush()
            if keys or not run_offsets:
                flush()
        os.replace(tmp, path)
        atomic_save_npy(offsets_path(path), np.stack(run_offsets))
        self.stat_update("signed", value=written)
        return iter(())


# ---------------------------------------------------------------------------------------------------- stages 2, 3
class GroupRawTexts(PipelineStep):
    name = "🫂 group equal raw texts per bucket"
    type = "🫂 - DEDUP"

    def __init__(self, cfg: CopiesConfig):
        super().__init__()
        self.cfg = cfg

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        bucket_task(self.cfg.groups, rank)
        return iter(())


def decide_copies(cfg: CopiesConfig) -> int:
    """Write every task's copies file; returns the number of copies."""
    gid, key = load_groups(cfg.groups)["exact"]
    copy, first = first_survives(gid, key)  # groups list their members by key: the first member is the original
    order = np.argsort(copy, kind="stable")
    copy, first = copy[order], first[order]
    cuts = np.searchsorted(copy >> 32, np.arange(cfg.n_tasks + 1))
    os.makedirs(os.path.join(cfg.work_dir, COPIES_DIR), exist_ok=True)
    for t in range(cfg.n_tasks):
        sel = slice(cuts[t], cuts[t + 1])
        atomic_save_npy(cfg.copies_path(t), np.stack([copy[sel] & 0xFFFFFFFF, first[sel]], axis=1).astype(np.int64))
    return len(copy)


class DecideCopies(PipelineStep):
    name = "🫂 copies per file"
    type = "🫂 - DEDUP"

    def __init__(self, cfg: CopiesConfig):
        super().__init__()
        self.cfg = cfg

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        self.stat_update("copies", value=decide_copies(self.cfg))
        return iter(())


# ---------------------------------------------------------------------------------------------------- stage A
class MarkExactCopies(PipelineStep):
    """Stage-A step after sampling: `copy_of` = the original's key on the documents `copies_decide` found to copy
    an earlier one (kept ones only; the tokenizer and the MinHash step skip them)."""

    name = "🫂 mark exact copies"
    type = "🫂 - DEDUP"

    def __init__(self, work_dir: str):
        super().__init__()
        self.work_dir = work_dir

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        pairs = np.load(copies_path(self.work_dir, rank))
        rows, originals = pairs[:, 0].tolist(), pairs[:, 1].tolist()
        j = 0
        for row, doc in enumerate(data):
            if j < len(rows) and rows[j] == row:
                if doc.metadata["status"] == "kept":
                    doc.metadata["copy_of"] = originals[j]
                    self.stat_update("copies")
                j += 1
            yield doc


# ---------------------------------------------------------------------------------------------------- stage B
def copy_token_counts(work_dir: str, originals: np.ndarray) -> np.ndarray:
    """n_tokens of the documents with keys `originals` (read from their stage-A tables a row group at a time, only
    the row groups that hold one of them)."""
    out = np.zeros(len(originals), np.int64)
    order = np.argsort(originals, kind="stable")
    srt = originals[order]
    tasks = srt >> 32
    for task in np.unique(tasks).tolist():
        sel = np.flatnonzero(tasks == task)
        rows = srt[sel] & 0xFFFFFFFF
        pf = pq.ParquetFile(intermediate_paths(os.path.join(work_dir, "docs"), task)[0])
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        group = np.searchsorted(starts, rows, "right") - 1
        for g in np.unique(group).tolist():
            n_tokens = pf.read_row_group(g, columns=["n_tokens"]).column(0).to_numpy(zero_copy_only=False)
            in_g = group == g
            out[order[sel[in_g]]] = n_tokens[rows[in_g] - starts[g]]
    return out


class OnlyPlainFiles(PipelineStep):
    """Runs `step` for the plain-text files only (`plain_task`); the others (chat, MDS, fetched text) take no part
    in the copies pass: nothing of theirs is read, so none of their documents is a copy or an original."""

    def __init__(self, step: PipelineStep, plain: list[bool]):
        super().__init__()
        self.step, self.plain = step, plain
        self.stats = step.stats
        self.name, self.type = step.name, step.type

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        return self.step.run(data, rank, world_size) if self.plain[rank] else iter(())


def plain_task(task) -> bool:
    """A file whose stage-A text is its records' text as read (not chat-templated, MDS or fetched from elsewhere)."""
    from pipelines.read.registry import EXTRA_FORMATS

    return task.fmt not in EXTRA_FORMATS and task.fetch is None


def copies_stages(cfg: CopiesConfig, read_steps: list[PipelineStep], plain: list[bool]) -> list[Stage]:
    """The stages before stage A. `read_steps`: stage A's read and sample steps (the rows and statuses the copies
    are decided on must be stage A's); `plain`: which tasks take part (`plain_task`)."""
    read_steps = [OnlyPlainFiles(read_steps[0], plain), *read_steps[1:]]
    return [
        Stage("copies_sign", [*read_steps, SignRawTexts(cfg)], cfg.n_tasks, kind="per-file",
              description=f"hash the raw texts of {cfg.n_tasks} files", memory_bytes=256 << 20),
        Stage("copies_buckets", [GroupRawTexts(cfg)], cfg.n_buckets, kind="global",
              description=f"group equal raw texts in {cfg.n_buckets} buckets"),
        Stage("copies_decide", [DecideCopies(cfg)], 1, kind="global", description="exact copies per file"),
    ]


def copies_enabled(dedup: dict | bool | None, exclude: tuple[str, ...], with_mask: bool, tasks: list) -> bool:
    """Whether a build decides exact copies before stage A (see the module docstring for why only these)."""
    from pipelines.dedup.signatures import DedupConfig

    cfg = DedupConfig.from_spec(dedup)
    return bool(cfg and cfg.exact and not cfg.tokenize_after and not exclude and not with_mask
                and any(plain_task(t) for t in tasks))  # tokenize_after: no duplicate is tokenized anyway
