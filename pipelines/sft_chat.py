"""Instella-3B-SFT data: records as chat turns (`format: chat`) and Instella's SFT template with its loss mask.

The template is the one of OLMo's `scripts/prepare_tulu_data.py`, which Instella's SFT used:

    [EOS]  then per message:  <|{role}|>\\n  +  content.strip()  +  ([EOS] if assistant)  +  \\n

Loss (mask 1) on every assistant content token and the EOS after it; 0 on the leading EOS, role tags, user/system
content, the "\\n" after each message and padding. EOS ids are inserted by the builder, never written as text, and
the contents are tokenized with control strings as text (`encode_special_tokens`): a literal `<|endoftext|>` in a
message cannot end a turn. Rows are then truncated/padded to seq_len (packing `sft-4k`, pipelines/sft_packing.py);
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
import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from pipelines.errors import SourceFileError
from pipelines.formats import Record

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


def template_ids(turns: list[tuple[str, str]], encode, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, loss mask) of one conversation in Instella's SFT template; `encode(str) -> list[int]`."""
    ids: list[int] = [eos_id]
    mask: list[int] = [0]
    newline = encode("\n")
    for role, content in turns:
        tag = encode(f"<|{role}|>\n")
        ids += tag
        mask += [0] * len(tag)
        body = encode(content.strip())
        if role == "assistant":
            ids += body + [eos_id] + newline
            mask += [1] * (len(body) + 1) + [0] * len(newline)
        else:
            body = encode(content.strip() + "\n")
            ids += body
            mask += [0] * len(body)
    return np.asarray(ids, dtype=np.uint32), np.asarray(mask, dtype=np.uint8)


class ChatTemplateTokenize(PipelineStep):
    """Tokenize docs carrying chat turns with Instella's SFT template; sets `tokens` and the loss `mask`."""

    name = "💬 tokenize chat template"
    type = "🔢 - TOKENIZER"

    def __init__(self, tokenizer_path: str, eos_id: int, seq_len: int):
        super().__init__()
        self.tokenizer_path = tokenizer_path
        self.eos_id = eos_id
        self.seq_len = seq_len
        self._tok = None

    @property
    def tokenizer(self):
        if self._tok is None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(self.tokenizer_path)
            self._tok.no_truncation()
            self._tok.no_padding()
            self._tok.encode_special_tokens = True  # control strings in messages are text, never EOS/pad
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            meta = doc.metadata
            turns = meta.pop("turns", None)
            if turns is not None and meta["status"] == "kept":
                ids, mask = template_ids(turns, self.encode, self.eos_id)
                if not mask[:self.seq_len].any():
                    meta["status"], meta["reason"] = "dropped", "no-answer-in-window"
                    meta["n_copies"] = 0
                    self.stat_update("dropped:no-answer-in-window")
                else:
                    meta["tokens"], meta["mask"] = ids, mask
                    self.stat_update("tokens", value=len(ids))
            yield doc


def validate_chat_options(where: str, options: dict) -> None:
    from pipelines.errors import SpecError

    kind = options.get("chat", "messages")
    if kind not in CHAT_KINDS:
        raise SpecError(f"{where}: field 'options.chat' must be one of {list(CHAT_KINDS)}, got {kind!r}")
    if kind == "fields":
        for k in ("user_key", "assistant_key"):
            if not isinstance(options.get(k), str):
                raise SpecError(f"{where}: field 'options.{k}' (a column name) is required with chat: fields")
