"""Hugging Face interop (issue 12): export-hf loads in stock transformers with our logits; Instella's released
format imports with Instella's logits; bad checkpoints are refused with exit 2.

The Instella checkpoint is built here with the released key names and config.json fields (AMD-AIG-AIMA/Instella
hf_instella/convert_instella_to_hf.py), sharded with a safetensors index like the published repos, and checked
against `instella_reference_logits`: Instella's forward written from hf_instella/modeling_instella.py directly on
those keys, so a mix-up in the key mapping (q/k/v order, gate vs up, which norm is which) changes the logits.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainer.checkpoint import load_model_weights, read_model_config
from trainer.config import ModelConfig, get_preset
from trainer.hf import (
    HFFormatError,
    export_hf,
    hf_config_to_model_config,
    load_hf_checkpoint,
    model_config_to_hf_config,
)
from trainer.model import Transformer

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
TINY = get_preset("tiny").model
TOL = 1e-4  # fp32 logits, as the issue asks


def _train(*args: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--preset", "tiny", "--seq-len", "128",
                           "--no-progress", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _cli(*args: str, check: bool = True):
    """`python cli.py ARGS` in this process (typer's runner): the HF commands need no process group."""
    from typer.testing import CliRunner

    import cli

    result = CliRunner().invoke(cli.app, list(args))
    if check:
        assert result.exit_code == 0, result.output + result.stderr + repr(result.exception)
    return result


def our_logits(weights: dict[str, torch.Tensor], cfg: ModelConfig, ids: torch.Tensor) -> torch.Tensor:
    """Our model on a packed batch holding one document (cu_seqlens [0, T], positions 0..T-1)."""
    model = Transformer(cfg)
    model.load_state_dict(weights)
    model.eval()
    T = ids.numel()
    with torch.no_grad():
        return model(ids, torch.arange(T), torch.tensor([0, T], dtype=torch.int32), T)


def hf_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)  # no remote code
    model.eval()
    with torch.no_grad():
        return model(ids[None]).logits[0]


# ------------------------------------------------------------------ acceptance: a model trained here -> transformers


@pytest.fixture(scope="module")
def trained_run(stage2_build, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("hf") / "run"
    _train("--data", str(stage2_build), "--out", str(run), "--steps", "3")
    return run


def test_exported_run_loads_in_transformers_with_our_logits(trained_run, tmp_path):
    out = tmp_path / "hf"
    _cli("export-hf", str(trained_run), "--out", str(out))
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["OlmoeForCausalLM"] and "auto_map" not in config  # nothing remote
    assert (config["eos_token_id"], config["pad_token_id"], config["tie_word_embeddings"]) == (0, 1, False)
    run_cfg = ModelConfig(**read_model_config(trained_run))
    assert config["rope_theta"] == run_cfg.rope_theta and config["max_position_embeddings"] == run_cfg.seq_len

    tok = transformers.AutoTokenizer.from_pretrained(out)  # offline: the files next to the weights
    assert (tok.eos_token_id, tok.pad_token_id) == (0, 1)
    ids = tok("The mitochondria is the powerhouse of the cell. Energy is made there.").input_ids + [tok.eos_token_id]
    ids = torch.tensor(ids)
    assert tok.decode(ids[:-1]).startswith("The mitochondria")

    ours = our_logits(load_model_weights(trained_run), run_cfg, ids)
    theirs = hf_logits(out, ids)
    assert ours.shape == theirs.shape == (ids.numel(), run_cfg.vocab_size)
    assert (ours - theirs).abs().max().item() < TOL
    assert ours.std().item() > 1e-2  # real, non-degenerate logits were compared


# --------------------------------------------------------------------------------- Instella's released format


def instella_reference_logits(state: dict[str, torch.Tensor], config: dict, ids: torch.Tensor) -> torch.Tensor:
    """InstellaForCausalLM's forward (hf_instella/modeling_instella.py) on Instella key names, one sequence."""
    d, H = config["hidden_size"], config["num_attention_heads"]
    hd, eps, T = d // H, config["rms_norm_eps"], ids.numel()

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def rope(x, cos, sin):  # x [H, T, hd], rotate-half
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    inv_freq = 1.0 / (config["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    freqs = torch.arange(T).float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()
    w = {k: v.float() for k, v in state.items()}
    x = w["model.embed_tokens.weight"][ids]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "pre_attention_layernorm.weight"])
        q = rms(h @ w[p + "self_attn.q_proj.weight"].T, w[p + "self_attn.q_norm.weight"])
        k = rms(h @ w[p + "self_attn.k_proj.weight"].T, w[p + "self_attn.k_norm.weight"])
        v = h @ w[p + "self_attn.v_proj.weight"].T
        q, k, v = (t.view(T, H, hd).transpose(0, 1) for t in (q, k, v))
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(hd)
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        o = (scores.softmax(-1) @ v).transpose(0, 1).reshape(T, d)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "pre_feedforward_layernorm.weight"])
        mlp = F.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)
        x = x + mlp @ w[p + "mlp.down_proj.weight"].T
    return rms(x, w["model.norm.weight"]) @ w["lm_head.weight"].T


def instella_config(cfg: ModelConfig) -> dict:
    """config.json as Instella's converter writes it (InstellaConfig.save_pretrained + auto_map)."""
    return {
        "architectures": ["InstellaForCausalLM"], "model_type": "instella",
        "auto_map": {"AutoConfig": "configuration_instella.InstellaConfig",
                     "AutoModelForCausalLM": "modeling_instella.InstellaForCausalLM"},
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1,
        "hidden_act": "silu", "hidden_size": cfg.d_model, "initializer_range": 0.02,
        "intermediate_size": cfg.ffn_dim, "max_position_embeddings": 4096, "num_attention_heads": cfg.n_heads,
        "num_hidden_layers": cfg.n_layers, "num_key_value_heads": cfg.n_heads, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.47.1", "use_cache": True, "vocab_size": cfg.vocab_size,
    }


@pytest.fixture
def instella_dir(tmp_path) -> Path:
    """A tiny random checkpoint in Instella's released layout: 2 safetensors shards + index, config.json."""
    from safetensors.torch import save_file

    cfg, d, f = TINY, TINY.d_model, TINY.ffn_dim
    g = torch.Generator().manual_seed(7)

    def rand(*shape, scale=0.05, center=0.0):
        return (center + scale * torch.randn(*shape, generator=g)).to(torch.bfloat16)

    state = {"model.embed_tokens.weight": rand(cfg.vocab_size, d, scale=0.5), "model.norm.weight": rand(d, center=1),
             "lm_head.weight": rand(cfg.vocab_size, d)}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj", (d, d)), ("self_attn.k_proj", (d, d)), ("self_attn.v_proj", (d, d)),
                            ("self_attn.o_proj", (d, d)), ("mlp.gate_proj", (f, d)), ("mlp.up_proj", (f, d)),
                            ("mlp.down_proj", (d, f))):
            state[p + name + ".weight"] = rand(*shape, scale=0.2)
        for name in ("self_attn.q_norm", "self_attn.k_norm", "pre_attention_layernorm", "pre_feedforward_layernorm"):
            state[p + name + ".weight"] = rand(d, scale=0.3, center=1.0)  # unequal norms: swapping them shows
    out = tmp_path / "Instella-tiny"
    out.mkdir()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, str(out / name), metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(v.numel() * 2 for v in state.values())},
             "weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    (out / "config.json").write_text(json.dumps(instella_config(cfg)))
    return out


def _instella_state(path: Path) -> dict[str, torch.Tensor]:
    from trainer.hf import read_hf_weights

    return read_hf_weights(path)


def test_instella_checkpoint_imports_with_instellas_logits(instella_dir):
    cfg = hf_config_to_model_config(instella_dir)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.ffn_dim, cfg.vocab_size) == \
        (TINY.n_layers, TINY.d_model, TINY.n_heads, TINY.ffn_dim, TINY.vocab_size)
    assert (cfg.seq_len, cfg.rope_theta, cfg.norm_eps) == (4096, 10000.0, 1e-6)
    ids = torch.randint(2, 50_000, (96,), generator=torch.Generator().manual_seed(1))
    reference = instella_reference_logits(_instella_state(instella_dir), instella_config(cfg), ids)
    ours = our_logits(load_hf_checkpoint(instella_dir, cfg), cfg, ids)
    assert (ours - reference).abs().max().item() < TOL
    assert reference.std().item() > 0.1


def test_instella_round_trip_and_transformers_export(instella_dir, tmp_path):
    """import-hf -> export-hf --format instella gives back the released tensors; --format transformers loads in
    stock transformers with Instella's logits."""
    imported = tmp_path / "imported"
    _cli("import-hf", str(instella_dir), "--out", str(imported))
    assert ModelConfig(**read_model_config(imported)) == hf_config_to_model_config(instella_dir)

    back = tmp_path / "instella-again"
    _cli("export-hf", str(imported), "--out", str(back), "--format", "instella", "--dtype", "bfloat16")
    original, again = _instella_state(instella_dir), _instella_state(back)
    assert set(again) == set(original)
    assert all(torch.equal(again[k], original[k]) for k in original)  # bf16 -> fp32 -> bf16 is exact
    config, released = json.loads((back / "config.json").read_text()), instella_config(TINY)
    for field in ("architectures", "model_type", "auto_map", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "rope_theta", "vocab_size",
                  "tie_word_embeddings", "eos_token_id", "pad_token_id", "max_position_embeddings"):
        assert config[field] == released[field], field
    assert hf_config_to_model_config(back) == hf_config_to_model_config(instella_dir)

    hf = tmp_path / "hf"
    _cli("export-hf", str(imported), "--out", str(hf))
    ids = torch.randint(2, 50_000, (64,), generator=torch.Generator().manual_seed(2))
    reference = instella_reference_logits(original, released, ids)
    assert (hf_logits(hf, ids) - reference).abs().max().item() < TOL
    # and our own export imports back unchanged
    reimported, weights = load_hf_checkpoint(hf, TINY), load_model_weights(imported)
    assert set(reimported) == set(weights) and all(torch.equal(reimported[k], weights[k]) for k in weights)


def test_imported_instella_weights_start_a_training_run(instella_dir, stage2_build, tmp_path):
    imported, run = tmp_path / "imported", tmp_path / "run"
    _cli("import-hf", str(instella_dir), "--out", str(imported))
    _train("--data", str(stage2_build), "--out", str(run), "--steps", "1", "--lr", "1e-12", "--init-from",
           str(imported))
    start, after = load_model_weights(imported), load_model_weights(run)
    assert all(torch.allclose(start[k], after[k], atol=1e-6) for k in start)  # training started from them


# ------------------------------------------------------------------------------------------------- refusals


def _write_config(path: Path, **overrides) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = {**instella_config(TINY), **overrides}
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("overrides, message", [
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "unsupported architecture"),
    ({"num_key_value_heads": 2}, "grouped-query"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "RoPE scaling"),
    ({"tie_word_embeddings": True}, "tied"),
    ({"architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "num_experts": 64, "num_experts_per_tok": 8},
     "experts"),
])
def test_unsupported_configs_are_refused(tmp_path, overrides, message):
    path = _write_config(tmp_path / "ckpt", **overrides)
    with pytest.raises(HFFormatError, match=message):
        hf_config_to_model_config(path)
    proc = _cli("import-hf", str(path), "--out", str(tmp_path / "out"), check=False)
    assert proc.exit_code == 2 and message in proc.stderr


def test_missing_or_foreign_weights_are_named(instella_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    shard = instella_dir / "model-00002-of-00002.safetensors"
    tensors = load_file(str(shard))
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(shard))
    with pytest.raises(HFFormatError, match=f"missing weight '{dropped}'"):
        load_hf_checkpoint(instella_dir, TINY)
    save_file({**tensors, "model.layers.9.mlp.up_proj.weight": tensors[dropped].clone()}, str(shard))
    with pytest.raises(HFFormatError, match="unexpected weight"):
        load_hf_checkpoint(instella_dir, TINY)
    small = ModelConfig(n_layers=1, d_model=64, n_heads=4, ffn_dim=176, seq_len=128)
    with pytest.raises(HFFormatError, match="n_layers 2 != 1"):
        load_hf_checkpoint(instella_dir, small)


def test_bad_paths_exit_2(tmp_path):
    for args in (["import-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                 ["import-hf", str(tmp_path), "--out", str(tmp_path / "o")],  # no config.json
                 ["export-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                 ["export-hf", str(tmp_path), "--out", str(tmp_path / "o")],  # no checkpoints
                 ["export-hf", str(tmp_path), "--out", str(tmp_path / "o"), "--format", "gguf"]):
        proc = _cli(*args, check=False)
        assert proc.exit_code == 2, (args, proc.output, proc.exception)
        assert proc.stderr.startswith("error:"), proc.stderr


def test_config_round_trips_through_both_formats(tmp_path):
    cfg = ModelConfig(n_layers=3, d_model=96, n_heads=6, ffn_dim=256, seq_len=8192, rope_theta=500_000.0,
                      norm_eps=1e-5, init_std=0.01)
    for fmt in ("transformers", "instella"):
        path = tmp_path / fmt
        path.mkdir()
        (path / "config.json").write_text(json.dumps(model_config_to_hf_config(cfg, fmt)))
        assert hf_config_to_model_config(path) == cfg
    with pytest.raises(ValueError, match="format"):
        model_config_to_hf_config(cfg, "gguf")


def test_export_refuses_a_dir_that_is_not_ours(tmp_path):
    """An HF checkpoint passed to export-hf by mistake (model.safetensors, but no {"model": ...} config)."""
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    save_file({"x": torch.zeros(1)}, str(foreign / "model.safetensors"))
    (foreign / "config.json").write_text(json.dumps(instella_config(TINY)))
    with pytest.raises(HFFormatError, match="no model config of this project"):
        export_hf(foreign, tmp_path / "out")


def _export_dir_with_build(tmp_path: Path, tokenizer: str, sha: str, eos: int, pad: int) -> Path:
    """Weights in our export layout whose config records a build; the build's manifest holds only its `build` row."""
    import dataclasses

    import duckdb

    from trainer.checkpoint import export_safetensors

    build = tmp_path / "build"
    build.mkdir()
    con = duckdb.connect(str(build / "manifest.duckdb"))
    con.execute("create table build (tokenizer varchar, tokenizer_sha256 varchar, eos_id integer, pad_id integer)")
    con.execute("insert into build values (?, ?, ?, ?)", [tokenizer, sha, eos, pad])
    con.close()
    torch.manual_seed(0)
    weights = Transformer(TINY).state_dict()
    return export_safetensors(tmp_path / "run", weights, {"model": dataclasses.asdict(TINY), "data": str(build)})


def test_export_ships_the_builds_tokenizer_and_special_ids(tokenizer_path, tmp_path):
    import hashlib

    sha = hashlib.sha256(tokenizer_path.read_bytes()).hexdigest()
    run = _export_dir_with_build(tmp_path, str(tokenizer_path), sha, eos=0, pad=1)
    out = export_hf(run, tmp_path / "hf", "instella")
    assert (out / "tokenizer.json").read_bytes() == tokenizer_path.read_bytes()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 0, "<|padding|>", 1)
    assert tok("Hello world").input_ids == [12092, 1533]  # GPT-NeoX ids; no BOS/EOS added when encoding


def test_export_refuses_a_build_tokenizer_it_cannot_find(tokenizer_path, tmp_path):
    """Shipping Instella's tokenizer with a model trained on another one would evaluate garbage: refuse instead."""
    run = _export_dir_with_build(tmp_path, str(tokenizer_path), "0" * 64, eos=0, pad=1)  # the file has changed
    with pytest.raises(HFFormatError, match="pass --tokenizer"):
        export_hf(run, tmp_path / "hf")
    out = export_hf(run, tmp_path / "hf", tokenizer=str(tokenizer_path))  # explicit choice
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 0
