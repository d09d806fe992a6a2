"""The run report (`DIR/report.json`): problems abstracted, variants emitted, rejections with reasons, tokens."""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.io import atomic_write_text

INSTELLA_TOKENS = 28_500_000  # synthetic GSM8K tokens in Instella's stage 2


def render_text(record: dict) -> str:
    """The text a record becomes in a build: message contents joined by newlines."""
    return "\n".join(m["content"] for m in record["messages"])


class TokenCounter:
    """Counts Instella-tokenizer tokens of rendered records, in batches (tokenizers runs them in parallel)."""

    def __init__(self, tokenizer_path: str | Path | None, batch: int = 2048):
        self.tokenizer = None
        if tokenizer_path is not None and Path(tokenizer_path).is_file():
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.batch = batch
        self.total = 0
        self._pending: list[str] = []

    def add(self, records: list[dict]) -> None:
        if self.tokenizer is None:
            return
        self._pending += [render_text(r) for r in records]
        if len(self._pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.tokenizer is not None and self._pending:
            enc = self.tokenizer.encode_batch(self._pending, add_special_tokens=False)
            self.total += sum(len(e.ids) for e in enc)
        self._pending = []


@dataclass
class Report:
    mode: str
    input: str
    config: dict
    rows: int = 0
    skipped_rows: list[dict] = field(default_factory=list)
    abstracted: int = 0
    with_variants: int = 0
    variants: int = 0
    problem_rejections: Counter = field(default_factory=Counter)
    variant_rejections: Counter = field(default_factory=Counter)
    tokens: int | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        problems = self.rows - len(self.skipped_rows)
        d = {
            "mode": self.mode,
            "input": self.input,
            "config": self.config,
            "rows": self.rows,
            "skipped_rows": self.skipped_rows,
            "problems": problems,
            "problems_abstracted": self.abstracted,
            "abstraction_rate": round(self.abstracted / problems, 4) if problems else 0.0,
            "problems_with_variants": self.with_variants,
            "variants_emitted": self.variants,
            "problems_rejected": dict(self.problem_rejections.most_common()),
            "variants_rejected": dict(self.variant_rejections.most_common()),
            "tokens": self.tokens,
            "seconds": round(self.seconds, 2),
            "problems_per_second": round(problems / self.seconds, 1) if self.seconds else None,
        }
        if self.tokens and self.variants:
            per_variant = self.tokens / self.variants
            per_problem_variant = self.tokens / max(1, self.with_variants) / max(1, self.config.get("variants", 1))
            d["tokens_per_variant"] = round(per_variant, 1)
            d["instella_target_tokens"] = INSTELLA_TOKENS
            d["reaches_instella_target"] = self.tokens >= INSTELLA_TOKENS
            # Variants per problem to ask for to reach the target, assuming yield per request stays as measured.
            d["variants_for_instella_target"] = math.ceil(
                INSTELLA_TOKENS / self.tokens * self.config.get("variants", 1)) if per_problem_variant else None
        d.update(self.extra)
        return d

    def write(self, path: Path) -> dict:
        d = self.to_dict()
        atomic_write_text(path, json.dumps(d, indent=2) + "\n")
        return d
