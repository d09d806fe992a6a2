"""13-gram overlap with the GSM8K test set: the same `fold_words` 13-grams (`pipelines/text.py`) that stage-2
decontamination indexes, so a synthetic row that passes here is not dropped there for the same reason."""
from __future__ import annotations

from pathlib import Path

from pipelines.io import iter_jsonl
from pipelines.text import word_ngram_hashes

N = 13


def ngrams(text: str, n: int = N) -> set[int]:
    """Hashes of the `fold_words` word n-grams of text."""
    return set(word_ngram_hashes(text, n).tolist())


class NgramIndex:
    """Every word 13-gram of a set of reference texts; `overlaps(text)` is True when `text` shares one."""

    def __init__(self, texts: list[str], n: int = N):
        self.n = n
        self.grams: set[int] = set()
        for t in texts:
            self.grams |= ngrams(t, n)

    @classmethod
    def from_gsm8k(cls, path: str | Path, n: int = N) -> "NgramIndex":
        texts = []
        for line_no, row in iter_jsonl(path):
            try:
                texts.append(row["question"] + "\n" + row["answer"])
            except (KeyError, TypeError) as e:
                raise ValueError(f"{path}:{line_no}: not a GSM8K row ({e})") from e
        return cls(texts, n)

    def overlaps(self, text: str) -> bool:
        return not self.grams.isdisjoint(ngrams(text, self.n))
