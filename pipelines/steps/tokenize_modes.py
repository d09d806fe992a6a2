"""Alternative tokenizations, chosen with the spec key `tokenization` (default: the `Tokenize` step in steps.py).

`dolma` reproduces `dolma tokens` (allenai/dolma 1.2.1, `python/dolma/tokenizer/tokenizer.py`), the tool Instella
tokenized stages 1 and 2 with, so the shards hold exactly what Instella trained on:

- the text is `str.strip()`-ed first (leading/trailing whitespace, newlines included, never reaches the tokenizer);
- the stripped text is encoded with the tokenizer's added tokens *matched* (`add_special_tokens=False`,
  `encode_special_tokens=False`): a literal `<|endoftext|>` in the text becomes id 0, `<|padding|>` id 1, the PII
  placeholders their ids — dolma's behaviour, kept on purpose in this mode only;
- EOS is appended only when the last id is not already EOS (dolma's `add_special_tokens`), so a text ending in
  `<|endoftext|>` gets no second EOS; no BOS (Instella's `dolma tokens` call passes none).

A document that is empty after stripping is skipped by dolma; here it is already a `dropped` row (`empty-text`).
"""
from __future__ import annotations

import numpy as np
from datatrove.data import Document

from pipelines.steps.tokenize import Tokenize


def dolma_ids(encoded: list[list[int]] | list, eos_id: int) -> list[np.ndarray]:
    """dolma's `add_special_tokens` over already-encoded texts: append EOS unless the ids already end with it."""
    out = []
    for ids in encoded:
        ids = list(ids)
        if ids and ids[-1] != eos_id:
            ids.append(eos_id)
        out.append(np.asarray(ids, dtype=np.uint32))
    return out


def dolma_encode(tokenizer, texts: list[str], eos_id: int) -> list[np.ndarray]:
    """Token ids of `texts` exactly as `dolma tokens` writes them (see the module docstring)."""
    stripped = [t.strip() for t in texts]
    encs = tokenizer.encode_batch_fast(stripped, add_special_tokens=False)
    return dolma_ids([e.ids for e in encs], eos_id)


class DolmaTokenize(Tokenize):
    """`Tokenize` with dolma 1.2.1's text handling (spec `tokenization: dolma`)."""

    name = "🔢 tokenize (dolma-compatible)"

    @property
    def tokenizer(self):
        """The tokenizer file as it is, every added token matched: dolma's behaviour, unlike `Tokenize`'s
        `text_tokenizer`, which BPE-encodes the EOS/pad strings as text."""
        if self._tok is None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(self.tokenizer_path)
            self._tok.no_truncation()
            self._tok.no_padding()
        return self._tok

    def _flush(self, batch: list[Document]) -> None:
        kept = [d for d in batch if d.metadata["status"] == "kept" and "tokens" not in d.metadata]
        if not kept:
            return
        tok = self.tokenizer
        if hasattr(tok, "encode_special_tokens"):
            tok.encode_special_tokens = False  # dolma matches control strings in the text as their ids
        if self.with_offsets:
            # answer spans are char offsets into the *unstripped* text: shift them by the stripped prefix
            for d in kept:
                lead = len(d.text) - len(d.text.lstrip())
                enc = tok.encode(d.text.strip(), add_special_tokens=False)
                d.metadata["tokens"] = dolma_ids([enc.ids], self.eos_id)[0]
                d.metadata["offsets"] = [(a + lead, b + lead) for a, b in enc.offsets]
        else:
            for d, ids in zip(kept, dolma_encode(tok, [d.text for d in kept], self.eos_id)):
                d.metadata["tokens"] = ids
        self.stat_update("tokens", value=sum(len(d.metadata["tokens"]) for d in kept))


# spec key `tokenization` -> its stage-A step (the registry spec validation checks against)
TOKENIZE_STEPS: dict[str, type[Tokenize]] = {"default": Tokenize, "dolma": DolmaTokenize}


def tokenize_step(mode: str, tokenizer_path: str, eos_id: int, with_offsets: bool,
                  pad_id: int | None = None, threads: int | None = None) -> Tokenize:
    """The stage-A tokenize step for a spec's `tokenization`."""
    cls = TOKENIZE_STEPS[mode]
    return cls(tokenizer_path, eos_id, with_offsets=with_offsets, pad_id=pad_id, threads=threads)
