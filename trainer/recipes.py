"""Instella's training stages as data, and the resolution of a run's settings (flags > recipe > build > defaults).

A `Recipe` holds every number of one stage, taken from Instella's configs (github.com/AMD-AIG-AIMA/Instella,
configs/instella-3b-*.yaml on main, configs/instella-3b-long-*.yaml on the instella-long branch) and the Instella /
Instella-Long reports.

Batch arithmetic is sequence-parallel aware: Instella's `global_train_batch_size` counts one row per *rank*, and
under sequence parallelism the `seq_parallel_size` ranks of a group read the same row (instella-long
`instella/data/__init__.py` passes `replication=seq_parallel_size` to its dataset), so a step trains
`global_batch / sp` distinct rows: long phase 2 is 128 / 4 = 32 rows x 256K = 8M tokens per step (the config's own
comment: "128 *256K/4(seq_parallel_size)=8M tokens BS"). `resolve_settings` turns a `TrainConfig` (where
`None` means "not given"), the recipe it names, the build and the world size into `RunSettings`: the exact values the
run uses, each with where it came from. The batch is given in tokens per optimizer step and converted to
micro-batch x grad-accum x data-parallel world for the hardware at hand; a conversion that is not exact is an error
(never a silent rounding), while a duration in tokens or epochs is rounded *up* to whole steps and the table says so.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from trainer.config import ModelConfig, TrainConfig, get_preset

INSTELLA_STAGE2_SEEDS = (5796, 6198, 8915)  # the three stage-2 runs averaged into Instella-3B


@dataclass(frozen=True)
class Recipe:
    """One training stage. Row length in tokens, batch as Instella's `global_train_batch_size` (rows counted once
    per rank, so a sequence-parallel group of `sp` ranks counts its shared row `sp` times); exactly one of
    steps / tokens / epochs is set."""

    name: str
    about: str
    lr: float  # peak
    schedule: str
    warmup: int  # steps
    final_lr_ratio: float  # lr at the last step / peak (OLMo's alpha_f)
    seq_len: int  # tokens per row
    global_batch: int  # Instella's global_train_batch_size (per-rank rows; replicated rows counted once per rank)
    steps: int | None = None
    tokens: int | None = None
    epochs: float | None = None
    seeds: tuple[int, ...] = ()  # more than one: train once per seed, then average the weights (model soup)
    sp: int = 1  # Ulysses sequence parallelism Instella used (processes sharing one row)
    attention: str = "causal"  # stage 1/2 and SFT: no document masking (OLMo); Instella-Long: document masking
    positions: str = "absolute"  # Instella never restarted RoPE positions per document
    init: str = "mitchell"  # OLMo `init_fn: mitchell`
    norm_eps: float = 1e-5
    decay_norm: bool = True  # OLMo `decay_norm_and_bias: true`
    dtype: str = "bf16"  # amp_bf16
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    preset: str = "instella-3b"
    warmup_start: float = 0.1  # warmup starts at this x peak (OLMo/Instella `optim.py` `_linear_warmup`: 0.1)
    # --init-from keeps the previous stage's AdamW moments (Instella: `reset_trainer_state: true` without
    # `reset_optimizer_state`), with the step counter and schedule starting anew
    keep_optimizer: bool = False
    objective: str = "lm"  # "lm": next-token loss; "dpo": preference pairs (trainer/dpo.py), a row = one pair
    warmup_ratio: float | None = None  # warmup as a fraction of the steps (open-instruct: int(ratio x steps))
    dpo_beta: float = 0.0
    dpo_loss: str = ""

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.steps, self.tokens, self.epochs)) != 1:
            raise ValueError(f"recipe {self.name}: give exactly one of steps / tokens / epochs")
        if self.global_batch % self.sp:
            raise ValueError(f"recipe {self.name}: global batch {self.global_batch} is not a multiple of sp {self.sp}")

    @property
    def rows_per_step(self) -> int:
        """Distinct rows per optimizer step (the ranks of one sequence-parallel group share a row)."""
        return self.global_batch // self.sp

    @property
    def unit_tokens(self) -> int:
        """Tokens of one batch unit: a row, or for DPO a pair of rows (chosen + rejected)."""
        return self.seq_len * (2 if self.objective == "dpo" else 1)

    @property
    def batch_tokens(self) -> int:
        """Distinct tokens per optimizer step."""
        return self.rows_per_step * self.unit_tokens

    @property
    def total_tokens(self) -> int | None:
        """Tokens of the whole stage when its duration is fixed (steps or tokens); None for epochs of a build."""
        if self.steps is not None:
            return self.steps * self.batch_tokens
        return self.tokens

    def describe(self) -> str:
        """One line: batch and duration in tokens (what `cli.py recipes` and the start of a run print)."""
        seq = (f"{self.rows_per_step} pairs x 2 x {self.seq_len:,}" if self.objective == "dpo" else
               f"{self.rows_per_step} rows x {self.seq_len:,}")
        if self.sp > 1:
            seq = f"{self.global_batch}/{self.sp} (sp) = " + seq
        total = self.total_tokens
        dur = (f"{self.steps:,} steps = {total:,} tokens ({total / 1e9:.3g}B)" if self.steps is not None else
               f"{self.tokens:,} tokens" if self.tokens is not None else
               f"{self.epochs:g} epoch(s) of the build" + (f" (Instella: {self.instella_tokens})"
                                                          if self.instella_tokens else ""))
        return f"{self.name}: {self.batch_tokens:,} tokens/step ({seq}); {dur}"

    @property
    def instella_tokens(self) -> str:
        return INSTELLA_EPOCH_TOKENS.get(self.name, "")


# What one epoch of Instella's own data was (Instella report, Table 1 / §2): stage 1 4.07T, stage 2 57.5B tokens
INSTELLA_EPOCH_TOKENS = {"instella-stage1": "4.07T tokens", "instella-stage2": "57.5B tokens"}

K4, K64, K256 = 4_096, 65_536, 262_144
RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("instella-stage1", "pre-training stage 1 (4.07T tokens of OLMoE-mix-0924)",
           lr=4e-4, schedule="cosine", warmup=2000, final_lr_ratio=0.1, seq_len=K4, global_batch=1024,
           epochs=1),
    Recipe("instella-stage2", "pre-training stage 2 (57.5B tokens), three seeds averaged",
           lr=4e-5, schedule="linear", warmup=0, final_lr_ratio=0.0, seq_len=K4, global_batch=1024,
           epochs=1, seeds=INSTELLA_STAGE2_SEEDS, keep_optimizer=True),
    Recipe("instella-long-phase1", "Instella-Long continued pre-training at 64K (RoPE θ from the build)",
           lr=2e-5, schedule="linear", warmup=500, final_lr_ratio=0.001, seq_len=K64, global_batch=64,
           steps=5000, attention="document"),
    Recipe("instella-long-phase2", "Instella-Long continued pre-training at 256K",
           lr=2e-5, schedule="linear", warmup=250, final_lr_ratio=0.001, seq_len=K256, global_batch=128,
           steps=2500, sp=4, attention="document", keep_optimizer=True),
    Recipe("instella-long-sft", "Instella-Long SFT at 256K",
           lr=4e-5, schedule="linear", warmup=13, final_lr_ratio=0.001, seq_len=K256, global_batch=64,
           steps=250, sp=4, attention="document", keep_optimizer=True),
    Recipe("instella-sft", "Instella-3B-SFT (3 epochs, loss on assistant tokens)",
           lr=1e-5, schedule="linear", warmup=500, final_lr_ratio=0.001, seq_len=K4, global_batch=128,
           epochs=3),
    # configs/instella-3b-dpo.yaml + scripts/dpo_tune.py (open-instruct): torch AdamW defaults (0.9, 0.999, 1e-8),
    # weight decay 0, no clipping (clip_grad_norm -1), linear schedule warmed up from 0 over int(0.1 x steps)
    Recipe("instella-dpo", "Instella-3B-Instruct: DPO (dpo_norm, β 5) on preference pairs from Instella-3B-SFT",
           lr=5e-7, schedule="linear", warmup=0, final_lr_ratio=0.0, seq_len=2048, global_batch=128, epochs=1,
           objective="dpo", warmup_ratio=0.1, warmup_start=0.0, beta2=0.999, weight_decay=0.0, grad_clip=0.0,
           decay_norm=False, dpo_beta=5.0, dpo_loss="dpo_norm"),
)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name]


@dataclass(frozen=True)
class RunSettings:
    """What a run uses after resolution; `source[name]` says where each value came from."""

    recipe: str | None
    seq_len: int
    rope_theta: float
    lr: float
    schedule: str
    warmup: int
    final_lr_ratio: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    grad_clip: float
    dtype: str
    attention: str
    positions: str
    init: str
    norm_eps: float
    decay_norm: bool
    sp: int
    world: int
    micro_batch: int
    grad_accum: int
    tokens_per_step: int  # distinct tokens per optimizer step (an SP group's shared row counted once)
    steps: int
    warmup_start: float = 0.0  # warmup starts at warmup_start x lr (Instella: 0.1)
    keep_optimizer: bool = False  # --init-from also restores the AdamW moments of that checkpoint
    objective: str = "lm"  # "dpo": preference pairs, a batch unit (micro_batch) is a pair of rows
    dpo_beta: float = 0.0
    dpo_loss: str = ""
    source: dict[str, str] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def data_world(self) -> int:
        """Ranks reading different rows (ranks of one sequence-parallel group share a row)."""
        return self.world // self.sp

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """The resolved settings, one per line, with their origin (printed at the start of a run)."""
        rows = [(k, v) for k, v in asdict(self).items() if k != "source"] + [("total_tokens", self.total_tokens)]
        self.source.setdefault("total_tokens", "steps x tokens_per_step")
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k:<{width}}  {_fmt(v):<12} {self.source.get(k, '')}" for k, v in rows)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, int) and not isinstance(v, bool) and v >= 10_000:
        return f"{v:,}"
    return str(v)


def effective_preset(cfg: TrainConfig) -> str | None:
    """The preset that gives the model and the default LR / warmup: --preset, else the model of --init-from (no
    preset), else the recipe's, else "tiny"."""
    if cfg.preset:
        return cfg.preset
    if cfg.init_from:
        return None
    return get_recipe(cfg.recipe).preset if cfg.recipe else "tiny"


def resolve_settings(cfg: TrainConfig, model: ModelConfig, build_seq_len: int, build_theta: float | None,
                     build_rows: int, world: int, model_source: str = "preset") -> RunSettings:
    """Every setting of the run: the flag (a non-None field of `cfg`), else the recipe, else the build, else ours.

    `model` is the base model config (preset or --init-from; `model_source` names it), `build_rows` the number of
    rows in the build (for durations in epochs), `world` the number of processes. Raises ValueError with a one-line
    message on a combination that cannot run as asked.
    """
    recipe = get_recipe(cfg.recipe) if cfg.recipe else None
    source: dict[str, str] = {}

    def pick(name: str, flag, default, default_from: str = "default"):
        if flag is not None:
            source[name] = "flag"
            return flag
        value = getattr(recipe, name) if recipe is not None else None
        if value is not None:
            source[name] = f"recipe {recipe.name}"
            return value
        source[name] = default_from
        return default

    seq_len = _resolve_seq_len(cfg, recipe, build_seq_len, source)
    rope_theta = cfg.rope_theta or build_theta or model.rope_theta
    source["rope_theta"] = "flag" if cfg.rope_theta else "build" if build_theta else model_source
    sp = int(cfg.extra["sp"]) if cfg.extra.get("sp") else None
    sp = pick("sp", sp, 1)
    if sp < 1 or world % sp:
        raise ValueError(f"sequence parallelism {sp} ({source['sp']}) must divide the number of processes {world}"
                         + ("; pass --sp 1 (or a divisor) to override the recipe" if source["sp"] != "flag" else ""))
    if seq_len % sp:
        raise ValueError(f"sequence parallelism {sp} must divide the row length {seq_len}")
    objective = recipe.objective if recipe is not None else "lm"
    source["objective"] = f"recipe {recipe.name}" if recipe is not None else "default"
    if objective == "dpo":
        source["dpo_beta"] = source["dpo_loss"] = f"recipe {recipe.name}"
    unit = seq_len * (2 if objective == "dpo" else 1)  # DPO: a unit of the batch is a (chosen, rejected) pair
    micro_batch, grad_accum, tokens_per_step = _resolve_batch(cfg, recipe, unit, world // sp, source)
    steps = _resolve_steps(cfg, recipe, tokens_per_step, build_seq_len, build_rows, source)
    preset_name = effective_preset(cfg)
    preset = get_preset(preset_name) if preset_name else None
    lr = pick("lr", cfg.lr, preset.lr if preset else None)
    if lr is None:
        raise ValueError("no learning rate: pass --lr (or --recipe / --preset)")
    if cfg.warmup is None and recipe is not None and recipe.warmup_ratio is not None:
        warmup = int(steps * recipe.warmup_ratio)
        source["warmup"] = f"recipe {recipe.name}: int({recipe.warmup_ratio:g} x {steps} steps)"
    elif cfg.warmup is None and recipe is None:
        source["warmup"] = "default (preset's, at most steps/10)"
        warmup = min(preset.warmup if preset else 0, steps // 10)
    else:
        warmup = pick("warmup", cfg.warmup, 0)
        if warmup > steps:  # e.g. a recipe's 500 warmup steps on a short test run: the LR never reaches its peak
            source["warmup"] += f" (longer than the {steps} steps: peak LR never reached)"
    warmup_start = pick("warmup_start", cfg.warmup_start, 0.0)
    if not 0 <= warmup_start < 1:
        raise ValueError(f"warmup start must be in [0, 1) x peak, got {warmup_start}")
    keep_optimizer = bool(pick("keep_optimizer", cfg.keep_optimizer, False))
    if cfg.keep_optimizer and not cfg.init_from:
        raise ValueError("--keep-optimizer needs --init-from RUN (the run whose AdamW moments to keep)")
    if not cfg.init_from:  # nothing to carry over: a run from scratch starts a fresh optimizer whatever the recipe
        keep_optimizer = False
        source["keep_optimizer"] = "no --init-from"
    norm_eps = _resolve_norm_eps(cfg, model, model_source, pick, source)
    return RunSettings(
        recipe=recipe.name if recipe else None, seq_len=seq_len, rope_theta=float(rope_theta), lr=float(lr),
        schedule=pick("schedule", cfg.schedule, "cosine"), warmup=int(warmup),
        final_lr_ratio=float(pick("final_lr_ratio", cfg.final_lr_ratio, 0.1)),
        beta1=float(pick("beta1", cfg.beta1, 0.9)), beta2=float(pick("beta2", cfg.beta2, 0.95)),
        eps=float(pick("eps", cfg.eps, 1e-8)), weight_decay=float(pick("weight_decay", cfg.weight_decay, 0.1)),
        grad_clip=float(pick("grad_clip", cfg.grad_clip, 1.0)), dtype=pick("dtype", cfg.dtype, "fp32"),
        attention=pick("attention", cfg.attention, "document"), positions=pick("positions", cfg.positions, "document"),
        init=pick("init", cfg.init, model.init, model_source),
        norm_eps=norm_eps,
        decay_norm=bool(pick("decay_norm", cfg.decay_norm, False)), sp=sp, world=world, micro_batch=micro_batch,
        grad_accum=grad_accum, tokens_per_step=tokens_per_step, steps=steps, warmup_start=float(warmup_start),
        keep_optimizer=keep_optimizer, objective=objective, dpo_beta=float(recipe.dpo_beta if recipe else 0.0),
        dpo_loss=recipe.dpo_loss if recipe else "", source=source)


def _resolve_norm_eps(cfg: TrainConfig, model: ModelConfig, model_source: str, pick, source: dict) -> float:
    """A checkpoint's architecture wins on --init-from: its RMSNorm eps is what its weights were trained with (a
    recipe's eps does not replace it; an explicit --norm-eps that differs is an error, never a silent drift)."""
    if not cfg.init_from:
        return float(pick("norm_eps", cfg.norm_eps, model.norm_eps, model_source))
    if cfg.norm_eps is not None and cfg.norm_eps != model.norm_eps:
        raise ValueError(f"--norm-eps {cfg.norm_eps:g} contradicts the --init-from checkpoint's RMSNorm eps "
                         f"{model.norm_eps:g}; leave out --norm-eps (the checkpoint's architecture is kept)")
    source["norm_eps"] = model_source
    return float(model.norm_eps)


def _resolve_seq_len(cfg: TrainConfig, recipe: Recipe | None, build_seq_len: int, source: dict) -> int:
    """The build's row length unless --seq-len says otherwise: a recipe never silently cuts a longer build."""
    if cfg.seq_len is not None:
        if build_seq_len % cfg.seq_len:
            raise ValueError(f"--seq-len {cfg.seq_len} must divide the build's row length {build_seq_len}")
        source["seq_len"] = "flag" if cfg.seq_len == build_seq_len else \
            f"flag (cuts each {build_seq_len:,}-token build row into {build_seq_len // cfg.seq_len})"
        return cfg.seq_len
    if recipe is not None and recipe.seq_len != build_seq_len:
        if recipe.seq_len > build_seq_len:
            raise ValueError(f"recipe {recipe.name} trains {recipe.seq_len:,}-token rows but the build's rows are "
                             f"{build_seq_len:,} tokens; build the data at {recipe.seq_len:,} or pass --seq-len")
        raise ValueError(f"recipe {recipe.name} trains {recipe.seq_len:,}-token rows but the build's rows are "
                         f"{build_seq_len:,} tokens; pass --seq-len {recipe.seq_len} to cut them on purpose, or "
                         f"--seq-len {build_seq_len} to train full rows")
    source["seq_len"] = "build"
    return build_seq_len


def _resolve_batch(cfg: TrainConfig, recipe: Recipe | None, seq_len: int, data_world: int,
                   source: dict) -> tuple[int, int, int]:
    """(micro_batch, grad_accum, tokens_per_step). A token batch must split exactly into rows, ranks and
    microbatches; explicit --micro-batch / --grad-accum without a token batch define the batch themselves."""
    batch_tokens, origin = cfg.batch_tokens, "flag"
    if batch_tokens is None and recipe is not None and cfg.grad_accum is None:
        batch_tokens, origin = recipe.batch_tokens, f"recipe {recipe.name}"
    if batch_tokens is None:
        micro, accum = cfg.micro_batch or 1, cfg.grad_accum or 1
        source["micro_batch"] = "flag" if cfg.micro_batch else "default"
        source["grad_accum"] = "flag" if cfg.grad_accum else "default"
        source["tokens_per_step"] = "micro_batch x grad_accum x data world x seq_len"
        return micro, accum, micro * accum * data_world * seq_len
    if batch_tokens % seq_len:
        raise ValueError(f"batch of {batch_tokens:,} tokens ({origin}) is not a whole number of {seq_len:,}-token "
                         f"rows; pass --batch-tokens as a multiple of {seq_len}")
    rows = batch_tokens // seq_len
    if rows % data_world:
        raise ValueError(f"batch of {rows} rows ({origin}) does not split evenly over {data_world} data-parallel "
                         "ranks; change --batch-tokens or --nproc/--sp")
    per_rank = rows // data_world
    micro = cfg.micro_batch or 1
    if per_rank % micro:
        raise ValueError(f"{per_rank} rows per rank do not split into microbatches of {micro}; change --micro-batch")
    accum = per_rank // micro
    if cfg.grad_accum is not None and cfg.grad_accum != accum:
        raise ValueError(f"--grad-accum {cfg.grad_accum} contradicts the batch of {batch_tokens:,} tokens ({origin}),"
                         f" which needs {accum} at --micro-batch {micro}; drop one of the two")
    source["micro_batch"] = "flag" if cfg.micro_batch else "default"
    source["grad_accum"] = f"from tokens_per_step / (micro_batch x {data_world} ranks x seq_len)"
    source["tokens_per_step"] = origin
    return micro, accum, batch_tokens


def _resolve_steps(cfg: TrainConfig, recipe: Recipe | None, tokens_per_step: int, build_seq_len: int,
                   build_rows: int, source: dict) -> int:
    given = [(n, getattr(cfg, n)) for n in ("steps", "tokens", "epochs") if getattr(cfg, n) is not None]
    if len(given) > 1:
        raise ValueError(f"give one duration, not {' and '.join('--' + n for n, _ in given)}")
    if given:
        (kind, value), origin = given[0], "flag"
    elif recipe is not None:
        kind = next(n for n in ("steps", "tokens", "epochs") if getattr(recipe, n) is not None)
        value, origin = getattr(recipe, kind), f"recipe {recipe.name}"
    else:
        source["steps"] = "default"
        return 100
    if kind == "steps":
        source["steps"] = origin
        return int(value)
    if kind == "tokens":
        total = int(value)
    else:  # one epoch = every row of the build once (rows x pieces per row units of seq_len tokens)
        total = int(math.ceil(value * build_rows * build_seq_len))
    steps = max(1, math.ceil(total / tokens_per_step))
    exact = steps * tokens_per_step == total
    source["steps"] = (f"{origin}: {value:g} {kind} = {total:,} tokens / {tokens_per_step:,} per step"
                       + ("" if exact else ", rounded up"))
    return steps
