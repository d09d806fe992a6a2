"""Checkpoints with torch.distributed.checkpoint (DCP): sharded model + optimizer, plus the trainer state.

Layout of RUN/checkpoints/step-000020/:
  .metadata, __0_0.distcp, ...   DCP: {"model": ..., "optim": ...} — each rank writes its own shards
  trainer_state.json             step, scheduler, data position, the run config and the model config
  rng-rank00000.pt ...           per-rank torch / numpy / python RNG states, as tensors and numbers only
  checksums.json                 sha256 and size of every file above (trainer/ckpt_files.py)
A checkpoint is written under `step-N.tmp` and renamed once complete (after its checksums), so a directory named
`step-N` is whole; loading checks the checksums and refuses a damaged file by name. A full disk stops the save with
one line naming the path and the space needed, and removes `step-N.tmp`.

Trust: `rng-*.pt` is read with `torch.load(weights_only=True)` (tensors, numbers, dicts, lists only; a pickled object
is refused) and `trainer_state.json` is JSON, but DCP's own `.metadata` is a pickle that torch unpickles, so resuming
from a DCP checkpoint still means trusting its `.metadata`. `model.safetensors` (exports, merges, `--init-from`) runs
no code. Resume and merge only checkpoints you (or someone you trust) wrote; share weights as safetensors.

Weights can be read back without any process group (`load_model_weights`) for merging and export.
"""
from __future__ import annotations

import json
import os
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
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from trainer.ckpt_files import (
    CHECKSUMS,
    DiskFullError,
    checksum_problems,
    disk_full_message,
    file_sha256,
    free_bytes,
    fsync_file,
    hash_files,
    is_disk_full,
    read_checksums,
    write_checksums,
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
    """Write the checkpoint under `step-N.tmp`, checksum every file (each rank its own), then publish it as `step-N`
    by one rename. DiskFullError (on every rank) when the disk fills up; nothing half-written stays behind."""
    tmp = path.with_name(path.name + ".tmp")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    need = int(_all_reduce_sum(_state_bytes(model_sd) + _state_bytes(optim_sd))) + (1 << 20)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    error: BaseException | None = None
    entries: dict = {}
    if rank == 0 and free_bytes(tmp) < need:  # refuse before writing anything
        error = OSError(28, "No space left on device")
    if not _any_rank(error is not None):
        try:
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
            rng = tmp / f"rng-rank{rank:05d}.pt"
            torch.save(rng_state(), rng)
            fsync_file(rng)
            entries = hash_files(tmp, [p.name for p in tmp.iterdir()
                                       if p.name.startswith(f"__{rank}_") or p.name == rng.name
                                       or (rank == 0 and p.name == ".metadata")])
        except (Exception, CheckpointException) as e:  # noqa: BLE001 (sorted out below, on every rank together)
            error = e  # DCP's CheckpointException is a BaseException
    _fail_together(error, tmp, need, rank)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, entries)
    if rank == 0:
        try:
            state_file = tmp / STATE_FILE
            state_file.write_text(json.dumps(trainer_state, indent=2))
            fsync_file(state_file)
            all_entries = {k: v for part in gathered for k, v in part.items()}
            all_entries.update(hash_files(tmp, [STATE_FILE]))
            write_checksums(tmp, all_entries)
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
        except Exception as e:  # noqa: BLE001
            error = e
    _fail_together(error, tmp, need, rank)
    return path


def _state_bytes(sd: dict) -> int:
    """Bytes this rank's shards of a (nested) state dict take on disk, roughly."""
    total = 0
    for v in sd.values():
        if isinstance(v, dict):
            total += _state_bytes(v)
        elif isinstance(v, torch.Tensor):
            local = v.to_local() if hasattr(v, "to_local") else v
            total += local.numel() * local.element_size()
    return total


def _all_reduce_sum(x: float) -> float:
    t = torch.tensor([float(x)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return float(t.item())


def _any_rank(flag: bool) -> bool:
    return _all_reduce_sum(1.0 if flag else 0.0) > 0


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _fail_together(error: BaseException | None, tmp: Path, need: int, rank: int) -> None:
    """If any rank failed: remove the half-written `step-N.tmp` and raise on every rank (DiskFullError for a full
    disk, else the rank's own error), so no rank waits forever in a collective."""
    full = _all_reduce_sum(1.0 if error is not None and is_disk_full(error) else 0.0) > 0
    failed = _any_rank(error is not None)
    if not failed:
        return
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    if full:
        raise DiskFullError(disk_full_message(tmp.parent, need, f"checkpoint {tmp.name.removesuffix('.tmp')}"))
    if error is not None:
        raise error
    raise CheckpointError(f"{tmp}: another rank failed writing the checkpoint (see its error)")


def verify_checkpoint(path: Path, rank: int = 0, world: int = 1) -> None:
    """Check `path` against its checksums.json (split over `world` ranks, all of which must call this when
    world > 1); CheckpointError naming the first damaged file. Checkpoints from before checksums: a warning."""
    entries = read_checksums(path)
    if entries is None:
        warnings.warn(f"{path}: no {CHECKSUMS} (written before checkpoints carried checksums); loaded unchecked",
                      stacklevel=2)
        return
    problems = checksum_problems(path, entries, rank, world)
    if world > 1 and dist.is_initialized():
        gathered = [None] * world
        dist.all_gather_object(gathered, problems)
        problems = [p for part in gathered for p in part]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{problems[0]}{more}; refused: a damaged checkpoint is never loaded")


def verify_export(path: Path) -> None:
    """An export/merge dir: model.safetensors against the sha256 its config.json records (exports before issue 20
    record none)."""
    config = json.loads((path / EXPORT_CONFIG).read_text()) if (path / EXPORT_CONFIG).exists() else {}
    want = config.get("weights_sha256")
    if want and file_sha256(path / EXPORT_WEIGHTS) != want:
        raise CheckpointError(f"{path / EXPORT_WEIGHTS}: sha256 differs from {path / EXPORT_CONFIG} (the file was "
                              "damaged or changed); refused")


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
    verify_checkpoint(path, rank, dist.get_world_size() if dist.is_initialized() else 1)
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
    if is_export(path) or (path / ".metadata").exists():
        return path
    if (path / "checkpoints").is_dir():
        return find_checkpoint(path)
    raise FileNotFoundError(f"{path} is neither a run dir, a checkpoint (.metadata) nor an export ({EXPORT_WEIGHTS})")


def is_export(path: Path) -> bool:
    """A finished export/merge: config.json is written last, so weights without it are an interrupted export."""
    return (path / EXPORT_WEIGHTS).exists() and (path / EXPORT_CONFIG).exists()


def load_model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a DCP checkpoint dir, an exported/merged dir (model.safetensors) or a run dir, on CPU;
    checked against their checksums first (CheckpointError naming a damaged file)."""
    path = weights_dir(path)
    if is_export(path):
        from safetensors.torch import load_file

        verify_export(path)
        return load_file(str(path / EXPORT_WEIGHTS))
    if not (path / ".metadata").exists():
        raise FileNotFoundError(f"{path} is neither a checkpoint (.metadata) nor an export ({EXPORT_WEIGHTS} with "
                                f"{EXPORT_CONFIG})")
    verify_checkpoint(path)
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
    if is_export(path):
        return json.loads((path / EXPORT_CONFIG).read_text())["model"]
    return read_trainer_state(path)["model"]


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gather the full (unsharded) weights onto CPU on every rank."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load full weights into a (sharded) model; every rank passes the same dict."""
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=True))


def export_safetensors(out: str | Path, weights: dict[str, torch.Tensor], config: dict) -> Path:
    """Write OUT/model.safetensors and OUT/config.json ({"model": ModelConfig fields, ..., "weights_sha256"}).

    Published so that a kill at any point never leaves a finished-looking export: the old config.json goes first,
    the weights are written under a temporary name and renamed, and config.json (with the weights' sha256) is
    renamed into place last. DiskFullError when the disk fills up."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp_weights, tmp_config = out / (EXPORT_WEIGHTS + ".tmp"), out / (EXPORT_CONFIG + ".tmp")
    need = sum(v.numel() * v.element_size() for v in weights.values()) + (1 << 20)
    try:
        (out / EXPORT_CONFIG).unlink(missing_ok=True)
        if free_bytes(out) < need:
            raise OSError(28, "No space left on device")
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp_weights))
        fsync_file(tmp_weights)
        config = dict(config, weights_sha256=file_sha256(tmp_weights))
        os.replace(tmp_weights, out / EXPORT_WEIGHTS)
        tmp_config.write_text(json.dumps(config, indent=2))
        fsync_file(tmp_config)
        os.replace(tmp_config, out / EXPORT_CONFIG)
    except Exception as e:
        tmp_weights.unlink(missing_ok=True)
        tmp_config.unlink(missing_ok=True)
        if is_disk_full(e):
            raise DiskFullError(disk_full_message(out, need, "the export")) from None
        raise
    return out
