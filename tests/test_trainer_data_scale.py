"""trainer data path at scale (issue 10): bounded open shards, no `segments` table, padding never trained on, the same
global stream for any world size, exact resume, and the epoch permutation itself.

Builds are synthetic (trainer/data_synthetic.py) so they can have many shards and padded rows cheaply.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data import IGNORE, PackedDataset, StepLoader
from trainer.data_order import UnitPermutation
from trainer.data_synthetic import write_synthetic_build


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """Pretraining-style: documents concatenated across rows, ~270 shards of 3 rows, loss masks, no segments table."""
    lens = np.random.default_rng(1).integers(1, 150, 700)
    return write_synthetic_build(tmp_path_factory.mktemp("packed") / "b", lens, seq_len=64, rows_per_shard=3,
                                 with_masks=True, with_segments_table=False)


@pytest.fixture(scope="module", params=[True, False], ids=["n_pad", "no-n_pad"])
def padded(tmp_path_factory, request):
    """SFT / long-context style: one document per row, the rest padding; cut into 16-token units most rows end in
    padding-only units. Without `shards.n_pad` the loader must find them from the indexes alone."""
    lens = np.random.default_rng(2).integers(2, 64, 90)
    lens[lens % 16 == 1] += 1  # no unit holds a lone EOS: every unit has a target and unique tokens
    return write_synthetic_build(tmp_path_factory.mktemp("padded") / "b", lens, seq_len=64, rows_per_shard=4,
                                 one_doc_per_row=True, with_segments_table=False, with_n_pad=request.param), lens


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _key(batch) -> tuple:
    return tuple(batch.input_ids.tolist())


def _units_of(loader: StepLoader, steps: int) -> list[tuple]:
    """Every unit (as its token tuple, per micro_batch=1) this loader yields over `steps` steps, per step."""
    return [sorted(_key(b) for b in loader.next_step()) for _ in range(steps)]


def test_manifest_without_segments_table_is_enough(packed):
    from pipelines.shards.reader import connect

    con = connect(packed.path)
    tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
    con.close()
    assert "segments" not in tables
    ds = PackedDataset(packed.path, seq_len=32)
    real = 0
    for i in range(len(ds)):
        s = ds[i]
        assert sum(s.doc_lens) == 32 and not any(s.is_pad[:-1])
        ends = np.cumsum(s.doc_lens)
        for end, pad in zip(ends, s.is_pad):
            if pad:
                assert (s.tokens[end - s.doc_lens[-1]:] == ds.info.pad_id).all()
            elif end < 32:
                assert s.tokens[end - 1] == ds.info.eos_id  # a piece that does not end the unit ends its document
        real += sum(n for n, pad in zip(s.doc_lens, s.is_pad) if not pad)
        np.testing.assert_array_equal(s.loss_mask, (s.tokens % 3 == 0).astype(np.uint8))
    assert real == packed.n_tokens


def test_open_shards_stay_bounded(packed):
    """~270 shards with tokens + masks, at most 4 open: never more than 2 x 4 extra file descriptors, shards evicted
    and reopened, and every real unit of one epoch still served."""
    ds = PackedDataset(packed.path, seq_len=32, max_open_shards=4)
    n_units = len(ds)
    loader = StepLoader(ds, seed=0, rank=0, world=1, micro_batch=2, grad_accum=3)
    base = _open_fds()
    seen: Counter = Counter()
    most = 0
    while loader.epoch == 0:
        for b in loader.next_step():
            seen.update(tuple(b.input_ids[i:i + 32].tolist()) for i in range(0, len(b.input_ids), 32))
        most = max(most, _open_fds() - base)
    assert 0 < most <= 2 * 4
    assert ds.shards.peak_open == 4 and ds.shards.n_opened > packed.n_shards  # evicted and reopened
    assert sum(seen.values()) >= n_units  # the last step wraps into epoch 1
    every_unit = Counter(tuple(ds[i].tokens.tolist()) for i in range(n_units) if not ds.is_padding(i))
    assert all(seen[k] >= every_unit[k] for k in every_unit)


def test_padding_only_units_are_never_yielded(padded):
    build, lens = padded
    ds = PackedDataset(build.path, seq_len=16, max_open_shards=3)
    expected = int(np.sum(-(-lens // 16)))  # units of each row holding at least one real token
    assert len(ds) == 4 * len(lens) > expected
    loader = StepLoader(ds, seed=5, rank=0, world=1, micro_batch=1, grad_accum=1)  # stream order, unsorted
    yielded = []
    while loader.epoch == 0:
        for b in loader.next_step():
            assert (b.labels != IGNORE).any()
            assert not (b.input_ids == ds.info.pad_id).all()
            yielded.append(_key(b))
    assert len(yielded) >= expected and len(set(yielded[:expected])) == expected
    every_real = {tuple(ds[i].tokens.tolist()) for i in range(len(ds)) if not ds.is_padding(i)}
    assert len(every_real) == expected
    assert set(yielded[:expected]) == every_real  # one epoch = every real unit once, no padding-only unit


@pytest.mark.parametrize("which", ["packed", "padded"])
def test_global_stream_is_the_same_for_one_or_two_ranks(which, packed, padded):
    build = packed if which == "packed" else padded[0]
    ds = PackedDataset(build.path, seq_len=16, max_open_shards=5)
    one = StepLoader(ds, seed=9, rank=0, world=1, micro_batch=1, grad_accum=4)
    ranks = [StepLoader(PackedDataset(build.path, seq_len=16, max_open_shards=5), seed=9, rank=r, world=2,
                        micro_batch=1, grad_accum=2) for r in range(2)]
    for _ in range(40):  # crosses an epoch boundary on the padded build
        whole = sorted(_key(b) for b in one.next_step())
        split = [[_key(b) for b in loader.next_step()] for loader in ranks]
        assert not set(split[0]) & set(split[1])
        assert sorted(split[0] + split[1]) == whole
    assert ranks[0].state_dict()["cursor"] == ranks[1].state_dict()["cursor"] == one.cursor


def test_resume_is_exact_across_epochs_and_skips(padded):
    build, _ = padded
    ds = PackedDataset(build.path, seq_len=16)
    a = StepLoader(ds, seed=3, rank=1, world=2, micro_batch=2, grad_accum=2)
    full = [[b.input_ids for b in a.next_step()] for _ in range(30)]
    assert a.epoch >= 1
    b = StepLoader(ds, seed=3, rank=1, world=2, micro_batch=2, grad_accum=2)
    for _ in range(17):
        b.next_step()
    fresh = StepLoader(PackedDataset(build.path, seq_len=16), seed=0, rank=1, world=2, micro_batch=2, grad_accum=2)
    fresh.load_state_dict(b.state_dict())  # the seed comes from the state too
    rest = [[x.input_ids for x in fresh.next_step()] for _ in range(13)]
    assert all(torch.equal(x, y) for s, t in zip(full[17:], rest) for x, y in zip(s, t))


def test_missing_shard_index_names_the_file(packed, tmp_path):
    import shutil

    build = Path(shutil.copytree(packed.path, tmp_path / "b"))
    (build / "shards/shard-00002.idx.arrow").unlink()
    ds = PackedDataset(build, seq_len=32)  # start-up reads no index
    ds[0]
    from trainer.integrity import DataError

    with pytest.raises(DataError, match=r"shard-00002\.idx\.arrow: missing"):  # named, as damaged data is
        ds[int(ds.row_offset[2]) * 2]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4097])
def test_epoch_permutation_is_a_keyed_bijection(n):
    perm = UnitPermutation(n, seed=11, epoch=0)
    order = perm(np.arange(n))
    assert sorted(order.tolist()) == list(range(n))
    np.testing.assert_array_equal(order, UnitPermutation(n, seed=11, epoch=0)(np.arange(n)))
    np.testing.assert_array_equal(perm(np.arange(n)[n // 2:]), order[n // 2:])  # O(1) random access = resume
    if n >= 64:
        assert not np.array_equal(order, UnitPermutation(n, seed=11, epoch=1)(np.arange(n)))
        assert not np.array_equal(order, UnitPermutation(n, seed=12, epoch=0)(np.arange(n)))
        assert np.mean(order == np.arange(n)) < 0.1  # actually shuffled


def test_resuming_a_position_saved_with_another_order_warns(packed):
    """Checkpoints from before the Feistel order hold a cursor of another permutation: resuming must say so."""
    loader = StepLoader(PackedDataset(packed.path, seq_len=32), seed=0, rank=0, world=1, micro_batch=1, grad_accum=1)
    loader.load_state_dict(StepLoader(loader.ds, 1, 0, 1, 1, 1).state_dict())  # same order: silent
    with pytest.warns(UserWarning, match="another epoch order"):
        loader.load_state_dict({"epoch": 0, "cursor": 5, "seed": 0, "units_per_step": 1})
    assert loader.cursor == 5 and loader.seed == 0
