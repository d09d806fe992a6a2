"""`concat` packing: cut rows from the global shuffled order, one partition at a time (any partition count gives
the same rows).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep

from pipelines.io import read_json
from pipelines.pack.base import cut_into_rows
from pipelines.pack.layout import ITEM_SCHEMA, StageBLayout
from pipelines.pack.plan import OUTCOME_SCHEMA, PLAN_SCHEMA, write_plan

if TYPE_CHECKING:
    pass




class CutRows(PipelineStep):
    """Partition k: its place in the global concatenation (from every partition's token total), the `--max-tokens`
    cap (whole copies while the running total fits), and its segments cut into global rows.

    A row that straddles two partitions gets its first segments from partition k and the rest from k + 1; both
    compute the same global row, so the writer simply reads the plan parts in order."""

    name = "✂️ cut rows"
    type = "🔢 - TOKENIZER"

    def __init__(self, lay: StageBLayout, seq_len: int, max_tokens: int | None):
        super().__init__()
        self.lay = lay
        self.seq_len = seq_len
        self.max_tokens = max_tokens

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        summaries = [read_json(self.lay.part("partitions", k, "json")) for k in range(self.lay.n_partitions)]
        offset = sum(p["n_tokens"] for p in summaries[:rank])
        items = pq.read_table(self.lay.part("partitions", rank), schema=ITEM_SCHEMA)
        lengths = items["n_tokens"].to_numpy().astype(np.int64)
        if self.lay.by_source:
            self._run_by_source(rank, summaries, items, lengths)
            return iter(())
        ends = offset + np.cumsum(lengths)
        placed = np.ones(len(lengths), bool) if self.max_tokens is None else ends <= self.max_tokens
        capped = items.filter(pa.array(~placed))
        outcome = pa.table({"key": capped["key"], "lost": pa.array(np.ones(capped.num_rows, np.int32)),
                            "reason": pa.array(["max-tokens"] * capped.num_rows, pa.string())}, schema=OUTCOME_SCHEMA)
        items = items.filter(pa.array(placed))
        n_placed = int(lengths[placed].sum())
        keys = items["key"].to_numpy()
        segments, _ = cut_into_rows(keys, items["copy"].to_numpy(), lengths[placed], self.seq_len,
                                    token_offset=offset)
        # segments come out in item order; the piece of each segment tells which item it belongs to
        piece = np.repeat(np.arange(items.num_rows), _pieces_per_item(lengths[placed], offset, self.seq_len))
        plan = pa.table({
            "key": segments["key"].to_arrow(), "copy": segments["copy"].to_arrow(),
            "doc_start": segments["doc_start"].to_arrow(), "row": segments["row"].to_arrow(),
            "start": segments["start"].to_arrow(), "length": segments["length"].to_arrow(),
            "doc_id": items["doc_id"].take(pa.array(piece)), "source": items["source"].take(pa.array(piece)),
            "src": pa.array(items["offset"].to_numpy()[piece] + segments["doc_start"].to_numpy()),
        }, schema=PLAN_SCHEMA)
        write_plan(self.lay, rank, plan, outcome, placed_tokens=n_placed, token_offset=offset)
        return iter(())


    def _run_by_source(self, rank: int, summaries: list[dict], items: pa.Table, lengths: np.ndarray) -> None:
        """By-source rows: the sources' own concatenations one after the other, each starting a row (its last row
        padded), so that no row holds two sources. Source s starts at token Σ_{s' < s} ceil(T_s' / L) · L (T = its
        tokens in all partitions); its items in partition k follow its items in partitions < k."""
        L = self.seq_len
        total: dict[int, int] = {}
        before: dict[int, int] = {}
        for k, p in enumerate(summaries):
            for s, t in p.get("source_tokens", {}).items():
                total[int(s)] = total.get(int(s), 0) + t
                if k < rank:
                    before[int(s)] = before.get(int(s), 0) + t
        start, pos = {}, 0
        for s in sorted(total):
            start[s] = pos
            pos += -(-total[s] // L) * L
        source = items["source"].to_numpy()
        # items are sorted by sort key, whose top bits are the source: one run per source
        cuts = np.flatnonzero(np.diff(source)) + 1
        runs = [(int(a), int(b)) for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(source)]) if b > a]
        ends = np.empty(len(lengths), np.int64)
        for a, b in runs:
            s = int(source[a])
            ends[a:b] = start[s] + before.get(s, 0) + np.cumsum(lengths[a:b])
        placed = np.ones(len(lengths), bool) if self.max_tokens is None else ends <= self.max_tokens
        capped = items.filter(pa.array(~placed))
        outcome = pa.table({"key": capped["key"], "lost": pa.array(np.ones(capped.num_rows, np.int32)),
                            "reason": pa.array(["max-tokens"] * capped.num_rows, pa.string())}, schema=OUTCOME_SCHEMA)
        plans, source_rows = [], {}
        for a, b in runs:
            keep = np.flatnonzero(placed[a:b]) + a
            if not len(keep):
                continue
            s = int(source[a])
            first = int(ends[keep[0]] - lengths[keep[0]])  # the placed items of a run are a prefix of it
            plan = self._plan(items.take(pa.array(keep)), lengths[keep], first)
            plans.append(plan)
            source_rows[s] = [int(pc.min(plan["row"]).as_py()), int(pc.max(plan["row"]).as_py())]
        plan = pa.concat_tables(plans) if plans else PLAN_SCHEMA.empty_table()
        write_plan(self.lay, rank, plan, outcome, placed_tokens=int(lengths[placed].sum()),
                   token_offset=int(ends[0] - lengths[0]) if len(lengths) else 0,
                   extra={"source_rows": {str(s): r for s, r in source_rows.items()}})

    def _plan(self, items: pa.Table, lengths: np.ndarray, offset: int) -> pa.Table:
        """Segments of `items` concatenated from global token `offset`, cut into global rows."""
        segments, _ = cut_into_rows(items["key"].to_numpy(), items["copy"].to_numpy(), lengths, self.seq_len,
                                    token_offset=offset)
        piece = np.repeat(np.arange(items.num_rows), _pieces_per_item(lengths, offset, self.seq_len))
        return pa.table({
            "key": segments["key"].to_arrow(), "copy": segments["copy"].to_arrow(),
            "doc_start": segments["doc_start"].to_arrow(), "row": segments["row"].to_arrow(),
            "start": segments["start"].to_arrow(), "length": segments["length"].to_arrow(),
            "doc_id": items["doc_id"].take(pa.array(piece)), "source": items["source"].take(pa.array(piece)),
            "src": pa.array(items["offset"].to_numpy()[piece] + segments["doc_start"].to_numpy()),
        }, schema=PLAN_SCHEMA)


def _pieces_per_item(lengths: np.ndarray, token_offset: int, seq_len: int) -> np.ndarray:
    ends = np.cumsum(lengths) + token_offset
    begins = ends - lengths
    return (ends - 1) // seq_len - begins // seq_len + 1
