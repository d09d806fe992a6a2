"""The pack stages of a build for its packing mode.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.pack.concat import CutRows
from pipelines.pack.layout import ITEMS_PER_PARTITION, StageBLayout
from pipelines.pack.partitioned import PackPartition
from pipelines.pack.plan import ITEM_BYTES, PACKER_ITEM_BYTES, PartitionItems
from pipelines.pack.registry import get_packer
from pipelines.stages import Stage

if TYPE_CHECKING:
    from pipelines.build.context import BuildContext




def pack_stages(ctx: BuildContext, lay: StageBLayout) -> list[Stage]:
    if lay.concat:
        return [
            Stage("partition", [PartitionItems(lay)], lay.n_partitions,
                  description=f"sort {lay.n_partitions} partition(s) of the global order",
                  memory_bytes=ITEMS_PER_PARTITION * ITEM_BYTES),
            Stage("cut_rows", [CutRows(lay, ctx.spec.seq_len, ctx.opts.max_tokens)], lay.n_partitions,
                  description="cut rows, source by source (no row mixes sources)" if lay.by_source else "cut rows",
                  memory_bytes=ITEMS_PER_PARTITION * ITEM_BYTES),
        ]
    get_packer(ctx.spec.packing.get("mode", "concat"))  # an unknown mode fails before any stage runs (KeyError)
    return [
        Stage("partition", [PartitionItems(lay)], lay.n_partitions,
              description=f"split the documents into {lay.n_partitions} partition(s)",
              memory_bytes=ITEMS_PER_PARTITION * ITEM_BYTES),
        Stage("pack", [PackPartition(ctx, lay)], lay.n_partitions,
              description=f"pack ({ctx.spec.packing.get('mode')}), {lay.n_partitions} partition(s)",
              memory_bytes=ITEMS_PER_PARTITION * PACKER_ITEM_BYTES),
    ]
