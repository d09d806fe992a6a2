"""Stream a finished build (docs/FORMAT.md) as packed, document-masked microbatches.

A build row of `build_seq_len` tokens is cut into `build_seq_len // seq_len` *units* of `seq_len` tokens (one unit
per row when they match). A unit's document lengths come from the manifest's `segments` table (+ a trailing pad run);
a document cut by a unit boundary simply becomes two pieces, exactly as the builder does at row boundaries.

Order: every epoch is a permutation of all units drawn from (seed, epoch); an optimizer step takes the next
`world * grad_accum * micro_batch` units of that stream, rank r the r-th slice. The only state is (epoch, cursor),
so resume is exact and independent of how many steps ran before.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IGNORE = -100


@dataclass(frozen=True)
class BuildInfo:
    path: Path
    seq_len: int
    pad_id: int
    eos_id: int
    rope_theta: float | None
    has_loss_mask: bool
    shards: tuple[tuple[str, int], ...]  # (path relative to the build, n_rows)


def read_build(path: str | Path) -> BuildInfo:
    from pipelines.manifest import connect

    path = Path(path)
    con = connect(path)
    try:
        cols = {r[0] for r in con.execute("select column_name from information_schema.columns "
                                          "where table_name = 'build'").fetchall()}
        seq_len, pad_id, eos_id = con.execute("select seq_len, pad_id, eos_id from build").fetchone()
        theta = con.execute("select rope_theta from build").fetchone()[0] if "rope_theta" in cols else None
        has_mask = bool(con.execute("select has_loss_mask from build").fetchone()[0]) if "has_loss_mask" in cols \
            else False
        shards = tuple(con.execute("select path, n_rows from shards order by path").fetchall())
    finally:
        con.close()
    if not shards:
        raise ValueError(f"{path}/manifest.duckdb lists no shards")
    return BuildInfo(path, int(seq_len), int(pad_id), int(eos_id), None if theta is None else float(theta),
                     has_mask, tuple((p, int(n)) for p, n in shards))


@dataclass
class Sample:
    """One unit: `seq_len` tokens, the lengths of the pieces covering it, and which pieces are padding."""

    tokens: np.ndarray  # int64 [seq_len]
    doc_lens: list[int]
    is_pad: list[bool]
    loss_mask: np.ndarray | None  # uint8 [seq_len], 1 = token counts as a target


class PackedDataset:
    """Random access to the units of a build: shards are memory-mapped, segment offsets held as numpy arrays."""

    def __init__(self, build: str | Path, seq_len: int | None = None) -> None:
        self.info = read_build(build)
        self.seq_len = seq_len or self.info.seq_len
        if self.info.seq_len % self.seq_len:
            raise ValueError(f"seq_len {self.seq_len} must divide the build's seq_len {self.info.seq_len} ({build})")
        self.chunks_per_row = self.info.seq_len // self.seq_len
        root = self.info.path
        self.tokens = [np.load(root / p, mmap_mode="r") for p, _ in self.info.shards]
        self.masks: list[np.ndarray | None] = []
        for p, _ in self.info.shards:
            mask_path = root / p.replace(".npy", ".mask.npy")
            self.masks.append(np.load(mask_path, mmap_mode="r") if mask_path.exists() else None)
        for (p, n_rows), arr in zip(self.info.shards, self.tokens):
            if arr.shape != (n_rows, self.info.seq_len):
                raise ValueError(f"{root / p}: shape {arr.shape} but the manifest says ({n_rows}, {self.info.seq_len})")
        self.row_offset = np.cumsum([0] + [n for _, n in self.info.shards])  # first global row of each shard
        self._load_segments()

    def _load_segments(self) -> None:
        from pipelines.manifest import connect

        con = connect(self.info.path)
        try:
            cols = con.execute("select shard, row, start, length from segments order by shard, row, start").fetchnumpy()
        finally:
            con.close()
        shard_index = {p: i for i, (p, _) in enumerate(self.info.shards)}
        names = list(cols["shard"])
        unknown = set(names) - shard_index.keys()
        if unknown:
            raise ValueError(f"{self.info.path}/manifest.duckdb: segments name unknown shards {sorted(unknown)[:3]}")
        shard = np.array([shard_index[n] for n in names], dtype=np.int64)
        row = np.asarray(cols["row"], dtype=np.int64)
        self.seg_start = np.asarray(cols["start"], dtype=np.int64)
        self.seg_len = np.asarray(cols["length"], dtype=np.int64)
        grow = self.row_offset[shard] + row  # global row of each segment (sorted)
        self.row_first_seg = np.searchsorted(grow, np.arange(self.row_offset[-1] + 1))
        # the format promises segments tile each row from 0 with padding only at the end
        expected = np.zeros_like(self.seg_start)
        first = self.row_first_seg[grow] == np.arange(len(grow))
        prev_end = np.concatenate([[0], self.seg_start[:-1] + self.seg_len[:-1]])
        expected[~first] = prev_end[~first]
        bad = np.nonzero(expected != self.seg_start)[0]
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"{self.info.path}: segments of {names[i]} row {row[i]} do not tile the row "
                             f"(segment at start {self.seg_start[i]}, expected {expected[i]})")
        # units made only of padding (the tail of the last row) are left out of the stream
        covered = np.bincount(grow, weights=self.seg_len, minlength=int(self.row_offset[-1]))
        unit = np.arange(int(self.row_offset[-1]) * self.chunks_per_row)
        self.units = unit[covered[unit // self.chunks_per_row] > (unit % self.chunks_per_row) * self.seq_len]

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, index: int) -> Sample:
        grow, chunk = divmod(int(self.units[index]), self.chunks_per_row)
        s = int(np.searchsorted(self.row_offset, grow, side="right")) - 1
        row = grow - int(self.row_offset[s])
        lo, hi = chunk * self.seq_len, (chunk + 1) * self.seq_len
        tokens = np.asarray(self.tokens[s][row, lo:hi], dtype=np.int64)
        mask = None if self.masks[s] is None else np.asarray(self.masks[s][row, lo:hi], dtype=np.uint8)
        a, b = self.row_first_seg[grow], self.row_first_seg[grow + 1]
        starts = np.clip(self.seg_start[a:b], lo, hi)
        ends = np.clip(self.seg_start[a:b] + self.seg_len[a:b], lo, hi)
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
        self._order: tuple[int, np.ndarray] | None = None

    @property
    def units_per_step(self) -> int:
        return self.world * self.grad_accum * self.micro_batch

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.ds)))
        return self._order[1]

    def _take(self, n: int) -> list[int]:
        units: list[int] = []
        while len(units) < n:
            order = self._permutation(self.epoch)
            k = min(n - len(units), len(order) - self.cursor)
            units.extend(order[self.cursor:self.cursor + k].tolist())
            self.cursor += k
            if self.cursor == len(order):
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
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "units_per_step": self.units_per_step}

    def load_state_dict(self, state: dict) -> None:
        # The cursor counts units of the global stream, so a different world size / accumulation resumes at the
        # same place in the data (only an identical layout reproduces the uninterrupted run bit for bit).
        self.epoch, self.cursor, self.seed = state["epoch"], state["cursor"], state["seed"]
