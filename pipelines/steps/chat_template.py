"""Instella's SFT chat template as a stage-A step: turns -> token ids + assistant-only loss mask.
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
