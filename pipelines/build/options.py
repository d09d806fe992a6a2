"""`BuildOptions`: the command-line options of a build, checked once before any work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pipelines.build.executors import EXECUTOR_KINDS, parse_executor_options
from pipelines.build.lock import check_out_dir
from pipelines.errors import OptionError
from pipelines.read.remap import SourceMap


@dataclass
class BuildOptions:
    out: str
    source_root: str | None = None
    source_map: tuple[str, ...] = ()  # PREFIX=DIR items (pipelines/read/remap.py); source_root is hf://datasets/=DIR
    seed: int | None = None  # default: the spec's seed
    max_tokens: int | None = None
    workers: int = 1
    executor: str = "local"  # local | slurm | ray
    executor_options: dict = field(default_factory=dict)
    strict: bool = False
    exclude: tuple[str, ...] = ()  # other builds whose documents must not be reused
    progress: bool = True

    @classmethod
    def from_cli(cls, out: str | Path, source_map: list[str] | None, executor_opt: list[str] | None,
                 exclude: list[Path] | None, **options) -> BuildOptions:
        """The options of `build-mixture` from its flags (repeatable ones as lists; `--executor-opt` KEY=VALUE)."""
        return cls(out=str(out), source_map=tuple(source_map or ()),
                   executor_options=parse_executor_options(executor_opt or []),
                   exclude=tuple(str(p) for p in exclude or ()), **options)

    @cached_property
    def source_mapping(self) -> SourceMap:
        """--source-map PREFIX=DIR items and --source-root, parsed once (SourceMapError names a bad item)."""
        return SourceMap.parse(self.source_map, self.source_root)

    def check(self) -> None:
        """OptionError (named as the CLI flag) for values no build can use; run once, before any work."""
        check_out_dir(self.out)
        self.source_mapping  # noqa: B018  (parsing is the check)
        if self.seed is not None and self.seed < 0:
            raise OptionError(f"--seed must be >= 0, got {self.seed}")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise OptionError(f"--max-tokens must be positive, got {self.max_tokens}")
        if self.workers < 1:
            raise OptionError(f"--workers must be >= 1, got {self.workers}")
        if self.executor not in EXECUTOR_KINDS:
            raise OptionError(f"--executor must be one of {', '.join(EXECUTOR_KINDS)}, got {self.executor!r}")
        if self.executor_options and self.executor == "local":
            raise OptionError("--executor-opt is for the slurm and ray executors; the local executor takes none")
        if self.source_root is not None and "://" not in self.source_root and not Path(self.source_root).is_dir():
            raise OptionError(f"--source-root {self.source_root}: not a directory")
        for other in self.exclude:
            if not (Path(other) / "manifest.duckdb").is_file():
                raise OptionError(f"--exclude {other}: no manifest.duckdb there (not a finished build)")
