"""export-hf files (issue 21, item 11): sharded weights + index, default dtype, `dtype` key, 0644 files, and
Instella's chat template (AMD-AIG-AIMA/Instella hf_instella/convert_instella_to_hf.py) on chat exports."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import torch

from trainer.config import ModelConfig
from trainer.hf import export_hf
from trainer.hf_files import INSTELLA_CHAT_TEMPLATE, default_dtype

transformers = pytest.importorskip("transformers")

CFG = ModelConfig(n_layers=2, d_model=64, n_heads=4, ffn_dim=176, seq_len=256, vocab_size=50304)


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> Path:
    """An export of ours (what merge/train write) with random weights: no build recorded."""
    from trainer.checkpoint import export_safetensors
    from trainer.model import Transformer

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("merged")
    export_safetensors(out, Transformer(CFG).state_dict(), {"model": CFG.__dict__ | {}, "recipe": "instella-dpo"})
    return out


def _logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        return model(ids[None]).logits[0]


def test_sharded_export_has_an_index_and_loads_like_the_single_file(merged, tokenizer_path, tmp_path):
    single = export_hf(merged, tmp_path / "single", tokenizer=str(tokenizer_path))
    sharded = export_hf(merged, tmp_path / "sharded", tokenizer=str(tokenizer_path), max_shard_size="2MB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and not (sharded / "model.safetensors").exists()
    assert all((sharded / f).is_file() for f in files)
    assert (single / "model.safetensors").is_file() and not (single / "model.safetensors.index.json").exists()
    ids = torch.randint(2, 50000, (12,), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(sharded, ids), _logits(single, ids), rtol=0, atol=0)
    # exporting the single file again into the sharded dir leaves no stale shard or index behind
    export_hf(merged, sharded, tokenizer=str(tokenizer_path))
    assert sorted(p.name for p in sharded.glob("model*")) == ["model.safetensors"]
    for p in [*single.iterdir(), *sharded.iterdir()]:  # every file readable by everyone (0644)
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_dtype_default_and_key(merged, tokenizer_path, tmp_path):
    assert default_dtype(CFG.n_params()) == "float32" and default_dtype(3_000_000_000) == "bfloat16"
    assert default_dtype(1_200_000_000) == "bfloat16"  # instella-1b
    out = export_hf(merged, tmp_path / "e", tokenizer=str(tokenizer_path))
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32" and "torch_dtype" not in config
    out = export_hf(merged, tmp_path / "b", tokenizer=str(tokenizer_path), dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    model = transformers.AutoModelForCausalLM.from_pretrained(out)  # the key is read: loads in bf16
    assert model.dtype == torch.bfloat16


def test_chat_export_renders_instellas_template(merged, tokenizer_path, tmp_path):
    out = export_hf(merged, tmp_path / "chat", tokenizer=str(tokenizer_path))  # recipe instella-dpo: a chat model
    tok = transformers.AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|endoftext|><|user|>\nWhat is 2+2?\n<|assistant|>\n"
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == 0  # the template starts with bos = <|endoftext|>, id 0
    two = messages + [{"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]
    assert tok.apply_chat_template(two, tokenize=False) == \
        "<|endoftext|><|user|>\nWhat is 2+2?\n<|assistant|>\n4<|endoftext|>\n<|user|>\nAnd 3+3?\n"
    assert (out / "chat_template.jinja").read_text() == INSTELLA_CHAT_TEMPLATE
    base = export_hf(merged, out, tokenizer=str(tokenizer_path), chat_template=False)  # re-export as a base model
    assert not (base / "chat_template.jinja").exists()
    assert "chat_template" not in json.loads((base / "tokenizer_config.json").read_text())
