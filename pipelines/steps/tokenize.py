"""The default tokenization step (HF `tokenizers`, batched) and the worker's tokenizer thread budget.
"""
from __future__ import annotations

import os

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from pipelines import _logging  # noqa: F401  (quiet datatrove console in every worker)


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
