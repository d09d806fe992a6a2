"""Run a build's stages on a datatrove executor: local processes, Slurm or Ray. Never a scheduler of our own.

Each stage becomes one executor that depends on the previous stage's executor; `skip_completed` makes a killed
build resume (datatrove's completion markers). Local runs execute the stages in order in this process.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from pipelines.stages import Stage


@dataclass
class ExecutorOptions:
    kind: str = "local"  # local | slurm | ray
    workers: int = 1
    options: dict = field(default_factory=dict)  # --executor-opt KEY=VALUE
    job_prefix: str = "midtrain"


def make_executor(stage: Stage, opts: ExecutorOptions, logging_dir: str, depends=None):
    """One datatrove executor for `stage`."""
    # per-file tasks resume from datatrove's completion markers; global stages always rerun in full (their inputs
    # include options outside the stage-A cache key, e.g. --max-tokens and --exclude)
    skip_completed = stage.kind == "per-file"
    if opts.kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline=stage.pipeline, tasks=stage.tasks,
                                     workers=max(1, min(opts.workers, stage.tasks)), logging_dir=logging_dir,
                                     depends=depends, skip_completed=skip_completed)
    if opts.kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        o = dict(opts.options)
        return SlurmPipelineExecutor(pipeline=stage.pipeline, tasks=stage.tasks, time=o.pop("time", "24:00:00"),
                                     partition=o.pop("partition", "cpu"),
                                     workers=opts.workers if opts.workers > 1 else -1, logging_dir=logging_dir,
                                     job_name=f"{opts.job_prefix}-{stage.name}", depends=depends,
                                     skip_completed=skip_completed, **o)
    if opts.kind == "ray":
        from datatrove.executor.ray import RayPipelineExecutor

        return RayPipelineExecutor(pipeline=stage.pipeline, tasks=stage.tasks, workers=opts.workers,
                                   logging_dir=logging_dir, depends=depends, skip_completed=skip_completed,
                                   **opts.options)
    raise ValueError(f"unknown executor {opts.kind!r}; use local, slurm or ray")


def make_executors(stages: list[Stage], opts: ExecutorOptions, logs_root: str) -> list:
    """Chained executors, one per stage, stage i depending on stage i-1."""
    executors: list = []
    for stage in stages:
        executors.append(make_executor(stage, opts, os.path.join(logs_root, stage.name),
                                       depends=executors[-1] if executors else None))
    return executors


def _run_with_progress(executor, n_tasks: int, completions_dir: str, label: str) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    error: list[BaseException] = []

    def target():
        try:
            executor.run()
        except BaseException as e:  # re-raised in the caller's thread
            error.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as progress:
        bar = progress.add_task(label, total=n_tasks)
        while thread.is_alive():
            done = len(os.listdir(completions_dir)) if os.path.isdir(completions_dir) else 0
            progress.update(bar, completed=done)
            thread.join(0.2)
        done = len(os.listdir(completions_dir)) if os.path.isdir(completions_dir) else 0
        progress.update(bar, completed=done)
    if error:
        raise error[0]


def run_stages(stages: list[Stage], opts: ExecutorOptions, logs_root: str, progress: bool = True) -> None:
    """Run (local) or submit (slurm/ray) every stage in order."""
    executors = make_executors(stages, opts, logs_root)
    if opts.kind != "local":
        executors[-1].run()  # datatrove submits the dependencies first
        return
    for stage, executor in zip(stages, executors):
        if progress and stage.tasks > 1:
            _run_with_progress(executor, stage.tasks, os.path.join(logs_root, stage.name, "completions"),
                               stage.description or stage.name)
        else:
            executor.run()
