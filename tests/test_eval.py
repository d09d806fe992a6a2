"""In-loop evaluation (issue 19 item 4): held-out bits per byte, lm-eval-identical task log-likelihoods, eval rows in
metrics.jsonl under one process and under FSDP."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from holdout_fixture import build_with_holdout, mirror_heldout_texts, write_holdout

from trainer import tasks as task_lib
from trainer.evaluate import EvalConfig, Evaluator, pack_pieces, request_logliks

ROOT = Path(__file__).resolve().parents[1]


class Uniform(nn.Module):
    """Every next token has probability 1/V: a target costs exactly ln V nats."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.sp_group = None

    def forward(self, input_ids, positions, cu_seqlens, max_seqlen, labels=None):
        logits = torch.zeros(input_ids.numel(), self.vocab)
        if labels is None:
            return logits
        return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")


def test_bpb_arithmetic_on_a_hand_computed_case(stage2_build, tmp_path):
    """Two held-out docs of 3 and 5 tokens (EOS included), 10 and 14 bytes, rows of 4 tokens, V = 8.
    Doc 1: one piece, 2 targets. Doc 2 is cut 4 + 1: 3 + 0 targets. NLL = 5 ln 8 = 15 ln 2 nats over 24 bytes:
    loss = ln 8 nats/token, bpb = 15/24 = 0.625."""
    import shutil

    build = tmp_path / "b"
    shutil.copytree(stage2_build, build)
    write_holdout(build, "src", [("a", [5, 6], "0123456789"), ("b", [1, 2, 3, 4], "abcdefghijklmn")])
    assert pack_pieces([3, 5], 4) == [[(0, 0, 3)], [(1, 0, 4)], [(1, 4, 1)]]
    row = Evaluator(EvalConfig(every=1, row_tokens=4), build, seq_len=4)(Uniform(8), step=7)
    assert row["step"] == 7
    assert row["eval"]["src"]["loss"] == pytest.approx(math.log(8), rel=1e-6)
    assert row["eval"]["src"]["bpb"] == pytest.approx(0.625, rel=1e-6)
    # --eval-max-tokens 4: only doc a (3 tokens) fits: 2 targets, 10 bytes -> bpb 2 * 3 / 10
    row = Evaluator(EvalConfig(every=1, row_tokens=4, max_tokens=4), build, seq_len=4)(Uniform(8), step=7)
    assert row["eval"]["src"]["bpb"] == pytest.approx(0.6, rel=1e-6)


def test_task_metrics_acc_and_acc_norm_as_lm_eval():
    """acc: argmax of Σ log p; acc_norm: argmax of Σ log p / len(choice) in characters (lm-eval)."""
    item = task_lib.Item("q", (task_lib.Request("Q:", " a"), task_lib.Request("Q:", " bbbb")), gold=1,
                         multiple_choice=True)
    enc = [task_lib.Encoded((1, 2), 1, 2), task_lib.Encoded((1, 2, 3), 2, 5)]
    m = task_lib.task_metrics([item], [enc], [[-1.0, -2.0]])  # raw: choice 0; per char: -1/1 < -2/4: choice 1
    assert (m["acc"], m["acc_norm"]) == (0.0, 1.0)
    assert m["bpb"] == pytest.approx(2.0 / (math.log(2) * 5))


def test_request_construction_follows_lm_eval(tokenizer_path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    _, items = task_lib.load_items("arc_easy", 1)
    assert items[0].requests[0] == task_lib.Request(
        "Question: Which technology was developed most recently?\nAnswer:", " cellular telephone")
    _, [boolq] = task_lib.load_items("boolq", 1)
    assert [r.continuation for r in boolq.requests] == [" no", " yes"] and boolq.gold == 0
    # a context's trailing space moves to the continuation; the whole string is encoded once and split
    e = task_lib.encode_request(tok, task_lib.Request("Answer: ", "yes"), prefix_id=0, max_length=64)
    assert list(e.tokens) == tok.encode("Answer: yes").ids and e.n_cont == len(tok.encode("Answer: yes").ids) - \
        len(tok.encode("Answer:").ids)
    # empty context: the prefix (EOS) token conditions the continuation
    e = task_lib.encode_request(tok, task_lib.Request("", " Hello"), prefix_id=0, max_length=64)
    assert e.tokens[0] == 0 and e.n_cont == len(e.tokens) - 1


def _cli(*args: str, nproc_env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", **(nproc_env or {}))
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def holdout_build(stage2_build, tmp_path_factory, shared, tokenizer_path) -> Path:
    return build_with_holdout(stage2_build, tmp_path_factory.mktemp("ho") / "build", tokenizer_path,
                              mirror_heldout_texts(shared, 8))


@pytest.fixture(scope="module")
def eval_run(holdout_build, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("evrun") / "run"
    p = _cli("train", "--data", str(holdout_build), "--out", str(run), "--preset", "tiny", "--seq-len", "128",
             "--steps", "5", "--eval-every", "2", "--eval-tasks", "arc_easy,gsm8k", "--eval-limit", "6",
             "--no-progress")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return run


def test_train_writes_eval_rows_every_n_steps_and_at_the_end(eval_run):
    rows = [json.loads(x) for x in (eval_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4, 5]
    for r in evals:
        assert set(r["eval"]) == {"dolmino-math-gsm8k", "dolmino-wiki"}
        assert all(m["bpb"] > 0 and m["loss"] > 0 for m in r["eval"].values())
        assert set(r["tasks"]["arc_easy"]) >= {"acc", "acc_norm", "bpb"} and "bpb" in r["tasks"]["gsm8k"]
    assert evals[-1]["eval"]["dolmino-wiki"]["loss"] < evals[0]["eval"]["dolmino-wiki"]["loss"]  # it learns
    assert (eval_run / "eval.png").stat().st_size > 0 and (eval_run / "loss.png").exists()


def test_eval_under_fsdp_matches_one_process(holdout_build, eval_run, tmp_path):
    run = tmp_path / "fsdp"
    p = _cli("train", "--data", str(holdout_build), "--out", str(run), "--preset", "tiny", "--seq-len", "128",
             "--steps", "5", "--eval-every", "2", "--eval-tasks", "arc_easy,gsm8k", "--eval-limit", "6",
             "--no-progress", "--nproc", "2", "--grad-accum", "1", "--batch-tokens", "256")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # same model at step 2 only if the batches match: compare the evaluation of the initial weights instead —
    # every rank scored its share and the reduced numbers must cover every document and request exactly once
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [r["step"] for r in rows] == [2, 4, 5]
    from trainer.checkpoint import load_model_weights, read_model_config
    from trainer.config import ModelConfig
    from trainer.model import Transformer

    model = Transformer(ModelConfig(**read_model_config(run)))
    model.load_state_dict(load_model_weights(run))
    ours = Evaluator(EvalConfig(every=1, tasks=("arc_easy", "gsm8k"), limit=6), holdout_build, 128)(model, 5)
    for src, m in rows[-1]["eval"].items():
        assert m["bpb"] == pytest.approx(ours["eval"][src]["bpb"], rel=1e-5)
    for task, m in rows[-1]["tasks"].items():
        assert m["bpb"] == pytest.approx(ours["tasks"][task]["bpb"], rel=1e-5)


def test_bad_eval_requests_exit_2(holdout_build, stage2_build, tmp_path):
    p = _cli("train", "--data", str(holdout_build), "--out", str(tmp_path / "x"), "--preset", "tiny",
             "--steps", "1", "--eval-tasks", "no_such_task")
    assert p.returncode == 2 and "unknown task 'no_such_task'" in p.stderr and "Traceback" not in p.stderr
    p = _cli("train", "--data", str(stage2_build), "--out", str(tmp_path / "y"), "--preset", "tiny",
             "--steps", "1", "--eval-every", "1")
    assert p.returncode == 2 and "nothing to evaluate" in p.stderr


# ------------------------------------------------------------------------ parity with lm-evaluation-harness


def test_loglikelihoods_equal_lm_eval_on_the_exported_model(eval_run, holdout_build, tmp_path):
    """20 items (arc_easy, hellaswag, mmlu, boolq, gsm8k: 4 each; 61 requests, some truncated on the left at
    the model's 128 tokens, one with an empty context): ours == lm-eval HFLM.loglikelihood within 1e-4."""
    pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install -e .[dev])")
    pytest.importorskip("accelerate", reason="lm-eval's HFLM needs accelerate")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from trainer.checkpoint import load_model_weights, read_model_config
    from trainer.config import ModelConfig
    from trainer.evaluate import build_tokenizer
    from trainer.model import Transformer

    hf = tmp_path / "hf"
    p = _cli("export-hf", str(eval_run), "--out", str(hf))
    assert p.returncode == 0, p.stderr
    cfg = ModelConfig(**read_model_config(eval_run))
    model = Transformer(cfg)
    model.load_state_dict(load_model_weights(eval_run))
    model.eval()
    tok, eos = build_tokenizer(holdout_build)
    requests = [task_lib.Request("", " The cell is the unit of life.")]
    n_items = 0
    for name in ("arc_easy", "hellaswag", "mmlu", "boolq", "gsm8k"):
        _, items = task_lib.load_items(name, 4)
        requests += [r for it in items for r in it.requests]
        n_items += len(items)
    assert n_items == 20
    encoded = [task_lib.encode_request(tok, r, eos, cfg.seq_len) for r in requests]
    with torch.no_grad():
        ours = request_logliks(model, encoded, cfg.seq_len, 0, 1, torch.device("cpu"))

    lm = HFLM(pretrained=str(hf), dtype="float32", device="cpu", batch_size=8)
    assert lm.max_length == cfg.seq_len and lm.prefix_token_id == eos
    theirs = [ll for ll, _ in lm.loglikelihood(
        [Instance(request_type="loglikelihood", doc={}, arguments=(r.context, r.continuation), idx=i)
         for i, r in enumerate(requests)], disable_tqdm=True)]
    assert len(theirs) == len(ours) == len(requests) > 40
    assert any(len(e.tokens) == cfg.seq_len + 1 for e in encoded)  # truncation was exercised
    diff = np.abs(np.array(ours) - np.array(theirs))
    assert diff.max() < 1e-4, f"max |ours - lm-eval| = {diff.max():.2e}"
    assert np.std(ours) > 1.0  # real, varied log-likelihoods were compared


def test_a_rank_without_rows_adds_nothing(stage2_build, tmp_path):
    """With more ranks than rows, a rank runs an empty row (FSDP needs every rank in every forward): its share
    must be zero NLL over zero targets."""
    import shutil

    from trainer.evaluate import heldout_nll, load_heldout

    build = tmp_path / "b"
    shutil.copytree(stage2_build, build)
    write_holdout(build, "src", [("a", [5, 6], "0123456789")])
    src = load_heldout(build, "src")
    assert heldout_nll(Uniform(8), src, 8, rank=0, world=2, device=torch.device("cpu"))[1] == 2
    assert heldout_nll(Uniform(8), src, 8, rank=1, world=2, device=torch.device("cpu")) == (0.0, 0)
