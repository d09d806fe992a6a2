"""What a build runs: an ordered list of stages, each a datatrove pipeline with a task count.

A stage is data only; `pipelines.build.executors` turns the list into chained datatrove executors (local, Slurm, Ray),
each stage depending on the one before. `kind` says which resources a stage gets from `--executor-opt`: the
per-file stage (many small tasks) and the global stages (few tasks over all documents) are sized separately.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

StageKind = Literal["per-file", "global"]


@dataclass
class Stage:
    name: str  # short identifier: log folder `logs/<name>`, job name `<mixture>-<name>`
    pipeline: list[PipelineStep]
    tasks: int
    kind: StageKind = "global"
    description: str = ""  # one line for progress bars and the dry-run
    # rough per-task needs for the dry-run and for sizing cluster jobs (0 = unknown)
    memory_bytes: int = 0
    disk_bytes: int = 0
    # local executor: run the tasks one after another in this process. For the global stages of a small build,
    # where starting a pool of workers (~0.5 s: datatrove's forkserver) costs more than the tasks themselves
    in_process: bool = False
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ per-step timing
_charged = [0.0]  # seconds of this process already attributed to some timed step (a nested step's time is its own)


def _exclusive(call, stats) -> Iterator:
    """Run `call()` (a step's `run`) and iterate its output, adding to `stats` (a datatrove TimingStats) the time
    spent inside this step only: the time of the steps it pulls documents from is charged to them. datatrove chains
    steps as nested generators, so a step's own time is its elapsed time minus what steps nested in it charged."""
    clock = time.perf_counter
    t0, c0 = clock(), _charged[0]
    it = iter(call() or ())
    while True:
        try:
            item = next(it)
        except StopIteration:
            item = _DONE
        elapsed = clock() - t0
        stats.update(elapsed - (_charged[0] - c0))
        _charged[0] = c0 + elapsed
        if item is _DONE:
            return
        yield item
        t0, c0 = clock(), _charged[0]


_DONE = object()


class TimedStep(PipelineStep):
    """A step whose own time goes to its datatrove `time_stats` (the `stats/NNNNN.json` of every task, merged into
    the stage's `stats.json`): the time per step of every stage, without each step timing itself. Transparent
    otherwise: same name, type and stats object as the step it wraps."""

    def __init__(self, step: PipelineStep):
        super().__init__()
        self.step = step
        self.stats = step.stats
        self.name, self.type = step.name, step.type

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        return _exclusive(lambda: self.step.run(data, rank, world_size), self.stats.time_stats)


def timed(pipeline: list) -> list:
    """The pipeline with every PipelineStep timed (datatrove also takes plain callables and data: left as they are)."""
    return [TimedStep(s) if isinstance(s, PipelineStep) and not isinstance(s, TimedStep) else s for s in pipeline]


@contextmanager
def part_time(step: PipelineStep, part: str):
    """Add the time of a block to the `seconds:<part>` stat of `step`: one step's time split into its parts (the
    build-throughput bench prints them under the step)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        step.stat_update(f"seconds:{part}", value=time.perf_counter() - t0, unit="batch")
