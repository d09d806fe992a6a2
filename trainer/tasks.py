"""Downstream tasks for in-loop evaluation: benchmark rows -> (context, continuation) requests, as lm-eval builds them.

A benchmark file is gzipped (or plain) JSONL in the mirror's unified schema (../shared/data/README.md, section 2):
`{"id", "question", "choices": [str] | null, "answer": str, "meta": {...}}`. `--eval-tasks` names a file of
`$MIDTRAIN_SHARED/benchmarks/` (`arc_easy`) or gives a path to any JSONL in that shape.

Requests follow lm-evaluation-harness 0.4 (lm_eval/tasks/<task>/*.yaml), so in-loop numbers are lm-eval's numbers:
- arc_easy / arc_challenge (and any other multiple-choice file): context `Question: {question}\nAnswer:`,
  continuation ` {choice}` (target_delimiter " ");
- hellaswag: `preprocess(activity_label + ": " + ctx)`, continuations ` preprocess(ending)` (lm_eval/tasks/hellaswag/
  utils.py; our file keeps HF's `ctx`, whose `ctx_b` lm-eval would capitalise: the one textual difference);
- mmlu: lm-eval's `mmlu` (default, zero-shot): description `The following are multiple choice questions (with
  answers) about {subject}.\n\n`, then `{question}\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer:`, continuations ` A`..` D`;
- boolq: `{passage}\nQuestion: {question}?\nAnswer:`, continuations ` no` / ` yes`;
- gsm8k: bits per byte of the gold solution (OLMo's `gsm8k gold_bpb` for small models): context
  `Question: {question}\nAnswer:`, continuation ` {answer}`.

Scores: multiple choice gives `acc` (argmax of the summed continuation log-likelihood) and `acc_norm` (argmax of the
log-likelihood divided by the choice's length in characters, lm-eval's `acc_norm`); every task gives `bpb` of the
gold continuation (-Σ log p / (ln 2 · UTF-8 bytes of the continuation), summed over items before dividing).

Tokenisation is lm-eval's `_encode_pair`: trailing spaces move from the context to the continuation, the whole string
is encoded once and split after the context's own encoding, no BOS is added (our export's tokenizer_config says
`add_bos_token: false`); an empty context is replaced by the prefix token (EOS, which is also the export's BOS).
"""
from __future__ import annotations

import gzip
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

LN2 = math.log(2)


@dataclass(frozen=True)
class Request:
    """One log-likelihood query: score `continuation` after `context` (both text, lm-eval's `Instance.args`)."""

    context: str
    continuation: str


@dataclass(frozen=True)
class Item:
    """One benchmark row: its requests (one per choice, or one gold continuation) and the index of the gold one."""

    id: str
    requests: tuple[Request, ...]
    gold: int
    multiple_choice: bool


# ------------------------------------------------------------------------------------------------ formats


def _hellaswag_preprocess(text: str) -> str:
    """lm_eval/tasks/hellaswag/utils.py `preprocess`."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _gold_index(row: dict) -> int:
    meta = row.get("meta") or {}
    for key in ("gold_index", "answer_index", "label"):
        if isinstance(meta.get(key), int):
            return int(meta[key])
    return list(row["choices"]).index(row["answer"])


def _mc(row: dict, context: str, choices: list[str]) -> Item:
    return Item(str(row["id"]), tuple(Request(context, " " + c) for c in choices), _gold_index(row), True)


def format_arc(row: dict) -> Item:
    return _mc(row, f"Question: {row['question']}\nAnswer:", list(row["choices"]))


def format_hellaswag(row: dict) -> Item:
    label = (row.get("meta") or {}).get("activity_label", "")
    context = _hellaswag_preprocess(f"{label}: {row['question']}" if label else row["question"])
    return _mc(row, context, [_hellaswag_preprocess(c) for c in row["choices"]])


def format_mmlu(row: dict) -> Item:
    subject = str((row.get("meta") or {}).get("subject", "")).replace("_", " ")
    letters = "ABCD"[:len(row["choices"])]
    lines = [row["question"].strip()] + [f"{k}. {c}" for k, c in zip(letters, row["choices"])]
    context = f"The following are multiple choice questions (with answers) about {subject}.\n\n" + \
        "\n".join(lines) + "\nAnswer:"
    return Item(str(row["id"]), tuple(Request(context, " " + k) for k in letters), _gold_index(row), True)


def format_boolq(row: dict) -> Item:
    passage = (row.get("meta") or {}).get("passage", "")
    context = f"{passage}\nQuestion: {row['question']}?\nAnswer:"
    gold = ["no", "yes"].index(str(row["answer"]).strip().lower())
    return Item(str(row["id"]), (Request(context, " no"), Request(context, " yes")), gold, True)


def format_gold(row: dict) -> Item:
    """A generative task (gsm8k, or any row without choices): one request, the gold answer as continuation."""
    return Item(str(row["id"]), (Request(f"Question: {row['question']}\nAnswer:", " " + str(row["answer"])),), 0,
                False)


FORMATS = {"arc_easy": format_arc, "arc_challenge": format_arc, "hellaswag": format_hellaswag,
           "mmlu": format_mmlu, "boolq": format_boolq, "gsm8k": format_gold}


def format_row(task: str, row: dict) -> Item:
    """The lm-eval request of `row`; files of other names: multiple choice as ARC, else the gold continuation."""
    if task in FORMATS:
        return FORMATS[task](row)
    return format_arc(row) if row.get("choices") else format_gold(row)


# ------------------------------------------------------------------------------------------------ loading


def benchmarks_dir() -> Path:
    root = os.environ.get("MIDTRAIN_SHARED")
    base = Path(root) if root else Path(__file__).resolve().parents[2] / "shared" / "data"
    return base / "benchmarks"


def resolve_task(spec: str) -> tuple[str, Path]:
    """`arc_easy` -> (arc_easy, $MIDTRAIN_SHARED/benchmarks/arc_easy.jsonl.gz); a path -> (its stem, path)."""
    path = Path(spec)
    if path.suffix in (".jsonl", ".gz") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"--eval-tasks: no such file {spec}")
        name = path.name.removesuffix(".gz").removesuffix(".jsonl")
        return name, path
    for candidate in (benchmarks_dir() / f"{spec}.jsonl.gz", benchmarks_dir() / f"{spec}.jsonl"):
        if candidate.is_file():
            return spec, candidate
    known = sorted(p.name.split(".")[0] for p in benchmarks_dir().glob("*.jsonl*")) if benchmarks_dir().is_dir() \
        else []
    raise ValueError(f"--eval-tasks: unknown task {spec!r} (not a file, and not in {benchmarks_dir()}: "
                     f"{', '.join(known) or 'no benchmarks found'})")


def parse_tasks(text: str | None) -> list[str]:
    """"arc_easy, hellaswag" -> ["arc_easy", "hellaswag"]; every name is resolved (ValueError when unknown)."""
    names = [t.strip() for t in (text or "").split(",") if t.strip()]
    for name in names:
        resolve_task(name)
    return names


def load_items(spec: str, limit: int | None) -> tuple[str, list[Item]]:
    """The first `limit` rows of a task (file order: deterministic), as requests."""
    name, path = resolve_task(spec)
    opener = gzip.open if path.suffix == ".gz" else open
    items = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            items.append(format_row(name, json.loads(line)))
            if limit and len(items) >= limit:
                break
    if not items:
        raise ValueError(f"task {spec}: {path} holds no rows")
    return name, items


# --------------------------------------------------------------------------------------------- tokenising


@dataclass(frozen=True)
class Encoded:
    """A request as token ids: the model reads `tokens[:-1]` and continuation token i is predicted at position
    `len(tokens) - 1 - n_cont + i`."""

    tokens: tuple[int, ...]
    n_cont: int
    n_bytes: int  # UTF-8 bytes of the continuation text (after lm-eval moves the context's trailing spaces)


def encode_request(tokenizer, request: Request, prefix_id: int, max_length: int) -> Encoded:
    """lm-eval's `_encode_pair` + `_loglikelihood_tokens` truncation (keep the last max_length + 1 tokens)."""
    context, continuation = request.context, request.continuation
    if context:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = tokenizer.encode(context + continuation, add_special_tokens=False).ids
        ctx = tokenizer.encode(context, add_special_tokens=False).ids
        ctx, cont = whole[:len(ctx)], whole[len(ctx):]
    else:
        ctx, cont = [prefix_id], tokenizer.encode(continuation, add_special_tokens=False).ids
    if not cont:
        raise ValueError(f"request {request!r}: the continuation encodes to no tokens")
    n_bytes = len(continuation.encode("utf-8"))
    if len(cont) > max_length:  # lm-eval refuses this; we score the continuation's last max_length tokens
        cont = cont[-max_length:]
        n_bytes = len(tokenizer.decode(cont, skip_special_tokens=False).encode("utf-8"))
    tokens = (ctx + cont)[-(max_length + 1):]
    return Encoded(tuple(tokens), len(cont), n_bytes)


# ---------------------------------------------------------------------------------------------- metrics


def task_metrics(items: list[Item], encoded: list[list[Encoded]], loglik: list[list[float]]) -> dict[str, float]:
    """acc / acc_norm (multiple choice) and bpb of the gold continuation, from per-request log-likelihoods."""
    nll, n_bytes = 0.0, 0
    correct = correct_norm = 0
    for item, enc, ll in zip(items, encoded, loglik):
        nll -= ll[item.gold]
        n_bytes += enc[item.gold].n_bytes
        if item.multiple_choice:
            # lm-eval: acc_norm divides by len(choice) in characters (the choice text, without the delimiter)
            lengths = [float(len(r.continuation) - 1) or 1.0 for r in item.requests]
            correct += int(max(range(len(ll)), key=lambda i: ll[i]) == item.gold)
            correct_norm += int(max(range(len(ll)), key=lambda i: ll[i] / lengths[i]) == item.gold)
    out = {"bpb": nll / (LN2 * max(n_bytes, 1)), "n": float(len(items))}
    if items and items[0].multiple_choice:
        out.update(acc=correct / len(items), acc_norm=correct_norm / len(items))
    return out
