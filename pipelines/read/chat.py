"""Instella-3B-SFT data: records as chat turns (`format: chat`) and Instella's SFT template with its loss mask.

The template is the one of OLMo's `scripts/prepare_tulu_data.py`, which Instella's SFT used:

    [EOS]  then per message:  <|{role}|>\\n  +  content.strip()  +  ([EOS] if assistant)  +  \\n

Loss (mask 1) on every assistant content token and the EOS after it; 0 on the leading EOS, role tags, user/system
content, the "\\n" after each message and padding. EOS ids are inserted by the builder, never written as text, and
the contents are tokenized with control strings as text (`encode_special_tokens`): a literal `<|endoftext|>` in a
message cannot end a turn. Rows are then truncated/padded to seq_len (packing `sft-4k`, pipelines/pack/sft_4k.py);
a sample with no loss token in its first seq_len tokens is dropped (`no-answer-in-window`), as OLMo's script does.

`options.chat` says how a record becomes turns:

- `messages` (default): `messages: [{role, content}]` (SmolTalk, Tulu-3); `conversations` ({from, value}, ShareGPT
  roles human/gpt/system mapped to user/assistant/system)
- `fields`: one user turn from `options.user_key`, one assistant turn from `options.assistant_key`
  (OpenMathInstruct-2: problem / generated_solution; o1-journey: question / longCOT)
  `options.assistant_cut`: keep the assistant text before the first occurrence of this string (o1-journey:
  "\n####", Instella's `longCOT.split("\n####")[0]`)
- `mmlu`: MMLU auxiliary_train (question, choices, answer index): user = question + "A. ..." lines + "Answer:",
  assistant = "{letter}. {choice text}"
- `mmlu-instella`: as Instella's `scripts/prepare_sft_data.py` `convert_mmlu`: the four options shuffled, one of its
  11 question/answer templates ("... The correct answer is X."); the shuffle and template are drawn from a
  generator seeded by the record's content and `options.seed` (Instella's --seed default 96), so any worker count
  gives the same text (Instella drew them from one sequential `random` stream: same distribution, other draws)

`format: preference` (DPO pairs, `iter_preference_records`): `chosen` and `rejected` (`options.chosen_key` /
`rejected_key`) are message lists sharing the prompt; each must end with a non-empty assistant turn. Both go through
the SFT template with the loss on the final assistant turn only (pipelines/steps/chat_template.py).
"""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np

from pipelines.errors import SourceFileError
from pipelines.read.formats import Record

CHAT_KINDS = ("messages", "conversations", "fields", "mmlu", "mmlu-instella")
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


@dataclass(slots=True)
class ChatRecord(Record):
    extra: dict = field(default_factory=dict)  # {"turns": [(role, content), ...]}


def record_turns(rec: dict, options: dict) -> list[tuple[str, str]] | str:
    """The (role, content) turns of one record, or a skip reason."""
    kind = options.get("chat", "messages")
    if kind in ("messages", "conversations"):
        key, rk, ck = ("messages", "role", "content") if kind == "messages" else ("conversations", "from", "value")
        msgs = rec.get(key)
        if msgs is None:
            return "missing-text"
        if not isinstance(msgs, list | tuple):
            return "non-string-text"
        turns = []
        for m in msgs:
            if not isinstance(m, dict) or not isinstance(m.get(ck), str) or not isinstance(m.get(rk), str):
                return "non-string-text"
            role = m[rk] if kind == "messages" else _SHAREGPT_ROLES.get(m[rk], m[rk])
            turns.append((role, m[ck]))
        return turns
    if kind == "fields":
        q, a = rec.get(options["user_key"]), rec.get(options["assistant_key"])
        if q is None or a is None:
            return "missing-text"
        if not isinstance(q, str) or not isinstance(a, str):
            return "non-string-text"
        if options.get("assistant_cut"):
            a = a.split(options["assistant_cut"])[0]
        return [("user", q), ("assistant", a)]
    if kind == "mmlu-instella":
        if isinstance(rec.get("train"), dict):  # the parquet Instella loaded nests the row under "train"
            return record_turns(rec["train"], options)
        q, choices, ans = rec.get("question"), rec.get("choices"), rec.get("answer")
        if not isinstance(q, str) or not isinstance(choices, list | tuple) or len(choices) != 4 \
                or not all(isinstance(c, str) for c in choices) or not isinstance(ans, int) or not 0 <= ans < 4:
            return "non-string-text"
        return mmlu_instella_turns(q, list(choices), ans, _record_rng(rec, options.get("seed", 96)))
    if kind == "mmlu":
        q, choices, ans = rec.get("question"), rec.get("choices"), rec.get("answer")
        if isinstance(rec.get("train"), dict):  # older parquet exports nest the row under "train"
            return record_turns(rec["train"], options)
        if not isinstance(q, str) or not isinstance(choices, list | tuple) or not isinstance(ans, int) \
                or not 0 <= ans < len(choices) or len(choices) > 26:
            return "non-string-text"
        letters = [chr(ord("A") + i) for i in range(len(choices))]
        prompt = q.strip() + "\n" + "".join(f"{L}. {c}\n" for L, c in zip(letters, choices)) + "Answer:"
        return [("user", prompt), ("assistant", f"{letters[ans]}. {choices[ans]}")]
    raise ValueError(f"unknown chat kind {kind!r}")


MMLU_TEMPLATES = (  # AMD-AIG-AIMA/Instella scripts/prepare_sft_data.py `convert_mmlu` qa_templates, verbatim
    ("Given the following question and four candidate answers (A, B, C, and D), select the most appropriate answer."
     "\nQuestion: {question}\nA. {option_a}\nB. {option_b}\nC. {option_c}\nD. {option_d}",
     "The most appropriate answer is {answer}."),
    ("Choose the correct answer from the options below (A, B, C, or D):\nQuestion: {question}\nA. {option_a}\n"
     "B. {option_b}\nC. {option_c}\nD. {option_d}", "The correct answer is {answer}."),
    ("Based on the following question and options, identify the best answer (A, B, C, or D).\nQuestion: {question}"
     "\nA. {option_a}\nB. {option_b}\nC. {option_c}\nD. {option_d}", "The best answer is {answer}."),
    ("Analyze the question and the four answer choices (A, B, C, and D). Then select the correct answer.\nQuestion: "
     "{question}\nA. {option_a}\nB. {option_b}\nC. {option_c}\nD. {option_d}",
     "After analysis, the correct answer is {answer}."),
    ("Consider the question below and choose the best option from A, B, C, or D.\nQuestion: {question}\nA. "
     "{option_a}\nB. {option_b}\nC. {option_c}\nD. {option_d}", "The best option is {answer}."),
    ("Select the correct response (A, B, C, or D) to the question provided below.\nQuestion: {question}\nA. "
     "{option_a}\nB. {option_b}\nC. {option_c}\nD. {option_d}", "The correct response is {answer}."),
    ("Determine the correct choice (A, B, C, or D) based on the question and information provided.\nQuestion: "
     "{question}\nA. {option_a}\nB. {option_b}\nC. {option_c}\nD. {option_d}",
     "The determined correct choice is {answer}."),
    ("From the following question and answer choices, identify the correct option (A, B, C, or D).\nQuestion: "
     "{question}\nA. {option_a}\nB. {option_b}\nC. {option_c}\nD. {option_d}",
     "The identified correct option is {answer}."),
    ("Using the given question and four possible answers, select the best option (A, B, C, or D).\nQuestion: "
     "{question}\nA. {option_a}\nB. {option_b}\nC. {option_c}\nD. {option_d}",
     "The selected best option is {answer}."),
    ("Read the question and options below, then determine the correct answer (A, B, C, or D).\nQuestion: "
     "{question}\nA. {option_a}\nB. {option_b}\nC. {option_c}\nD. {option_d}",
     "The determined correct answer is {answer}."),
    ("Question: {question}\nA. {option_a}\nB. {option_b}\nC. {option_c}\nD. {option_d}", "{answer}."),
)


def _record_rng(rec: dict, seed: int) -> np.random.Generator:
    """A generator keyed by the record's content and `seed`: the same record always draws the same values."""
    digest = hashlib.sha256(json.dumps([seed, rec], sort_keys=True, default=str).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def mmlu_instella_turns(question: str, choices: list[str], answer: int,
                        rng: np.random.Generator) -> list[tuple[str, str]]:
    """Instella's `generate_question_answer`: shuffle the options, relabel the correct one (the first option equal to
    its text, as Instella's `next(...)`), fill a template drawn at random."""
    labels = ["A", "B", "C", "D"]
    correct = choices[answer]
    shuffled = dict(zip(labels, [choices[i] for i in rng.permutation(4)]))
    new_label = next(label for label, option in shuffled.items() if option == correct)
    question_tpl, answer_tpl = MMLU_TEMPLATES[int(rng.integers(len(MMLU_TEMPLATES)))]
    user = question_tpl.format(question=question, option_a=shuffled["A"], option_b=shuffled["B"],
                               option_c=shuffled["C"], option_d=shuffled["D"])
    return [("user", user), ("assistant", answer_tpl.format(answer=new_label))]


def _raw_records(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """(line, parsed record or None, skip reason) over parquet, JSON lines (.gz/.zst) or a JSON array."""
    name = path.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            with fsspec.open(path, "rb") as f:
                row = 0
                for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
                    for rec in batch.to_pylist():
                        row += 1
                        yield row, rec, None
        except (OSError, ValueError) as e:
            raise SourceFileError(f"{path}: cannot read parquet: {e}") from e
        return
    with fsspec.open(path, "rb", compression="zstd" if name.endswith(".zst") else "infer") as f:
        if name.endswith(".json"):
            data = f.read()
            if data.lstrip()[:1] == b"[":
                try:
                    items = json.loads(data.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise SourceFileError(f"{path}: invalid JSON array: {e}") from e
                for i, rec in enumerate(items, start=1):
                    yield i, rec, None
                return
            f = io.BytesIO(data)
        for i, raw in enumerate(f, start=1):  # JSON lines, streamed
            if not raw.strip():
                continue
            try:
                yield i, json.loads(raw.decode("utf-8")), None
            except (UnicodeDecodeError, json.JSONDecodeError):
                yield i, None, "malformed-json"


_UNREADABLE = object()  # the doc_id _objects gives a record that is not a JSON object (rec is then its drop record)


def _objects(path: str, id_key: str) -> Iterator[tuple[int, Any, Any]]:
    """(line, JSON object, id or None) per record; (line, a dropped ChatRecord, _UNREADABLE) for anything else."""
    for line, rec, reason in _raw_records(path):
        if reason or not isinstance(rec, dict):
            yield line, ChatRecord(line, None, None, reason or "malformed-json", "expected a JSON object"), _UNREADABLE
            continue
        raw_id = rec.get(id_key)
        yield line, rec, (str(raw_id) if raw_id is not None else None)


def iter_chat_records(path: str, id_key: str, options: dict) -> Iterator[Record]:
    """One Record per input record; `text` is the plain rendering (for dedup/decontamination), turns in `extra`."""
    for line, rec, doc_id in _objects(path, id_key):
        if doc_id is _UNREADABLE:
            yield rec
            continue
        turns = record_turns(rec, options)
        if isinstance(turns, str):
            yield ChatRecord(line, doc_id, None, turns, f"chat {options.get('chat', 'messages')}")
            continue
        if not any(r == "assistant" and c.strip() for r, c in turns):
            yield ChatRecord(line, doc_id, None, "no-assistant-turn", "nothing to train on")
            continue
        text = "".join(f"<|{r}|>\n{c.strip()}\n" for r, c in turns)
        yield ChatRecord(line, doc_id, text, extra={"turns": turns})


def preference_turns(rec: dict, options: dict) -> tuple[list, list] | str:
    """(chosen turns, rejected turns) of one preference record, or a skip reason."""
    sides = []
    for key in (options.get("chosen_key", "chosen"), options.get("rejected_key", "rejected")):
        turns = record_turns({"messages": rec.get(key)}, {"chat": "messages"})
        if isinstance(turns, str):
            return turns
        if not turns or turns[-1][0] != "assistant" or not turns[-1][1].strip():
            return "no-assistant-turn"
        sides.append(turns)
    return sides[0], sides[1]


def iter_preference_records(path: str, id_key: str, options: dict) -> Iterator[Record]:
    """One Record per preference pair; `text` renders the chosen conversation and the rejected answer (for dedup /
    decontamination), the two turn lists travel in `extra["pair"]`."""
    for line, rec, doc_id in _objects(path, id_key):
        if doc_id is _UNREADABLE:
            yield rec
            continue
        pair = preference_turns(rec, options)
        if isinstance(pair, str):
            yield ChatRecord(line, doc_id, None, pair, "preference pair (chosen / rejected message lists)")
            continue
        chosen, rejected = pair
        text = "".join(f"<|{r}|>\n{c.strip()}\n" for r, c in chosen) + f"<|rejected|>\n{rejected[-1][1].strip()}\n"
        yield ChatRecord(line, doc_id, text, extra={"pair": (chosen, rejected)})


def validate_preference_options(where: str, options: dict) -> None:
    from pipelines.errors import SpecError

    for k in ("chosen_key", "rejected_key"):
        if k in options and not isinstance(options[k], str):
            raise SpecError(f"{where}: field 'options.{k}' must be a column name (str)")


def validate_chat_options(where: str, options: dict) -> None:
    from pipelines.errors import SpecError

    kind = options.get("chat", "messages")
    if kind not in CHAT_KINDS:
        raise SpecError(f"{where}: field 'options.chat' must be one of {list(CHAT_KINDS)}, got {kind!r}")
    if kind == "fields":
        for k in ("user_key", "assistant_key"):
            if not isinstance(options.get(k), str):
                raise SpecError(f"{where}: field 'options.{k}' (a column name) is required with chat: fields")
    if "assistant_cut" in options and (not isinstance(options["assistant_cut"], str) or not options["assistant_cut"]):
        raise SpecError(f"{where}: field 'options.assistant_cut' must be a non-empty string")
    if "seed" in options and (isinstance(options["seed"], bool) or not isinstance(options["seed"], int)):
        raise SpecError(f"{where}: field 'options.seed' must be an integer")
