"""Checkpoints with torch.distributed.checkpoint (DCP): sharded model + optimizer, plus the trainer state.

Layout of RUN/checkpoints/step-000020/:
  .metadata, __0_0.distcp, ...   DCP: {"model": ..., "optim": ...} — each rank writes its own shards
  trainer_state.json             step, scheduler, data position, the run config and the model config
  rng-rank00000.pt ...           per-rank torch / numpy / python RNG states, as tensors and numbers only
A checkpoint is written under `step-N.tmp` and renamed once complete, so a directory named `step-N` is whole.

Trust: `rng-*.pt` is read with `torch.load(weights_only=True)` (tensors, numbers, dicts, lists only; a pickled object
is refused) and `trainer_state.json` is JSON, but DCP's own `.metadata` is a pickle that torch unpickles, so resuming
from a DCP checkpoint still means trusting its `.metadata`. `model.safetensors` (exports, merges, `--init-from`) runs
no code. Resume and merge only checkpoints you (or someone you trust) wrote; share weights as safetensors.

Weights can be read back without any process group (`load_model_weights`) for merging and export.
"""
from __future__ import annotations

import json
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

STATE_FILE = "trainer_state.json"
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run: str | Path, step: int) -> Path:
    return Path(run) / "checkpoints" / f"step-{step:06d}"


class CheckpointError(ValueError):
    """A checkpoint file that cannot or must not be loaded (unsafe content, wrong layout)."""

    exit_code = 2  # the CLI's one handler (cli.py): a one-line message, exit 2


def rng_state() -> dict:
    """This process's RNG states as tensors and plain numbers, so that loading needs no unpickling of objects."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                      "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
            "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                       "gauss": py_gauss},
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_rng_file(path: Path) -> dict:
    """Read an `rng-rank*.pt` file without running code: anything but tensors and numbers is refused."""
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # UnpicklingError for objects outside the weights-only allow-list
        raise CheckpointError(f"{path}: refused to load (not a plain RNG state of tensors and numbers; "
                              f"checkpoints are trusted input, see trainer/checkpoint.py): {str(e).splitlines()[0]}")
    if not isinstance(state, dict) or not {"torch", "numpy", "python"} <= state.keys():
        raise CheckpointError(f"{path}: not an RNG state written by this trainer")
    return state


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, trainer_state: dict,
                    rank: int) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    torch.save(rng_state(), tmp / f"rng-rank{rank:05d}.pt")
    dist.barrier()
    if rank == 0:
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    dist.barrier()
    return path


def find_checkpoint(resume: str | Path, step: int | None = None) -> Path:
    """`resume` is a checkpoint dir, or a run dir whose checkpoints/ holds step-N dirs (latest unless `step`)."""
    resume = Path(resume)
    if (resume / STATE_FILE).exists():
        if step is not None and read_trainer_state(resume)["step"] != step:
            raise ValueError(f"{resume} is the checkpoint of step {read_trainer_state(resume)['step']}, not {step}")
        return resume
    root = resume / "checkpoints"
    found = {int(m.group(1)): p for p in root.glob("step-*") if (m := _STEP_DIR.match(p.name))} if root.is_dir() else {}
    if not found:
        raise FileNotFoundError(f"no checkpoints under {root}")
    if step is None:
        return found[max(found)]
    if step not in found:
        raise FileNotFoundError(f"no checkpoint of step {step} under {root} (have {sorted(found)})")
    return found[step]


def read_trainer_state(path: str | Path) -> dict:
    return json.loads((Path(path) / STATE_FILE).read_text())


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> dict:
    """Restore model, optimizer and this rank's RNG in place; return the trainer state."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng = path / f"rng-rank{rank:05d}.pt"
    if rng.exists():  # absent when resuming on more ranks than the run had
        set_rng_state(load_rng_file(rng))
    return read_trainer_state(path)


def weights_dir(path: str | Path) -> Path:
    """The directory holding the weights of `path`: an export/merge (model.safetensors), a checkpoint (.metadata),
    or, for a run dir without an export, its latest checkpoint."""
    path = Path(path)
    if (path / EXPORT_WEIGHTS).exists() or (path / ".metadata").exists():
        return path
    if (path / "checkpoints").is_dir():
        return find_checkpoint(path)
    raise FileNotFoundError(f"{path} is neither a run dir, a checkpoint (.metadata) nor an export ({EXPORT_WEIGHTS})")


def load_model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a DCP checkpoint dir, an exported/merged dir (model.safetensors) or a run dir, on CPU."""
    path = weights_dir(path)
    if (path / EXPORT_WEIGHTS).exists():
        from safetensors.torch import load_file

        return load_file(str(path / EXPORT_WEIGHTS))
    if not (path / ".metadata").exists():
        raise FileNotFoundError(f"{path} is neither a checkpoint (.metadata) nor an export ({EXPORT_WEIGHTS})")
    meta = dcp.FileSystemReader(str(path)).read_metadata()
    model = {}
    for key, md in meta.state_dict_metadata.items():
        if key.startswith("model.") and hasattr(md, "size"):
            model[key[len("model."):]] = torch.empty(md.size, dtype=md.properties.dtype)
    if not model:
        raise ValueError(f"{path}: checkpoint holds no model weights")
    with warnings.catch_warnings():  # "no process group: loading in a single process" is exactly the intent here
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load({"model": model}, checkpoint_id=str(path))
    return model


def read_model_config(path: str | Path) -> dict:
    """The model config saved with a checkpoint (trainer_state.json), an export (config.json) or a run dir."""
    path = weights_dir(path)
    if (path / EXPORT_CONFIG).exists():
        return json.loads((path / EXPORT_CONFIG).read_text())["model"]
    return read_trainer_state(path)["model"]


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gather the full (unsharded) weights onto CPU on every rank."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load full weights into a (sharded) model; every rank passes the same dict."""
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=True))


def export_safetensors(out: str | Path, weights: dict[str, torch.Tensor], config: dict) -> Path:
    """Write OUT/model.safetensors and OUT/config.json ({"model": ModelConfig fields, ...})."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(out / EXPORT_WEIGHTS))
    (out / EXPORT_CONFIG).write_text(json.dumps(config, indent=2))
    return out
