"""`mds-rows` packing (spec `packing: {mode: mds-rows}`): rows of already-packed MDS inputs, kept as they were.

With the import route of pipelines/read/mds_source.py (the MDS ids come from the build's own tokenizer), every sample of an
MDS shard (e.g. one 64K row of `amd/Instella-Long`) becomes one row again: its [start, end) documents in their
order, from offset 0, in the order of the shards — so the build's shards hold exactly the rows Instella-Long trained
on. A sample shorter than seq_len is padded with the pad id; one longer than seq_len is an error naming the file
(the spec's seq_len must match the data). A document repeated by `sample` repeats its whole row.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from pipelines.errors import SpecError
from pipelines.pack.base import DROPPED_SCHEMA, SEGMENT_SCHEMA, PackInput, PackResult


class RowTooLongError(SpecError):
    """A pre-packed row does not fit the spec's seq_len (fix `seq_len` or the source)."""


def pack_mds_rows(inp: PackInput) -> PackResult:
    docs = inp.docs.sort("key")
    groups = docs.group_by(["file", "line"], maintain_order=True).agg("key", "n_tokens", "n_copies")
    keys, copies, rows, starts, lengths = [], [], [], [], []
    row = 0
    max_rows = inp.max_tokens // inp.seq_len if inp.max_tokens else None
    placed: dict[int, int] = {}  # key -> copies written
    for file, line, g_keys, g_len, g_copies in groups.iter_rows():
        total = int(sum(g_len))
        if total > inp.seq_len:
            raise RowTooLongError(f"{file}: sample {line} holds {total} tokens, more than seq_len {inp.seq_len}")
        for c in range(max(g_copies)):
            if max_rows is not None and row >= max_rows:
                break
            pos = 0
            for k, n, nc in zip(g_keys, g_len, g_copies):
                if c < nc:
                    keys.append(k), copies.append(c), rows.append(row), starts.append(pos), lengths.append(n)
                    placed[k] = placed.get(k, 0) + 1
                    pos += n
            row += 1
    segments = pl.DataFrame({"key": keys, "copy": copies, "doc_start": np.zeros(len(keys), np.int64), "row": rows,
                             "start": starts, "length": lengths}, schema=SEGMENT_SCHEMA)
    left = [k for k in docs["key"].to_list() if k not in placed]
    dropped = pl.DataFrame({"key": left, "reason": ["max-tokens"] * len(left)}, schema=DROPPED_SCHEMA)
    asked = dict(zip(docs["key"].to_list(), docs["n_copies"].to_list()))
    fewer = {k: n for k, n in placed.items() if n != asked[k]}
    copies = pl.DataFrame({"key": list(fewer), "n_copies": list(fewer.values())},
                          schema={"key": pl.Int64, "n_copies": pl.Int32}) if fewer else None
    return PackResult(segments=segments, n_rows=row, dropped=dropped, copies=copies)
