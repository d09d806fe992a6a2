"""Swapping a finished build in place of the previous one, and recovering a swap a killed build left half-done.

Table, view and column names are a public interface (`pipelines.shards.format`, docs/FORMAT.md). The last stage of
a build (`WriteManifest`, one task) creates the tables from the Parquet parts the other stages wrote, inside DuckDB
(streamed, out of core, under `memory_limit`), under a temporary name; then `swap_in` puts the new shards and
manifest in place of the previous ones:

    1. manifest.duckdb -> manifest.duckdb.prev      (from here until 4 no manifest.duckdb exists)
    2. shards/         -> shards.prev/
    3. shards.next/    -> shards/
    4. manifest.duckdb.tmp -> manifest.duckdb        (the new build is complete)
    5. remove shards.prev/ and manifest.duckdb.prev

Every step is a rename, so the window without a manifest is a few syscalls; a build killed inside it is restored
by `recover_interrupted_swap` (run at the start of every build and by `verify`): before step 4 it puts the previous
shards and manifest back, after it only removes the leftovers. A build that fails anywhere before step 1 never
touched the previous build.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines import _logging  # noqa: F401  (quiet datatrove console in every worker)
from pipelines.shards.format import (
    MANIFEST,
    SHARDS_DIR,
)

if TYPE_CHECKING:
    pass



def swap_in(out: Path) -> None:
    """Replace the previous build (if any) by OUT/shards.next + OUT/manifest.duckdb.tmp (see the module doc)."""
    manifest, prev_manifest, tmp_manifest = out / MANIFEST, out / (MANIFEST + ".prev"), out / (MANIFEST + ".tmp")
    shards, prev_shards, next_shards = out / SHARDS_DIR, out / (SHARDS_DIR + ".prev"), out / (SHARDS_DIR + ".next")
    if manifest.exists():
        os.replace(manifest, prev_manifest)
    if shards.exists():
        shutil.rmtree(prev_shards, ignore_errors=True)
        os.replace(shards, prev_shards)
    os.replace(next_shards, shards)
    os.replace(tmp_manifest, manifest)
    shutil.rmtree(prev_shards, ignore_errors=True)
    prev_manifest.unlink(missing_ok=True)


def recover_interrupted_swap(out: str | Path) -> str | None:
    """Finish or roll back a swap that a killed build left half-done; returns what was done (None: nothing)."""
    out = Path(out)
    manifest, prev_manifest = out / MANIFEST, out / (MANIFEST + ".prev")
    shards, prev_shards, next_shards = out / SHARDS_DIR, out / (SHARDS_DIR + ".prev"), out / (SHARDS_DIR + ".next")
    if manifest.exists():  # the swap got to step 4 (or never started): only leftovers to remove
        if not prev_manifest.exists() and not prev_shards.exists():
            return None
        shutil.rmtree(prev_shards, ignore_errors=True)
        prev_manifest.unlink(missing_ok=True)
        return "removed the previous build left over by an interrupted swap"
    if not prev_manifest.exists():
        return None
    if prev_shards.exists():  # steps 2-3 happened: put the previous shards back
        if shards.exists():
            shutil.rmtree(next_shards, ignore_errors=True)
            os.replace(shards, next_shards)
        os.replace(prev_shards, shards)
    os.replace(prev_manifest, manifest)
    return "restored the previous build (a build was interrupted while swapping its shards in)"
