"""The holdout stage of a build: choose the held-out documents (pipelines/pack/holdout.py) and write their files.

One task. Per source S with held-out documents, into OUT/holdout.next/ (swapped in with the shards,
pipelines/shards/swap.py):
    S.npy          1-D array in the build's token dtype: each held-out document's tokens followed by EOS (appended
                   when its ids do not end with it), concatenated in key order (= build order)
    S.idx.parquet  doc_id, start, length (tokens incl. EOS), n_chars, n_bytes — one row per document, in that order
and the stage-B parts the rest of the build reads: the chosen keys (the pack stage leaves them out of every row, the
manifest marks them `holdout`) and the rows of the manifest's `holdout` table (written last: the stage is done).
Memory: at most 2 x max_docs candidates per source, and one document's tokens at a time.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep

from pipelines import _logging  # noqa: F401  (quiet datatrove console in every worker)
from pipelines.io import read_json, write_json, write_parquet
from pipelines.pack.holdout import CANDIDATE_SCHEMA, HELD_OUT_SCHEMA, HoldoutConfig, held_out_path, smallest_per_source
from pipelines.pack.layout import StageBLayout
from pipelines.shards.format import HOLDOUT_DIR, HOLDOUT_INDEX_SCHEMA, holdout_index_name, holdout_name, token_dtype
from pipelines.shards.writer import StreamedNpy, TokenFiles

if TYPE_CHECKING:
    from pipelines.build.context import BuildContext


def next_holdout_dir(out: str | Path) -> Path:
    return Path(out) / (HOLDOUT_DIR + ".next")


def holdout_rows_path(lay: StageBLayout) -> str:
    return lay.part("holdout", 0, "json")


def holdout_rows(lay: StageBLayout) -> list[dict]:
    """The manifest's `holdout` table rows (source, path, n_docs, n_tokens, n_bytes, sha256)."""
    return read_json(holdout_rows_path(lay))


class WriteHoldout(PipelineStep):
    """Choose the held-out documents of every source and write their files (module docstring)."""

    name = "🧪 held-out documents"
    type = "💽 - WRITER"

    def __init__(self, ctx: BuildContext, lay: StageBLayout, cfg: HoldoutConfig):
        super().__init__()
        self.lay, self.cfg = lay, cfg
        self.eos_id = ctx.eos_id
        self.dtype = token_dtype(ctx.vocab_size)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        lay = self.lay
        chosen = CANDIDATE_SCHEMA.empty_table()
        for t in range(lay.n_tasks):  # pruned after every part
            part = pq.read_table(lay.part("holdout_candidates", t), schema=CANDIDATE_SCHEMA)
            chosen = smallest_per_source(pa.concat_tables([chosen, part]), self.cfg.max_docs)
        chosen = chosen.sort_by([("source", "ascending"), ("key", "ascending")])
        folder = next_holdout_dir(lay.out)
        shutil.rmtree(folder, ignore_errors=True)  # leftovers of a failed run
        folder.mkdir(parents=True)
        files = TokenFiles(lay.work_dir, self.dtype, with_mask=False)
        rows = []
        try:
            for source in sorted(set(chosen["source"].to_pylist())):
                docs = chosen.filter(pc.equal(chosen["source"], source))
                rows.append(self._write_source(folder, source, docs, files))
                self.stat_update("held-out documents", value=docs.num_rows)
        finally:
            files.close()
        write_parquet(held_out_path(lay), chosen.select(HELD_OUT_SCHEMA.names).cast(HELD_OUT_SCHEMA))
        write_json(holdout_rows_path(lay), rows)
        return iter(())

    def _write_source(self, folder: Path, source: str, docs: pa.Table, files: TokenFiles) -> dict:
        keys, offsets = docs["key"].to_numpy(), docs["offset"].to_numpy()
        n_tokens = docs["n_tokens"].to_numpy().astype(np.int64)
        last = np.zeros(1, self.dtype)
        needs_eos = np.ones(len(keys), dtype=np.int64)
        for i, (key, off, n) in enumerate(zip(keys.tolist(), offsets.tolist(), n_tokens.tolist())):
            if n:  # pre-tokenized ids (MDS) or dolma's rule may leave a document without a final EOS
                files.read_into(key >> 32, off + n - 1, last, None)
                needs_eos[i] = int(last[0]) != self.eos_id
        lengths = n_tokens + needs_eos
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        npy = StreamedNpy(folder / holdout_name(source), self.dtype, (int(lengths.sum()),))
        for key, off, n, eos in zip(keys.tolist(), offsets.tolist(), n_tokens.tolist(), needs_eos.tolist()):
            buf = np.empty(n + eos, self.dtype)
            if n:
                files.read_into(key >> 32, off, buf[:n], None)
            if eos:
                buf[n] = self.eos_id
            npy.write(buf)
        sha = npy.close()
        index = pa.table({"doc_id": docs["doc_id"], "start": pa.array(starts, pa.int64()),
                          "length": pa.array(lengths, pa.int64()), "n_chars": docs["n_chars"],
                          "n_bytes": docs["n_bytes"]}, schema=HOLDOUT_INDEX_SCHEMA)
        write_parquet(str(folder / holdout_index_name(source)), index)
        n_bytes = pc.sum(docs["n_bytes"]).as_py()
        return {"source": source, "path": f"{HOLDOUT_DIR}/{holdout_name(source)}", "n_docs": docs.num_rows,
                "n_tokens": int(lengths.sum()), "n_bytes": None if n_bytes is None else int(n_bytes), "sha256": sha}
