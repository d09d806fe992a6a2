"""Former home of the word normalisation and hashing; everything now lives in `pipelines.text` (the one
normalisation and n-gram module). These names stay importable for existing callers."""
from __future__ import annotations

from pipelines.text import (  # noqa: F401  (re-exports)
    fold_words as normalize_bytes,
    hashes_at,
    length_salts,
    mix64,
    ngram_hashes,
    ngram_ipow,
    ngram_prefix,
    sequence_hash,
    word_hashes as word_hashes_normalized,
    words_and_labels,
)


def normalize(text: str) -> str:
    """`pipelines.text.fold_words` as a str: lower-case letter/digit words separated by single spaces."""
    return normalize_bytes(text).decode("utf-8")
