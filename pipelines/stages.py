"""What a build runs: an ordered list of stages, each a datatrove pipeline with a task count.

A stage is data only; `pipelines.build.executors` turns the list into chained datatrove executors (local, Slurm, Ray),
each stage depending on the one before. `kind` says which resources a stage gets from `--executor-opt`: the
per-file stage (many small tasks) and the global stages (few tasks over all documents) are sized separately.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
