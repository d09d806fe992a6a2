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
- `mmlu`: MMLU auxiliary_train (question, choices, answer index): user = question + "A. ..." lines + "Answer:",
  assistant = "{letter}. {choice text}"
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec

from pipelines.errors import SourceFileError
from pipelines.read.formats import Record

CHAT_KINDS = ("messages", "conversations", "fields", "mmlu")
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
        return [("user", q), ("assistant", a)]
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


def iter_chat_records(path: str, id_key: str, options: dict) -> Iterator[Record]:
    """One Record per input record; `text` is the plain rendering (for dedup/decontamination), turns in `extra`."""
    for line, rec, reason in _raw_records(path):
        if reason or not isinstance(rec, dict):
            yield ChatRecord(line, None, None, reason or "malformed-json", "expected a JSON object")
            continue
        raw_id = rec.get(id_key)
        doc_id = str(raw_id) if raw_id is not None else None
        turns = record_turns(rec, options)
        if isinstance(turns, str):
            yield ChatRecord(line, doc_id, None, turns, f"chat {options.get('chat', 'messages')}")
            continue
        if not any(r == "assistant" and c.strip() for r, c in turns):
            yield ChatRecord(line, doc_id, None, "no-assistant-turn", "nothing to train on")
            continue
        text = "".join(f"<|{r}|>\n{c.strip()}\n" for r, c in turns)
        yield ChatRecord(line, doc_id, text, extra={"turns": turns})


def validate_chat_options(where: str, options: dict) -> None:
    from pipelines.errors import SpecError

    kind = options.get("chat", "messages")
    if kind not in CHAT_KINDS:
        raise SpecError(f"{where}: field 'options.chat' must be one of {list(CHAT_KINDS)}, got {kind!r}")
    if kind == "fields":
        for k in ("user_key", "assistant_key"):
            if not isinstance(options.get(k), str):
                raise SpecError(f"{where}: field 'options.{k}' (a column name) is required with chat: fields")
