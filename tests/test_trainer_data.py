"""trainer/data.py on the stage2 build: coverage, labels, positions, order, resume, loss masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.data import IGNORE, PackedDataset, Sample, StepLoader, collate


@pytest.fixture(scope="module")
def ds(stage2_build):
    return PackedDataset(stage2_build, seq_len=512)


def test_units_cover_every_written_token_once(ds, stage2_build):
    from pipelines.shards.reader import connect

    con = connect(stage2_build)
    written = con.execute("select sum(length) from segments").fetchone()[0]
    n_segments = con.execute("select count(*) from segments").fetchone()[0]
    con.close()
    real = pieces = 0
    for i in range(len(ds)):
        s = ds[i]
        assert sum(s.doc_lens) == ds.seq_len
        real += sum(n for n, pad in zip(s.doc_lens, s.is_pad) if not pad)
        pieces += sum(not pad for pad in s.is_pad)
        assert not any(s.is_pad[:-1])  # padding only as the last piece
    assert real == written
    assert pieces >= n_segments  # segments cut at unit boundaries become two pieces


def test_pieces_end_with_eos_and_pad_is_pad(ds):
    """Every document ends with EOS, so a piece that does not end a unit ends with EOS; padding is pad_id."""
    eos, pad = ds.info.eos_id, ds.info.pad_id
    for i in range(0, len(ds), 7):
        s = ds[i]
        ends = np.cumsum(s.doc_lens)
        for n_end, is_pad, n in zip(ends, s.is_pad, s.doc_lens):
            if is_pad:
                assert (s.tokens[n_end - n:n_end] == pad).all()
            elif n_end < ds.seq_len:
                assert s.tokens[n_end - 1] == eos


def test_labels_positions_and_cu_seqlens(ds):
    b = collate([ds[0], ds[1]])
    cu = b.cu_seqlens.tolist()
    assert cu[0] == 0 and cu[-1] == len(b.input_ids) == 2 * ds.seq_len
    assert b.max_seqlen == max(np.diff(cu))
    for s, e in zip(cu[:-1], cu[1:]):
        assert b.positions[s:e].tolist() == list(range(e - s))  # restart per document
        assert b.labels[e - 1] == IGNORE  # next document's first token is never a target
        assert torch.equal(b.labels[s:e - 1], b.input_ids[s + 1:e])
    absolute = collate([ds[0], ds[1]], positions="absolute")
    assert absolute.positions.tolist() == list(range(ds.seq_len)) * 2
    assert torch.equal(absolute.labels, b.labels)


def test_loss_mask_selects_targets():
    tokens = np.arange(10, 20)
    mask = np.array([0, 0, 0, 1, 1, 0, 0, 1, 1, 1], dtype=np.uint8)  # answer tokens
    b = collate([Sample(tokens, [6, 4], [False, False], mask)])
    # target i is token i+1, counted only where the mask of token i+1 is 1 and i+1 is in the same document
    assert b.labels.tolist() == [IGNORE, IGNORE, 13, 14, IGNORE, IGNORE, 17, 18, 19, IGNORE]


def test_order_is_deterministic_split_across_ranks_and_resumable(ds):
    def stream(rank, world, steps, loader=None):
        loader = loader or StepLoader(ds, seed=3, rank=rank, world=world, micro_batch=1, grad_accum=2)
        return [[b.input_ids for b in loader.next_step()] for _ in range(steps)], loader

    a, _ = stream(0, 2, 3)
    b, _ = stream(0, 2, 3)
    other, _ = stream(1, 2, 3)
    assert all(torch.equal(x, y) for s, t in zip(a, b) for x, y in zip(s, t))
    mine = {tuple(x[:16].tolist()) for s in a for x in s}
    theirs = {tuple(x[:16].tolist()) for s in other for x in s}
    assert not mine & theirs
    # resume: restore after step 2 and take step 3
    _, loader = stream(0, 2, 2)
    fresh = StepLoader(ds, seed=3, rank=0, world=2, micro_batch=1, grad_accum=2)
    fresh.load_state_dict(loader.state_dict())
    nxt, _ = stream(0, 2, 1, fresh)
    assert all(torch.equal(x, y) for x, y in zip(nxt[0], a[2]))
    # another seed gives another order
    c = StepLoader(ds, seed=4, rank=0, world=2, micro_batch=1, grad_accum=2).next_step()
    assert not all(torch.equal(x.input_ids, y) for x, y in zip(c, a[0]))


def test_epochs_wrap_and_microbatches_sorted_heaviest_first(ds):
    loader = StepLoader(ds, seed=0, rank=0, world=1, micro_batch=1, grad_accum=4)
    loader.cursor = len(ds) - 2  # the step straddles the epoch boundary
    micro = loader.next_step()
    assert loader.epoch == 1 and loader.cursor == 2
    costs = [b.attn_cost for b in micro]
    assert costs == sorted(costs, reverse=True)


def test_bad_seq_len_and_missing_build(ds, tmp_path):
    with pytest.raises(ValueError, match="must divide"):
        PackedDataset(ds.info.path, seq_len=1000)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        PackedDataset(tmp_path)


def _copy_build(src, dst):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("work", "logs"))
    return dst


def test_sft_loss_mask_file_is_read_and_applied(stage2_build, tmp_path):
    build = _copy_build(stage2_build, tmp_path / "b")
    tokens = np.load(build / "shards/shard-00000.npy", mmap_mode="r")
    mask = (np.asarray(tokens) % 3 == 0).astype(np.uint8)  # an arbitrary but checkable pattern
    np.save(build / "shards/shard-00000.mask.npy", mask)
    ds = PackedDataset(build, seq_len=512)
    # the tail of the last row is padding; the last sample with a target holds at least 2 real tokens
    last = next(i for i in reversed(range(len(ds))) if (ds[i].tokens != ds.info.pad_id).sum() > 1)
    for i in (0, 5, last):
        s = ds[i]
        np.testing.assert_array_equal(s.loss_mask, (s.tokens % 3 == 0).astype(np.uint8))
        b = collate([s])
        valid = (b.labels != IGNORE).numpy()
        assert valid.any()
        assert (b.labels.numpy()[valid] % 3 == 0).all()  # only masked-in tokens are targets


def test_segments_that_do_not_tile_a_row_are_rejected(stage2_build, tmp_path):
    """Checked when the shard's index is first loaded (not at start-up: the trainer never reads every index)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    build = _copy_build(stage2_build, tmp_path / "b")
    idx_path = build / "shards/shard-00000.idx.arrow"
    table = pa.ipc.open_file(str(idx_path)).read_all()
    rows = table["row"].to_numpy()
    row = int(np.flatnonzero(np.bincount(rows) > 1)[0])  # a row holding several documents
    shifted = pc.and_(pc.equal(table["row"], row), pc.greater(table["start"], 0))
    table = table.set_column(table.schema.get_field_index("start"), "start",
                             pc.if_else(shifted, pc.add(table["start"], 1), table["start"]))
    with pa.OSFile(str(idx_path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    ds = PackedDataset(build)
    with pytest.raises(ValueError, match=rf"shard-00000\.npy row {row} do not tile"):
        ds[0]


def test_index_read_in_record_batches_checks_rows_across_batches(stage2_build, tmp_path):
    """Shard indexes are read a record batch at a time (the writer emits fixed-size batches): a row that straddles two
    batches loads like one that does not, and a tiling error at a batch boundary is still found."""
    import pyarrow as pa

    from trainer.data_index import load_shard_index

    build = _copy_build(stage2_build, tmp_path / "b")
    idx_path = build / "shards/shard-00000.idx.arrow"
    table = pa.ipc.open_file(str(idx_path)).read_all()
    rows = table["row"].to_numpy()
    multi = np.flatnonzero(np.bincount(rows) > 1)[0]
    cut = int(np.flatnonzero(rows == multi)[1])  # between the first and second segment of a row with several

    def write(t: pa.Table) -> None:
        with pa.OSFile(str(idx_path), "wb") as sink, pa.ipc.new_file(sink, t.schema) as writer:
            writer.write_table(t.slice(0, cut))
            writer.write_table(t.slice(cut))

    n_rows, seq_len = int(rows.max()) + 1, int((table["start"].to_numpy() + table["length"].to_numpy()).max())
    shard = "shards/shard-00000.npy"
    one_batch = load_shard_index(stage2_build, shard, n_rows, seq_len)
    write(table)
    assert pa.ipc.open_file(str(idx_path)).num_record_batches == 2
    two_batches = load_shard_index(build, shard, n_rows, seq_len)
    for field in ("row_first_seg", "seg_start", "seg_len", "covered"):
        np.testing.assert_array_equal(getattr(two_batches, field), getattr(one_batch, field))
    starts = table["start"].to_numpy().copy()
    starts[cut] += 1  # the first segment of the second batch no longer follows the last of the first
    write(table.set_column(table.schema.get_field_index("start"), "start", pa.array(starts)))
    with pytest.raises(ValueError, match=rf"row {multi} do not tile"):
        load_shard_index(build, shard, n_rows, seq_len)
