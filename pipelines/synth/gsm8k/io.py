"""Reading GSM8K rows (with counted skips) and writing output shards atomically."""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipelines.io import atomic_write_text

SHARD_PREFIX = "gsm8k-synthetic-"


@dataclass(frozen=True, slots=True)
class Row:
    index: int  # 0-based row of the train file: the `source_index` of every variant made from it
    question: str
    answer: str


@dataclass(frozen=True, slots=True)
class Skip:
    index: int
    line: int
    reason: str


def read_rows(path: str | Path) -> Iterator[Row | Skip]:
    """Rows of a GSM8K JSONL file; a bad line is yielded as a Skip naming its line and why."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            index = line_no - 1
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                yield Skip(index, line_no, f"malformed JSON ({e.__class__.__name__})")
                continue
            if not isinstance(row, dict) or not isinstance(row.get("question"), str) \
                    or not isinstance(row.get("answer"), str):
                yield Skip(index, line_no, "missing string 'question' or 'answer'")
                continue
            yield Row(index, row["question"], row["answer"])


def load_rows(path: str | Path, limit: int | None = None) -> tuple[list[Row], list[Skip]]:
    """The readable rows (first `limit` train rows at most) and the counted skips of a GSM8K JSONL file."""
    rows: list[Row] = []
    skips: list[Skip] = []
    for item in read_rows(path):
        if limit is not None and item.index >= limit:
            break
        (rows if isinstance(item, Row) else skips).append(item)
    return rows, skips


class ShardWriter:
    """Writes records to `DIR/gsm8k-synthetic-00000.jsonl`, ... each file renamed into place when complete.

    Shards of an earlier run in the same folder are removed at `close()`, so the folder always holds one run.
    """

    def __init__(self, out_dir: str | Path, records_per_shard: int = 50_000):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.records_per_shard = records_per_shard
        self.paths: list[Path] = []
        self._buf: list[str] = []

    def write(self, records: Iterable[dict]) -> None:
        for r in records:
            self._buf.append(json.dumps(r, ensure_ascii=False))
            if len(self._buf) >= self.records_per_shard:
                self._flush()

    def _flush(self) -> None:
        path = self.out_dir / f"{SHARD_PREFIX}{len(self.paths):05d}.jsonl"
        atomic_write_text(path, "\n".join(self._buf) + ("\n" if self._buf else ""))
        self.paths.append(path)
        self._buf = []

    def close(self) -> list[Path]:
        if self._buf or not self.paths:
            self._flush()
        keep = {p.name for p in self.paths}
        for old in self.out_dir.glob(f"{SHARD_PREFIX}*.jsonl"):
            if old.name not in keep:
                old.unlink()
        return self.paths
