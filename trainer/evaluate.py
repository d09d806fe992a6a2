"""Evaluation in the training loop: held-out loss and bits per byte per source, and downstream tasks (trainer/tasks.py).

Held-out data is carved by the build (one file pair per source, docs/FORMAT.md):
  BUILD/holdout/<source>.npy          1-D tokens: each document's tokens, then EOS, concatenated
  BUILD/holdout/<source>.idx.parquet  doc_id, start, length (tokens incl. EOS), n_chars, n_bytes (UTF-8 of the text)

Scoring follows training's document masking: a held-out document is its own sequence (positions from 0, attention
inside it only), every token after the first is a target (EOS included), and a document longer than the row is cut
into row-sized pieces exactly as the builder cuts rows. Per source:
  loss = Σ NLL / number of targets                         (nats per token, comparable to the training loss)
  bpb  = Σ NLL / (ln 2 · Σ n_bytes)                         (bits per UTF-8 byte: tokenizers compare)
The first token of each piece is conditioned on nothing and never a target (as in training), so bpb counts its
bytes with no loss: a slight underestimate, the same for every mixture and checkpoint of one tokenizer.

Under FSDP every rank takes part in every forward (the parameters are gathered collectively): the rows are dealt
round-robin, a rank with no row left runs an empty one, and the sums are all-reduced; rank 0 writes. Ulysses
sequence parallelism is switched off for evaluation (each rank scores whole rows of its own).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer import tasks as task_lib
from trainer.data import IGNORE, Sample, collate

LN2 = math.log(2)
HOLDOUT_DIR = "holdout"


@dataclass(frozen=True)
class EvalConfig:
    every: int = 0  # evaluate every N steps (0: only at the end); evaluation runs when every > 0 or tasks are given
    tasks: tuple[str, ...] = ()  # task names or JSONL paths (trainer/tasks.py)
    limit: int = 200  # first N items of each task
    heldout: bool = True  # per-source held-out loss / bpb when the build has held-out data
    max_tokens: int = 0  # per held-out source: score only its first documents up to this many tokens (0: all)
    row_tokens: int | None = None  # tokens per evaluation forward (default: the model's row length)

    @property
    def enabled(self) -> bool:
        return self.every > 0 or bool(self.tasks)

    def due(self, step: int, last_step: int) -> bool:
        return self.enabled and ((self.every > 0 and step % self.every == 0) or step == last_step)


# ------------------------------------------------------------------------------------------------ held-out


@dataclass
class HeldoutSource:
    name: str
    tokens: np.ndarray  # 1-D, memory-mapped
    starts: np.ndarray  # int64 per document
    lengths: np.ndarray  # int64 per document (incl. EOS)
    n_bytes: int  # Σ UTF-8 bytes of the documents' text
    doc_bytes: np.ndarray | None = None  # per document

    def first_tokens(self, max_tokens: int) -> "HeldoutSource":
        """The first documents (index order: deterministic) holding at most `max_tokens` tokens, at least one."""
        if max_tokens <= 0 or int(self.lengths.sum()) <= max_tokens:
            return self
        n = max(1, int(np.searchsorted(np.cumsum(self.lengths), max_tokens, side="right")))
        return HeldoutSource(self.name, self.tokens, self.starts[:n], self.lengths[:n],
                             int(self.doc_bytes[:n].sum()), self.doc_bytes[:n])


def list_heldout(build: str | Path) -> list[str]:
    """Sources with held-out data: the manifest's `holdout` table when present, else the files on disk."""
    build = Path(build)
    names: list[str] = []
    try:
        from pipelines.shards.reader import connect

        con = connect(build)
        try:
            has = con.execute("select count(*) from information_schema.tables where table_name = 'holdout'") \
                .fetchone()[0]
            if has:
                names = [r[0] for r in con.execute("select source from holdout order by source").fetchall()]
        finally:
            con.close()
    except FileNotFoundError:
        pass
    if not names and (build / HOLDOUT_DIR).is_dir():
        names = sorted(p.name[:-len(".idx.parquet")] for p in (build / HOLDOUT_DIR).glob("*.idx.parquet"))
    return names


def load_heldout(build: str | Path, name: str) -> HeldoutSource:
    import pyarrow.parquet as pq

    base = Path(build) / HOLDOUT_DIR
    tokens = np.load(base / f"{name}.npy", mmap_mode="r")
    index = pq.read_table(base / f"{name}.idx.parquet", columns=["start", "length", "n_bytes"])
    starts = index["start"].to_numpy().astype(np.int64)
    lengths = index["length"].to_numpy().astype(np.int64)
    if len(starts) and int((starts + lengths).max()) > len(tokens):
        raise ValueError(f"{base / name}.idx.parquet points past the end of {name}.npy (damaged held-out data)")
    doc_bytes = index["n_bytes"].to_numpy().astype(np.int64)
    return HeldoutSource(name, tokens, starts, lengths, int(doc_bytes.sum()), doc_bytes)


def pack_pieces(lengths: list[int], row_tokens: int) -> list[list[tuple[int, int, int]]]:
    """Rows of (doc, offset, length) pieces: documents cut into pieces of at most `row_tokens`, packed in order
    into rows of at most `row_tokens` tokens (the same rows on every rank)."""
    rows: list[list[tuple[int, int, int]]] = []
    row: list[tuple[int, int, int]] = []
    used = 0
    for doc, n in enumerate(lengths):
        for off in range(0, n, row_tokens):
            piece = min(row_tokens, n - off)
            if used + piece > row_tokens:
                rows.append(row)
                row, used = [], 0
            row.append((doc, off, piece))
            used += piece
    if row:
        rows.append(row)
    return rows


def _sample(tokens: np.ndarray, lens: list[int]) -> Sample:
    return Sample(tokens.astype(np.int64), lens, [False] * len(lens), None)


def _empty_batch():
    """A two-token row without targets: what a rank runs when it has no row left (FSDP needs every rank)."""
    batch = collate([_sample(np.zeros(2, dtype=np.int64), [2])], "document", "document")
    batch.labels.fill_(IGNORE)
    return batch


def heldout_nll(model, source: HeldoutSource, row_tokens: int, rank: int, world: int,
                device: torch.device) -> tuple[float, int]:
    """(Σ NLL in nats, number of targets) of one source on this rank's share of the rows (not yet reduced)."""
    rows = pack_pieces(source.lengths.tolist(), row_tokens)
    nll = torch.zeros((), dtype=torch.float64, device=device)
    n_targets = 0
    for i in range(rank, rank + world * math.ceil(len(rows) / world), world):
        if i < len(rows):
            parts = [np.asarray(source.tokens[source.starts[d] + o: source.starts[d] + o + n]) for d, o, n in rows[i]]
            batch = collate([_sample(np.concatenate(parts), [n for _, _, n in rows[i]])], "document", "document")
        else:
            batch = _empty_batch()
        batch = batch.to(device)
        nll += model(batch.input_ids, batch.positions, batch.cu_seqlens, batch.max_seqlen, batch.labels).double()
        n_targets += batch.n_valid
    return float(nll), n_targets


# --------------------------------------------------------------------------------------------------- tasks


def request_logliks(model, encoded: list[task_lib.Encoded], row_tokens: int, rank: int, world: int,
                    device: torch.device) -> list[float]:
    """Σ log p(continuation | context) of every request (lm-eval's `loglikelihood`), identical on every rank.

    Requests are packed into rows of at most `row_tokens` tokens, each its own document (attention and positions
    restart), the model reads `tokens[:-1]`; the continuation's log-probabilities come from fp32 log-softmax."""
    inputs = [e.tokens[:-1] for e in encoded]
    rows = pack_pieces([len(x) for x in inputs], max(row_tokens, max(len(x) for x in inputs)))
    out = torch.zeros(len(encoded), dtype=torch.float64, device=device)
    for i in range(rank, rank + world * math.ceil(len(rows) / world), world):
        row = rows[i] if i < len(rows) else []
        if row:
            ids = np.concatenate([np.asarray(inputs[r], dtype=np.int64) for r, _, _ in row])
            batch = collate([_sample(ids, [n for _, _, n in row])], "document", "document").to(device)
        else:
            batch = _empty_batch().to(device)
        logits = model(batch.input_ids, batch.positions, batch.cu_seqlens, batch.max_seqlen)  # [T, V]
        offset = 0
        for r, _, n in row:
            enc = encoded[r]
            cont = torch.tensor(enc.tokens[-enc.n_cont:], device=device)
            pos = slice(offset + n - enc.n_cont, offset + n)  # positions predicting the continuation tokens
            logp = F.log_softmax(logits[pos].float(), dim=-1)
            out[r] = logp.gather(1, cont[:, None]).sum().double()
            offset += n
        del logits
    if torch.distributed.is_initialized() and world > 1:
        torch.distributed.all_reduce(out)  # each request was scored on exactly one rank
    return out.tolist()


@dataclass
class TaskData:
    name: str
    items: list[task_lib.Item]
    encoded: list[list[task_lib.Encoded]]


def load_tasks(names: tuple[str, ...], limit: int, tokenizer, prefix_id: int, max_length: int) -> list[TaskData]:
    out = []
    for spec in names:
        name, items = task_lib.load_items(spec, limit)
        encoded = [[task_lib.encode_request(tokenizer, r, prefix_id, max_length) for r in it.requests] for it in items]
        out.append(TaskData(name, items, encoded))
    return out


def build_tokenizer(build: str | Path):
    """The build's tokenizer (found by name as export-hf finds it, checked by its sha256) and its EOS id."""
    import hashlib

    from tokenizers import Tokenizer

    from pipelines.shards.reader import connect
    from trainer.hf import find_tokenizer

    con = connect(build)
    try:
        name, sha, eos = con.execute("select tokenizer, tokenizer_sha256, eos_id from build").fetchone()
    finally:
        con.close()
    path = find_tokenizer(str(name))
    if path is None or (sha and hashlib.sha256(path.read_bytes()).hexdigest() != sha):
        raise ValueError(f"--eval-tasks: the tokenizer of build {build} ({name!r}, sha256 {sha}) was not found "
                         "(looked in $MIDTRAIN_TOKENIZERS and the shared data's tokenizers/)")
    return Tokenizer.from_file(str(path)), int(eos)


# ----------------------------------------------------------------------------------------------- evaluator


@contextlib.contextmanager
def _whole_rows(model):
    """Switch Ulysses off (each rank scores whole rows), eval mode, no autograd; restored afterwards."""
    attns = [m for m in model.modules() if hasattr(m, "sp_group")]
    groups = [m.sp_group for m in attns]
    was_training = model.training
    for m in attns:
        m.sp_group = None
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, g in zip(attns, groups):
            m.sp_group = g
        model.train(was_training)


class Evaluator:
    """Loaded once per run; `evaluator(model, step)` returns the metrics.jsonl row (the same on every rank)."""

    def __init__(self, cfg: EvalConfig, build: str | Path | list, seq_len: int, rank: int = 0, world: int = 1,
                 device: torch.device | None = None) -> None:
        self.cfg, self.rank, self.world = cfg, rank, world
        self.device = device or torch.device("cpu")
        self.row_tokens = cfg.row_tokens or seq_len
        builds = [build] if isinstance(build, (str, Path)) else list(build)
        self.heldout = []
        if cfg.heldout:
            seen: set[str] = set()
            for b in builds:  # a source held out by two builds is scored once (from the first)
                self.heldout += [load_heldout(b, s).first_tokens(cfg.max_tokens) for s in list_heldout(b)
                                 if s not in seen]
                seen |= set(list_heldout(b))
        self.tasks: list[TaskData] = []
        if cfg.tasks:
            tokenizer, eos = build_tokenizer(builds[0])
            self.tasks = load_tasks(cfg.tasks, cfg.limit, tokenizer, eos, seq_len)

    def __call__(self, model, step: int) -> dict:
        row: dict = {"step": step}
        with _whole_rows(model):
            if self.heldout:
                sums = torch.zeros(len(self.heldout), 2, dtype=torch.float64, device=self.device)
                for i, src in enumerate(self.heldout):
                    nll, n = heldout_nll(model, src, self.row_tokens, self.rank, self.world, self.device)
                    sums[i, 0], sums[i, 1] = nll, n
                if torch.distributed.is_initialized() and self.world > 1:
                    torch.distributed.all_reduce(sums)
                row["eval"] = {src.name: {"loss": float(sums[i, 0] / max(sums[i, 1], 1.0)),
                                          "bpb": float(sums[i, 0]) / (LN2 * max(src.n_bytes, 1))}
                               for i, src in enumerate(self.heldout)}
            if self.tasks:
                row["tasks"] = {}
                for task in self.tasks:
                    flat = [e for enc in task.encoded for e in enc]
                    lls = request_logliks(model, flat, self.row_tokens, self.rank, self.world, self.device)
                    grouped, k = [], 0
                    for enc in task.encoded:
                        grouped.append(lls[k:k + len(enc)])
                        k += len(enc)
                    row["tasks"][task.name] = task_lib.task_metrics(task.items, task.encoded, grouped)
        return row


def flat_metrics(row: dict) -> dict[str, float]:
    """An eval row as flat metric names: `bpb:<source>`, `loss:<source>`, `<task>:acc`, `<task>:bpb`, ..."""
    out = {}
    for source, m in (row.get("eval") or {}).items():
        out[f"bpb:{source}"], out[f"loss:{source}"] = m["bpb"], m["loss"]
    for task, m in (row.get("tasks") or {}).items():
        out.update({f"{task}:{k}": v for k, v in m.items() if k != "n"})
    return out


def plot_eval(run: Path) -> Path | None:
    """RUN/eval.png: held-out bpb per source and task metrics over steps."""
    from trainer.metrics import read_metrics

    rows = [r for r in read_metrics(run) if "eval" in r or "tasks" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        for k, v in flat_metrics(r).items():
            if k.startswith("bpb:") or k.endswith((":bpb", ":acc", ":acc_norm")):
                series.setdefault(k, []).append((r["step"], v))
    panels = [("held-out bits per byte", [k for k in series if k.startswith("bpb:")]),
              ("task bits per byte", [k for k in series if k.endswith(":bpb")]),
              ("task accuracy", [k for k in series if k.endswith((":acc", ":acc_norm"))])]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for k in sorted(keys):
            xs, ys = zip(*series[k])
            ax.plot(xs, ys, marker="o", ms=3, lw=1.2, label=k)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(run.name)
    fig.tight_layout()
    out = run / "eval.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def make_evaluator(cfg, seq_len: int, env) -> Evaluator | None:
    """The run's evaluator (None when no evaluation was asked for): the hook trainer/train.py calls."""
    ecfg = eval_config(cfg)
    if not ecfg.enabled:
        return None
    return Evaluator(ecfg, run_builds(cfg), seq_len, env.rank, env.world, env.device)


def run_builds(cfg) -> list[str]:
    """Every build a run trains on: the --mix builds, else --data."""
    mix = getattr(cfg, "mix", None)
    return list(mix["builds"]) if mix else [cfg.data]


def eval_config(cfg) -> EvalConfig:
    """EvalConfig from a TrainConfig's eval_* fields."""
    tasks = tuple(t.strip() for t in (getattr(cfg, "eval_tasks", None) or "").split(",") if t.strip())
    return EvalConfig(every=getattr(cfg, "eval_every", 0) or 0, tasks=tasks, limit=getattr(cfg, "eval_limit", 200),
                      max_tokens=getattr(cfg, "eval_max_tokens", 0) or 0)
