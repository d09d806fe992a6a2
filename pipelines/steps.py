"""Stage A of a build, as datatrove pipeline steps run once per input file (task rank = file index).

read (every record, unreadable ones as `dropped` docs) -> sample by id hash -> [decontaminate] -> [dedup
signatures] -> tokenize -> write intermediates. Documents are never removed from the stream: a step that rejects one
sets `metadata["status"] = "dropped"` and a `reason`, so the manifest can account for every input record.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from pipelines import _logging  # noqa: F401  (quiet datatrove console in every worker)
from pipelines.errors import SourceFileError
from pipelines.formats import iter_records
from pipelines.rowsteps import SELECTED_OUT, row_transform
from pipelines.spec import EXTRA_FORMATS


@dataclass(frozen=True)
class FileTask:
    """One input file of one source; the datatrove task with the same rank processes it."""

    source: str
    path: str  # what is opened (after --source-root mapping)
    display: str  # what the manifest records (the canonical hf:// URI when read from a mirror)
    fmt: str
    text_key: str
    id_key: str
    sample: float
    relative: str = ""  # path relative to the source's root: unique within the source, so default ids never collide
    identity: str = ""  # size/mtime/ETag...: part of the stage-A cache key, so a file changed in place is re-read
    fetch: dict | None = None  # text fetched from elsewhere by a key of the row (pipelines/fetch.py)
    filter: dict | None = None  # keep only rows whose fields have these values (pipelines/rowsteps.py)
    options: dict | None = None  # the source's `options`, for the readers of EXTRA_FORMATS (mds, chat)

    def default_id(self, line: int) -> str:
        """Id of a record without one: `<source>/<path relative to the source root>:<line>`, unique in a build
        (source names are unique, and so are a source's relative paths)."""
        return f"{self.source}/{self.relative or Path(self.path).name}:{line}"


class ReadSourceFile(PipelineStep):
    """Emit one Document per record of file `tasks[rank]`, unreadable records included (status `dropped`)."""

    name = "📖 read source file"
    type = "📖 - READER"

    def __init__(self, tasks: list[FileTask], strict: bool = False):
        super().__init__()
        self.tasks = tasks
        self.strict = strict

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        task = self.tasks[rank]
        if task.fmt in EXTRA_FORMATS:
            from pipelines.extra_formats import read_extra

            records = read_extra(task)
        else:
            rows = row_transform(task.filter, task.fetch, task.text_key, task.id_key)
            records = iter_records(task.path, task.fmt, task.text_key, task.id_key, enrich=rows)
        for rec in records:
            if rec.reason and self.strict and rec.reason not in SELECTED_OUT:  # a filter's choice is no bad input
                raise SourceFileError(f"{task.path}:{rec.line}: {rec.reason} ({rec.detail})")
            doc_id = rec.doc_id if rec.doc_id is not None else task.default_id(rec.line)
            meta = {
                "source": task.source, "file": task.display, "line": rec.line,
                "status": "dropped" if rec.reason else "kept", "reason": rec.reason, "detail": rec.detail,
                "n_chars": len(rec.text) if rec.text else 0, "n_copies": 0 if rec.reason else 1,
                "url": rec.url,
            }
            if rec.answer_spans:
                meta["answer_spans"] = rec.answer_spans
            meta.update(getattr(rec, "extra", None) or {})  # tokens / turns from pipelines.extra_formats readers
            self.stat_update("records")
            if rec.reason:
                self.stat_update(f"dropped:{rec.reason}")
            yield Document(text=rec.text or "", id=doc_id, metadata=meta)


def sample_copies(seed: int, source: str, doc_id: str, rate: float) -> int:
    """Deterministic copies of a document for a sampling rate: floor(rate) plus one more with prob frac(rate)."""
    whole = int(rate)
    frac = rate - whole
    if frac == 0:
        return whole
    h = hashlib.blake2b(f"{seed}\x00{source}\x00{doc_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(h, "little") / 2**64
    return whole + (1 if u < frac else 0)


class SampleByIdHash(PipelineStep):
    """rate < 1 keeps a doc with probability `rate`; rate > 1 repeats it floor/ceil(rate) times (recorded)."""

    name = "🎲 sample by id hash"
    type = "🔻 - FILTER"

    def __init__(self, seed: int, rates: dict[str, float]):
        super().__init__()
        self.seed = seed
        self.rates = rates

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            meta = doc.metadata
            rate = self.rates.get(meta["source"], 1.0)
            if meta["status"] == "kept" and rate != 1.0:
                copies = sample_copies(self.seed, meta["source"], doc.id, rate)
                meta["n_copies"] = copies
                if copies == 0:
                    meta["status"], meta["reason"] = "dropped", "sampled-out"
                    self.stat_update("sampled-out")
            yield doc


def text_tokenizer(tokenizer_path: str, control_ids: tuple[int, ...]):
    """The tokenizer with the builder's own control tokens (EOS, pad: `control_ids`) no longer matched in text, so a
    literal `<|endoftext|>` in a document is BPE-encoded as the text it is instead of becoming a false document
    boundary. Every other added token keeps its id (the PII placeholders `|||EMAIL_ADDRESS|||`, `|||PHONE_NUMBER|||`,
    `|||IP_ADDRESS|||` that Dolma inserted stay single tokens, as in Instella's data). The vocabulary is unchanged, so
    the original tokenizer decodes the ids back to the text."""
    import json

    from tokenizers import Tokenizer

    with open(tokenizer_path, encoding="utf-8") as f:
        config = json.load(f)
    control = set(control_ids)
    config["added_tokens"] = [t for t in config.get("added_tokens") or [] if t["id"] not in control]
    tok = Tokenizer.from_str(json.dumps(config))
    tok.no_truncation()
    tok.no_padding()
    return tok


def limit_tokenizer_threads(threads: int | None) -> None:
    """Size the Rust thread pool of `tokenizers` in this worker before its first batch (it reads the environment
    once). Several local workers that each start a thread per core oversubscribe the machine: 2 workers on 2 cores
    tokenize ~10% faster with one thread each. A user's own RAYON_NUM_THREADS / TOKENIZERS_PARALLELISM wins."""
    if threads is None or "RAYON_NUM_THREADS" in os.environ or "TOKENIZERS_PARALLELISM" in os.environ:
        return
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    if threads == 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"


def worker_threads(executor: str, workers: int, n_tasks: int) -> int | None:
    """Cores per local worker process when several share this machine; None (every core) otherwise."""
    parallel = min(workers, n_tasks)
    if executor != "local" or parallel < 2:
        return None
    return max(1, (os.cpu_count() or 1) // parallel)


class Tokenize(PipelineStep):
    """Tokenize kept docs in batches with HF `tokenizers` (Rust, multi-threaded) and append EOS. The EOS and pad
    strings inside a document are tokenized as text (`text_tokenizer`): only the builder writes those ids."""

    name = "🔢 tokenize"
    type = "🔢 - TOKENIZER"

    def __init__(self, tokenizer_path: str, eos_id: int, batch_size: int = 512, with_offsets: bool = False,
                 pad_id: int | None = None, threads: int | None = None):
        super().__init__()
        self.tokenizer_path = tokenizer_path
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.batch_size = batch_size
        self.with_offsets = with_offsets  # SFT builds need offsets to map answer char spans to tokens
        self.threads = threads  # tokenizer threads in this worker (None: the library's default, every core)
        self._tok = None

    @property
    def tokenizer(self):
        if self._tok is None:
            limit_tokenizer_threads(self.threads)
            control = (self.eos_id,) if self.pad_id is None else (self.eos_id, self.pad_id)
            self._tok = text_tokenizer(self.tokenizer_path, control)
        return self._tok

    def _flush(self, batch: list[Document]) -> None:
        # docs that arrive tokenized (pre-tokenized MDS, SFT chat template) keep their tokens
        kept = [d for d in batch if d.metadata["status"] == "kept" and "tokens" not in d.metadata]
        if not kept:
            return
        texts = [d.text for d in kept]
        if self.with_offsets:
            encs = self.tokenizer.encode_batch(texts, add_special_tokens=False)
            for d, e in zip(kept, encs):
                d.metadata["tokens"] = np.fromiter((*e.ids, self.eos_id), dtype=np.uint32)
                d.metadata["offsets"] = e.offsets
        else:
            encs = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
            for d, e in zip(kept, encs):
                ids = np.empty(len(e.ids) + 1, dtype=np.uint32)
                ids[:-1] = e.ids
                ids[-1] = self.eos_id
                d.metadata["tokens"] = ids
        self.stat_update("tokens", value=sum(len(d.metadata["tokens"]) for d in kept))

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        batch: list[Document] = []
        for doc in data:
            batch.append(doc)
            if len(batch) >= self.batch_size:
                self._flush(batch)
                yield from batch
                batch = []
        self._flush(batch)
        yield from batch


# Columns of the per-file intermediate table (work/<source>/<rank>.docs.parquet). Optional steps add the
# metadata keys listed in EXTRA_COLUMNS; absent ones are written as nulls.
EXTRA_COLUMNS: dict[str, pa.DataType] = {
    "text_hash": pa.int64(),
    "minhash": pa.list_(pa.int64()),
    "url": pa.string(),
    "contamination": pa.list_(pa.struct([("benchmark", pa.string()), ("item_id", pa.string()), ("n_matches", pa.int64())])),
}


def intermediate_paths(work_dir: str, rank: int) -> tuple[str, str, str]:
    base = os.path.join(work_dir, f"{rank:05d}")
    return base + ".docs.parquet", base + ".tokens.bin", base + ".mask.bin"


def answer_mask(tokens_len: int, offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> np.ndarray:
    """1 for tokens whose characters fall inside an answer span (the EOS after an answer counts as answer)."""
    mask = np.zeros(tokens_len, dtype=np.uint8)
    if not spans:
        return mask
    starts = np.array([o[0] for o in offsets], dtype=np.int64)
    for a, b in spans:
        mask[:-1][(starts >= a) & (starts < b)] = 1
    if spans and spans[-1][1] >= (offsets[-1][1] if offsets else 0):
        mask[-1] = 1
    return mask


# every row of the per-file intermediate table, in this order
INTERMEDIATE_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("source", pa.string()), ("file", pa.string()), ("line", pa.int64()),
    ("n_chars", pa.int64()), ("n_tokens", pa.int64()), ("status", pa.string()), ("reason", pa.string()),
    ("detail", pa.string()), ("n_copies", pa.int32()), ("offset", pa.int64()),
    *EXTRA_COLUMNS.items(),
])
INTERMEDIATE_ROW_GROUP = 1 << 14  # rows buffered before they go to parquet: stage A's memory, whatever the file size


class WriteIntermediate(PipelineStep):
    """Stream tokens of this file's kept docs to a flat token file (`token_dtype`: uint16 when the vocabulary fits,
    `pipelines.shards.format.token_dtype`) and every doc's row to parquet in row groups of INTERMEDIATE_ROW_GROUP
    (atomically: all three files appear at the end)."""

    name = "💾 write intermediate"
    type = "💽 - WRITER"

    def __init__(self, work_dir: str, tasks: list[FileTask], with_mask: bool = False, token_dtype: str = "uint32"):
        super().__init__()
        self.work_dir = work_dir
        self.tasks = tasks
        self.with_mask = with_mask
        self.token_dtype = np.dtype(token_dtype)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        os.makedirs(self.work_dir, exist_ok=True)
        docs_path, tok_path, mask_path = intermediate_paths(self.work_dir, rank)
        cols: dict[str, list] = {name: [] for name in INTERMEDIATE_SCHEMA.names}
        offset = 0
        with open(tok_path + ".tmp", "wb") as tok_f, open(mask_path + ".tmp", "wb") as mask_f, \
                pq.ParquetWriter(docs_path + ".tmp", INTERMEDIATE_SCHEMA) as rows_f:
            def flush() -> None:
                rows_f.write_table(pa.table(cols, schema=INTERMEDIATE_SCHEMA))
                for values in cols.values():
                    values.clear()

            for doc in data:
                m = doc.metadata
                tokens = m.pop("tokens", None)
                n = 0 if tokens is None else len(tokens)
                if tokens is not None:
                    tok_f.write(tokens.astype(self.token_dtype, copy=False).tobytes())
                    if self.with_mask:
                        mask = m.pop("mask", None)  # a step that builds its own loss mask (SFT chat template)
                        if mask is None:
                            mask = answer_mask(n, m.pop("offsets", []), m.get("answer_spans", []))
                        mask_f.write(mask.tobytes())
                for k, v in (("doc_id", doc.id), ("source", m["source"]), ("file", m["file"]), ("line", m["line"]),
                             ("n_chars", m["n_chars"]), ("n_tokens", n if tokens is not None else None),
                             ("status", m["status"]), ("reason", m["reason"]), ("detail", m.get("detail", "")),
                             ("n_copies", m["n_copies"] if m["status"] == "kept" else 0), ("offset", offset)):
                    cols[k].append(v)
                for k in EXTRA_COLUMNS:
                    cols[k].append(m.get(k))
                offset += n
                if len(cols["doc_id"]) >= INTERMEDIATE_ROW_GROUP:
                    flush()
                yield doc
            if cols["doc_id"]:
                flush()
        # tokens first, the parquet last: a parquet present means this file's intermediates are complete
        os.replace(tok_path + ".tmp", tok_path)
        os.replace(mask_path + ".tmp", mask_path)
        os.replace(docs_path + ".tmp", docs_path)
