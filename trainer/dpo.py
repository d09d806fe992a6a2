"""Direct preference optimisation (DPO), as Instella-3B-Instruct was tuned from Instella-3B-SFT.

AMD-AIG-AIMA/Instella `configs/instella-3b-dpo.yaml` + `scripts/dpo_tune.py` (open-instruct's DPO): preference pairs
of `allenai/olmo-2-1124-7b-preference-mix`, each side rendered with the SFT chat template and cut to 2,048 tokens;
loss `dpo_norm` with β 5: the DPO loss on *per-token-averaged* log-probabilities of the labelled (assistant)
tokens, against a frozen reference model (the SFT weights)::

    logp(y) = Σ_t log p(y_t | y_<t) / n_labelled            (dpo_norm; plain `dpo`: the sum)
    loss    = -log σ(β · [(logp_π(chosen) - logp_π(rejected)) - (logp_ref(chosen) - logp_ref(rejected))])
    reward  = β · (logp_π - logp_ref)      margin = reward(chosen) - reward(rejected), accuracy = margin > 0

The step's loss is the mean over its pairs (128 per step in Instella, one epoch, LR 5e-7 with open-instruct's
linear schedule: `int(0.1 × steps)` warmup steps from 0, then down to 0; AdamW betas (0.9, 0.999), weight decay 0,
no gradient clipping).

The data is a preference build (`packing: {mode: preference}`): rows 2k (chosen) and 2k+1 (rejected) of the build
form pair k, each one sequence + padding, its loss mask on the final assistant turn. The reference log-probs are
computed on the fly by a frozen copy of the `--init-from` model (sharded like the policy, no gradients, no
optimizer state).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer.data import Batch, PackedDataset, collate
from trainer.data_order import UnitPermutation

LOSSES = ("dpo_norm", "dpo")
PREFERENCE_MODE = "preference"  # the build's packing mode


# ------------------------------------------------------------------------------------------------ the loss


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the chosen / rejected rewards (open-instruct `dpo_loss`, label smoothing 0)."""
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    losses = -F.logsigmoid(beta * logits)
    return losses, beta * (policy_chosen - ref_chosen).detach(), beta * (policy_rejected - ref_rejected).detach()


def sequence_logp(model, batch: Batch, average: bool) -> torch.Tensor:
    """Log-probability of `batch`'s labelled tokens under `model` (one sequence): their sum, or their mean for
    dpo_norm. Goes through the model's forward (FSDP's hooks, the fused linear + cross-entropy)."""
    n = batch.n_valid
    if n == 0:
        raise ValueError("a preference sequence has no labelled token (its final assistant turn was cut away)")
    logp = -model(batch.input_ids, batch.positions, batch.cu_seqlens, batch.max_seqlen, batch.labels)
    return logp / n if average else logp


# ------------------------------------------------------------------------------------------------ the data


def is_preference_build(path: str | Path) -> bool:
    from pipelines.shards.reader import connect
    from trainer.hf_files import packing_mode

    con = connect(Path(path))
    try:
        cur = con.execute("select * from build")
        row = dict(zip([d[0] for d in cur.description], cur.fetchone()))
    finally:
        con.close()
    return packing_mode(row.get("packing")) == PREFERENCE_MODE


class PairLoader:
    """Pairs (row 2k chosen, row 2k+1 rejected) in a keyed random order per epoch; a step takes the next
    `world x grad_accum x micro_batch` pairs of the global stream, rank r the r-th slice. State: (epoch, cursor)."""

    def __init__(self, dataset: PackedDataset, seed: int, rank: int, world: int, micro_batch: int,
                 grad_accum: int) -> None:
        if dataset.chunks_per_row != 1:
            raise ValueError("DPO trains whole rows: leave out --seq-len (a pair's rows cannot be cut)")
        if len(dataset) % 2:
            raise ValueError(f"{dataset.info.path}: a preference build has an even number of rows, found "
                             f"{len(dataset)}")
        self.ds, self.seed, self.rank, self.world = dataset, seed, rank, world
        self.micro_batch, self.grad_accum = micro_batch, grad_accum
        self.n_pairs = len(dataset) // 2
        self.epoch, self.cursor = 0, 0

    @property
    def pairs_per_step(self) -> int:
        return self.world * self.grad_accum * self.micro_batch

    def next_step(self) -> list[list[tuple[Batch, Batch]]]:
        """This rank's microbatches, each a list of (chosen, rejected) batches."""
        pairs = []
        while len(pairs) < self.pairs_per_step:
            order = UnitPermutation(self.n_pairs, self.seed, self.epoch)
            stop = min(self.n_pairs, self.cursor + self.pairs_per_step - len(pairs))
            pairs += order(np.arange(self.cursor, stop)).tolist()
            self.cursor = stop
            if self.cursor == self.n_pairs:
                self.epoch, self.cursor = self.epoch + 1, 0
        per_rank = self.grad_accum * self.micro_batch
        mine = pairs[self.rank * per_rank:(self.rank + 1) * per_rank]
        rows = [(collate([self.ds[2 * p]], "absolute", "causal"), collate([self.ds[2 * p + 1]], "absolute", "causal"))
                for p in mine]
        return [rows[i:i + self.micro_batch] for i in range(0, per_rank, self.micro_batch)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "kind": "pairs"}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self.seed = state["epoch"], state["cursor"], state["seed"]


# ------------------------------------------------------------------------------------------------ schedule


@dataclass(frozen=True)
class HFLinearSchedule:
    """transformers' `get_linear_schedule_with_warmup` as open-instruct drives it: optimizer step s (1-based) uses
    the multiplier of scheduler step s - 1: (s-1)/W during warmup, then (N - (s-1)) / (N - W)."""

    peak: float
    total: int
    warmup: int

    def __call__(self, step: int) -> float:
        s = step - 1
        if s < self.warmup:
            return self.peak * s / max(1, self.warmup)
        return self.peak * max(0.0, (self.total - s) / max(1, self.total - self.warmup))

    def state_dict(self) -> dict:
        return dict(self.__dict__, kind="hf-linear")


# ------------------------------------------------------------------------------------------------ the step


def dpo_step(step: int, policy, reference, optimizer, schedule, loader: PairLoader, settings, env) -> dict:
    """One optimizer step over `loader`'s next pairs; the loss is the mean over all pairs of the step (all ranks)."""
    from trainer import parallel
    from trainer.optim import set_lr

    t0 = time.perf_counter()
    lr = schedule(step)
    set_lr(optimizer, lr)
    micro = loader.next_step()
    average = settings.dpo_loss == "dpo_norm"
    scale = env.world / loader.pairs_per_step  # FSDP averages gradients over ranks
    sums = torch.zeros(4, dtype=torch.float64, device=env.device)  # loss, margin, accuracy, chosen reward
    n_tokens = 0
    for i, pairs in enumerate(micro):
        policy.set_requires_gradient_sync(i == len(micro) - 1)
        for chosen, rejected in pairs:
            chosen, rejected = chosen.to(env.device), rejected.to(env.device)
            with torch.no_grad():
                ref_c = sequence_logp(reference, chosen, average)
                ref_r = sequence_logp(reference, rejected, average)
            pol_c = sequence_logp(policy, chosen, average)
            pol_r = sequence_logp(policy, rejected, average)
            loss, reward_c, reward_r = dpo_loss(pol_c, pol_r, ref_c, ref_r, settings.dpo_beta)
            (loss.sum() * scale).backward()
            margin = reward_c - reward_r
            sums += torch.stack([loss.detach().double().sum(), margin.double().sum(), (margin > 0).double().sum(),
                                 reward_c.double().sum()])
            n_tokens += chosen.input_ids.numel() + rejected.input_ids.numel()
    clip = settings.grad_clip if settings.grad_clip > 0 else math.inf  # open-instruct: clip_grad_norm -1 = none
    grad_norm = parallel.clip_grad_norm(policy.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    total = parallel.all_reduce_sum(sums, env.device) / loader.pairs_per_step
    n_tokens = int(parallel.all_reduce_sum(float(n_tokens), env.device).item())
    dt = time.perf_counter() - t0
    return {"step": step, "loss": float(total[0]), "reward_margin": float(total[1]),
            "reward_accuracy": float(total[2]), "reward_chosen": float(total[3]), "lr": lr,
            "grad_norm": float(grad_norm), "tokens_per_s": n_tokens / dt, "n_tokens": n_tokens,
            "pairs": loader.pairs_per_step, "step_s": dt}


def check_dpo_run(cfg, settings) -> None:
    """ValueError (one line) for a DPO run that cannot work; `cli.py train` calls it before launching anything."""
    if not cfg.init_from:
        raise ValueError("DPO needs --init-from (the SFT model: the policy's start and the frozen reference)")
    if settings.sp != 1:
        raise ValueError("DPO runs without sequence parallelism (2,048-token pairs): pass --sp 1")
    if not is_preference_build(cfg.data):
        raise ValueError(f"{cfg.data} is not a preference build (packing mode {PREFERENCE_MODE!r}, e.g. "
                         "`build-mixture dpo`)")


def train_dpo(cfg, env, settings, mcfg) -> dict:
    """The DPO run: policy and frozen reference from --init-from, pairs from a preference build."""
    from trainer import checkpoint as ckpt
    from trainer.build import build_model
    from trainer.build import progress_bar as _progress
    from trainer.metrics import MetricsLog, plot_loss
    from trainer.optim import build_optimizer

    check_dpo_run(cfg, settings)
    run = Path(cfg.out)
    if env.is_main:
        run.mkdir(parents=True, exist_ok=True)
        cfg.to_json(run / "train_config.json", resolved=settings.to_dict())
    dataset = PackedDataset(cfg.data)
    policy = build_model(mcfg, cfg, env, settings.dtype)
    reference = build_model(mcfg, cfg, env, settings.dtype)
    reference.requires_grad_(False)
    reference.eval()
    optimizer = build_optimizer(policy, settings.lr, (settings.beta1, settings.beta2), settings.eps,
                                settings.weight_decay, settings.decay_norm)
    schedule = HFLinearSchedule(settings.lr, settings.steps, settings.warmup)
    loader = PairLoader(dataset, cfg.seed, env.rank, env.world, settings.micro_batch, settings.grad_accum)
    start = 0
    if cfg.resume:
        state = ckpt.load_checkpoint(ckpt.find_checkpoint(cfg.resume, cfg.resume_step), policy, optimizer, env.rank)
        loader.load_state_dict(state["data"])
        start = state["step"]
    log = MetricsLog(run, env.is_main, resume_step=start)
    if env.is_main:
        print(f"[train] DPO ({settings.dpo_loss}, β {settings.dpo_beta:g}): {loader.n_pairs:,} pairs, "
              f"{loader.pairs_per_step} pairs/step, {settings.steps} steps; resolved settings:\n{settings.table()}",
              flush=True)
    progress = _progress(env.is_main and cfg.progress)
    task = progress.add_task("train", total=settings.steps, completed=start, loss=float("nan")) if progress else None
    last: dict = {}
    try:
        if progress:
            progress.start()
        for step in range(start + 1, settings.steps + 1):
            last = dpo_step(step, policy, reference, optimizer, schedule, loader, settings, env)
            if step % cfg.log_every == 0 or step == settings.steps:
                log.log(last)
            if progress:
                progress.update(task, completed=step, loss=last["loss"])
            if (cfg.save_every and step % cfg.save_every == 0) or step == settings.steps:
                state = {"step": step, "data": loader.state_dict(), "schedule": schedule.state_dict(),
                         "config": dataclasses.asdict(cfg), "settings": settings.to_dict(),
                         "model": dataclasses.asdict(mcfg)}
                ckpt.save_checkpoint(ckpt.checkpoint_dir(run, step), policy, optimizer, state, env.rank)
    finally:
        if progress:
            progress.stop()
    if cfg.export:
        weights = ckpt.full_model_state(policy)
        if env.is_main:
            ckpt.export_safetensors(run, weights, {"model": dataclasses.asdict(mcfg), "preset": cfg.preset,
                                                   "recipe": settings.recipe, "steps": settings.steps,
                                                   "data": cfg.data, "seed": cfg.seed, "objective": "dpo",
                                                   "chat": True})
    if env.is_main and cfg.plot:
        plot_loss(run)
    return last
