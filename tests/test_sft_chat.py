"""Instella-3B-SFT data (mixtures/sft.yaml): chat template, loss masks, truncation/padding, per-source padding."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
import yaml
from conftest import ROOT, TOKENIZER, build
from tokenizers import Tokenizer

from pipelines.build.spec import SpecError, load_spec
from pipelines.read.chat import MMLU_TEMPLATES, record_turns
from pipelines.shards.verify import verify_build

SMOLTALK = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say <|endoftext|> then stop."},
     {"role": "assistant", "content": "  <|endoftext|> — done.\n"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": "6, of course."}],
]


@pytest.fixture(scope="module")
def sft_hub(tmp_path_factory) -> Path:
    hub = tmp_path_factory.mktemp("sft-hub")
    d = hub / "HuggingFaceTB/smoltalk/data/all"
    d.mkdir(parents=True)
    pl.DataFrame({"messages": SMOLTALK}).write_parquet(d / "train-00000-of-00001.parquet")
    d = hub / "nvidia/OpenMathInstruct-2/data"
    d.mkdir(parents=True)
    pl.DataFrame({"problem": ["What is 1+1?"], "generated_solution": ["1+1 = \\boxed{2}"]}).write_parquet(
        d / "train_1M-00000-of-00001.parquet")
    d = hub / "cais/mmlu/auxiliary_train"
    d.mkdir(parents=True)
    pl.DataFrame({"question": ["Capital of France?"], "subject": [""], "choices": [["Rome", "Paris", "Oslo", "Bern"]],
                  "answer": [1]}).write_parquet(d / "train-00000-of-00001.parquet")
    d = hub / "GAIR/o1-journey"
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text(json.dumps({"question": "Why is the sky blue?",
                                               "longCOT": "Rayleigh scattering.\n#### blue\nmore"}) + "\n")
    return hub


@pytest.fixture(scope="module")
def sft_build(sft_hub, tmp_path_factory) -> Path:
    return build("sft", tmp_path_factory.mktemp("sft-out") / "sft", source_root=str(sft_hub))


def _rows(out: Path) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.concatenate([np.load(p) for p in sorted((out / "shards").glob("shard-*[0-9].npy"))])
    masks = np.concatenate([np.load(p) for p in sorted((out / "shards").glob("shard-*.mask.npy"))])
    return tokens, masks


def expected(turns: list[dict], tok: Tokenizer) -> tuple[list[int], list[int]]:
    """OLMo/Instella's template, written independently: [EOS] + per message <|role|>\\n + content (+ EOS) + \\n."""
    tok.encode_special_tokens = True
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    ids, loss = [0], []
    for m in turns:
        ids += enc(f"<|{m['role']}|>\n")
        if m["role"] == "assistant":
            body = enc(m["content"].strip()) + [0]
            ids += body + enc("\n")
            loss += body
        else:
            ids += enc(m["content"].strip() + "\n")
    return ids, loss


def test_rows_hold_the_template_and_loss_is_exactly_assistant_content_plus_eos(sft_build):
    tok = Tokenizer.from_file(str(TOKENIZER))
    tokens, masks = _rows(sft_build)
    assert tokens.shape[1] == 4096 and masks.shape == tokens.shape
    wanted = [expected(t, tok) for t in SMOLTALK]
    found = 0
    for row, mask in zip(tokens, masks):
        n = int((row != 1).sum())
        assert (row[n:] == 1).all() and not mask[n:].any()  # one conversation, then pad id 1 with no loss
        for ids, loss in wanted:
            if row[:n].tolist() == ids:
                found += 1
                assert row[mask == 1].tolist() == loss
                assert mask[0] == 0 and mask[:n].sum() == len(loss)
    assert found == 2
    # the literal "<|endoftext|>" typed in the messages stays text: EOS only at the start and after each answer
    first = next(r for r in tokens if r[:len(wanted[0][0])].tolist() == wanted[0][0])
    assert int((first == 0).sum()) == 2
    assert "<|endoftext|> — done.<|endoftext|>\n" in tok.decode(first.tolist(), skip_special_tokens=False)


def test_sources_render_and_repeat_as_the_mix_says(sft_build):
    con = duckdb.connect(str(sft_build / "manifest.duckdb"), read_only=True)
    per_source = dict(con.sql("SELECT d.source, count(*) FROM segments s JOIN documents d USING (doc_id) "
                              "GROUP BY ALL").fetchall())
    assert per_source == {"smoltalk": 2, "openmathinstruct-2": 1, "mmlu-auxiliary": 1, "o1-journey": 10}
    pad = dict(con.sql("SELECT source, n_pad FROM padding").fetchall())
    tok_n = dict(con.sql("SELECT source, n_tokens FROM padding").fetchall())
    assert all(pad[s] + tok_n[s] == 4096 * per_source[s] for s in per_source)
    tok = Tokenizer.from_file(str(TOKENIZER))
    tokens, masks = _rows(sft_build)
    answers = {tok.decode(r[m == 1].tolist(), skip_special_tokens=False) for r, m in zip(tokens, masks)}
    # o1-journey's longCOT is cut before "\n####" (Instella's scripts/prepare_sft_data.py `convert_o1journey`)
    assert {"1+1 = \\boxed{2}<|endoftext|>", "Rayleigh scattering.<|endoftext|>"} <= answers
    # MMLU in one of Instella's 11 templates, options shuffled, the answer naming the letter now holding "Paris"
    (row,) = [r for r in tokens if "Capital of France?" in tok.decode(r.tolist())]
    prompt = tok.decode(row.tolist())
    letter = next(line[0] for line in prompt.splitlines() if line[1:] == ". Paris")
    mmlu_answer = next(a for a in answers if a.endswith(f"{letter}.<|endoftext|>") and "boxed" not in a)
    assert mmlu_answer[:-len("<|endoftext|>")] in {tpl.format(answer=letter) for _, tpl in MMLU_TEMPLATES}
    assert verify_build(sft_build) == []


def test_long_samples_are_truncated_and_answerless_windows_dropped(sft_hub, tmp_path):
    spec = yaml.safe_load((ROOT / "mixtures" / "sft.yaml").read_text())
    spec["seq_len"] = 24
    spec["tokenizer"] = str(TOKENIZER)
    path = tmp_path / "sft-24.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = build(path, tmp_path / "out", source_root=str(sft_hub))
    tokens, masks = _rows(out)
    assert tokens.shape[1] == 24
    con = duckdb.connect(str(out / "manifest.duckdb"), read_only=True)
    dropped = con.sql("SELECT source, reason FROM documents WHERE status = 'dropped'").fetchall()
    # the system + user prelude of the first conversation fills all 24 tokens: nothing to learn, so dropped
    assert ("smoltalk", "no-answer-in-window") in dropped
    cut = con.sql("SELECT d.n_tokens, s.length FROM segments s JOIN documents d USING (doc_id) "
                  "WHERE d.n_tokens > 24").fetchall()
    assert cut and all(length == 24 for _, length in cut)
    assert all(m.any() for m in masks)
    assert verify_build(out) == []


def test_mmlu_follows_instellas_templates_and_shuffle():
    """AMD-AIG-AIMA/Instella scripts/prepare_sft_data.py `convert_mmlu`: 11 templates, options shuffled, answers
    such as "The correct answer is X."; the draw is fixed per record (any worker count), varied across records."""
    assert len(MMLU_TEMPLATES) == 11
    assert ("Choose the correct answer from the options below (A, B, C, or D):\nQuestion: {question}\nA. "
            "{option_a}\nB. {option_b}\nC. {option_c}\nD. {option_d}", "The correct answer is {answer}.") \
        in MMLU_TEMPLATES
    assert MMLU_TEMPLATES[-1] == ("Question: {question}\nA. {option_a}\nB. {option_b}\nC. {option_c}\nD. "
                                  "{option_d}", "{answer}.")
    used, letters = set(), set()
    for i in range(400):
        rec = {"question": f"Q{i}?", "choices": ["w", "x", "y", "z"], "answer": i % 4}
        turns = record_turns(rec, {"chat": "mmlu-instella", "seed": 96})
        assert turns == record_turns(rec, {"chat": "mmlu-instella", "seed": 96})  # deterministic
        (_, user), (_, answer) = turns
        opts = dict(line.split(". ", 1) for line in user.splitlines()[-4:])
        label = next(k for k, v in opts.items() if v == rec["choices"][rec["answer"]])
        assert answer.endswith(f"{label}.") and sorted(opts.values()) == ["w", "x", "y", "z"]
        used.add(answer[:-2])
        letters.add(label)
    assert len(used) == 11 and letters == set("ABCD")


def test_chat_options_are_validated(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({"name": "bad", "seq_len": 8, "tokenizer": str(TOKENIZER), "sources": [
        {"name": "x", "uri": "x.jsonl", "format": "chat", "options": {"chat": "fields", "user_key": "q"}}]}))
    with pytest.raises(SpecError, match=r"bad.yaml: sources\[0\]: field 'options.assistant_key'"):
        load_spec(str(path))
