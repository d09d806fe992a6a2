"""Swapping a finished build in place of the previous one, and recovering a swap a killed build left half-done.

Table, view and column names are a public interface (`pipelines.shards.format`, docs/FORMAT.md). The last stage of
a build (`WriteManifest`, one task) creates the tables from the Parquet parts the other stages wrote, inside DuckDB
(streamed, out of core, under `memory_limit`), under a temporary name; then `swap_in` puts the new shards and
manifest in place of the previous ones:

    1. manifest.duckdb -> manifest.duckdb.prev      (from here until 4 no manifest.duckdb exists)
    2. shards/         -> shards.prev/              (and holdout/ -> holdout.prev/, see BUILD_DIRS)
    3. shards.next/    -> shards/                   (and holdout.next/ -> holdout/ when the build holds some out)
    4. manifest.duckdb.tmp -> manifest.duckdb        (the new build is complete)
    5. remove shards.prev/, holdout.prev/ and manifest.duckdb.prev

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
from pipelines.shards.format import HOLDOUT_DIR, MANIFEST, SHARDS_DIR, VERIFIED_MARKER

if TYPE_CHECKING:
    pass



# folders that belong to a build and are swapped in with its manifest: the shards, and the held-out documents of a
# build whose spec has `holdout:` (a build without it removes the previous build's)
BUILD_DIRS = (SHARDS_DIR, HOLDOUT_DIR)


def swap_in(out: Path) -> None:
    """Replace the previous build (if any) by OUT/<dir>.next + OUT/manifest.duckdb.tmp (see the module doc). Step 2
    leaves a `<dir>.prev` for every folder, empty when the previous build had none, so that recovery can tell a
    folder already moved aside from one never there."""
    manifest, prev_manifest, tmp_manifest = out / MANIFEST, out / (MANIFEST + ".prev"), out / (MANIFEST + ".tmp")
    (out / VERIFIED_MARKER).unlink(missing_ok=True)  # it vouches for the previous build, not this one
    if manifest.exists():
        os.replace(manifest, prev_manifest)
    for name in BUILD_DIRS:
        current, prev = out / name, out / (name + ".prev")
        shutil.rmtree(prev, ignore_errors=True)
        if current.exists():
            os.replace(current, prev)
        elif name != SHARDS_DIR:
            prev.mkdir()
    for name in BUILD_DIRS:
        if (out / (name + ".next")).exists():
            os.replace(out / (name + ".next"), out / name)
    os.replace(tmp_manifest, manifest)
    for name in BUILD_DIRS:
        shutil.rmtree(out / (name + ".prev"), ignore_errors=True)
    prev_manifest.unlink(missing_ok=True)


def recover_interrupted_swap(out: str | Path) -> str | None:
    """Finish or roll back a swap that a killed build left half-done; returns what was done (None: nothing)."""
    out = Path(out)
    manifest, prev_manifest = out / MANIFEST, out / (MANIFEST + ".prev")
    prevs = [out / (name + ".prev") for name in BUILD_DIRS]
    if manifest.exists():  # the swap got to step 4 (or never started): only leftovers to remove
        if not prev_manifest.exists() and not any(p.exists() for p in prevs):
            return None
        for p in prevs:
            shutil.rmtree(p, ignore_errors=True)
        prev_manifest.unlink(missing_ok=True)
        return "removed the previous build left over by an interrupted swap"
    if not prev_manifest.exists():
        return None
    for name in BUILD_DIRS:  # folders moved aside in step 2: put the previous ones back
        current, prev, nxt = out / name, out / (name + ".prev"), out / (name + ".next")
        if not prev.exists():
            continue
        if current.exists():
            shutil.rmtree(nxt, ignore_errors=True)
            os.replace(current, nxt)
        if name != SHARDS_DIR and not any(prev.iterdir()):
            prev.rmdir()  # the previous build had none
        else:
            os.replace(prev, current)
    os.replace(prev_manifest, manifest)
    return "restored the previous build (a build was interrupted while swapping its shards in)"
