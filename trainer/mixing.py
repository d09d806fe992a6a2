"""Load-time mixing: train on per-source token pools in requested shares, without rebuilding.

A *pool* is every row of one source: the shards of by-source builds (`packing: {mode: concat, by_source: true}` or
`build-mixture --by-source`) each hold one source (the manifest's view `source_shards`, docs/FORMAT.md), and any
number of builds (`train --data B1 --data B2`) can contribute pools. `--mix "a=0.5,b=0.3"` (or a YAML file) asks
for token shares.

The run's units (rows of `seq_len` tokens, as trainer/data.py cuts them) are planned once, from its length:
N = steps x units per step positions, source s getting `count_s` of them by largest-remainder rounding of
N x weight_s (whole rows, so a realized share is off by less than one row). A source whose pool is smaller than
its count must be repeated count / pool times; above its `max_repeat` (default 1: never repeat) that is an error
naming the source and the repeat it would need.

Order, deterministic and resumable with O(#sources) state (like trainer/data.py, nothing is materialised):
  * which source fills position p: a keyed permutation of [0, N) (trainer/data_order.py) maps p to a slot, and
    slots [cum_s, cum_s + count_s) belong to source s — so source s fills exactly count_s positions, scattered
    uniformly; a run longer than N continues with the next round (another permutation);
  * which unit: the k-th draw from source s is unit perm_{s,e}(k mod pool_s) of its epoch e = k div pool_s, a
    keyed permutation per (seed, source, epoch); units of padding only are skipped (the next draw of the same
    source fills the position).
The state is (cursor, draws per source) plus the realized counts; a checkpoint stores it, so resume is exact.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from trainer.data import PackedDataset, StepLoader, collate, read_build
from trainer.data_order import UnitPermutation

MIX_ORDER = "mix-v1"  # saved with the data position, like trainer.data.ORDER
DEFAULT_MAX_REPEAT = 1.0
_NAME = re.compile(r"^[A-Za-z0-9_.:/*@+-]+$")


# ---------------------------------------------------------------------------------------------------------- request
@dataclass(frozen=True)
class MixRequest:
    """What the user asked: a weight per source (any positive scale; normalised when planned) and repeat caps."""

    weights: dict[str, float]
    max_repeat: dict[str, float] = field(default_factory=dict)  # per source; missing = default_max_repeat
    default_max_repeat: float = DEFAULT_MAX_REPEAT

    def cap(self, source: str) -> float:
        return self.max_repeat.get(source, self.default_max_repeat)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "MixRequest":
        return cls(dict(raw["weights"]), dict(raw.get("max_repeat", {})),
                   float(raw.get("default_max_repeat", DEFAULT_MAX_REPEAT)))


def _number(text, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {text!r}")
    return value


def _check(weights: dict[str, float], caps: dict[str, float], default_cap: float, origin: str) -> MixRequest:
    if not weights:
        raise ValueError(f"--mix {origin}: no sources given")
    for name, w in weights.items():
        if w < 0:
            raise ValueError(f"--mix {origin}: weight of {name} must be >= 0, got {w:g}")
    if not sum(weights.values()) > 0:
        raise ValueError(f"--mix {origin}: the weights add up to 0")
    for name, cap in {**caps, "(default)": default_cap}.items():
        if not cap >= 1:
            raise ValueError(f"--mix {origin}: max_repeat of {name} must be >= 1 (1 = each row at most once), "
                             f"got {cap:g}")
    return MixRequest(weights, caps, default_cap)


def parse_mix_text(text: str, default_max_repeat: float | None = None) -> MixRequest:
    """"a=0.5,b=0.3" (a source may carry its own cap: "b=0.3:4" = weight 0.3, max_repeat 4)."""
    weights: dict[str, float] = {}
    caps: dict[str, float] = {}
    for item in text.split(","):
        name, eq, value = item.strip().partition("=")
        name = name.strip()
        if not eq or not name or not _NAME.match(name):
            raise ValueError(f"--mix items must look like source=weight (e.g. dolmino-dclm=0.5,dolmino-math=0.3), "
                             f"got {item.strip()!r}")
        if name in weights:
            raise ValueError(f"--mix names {name} twice")
        weight, colon, cap = value.partition(":")
        weights[name] = _number(weight.strip(), f"--mix weight of {name}")
        if colon:
            caps[name] = _number(cap.strip(), f"--mix max_repeat of {name}")
    default = DEFAULT_MAX_REPEAT if default_max_repeat is None else default_max_repeat
    return _check(weights, caps, default, repr(text))


def parse_mix_file(path: Path, default_max_repeat: float | None = None) -> MixRequest:
    """A YAML mixture. Accepted shapes:
      {sources: {a: 0.5, b: {weight: 0.3, max_repeat: 4}}, max_repeat: 2}
      {a: 0.5, b: 0.3}
      a build spec: {sources: [{name: a, share: 0.5, max_repeat: 2}, ...]} (its `share:` values are the weights)
    `--max-repeat` overrides the file's default cap."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"--mix {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--mix {path}: expected a mapping of source weights, got {type(raw).__name__}")
    default = raw.get("max_repeat", DEFAULT_MAX_REPEAT) if "sources" in raw else DEFAULT_MAX_REPEAT
    default = _number(default, f"--mix {path}: max_repeat")
    if default_max_repeat is not None:
        default = default_max_repeat
    entries = raw.get("sources", raw)
    weights: dict[str, float] = {}
    caps: dict[str, float] = {}
    if isinstance(entries, list):  # a build spec
        for entry in entries:
            if not isinstance(entry, dict) or "name" not in entry:
                raise ValueError(f"--mix {path}: every item of `sources` needs a name, got {entry!r}")
            if entry.get("share") is None:
                continue  # a source without a share takes no part in the mix
            weights[str(entry["name"])] = _number(entry["share"], f"--mix {path}: share of {entry['name']}")
            if "max_repeat" in entry:
                caps[str(entry["name"])] = _number(entry["max_repeat"], f"--mix {path}: max_repeat of "
                                                                         f"{entry['name']}")
        if not weights:
            raise ValueError(f"--mix {path}: no source of the spec has a `share:`")
    elif isinstance(entries, dict):
        for name, value in entries.items():
            if isinstance(value, dict):
                unknown = set(value) - {"weight", "max_repeat"}
                if unknown or "weight" not in value:
                    raise ValueError(f"--mix {path}: source {name} takes {{weight, max_repeat}}, got {value!r}")
                weights[str(name)] = _number(value["weight"], f"--mix {path}: weight of {name}")
                if "max_repeat" in value:
                    caps[str(name)] = _number(value["max_repeat"], f"--mix {path}: max_repeat of {name}")
            else:
                weights[str(name)] = _number(value, f"--mix {path}: weight of {name}")
    else:
        raise ValueError(f"--mix {path}: `sources` must be a mapping or a list, got {type(entries).__name__}")
    return _check(weights, caps, default, str(path))


def parse_mix(text: str, default_max_repeat: float | None = None) -> MixRequest:
    """--mix: a YAML file (path ending in .yaml / .yml, or an existing file), else inline "a=0.5,b=0.3"."""
    path = Path(text)
    if text.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ValueError(f"--mix {text}: no such file")
        return parse_mix_file(path, default_max_repeat)
    return parse_mix_text(text, default_max_repeat)


# ------------------------------------------------------------------------------------------------------------ pools
@dataclass(frozen=True)
class SourcePool:
    """The units of one source: `spans` = (build index, first unit, n units) per shard, in manifest order."""

    source: str
    build: str  # the build directory it comes from
    spans: tuple[tuple[int, int, int], ...]
    n_pad_units: int  # upper bound on units of padding only (Σ per shard of n_pad // seq_len; exact for concat)

    @property
    def n_units(self) -> int:
        return sum(n for _, _, n in self.spans)

    @property
    def n_rows_usable(self) -> int:
        """Units that hold tokens (a lower bound when padding is spread over rows, exact for concat builds)."""
        return self.n_units - self.n_pad_units


def shard_sources(build: str | Path) -> list[str | None]:
    """The source of every shard of a build (manifest order), None for a shard that holds several sources: the
    manifest's `shard_sources` (tokens per shard and source), as its view `source_shards` reads it."""
    from pipelines.shards.reader import connect

    con = connect(build)
    try:
        tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
        if "shard_sources" not in tables:
            raise ValueError(f"{build}: the manifest has no shard_sources table, so the sources of its rows are "
                             "unknown")
        rows = con.execute("select s.path, any_value(x.source), count(x.source) from shards s left join "
                           "(select * from shard_sources where n_tokens > 0) x on x.shard = s.path "
                           "group by s.path order by s.path").fetchall()
        return [src if n == 1 else None for _, src, n in rows]
    finally:
        con.close()


def load_pools(builds: list[str], seq_len: int) -> tuple[list[PackedDataset], dict[str, SourcePool]]:
    """Open every build and group its shards into per-source pools; ValueError when a build mixes sources in a
    shard, when two builds hold the same source, or when builds do not share a tokenizer."""
    datasets = [PackedDataset(b, seq_len) for b in builds]
    _check_compatible(builds, datasets)
    pools: dict[str, SourcePool] = {}
    for b, (build, ds) in enumerate(zip(builds, datasets)):
        sources = shard_sources(build)
        mixed = [path for (path, _), src in zip(ds.info.shards, sources) if src is None]
        if mixed:
            raise ValueError(f"{build}: shard {mixed[0]} mixes sources ({len(mixed)} such shards), so its rows cannot "
                             "be mixed by source; rebuild with `build-mixture --by-source` (or spec packing: "
                             "{mode: concat, by_source: true})")
        spans: dict[str, list[tuple[int, int, int]]] = {}
        pad_units: dict[str, int] = {}
        n_pad = ds.info.shard_n_pad or (None,) * len(ds.info.shards)
        for k, ((_, n_rows), src, pad) in enumerate(zip(ds.info.shards, sources, n_pad)):
            first = int(ds.row_offset[k]) * ds.chunks_per_row
            spans.setdefault(src, []).append((b, first, n_rows * ds.chunks_per_row))
            # without n_pad, assume the worst: every unit could be padding (the draws skip the ones that are)
            pad_units[src] = pad_units.get(src, 0) + (n_rows * ds.chunks_per_row if pad is None else pad // seq_len)
        for src, sp in spans.items():
            if src in pools:
                raise ValueError(f"source {src} is in two builds ({pools[src].build} and {build}); give each source "
                                 "once")
            pools[src] = SourcePool(src, str(build), tuple(sp), pad_units[src])
    return datasets, pools


def _check_compatible(builds: list[str], datasets: list[PackedDataset]) -> None:
    first = datasets[0].info
    for build, ds in zip(builds[1:], datasets[1:]):
        for what in ("eos_id", "pad_id"):
            if getattr(ds.info, what) != getattr(first, what):
                raise ValueError(f"--data {build} has {what} {getattr(ds.info, what)} but {builds[0]} has "
                                 f"{getattr(first, what)}: builds mixed in one run must share a tokenizer")
    tokenizers = {build: _tokenizer_of(build) for build in builds}
    if len(set(tokenizers.values())) > 1:
        raise ValueError("builds mixed in one run must share a tokenizer: "
                         + ", ".join(f"{b}: {t}" for b, t in tokenizers.items()))


def _tokenizer_of(build: str) -> str:
    from pipelines.shards.reader import connect

    con = connect(build)
    try:
        cols = {r[0] for r in con.execute("select column_name from information_schema.columns "
                                          "where table_name = 'build'").fetchall()}
        col = "tokenizer_sha256" if "tokenizer_sha256" in cols else "tokenizer"
        return str(con.execute(f"select {col} from build").fetchone()[0])
    finally:
        con.close()


def total_rows(builds: list[str]) -> int:
    """Rows of all builds (one epoch of a mixed run = this many rows, for `--epochs`)."""
    return sum(n for b in builds for _, n in read_build(b).shards)


# ------------------------------------------------------------------------------------------------------------- plan
def largest_remainder(total: int, weights: list[float]) -> list[int]:
    """Integers proportional to `weights` adding up to `total`: floors, then +1 to the largest remainders (ties:
    earlier first). Each differs from its exact quota by less than 1."""
    s = sum(weights)
    quotas = [total * w / s for w in weights]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:total - sum(counts)]:
        counts[i] += 1
    return counts


@dataclass(frozen=True)
class MixPlan:
    """Units per source for a run of `total_units` units (sources in name order)."""

    sources: tuple[str, ...]
    weights: tuple[float, ...]  # normalised
    requested: tuple[float, ...]  # as given
    counts: tuple[int, ...]
    pool_units: tuple[int, ...]  # usable units of each pool
    max_repeat: tuple[float, ...]
    builds: tuple[str, ...]
    total_units: int
    seq_len: int

    @property
    def repeats(self) -> tuple[float, ...]:
        return tuple(c / p if p else math.inf for c, p in zip(self.counts, self.pool_units))

    def to_dict(self) -> dict:
        return {"total_units": self.total_units, "seq_len": self.seq_len, "sources": {
            s: {"build": b, "requested_weight": r, "weight": w, "max_repeat": m, "pool_units": p,
                "planned_units": c, "planned_repeats": rep}
            for s, b, r, w, m, p, c, rep in zip(self.sources, self.builds, self.requested, self.weights,
                                                self.max_repeat, self.pool_units, self.counts, self.repeats)}}


def plan_mix(pools: dict[str, SourcePool], request: MixRequest, total_units: int, seq_len: int) -> MixPlan:
    """Counts per source by largest remainder; ValueError for an unknown source or one too small for its weight."""
    unknown = sorted(set(request.weights) - set(pools))
    if unknown:
        raise ValueError(f"--mix names source(s) not in the --data builds: {', '.join(unknown)} "
                         f"(available: {', '.join(sorted(pools))})")
    names = tuple(sorted(s for s, w in request.weights.items() if w > 0))
    requested = tuple(request.weights[s] for s in names)
    total_w = sum(requested)
    counts = largest_remainder(total_units, list(requested))
    pool_units = tuple(pools[s].n_rows_usable for s in names)
    caps = tuple(request.cap(s) for s in names)
    short = []
    for s, c, p, cap in zip(names, counts, pool_units, caps):
        need = c / p if p > 0 else math.inf
        if need > cap * (1 + 1e-12):
            short.append(f"{s} needs {c:,} rows of {seq_len} tokens but has {p:,} "
                         f"(repeat {need:.3g}x > max_repeat {cap:g})" if p else f"{s} has no rows")
    if short:
        need = max((c / p for c, p, cap in zip(counts, pool_units, caps) if p and c / p > cap), default=math.inf)
        fix = f"allow repeats with --max-repeat {math.ceil(need * 100) / 100:g} (or max_repeat per source in the " \
            "--mix file), " if math.isfinite(need) else ""
        raise ValueError("source too small for its weight: " + "; ".join(short) + f"; {fix}lower its weight or "
                         "train fewer tokens")
    return MixPlan(names, tuple(w / total_w for w in requested), requested, tuple(counts), pool_units, caps,
                   tuple(pools[s].build for s in names), total_units, seq_len)


# ----------------------------------------------------------------------------------------------------------- loader
def _source_key(name: str, epoch: int) -> int:
    """A stable 63-bit key per (source, epoch): the `epoch` argument of that source's unit permutation."""
    return int.from_bytes(hashlib.sha256(f"{name}\0{epoch}".encode()).digest()[:8], "little") >> 1


class MixedLoader:
    """StepLoader's interface over several pools: each step's units are drawn by the plan (module docstring)."""

    def __init__(self, datasets: list[PackedDataset], pools: dict[str, SourcePool], plan: MixPlan, seed: int,
                 rank: int, world: int, micro_batch: int, grad_accum: int, positions: str = "document",
                 attention: str = "document") -> None:
        self.datasets, self.plan, self.seed = datasets, plan, seed
        self.pools = [pools[s] for s in plan.sources]
        self.rank, self.world, self.micro_batch, self.grad_accum = rank, world, micro_batch, grad_accum
        self.positions, self.attention = positions, attention
        self.slot_bounds = np.concatenate([[0], np.cumsum(plan.counts)]).astype(np.int64)
        self._span_first = [np.concatenate([[0], np.cumsum([n for _, _, n in p.spans])]) for p in self.pools]
        self.cursor = 0
        n = len(plan.sources)
        self.draws = [0] * n  # draws taken from each pool (incl. skipped padding units)
        self.units = [0] * n  # units trained on, per source
        self.tokens = [0] * n  # real (non-padding) tokens of those units
        self._perm_cache: dict[tuple[int, int], UnitPermutation] = {}

    @property
    def units_per_step(self) -> int:
        return self.world * self.grad_accum * self.micro_batch

    @property
    def n_units(self) -> int:
        return sum(p.n_units for p in self.pools)

    def _perm(self, key: tuple[int, int], n: int, seed_epoch: int) -> UnitPermutation:
        perm = self._perm_cache.get(key)
        if perm is None:
            if len(self._perm_cache) > 4 * (len(self.pools) + 1):
                self._perm_cache.clear()
            perm = self._perm_cache[key] = UnitPermutation(n, self.seed, seed_epoch)
        return perm

    def _sources_at(self, lo: int, hi: int) -> np.ndarray:
        """The source index filling positions [lo, hi) of the stream."""
        n = self.plan.total_units
        out = np.empty(hi - lo, dtype=np.int64)
        pos = np.arange(lo, hi, dtype=np.int64)
        for rnd in np.unique(pos // n).tolist():
            sel = pos // n == rnd
            slots = self._perm((-1, rnd), n, rnd)(pos[sel] % n)
            out[sel] = np.searchsorted(self.slot_bounds, slots, side="right") - 1
        return out

    def _units(self, s: int, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dataset index, unit) of the given draws from pool s."""
        pool = self.pools[s]
        n = pool.n_units
        epochs, within = np.divmod(draws, n)
        slots = np.empty(len(draws), dtype=np.int64)
        for epoch in np.unique(epochs).tolist():
            sel = epochs == epoch
            slots[sel] = self._perm((s, epoch), n, _source_key(pool.source, epoch))(within[sel])
        span = np.searchsorted(self._span_first[s], slots, side="right") - 1
        spans = np.asarray(pool.spans, dtype=np.int64)
        return spans[span, 0], spans[span, 1] + slots - self._span_first[s][span]

    def _draw(self, s: int, m: int) -> list[tuple[int, int]]:
        """The next m units of pool s that are not padding only (the draws skip those)."""
        pool, out, skipped = self.pools[s], [], 0
        while len(out) < m:
            want = m - len(out)
            draws = self.draws[s] + np.arange(want, dtype=np.int64)
            for b, u in zip(*(x.tolist() for x in self._units(s, draws))):
                self.draws[s] += 1
                if self.datasets[b].is_padding(u):
                    skipped += 1
                    if skipped >= pool.n_units:
                        raise ValueError(f"source {pool.source}: every unit is padding, nothing to train on")
                    continue
                out.append((b, u))
                if len(out) == m:
                    break
        return out

    def _take(self, n: int) -> list[tuple[int, int]]:
        """The next n (dataset, unit) of the global stream (the same on every rank), counted per source: the
        positions of source s get its next draws in stream order."""
        sources = self._sources_at(self.cursor, self.cursor + n)
        out: list[tuple[int, int]] = [(0, 0)] * n
        for s in np.unique(sources).tolist():
            where = np.nonzero(sources == s)[0].tolist()
            for i, (b, u) in zip(where, self._draw(s, len(where))):
                out[i] = (b, u)
                self.units[s] += 1
                self.tokens[s] += self.datasets[b].real_tokens(u)
        self.cursor += n
        return out

    def next_step(self):
        units = self._take(self.units_per_step)
        per_rank = self.grad_accum * self.micro_batch
        mine = units[self.rank * per_rank:(self.rank + 1) * per_rank]
        batches = [collate([self.datasets[b][u] for b, u in mine[i:i + self.micro_batch]], self.positions,
                           self.attention) for i in range(0, per_rank, self.micro_batch)]
        return sorted(batches, key=lambda x: x.attn_cost, reverse=True)

    def state_dict(self) -> dict:
        return {"order": MIX_ORDER, "cursor": self.cursor, "seed": self.seed, "units_per_step": self.units_per_step,
                "sources": list(self.plan.sources), "counts": list(self.plan.counts), "draws": list(self.draws),
                "units": list(self.units), "tokens": list(self.tokens)}

    def load_state_dict(self, state: dict) -> None:
        if list(state["sources"]) != list(self.plan.sources):
            raise ValueError(f"the checkpoint mixed sources {state['sources']}, this run mixes "
                             f"{list(self.plan.sources)}; resume with the same --mix")
        if list(state["counts"]) != list(self.plan.counts):
            warnings.warn("resuming with another mixture plan (weights or run length changed): positions after the "
                          "checkpoint follow the new plan", stacklevel=2)
        self.cursor, self.seed = int(state["cursor"]), int(state["seed"])
        self.draws, self.units, self.tokens = (list(map(int, state[k])) for k in ("draws", "units", "tokens"))
        self._perm_cache.clear()

    def report(self, step: int) -> dict:
        """mixture.json: the plan, and per source what was trained on so far."""
        out = self.plan.to_dict()
        total = sum(self.tokens)
        out.update({"step": step, "seed": self.seed, "units_per_step": self.units_per_step,
                    "realized_tokens": total})
        for i, (s, pool) in enumerate(zip(self.plan.sources, self.pools)):
            out["sources"][s].update({
                "realized_units": self.units[i], "realized_tokens": self.tokens[i],
                "realized_share": self.tokens[i] / total if total else 0.0,
                "epochs": self.draws[i] / pool.n_units})
        return out

    def write_report(self, path: str | Path, step: int) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.report(step), indent=2))
        tmp.replace(path)


# -------------------------------------------------------------------------------------------------------- wiring
def mix_builds(cfg) -> list[str]:
    """The builds of a run: --data, plus the further --data of a mixed run."""
    return list(cfg.mix.get("builds", [cfg.data])) if cfg.mix else [cfg.data]


def plan_for_run(cfg, settings) -> tuple[list[PackedDataset], dict[str, SourcePool], MixPlan]:
    """Pools and plan of a mixed run (`cfg.mix`) with resolved `settings`; ValueError when it cannot run."""
    request = MixRequest.from_dict(cfg.mix["request"])
    datasets, pools = load_pools(mix_builds(cfg), settings.seq_len)
    units_per_step = settings.data_world * settings.grad_accum * settings.micro_batch
    return datasets, pools, plan_mix(pools, request, settings.steps * units_per_step, settings.seq_len)


def load_data_position(loader, state: dict, where: str) -> None:
    """Resume the loader at a checkpoint's data position; CheckpointError when the checkpoint was (or was not) a
    mixed run and this one is not (is)."""
    from trainer.checkpoint import CheckpointError

    mixed_ckpt = state.get("order") == MIX_ORDER
    if mixed_ckpt != isinstance(loader, MixedLoader):
        raise CheckpointError(f"{where}: its data position is from a run {'with' if mixed_ckpt else 'without'} "
                              f"--mix; resume it {'with the same --mix' if mixed_ckpt else 'without --mix'}")
    try:
        loader.load_state_dict(state)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None


def make_loader(cfg, settings, seq_len: int, rank: int, world: int):
    """The run's loader: StepLoader over --data exactly as without mixing, or a MixedLoader with --mix."""
    if not cfg.mix:
        return StepLoader(PackedDataset(cfg.data, seq_len), cfg.seed, rank, world, settings.micro_batch,
                          settings.grad_accum, settings.positions, settings.attention)
    datasets, pools, plan = plan_for_run(cfg, settings)
    return MixedLoader(datasets, pools, plan, cfg.seed, rank, world, settings.micro_batch, settings.grad_accum,
                       settings.positions, settings.attention)
