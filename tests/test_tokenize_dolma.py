"""`tokenization: dolma` reproduces `dolma tokens` 1.2.1 (what Instella's stage-1/2 shards hold)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TOKENIZER, build
from tokenizers import Tokenizer

from pipelines.build.spec import SpecError, load_spec
from pipelines.steps.tokenize_modes import dolma_encode

TEXTS = [
    "  Leading and trailing whitespace.  \n\n",
    "\n\tTabs and newlines around\t\n",
    "Ends with the EOS string.<|endoftext|>",
    "Ends with EOS then blanks.<|endoftext|>\n  ",
    "A <|padding|> in the middle and |||EMAIL_ADDRESS||| kept.",
    "Plain text, nothing to strip.",
]


def _enc(tok: Tokenizer, s: str) -> list[int]:
    return tok.encode(s, add_special_tokens=False).ids


def dolma_documented(tok: Tokenizer) -> list[list[int]]:
    """dolma's documented result, spelled out per text: strip, control strings as ids, EOS unless already last."""
    return [
        _enc(tok, "Leading and trailing whitespace.") + [0],
        _enc(tok, "Tabs and newlines around") + [0],
        _enc(tok, "Ends with the EOS string.") + [0],  # no second EOS
        _enc(tok, "Ends with EOS then blanks.") + [0],  # stripped, so it ends in EOS: no second one
        _enc(tok, "A ") + [1] + _enc(tok, " in the middle and ") + [50277] + _enc(tok, " kept.") + [0],
        _enc(tok, "Plain text, nothing to strip.") + [0],
    ]


def test_dolma_encode_strips_and_appends_no_second_eos():
    tok = Tokenizer.from_file(str(TOKENIZER))
    got = [ids.tolist() for ids in dolma_encode(tok, TEXTS, eos_id=0)]
    assert got == dolma_documented(tok)
    # stripping and the single EOS are what differ from encoding the raw text (the last two need neither)
    plain = [_enc(tok, t) + [0] for t in TEXTS]
    assert [g != p for g, p in zip(got, plain)] == [True] * 4 + [False, False]


def test_build_with_dolma_tokenization_writes_dolmas_ids(tmp_path: Path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    spec = tmp_path / "dolma.yaml"
    spec.write_text(json.dumps({"name": "dolma", "seq_len": 16, "tokenizer": str(TOKENIZER), "tokenization": "dolma",
                                "packing": {"mode": "concat", "shuffle": False},
                                "sources": [{"name": "docs", "uri": str(src)}]}))
    out = build(spec, tmp_path / "out")
    flat = np.concatenate([np.load(p) for p in sorted((out / "shards").glob("shard-*[0-9].npy"))]).reshape(-1)
    want = [i for ids in dolma_documented(Tokenizer.from_file(str(TOKENIZER))) for i in ids]
    assert flat[:len(want)].tolist() == want and (flat[len(want):] == 1).all()


def test_instella_stage_specs_opt_in_and_bad_values_are_spec_errors(tmp_path: Path):
    assert load_spec("stage1").tokenization == load_spec("stage2").tokenization == "dolma"
    assert load_spec("long-64k").tokenization == "default"
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"name": "b", "seq_len": 8, "tokenizer": str(TOKENIZER), "tokenization": "dolmaa",
                               "sources": [{"name": "x", "uri": "x.jsonl"}]}))
    with pytest.raises(SpecError, match=r"bad.yaml: field 'tokenization' must be one of"):
        load_spec(str(bad))


def test_matches_dolma_itself_when_installed():
    tokenizer_mod = pytest.importorskip("dolma.tokenizer.tokenizer")  # kept out of the default deps (boto pins)
    theirs = tokenizer_mod.Tokenizer.from_file(str(TOKENIZER), eos_token_id=0, pad_token_id=1)
    tok = Tokenizer.from_file(str(TOKENIZER))
    ours = [ids.tolist() for ids in dolma_encode(tok, TEXTS, eos_id=0)]
    assert ours == [theirs.encode(t.strip(), add_special_tokens=True) for t in TEXTS]
