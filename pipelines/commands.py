"""CLI commands of the corpus builder: mixtures, show, build-mixture, verify."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipelines.errors import OptionError

console = Console()


def print_summary(out: Path) -> None:
    """Composition table, drops by reason and source conditions of a finished build."""
    from pipelines.shards.reader import connect

    con = connect(out)
    t = Table(title=f"composition of {out}", show_footer=True)
    rows = con.execute("SELECT source, n_docs, n_tokens, share, epochs FROM composition").fetchall()
    total_docs = sum(r[1] for r in rows)
    total_tok = sum(r[2] for r in rows)
    t.add_column("source", footer="total")
    t.add_column("docs", justify="right", footer=f"{total_docs:,}")
    t.add_column("tokens", justify="right", footer=f"{total_tok:,}")
    t.add_column("share", justify="right", footer="100.00%" if total_tok else "")
    t.add_column("epochs", justify="right")
    for source, n_docs, n_tok, share, epochs in rows:
        t.add_row(source, f"{n_docs:,}", f"{n_tok:,}", f"{(share or 0) * 100:.2f}%",
                  "-" if epochs is None else f"{epochs:.4f}")
    console.print(t)
    (n_in, n_kept), = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = 'kept') FROM documents").fetchall()
    dropped = con.execute(
        "SELECT reason, count(*) FROM documents WHERE status = 'dropped' GROUP BY reason ORDER BY 2 DESC").fetchall()
    d = Table(title=f"documents: {n_in:,} read, {n_kept:,} kept, {n_in - n_kept:,} dropped")
    d.add_column("dropped because")
    d.add_column("docs", justify="right")
    for reason, n in dropped:
        d.add_row(reason, f"{n:,}")
    console.print(d)
    for source, condition in con.execute(
            "SELECT source, condition FROM sources WHERE condition <> 'ok' ORDER BY source").fetchall():
        console.print(f"[yellow]source {source}: {condition}[/] (matched no files)")
    n_shards, n_rows, n_pad, seq_len = con.execute(
        "SELECT count(*), coalesce(sum(n_rows), 0), coalesce(sum(n_pad), 0), (SELECT seq_len FROM build) FROM shards"
    ).fetchone()
    console.print(f"{n_shards} shard(s), {n_rows:,} rows × {seq_len:,} tokens, {n_pad:,} padding tokens → {out}")
    # rows padded by design (long / sft / sft-4k / mds-rows): padding per source; concat pads only the last row
    mode = json.loads(con.execute("SELECT packing FROM build").fetchone()[0] or "{}").get("mode", "concat")
    if mode != "concat":
        for source, n_pad_s, frac in con.execute("SELECT source, n_pad, pad_fraction FROM padding").fetchall():
            console.print(f"  padding {source}: {n_pad_s:,} tokens ({(frac or 0) * 100:.1f}% of its rows)")
    con.close()


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def print_plan(plan, out: Path) -> None:
    """Tables of `build-mixture --dry-run`."""
    t = Table(title=f"dry run: sources (tokens estimated from a sample) → {out}", show_footer=True)
    t.add_column("source", footer="total")
    t.add_column("files", justify="right", footer=f"{sum(s.n_files for s in plan.sources):,}")
    t.add_column("bytes", justify="right", footer=_size(sum(s.bytes for s in plan.sources)))
    t.add_column("sample", justify="right")
    t.add_column("records (est.)", justify="right", footer=f"{plan.est_records:,}")
    t.add_column("tokens (est.)", justify="right", footer=f"{plan.est_tokens:,}")
    target = plan.extra.get("target_tokens")
    if target:  # spec `tokens:` + per-source `share:` -> the sampling rate each source needs
        t.add_column("share", justify="right")
        t.add_column("rate needed", justify="right")
    t.add_column("note")
    for s in plan.sources:
        targets = (("" if s.share is None else f"{s.share:g}",
                    "?" if s.share is not None and s.rate_needed is None else
                    "" if s.rate_needed is None else f"{s.rate_needed:.4g}"),) if target else ()
        t.add_row(s.source, f"{s.n_files:,}", _size(s.bytes), f"{s.sample:g}",
                  "?" if s.est_records is None else f"{s.est_records:,}",
                  "?" if s.est_tokens is None else f"{s.est_tokens:,}", *(targets[0] if targets else ()), s.note)
    console.print(t)
    if target:
        console.print(f"target: {target:,.0f} tokens; rate needed = share × target / tokens at sample 1 "
                      "(> 1 repeats the source)")
    st = Table(title="stages")
    for col in ("stage", "kind", "tasks", "memory / task", "disk", "what"):
        st.add_column(col, justify="right" if col in ("tasks", "memory / task", "disk") else "left")
    for s in plan.stages:
        st.add_row(s.name, s.kind, f"{s.tasks:,}", _size(s.memory_per_task), _size(s.disk), s.description)
    console.print(st)
    console.print(f"shards: ~{_size(plan.est_tokens * plan.token_bytes)} ({plan.token_bytes}-byte tokens)")


def print_variants(spec, plan, opts, out: Path) -> None:
    """`--dry-run`: a faithful spec beside its improved variants (`variant_of:`), source by source; with a finished
    build of each (OUT, and out/<other name>) also the tokens each wrote, where dedup / decontamination removals
    show."""
    import dataclasses

    from pipelines.build.plan import compare_variants, measured_tokens
    from pipelines.build.run import dry_run as plan_only
    from pipelines.build.spec import load_spec, related_specs

    for name in related_specs(spec):
        other = load_spec(name)
        other_out = Path("out") / other.name
        other_plan = plan_only(other, dataclasses.replace(opts, out=str(other_out)))
        faithful_first = other.name == spec.variant_of
        (a, pa, oa), (b, pb, ob) = ((other, other_plan, other_out), (spec, plan, out)) if faithful_first else \
            ((spec, plan, out), (other, other_plan, other_out))
        t = Table(title=f"{a.name} (faithful) vs {b.name} (variant): tokens")
        for col in ("source / setting", a.name, b.name, f"{b.name} - {a.name}"):
            t.add_column(col, justify="left" if col == "source / setting" else "right")
        for row in compare_variants(a, pa, b, pb, measured_tokens(oa), measured_tokens(ob)):
            t.add_row(row.what, row.a, row.b, row.diff)
        console.print(t)
        if measured_tokens(oa) is None or measured_tokens(ob) is None:
            console.print(f"dedup / decontamination removals show in built tokens only: build both ({oa}, {ob}) "
                          "and rerun --dry-run, or compare their manifests' `documents.reason`")


def print_input_changes(out: Path) -> None:
    """Say which inputs changed since the previous build into the same OUT (their documents were read again)."""
    from pipelines.build.inputs import read_input_changes

    for kind, files in read_input_changes(out).items():
        for f in files:
            console.print(f"[yellow]input {kind} since the previous build:[/] {escape(f)}", soft_wrap=True)


def build_or_explain_full_disk(spec, opts) -> None:
    """Run the build; a full disk anywhere in it (a worker's ENOSPC arrives as a failed stage's text) becomes one
    line naming --out and the space that was free, and the half-written temporaries go (finished stages stay, so a
    rerun resumes)."""
    from pipelines.build.run import build_mixture
    from pipelines.errors import DiskFullError
    from pipelines.io import free_bytes, is_disk_full, remove_partial_files

    out = Path(opts.out)
    free_at_start = free_bytes(out)
    try:
        build_mixture(spec, opts)
    except BaseException as e:
        if isinstance(e, (typer.Exit, SystemExit)) or not is_disk_full(e):
            raise
        remove_partial_files(out)
        raise DiskFullError(
            f"{out}: no space left on device during the build: it needs more than the {free_at_start / 1e6:,.1f} MB "
            f"that were free on that filesystem when it started ({free_bytes(out) / 1e6:,.1f} MB free now); free "
            "some space or choose another --out, then rerun (finished stages are kept and resume)") from None


def mixtures_cmd() -> None:
    """List the mixture specs shipped in mixtures/."""
    from pipelines.build.spec import available_specs, load_spec

    t = Table(title="mixtures")
    for col in ("name", "seq_len", "sources", "description"):
        t.add_column(col)
    for name in available_specs():
        s = load_spec(name)
        t.add_row(name, f"{s.seq_len:,}", str(len(s.sources)), s.description)
    console.print(t)

def show_cmd(name: Annotated[str, typer.Argument(help="Mixture name (see `mixtures`) or path to a spec YAML.")],
             source_root: Annotated[Optional[str], typer.Option(
                 help="Also list how many files each source matches under this root (hf:// mapped here).")] = None,
             source_map: Annotated[Optional[list[str]], typer.Option(
                 help="PREFIX=DIR (repeatable): also list the files each source matches with URIs starting with "
                      "PREFIX read from DIR.")] = None) -> None:
    """Show a mixture spec: its sources, sampling rates and formats."""
    from pipelines.build.spec import load_spec
    from pipelines.read.remap import SourceMap
    from pipelines.read.sources import resolve_source

    s = load_spec(name)
    if source_root is not None and "://" not in source_root and not Path(source_root).is_dir():
        raise OptionError(f"--source-root {source_root}: not a directory")
    console.print(f"[bold]{s.name}[/] — {s.description}\nseq_len {s.seq_len:,} · tokenizer {s.tokenizer} · "
                  f"rope_theta {s.rope_theta:,.0f} · seed {s.seed} · packing {s.packing}")
    t = Table()
    smap = SourceMap.parse(source_map or [], source_root)
    for col in ("source", "uri", "sample", "share", "format", "optional") + (("files",) if smap else ()):
        t.add_column(col)
    for src in s.sources:
        extra = (str(len(resolve_source(smap.apply(src.uri)).files)),) if smap else ()
        t.add_row(src.name, src.uri, f"{src.sample:g}", "" if src.share is None else f"{src.share:g}", src.format,
                  "yes" if src.optional else "", *extra)
    console.print(t)
    for key in ("dedup", "decontaminate"):
        if getattr(s, key) is not None:
            console.print(f"{key}: {getattr(s, key)}")

def build_cmd(
    name: Annotated[str, typer.Argument(help="Mixture name (see `mixtures`) or path to a spec YAML.")],
    out: Annotated[Optional[Path], typer.Option(
        help="Output directory (default: out/<name>). One build at a time: a second build into it exits at once.")] = None,
    source_root: Annotated[Optional[str], typer.Option(
        help="Map hf://datasets/<owner>/<repo>/<path> to DIR/<owner>/<repo>/<path> (e.g. ../shared/data/hub); "
             "the shortcut for --source-map hf://datasets/=DIR.")] = None,
    source_map: Annotated[Optional[list[str]], typer.Option(
        help="PREFIX=DIR: read URIs starting with PREFIX (any scheme: hf://, s3://, https://) from DIR instead, "
             "e.g. s3://softwareheritage/=/data/swh for python-edu's blobs; repeatable, longest prefix wins. "
             "The manifest still records the canonical URIs.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampling/shuffling seed (default: the spec's seed).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(
        help="Stop filling rows after this many tokens (whole documents; the rest are dropped as max-tokens).")] = None,
    workers: Annotated[int, typer.Option(help="Parallel worker processes for the per-file stage.")] = 1,
    executor: Annotated[str, typer.Option(help="datatrove executor: local, slurm or ray.")] = "local",
    executor_opt: Annotated[Optional[list[str]], typer.Option(
        help="KEY=VALUE passed to the slurm/ray executor of every stage (e.g. partition=cpu, time=12:00:00); "
             "per-file.KEY=VALUE / global.KEY=VALUE size the per-file or the global stages only; repeatable.")] = None,
    strict: Annotated[bool, typer.Option(help="Fail on the first unreadable record instead of counting it as dropped.")] = False,
    exclude: Annotated[Optional[list[Path]], typer.Option(
        help="Another build's OUT dir: its documents are not reused here (dropped as excluded); repeatable.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    by_source: Annotated[bool, typer.Option(
        "--by-source", help="Keep the sources apart (packing: {mode: concat, by_source: true}): every row and shard "
                            "holds one source, so `train --mix` can set their shares at load time. Concat specs "
                            "only.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print per source the files, bytes and estimated tokens (from a sample), and per stage "
                          "the tasks, memory per task and disk; run nothing, write nothing.")] = False,
) -> None:
    """Build a mixture into token shards + manifest.duckdb, then print its composition.

    Executor options: `--executor-opt KEY=VALUE` goes to every stage's datatrove executor; prefix the key with
    `per-file.` or `global.` to size the per-file stage and the global stages separately (e.g.
    `--executor-opt global.mem_per_cpu_gb=8`). Ray: `address=auto` joins a running cluster, else a local one
    with `--workers` CPUs is started."""
    from pipelines.build.options import BuildOptions
    from pipelines.build.run import dry_run as plan_only
    from pipelines.build.spec import load_spec

    spec = load_spec(name)
    if by_source:
        mode = spec.packing.get("mode", "concat")
        if mode != "concat":
            raise OptionError(f"--by-source applies to concat packing only; {spec.path} packs with mode {mode!r}")
        import dataclasses

        spec = dataclasses.replace(spec, packing={**spec.packing, "by_source": True})
    out = out or Path("out") / spec.name
    opts = BuildOptions.from_cli(out, source_map, executor_opt, exclude, source_root=source_root, seed=seed,
                                 max_tokens=max_tokens, workers=workers, executor=executor, strict=strict,
                                 progress=progress)
    if dry_run:
        plan = plan_only(spec, opts)
        print_plan(plan, out)
        print_variants(spec, plan, opts, out)
        return
    build_or_explain_full_disk(spec, opts)
    if executor in ("local", "ray"):  # both block until the build is done
        print_summary(out)
        print_input_changes(out)
    else:
        console.print(f"submitted to {executor}; run `python cli.py verify {out}` when it finishes")

def verify_cmd(out: Annotated[Path, typer.Argument(help="A build's output directory.")]) -> None:
    """Re-hash every file the trainer reads and reconcile every count of the manifest; restores a build whose
    swap was interrupted first. Holds the build's lock (it may change OUT). On success it leaves
    OUT/verified.json, which the trainer checks cheaply at start."""
    from pipelines.build.lock import out_lock
    from pipelines.shards.reader import write_verified_marker
    from pipelines.shards.swap import recover_interrupted_swap
    from pipelines.shards.verify import verify_build

    no_build = OptionError(f"{out}: no manifest.duckdb there (not a build output directory, or the build did not "
                           "finish)")
    if not (out / "manifest.duckdb").is_file() and not (out / "manifest.duckdb.prev").is_file():
        raise no_build  # before the lock, which would create OUT/.lock in a directory that is no build
    with out_lock(out):
        recovered = recover_interrupted_swap(out)
        if recovered:
            console.print(f"[yellow]![/] {out}: {recovered}")
        if not (out / "manifest.duckdb").is_file():
            raise no_build
        (out / "verified.json").unlink(missing_ok=True)
        problems = verify_build(out)
        if not problems:
            write_verified_marker(out)
    if problems:
        for p in problems:
            console.print(f"[red]✗[/] {p}")
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {out}: shards match their hashes and every count reconciles")


def register(app: typer.Typer, synth_app: typer.Typer) -> None:
    app.command("mixtures")(mixtures_cmd)
    app.command("show")(show_cmd)
    app.command("build-mixture")(build_cmd)
    app.command("verify")(verify_cmd)
