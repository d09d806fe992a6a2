"""What `export-hf` writes besides the config: weight files (one, or shards + index), the chat template, the dtype.

* Weights: one `model.safetensors` up to `max_shard_size`, else `model-0000K-of-0000N.safetensors` shards with a
  `model.safetensors.index.json` (huggingface_hub's `split_torch_state_dict_into_shards`, the layout
  `from_pretrained` reads). Every file is written under a temporary name, made 0644 (safetensors creates 0600) and
  renamed; weight files of an earlier export into the same dir that the new one does not use are removed, so a stale
  index or shard can never shadow the new weights.
* Chat template: Instella's, verbatim from AMD-AIG-AIMA/Instella `hf_instella/convert_instella_to_hf.py`
  (`tokenizer.chat_template = ...`), shipped with exports of chat models (SFT or DPO runs) so
  `tokenizer.apply_chat_template` renders the `<|user|>` / `<|assistant|>` turns the model was tuned on.
* dtype: bfloat16 by default for models over 1B parameters (as Instella ships), float32 below.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

INSTELLA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\n' + "
    "message['content'] + '\n' }}{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{% if not loop.last %}{{ '<|assistant|>\n'  + message['content'] + "
    "eos_token + '\n' }}{% else %}{{ '<|assistant|>\n'  + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}")
CHAT_RECIPES = ("instella-sft", "instella-long-sft", "instella-dpo")
CHAT_PACKINGS = ("sft", "sft-4k", "preference")
DEFAULT_MAX_SHARD = "5GB"
BF16_ABOVE_PARAMS = 1_000_000_000
WEIGHTS_NAME, INDEX_NAME = "model.safetensors", "model.safetensors.index.json"
_SHARD_NAME = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


def default_dtype(n_params: int) -> str:
    return "bfloat16" if n_params > BF16_ABOVE_PARAMS else "float32"


def write_file(path: Path, data: bytes) -> None:
    """Atomic, world-readable (0644) write."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_weights(out: Path, state: dict[str, torch.Tensor], max_shard_size: str | int = DEFAULT_MAX_SHARD) -> list[str]:
    """Write `state` as one safetensors file or as shards + index; returns the weight file names written."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    written = []
    for name, keys in split.filename_to_tensors.items():
        tmp = out / (name + ".tmp")
        save_file({k: state[k] for k in keys}, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / name)
        written.append(name)
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        write_file(out / INDEX_NAME, json.dumps(index, indent=2).encode())
    keep = set(written) | ({INDEX_NAME} if split.is_sharded else set())
    for stale in [WEIGHTS_NAME, INDEX_NAME, *(p.name for p in out.iterdir() if _SHARD_NAME.match(p.name))]:
        if stale not in keep and (out / stale).exists():
            (out / stale).unlink()
    return written


def is_chat_run(src: Path, data: str | None) -> bool:
    """Whether the weights come from a chat-tuned run: an SFT/DPO recipe, or a build with a loss mask / pairs."""
    for candidate in (src / "config.json", src / "trainer_state.json"):
        if candidate.is_file():
            raw = json.loads(candidate.read_text())
            recipe = raw.get("recipe") or (raw.get("settings") or {}).get("recipe")
            if raw.get("objective") == "dpo" or recipe in CHAT_RECIPES:
                return True
    if data and (Path(data) / "manifest.duckdb").exists():
        from pipelines.shards.reader import connect

        con = connect(Path(data))
        try:
            cur = con.execute("select * from build")
            row = dict(zip([d[0] for d in cur.description], cur.fetchone()))
        finally:
            con.close()
        return bool(row.get("has_loss_mask")) or packing_mode(row.get("packing")) in CHAT_PACKINGS
    return False


def packing_mode(packing) -> str | None:
    """The mode of a manifest's `build.packing` (JSON text, or already a mapping)."""
    value = json.loads(packing) if isinstance(packing, str) else packing
    return value.get("mode") if isinstance(value, dict) else None
