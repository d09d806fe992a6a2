"""`concat` packing: cut rows from the global shuffled order, one partition at a time (any partition count gives
the same rows).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
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
        totals = [read_json(self.lay.part("partitions", k, "json"))["n_tokens"] for k in range(self.lay.n_partitions)]
        offset = sum(totals[:rank])
        items = pq.read_table(self.lay.part("partitions", rank), schema=ITEM_SCHEMA)
        lengths = items["n_tokens"].to_numpy().astype(np.int64)
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


def _pieces_per_item(lengths: np.ndarray, token_offset: int, seq_len: int) -> np.ndarray:
    ends = np.cumsum(lengths) + token_offset
    begins = ends - lengths
    return (ends - 1) // seq_len - begins // seq_len + 1
