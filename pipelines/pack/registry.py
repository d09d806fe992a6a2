"""The packers, by `packing: {mode: NAME}`: one explicit dict, the only place a mode is looked up.

`concat` (pretraining) is not a whole-partition packer: it runs as the partitioned `PartitionItems` + `CutRows`
stages (`pipelines.pack.stages`), so it is listed in MODES but not in PACKERS. To add a packer: write
`fn(PackInput) -> PackResult` in its own module of this package and add it to PACKERS.
"""
from __future__ import annotations

from collections.abc import Callable

from pipelines.pack.base import PackInput, PackResult
from pipelines.pack.long import pack_long, pack_sft
from pipelines.pack.mds_rows import pack_mds_rows
from pipelines.pack.preference import pack_preference_pairs
from pipelines.pack.sft_4k import pack_sft_rows

PACKERS: dict[str, Callable[[PackInput], PackResult]] = {
    "long": pack_long,  # ProLong-style long-context rows (Instella-Long stages 1/2)
    "sft": pack_sft,  # long-context SFT: conversations packed into long rows, answer-only loss mask
    "sft-4k": pack_sft_rows,  # Instella-3B-SFT: one conversation per row
    "mds-rows": pack_mds_rows,  # pre-packed MDS rows kept as they were
    "preference": pack_preference_pairs,  # DPO: pair k = rows 2k (chosen), 2k+1 (rejected)
}
MODES: tuple[str, ...] = ("concat", *PACKERS)


def get_packer(mode: str) -> Callable[[PackInput], PackResult]:
    """The whole-partition packer of a mode other than `concat`; KeyError naming the modes for an unknown one."""
    if mode not in PACKERS:
        raise KeyError(f"unknown packing mode {mode!r}; available: {sorted(MODES)}")
    return PACKERS[mode]
