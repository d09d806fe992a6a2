"""Stage recipes as data (issue 12): Instella's numbers, the settings a run resolves, the long-context trap, the
fidelity switches (causal attention, mitchell init, norm decay) and the three-seed soup in one command."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.config import ModelConfig, TrainConfig, get_preset
from trainer.recipes import RECIPES, resolve_settings

ROOT = Path(__file__).resolve().parents[1]
K4, K64, K256 = 4096, 65536, 262144

# Instella's numbers per stage, written out independently of trainer/recipes.py (AMD-AIG-AIMA/Instella
# configs/instella-3b-*.yaml on main, configs/instella-3b-long-*.yaml on branch instella-long):
# lr, schedule, warmup, final ratio, tokens per step, row length, duration, seeds, sequence parallel, attention.
# Tokens per step count distinct rows: under sequence parallelism the 4 ranks of a group share a row, so long phase 2
# is global_train_batch_size 128 / seq_parallel_size 4 = 32 rows x 256K = 8M ("128 *256K/4(seq_parallel_size)=8M
# tokens BS", configs/instella-3b-long-pretrain-phase2.yaml) and the long SFT 64 / 4 = 16 rows = 4M
# (configs/instella-3b-long-sft.yaml).
INSTELLA = {
    "instella-stage1": (4e-4, "cosine", 2000, 0.1, 1024 * 4096, K4, ("epochs", 1), (), 1, "causal"),
    "instella-stage2": (4e-5, "linear", 0, 0.0, 1024 * 4096, K4, ("epochs", 1), (5796, 6198, 8915), 1, "causal"),
    "instella-long-phase1": (2e-5, "linear", 500, 0.001, 64 * 65536, K64, ("steps", 5000), (), 1, "document"),
    "instella-long-phase2": (2e-5, "linear", 250, 0.001, 128 // 4 * 262144, K256, ("steps", 2500), (), 4, "document"),
    "instella-long-sft": (4e-5, "linear", 13, 0.001, 64 // 4 * 262144, K256, ("steps", 250), (), 4, "document"),
    "instella-sft": (1e-5, "linear", 500, 0.001, 128 * 4096, K4, ("epochs", 3), (), 1, "causal"),
}


def _cli_in_process(*args: str):
    """`cli.py ARGS` in this process (no interpreter start-up): exit code, stderr and any uncaught exception."""
    from typer.testing import CliRunner

    from cli import app

    return CliRunner().invoke(app, list(args))


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("name", sorted(INSTELLA))
def test_each_recipe_resolves_to_instella_numbers(name):
    lr, schedule, warmup, final, batch, seq_len, (kind, amount), seeds, sp, attention = INSTELLA[name]
    assert RECIPES[name].seeds == seeds
    world, rows = 64, 100_000  # a 64-GPU job on a build of 100,000 rows of the recipe's length
    s = resolve_settings(TrainConfig(data="-", out="-", recipe=name), get_preset("instella-3b").model, seq_len,
                         None, rows, world)
    assert (s.lr, s.schedule, s.warmup, s.final_lr_ratio) == (lr, schedule, warmup, final)
    assert (s.seq_len, s.tokens_per_step, s.sp) == (seq_len, batch, sp)
    assert s.micro_batch * s.grad_accum * (world // sp) * seq_len == batch  # exact conversion for this hardware
    assert s.steps == (amount if kind == "steps" else math.ceil(amount * rows * seq_len / batch))
    assert (s.beta1, s.beta2, s.eps, s.weight_decay, s.grad_clip, s.dtype) == (0.9, 0.95, 1e-8, 0.1, 1.0, "bf16")
    assert (s.attention, s.positions, s.init, s.norm_eps, s.decay_norm) == (attention, "absolute", "mitchell", 1e-5,
                                                                            True)
    assert all(src.startswith("recipe") for k, src in s.source.items() if k in ("lr", "schedule", "warmup"))


def test_flags_override_the_recipe_and_batch_conversion_is_exact():
    model = get_preset("tiny").model
    cfg = TrainConfig(data="-", out="-", recipe="instella-stage2", lr=1e-3, attention="document", batch_tokens=8192,
                      micro_batch=2, tokens=100_000)
    s = resolve_settings(cfg, model, 4096, None, 50, world=1)
    assert (s.lr, s.attention, s.schedule) == (1e-3, "document", "linear")
    assert (s.micro_batch, s.grad_accum, s.tokens_per_step) == (2, 1, 8192)
    assert s.steps == 13 and "rounded up" in s.source["steps"]  # 100,000 / 8,192 = 12.2
    with pytest.raises(ValueError, match="whole number"):  # 5,000 tokens is not a whole number of rows
        resolve_settings(TrainConfig(data="-", out="-", batch_tokens=5000), model, 4096, None, 50, world=1)
    with pytest.raises(ValueError, match="split evenly"):  # 3 rows over 2 ranks
        resolve_settings(TrainConfig(data="-", out="-", batch_tokens=3 * 4096), model, 4096, None, 50, world=2)
    with pytest.raises(ValueError, match="contradicts"):
        resolve_settings(TrainConfig(data="-", out="-", batch_tokens=8192, grad_accum=3), model, 4096, None, 50, 1)
    with pytest.raises(ValueError, match="must divide the number of processes"):  # SP 4 on one process
        resolve_settings(TrainConfig(data="-", out="-", recipe="instella-long-sft"), model, K256, None, 50, 1)
    # without recipe or token batch, the old flags still define the batch
    s = resolve_settings(TrainConfig(data="-", out="-", micro_batch=2, grad_accum=3), model, 128, None, 50, 2)
    assert (s.micro_batch, s.grad_accum, s.tokens_per_step, s.steps) == (2, 3, 2 * 3 * 2 * 128, 100)


def test_sequence_length_comes_from_the_build():
    """The trap: a 64K build used to train 4,096-token pieces (min(preset, build)); now the build's rows are
    trained whole, and a recipe of shorter rows refuses a longer build unless --seq-len says so."""
    model = get_preset("instella-3b").model  # preset seq_len 4096
    s = resolve_settings(TrainConfig(data="-", out="-", preset="instella-3b"), model, K64, 514640.0, 10, 8)
    assert s.seq_len == K64 and s.rope_theta == 514640.0 and s.source["seq_len"] == "build"
    with pytest.raises(ValueError, match="pass --seq-len 4096 to cut them on purpose"):
        resolve_settings(TrainConfig(data="-", out="-", recipe="instella-stage2"), model, K64, None, 10, 8)
    s = resolve_settings(TrainConfig(data="-", out="-", recipe="instella-stage2", seq_len=4096), model, K64, None,
                         10, 8)
    assert s.seq_len == 4096 and "cuts each" in s.source["seq_len"]
    with pytest.raises(ValueError, match="build the data at 65,536"):  # rows cannot be made longer
        resolve_settings(TrainConfig(data="-", out="-", recipe="instella-long-phase1"), model, K4, None, 10, 8)


@pytest.fixture(scope="module")
def long_build(tmp_path_factory, hub):
    """A real build with 65,536-token rows and the long RoPE θ (a few rows from the mirror)."""
    from conftest import build

    spec = tmp_path_factory.mktemp("spec") / "long-test.yaml"
    spec.write_text("name: long-test\nseq_len: 65536\ntokenizer: allenai/eleuther-ai-gpt-neox-20b-pii-special\n"
                    "rope_theta: 514640\nseed: 0\nsources:\n"
                    '  - {name: wiki, uri: "hf://datasets/allenai/dolmino-mix-1124/data/wiki/*.json.gz"}\n')
    return build(spec, tmp_path_factory.mktemp("long") / "build", max_tokens=150_000)


def test_a_64k_build_trains_64k_rows_by_default(long_build, tmp_path):
    from trainer.train import resolve_run

    settings, mcfg = resolve_run(TrainConfig(data=str(long_build), out="-", preset="instella-3b"), world=8)
    assert (settings.seq_len, mcfg.seq_len, mcfg.rope_theta) == (K64, K64, 514640.0)
    settings, _ = resolve_run(TrainConfig(data=str(long_build), out="-", preset="tiny", seq_len=4096), world=1)
    assert settings.seq_len == 4096  # shorter only when asked for
    res = _cli_in_process("train", "--data", str(long_build), "--out", str(tmp_path / "r"), "--recipe",
                          "instella-stage2", "--preset", "tiny")
    assert res.exit_code == 2 and "--seq-len 4096" in res.stderr, res.output


def test_training_uses_the_build_rows_not_the_preset_length(stage2_build, tmp_path):
    """tiny's preset length is 256; the mirror build's rows are 4,096 and are what a step trains on."""
    from trainer.metrics import read_metrics
    from trainer.train import train

    torch.set_num_threads(1)
    run = tmp_path / "run"
    train(TrainConfig(data=str(stage2_build), out=str(run), preset="tiny", steps=1, progress=False, plot=False,
                      export=False))
    assert read_metrics(run)[0]["n_tokens"] == 4096
    assert json.loads((run / "train_config.json").read_text())["resolved"]["seq_len"] == 4096


# -- fidelity switches -----------------------------------------------------------------------------------------------

CFG = ModelConfig(n_layers=2, d_model=32, n_heads=4, ffn_dim=64, seq_len=64, vocab_size=97)


def _dense_causal_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """Plain causal LM over the whole row written with torch's SDPA(is_causal=True): no cu_seqlens, no masking."""
    from midtrain.kernels.rope import apply_rope, rope_cos_sin

    T, d, H = len(ids), CFG.d_model, CFG.n_heads
    cos, sin = rope_cos_sin(torch.arange(T), CFG.head_dim, CFG.rope_theta, dtype=torch.float64)
    x = model.embed(ids)
    for blk in model.blocks:
        a = blk.attn
        q, k, v = a.wqkv(blk.attn_norm(x)).split(d, dim=-1)
        q = apply_rope(a.q_norm(q).view(T, H, -1), cos, sin).transpose(0, 1)  # (H, T, hd)
        k = apply_rope(a.k_norm(k).view(T, H, -1), cos, sin).transpose(0, 1)
        o = F.scaled_dot_product_attention(q, k, v.view(T, H, -1).transpose(0, 1), is_causal=True)
        x = x + a.wo(o.transpose(0, 1).reshape(T, d))
        x = x + blk.mlp(blk.mlp_norm(x))
    logits = model.lm_head(model.norm(x))
    return F.cross_entropy(logits[:-1], ids[1:], reduction="sum")


@torch.no_grad()
def test_causal_attention_equals_the_dense_causal_reference():
    from trainer.data import Sample, collate
    from trainer.model import Transformer

    torch.manual_seed(0)
    model = Transformer(CFG).double()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(2, 97, (34,), generator=g).numpy()
    smp = Sample(tokens, [11, 17, 6], [False] * 3, None)
    b = collate([smp], positions="absolute", attention="causal")
    assert b.cu_seqlens.tolist() == [0, 34] and b.n_valid == 33  # first tokens of docs 2 and 3 are targets
    causal = model(b.input_ids, b.positions, b.cu_seqlens, b.max_seqlen, b.labels)
    ref = _dense_causal_loss(model, torch.from_numpy(tokens))
    torch.testing.assert_close(causal, ref, rtol=1e-10, atol=1e-10)
    doc = collate([smp], positions="absolute", attention="document")  # guard: document masking is different
    assert abs(float(model(doc.input_ids, doc.positions, doc.cu_seqlens, doc.max_seqlen, doc.labels) - ref)) > 1e-3
    # trailing padding stays out of the causal sequence and has no targets
    padded = collate([Sample(np.concatenate([tokens, [1] * 6]), [11, 17, 6, 6], [False] * 3 + [True], None)],
                     positions="absolute", attention="causal")
    assert padded.cu_seqlens.tolist() == [0, 34, 40] and padded.n_valid == 33
    loss = model(padded.input_ids, padded.positions, padded.cu_seqlens, padded.max_seqlen, padded.labels)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)


def test_mitchell_init_statistics_match_the_formulas():
    from trainer.model import Transformer

    d, f, L = 256, 704, 4
    cfg = ModelConfig(n_layers=L, d_model=d, n_heads=4, ffn_dim=f, seq_len=64, vocab_size=2048, init="mitchell")
    torch.manual_seed(0)
    model = Transformer(cfg)
    trunc = 0.98658  # std of N(0, 1) truncated at ±3
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.all(p == 1), name
            continue
        layer = int(name.split(".")[1]) if name.startswith("blocks.") else None
        if name.endswith("wo.weight"):
            sigma = 1 / math.sqrt(2 * d * (layer + 1))
        elif name.endswith("w_down.weight"):
            sigma = 1 / math.sqrt(2 * f * (layer + 1))
        else:  # embedding, wqkv, w_gate_up, lm_head
            sigma = 1 / math.sqrt(d)
        w = p.detach().double()
        assert w.abs().max() <= 3 * sigma * (1 + 1e-6), name
        assert w.std().item() == pytest.approx(sigma * trunc, rel=0.03), name
        assert abs(w.mean().item()) < 0.02 * sigma, name
    normal = Transformer(ModelConfig(n_layers=L, d_model=d, n_heads=4, ffn_dim=f, seq_len=64, vocab_size=2048))
    assert normal.embed.weight.std().item() == pytest.approx(0.02, rel=0.03)  # our default is unchanged


def test_norm_weight_decay_switch():
    from trainer.model import Transformer
    from trainer.optim import build_optimizer

    model = Transformer(CFG)
    n_norm = sum(1 for n, _ in model.named_parameters() if n.endswith("norm.weight"))
    ours = build_optimizer(model, 1e-3, (0.9, 0.95), 1e-8, 0.1)
    assert len(ours.param_groups[1]["params"]) == n_norm and ours.param_groups[1]["weight_decay"] == 0.0
    instella = build_optimizer(model, 1e-3, (0.9, 0.95), 1e-8, 0.1, decay_norm=True)
    assert len(instella.param_groups[0]["params"]) == len(list(model.parameters()))
    assert instella.param_groups[0]["weight_decay"] == 0.1 and not instella.param_groups[1]["params"]


# -- the stage-2 soup in one command ----------------------------------------------------------------------------------

def _soup_args(build, out) -> list[str]:
    return ["train", "--data", str(build), "--out", str(out), "--recipe", "instella-stage2", "--preset", "tiny",
            "--seq-len", "256", "--batch-tokens", "512", "--steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def soup(stage2_build, tmp_path_factory):
    out = tmp_path_factory.mktemp("soup") / "stage2"
    proc = _cli(*_soup_args(stage2_build, out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_rerunning_the_soup_command_keeps_finished_seeds(soup, stage2_build):
    from trainer.checkpoint import load_model_weights

    out, _ = soup
    before = load_model_weights(out)
    proc = _cli(*_soup_args(stage2_build, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("already finished with this exact config, kept") == 3
    assert "resolved settings" not in proc.stdout  # nothing was retrained
    after = load_model_weights(out)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_stage2_recipe_trains_three_seeds_and_merges(soup):
    from trainer.checkpoint import load_model_weights

    out, stdout = soup
    runs = [out / f"seed-{s}" for s in (5796, 6198, 8915)]
    for pattern in (r"lr\s+4e-05\s+recipe instella-stage2", r"schedule\s+linear\s+recipe instella-stage2",
                    r"tokens_per_step\s+512\s+flag"):
        assert len(re.findall(rf"^\s+{pattern}$", stdout, re.M)) == 3, pattern  # printed by each seed's run
    states = [load_model_weights(r) for r in runs]
    assert not torch.equal(states[0]["lm_head.weight"], states[1]["lm_head.weight"])  # the seeds differ
    merged = load_model_weights(out)
    for k, v in merged.items():
        torch.testing.assert_close(v, (states[0][k] + states[1][k] + states[2][k]) / 3, rtol=1e-6, atol=1e-7)
    assert json.loads((out / "config.json").read_text())["merged_from"] == [str(r) for r in runs]


def test_recipe_numbers_are_recorded_in_the_run_config(soup):
    out, _ = soup
    for seed in (5796, 6198, 8915):
        raw = json.loads((out / f"seed-{seed}" / "train_config.json").read_text())
        r = raw["resolved"]
        assert raw["seed"] == seed and r["recipe"] == "instella-stage2"
        assert (r["lr"], r["schedule"], r["warmup"], r["final_lr_ratio"]) == (4e-5, "linear", 0, 0.0)
        assert (r["beta1"], r["beta2"], r["eps"], r["weight_decay"], r["grad_clip"]) == (0.9, 0.95, 1e-8, 0.1, 1.0)
        assert (r["dtype"], r["attention"], r["positions"], r["init"], r["norm_eps"], r["decay_norm"]) == \
            ("bf16", "causal", "absolute", "mitchell", 1e-5, True)
        assert (r["seq_len"], r["tokens_per_step"], r["grad_accum"], r["steps"]) == (256, 512, 2, 2)
        assert r["source"]["lr"] == "recipe instella-stage2" and r["source"]["tokens_per_step"] == "flag"


def test_init_from_our_merged_soup_takes_its_model(soup, stage2_build, tmp_path):
    """--init-from OUT without --preset: the model comes from the soup's config.json, the weights from it."""
    from trainer.checkpoint import load_model_weights
    from trainer.train import train

    out, _ = soup
    torch.set_num_threads(1)
    run = tmp_path / "next"
    train(TrainConfig(data=str(stage2_build), out=str(run), init_from=str(out), seq_len=256, steps=1, lr=1e-6,
                      progress=False, plot=False))
    soup_w, new_w = load_model_weights(out), load_model_weights(run)
    assert soup_w.keys() == new_w.keys()
    for k in soup_w:  # one step at lr 1e-6 barely moves the weights; a fresh init would be far off
        torch.testing.assert_close(new_w[k], soup_w[k], rtol=0, atol=1e-5, msg=k)


def test_init_from_hf_takes_the_hf_checkpoint(soup, stage2_build, tokenizer_path, tmp_path):
    """The soup exported as a Hugging Face checkpoint (trainer/hf.py) and read back by `--init-from hf:DIR` without
    --preset: the model comes from its config.json and training starts from its weights."""
    from trainer.checkpoint import load_model_weights
    from trainer.hf import export_hf

    out, _ = soup
    hf_dir = export_hf(out, tmp_path / "hf", tokenizer=str(tokenizer_path))
    run = tmp_path / "from-hf"
    proc = _cli("train", "--data", str(stage2_build), "--out", str(run), "--init-from", f"hf:{hf_dir}", "--seq-len",
                "256", "--steps", "1", "--lr", "1e-6", "--no-progress", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    soup_w, new_w = load_model_weights(out), load_model_weights(run)
    for k in soup_w:
        torch.testing.assert_close(new_w[k], soup_w[k], rtol=0, atol=1e-5, msg=k)
    res = _cli_in_process("train", "--data", str(stage2_build), "--out", str(tmp_path / "x"), "--init-from",
                          f"hf:{hf_dir}", "--preset", "small")
    assert res.exit_code == 2 and "does not fit --preset small" in res.stderr, res.output


# -- bad values exit 2 with one line ---------------------------------------------------------------------------------

def test_bad_trainer_options_exit_2_without_traceback(stage2_build, tmp_path):
    base = ["train", "--data", str(stage2_build), "--out", str(tmp_path / "r"), "--preset", "tiny"]
    cases = [
        (["--recipe", "instella-stage9"], "unknown recipe"),
        (["--steps", "-3"], "steps must be >= 1"),
        (["--seq-len", "1000"], "must divide the build's row length 4096"),
        (["--seeds", "1,,2"], "--seeds must be comma-separated integers"),
        (["--seeds", "1,x"], "--seeds must be comma-separated integers"),
        (["--seeds", "3,3"], "distinct"),
        (["--seed", "1", "--seeds", "1,2"], "not both"),
        (["--batch-tokens", "5000"], "not a whole number"),
        (["--steps", "5", "--tokens", "100"], "give one duration"),
        (["--recipe", "instella-long-phase1"], "build the data at 65,536"),
        (["--attention", "sliding"], "attention must be one of"),
        (["--init", "xavier"], "init must be one of"),
        (["--init-from", str(tmp_path / "nowhere")], "neither a run dir"),
        (["--epochs", "0"], "epochs must be > 0"),
    ]
    for extra, message in cases:
        res = _cli_in_process(*base, *extra)
        assert res.exit_code == 2, (extra, res.output, res.exception)
        assert message in res.stderr and "Traceback" not in res.output, (extra, res.stderr)
    # and as a real process: exit status 2, one line on stderr
    proc = _cli(*base, "--seeds", "5796;6198", timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--seeds" in proc.stderr, proc.stderr
