"""Weight averaging ("model soup"): Instella's stage-2 final model is the mean of three seeds' runs."""
from __future__ import annotations

from pathlib import Path

import torch

from trainer.checkpoint import export_safetensors, load_model_weights, read_model_config


def average_weights(states: list[dict[str, torch.Tensor]],
                    weights: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Element-wise (weighted) mean, accumulated in fp64 and returned in each tensor's original dtype."""
    if not states:
        raise ValueError("nothing to merge")
    weights = weights or [1.0] * len(states)
    if len(weights) != len(states):
        raise ValueError(f"{len(weights)} weights for {len(states)} checkpoints")
    total = float(sum(weights))
    keys = set(states[0])
    for i, s in enumerate(states[1:], 1):
        if set(s) != keys:
            diff = sorted(keys.symmetric_difference(s))[:5]
            raise ValueError(f"checkpoint {i} has different parameters than checkpoint 0: {diff}")
    merged = {}
    for k in sorted(keys):
        shapes = {tuple(s[k].shape) for s in states}
        if len(shapes) != 1:
            raise ValueError(f"parameter {k} has different shapes across checkpoints: {sorted(shapes)}")
        acc = sum(s[k].double() * (w / total) for s, w in zip(states, weights))
        merged[k] = acc.to(states[0][k].dtype)
    return merged


def merge_checkpoints(paths: list[str | Path], out: str | Path, weights: list[float] | None = None) -> Path:
    """Average the model weights of several checkpoints (DCP dirs or exports) into OUT/model.safetensors."""
    configs = [read_model_config(p) for p in paths]
    for p, c in zip(paths[1:], configs[1:]):
        if c != configs[0]:
            raise ValueError(f"{p}: model config differs from {paths[0]}: {c} vs {configs[0]}")
    merged = average_weights([load_model_weights(p) for p in paths], weights)
    return export_safetensors(out, merged, {"model": configs[0], "merged_from": [str(p) for p in paths],
                                            "merge_weights": weights})
