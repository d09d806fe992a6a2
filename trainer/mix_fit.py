"""Mixture -> metric regression for `mix-search` (RegMix / data-mixing-law style), numpy only.

Models, fitted per metric on the K candidate anneals (weights W [K, S] on the simplex, metric y [K]):
- linear:    y = b0 + Σ b_s w_s                      (RegMix's linear baseline)
- loglinear: y = exp(b0 + Σ b_s w_s)                 (data mixing laws, Ye et al. 2024: loss ~ c + k·exp(t·w);
                                                      fitted as a linear model of log y, so only for y > 0)
- lightgbm:  gradient-boosted trees (RegMix), only when LightGBM is installed and there are >= 10 candidates.
All use a small ridge penalty: a swarm usually has fewer candidates than sources. Each model is scored by the
leave-one-out Spearman correlation between its held-out predictions and the realized values (the ranking is what a
mixture search needs); a metric is predicted with its best-scoring model (linear on ties).

The proposal minimises the predicted target over a search set drawn from the same Dirichlet as the candidates (it
stays where the swarm measured) and averages the best `top` of them, as RegMix does.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

KINDS = ("linear", "loglinear", "lightgbm")
_WEIGHTED = re.compile(r"^([+-]?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)\s*\*\s*(.+)$")  # "0.5*bpb:*"


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties averaged (scipy.stats.rankdata's default)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation; nan when either side is constant or there are fewer than 3 points."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 3:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass
class Model:
    kind: str
    intercept: float = 0.0
    coef: list[float] = field(default_factory=list)
    booster: object = None  # lightgbm only

    def predict(self, W: np.ndarray) -> np.ndarray:
        if self.kind == "lightgbm":
            return np.asarray(self.booster.predict(W), dtype=float)
        z = self.intercept + np.asarray(W, dtype=float) @ np.asarray(self.coef)
        return np.exp(z) if self.kind == "loglinear" else z

    def to_dict(self, sources: list[str]) -> dict:
        if self.kind == "lightgbm":
            return {"kind": self.kind}
        return {"kind": self.kind, "intercept": self.intercept, "coef": dict(zip(sources, self.coef))}


def ridge(X: np.ndarray, y: np.ndarray, alpha: float) -> tuple[float, np.ndarray]:
    """(intercept, coefficients) of ridge regression with an unpenalised intercept."""
    xm, ym = X.mean(0), y.mean()
    Xc = X - xm
    p = X.shape[1]
    b = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(p), Xc.T @ (y - ym))
    return float(ym - xm @ b), b


def fit_one(kind: str, W: np.ndarray, y: np.ndarray, alpha: float) -> Model:
    if kind == "linear":
        b0, b = ridge(W, y, alpha)
        return Model(kind, b0, b.tolist())
    if kind == "loglinear":
        b0, b = ridge(W, np.log(y), alpha)
        return Model(kind, b0, b.tolist())
    if kind == "lightgbm":
        import lightgbm

        booster = lightgbm.LGBMRegressor(n_estimators=200, learning_rate=0.05, min_child_samples=2, verbose=-1)
        booster.fit(W, y)
        return Model(kind, booster=booster)
    raise ValueError(f"unknown model kind {kind!r}")


def available_kinds(y: np.ndarray, n: int) -> list[str]:
    kinds = ["linear"]
    if np.all(np.asarray(y) > 0):
        kinds.append("loglinear")
    if n >= 10:
        try:
            import lightgbm  # noqa: F401

            kinds.append("lightgbm")
        except ImportError:
            pass
    return kinds


def loo_predictions(kind: str, W: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Leave-one-out predictions: each candidate predicted by the model fitted on the others."""
    out = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        out[i] = fit_one(kind, W[keep], y[keep], alpha).predict(W[i:i + 1])[0]
    return out


@dataclass
class MetricFit:
    metric: str
    model: Model  # the chosen model, fitted on every candidate
    cv_spearman: dict[str, float]  # per kind: leave-one-out Spearman
    loo: list[float]  # the chosen kind's leave-one-out predictions, per candidate


def fit_metric(metric: str, W: np.ndarray, y: np.ndarray, alpha: float = 1e-4) -> MetricFit:
    """Fit every available model kind, keep the one with the best leave-one-out Spearman (linear on ties)."""
    W, y = np.asarray(W, dtype=float), np.asarray(y, dtype=float)
    scores, loos = {}, {}
    for kind in available_kinds(y, len(y)):
        loos[kind] = loo_predictions(kind, W, y, alpha) if len(y) >= 3 else np.full(len(y), np.nan)
        scores[kind] = spearman(loos[kind], y)
    best = max(scores, key=lambda k: (-math.inf if math.isnan(scores[k]) else scores[k], k == "linear"))
    return MetricFit(metric, fit_one(best, W, y, alpha), scores, loos[best].tolist())


# ------------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """A weighted sum of metric groups to minimise: terms (weight, glob pattern); a pattern's value is the mean of
    the metrics it matches. "bpb:dolmino-math-*"; "bpb:*" (mean held-out bpb); "0.5*bpb:*,-1*arc_easy:acc_norm"."""

    terms: tuple[tuple[float, str], ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> "Target":
        terms = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            m = _WEIGHTED.match(part)
            weight, pattern = (float(m.group(1)), m.group(2)) if m else (1.0, part)
            terms.append((weight, pattern.strip()))
        if not terms:
            raise ValueError(f"--target {text!r}: no terms (e.g. 'bpb:dolmino-math-*' or '0.5*bpb:*,-1*arc_easy:acc')")
        return cls(tuple(terms), text)

    def matches(self, metrics: list[str]) -> dict[str, list[str]]:
        from fnmatch import fnmatchcase

        out = {}
        for _, pattern in self.terms:
            found = sorted(m for m in metrics if fnmatchcase(m, pattern))
            if not found:
                raise ValueError(f"--target: {pattern!r} matches no metric (have: {', '.join(sorted(metrics))})")
            out[pattern] = found
        return out

    def value(self, metrics: dict[str, np.ndarray | float]) -> np.ndarray | float:
        groups = self.matches(list(metrics))
        total = 0.0
        for weight, pattern in self.terms:
            total = total + weight * sum(metrics[m] for m in groups[pattern]) / len(groups[pattern])
        return total


# ------------------------------------------------------------------------------------------------ sampling


def dirichlet_mixtures(base: np.ndarray, k: int, concentration: float, rng: np.random.Generator) -> np.ndarray:
    """k mixtures from Dirichlet(concentration · base): centred on `base`, spread shrinking as concentration grows.
    A floor keeps every α positive so a small source still varies."""
    alpha = np.maximum(concentration * np.asarray(base, dtype=float), 0.05)
    return rng.dirichlet(alpha, size=k)


@dataclass
class Proposal:
    weights: np.ndarray
    predicted: dict[str, float]  # metric -> predicted value at the proposal
    predicted_target: float


def propose(fits: dict[str, MetricFit], target: Target, base: np.ndarray, concentration: float, seed: int,
            n_search: int = 20_000, top: int = 100) -> Proposal:
    """Average of the `top` search mixtures with the lowest predicted target (RegMix), searched over the same
    Dirichlet the candidates came from."""
    rng = np.random.default_rng(seed + 7919)
    search = dirichlet_mixtures(base, n_search, concentration, rng)
    needed = sorted({m for ms in target.matches(list(fits)).values() for m in ms})
    pred = {m: fits[m].model.predict(search) for m in needed}
    score = np.asarray(target.value(pred))
    best = np.argsort(score, kind="stable")[:top]
    weights = search[best].mean(0)
    weights = weights / weights.sum()
    at = {m: float(fits[m].model.predict(weights[None])[0]) for m in fits}
    return Proposal(weights, at, float(target.value({m: at[m] for m in needed})))


def fit_report(fits: dict[str, MetricFit], sources: list[str]) -> dict:
    """fit.json: per metric the chosen model (coefficients per source) and the cross-validated Spearman per kind."""
    return {m: {"model": f.model.to_dict(sources), "cv_spearman": f.cv_spearman,
                "loo_predictions": f.loo} for m, f in fits.items()}

