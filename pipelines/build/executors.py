"""Run a build's stages on a datatrove executor: local processes, Slurm or Ray. Never a scheduler of our own.

Each stage becomes one executor that depends on the previous stage's executor. Per-file stages resume from
datatrove's completion markers (a killed build redoes only unfinished files); global stages always rerun in full,
because their inputs include options outside the stage-A cache key (`--max-tokens`, `--exclude`).

Two datatrove behaviours are corrected here rather than worked around by users:
- Slurm: a stage with more tasks than the cluster's `max_array_size` is submitted as several job arrays. datatrove
  chains them (`afterany`, so a failed array does not stop the next) and the next stage waits only on the last one.
  `SlurmStageExecutor` submits the arrays side by side and makes the next stage wait `afterok` on all of them.
- Ray: when a task raises, datatrove's Ray executor only logs a warning, and a dependent stage then polls for the
  missing completion markers forever. `RayStageExecutor` raises `StageFailed` with the failed tasks' errors instead.
- Any failed task makes the build fail with that task's error (`StageFailed`), under every executor.

Resources: `--executor-opt KEY=VALUE` applies to every stage; `per-file.KEY=VALUE` / `global.KEY=VALUE` only to the
per-file stage or to the global stages (e.g. `global.mem_per_cpu_gb=8 global.cpus_per_task=4 per-file.time=02:00:00`).
"""
from __future__ import annotations

import os
import re
import shutil
import threading
from dataclasses import dataclass, field

from pipelines.errors import OptionError, StageFailed
from pipelines.stages import Stage

STAGE_KINDS = ("per-file", "global")
EXECUTOR_KINDS = ("local", "slurm", "ray")
# options our executors understand themselves (not passed to datatrove)
RAY_INIT_OPTIONS = ("address", "num_cpus")


class ExecutorOptionError(OptionError):
    """A bad `--executor` / `--executor-opt` value (the CLI turns it into exit code 2)."""


@dataclass
class ExecutorOptions:
    kind: str = "local"  # local | slurm | ray
    workers: int = 1
    options: dict = field(default_factory=dict)  # --executor-opt KEY=VALUE, keys optionally `per-file.` / `global.`
    job_prefix: str = "midtrain"

    def for_stage(self, kind: str) -> dict:
        """The options one stage gets: unprefixed ones, overridden by the ones prefixed with the stage's kind."""
        common = {k: v for k, v in self.options.items() if "." not in k}
        scoped = {k.split(".", 1)[1]: v for k, v in self.options.items() if k.startswith(f"{kind}.")}
        return {**common, **scoped}


def parse_executor_options(pairs: list[str]) -> dict:
    """`KEY=VALUE` strings into a dict (integers and floats converted); raises ExecutorOptionError on bad input."""
    out: dict = {}
    for kv in pairs:
        if "=" not in kv or not kv.split("=", 1)[0]:
            raise ExecutorOptionError(f"--executor-opt expects KEY=VALUE, got {kv!r}")
        key, value = kv.split("=", 1)
        if "." in key and key.split(".", 1)[0] not in STAGE_KINDS:
            raise ExecutorOptionError(f"--executor-opt {kv!r}: a scoped key starts with one of {STAGE_KINDS}")
        out[key] = _number(value)
    return out


def _number(value: str):
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    if re.fullmatch(r"-?\d+\.\d*", value):
        return float(value)
    return value


def _slurm_executor_class():
    from datatrove.executor import SlurmPipelineExecutor
    from datatrove.executor import slurm as slurm_module

    class SlurmStageExecutor(SlurmPipelineExecutor):
        """datatrove's Slurm executor with job arrays side by side and `afterok` on all of a dependency's arrays."""

        def __init__(self, *args, **kwargs):
            kwargs["max_array_launch_parallel"] = True  # arrays of one stage are independent
            super().__init__(*args, **kwargs)
            self.job_ids: list[str] = []

        def launch_job(self):
            if self.depends:
                dep = self.depends
                if not dep.job_id:
                    dep.launch_job()
                ids = [i for i in getattr(dep, "job_ids", None) or [dep.job_id] if i not in (None, -1)]
                # `afterok:1:2:3` waits for every array of the previous stage (datatrove would wait on the last)
                self.depends_job_id = ":".join(str(i) for i in ids) or None
                self.depends = None
            self.job_ids = []
            real_launch = slurm_module.launch_slurm_job

            def record(*args, **kwargs):
                job_id = real_launch(*args, **kwargs)
                if not self._in_merge_stats:
                    self.job_ids.append(job_id)
                return job_id

            slurm_module.launch_slurm_job = record
            try:
                super().launch_job()  # submits the arrays, then the merge-stats job
            finally:
                slurm_module.launch_slurm_job = real_launch

        _in_merge_stats = False

        def launch_merge_stats(self):
            # runs after every array of this stage, not only after the last one
            last, self.job_id = self.job_id, ":".join(str(i) for i in self.job_ids) or self.job_id
            self._in_merge_stats = True
            try:
                super().launch_merge_stats()
            finally:
                self.job_id, self._in_merge_stats = last, False

    return SlurmStageExecutor


def _ray_executor_class():
    from datatrove.executor.ray import RayPipelineExecutor

    class RayStageExecutor(RayPipelineExecutor):
        """datatrove's Ray executor that runs its dependency first and raises when any of its tasks failed."""

        def run(self):
            import ray

            if not ray.is_initialized():
                ray.init(**self.ray_init, include_dashboard=False, log_to_driver=False)
            if self.depends:
                self.depends.run()  # raises on failure, so this stage never waits for markers that will not come
                self.depends = None
            super().run()
            failed = self.get_incomplete_ranks(range(self.world_size), skip_completed=True)
            if failed:
                raise StageFailed(describe_failures(self, failed))

    return RayStageExecutor


def describe_failures(executor, ranks: list[int], limit: int = 3) -> str:
    """One line per failed task (the last error line of its log), for the first `limit` of them."""
    lines = [f"{len(ranks)} task(s) failed; logs in {executor.logging_dir.path}/logs"]
    for rank in ranks[:limit]:
        lines.append(f"task {rank}: {last_error_line(executor.logging_dir.path, rank)}")
    return "\n".join(lines)


def last_error_line(logging_dir: str, rank: int) -> str:
    path = os.path.join(logging_dir, "logs", f"task_{rank:05d}.log")
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return "(no log)"
    # datatrove logs the exception with its traceback; the last "SomethingError: message" line is the one to show
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Failed)\b.*:", line):
            return line
    return lines[-1] if lines else "(empty log)"


def make_executor(stage: Stage, opts: ExecutorOptions, logging_dir: str, depends=None):
    """One datatrove executor for `stage`."""
    skip_completed = stage.kind == "per-file"
    o = opts.for_stage(stage.kind)
    if opts.kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        unknown = sorted(set(o) - {"start_method"})
        if unknown:
            raise ExecutorOptionError(f"--executor-opt {unknown} apply to slurm/ray, not the local executor")
        # datatrove's default `forkserver`: `fork` saves ~0.5 s per stage but deadlocks when the calling process
        # already runs threads of polars or tokenizers (a second build in one Python session, a notebook)
        workers = 1 if stage.in_process else max(1, min(opts.workers, stage.tasks))
        return LocalPipelineExecutor(pipeline=stage.pipeline, tasks=stage.tasks, workers=workers, logging_dir=logging_dir,
                                     depends=depends, skip_completed=skip_completed, **o)
    if opts.kind == "slurm":
        cls = _slurm_executor_class()
        return cls(pipeline=stage.pipeline, tasks=stage.tasks, time=o.pop("time", "24:00:00"),
                   partition=o.pop("partition", "cpu"), workers=opts.workers if opts.workers > 1 else -1,
                   logging_dir=logging_dir, job_name=f"{opts.job_prefix}-{stage.name}", depends=depends,
                   skip_completed=skip_completed, **o)
    if opts.kind == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ExecutorOptionError("--executor ray needs Ray: pip install -e '.[ray]'") from None
        cls = _ray_executor_class()
        ray_init = {k: o.pop(k) for k in RAY_INIT_OPTIONS if k in o}
        if "address" not in ray_init:
            ray_init.setdefault("num_cpus", max(1, opts.workers))
        executor = cls(pipeline=stage.pipeline, tasks=stage.tasks, workers=opts.workers, logging_dir=logging_dir,
                       depends=depends, skip_completed=skip_completed, **o)
        executor.ray_init = ray_init
        return executor
    raise ExecutorOptionError(f"unknown executor {opts.kind!r}; use one of {', '.join(EXECUTOR_KINDS)}")


def make_executors(stages: list[Stage], opts: ExecutorOptions, logs_root: str) -> list:
    """Chained executors, one per stage, stage i depending on stage i-1."""
    executors: list = []
    for stage in stages:
        executors.append(make_executor(stage, opts, os.path.join(logs_root, stage.name),
                                       depends=executors[-1] if executors else None))
    return executors


def _run_with_progress(executor, n_tasks: int, completions_dir: str, label: str) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

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


def _forget_completions(stages: list[Stage], logs_root: str) -> None:
    """Global stages rerun in full: stale completion markers of an earlier run must not count as success."""
    for stage in stages:
        if stage.kind != "per-file":
            shutil.rmtree(os.path.join(logs_root, stage.name, "completions"), ignore_errors=True)


def run_stages(stages: list[Stage], opts: ExecutorOptions, logs_root: str, progress: bool = True) -> None:
    """Run (local, ray: blocking) or submit (slurm) every stage in order; a failed task raises `StageFailed`."""
    if not stages:
        return
    _forget_completions(stages, logs_root)
    executors = make_executors(stages, opts, logs_root)
    if opts.kind != "local":
        executors[-1].run()  # each executor runs (ray) or submits (slurm) its dependency first
        return
    for stage, executor in zip(stages, executors):
        if progress and stage.tasks > 1:
            _run_with_progress(executor, stage.tasks, os.path.join(logs_root, stage.name, "completions"),
                               stage.description or stage.name)
        else:
            executor.run()
        failed = executor.get_incomplete_ranks(range(stage.tasks), skip_completed=True)
        if failed:  # datatrove raised nothing but some task did not finish
            raise StageFailed(f"stage {stage.name}: " + describe_failures(executor, failed))
