"""`build-mixture`: compose the datatrove pipelines of a build and run them on a datatrove executor.

Stage A (one task per input file, parallel): read -> sample -> [decontaminate] -> [dedup signatures] -> tokenize ->
write intermediates under OUT/work/<stage-A hash>/. datatrove's completion markers make a killed build resume: done
files are skipped, a half-written file is redone (its outputs are only renamed into place when complete).
Global decisions (`pipelines.dedup_stages`: unique ids, --exclude, exact/URL/MinHash dedup as parallel steps over
sorted hash files) write one decisions file per stage-A task. Stage B (`pipelines.finalize.stage_b_stages`) applies
them, packs, writes shards and the manifest as bounded datatrove stages. It always runs in full; new shards are
written beside the previous build and swapped in with the manifest last (`pipelines.manifest.swap_in`), so the result
is byte-identical to an uninterrupted build and a failed stage B leaves the previous build usable.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from datatrove.pipeline.base import PipelineStep

from pipelines.errors import OptionError, SpecError
from pipelines.executors import EXECUTOR_KINDS, ExecutorOptions
from pipelines.extra_formats import task_options
from pipelines.finalize import stage_b_stages
from pipelines.input_state import input_changes, record_inputs, stage_a_code_version
from pipelines.outlock import check_out_dir, out_lock
from pipelines.remap import SourceMap
from pipelines.rowsteps import task_fetch, task_filter
from pipelines.shards.format import sha256_file, token_dtype
from pipelines.sources import HF_PREFIX, resolve_source
from pipelines.spec import MixtureSpec
from pipelines.stages import Stage
from pipelines.steps import (
    FileTask, ReadSourceFile, SampleByIdHash, WriteIntermediate, worker_threads,
)


@dataclass
class BuildOptions:
    out: str
    source_root: str | None = None
    source_map: tuple[str, ...] = ()  # PREFIX=DIR items (pipelines/remap.py); source_root is hf://datasets/=DIR
    seed: int | None = None  # default: the spec's seed
    max_tokens: int | None = None
    workers: int = 1
    executor: str = "local"  # local | slurm | ray
    executor_options: dict = field(default_factory=dict)
    strict: bool = False
    exclude: tuple[str, ...] = ()  # other builds whose documents must not be reused
    progress: bool = True

    def check(self) -> None:
        """OptionError (named as the CLI flag) for values no build can use; run before any work."""
        check_out_dir(self.out)
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


@dataclass
class BuildContext:
    """Everything a stage needs, as plain data (datatrove pickles the pipeline for its workers)."""

    spec: MixtureSpec
    opts: BuildOptions
    seed: int
    tokenizer_path: str
    eos_id: int
    pad_id: int
    vocab_size: int
    tasks: list[FileTask]
    sources: list[dict]
    work_dir: str
    with_mask: bool
    started_at: str
    decontam_index: str | None = None

    @property
    def out(self) -> Path:
        return Path(self.opts.out)


def _display_uri(path: str, source_root: str | None) -> str:
    """Record files under their canonical hf:// URI when read through --source-root."""
    if source_root:
        root = str(Path(source_root).resolve())
        p = str(Path(path).resolve()) if "://" not in path else path
        if p.startswith(root + os.sep):
            return HF_PREFIX + p[len(root) + 1:]
    return path


def _special_id(tok, names: tuple[str, ...]) -> int | None:
    for n in names:
        i = tok.token_to_id(n)
        if i is not None:
            return i
    return None


def prepare(spec: MixtureSpec, opts: BuildOptions) -> BuildContext:
    """Resolve sources and tokenizer, and fix the stage-A work dir from a hash of everything stage A depends on."""
    from tokenizers import Tokenizer

    opts.check()
    spec.check_sections()
    tokenizer_path, tok = spec.load_tokenizer()
    eos_id = spec.eos_id if spec.eos_id is not None else _special_id(tok, ("<|endoftext|>", "</s>", "<eos>"))
    pad_id = spec.pad_id if spec.pad_id is not None else _special_id(tok, ("<|padding|>", "<pad>"))
    if eos_id is None:
        raise SpecError(f"{spec.path}: tokenizer has no <|endoftext|>; set eos_id in the spec")
    if pad_id is None:
        pad_id = eos_id
    spec.check_token_ids(eos_id, pad_id, tok.get_vocab_size())
    seed = spec.seed if opts.seed is None else opts.seed

    tasks: list[FileTask] = []
    sources: list[dict] = []
    read_by: dict[str, str] = {}  # opened path -> source: a file feeds one source only (ids, files.n_records)
    source_map = SourceMap.parse(opts.source_map, opts.source_root)
    for s in spec.sources:
        resolved = resolve_source(source_map.apply(s.uri), opts.source_root)
        condition = "ok" if resolved.files else ("optional-missing" if s.optional else "no-files")
        sources.append({"source": s.name, "uri": s.uri, "resolved": resolved.resolved, "sample": s.sample,
                        "n_files": len(resolved.files), "condition": condition, "planned_share": s.share})
        for f, rel, ident in zip(resolved.files, resolved.relative, resolved.identities):
            if f in read_by:
                raise SpecError(f"{spec.path}: sources '{read_by[f]}' and '{s.name}' both match {f}; a file may feed "
                                "one source only (narrow one uri, or use `sample` to weight it)")
            read_by[f] = s.name
            tasks.append(FileTask(source=s.name, path=f,
                                  display=source_map.canonical(f) or _display_uri(f, opts.source_root), fmt=s.format,
                                  text_key=s.text_key, id_key=s.id_key, sample=s.sample, relative=rel,
                                  identity=ident, fetch=task_fetch(s, source_map), filter=task_filter(s),
                                  options=task_options(spec, s, tokenizer_path)))

    with_mask = bool(spec.packing.get("loss_mask", False))
    stage_a = {
        "tasks": [t.__dict__ for t in tasks], "tokenizer_sha256": sha256_file(tokenizer_path), "eos": eos_id,
        "seed": seed, "strict": opts.strict, "decontaminate": spec.decontaminate, "dedup": spec.dedup,
        # 3: EOS/pad strings tokenized as text, and uint16 intermediates when the vocabulary fits
        "with_mask": with_mask, "pad": pad_id, "format_version": 3,
        "code": stage_a_code_version(),
        **({"tokenization": spec.tokenization} if spec.tokenization != "default" else {}),
    }  # tasks carry each file's identity (size/mtime/ETag): an input changed in place gets a fresh work dir
    stage_a_hash = hashlib.sha256(json.dumps(stage_a, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return BuildContext(
        spec=spec, opts=opts, seed=seed, tokenizer_path=tokenizer_path, eos_id=eos_id, pad_id=pad_id,
        vocab_size=tok.get_vocab_size(), tasks=tasks, sources=sources,
        work_dir=str(Path(opts.out) / "work" / stage_a_hash), with_mask=with_mask,
        started_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


def stage_a_pipeline(ctx: BuildContext) -> list[PipelineStep]:
    steps: list[PipelineStep] = [
        ReadSourceFile(ctx.tasks, strict=ctx.opts.strict),
        SampleByIdHash(ctx.seed, {s.name: s.sample for s in ctx.spec.sources}),
    ]
    if ctx.spec.decontaminate is not None:
        from pipelines.decontam import DecontaminationStep

        steps.append(DecontaminationStep(_decontam_config(ctx), ctx.decontam_index))
    if ctx.spec.dedup is not None:
        from pipelines.dedup import DedupConfig, DedupSignatureStep

        steps.append(DedupSignatureStep(DedupConfig.from_spec(ctx.spec.dedup)))
    if any(s.format == "chat" for s in ctx.spec.sources):
        from pipelines.sft_chat import ChatTemplateTokenize

        steps.append(ChatTemplateTokenize(ctx.tokenizer_path, ctx.eos_id, ctx.spec.seq_len))
    from pipelines.tokenize_modes import tokenize_step

    steps += [
        tokenize_step(ctx.spec.tokenization, ctx.tokenizer_path, ctx.eos_id, with_offsets=ctx.with_mask,
                      pad_id=ctx.pad_id, threads=worker_threads(ctx.opts.executor, ctx.opts.workers, len(ctx.tasks))),
        WriteIntermediate(os.path.join(ctx.work_dir, "docs"), ctx.tasks, with_mask=ctx.with_mask,
                          token_dtype=token_dtype(ctx.vocab_size).name),
    ]
    return steps


def _decontam_config(ctx: BuildContext):
    from pipelines.decontam import DecontamConfig

    spec_dir = Path(ctx.spec.path).parent if ctx.spec.path else Path.cwd()
    return DecontamConfig.from_spec(ctx.spec.decontaminate, spec_dir)


def plan_stages(ctx: BuildContext) -> list[Stage]:
    """The stages of this build, in order: the per-file stage, then the global stages."""
    stages: list[Stage] = []
    if ctx.tasks:  # a mixture whose sources all matched nothing still gets its (empty) manifest
        stages.append(Stage("stage_a", stage_a_pipeline(ctx), len(ctx.tasks), kind="per-file",
                            description=f"read + tokenize {len(ctx.tasks)} files"))
    from pipelines.dedup_stages import global_dedup_stages

    # ids, --exclude, dedup -> work/<hash>/decisions/; then stage B
    global_stages = stage_b_stages(ctx, decide=global_dedup_stages(ctx))
    if input_bytes(ctx) < IN_PROCESS_BELOW_BYTES:  # small build: the global stages' work is cheaper than a pool
        for stage in global_stages:
            stage.in_process = True
    return stages + global_stages


IN_PROCESS_BELOW_BYTES = 256 << 20  # input size below which the local executor runs the global stages in-process


def input_bytes(ctx: BuildContext) -> int:
    from pipelines.finalize import file_size

    return sum(file_size(t.path) or 0 for t in ctx.tasks)


def executor_options(ctx: BuildContext) -> ExecutorOptions:
    return ExecutorOptions(kind=ctx.opts.executor, workers=ctx.opts.workers, options=dict(ctx.opts.executor_options),
                           job_prefix=ctx.spec.name)


def make_executors(ctx: BuildContext) -> list:
    """The datatrove executors of this build's stages (stage i depends on stage i-1)."""
    from pipelines.executors import make_executors as chain

    return chain(plan_stages(ctx), executor_options(ctx), os.path.join(ctx.work_dir, "logs"))


def dry_run(spec: MixtureSpec, opts: BuildOptions):
    """The plan of a build (sources, estimated tokens, stages and their needs) without running or writing anything."""
    from pipelines.plan import plan_build

    ctx = prepare(spec, opts)
    return plan_build(ctx, plan_stages(ctx))


def build_mixture(spec: MixtureSpec, opts: BuildOptions) -> Path:
    """Run a whole build; returns the manifest path. Holds OUT/.lock throughout (one build per OUT at a time)."""
    opts.check()
    with out_lock(opts.out):
        from pipelines.manifest import recover_interrupted_swap

        recover_interrupted_swap(opts.out)  # a build killed inside the final swap is restored first
        ctx = prepare(spec, opts)
        identities = {t.display: t.identity for t in ctx.tasks}
        changes = input_changes(opts.out, identities)
        _run_stages(ctx, spec, opts)
        record_inputs(opts.out, identities, changes)
    return Path(opts.out) / "manifest.duckdb"


def _run_stages(ctx: BuildContext, spec: MixtureSpec, opts: BuildOptions) -> None:
    if spec.decontaminate is not None:
        from pipelines.decontam import build_decontam_index

        ctx.decontam_index = os.path.join(ctx.work_dir, "decontam-index")
        if not Path(ctx.decontam_index).exists():
            build_decontam_index(_decontam_config(ctx), Path(ctx.decontam_index))
    from pipelines.executors import run_stages

    # local: runs every stage in order; slurm/ray: submits them (each depending on the previous) and returns
    run_stages(plan_stages(ctx), executor_options(ctx), os.path.join(ctx.work_dir, "logs"), progress=opts.progress)
