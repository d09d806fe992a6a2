"""Symbolic mode: abstraction -> constrained resampling -> rewrite -> checks, for every train problem, no model.

Each problem gets its own random stream seeded by (seed, source_index), so the output depends only on the seed and
the input, never on the number of workers or the order they finish in.
"""
from __future__ import annotations

import multiprocessing as mp
import random
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .binding import Rejected
from .decontam import NgramIndex
from .io import ShardWriter, load_rows
from .parse import AnnotationError, check_solution
from .program import abstract
from .report import Report, TokenCounter
from .rewrite import param_values_json, render
from .sample import Sampler, violation

MAX_STALL = 200  # consecutive repeated draws after which a problem's value space counts as used up


@dataclass(frozen=True)
class SymbolicConfig:
    variants: int = 25  # per problem; the default reaches Instella's ~28.5M tokens (see report.json)
    seed: int = 0
    spread: float = 2.0  # new values within [x/spread, x*spread]
    attempts_per_variant: int = 20  # draws allowed per wanted variant before giving up on the problem
    workers: int = 1


@dataclass
class ProblemOutcome:
    source_index: int
    records: list[dict] = field(default_factory=list)
    rejected: str | None = None  # why the problem could not be abstracted
    variant_rejects: Counter = field(default_factory=Counter)
    n_free_params: int = 0
    ties: int = 0
    short_of_target: int = 0  # variants asked for but not found (value space used up or attempt budget spent)


@dataclass
class Context:
    """What every worker needs besides the problem: the checks against train and test."""

    config: SymbolicConfig
    train_questions: frozenset[str]
    test_index: NgramIndex | None


def _norm(q: str) -> str:
    return " ".join(q.split())


def synthesize_problem(index: int, question: str, answer: str, ctx: Context) -> ProblemOutcome:
    out = ProblemOutcome(index)
    try:
        program = abstract(index, question, answer)
    except Rejected as e:
        out.rejected = e.reason
        return out
    out.n_free_params = len(program.free_params)
    out.ties = len(program.ties) + len(program.derived)
    cfg = ctx.config
    sampler = Sampler(program, random.Random(f"{cfg.seed}:{index}"), cfg.spread)
    original = sampler.original
    seen_questions = {_norm(question)}
    seen_draws: set[tuple] = {tuple(sorted(original.items()))}
    budget = cfg.variants * cfg.attempts_per_variant
    stall = 0  # consecutive draws already seen: the value space is used up
    for _ in range(budget):
        if len(out.records) >= cfg.variants or stall >= MAX_STALL:
            break
        draw = sampler.draw()
        key = tuple(sorted(draw.items()))
        if key in seen_draws:
            stall += 1
            out.variant_rejects["values already drawn"] += 1
            continue
        stall = 0
        seen_draws.add(key)
        try:
            values, results = program.solve(draw)
        except AnnotationError:
            out.variant_rejects["division by zero"] += 1
            continue
        reason = violation(program, values, results)
        if reason is None:
            try:
                q, a = render(program, values, results)
            except ValueError:
                reason = "number without a finite decimal form"
        if reason is None:
            qkey = _norm(q)
            if qkey in seen_questions:
                reason = "duplicate question"
            elif qkey in ctx.train_questions:
                reason = "equals a train question"
            elif not check_solution(a).ok:
                reason = "solution fails the re-check"  # never expected; counted so it would show
            elif ctx.test_index is not None and ctx.test_index.overlaps(q + "\n" + a):
                reason = "13-gram overlap with GSM8K test"
        if reason is not None:
            out.variant_rejects[reason] += 1
            continue
        seen_questions.add(qkey)
        k = len(out.records)
        out.records.append({
            "id": f"gsm8k-synth-{index}-{k}",
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "source_index": index,
            "params": param_values_json(program, values),
            "original_params": param_values_json(program, original),
            "mode": "symbolic",
        })
    if len(out.records) < cfg.variants:
        out.short_of_target = cfg.variants - len(out.records)
    return out


_CTX: Context | None = None


def _init_worker(ctx: Context) -> None:
    global _CTX
    _CTX = ctx


def _work(job: tuple[int, str, str]) -> ProblemOutcome:
    assert _CTX is not None
    return synthesize_problem(*job, _CTX)


def synthesize(jobs: Iterable[tuple[int, str, str]], ctx: Context) -> Iterator[ProblemOutcome]:
    """Outcomes in input order, computed by `ctx.config.workers` processes."""
    if ctx.config.workers <= 1:
        for job in jobs:
            yield synthesize_problem(*job, ctx)
        return
    with mp.get_context("fork").Pool(ctx.config.workers, initializer=_init_worker, initargs=(ctx,)) as pool:
        yield from pool.imap(_work, jobs, chunksize=16)


def run_symbolic(input_path: str | Path, out_dir: str | Path, config: SymbolicConfig,
                 test_path: str | Path | None = None, tokenizer_path: str | Path | None = None,
                 limit: int | None = None) -> dict:
    """Synthesize from a GSM8K train file into `out_dir` (shards + report.json); returns the report."""
    start = time.perf_counter()
    rows, skips = load_rows(input_path, limit)
    test_index = NgramIndex.from_gsm8k(test_path) if test_path else None
    ctx = Context(config, frozenset(_norm(r.question) for r in rows), test_index)
    report = Report("symbolic", str(input_path), asdict(config), rows=len(rows) + len(skips),
                    skipped_rows=[{"line": s.line, "reason": s.reason} for s in skips])
    writer = ShardWriter(out_dir)
    tokens = TokenCounter(tokenizer_path)
    free_params = ties = short = 0
    for outcome in synthesize(((r.index, r.question, r.answer) for r in rows), ctx):
        if outcome.rejected:
            report.problem_rejections[outcome.rejected] += 1
            continue
        report.abstracted += 1
        free_params += outcome.n_free_params
        ties += outcome.ties > 0
        report.with_variants += bool(outcome.records)
        report.variants += len(outcome.records)
        report.variant_rejections.update(outcome.variant_rejects)
        short += outcome.short_of_target > 0
        writer.write(outcome.records)
        tokens.add(outcome.records)
    tokens.flush()
    shards = writer.close()
    report.tokens = tokens.total if tokens.tokenizer is not None else None
    report.seconds = time.perf_counter() - start
    report.extra = {
        "shards": [p.name for p in shards],
        "mean_free_params": round(free_params / max(1, report.abstracted), 2),
        "problems_with_ties": ties,
        "problems_short_of_variants": short,
        "test_decontamination": str(test_path) if test_path else None,
    }
    return report.write(Path(out_dir) / "report.json")
