"""Tokenize after the global dedup (spec `dedup: {tokenize_after: true}`): duplicates are never tokenized.

Exact copies can be found before stage A from raw-text hashes (`pipelines.dedup.copies`). Near duplicates cannot:
whether one is dropped depends on decontamination, on the exact and URL steps and on verified Jaccard estimates,
all decided in `dedup_clusters`. With `tokenize_after`, stage A does everything but tokenize (its intermediate rows
carry null `n_tokens` and its token file is empty), the global dedup stages run unchanged on those rows, and then
`late_tokens` (one task per input file) reads and samples the file again with stage A's own read steps, tokenizes
only the kept documents that no decision dropped, and rewrites that file's intermediates with their tokens.

Why the shards are the same bytes as without the option: the same documents are kept (decisions come from the same
columns), each kept document gets the tokens stage A would have given it (the same tokenization step on the same
text), and stage B reads a document's tokens by its (offset, n_tokens), never by position in the token file. The
re-read is checked row by row against the stage-A ids: an input that changed in between stops the build naming the
file. What differs: a dropped duplicate's `n_tokens` is null in the manifest (it was never tokenized), and the copies
pass does not run (an exact copy is no longer tokenized either).

Only for builds whose files are all plain text (`plain_task`) without loss masks: chat templates, MDS rows and
fetched text are tokenized where they are read.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from pipelines.dedup.decisions import read_decisions
from pipelines.errors import InputError, SpecError
from pipelines.stages import Stage
from pipelines.steps.intermediate import intermediate_paths


def tokenize_after(dedup: dict | bool | None) -> bool:
    """Whether a spec's `dedup:` asks to tokenize after the global dedup."""
    from pipelines.dedup.signatures import DedupConfig

    cfg = DedupConfig.from_spec(dedup)
    return bool(cfg and cfg.tokenize_after)


def check_tokenize_after(spec, tasks: list, with_mask: bool) -> None:
    """SpecError when `dedup.tokenize_after` is set on a build that cannot tokenize after dedup."""
    if not tokenize_after(spec.dedup):
        return
    from pipelines.dedup.copies import plain_task

    where = f"{spec.path}: dedup.tokenize_after"
    if with_mask:
        raise SpecError(f"{where} does not combine with loss masks (packing.loss_mask): their tokens come with the "
                        "chat template, where the records are read")
    other = sorted({t.source for t in tasks if not plain_task(t)})
    if other:
        raise SpecError(f"{where} needs plain-text sources; {other} are chat, preference, MDS or fetched sources, "
                        "which are tokenized where they are read")


class TokenizeSurvivors(PipelineStep):
    """Consumes stage A's read + sample output for file `rank` (every row, in stage A's order) and gives tokens to the
    kept rows that no decision dropped: the token file and the `n_tokens`/`offset` columns of the file's intermediate
    are rewritten, a row group at a time (atomically: tokens first, the parquet last)."""

    name = "🔢 tokenize survivors"
    type = "🔢 - TOKENIZER"

    def __init__(self, work_dir: str, tokenize: PipelineStep, token_dtype: str):
        super().__init__()
        self.work_dir = work_dir
        self.tokenize = tokenize  # stage A's tokenization step (its `run` batches and tokenizes kept documents)
        self.token_dtype = np.dtype(token_dtype)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs_path, tok_path, _ = intermediate_paths(os.path.join(self.work_dir, "docs"), rank)
        dec = read_decisions(self.work_dir, rank)
        dropped = np.sort(dec.filter(pc.is_valid(dec["reason"]))["idx"].to_numpy())
        stream = iter(data)
        offset = row0 = 0
        pf = pq.ParquetFile(docs_path)
        tok_tmp, docs_tmp = f"{tok_path}.tmp.{os.getpid()}", f"{docs_path}.tmp.{os.getpid()}"
        with open(tok_tmp, "wb") as tok_f, pq.ParquetWriter(docs_tmp, pf.schema_arrow) as rows_f:
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g)
                docs = self._next_docs(stream, table["doc_id"].to_pylist(), rank, row0)
                rows = np.arange(row0, row0 + table.num_rows)
                need = (table["status"].to_numpy(zero_copy_only=False) == "kept") & ~np.isin(rows, dropped)
                tokenized = {id(d): d.metadata.pop("tokens")
                             for d in self.tokenize.run(iter([d for d, n in zip(docs, need) if n]))}
                n_tokens: list[int | None] = []
                offsets: list[int] = []
                for d, n in zip(docs, need):
                    offsets.append(offset)
                    if not n:
                        n_tokens.append(None)
                        continue
                    tokens = tokenized[id(d)]
                    tok_f.write(tokens.astype(self.token_dtype, copy=False).tobytes())
                    n_tokens.append(len(tokens))
                    offset += len(tokens)
                self.stat_update("tokenized", value=int(need.sum()))
                self.stat_update("skipped", value=int(len(need) - need.sum()))
                for name, values in (("n_tokens", n_tokens), ("offset", offsets)):
                    table = table.set_column(table.column_names.index(name), name, pa.array(values, pa.int64()))
                rows_f.write_table(table)
                row0 += table.num_rows
        if next(stream, None) is not None:
            raise InputError(f"{self._file(rank)}: holds more documents than when stage A read it ({row0}); the "
                             "input changed during the build, run it again")
        self.stat_update("tokens", value=offset)
        os.replace(tok_tmp, tok_path)
        os.replace(docs_tmp, docs_path)
        return iter(())

    def _next_docs(self, stream: Iterator[Document], ids: list[str], rank: int, row0: int) -> list[Document]:
        docs = []
        for i, doc_id in enumerate(ids):
            doc = next(stream, None)
            if doc is None or doc.id != doc_id:
                raise InputError(f"{self._file(rank)}: row {row0 + i} is {None if doc is None else doc.id!r} now but "
                                 f"{doc_id!r} when stage A read it; the input changed during the build, run it again")
            docs.append(doc)
        return docs

    def _file(self, rank: int) -> str:
        pf = pq.ParquetFile(intermediate_paths(os.path.join(self.work_dir, "docs"), rank)[0])
        return pf.read_row_group(0, columns=["file"])["file"][0].as_py() if pf.num_row_groups else f"task {rank}"


def late_tokens_stage(work_dir: str, read_steps: list[PipelineStep], tokenize: PipelineStep, token_dtype: str,
                      n_tasks: int) -> Stage:
    """The per-file stage between the global dedup decisions and stage B (`read_steps`: stage A's own)."""
    return Stage("late_tokens", [*read_steps, TokenizeSurvivors(work_dir, tokenize, token_dtype)], n_tasks,
                 kind="per-file", description=f"tokenize what dedup kept in {n_tasks} files")
