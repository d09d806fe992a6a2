"""Hugging Face interop: import Instella's released checkpoints, export ours for transformers / vLLM / lm-eval.

Two on-disk formats, both a `config.json` + safetensors weights + tokenizer files:

* **transformers** (`export_hf(..., fmt="transformers")`): `OlmoeForCausalLM` with ONE expert, top-1 routing. OLMoE
  is a class transformers (and vLLM) ship, so `AutoModelForCausalLM.from_pretrained(dir)` loads it with no remote
  code. Its computation is exactly ours: pre-norm RMSNorm blocks (`input_layernorm` before attention,
  `post_attention_layernorm` before the MLP — despite the name, applied to the MLP *input*), QK-norm as RMSNorm over
  the whole q and k projections before rotate-half RoPE, a SwiGLU expert `down(silu(gate(x)) * up(x))`, untied LM
  head. With one expert the router's softmax is over a single logit, so the expert's weight is exactly 1.0
  (`norm_topk_prob: false`, the router weight is zeros). OLMo-2 is *not* equivalent (post-norm: it normalises the
  attention/MLP *outputs*), nor are Llama (no QK-norm) or Qwen3 (per-head QK-norm).

* **instella** (`fmt="instella"`): Instella's released layout — `InstellaForCausalLM`, `model_type: "instella"`
  (loaded through `trust_remote_code` with AMD's `modeling_instella.py`, or vLLM's Instella support). Key names and
  config fields follow AMD-AIG-AIMA/Instella `hf_instella/convert_instella_to_hf.py` (`write_config`,
  `write_model`) and `hf_instella/modeling_instella.py`: per layer `self_attn.{q,k,v,o}_proj`,
  `self_attn.{q,k}_norm` (RMSNorm over the whole projection, width hidden_size), `mlp.{gate,up,down}_proj`,
  `pre_attention_layernorm`, `pre_feedforward_layernorm`; then `model.embed_tokens`, `model.norm`, `lm_head`.

Both import through `load_hf_checkpoint` into our parameter names (trainer/model.py): q/k/v are concatenated into
`attn.wqkv`, gate/up into `mlp.w_gate_up` (gate first: `MLP.forward` chunks gate, then up).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pipelines.io import atomic_write_bytes
from pipelines.shards.format import sha256_file
from trainer import hf_files
from trainer.checkpoint import (
    find_checkpoint,
    is_export,
    load_model_weights,
    read_model_config,
)
from trainer.ckpt_files import DiskFullError, disk_full_message, is_disk_full
from trainer.config import ModelConfig

FORMATS = ("transformers", "instella")
ARCHITECTURES = {"transformers": "OlmoeForCausalLM", "instella": "InstellaForCausalLM"}
MODEL_TYPES = {"transformers": "olmoe", "instella": "instella"}
EOS_ID, PAD_ID = 0, 1  # Instella tokenizer (GPT-NeoX-20B + PII specials): <|endoftext|>, <|padding|>
DEFAULT_TOKENIZER = "allenai/eleuther-ai-gpt-neox-20b-pii-special"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_IGNORED_KEYS = ("rotary_emb.inv_freq",)  # non-persistent buffers some converters still write


class HFFormatError(ValueError):
    """A Hugging Face checkpoint we cannot read (missing file, unsupported config, unexpected or missing keys)."""

    exit_code = 2  # the CLI's one handler (cli.py): a one-line message, exit 2


# ----------------------------------------------------------------------------------------------------- config


def read_hf_config(dir: str | Path) -> dict:
    path = Path(dir) / "config.json"
    if not path.is_file():
        raise HFFormatError(f"{dir}: no config.json (not a Hugging Face checkpoint directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HFFormatError(f"{path}: invalid JSON ({e})") from None


def detect_format(config: dict) -> str:
    """'instella' or 'transformers' (our OLMoE export), from `architectures` / `model_type`."""
    archs = config.get("architectures") or []
    for fmt in FORMATS:
        if ARCHITECTURES[fmt] in archs or config.get("model_type") == MODEL_TYPES[fmt]:
            return fmt
    raise HFFormatError(f"unsupported architecture {archs or config.get('model_type')!r}: expected "
                        f"{ARCHITECTURES['instella']} (Instella) or {ARCHITECTURES['transformers']} with one expert")


def _rope_theta(config: dict) -> float:
    params = config.get("rope_parameters") or {}  # transformers >= 5 nests it
    theta = config.get("rope_theta", params.get("rope_theta", 10_000.0))
    return float(theta)


def _check_supported(config: dict, fmt: str) -> None:
    """Refuse configs whose computation differs from ours instead of loading them into the wrong model."""
    heads = config["num_attention_heads"]
    problems = []
    if config.get("num_key_value_heads") not in (None, heads):
        problems.append(f"grouped-query attention (num_key_value_heads {config['num_key_value_heads']} != {heads})")
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config['hidden_act']!r} (only silu / SwiGLU)")
    if config.get("attention_bias"):
        problems.append("attention_bias")
    if config.get("tie_word_embeddings"):
        problems.append("tied embeddings")
    scaling = config.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type")) or \
        (config.get("rope_parameters") or {}).get("rope_type", "default")
    if rope_type not in (None, "default"):
        problems.append(f"RoPE scaling {rope_type!r}")
    if "head_dim" in config and config["head_dim"] not in (None, config["hidden_size"] // heads):
        problems.append(f"head_dim {config['head_dim']} != hidden_size / heads")
    if fmt == "transformers":
        if config.get("num_experts") != 1 or config.get("num_experts_per_tok") != 1:  # no defaults: OLMoE's are 64/8
            problems.append(f"{config.get('num_experts')} experts, top-{config.get('num_experts_per_tok')} "
                            "(only a single-expert OLMoE is a dense model)")
        if config.get("clip_qkv") is not None:
            problems.append("clip_qkv")
    if problems:
        raise HFFormatError("unsupported config: " + "; ".join(problems))


def hf_config_to_model_config(dir: str | Path) -> ModelConfig:
    """Our ModelConfig from a Hugging Face `config.json` (Instella's released format or our OLMoE export)."""
    config = read_hf_config(dir)
    try:
        _check_supported(config, detect_format(config))
        return ModelConfig(n_layers=int(config["num_hidden_layers"]), d_model=int(config["hidden_size"]),
                           n_heads=int(config["num_attention_heads"]), ffn_dim=int(config["intermediate_size"]),
                           seq_len=int(config.get("max_position_embeddings", 4096)),
                           vocab_size=int(config["vocab_size"]), rope_theta=_rope_theta(config),
                           norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                           init_std=float(config.get("initializer_range", 0.02)))
    except KeyError as e:
        raise HFFormatError(f"{dir}/config.json: missing field {e}") from None
    except TypeError as e:  # a null or non-numeric size
        raise HFFormatError(f"{dir}/config.json: bad value ({e})") from None
    except ValueError as e:  # HFFormatError included: name the file
        raise HFFormatError(f"{dir}/config.json: {e}") from None


def model_config_to_hf_config(cfg: ModelConfig, fmt: str, dtype: str = "float32", eos_id: int = EOS_ID,
                              pad_id: int = PAD_ID) -> dict:
    """config.json for `fmt`; the fields shared by both formats first."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    config = {
        "architectures": [ARCHITECTURES[fmt]], "model_type": MODEL_TYPES[fmt],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_heads,
        "hidden_act": "silu", "max_position_embeddings": cfg.seq_len, "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "rope_scaling": None,
        "attention_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": False, "use_cache": True,
        "bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": pad_id, "dtype": dtype,
    }
    if fmt == "transformers":
        del config["rope_scaling"]  # transformers 5 warns on the (null) legacy field; absent means none in 4.x too
        config.update({"num_experts": 1, "num_experts_per_tok": 1, "norm_topk_prob": False, "clip_qkv": None,
                       "output_router_logits": False, "router_aux_loss_coef": 0.0})
    else:  # as released: the remote code is named by auto_map (AMD's configuration/modeling_instella.py)
        config["auto_map"] = {"AutoConfig": "configuration_instella.InstellaConfig",
                              "AutoModelForCausalLM": "modeling_instella.InstellaForCausalLM"}
    return config


# ---------------------------------------------------------------------------------------------------- weights


def _layer_names(fmt: str) -> dict[str, str]:
    """Our per-block parameter -> HF per-layer key (for the unfused ones)."""
    common = {"attn.wo.weight": "self_attn.o_proj.weight", "attn.q_norm.weight": "self_attn.q_norm.weight",
              "attn.k_norm.weight": "self_attn.k_norm.weight"}
    if fmt == "instella":
        return {**common, "attn_norm.weight": "pre_attention_layernorm.weight",
                "mlp_norm.weight": "pre_feedforward_layernorm.weight", "mlp.w_down.weight": "mlp.down_proj.weight"}
    return {**common, "attn_norm.weight": "input_layernorm.weight",
            "mlp_norm.weight": "post_attention_layernorm.weight",
            "mlp.w_down.weight": "mlp.experts.0.down_proj.weight"}


def _mlp_prefix(fmt: str) -> str:
    return "mlp.experts.0." if fmt == "transformers" else "mlp."


def to_hf_state(weights: dict[str, torch.Tensor], cfg: ModelConfig, fmt: str) -> dict[str, torch.Tensor]:
    """Our state dict -> HF keys of `fmt` (q/k/v and gate/up split out of the fused matrices)."""
    d, f = cfg.d_model, cfg.ffn_dim
    out = {"model.embed_tokens.weight": weights["embed.weight"], "model.norm.weight": weights["norm.weight"],
           "lm_head.weight": weights["lm_head.weight"]}
    names, mlp = _layer_names(fmt), _mlp_prefix(fmt)
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        for k, v in names.items():
            out[theirs + v] = weights[ours + k]
        q, k, v = weights[ours + "attn.wqkv.weight"].split(d, dim=0)
        out.update({theirs + "self_attn.q_proj.weight": q, theirs + "self_attn.k_proj.weight": k,
                    theirs + "self_attn.v_proj.weight": v})
        gate, up = weights[ours + "mlp.w_gate_up.weight"].split(f, dim=0)
        out.update({theirs + mlp + "gate_proj.weight": gate, theirs + mlp + "up_proj.weight": up})
        if fmt == "transformers":  # router over one expert: softmax of a single (zero) logit is exactly 1
            out[theirs + "mlp.gate.weight"] = torch.zeros(1, d, dtype=weights["embed.weight"].dtype)
    return {k: v.detach().contiguous() for k, v in out.items()}


def from_hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig, fmt: str) -> dict[str, torch.Tensor]:
    """HF keys of `fmt` -> our state dict (fp32). Every HF key must be used; every parameter must be found."""
    state = {k: v for k, v in state.items() if not k.endswith(_IGNORED_KEYS)}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise HFFormatError(f"missing weight {key!r}")
        used.add(key)
        return state[key].float()

    out = {"embed.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight"),
           "lm_head.weight": take("lm_head.weight")}
    names, mlp = _layer_names(fmt), _mlp_prefix(fmt)
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        for k, v in names.items():
            out[ours + k] = take(theirs + v)
        out[ours + "attn.wqkv.weight"] = torch.cat([take(theirs + f"self_attn.{p}_proj.weight") for p in "qkv"])
        out[ours + "mlp.w_gate_up.weight"] = torch.cat([take(theirs + mlp + "gate_proj.weight"),
                                                        take(theirs + mlp + "up_proj.weight")])
        if fmt == "transformers":
            take(theirs + "mlp.gate.weight")  # the one-expert router carries no information
    extra = sorted(set(state) - used)
    if extra:
        raise HFFormatError(f"{len(extra)} unexpected weight(s), e.g. {extra[:3]} (more layers than "
                            f"num_hidden_layers {cfg.n_layers}, or another architecture)")
    return out


def read_hf_weights(dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF checkpoint: model.safetensors, sharded safetensors (index.json) or pytorch_model.bin."""
    from safetensors.torch import load_file

    dir = Path(dir)
    if (dir / "model.safetensors").is_file():
        return load_file(str(dir / "model.safetensors"))
    index = dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            if not (dir / shard).is_file():
                raise HFFormatError(f"{index}: shard {shard} is missing")
            state.update(load_file(str(dir / shard)))
        return state
    if (dir / "pytorch_model.bin").is_file():  # what Instella's converter writes
        return torch.load(dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise HFFormatError(f"{dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def load_hf_checkpoint(dir: str | Path, model_config: ModelConfig) -> dict[str, torch.Tensor]:
    """State dict in OUR parameter names (trainer/model.py), fp32, from an Instella-format or our exported HF dir.

    `model_config` is the model the weights go into; its shape must match the checkpoint's config.json (sequence
    length and RoPE θ may differ: they are not part of the weights)."""
    found = hf_config_to_model_config(dir)
    shape = ("n_layers", "d_model", "n_heads", "ffn_dim", "vocab_size")
    diff = [f"{k} {getattr(found, k)} != {getattr(model_config, k)}" for k in shape
            if getattr(found, k) != getattr(model_config, k)]
    if diff:
        raise HFFormatError(f"{dir}: checkpoint does not fit the model ({', '.join(diff)})")
    fmt = detect_format(read_hf_config(dir))
    try:
        weights = from_hf_state(read_hf_weights(dir), model_config, fmt)
    except HFFormatError as e:
        raise HFFormatError(f"{dir}: {e}") from None
    expected = _expected_shapes(model_config)
    for k, shp in expected.items():
        if tuple(weights[k].shape) != shp:
            raise HFFormatError(f"{dir}: {k} has shape {tuple(weights[k].shape)}, expected {shp}")
    return weights


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, f, v = cfg.d_model, cfg.ffn_dim, cfg.vocab_size
    shapes = {"embed.weight": (v, d), "norm.weight": (d,), "lm_head.weight": (v, d)}
    for i in range(cfg.n_layers):
        b = f"blocks.{i}."
        shapes.update({b + "attn_norm.weight": (d,), b + "mlp_norm.weight": (d,), b + "attn.wqkv.weight": (3 * d, d),
                       b + "attn.q_norm.weight": (d,), b + "attn.k_norm.weight": (d,), b + "attn.wo.weight": (d, d),
                       b + "mlp.w_gate_up.weight": (2 * f, d), b + "mlp.w_down.weight": (d, f)})
    return shapes


# -------------------------------------------------------------------------------------------------- tokenizer




def find_tokenizer(name: str) -> Path | None:
    """A tokenizer.json path, or a name looked up as `<owner>_<name>.json` where builds look for it."""
    from pipelines.resources import find_tokenizer as lookup

    return lookup(name)


@dataclass(frozen=True)
class ExportTokenizer:
    """The tokenizer shipped with an export and its special ids (those the model was trained with)."""

    path: Path
    eos_id: int
    pad_id: int
    source: str  # where it came from, for the CLI's message


def _build_record(data: str | Path) -> tuple[str, str | None, int, int] | None:
    """(tokenizer, sha256, eos_id, pad_id) from a build's manifest, None when the build is not there."""
    if not (Path(data) / "manifest.duckdb").exists():
        return None
    from pipelines.shards.reader import connect

    con = connect(Path(data))
    try:
        name, sha, eos, pad = con.execute("select tokenizer, tokenizer_sha256, eos_id, pad_id from build").fetchone()
    finally:
        con.close()
    return str(name), sha, int(eos), int(pad)


def resolve_export_tokenizer(run_or_checkpoint: str | Path, tokenizer: str | Path | None = None) -> ExportTokenizer:
    """`tokenizer` if given; else the tokenizer of the run's build (found by name, checked by its sha256 — an
    error rather than shipping a tokenizer the model was not trained with); else Instella's when the weights record
    no build (merged or imported checkpoints). EOS/pad ids: the build's, else the tokenizer's <|endoftext|> /
    <|padding|>."""
    from tokenizers import Tokenizer

    src = resolve_weights_dir(run_or_checkpoint)
    data = _run_data(src)
    record = _build_record(data) if data else None
    if tokenizer is not None:
        path, source = find_tokenizer(str(tokenizer)), "--tokenizer"
        if path is None:
            raise HFFormatError(f"tokenizer {str(tokenizer)!r} not found (a tokenizer.json path, or a name looked "
                                "up in $MIDTRAIN_TOKENIZERS and the shared data's tokenizers/)")
    elif record is not None:
        name, sha, _, _ = record
        path, source = find_tokenizer(name), f"build {data}"
        if path is None or (sha and sha256_file(path) != sha):
            raise HFFormatError(f"the tokenizer of build {data} ({name!r}, sha256 {sha}) was not found; pass "
                                "--tokenizer PATH")
    else:
        why = f"build {data} not found" if data else "no build recorded"
        path, source = find_tokenizer(DEFAULT_TOKENIZER), f"Instella default ({why})"
        if path is None:
            raise HFFormatError(f"default tokenizer {DEFAULT_TOKENIZER!r} not found; pass --tokenizer PATH")
    tok = Tokenizer.from_file(str(path))
    if record is not None:
        eos, pad = record[2], record[3]
    else:
        eos, pad = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|padding|>")
        eos, pad = (EOS_ID if eos is None else eos), (PAD_ID if pad is None else pad)
    if tok.id_to_token(eos) is None or tok.id_to_token(pad) is None:
        raise HFFormatError(f"{path}: EOS id {eos} / pad id {pad} are not in the vocabulary")
    return ExportTokenizer(path, eos, pad, source)


def write_tokenizer(out: Path, tokenizer: ExportTokenizer, model_max_length: int,
                    chat_template: str | None = None) -> None:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json, loadable by `AutoTokenizer` offline; with
    `chat_template`, also chat_template.jinja (transformers 5) and the same template in tokenizer_config.json (4.x)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer.path))
    eos, pad = tok.id_to_token(tokenizer.eos_id), tok.id_to_token(tokenizer.pad_id)
    specials = {"bos_token": eos, "eos_token": eos, "unk_token": eos, "pad_token": pad}
    atomic_write_bytes(out / "tokenizer.json", tokenizer.path.read_bytes())
    atomic_write_bytes(out / "special_tokens_map.json", json.dumps(specials, indent=2).encode())
    # GPTNeoXTokenizer: transformers 5's class; 4.x resolves it to GPTNeoXTokenizerFast. No BOS/EOS is added
    # when encoding: documents were tokenized without BOS and EOS only ends them.
    config = {"tokenizer_class": "GPTNeoXTokenizer", **specials, "add_bos_token": False, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "model_max_length": model_max_length}
    if chat_template is not None:
        config["chat_template"] = chat_template
        atomic_write_bytes(out / "chat_template.jinja", chat_template.encode())
    elif (out / "chat_template.jinja").exists():  # a base model must not keep an earlier export's template
        (out / "chat_template.jinja").unlink()
    atomic_write_bytes(out / "tokenizer_config.json", json.dumps(config, indent=2).encode())


# ----------------------------------------------------------------------------------------------------- export


def resolve_weights_dir(run_or_checkpoint: str | Path) -> Path:
    """An export/merge dir (model.safetensors), a DCP checkpoint dir, or a run dir (its export, else latest step)."""
    path = Path(run_or_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory")
    if is_export(path) or (path / ".metadata").exists():
        return path
    return find_checkpoint(path)


def export_hf(run_or_checkpoint: str | Path, out: str | Path, fmt: str = "transformers",
              tokenizer: str | Path | None = None, dtype: str | None = None, chat_template: bool | None = None,
              max_shard_size: str | int = hf_files.DEFAULT_MAX_SHARD) -> Path:
    """Write OUT/{config.json, weights, generation_config.json, tokenizer files} in `fmt`.

    fmt "transformers": OlmoeForCausalLM with one expert (no remote code); "instella": Instella's released layout.
    The tokenizer: `tokenizer`, else the run's build's, else Instella's (`resolve_export_tokenizer`). dtype: default
    bfloat16 over 1B parameters, else float32. Weights over `max_shard_size` are sharded with an index. Chat
    template (Instella's): with `chat_template`, or by default for SFT/DPO runs (trainer/hf_files.py)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    src = resolve_weights_dir(run_or_checkpoint)
    try:
        cfg = ModelConfig(**read_model_config(src))
    except (KeyError, TypeError, json.JSONDecodeError):
        raise HFFormatError(f"{src}: no model config of this project (expected a run, a step-N checkpoint or an "
                            "export/merge dir)") from None
    tok = resolve_export_tokenizer(src, tokenizer)  # before the (large) weights: fail fast
    dtype = dtype or hf_files.default_dtype(cfg.n_params())
    if chat_template is None:
        chat_template = hf_files.is_chat_run(src, _run_data(src))
    weights = load_model_weights(src)  # checked against the checkpoint's checksums
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # everything is written into a sibling staging directory and published by renames (_publish_dir): a kill at
    # any point leaves the previous export (or none), never weights without their config
    stage = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        state = {k: v.to(DTYPES[dtype]).cpu() for k, v in to_hf_state(weights, cfg, fmt).items()}
        hf_files.save_weights(stage, state, max_shard_size)  # 0644, sharded + index when large
        generation = {"bos_token_id": tok.eos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
        atomic_write_bytes(stage / "generation_config.json", json.dumps(generation, indent=2).encode())
        write_tokenizer(stage, tok, cfg.seq_len, hf_files.INSTELLA_CHAT_TEMPLATE if chat_template else None)
        config = model_config_to_hf_config(cfg, fmt, dtype, eos_id=tok.eos_id, pad_id=tok.pad_id)
        atomic_write_bytes(stage / "config.json", json.dumps(config, indent=2).encode())  # last: the export is whole
        _publish_dir(stage, out)
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        if is_disk_full(e):
            raise DiskFullError(disk_full_message(out, sum(v.numel() * v.element_size() for v in weights.values()),
                                                  "the export")) from None
        raise
    return out


def _run_data(src: Path) -> str | None:
    """The build a run trained on: recorded in the export's config.json (`data`) or the checkpoint's trainer state
    (`config.data`; its own `data` is the loader's position, not a path)."""
    for candidate in (src / "config.json", src / "trainer_state.json"):
        if candidate.is_file():
            raw = json.loads(candidate.read_text())
            data = raw.get("data") if candidate.name == "config.json" else (raw.get("config") or {}).get("data")
            if isinstance(data, str) and data:
                return data
    return None


WEIGHT_FILE = re.compile(r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?")
EXPORT_FILES = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "chat_template.jinja"}  # what an export writes besides its weights


def _publish_dir(stage: Path, out: Path) -> None:
    """Make the finished `stage` directory `out` by renames: a reader sees the old export or the new one, never a
    mix. Files of an existing `out` that this export does not write are carried over."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        for f in out.iterdir():  # files of an earlier export are never carried: a stale shard would shadow these
            # weights, a chat template would make a base model a chat one; a user's own files (README...) stay
            if not (stage / f.name).exists() and not (WEIGHT_FILE.fullmatch(f.name) or f.name in EXPORT_FILES):
                os.replace(f, stage / f.name)
        os.replace(out, old)
    os.replace(stage, out)
    shutil.rmtree(old, ignore_errors=True)


def import_hf(dir: str | Path, out: str | Path) -> Path:
    """Convert a HF checkpoint into our export layout (OUT/model.safetensors + config.json {"model": ...}), which
    `cli.py train --init-from OUT` and `cli.py merge` read."""
    from trainer.checkpoint import export_safetensors

    cfg = hf_config_to_model_config(dir)
    weights = load_hf_checkpoint(dir, cfg)
    return export_safetensors(out, weights, {"model": asdict(cfg), "imported_from": str(Path(dir).resolve()),
                                             "hf_format": detect_format(read_hf_config(dir))})
