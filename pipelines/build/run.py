"""`build-mixture`: compose the datatrove pipelines of a build and run them on a datatrove executor.

Stage A (one task per input file, parallel): read -> sample -> [decontaminate] -> [dedup signatures] -> tokenize ->
write intermediates under OUT/work/<stage-A hash>/. datatrove's completion markers make a killed build resume: done
files are skipped, a half-written file is redone (its outputs are only renamed into place when complete).
Global decisions (`pipelines.dedup.global_stages`: unique ids, --exclude, exact/URL/MinHash dedup as parallel steps over
sorted hash files) write one decisions file per stage-A task. Stage B (`stage_b_stages` below) applies
them, packs, writes shards and the manifest as bounded datatrove stages. It always runs in full; new shards are
written beside the previous build and swapped in with the manifest last (`pipelines.shards.swap.swap_in`), so the result
is byte-identical to an uninterrupted build and a failed stage B leaves the previous build usable.

Stage B:

    decide     global dedup / exclusion / doc-id repair -> decisions/NNNNN.parquet per stage-A task
               (`pipelines.dedup.global_stages`: ids, exclusion, exact/URL/MinHash dedup, parallel over hash buckets)
    documents  one task per stage-A file: apply its decisions; write its manifest `documents` part, its
               `contamination` part and its *pack items* (lengths only: key, copy, n_tokens, token offset, ...)
    pack       partition items by sort-key range (P tasks), then concat: cut each partition into rows from the
               prefix token offsets of all partitions (P tasks); long / sft: the mode's packer on each partition
               (P tasks; P from the data size). Either way: plan parts (segments sorted by row) + outcomes (copies
               not placed, with a reason)
    write      one task per block of shards, a chunk of rows at a time: read tokens from the stage-A
               intermediates (pread), stream .npy (+ .mask.npy) + .idx.arrow into OUT/shards.next/, and the
               manifest parts of those shards
    manifest   one task: DuckDB builds manifest.duckdb from the parts (out of core), then swaps the new shards and
               manifest in (see `pipelines.shards.swap.swap_in`)

Every file a stage writes is named by task rank and written atomically; a stage reads exactly the files the plan
names, so stale files of an earlier run are never read. Task counts come from the size of the input, not from
`--workers`; shard contents do not depend on them at all (rows are cut from one global order), so shards are
byte-identical for any worker count or executor.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from datatrove.pipeline.base import PipelineStep

from pipelines import _logging  # noqa: F401  (quiet datatrove console in every worker)
from pipelines.build.context import prepare
from pipelines.build.executors import ExecutorOptions
from pipelines.build.inputs import input_changes, record_inputs
from pipelines.build.lock import out_lock
from pipelines.build.options import BuildOptions
from pipelines.build.spec import MixtureSpec
from pipelines.dedup.late_tokens import late_tokens_stage, tokenize_after
from pipelines.errors import OptionError
from pipelines.io import parse_bytes
from pipelines.pack.items import ApplyDecisions
from pipelines.pack.layout import plan_layout
from pipelines.shards.format import token_dtype
from pipelines.stages import Stage
from pipelines.steps.intermediate import WriteIntermediate
from pipelines.steps.read import ReadSourceFile
from pipelines.steps.sample import SampleByIdHash
from pipelines.steps.tokenize import worker_threads

if TYPE_CHECKING:
    from pipelines.build.context import BuildContext



def stage_b_stages(ctx: BuildContext, decide: list[Stage]) -> list[Stage]:
    """The global stages of a build, in order. `decide` = the stages that write decisions files."""
    from pipelines.pack.stages import pack_stages
    from pipelines.shards.manifest import DUCKDB_MEMORY_LIMIT, WriteManifest
    from pipelines.shards.writer import CHUNK_TOKENS, WriteShards

    lay = plan_layout(ctx)
    stages = list(decide)
    if lay.n_tasks:
        stages.append(Stage("documents", [ApplyDecisions(ctx, lay)], lay.n_tasks,
                            description=f"apply decisions to {lay.n_tasks} files"))
        if lay.holdout:
            from pipelines.pack.holdout import HoldoutConfig
            from pipelines.shards.holdout import WriteHoldout

            cfg = HoldoutConfig.from_spec(ctx.spec.holdout, ctx.spec.path)
            stages.append(Stage("holdout", [WriteHoldout(ctx, lay, cfg)], 1,
                                description=f"hold out up to {cfg.max_docs} documents per source "
                                            f"(fraction {cfg.fraction:g})"))
        stages += pack_stages(ctx, lay)
        # a writer holds one chunk of rows (+ mask) and that chunk's plan segments (~100 B per segment)
        chunk_bytes = CHUNK_TOKENS * (token_dtype(ctx.vocab_size).itemsize + ctx.with_mask)
        stages.append(Stage("write_shards", [WriteShards(ctx, lay)], lay.n_writers,
                            description=f"write shards ({lay.n_writers} tasks)",
                            memory_bytes=2 * chunk_bytes + (256 << 20)))
    stages.append(Stage("manifest", [WriteManifest(ctx, lay)], 1, description="manifest and swap",
                        memory_bytes=parse_bytes(DUCKDB_MEMORY_LIMIT) + (256 << 20)))
    return stages




def read_steps(ctx: BuildContext) -> list[PipelineStep]:
    """Stage A's first steps: every record of the task's file, sampled (the copies pass runs the same ones)."""
    return [ReadSourceFile(ctx.tasks, strict=ctx.opts.strict),
            SampleByIdHash(ctx.seed, {s.name: s.sample for s in ctx.spec.sources})]


def exact_copies(ctx: BuildContext) -> bool:
    from pipelines.dedup.copies import copies_enabled

    return copies_enabled(ctx.spec.dedup, tuple(ctx.opts.exclude), ctx.with_mask, ctx.tasks)


def stage_a_pipeline(ctx: BuildContext) -> list[PipelineStep]:
    steps: list[PipelineStep] = read_steps(ctx)
    if exact_copies(ctx):
        from pipelines.dedup.copies import MarkExactCopies

        steps.append(MarkExactCopies(ctx.work_dir))
    if ctx.spec.decontaminate is not None:
        from pipelines.decontam.ngram import DecontaminationStep

        steps.append(DecontaminationStep(_decontam_config(ctx), ctx.decontam_index))
    if ctx.spec.dedup is not None:
        from pipelines.dedup.signatures import (
            DedupConfig,
            DedupSignatureStep,
        )

        steps.append(DedupSignatureStep(DedupConfig.from_spec(ctx.spec.dedup)))
    if any(s.format in ("chat", "preference") for s in ctx.spec.sources):
        from pipelines.steps.chat_template import ChatTemplateTokenize

        steps.append(ChatTemplateTokenize(ctx.tokenizer_path, ctx.eos_id, ctx.spec.seq_len, ctx.pad_id))
    if not tokenize_after(ctx.spec.dedup):  # else tokenized after the global dedup: `late_tokens`
        steps.append(stage_a_tokenizer(ctx))
    steps.append(WriteIntermediate(os.path.join(ctx.work_dir, "docs"), ctx.tasks, with_mask=ctx.with_mask,
                                   token_dtype=token_dtype(ctx.vocab_size).name))
    return steps


def stage_a_tokenizer(ctx: BuildContext, every_core: bool = False) -> PipelineStep:
    """The build's tokenization step: with local workers sharing the machine, one core's share of threads each;
    `every_core` for `late_tokens`, where survivors crowd into few files (the first copy of a document is the one
    kept, so early files hold most of them) and a worker with the only big file should not run on one thread."""
    from pipelines.steps.tokenize_modes import tokenize_step

    threads = None if every_core else worker_threads(ctx.opts.executor, ctx.opts.workers, len(ctx.tasks))
    return tokenize_step(ctx.spec.tokenization, ctx.tokenizer_path, ctx.eos_id, with_offsets=ctx.with_mask,
                         pad_id=ctx.pad_id, threads=threads)


def _decontam_config(ctx: BuildContext):
    from pipelines.decontam.ngram import DecontamConfig

    spec_dir = Path(ctx.spec.path).parent if ctx.spec.path else Path.cwd()
    return DecontamConfig.from_spec(ctx.spec.decontaminate, spec_dir)


def plan_stages(ctx: BuildContext) -> list[Stage]:
    """The stages of this build, in order: the per-file stage, then the global stages."""
    stages: list[Stage] = []
    if exact_copies(ctx):  # exact copies found from raw-text hashes before stage A, so it need not tokenize them
        from pipelines.dedup import global_stages as dedup_stages
        from pipelines.dedup.copies import CopiesConfig, copies_stages, plain_task

        n = len(ctx.tasks)
        copies = copies_stages(CopiesConfig(ctx.work_dir, n, dedup_stages.n_buckets_for(n),
                                            sign_run_docs=dedup_stages.SIGN_RUN_DOCS), read_steps(ctx),
                               [plain_task(t) for t in ctx.tasks])
        for stage in copies[1:]:  # global stages: in-process for a small build, as the ones after stage A
            stage.in_process = input_bytes(ctx) < IN_PROCESS_BELOW_BYTES
        stages += copies
    if ctx.tasks:  # a mixture whose sources all matched nothing still gets its (empty) manifest
        stages.append(Stage("stage_a", stage_a_pipeline(ctx), len(ctx.tasks), kind="per-file",
                            description=f"read + tokenize {len(ctx.tasks)} files"))
    from pipelines.dedup.global_stages import global_dedup_stages

    # ids, --exclude, dedup -> work/<hash>/decisions/; [late_tokens: tokenize what dedup kept]; then stage B
    late = []
    if ctx.tasks and tokenize_after(ctx.spec.dedup):
        late = [late_tokens_stage(ctx.work_dir, read_steps(ctx), stage_a_tokenizer(ctx, every_core=True),
                                  token_dtype(ctx.vocab_size).name, len(ctx.tasks))]
    global_stages = stage_b_stages(ctx, decide=global_dedup_stages(ctx) + late)
    if input_bytes(ctx) < IN_PROCESS_BELOW_BYTES:  # small build: the global stages' work is cheaper than a pool
        for stage in global_stages:
            stage.in_process = all(stage is not x for x in late)  # late_tokens tokenizes: it keeps its pool
    return stages + global_stages


IN_PROCESS_BELOW_BYTES = 256 << 20  # input size below which the local executor runs the global stages in-process


def input_bytes(ctx: BuildContext) -> int:
    from pipelines.io import file_size

    return sum(file_size(t.path) or 0 for t in ctx.tasks)


def executor_options(ctx: BuildContext) -> ExecutorOptions:
    return ExecutorOptions(kind=ctx.opts.executor, workers=ctx.opts.workers, options=dict(ctx.opts.executor_options),
                           job_prefix=ctx.spec.name)


def make_executors(ctx: BuildContext) -> list:
    """The datatrove executors of this build's stages (stage i depends on stage i-1)."""
    from pipelines.build.executors import make_executors as chain

    return chain(plan_stages(ctx), executor_options(ctx), os.path.join(ctx.work_dir, "logs"))


def dry_run(spec: MixtureSpec, opts: BuildOptions):
    """The plan of a build (sources, estimated tokens, stages and their needs) without running or writing anything."""
    from pipelines.build.plan import plan_build

    opts.check()
    check_options_for_spec(spec, opts)
    ctx = prepare(spec, opts)
    return plan_build(ctx, plan_stages(ctx))


def check_options_for_spec(spec: MixtureSpec, opts: BuildOptions) -> None:
    """OptionError for flags this spec cannot take."""
    if opts.max_tokens is not None and spec.packing.get("by_source", False):
        raise OptionError("--max-tokens does not combine with by-source packing (the cap would cut whole sources in "
                          "spec order); lower the sources' `sample:` instead")


def build_mixture(spec: MixtureSpec, opts: BuildOptions) -> Path:
    """Run a whole build; returns the manifest path. Holds OUT/.lock throughout (one build per OUT at a time)."""
    opts.check()
    check_options_for_spec(spec, opts)
    with out_lock(opts.out):
        from pipelines.shards.swap import recover_interrupted_swap

        recover_interrupted_swap(opts.out)  # a build killed inside the final swap is restored first
        ctx = prepare(spec, opts)
        identities = {t.display: t.identity for t in ctx.tasks}
        changes = input_changes(opts.out, identities)
        _run_stages(ctx, spec, opts)
        record_inputs(opts.out, identities, changes)
    return Path(opts.out) / "manifest.duckdb"


def _run_stages(ctx: BuildContext, spec: MixtureSpec, opts: BuildOptions) -> None:
    if spec.decontaminate is not None:
        from pipelines.decontam.ngram import build_decontam_index

        ctx.decontam_index = os.path.join(ctx.work_dir, "decontam-index")
        if not Path(ctx.decontam_index).exists():
            build_decontam_index(_decontam_config(ctx), Path(ctx.decontam_index))
    from pipelines.build.executors import run_stages

    # local: runs every stage in order; slurm/ray: submits them (each depending on the previous) and returns
    run_stages(plan_stages(ctx), executor_options(ctx), os.path.join(ctx.work_dir, "logs"), progress=opts.progress)
