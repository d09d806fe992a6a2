"""Dataset-specific record schemas rendered as (role, content) turns, for `format:` values beyond the generic four.

Each renderer takes one parsed row and returns its turns, or a skip reason (`missing-text`, `non-string-text`,
`bad-answer-index`) that the reader records as a counted drop. `pipelines.read.formats.to_text` renders the turns the
Instella way (every content stripped + "\\n", assistant turns marked as answers for SFT loss masks).

- `openmathinstruct` — nvidia/OpenMathInstruct-2: `problem` (user), `generated_solution` (assistant).
- `mmlu` — cais/mmlu auxiliary_train: `question`, `choices` (list), `answer` (index); the `auxiliary_train` config
  nests these under a `train` struct, the `all` config has them flat — both are read. The user turn is the question
  followed by one `A. choice` line per choice; the assistant turn is the correct `B. choice` line.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

Turns = list[tuple[str, str]]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _strings(rec: dict, *keys: str) -> list[str] | str:
    values = [rec.get(k) for k in keys]
    if any(v is None for v in values):
        return "missing-text"
    if not all(isinstance(v, str) for v in values):
        return "non-string-text"
    return values


def render_openmathinstruct(rec: dict) -> Turns | str:
    values = _strings(rec, "problem", "generated_solution")
    if isinstance(values, str):
        return values
    problem, solution = values
    return [("user", problem), ("assistant", solution)]


def render_mmlu(rec: dict) -> Turns | str:
    if isinstance(rec.get("train"), dict):  # cais/mmlu `auxiliary_train` config: {"train": {question, choices, ...}}
        rec = rec["train"]
    question, choices, answer = rec.get("question"), rec.get("choices"), rec.get("answer")
    if question is None or choices is None or answer is None:
        return "missing-text"
    if not isinstance(question, str) or not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        return "non-string-text"
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < min(len(choices), len(LETTERS)):
        return "bad-answer-index"
    lines = [f"{LETTERS[i]}. {c.strip()}" for i, c in enumerate(choices)]
    return [("user", question.strip() + "\n" + "\n".join(lines)), ("assistant", lines[answer])]


RENDERERS: dict[str, Callable[[dict[str, Any]], Turns | str]] = {
    "openmathinstruct": render_openmathinstruct,
    "mmlu": render_mmlu,
}
