"""Issue 21, trainer side: sequence-parallel batches, optimizer carry-over between stages (--keep-optimizer),
warmup from 0.1 x peak, and the --init-from checkpoint's architecture winning over --preset.

Every number is pinned to AMD-AIG-AIMA/Instella (cited per test; the long-context configs are on branch
`instella-long`)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from trainer.config import TrainConfig, get_preset
from trainer.optim import LRSchedule
from trainer.recipes import RECIPES, resolve_settings

K256 = 262_144


def _cli_in_process(*args: str):
    from typer.testing import CliRunner

    from cli import app

    return CliRunner().invoke(app, list(args))


# -- 1. batches under sequence parallelism ---------------------------------------------------------------------------

def test_long_recipes_count_a_shared_row_once():
    """instella-long configs/instella-3b-long-pretrain-phase2.yaml: global_train_batch_size 128, seq_parallel_size 4,
    max_duration 2500, "128 *256K/4(seq_parallel_size)=8M tokens BS", "2500 *8M=20B tokens";
    configs/instella-3b-long-sft.yaml: 64, sp 4, 250 steps (4M x 250 = 1B, Instella-Long report §4.2)."""
    phase2, sft = RECIPES["instella-long-phase2"], RECIPES["instella-long-sft"]
    assert (phase2.global_batch, phase2.sp, phase2.steps, phase2.seq_len) == (128, 4, 2500, K256)
    assert (sft.global_batch, sft.sp, sft.steps, sft.seq_len) == (64, 4, 250, K256)
    assert phase2.batch_tokens == 8 * 2**20 and phase2.total_tokens == 2500 * 8 * 2**20  # 8M x 2,500 ≈ 21.0e9
    assert sft.batch_tokens == 4 * 2**20 and sft.total_tokens == 250 * 4 * 2**20  # 4M x 250 ≈ 1.05e9
    # on 64 GPUs: 16 SP groups read 32 distinct rows, 2 per group; the four ranks of a group share them
    s = resolve_settings(TrainConfig(data="-", out="-", recipe="instella-long-phase2"),
                         get_preset("instella-3b").model, K256, None, 10_000, world=64)
    assert (s.tokens_per_step, s.micro_batch * s.grad_accum, s.data_world) == (8 * 2**20, 2, 16)
    assert s.total_tokens == phase2.total_tokens


def test_every_recipe_prints_tokens_per_step_and_total():
    res = _cli_in_process("recipes")
    assert res.exit_code == 0, res.output
    lines = {line.split(":")[0]: line for line in res.output.splitlines() if not line.startswith(" ")}
    assert set(lines) == set(RECIPES)
    assert "8,388,608 tokens/step (128/4 (sp) = 32 rows x 262,144); 2,500 steps = 20,971,520,000 tokens" \
        in lines["instella-long-phase2"]
    assert "4,194,304 tokens/step (64/4 (sp) = 16 rows x 262,144); 250 steps = 1,048,576,000 tokens" \
        in lines["instella-long-sft"]
    assert "1 epoch(s) of the build (Instella: 4.07T tokens)" in lines["instella-stage1"]
    assert "(Instella: 57.5B tokens)" in lines["instella-stage2"]


# -- 3. warmup from 0.1 x peak ---------------------------------------------------------------------------------------

def _olmo_linear_warmup(initial_lr: float, step: int, warmup_steps: int) -> float:
    """instella/optim.py `Scheduler._linear_warmup` (warmup_min_lr None -> 0.1 x lr), copied."""
    warmup_min_lr = initial_lr * 0.10
    return warmup_min_lr + (initial_lr - warmup_min_lr) * min(step, warmup_steps) / warmup_steps


def test_warmup_starts_at_a_tenth_of_the_peak_under_a_recipe():
    s = resolve_settings(TrainConfig(data="-", out="-", recipe="instella-long-phase1"),
                         get_preset("instella-3b").model, 65_536, None, 10_000, world=64)
    assert s.warmup_start == 0.1 and s.source["warmup_start"] == "recipe instella-long-phase1"
    sched = LRSchedule(s.schedule, s.lr, s.steps, s.warmup, s.final_lr_ratio, 0.2, s.warmup_start)
    for step in (1, 2, 100, 250, 499, 500):
        assert sched(step) == pytest.approx(_olmo_linear_warmup(2e-5, step, 500), rel=1e-12), step
    assert sched(1) > 0.1 * 2e-5 and sched(501) < 2e-5  # then the linear decay
    plain = resolve_settings(TrainConfig(data="-", out="-", preset="tiny", warmup=10), get_preset("tiny").model,
                             256, None, 100, world=1)
    assert plain.warmup_start == 0.0  # ours without a recipe: from 0
    assert LRSchedule("linear", 1.0, 100, 10, 0.0)(1) == pytest.approx(0.1)


# -- 4. the checkpoint's architecture wins ---------------------------------------------------------------------------

def test_instella_3b_preset_has_instellas_norm_eps():
    """hf_instella/configuration_instella.py: rms_norm_eps=1e-5."""
    assert get_preset("instella-3b").model.norm_eps == 1e-5


# -- 2. --init-from RUN --keep-optimizer -----------------------------------------------------------------------------

def _optim_state(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """exp_avg / exp_avg_sq / step of every parameter in a DCP checkpoint, read without a process group."""
    import warnings

    import torch.distributed.checkpoint as dcp

    meta = dcp.FileSystemReader(str(ckpt_dir)).read_metadata()
    out = {k: torch.empty(md.size, dtype=md.properties.dtype) for k, md in meta.state_dict_metadata.items()
           if k.startswith("optim.state.") and hasattr(md, "size")}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        dcp.load({"optim": {"state": {}}} if not out else _nest(out), checkpoint_id=str(ckpt_dir))
    return out


def _nest(flat: dict[str, torch.Tensor]) -> dict:
    """DCP keys 'optim.state.<fqn>.<name>' -> the nested dict dcp.load fills in place (same tensor objects)."""
    state: dict = {}
    for key, t in flat.items():
        fqn, name = key[len("optim.state."):].rsplit(".", 1)
        state.setdefault(fqn, {})[name] = t
    return {"optim": {"state": state}}


@pytest.fixture(scope="module")
def stage_a(stage2_build, tmp_path_factory):
    """A 3-step run with checkpoints (stage A), tiny preset, Instella's optimizer settings."""
    from trainer.train import train

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("carry") / "a"
    train(TrainConfig(data=str(stage2_build), out=str(run), preset="tiny", seq_len=256, steps=3, lr=1e-3,
                      warmup=0, progress=False, plot=False))
    return run


def _stage_b(stage2_build, run_a, out, keep):
    from trainer.train import train

    return train(TrainConfig(data=str(stage2_build), out=str(out), init_from=str(run_a), seq_len=256, steps=1,
                             lr=1e-3, warmup=0, seed=1, keep_optimizer=keep, progress=False, plot=False,
                             export=False))


def test_keep_optimizer_carries_the_adamw_moments(stage_a, stage2_build, tmp_path):
    from trainer.checkpoint import checkpoint_dir, read_trainer_state

    a = _optim_state(checkpoint_dir(stage_a, 3))
    _stage_b(stage2_build, stage_a, tmp_path / "kept", keep=True)
    _stage_b(stage2_build, stage_a, tmp_path / "fresh", keep=False)
    kept, fresh = _optim_state(checkpoint_dir(tmp_path / "kept", 1)), _optim_state(checkpoint_dir(tmp_path / "fresh", 1))
    assert read_trainer_state(checkpoint_dir(tmp_path / "kept", 1))["step"] == 1  # the step counter restarted
    names = [k for k in a if k.endswith(".exp_avg")]
    assert names
    for k in names:
        # same weights and data in both B runs, hence the same gradient g: fresh m = 0.1 g, kept m = 0.9 m_A + 0.1 g
        torch.testing.assert_close(kept[k], 0.9 * a[k] + fresh[k], rtol=1e-4, atol=1e-9, msg=k)
        assert not torch.allclose(kept[k], fresh[k])
        step = k[: -len("exp_avg")] + "step"
        assert float(kept[step]) == float(a[step]) + 1 and float(fresh[step]) == 1  # AdamW's bias correction carried


def test_keep_optimizer_refuses_sources_without_optimizer_state(stage_a, stage2_build, tmp_path):
    base = ["train", "--data", str(stage2_build), "--out", str(tmp_path / "r"), "--seq-len", "256", "--steps", "1",
            "--lr", "1e-3", "--no-progress"]
    res = _cli_in_process(*base, "--init-from", str(stage_a), "--keep-optimizer")
    assert res.exit_code == 0, res.output  # a run dir: its latest checkpoint has the moments
    from trainer.merge import merge_checkpoints

    merge_checkpoints([stage_a], tmp_path / "merged")
    res = _cli_in_process(*base, "--init-from", str(tmp_path / "merged"), "--recipe", "instella-stage2",
                          "--batch-tokens", "512")  # the recipe keeps the optimizer by default
    assert res.exit_code == 2 and "holds no optimizer state" in res.stderr and "--no-keep-optimizer" in res.stderr
    res = _cli_in_process(*base, "--keep-optimizer")
    assert res.exit_code == 2 and "needs --init-from" in res.stderr
    res = _cli_in_process(*base, "--init-from", str(stage_a), "--keep-optimizer", "--decay-norm")
    assert res.exit_code == 2 and "parameter groups differ" in res.stderr


def test_recipes_keep_the_optimizer_where_instella_did():
    """main: configs/instella-3b-pretrain-stage2-seed-*.yaml `reset_trainer_state: true` only (moments kept);
    configs/instella-3b-sft.yaml both resets (fresh). instella-long: phase1 both resets, phase2 and long-sft
    `reset_trainer_state: true` only."""
    kept = {n for n, r in RECIPES.items() if r.keep_optimizer}
    assert kept == {"instella-stage2", "instella-long-phase2", "instella-long-sft"}


def test_checkpoint_architecture_wins_over_preset_and_recipe(stage_a, stage2_build, tmp_path):
    """stage A is tiny with eps 1e-6; a recipe (eps 1e-5) or --preset on top of --init-from keeps 1e-6."""
    from trainer.train import resolve_run

    assert json.loads((stage_a / "config.json").read_text())["model"]["norm_eps"] == 1e-6
    cfg = TrainConfig(data=str(stage2_build), out="-", init_from=str(stage_a), preset="tiny", recipe="instella-sft",
                      seq_len=256, batch_tokens=512, steps=1)
    settings, mcfg = resolve_run(cfg, world=1)
    assert settings.norm_eps == mcfg.norm_eps == 1e-6 and settings.source["norm_eps"] == "--init-from config"
    res = _cli_in_process("train", "--data", str(stage2_build), "--out", str(tmp_path / "r"), "--init-from",
                          str(stage_a), "--seq-len", "256", "--lr", "1e-3", "--norm-eps", "1e-5")
    assert res.exit_code == 2 and "contradicts the --init-from checkpoint's RMSNorm eps" in res.stderr, res.output


def test_instella_hf_checkpoint_keeps_its_eps_under_preset(tmp_path):
    """The README's `--preset instella-3b --init-from hf:DIR`: an Instella checkpoint (rms_norm_eps 1e-5) trains at
    1e-5, not at a preset's eps (was 1e-6: logits drift 4e-3)."""
    from trainer.hf import hf_config_to_model_config
    from trainer.recipes import resolve_settings as resolve
    from trainer.train import base_model_config

    hf = tmp_path / "hf"
    hf.mkdir()
    cfg = get_preset("tiny").model
    (hf / "config.json").write_text(json.dumps({
        "architectures": ["InstellaForCausalLM"], "model_type": "instella", "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_dim, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads, "rms_norm_eps": 3e-5, "rope_theta": 10000.0, "vocab_size": 50304,
        "max_position_embeddings": 256, "tie_word_embeddings": False, "hidden_act": "silu"}))
    assert hf_config_to_model_config(hf).norm_eps == 3e-5
    tcfg = TrainConfig(data="-", out="-", preset="tiny", init_from=f"hf:{hf}")
    base, source = base_model_config(tcfg)
    assert base.norm_eps == 3e-5 and source.startswith("--init-from")
    s = resolve(tcfg, base, 256, None, 10, 1, source)
    assert s.norm_eps == 3e-5
    assert math.isclose(resolve(TrainConfig(data="-", out="-", preset="tiny"), get_preset("tiny").model, 256, None,
                                10, 1).norm_eps, 1e-6)
