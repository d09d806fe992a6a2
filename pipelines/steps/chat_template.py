"""Instella's SFT chat template as a stage-A step: turns -> token ids + assistant-only loss mask.

Preference pairs (`format: preference`, DPO) become one document of exactly 2 x seq_len tokens: the chosen
conversation cut to seq_len and padded with the pad id, then the rejected one likewise; the loss mask covers only
the final assistant turn (its content and EOS) of each, as the DPO loss reads (`pipelines/pack/preference.py` then
writes the two halves as rows 2k and 2k+1). A pair whose final answer lies wholly beyond seq_len on either side is
dropped (`no-answer-in-window`).
"""
from __future__ import annotations

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep


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


def final_turn_ids(turns: list[tuple[str, str]], encode, eos_id: int, seq_len: int,
                   pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """One side of a preference pair: the template's ids cut / padded to exactly seq_len, the loss mask on the final
    assistant turn only (earlier answers are context for DPO)."""
    ids, mask = template_ids(turns, encode, eos_id)
    last_one = int(np.flatnonzero(mask)[-1])  # the final turn is an assistant's: it has at least its EOS
    zeros = np.flatnonzero(mask[:last_one] == 0)
    start = int(zeros[-1]) + 1 if len(zeros) else 0  # the last run of 1s: the final assistant content + its EOS
    final = np.zeros_like(mask)
    final[start:last_one + 1] = 1
    ids, final = ids[:seq_len], final[:seq_len]
    pad = seq_len - len(ids)
    return (np.concatenate([ids, np.full(pad, pad_id, dtype=ids.dtype)]),
            np.concatenate([final, np.zeros(pad, dtype=final.dtype)]))


class ChatTemplateTokenize(PipelineStep):
    """Tokenize docs carrying chat turns with Instella's SFT template; sets `tokens` and the loss `mask`."""

    name = "💬 tokenize chat template"
    type = "🔢 - TOKENIZER"

    def __init__(self, tokenizer_path: str, eos_id: int, seq_len: int, pad_id: int | None = None):
        super().__init__()
        self.tokenizer_path = tokenizer_path
        self.eos_id = eos_id
        self.seq_len = seq_len
        self.pad_id = eos_id if pad_id is None else pad_id
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
            pair = meta.pop("pair", None)
            if pair is not None and meta["status"] == "kept":
                halves = [final_turn_ids(turns, self.encode, self.eos_id, self.seq_len, self.pad_id) for turns in pair]
                if not all(mask.any() for _, mask in halves):
                    meta["status"], meta["reason"] = "dropped", "no-answer-in-window"
                    meta["n_copies"] = 0
                    self.stat_update("dropped:no-answer-in-window")
                else:
                    meta["tokens"] = np.concatenate([ids for ids, _ in halves])
                    meta["mask"] = np.concatenate([mask for _, mask in halves])
                    self.stat_update("tokens", value=2 * self.seq_len)
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
