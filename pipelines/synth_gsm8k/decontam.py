"""13-gram overlap with the GSM8K test set (lower-cased `[a-z0-9]+` words), the check stage-2 decontamination does."""
from __future__ import annotations

import json
import re
from pathlib import Path

WORD_RE = re.compile(r"[a-z0-9]+")
N = 13


def ngrams(text: str, n: int = N) -> set[str]:
    words = WORD_RE.findall(text.lower())
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


class NgramIndex:
    """Every word 13-gram of a set of reference texts; `overlaps(text)` is True when `text` shares one."""

    def __init__(self, texts: list[str], n: int = N):
        self.n = n
        self.grams: set[str] = set()
        for t in texts:
            self.grams |= ngrams(t, n)

    @classmethod
    def from_gsm8k(cls, path: str | Path, n: int = N) -> "NgramIndex":
        texts = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    texts.append(row["question"] + "\n" + row["answer"])
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{line_no}: not a GSM8K row ({e})") from e
        return cls(texts, n)

    def overlaps(self, text: str) -> bool:
        return not self.grams.isdisjoint(ngrams(text, self.n))
