"""Pre-tokenized inputs: MDS shards of `input_ids` (ProLong, Instella-Long) as documents of a build.

A source `format: mds` lists `index.json` files (one MDS directory each, e.g.
`hf://datasets/amd/Instella-Long/pretrain-phase-1/**/index.json`) and names, in `options.tokenizer`, the tokenizer
the ids were made with (resolved like the spec's `tokenizer` when the build starts). Every sample holds `input_ids`; when it also holds `indices` (ProLong's packed rows:
uint32 start/end pairs) every [start, end) piece is one document, else the whole sample is (ProLong's
`data_before_packing`: `input_ids`, `length`). Document ids: `<source>/<mds dir>/<shard>:<sample>:<piece>`;
`documents.line` is the 1-based sample number in the MDS directory (all its pieces share it).

Two routes, chosen by comparing the tokenizer files (sha256):

- **import** (same tokenizer as the spec's, e.g. `amd/Instella-Long` with Instella's tokenizer): the piece's ids are
  the document's tokens, unchanged — no EOS is added or removed (the packed data already carries the separators
  its packer wrote), so the shards hold exactly the MDS input's tokens.
- **retokenize** (another tokenizer, e.g. ProLong's Llama-3 `tokenizer.json`): the ids are decoded to text with that
  tokenizer, its special tokens (BOS/EOS of the source tokenizer) skipped, and the text goes through the spec's
  tokenization like any text document (EOS appended).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipelines.errors import SourceFileError
from pipelines.read.formats import Record
from pipelines.read.mds import MDSError, iter_samples


@dataclass(slots=True)
class TokenRecord(Record):
    """A Record with metadata for stage A (`tokens` already made, or nothing extra)."""

    extra: dict = field(default_factory=dict)


@lru_cache(maxsize=8)
def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def mds_route(options: dict) -> str:
    """`import` when the MDS ids come from the build's own tokenizer (same file content), else `retokenize`."""
    return "import" if _sha256(options["tokenizer"]) == _sha256(options["build_tokenizer"]) else "retokenize"


def pieces(sample: dict, ids_key: str, indices_key: str) -> list[np.ndarray]:
    """The documents of one sample: its [start, end) pieces when it has indices, else all its ids."""
    ids = np.asarray(sample[ids_key]).reshape(-1)
    if indices_key not in sample or sample[indices_key] is None:
        return [ids]
    bounds = np.asarray(sample[indices_key], dtype=np.int64).reshape(-1, 2)
    return [ids[a:b] for a, b in bounds]


def iter_mds_records(path: str, source: str, options: dict) -> Iterator[Record]:
    """One Record per document of the MDS directory of `path` (its index.json)."""
    ids_key = options.get("input_ids_key", "input_ids")
    indices_key = options.get("indices_key", "indices")
    route = mds_route(options)
    decoder = None if route == "import" else _tokenizer(options["tokenizer"])
    folder = os.path.basename(os.path.dirname(path)) or "."
    line = 0
    try:
        for shard, i, sample in iter_samples(path):
            line += 1
            if ids_key not in sample:
                yield TokenRecord(line, None, None, "missing-text", f"no column '{ids_key}' in {shard}")
                continue
            for k, ids in enumerate(pieces(sample, ids_key, indices_key)):
                doc_id = f"{source}/{folder}/{shard}:{i}:{k}"
                if len(ids) == 0:
                    yield TokenRecord(line, doc_id, None, "empty-text", f"{shard} sample {i} piece {k}")
                elif decoder is None:
                    yield TokenRecord(line, doc_id, "", extra={"tokens": ids.astype(np.uint32)})
                else:
                    text = decoder.decode(ids.tolist(), skip_special_tokens=True)
                    if not text.strip():
                        yield TokenRecord(line, doc_id, None, "empty-text", f"{shard} sample {i} piece {k}")
                    else:
                        yield TokenRecord(line, doc_id, text)
    except (MDSError, ValueError, OSError) as e:
        if isinstance(e, SourceFileError):
            raise
        raise SourceFileError(f"{path}: cannot read MDS: {e}") from e
