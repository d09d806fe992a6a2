"""Packing: decide where every kept document (copy) lands in the fixed-length rows of a build.

A packer sees the table of kept documents (one row per doc, with `n_copies`) and returns *segments* — pieces of
documents placed in global rows — plus the documents it decided not to place (with a reason). The shard writer
then gathers the tokens; positions of a row that no segment covers are filled with the pad id.

Packers are selected with the spec's `packing: {mode: NAME, ...}`. Every mode runs as bounded, partitioned datatrove
steps (`pack_stages`): whatever sees all documents sees only their lengths, in partitions of sort-key ranges.
`concat` (the pretraining packer) cuts rows from one global shuffled order, so its partition count never changes a
row. The long-context and SFT packers (`pipelines.pack.long`, `sft-4k`, `mds-rows`, listed in `get_packer`;
more with `@register_packer`) are per-source algorithms over lengths, run on each partition (up to
ITEMS_PER_PARTITION documents, so a build up to that size is packed as one whole; partition counts come from the
data size only).
"""
