"""Stream a finished build (docs/FORMAT.md) as packed, document-masked microbatches.

A build row of `build_seq_len` tokens is cut into `build_seq_len // seq_len` *units* of `seq_len` tokens (one unit
per row when they match). A unit's document lengths come from its shard's index `shard-NNNNN.idx.arrow` (+ a
trailing pad run); a document cut by a unit boundary simply becomes two pieces, exactly as the builder does at row
boundaries.

Per-rank memory and start-up do not grow with the build (trainer/data_index.py): only the manifest's `build` and
`shards` tables are read up front; a shard's files and index are opened when one of its units is needed, and at
most `max_open_shards` shards are open at once.

Order: every epoch is a keyed pseudo-random permutation of all units (trainer/data_order.py), computed from
(seed, epoch) on every rank without storing it; an optimizer step takes the next `world * grad_accum * micro_batch`
units of that stream, rank r the r-th slice. Units made only of padding (the tail of the last row, or of padded rows
of long-context/SFT builds cut into shorter units) are skipped when drawn; every rank makes the same decisions for
the whole step, so the global stream does not depend on the world size. The only state is (epoch, cursor), the
cursor counting positions of the epoch's permutation, so resume is exact and independent of how many steps ran.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.data_index import DEFAULT_MAX_OPEN_SHARDS, ShardCache
from trainer.data_order import UnitPermutation

IGNORE = -100
ORDER = "feistel-v1"  # saved with the data position: a checkpoint of another order cannot resume exactly


@dataclass(frozen=True)
class BuildInfo:
    path: Path
    seq_len: int
    pad_id: int
    eos_id: int
    rope_theta: float | None
    has_loss_mask: bool
    shards: tuple[tuple[str, int], ...]  # (path relative to the build, n_rows)
    shard_n_pad: tuple[int, ...] | None = None  # padding tokens per shard (manifest `shards.n_pad`), when listed


def read_build(path: str | Path) -> BuildInfo:
    """The `build` and `shards` tables of a manifest (one row per shard: small whatever the build's size). The
    manifest's `format_version` says which columns exist (docs/FORMAT.md); a newer format is refused."""
    from pipelines.shards.format import FORMAT_VERSION
    from pipelines.shards.reader import connect, format_version

    path = Path(path)
    con = connect(path)
    try:
        version = format_version(con)
        if version > FORMAT_VERSION:
            raise ValueError(f"{path}: manifest format {version} is newer than this trainer's ({FORMAT_VERSION}); "
                             "update midtrain")
        seq_len, pad_id, eos_id = con.execute("select seq_len, pad_id, eos_id from build").fetchone()
        if version >= 2:
            theta, has_mask = con.execute("select rope_theta, has_loss_mask from build").fetchone()
            rows = con.execute("select path, n_rows, n_pad from shards order by path").fetchall()
        else:  # format 1 (before `format_version`): no RoPE theta, loss masks or padding counts recorded
            theta, has_mask = None, False
            rows = con.execute("select path, n_rows, null from shards order by path").fetchall()
        has_mask = bool(has_mask)
    finally:
        con.close()
    if not rows:
        raise ValueError(f"{path}/manifest.duckdb lists no shards")
    n_pad = None if any(r[2] is None for r in rows) else tuple(int(r[2]) for r in rows)
    return BuildInfo(path, int(seq_len), int(pad_id), int(eos_id), None if theta is None else float(theta),
                     has_mask, tuple((p, int(n)) for p, n, _ in rows), n_pad)


@dataclass
class Sample:
    """One unit: `seq_len` tokens, the lengths of the pieces covering it, and which pieces are padding."""

    tokens: np.ndarray  # int64 [seq_len]
    doc_lens: list[int]
    is_pad: list[bool]
    loss_mask: np.ndarray | None  # uint8 [seq_len], 1 = token counts as a target


class PackedDataset:
    """Random access to the units of a build; unit u is chunk `u % chunks_per_row` of global row
    `u // chunks_per_row`.

    `len()` counts every unit slot of the build's rows, including the padding-only ones that StepLoader skips
    (`is_padding`); telling those apart needs the shard indexes, which are only read when needed.
    """

    def __init__(self, build: str | Path, seq_len: int | None = None,
                 max_open_shards: int = DEFAULT_MAX_OPEN_SHARDS) -> None:
        self.info = read_build(build)
        self.seq_len = seq_len or self.info.seq_len
        if self.info.seq_len % self.seq_len:
            raise ValueError(f"seq_len {self.seq_len} must divide the build's seq_len {self.info.seq_len} ({build})")
        self.chunks_per_row = self.info.seq_len // self.seq_len
        self.row_offset = np.cumsum([0] + [n for _, n in self.info.shards])  # first global row of each shard
        self.shards = ShardCache(self.info.path, self.info.shards, self.info.seq_len, max_open_shards)
        # a padding-only unit needs seq_len padding tokens in its shard: most shards cannot hold one
        n_pad = self.info.shard_n_pad
        self._may_pad = np.ones(len(self.info.shards), dtype=bool) if n_pad is None \
            else np.asarray(n_pad) >= self.seq_len

    def __len__(self) -> int:
        return int(self.row_offset[-1]) * self.chunks_per_row

    def _locate(self, unit: int) -> tuple[int, int, int]:
        """unit -> (shard, row in the shard, offset of the unit in the row)."""
        if unit < 0:
            unit += len(self)
        if not 0 <= unit < len(self):
            raise IndexError(f"unit {unit} outside [0, {len(self)})")
        grow, chunk = divmod(unit, self.chunks_per_row)
        s = int(np.searchsorted(self.row_offset, grow, side="right")) - 1
        return s, grow - int(self.row_offset[s]), chunk * self.seq_len

    def is_padding(self, unit: int) -> bool:
        """Whether the unit holds padding only (and so must never be trained on)."""
        s, row, lo = self._locate(int(unit))
        if not self._may_pad[s]:
            return False
        shard = self.shards.get(s)
        if shard.tokens[row, lo] != self.info.pad_id:  # padding is only at the end of a row
            return False
        return int(shard.index.covered[row]) <= lo

    def real_tokens(self, unit: int) -> int:
        """Tokens of the unit that are not padding (its row's segments cover them); reads an index only for shards
        that hold padding."""
        s, row, lo = self._locate(int(unit))
        if self.info.shard_n_pad is not None and self.info.shard_n_pad[s] == 0:
            return self.seq_len
        covered = int(self.shards.get(s).index.covered[row])
        return max(0, min(self.seq_len, covered - lo))

    def __getitem__(self, index: int) -> Sample:
        s, row, lo = self._locate(int(index))
        hi = lo + self.seq_len
        shard = self.shards.get(s)
        # copies: a view would keep the shard's map (and its file) open after the shard is evicted
        tokens = np.array(shard.tokens[row, lo:hi], dtype=np.int64)
        mask = None if shard.mask is None else np.array(shard.mask[row, lo:hi], dtype=np.uint8)
        idx = shard.index
        a, b = idx.row_first_seg[row], idx.row_first_seg[row + 1]
        starts = np.clip(idx.seg_start[a:b], lo, hi)
        ends = np.clip(idx.seg_start[a:b] + idx.seg_len[a:b], lo, hi)
        doc_lens = [int(x) for x in ends - starts if x > 0]
        covered = sum(doc_lens)
        is_pad = [False] * len(doc_lens)
        if covered < self.seq_len:  # trailing padding becomes its own piece with no loss
            doc_lens.append(self.seq_len - covered)
            is_pad.append(True)
        return Sample(tokens, doc_lens, is_pad, mask)


@dataclass
class Batch:
    input_ids: torch.Tensor  # int64 [T]
    positions: torch.Tensor  # int64 [T]
    labels: torch.Tensor  # int64 [T], IGNORE where no loss
    cu_seqlens: torch.Tensor  # int32 [n_docs + 1]
    max_seqlen: int
    doc_lens: list[int]

    @property
    def n_valid(self) -> int:
        return int((self.labels != IGNORE).sum())

    @property
    def attn_cost(self) -> int:
        """Σ doc_len², proportional to the attention work of this microbatch."""
        return sum(n * n for n in self.doc_lens)

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.input_ids.to(device), self.positions.to(device), self.labels.to(device),
                     self.cu_seqlens.to(device), self.max_seqlen, self.doc_lens)


def collate(samples: list[Sample], positions: str = "document", attention: str = "document") -> Batch:
    """Concatenate units into one flattened row with per-document labels and positions.

    attention="document" (ours): labels[i] = token[i+1] when i+1 is in the same document, so each document's first
    token is never a target (it cannot be predicted from another document) and `cu_seqlens` stops attention at
    document boundaries. attention="causal" (Instella stage 1/2 and SFT, plain OLMo): each unit's documents form one
    causal sequence, so a document's first token is the target of the previous document's last token (its EOS).
    Padding never has targets, and with a loss mask a target counts only where the mask is 1. Positions restart at
    every document ("document") or count within the unit ("absolute").
    """
    ids, labels, pos, lens = [], [], [], []
    for smp in samples:
        n_tok = len(smp.tokens)
        if attention == "causal":  # the unit's real pieces become one sequence; padding stays its own piece
            real = sum(n for n, pad in zip(smp.doc_lens, smp.is_pad) if not pad)
            pieces = [(n, pad) for n, pad in ((real, False), (n_tok - real, True)) if n]
        else:
            pieces = list(zip(smp.doc_lens, smp.is_pad))
        lab = np.full(n_tok, IGNORE, dtype=np.int64)
        start = 0
        for n, pad in pieces:
            if not pad:
                lab[start:start + n - 1] = smp.tokens[start + 1:start + n]
            start += n
        if smp.loss_mask is not None:
            target_counts = np.append(smp.loss_mask[1:], 0).astype(bool)
            lab[~target_counts] = IGNORE
        if positions == "absolute":
            p = np.arange(n_tok)
        else:
            p = np.concatenate([np.arange(n) for n in smp.doc_lens])
        ids.append(smp.tokens)
        labels.append(lab)
        pos.append(p)
        lens.extend(n for n, _ in pieces)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    return Batch(torch.from_numpy(np.concatenate(ids)), torch.from_numpy(np.concatenate(pos)),
                 torch.from_numpy(np.concatenate(labels)), torch.from_numpy(cu), max(lens), lens)


class StepLoader:
    """Yields, for each optimizer step, this rank's microbatches sorted heaviest (Σ doc_len²) first."""

    def __init__(self, dataset: PackedDataset, seed: int, rank: int, world: int, micro_batch: int, grad_accum: int,
                 positions: str = "document", attention: str = "document") -> None:
        self.ds, self.seed, self.rank, self.world = dataset, seed, rank, world
        self.micro_batch, self.grad_accum, self.positions = micro_batch, grad_accum, positions
        self.attention = attention
        self.epoch, self.cursor = 0, 0
        self._order: UnitPermutation | None = None
        self._order_epoch = -1

    @property
    def units_per_step(self) -> int:
        return self.world * self.grad_accum * self.micro_batch

    def _permutation(self, epoch: int) -> UnitPermutation:
        if self._order is None or self._order_epoch != epoch:
            self._order, self._order_epoch = UnitPermutation(len(self.ds), self.seed, epoch), epoch
        return self._order

    def _take(self, n: int) -> list[int]:
        """The next n non-padding units of the global stream (the same on every rank)."""
        units: list[int] = []
        skipped = 0
        while len(units) < n:
            order = self._permutation(self.epoch)
            stop = min(len(self.ds), self.cursor + n - len(units))
            for unit in order(np.arange(self.cursor, stop)).tolist():
                self.cursor += 1
                if self.ds.is_padding(unit):
                    skipped += 1
                    if skipped >= len(self.ds):
                        raise ValueError(f"{self.ds.info.path}: every unit is padding, nothing to train on")
                else:
                    units.append(unit)
                    skipped = 0
            if self.cursor == len(self.ds):
                self.epoch, self.cursor = self.epoch + 1, 0
        return units

    def next_step(self) -> list[Batch]:
        units = self._take(self.units_per_step)
        per_rank = self.grad_accum * self.micro_batch
        mine = units[self.rank * per_rank:(self.rank + 1) * per_rank]
        batches = [collate([self.ds[u] for u in mine[i:i + self.micro_batch]], self.positions, self.attention)
                   for i in range(0, per_rank, self.micro_batch)]
        return sorted(batches, key=lambda b: b.attn_cost, reverse=True)  # stable: ties keep stream order

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "units_per_step": self.units_per_step,
                "order": ORDER}

    def load_state_dict(self, state: dict) -> None:
        # The cursor counts positions of the global stream, so a different world size / accumulation resumes at the
        # same place in the data (only an identical layout reproduces the uninterrupted run bit for bit).
        if state.get("order") != ORDER:
            warnings.warn(f"the data position was saved with another epoch order ({state.get('order', 'numpy')}); "
                          f"resuming at epoch {state['epoch']}, cursor {state['cursor']} of the {ORDER} order, so this "
                          "epoch may repeat or skip units", stacklevel=2)
        self.epoch, self.cursor, self.seed = state["epoch"], state["cursor"], state["seed"]
        self._order = None  # the permutation is keyed by the seed
