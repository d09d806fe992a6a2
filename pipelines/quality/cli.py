"""CLI for dedup / decontamination results: `contamination OUT` prints benchmark hits of a finished build."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipelines.errors import OptionError

console = Console()


def contamination_summary(out: Path, show_items: int = 0) -> None:
    from pipelines.shards.reader import connect

    con = connect(out)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "contamination" not in tables:
            console.print(f"[yellow]{out}: the manifest has no contamination table (build without decontaminate:)[/]")
            return
        rows = con.execute("""
            SELECT c.benchmark, count(DISTINCT c.doc_id) AS docs, count(DISTINCT c.item_id) AS items,
                   sum(c.n_matches)::BIGINT AS ngrams, string_agg(DISTINCT d.source, ', ' ORDER BY d.source) AS sources
            FROM contamination c LEFT JOIN documents d USING (doc_id)
            GROUP BY c.benchmark ORDER BY docs DESC, c.benchmark""").fetchall()
        n_docs, = con.execute("SELECT count(*) FROM documents WHERE reason = 'contaminated'").fetchone()
        t = Table(title=f"contamination in {out}: {n_docs:,} document(s) dropped")
        for col, just in (("benchmark", "left"), ("docs", "right"), ("items", "right"),
                          ("matched n-grams", "right"), ("sources", "left")):
            t.add_column(col, justify=just)
        for bench, docs, items, ngrams, sources in rows:
            t.add_row(bench, f"{docs:,}", f"{items:,}", f"{ngrams:,}", sources or "")
        console.print(t)
        if show_items:
            d = Table(title=f"top {show_items} hits")
            for col in ("doc_id", "benchmark", "item_id", "n_matches"):
                d.add_column(col)
            for r in con.execute("SELECT doc_id, benchmark, item_id, n_matches FROM contamination "
                                 "ORDER BY n_matches DESC, doc_id, item_id LIMIT ?", [show_items]).fetchall():
                d.add_row(*[str(x) for x in r])
            console.print(d)
    finally:
        con.close()


def contamination_cmd(
    out: Annotated[Path, typer.Argument(help="Build output folder (holds manifest.duckdb).")],
    items: Annotated[int, typer.Option("--items", min=0, help="Also list this many individual hits (0 = none).")] = 0,
) -> None:
    """Print benchmark contamination hits per benchmark of a finished build."""
    try:
        contamination_summary(out, items)
    except FileNotFoundError as e:
        raise OptionError(str(e)) from e


def register(app: typer.Typer, synth_app: typer.Typer) -> None:
    app.command("contamination")(contamination_cmd)
