"""Where the global stages' intermediate files live (`StageBLayout`), the pack-item schema and the global
shuffled order (`sort_keys`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines import _logging  # noqa: F401  (quiet datatrove console in every worker)
from pipelines.io import file_size
from pipelines.shards.format import SHARDS_DIR

ITEMS_PER_PARTITION = 500_000  # pack items one concat partition task sorts and cuts (~200 B each in memory)
BYTES_PER_DOC_GUESS = 300  # input bytes per document, to size the partitions before anything is read


@dataclass(frozen=True)
class StageBLayout:
    """Where stage B's intermediate files live, and how many tasks each stage has."""

    work_dir: str  # the stage-A work dir (its decisions/ folder is the global dedup stages' output)
    out: str
    n_tasks: int  # stage-A tasks
    n_partitions: int  # pack partitions (ranges of the items' sort keys), each with its plan part
    n_writers: int
    concat: bool
    by_source: bool = False  # concat rows never mix sources (spec `packing.by_source`)
    holdout: bool = False  # documents are held out (spec `holdout:`), chosen by the holdout stage

    @property
    def root(self) -> str:
        return os.path.join(self.work_dir, "stage_b")

    def part(self, kind: str, rank: int, ext: str = "parquet") -> str:
        return os.path.join(self.root, kind, f"{rank:05d}.{ext}")

    @property
    def n_plan_parts(self) -> int:
        return self.n_partitions

    @property
    def next_shards(self) -> str:
        """New shards are written here; `shards/` keeps the previous build until the swap."""
        return os.path.join(self.out, SHARDS_DIR + ".next")


def plan_layout(ctx: Any) -> StageBLayout:  # ctx: pipelines.build.context.BuildContext (built above this layer)
    """Task counts from the input size (+ at least --workers so a local run is parallel); outputs never depend
    on them."""
    total_bytes = sum(file_size(t.path) or 0 for t in ctx.tasks)
    guess_docs = total_bytes // BYTES_PER_DOC_GUESS
    by_size = max(1, math.ceil(guess_docs / ITEMS_PER_PARTITION))
    concat = ctx.spec.packing.get("mode", "concat") == "concat"
    # concat rows are cut from one global order, so any partition count gives the same rows (use the workers); the
    # other packers pack each partition on its own, so their partition count must come from the data alone
    partitions = max(ctx.opts.workers, by_size) if concat else by_size
    return StageBLayout(work_dir=ctx.work_dir, out=str(ctx.out), n_tasks=len(ctx.tasks),
                        n_partitions=min(partitions, 4096), n_writers=min(max(partitions, ctx.opts.workers), 4096),
                        concat=concat, by_source=concat and bool(ctx.spec.packing.get("by_source", False)),
                        holdout=ctx.spec.holdout is not None)


# Pack items: one row per document copy (concat) or per document (long / sft), lengths and addresses only.
ITEM_SCHEMA = pa.schema([
    ("sort_key", pa.uint64()),   # concat: position in the global shuffled order; else the key
    ("key", pa.int64()),
    ("copy", pa.int32()),        # concat: the copy; long / sft: -1 (n_copies says how many)
    ("n_copies", pa.int32()),
    ("n_tokens", pa.int64()),
    ("offset", pa.int64()),      # first token of the document in its task's tokens file
    ("source", pa.int32()),      # index into ctx.sources
    ("doc_id", pa.string()),
    ("line", pa.int64()),        # line / row / sample in its input file (mds-rows keeps an MDS sample's documents together)
])


SOURCE_BITS = 16  # by-source packing: the source index in the top bits of the sort key (up to 65,536 sources)


def by_source_keys(sort_key: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Sort keys that order the items source by source (source index first), each source in its own shuffled order:
    concatenated, every source's tokens are contiguous."""
    shift = np.uint64(64 - SOURCE_BITS)
    return (source.astype(np.uint64) << shift) | (sort_key.astype(np.uint64) >> np.uint64(SOURCE_BITS))


def sort_keys(seed: int, keys: np.ndarray, copies: np.ndarray) -> np.ndarray:
    """A uniform 64-bit position per (key, copy) from the seed (splitmix64): the global shuffled order."""
    with np.errstate(over="ignore"):
        x = (keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (copies.astype(np.uint64) << np.uint64(40))
        x ^= np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0xD1B54A32D192ED03)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x
