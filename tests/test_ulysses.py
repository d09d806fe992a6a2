"""Ulysses sequence parallelism: 2 gloo processes on CPU must reproduce the single-process run exactly (up to fp
rounding) — attention outputs, input gradients, and the weight gradients of a small attention + LM-head layer."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from midtrain.kernels.attention import varlen_attention
from midtrain.kernels.loss import linear_cross_entropy
from midtrain.kernels.rope import apply_rope, positions_from_cu_seqlens, rope_cos_sin
from midtrain.kernels.ulysses import (
    head_to_seq,
    local_positions,
    seq_to_head,
    shard_tokens,
    ulysses_attention,
)

T, H, D, V, WORLD = 24, 4, 8, 40, 2
CU = torch.tensor([0, 5, 14, 15, 24], dtype=torch.int32)  # documents straddle the rank boundary at token 12


def _inputs():
    g = torch.Generator().manual_seed(0)
    return {
        "q": torch.randn(T, H, D, generator=g, dtype=torch.float64),
        "k": torch.randn(T, H, D, generator=g, dtype=torch.float64),
        "v": torch.randn(T, H, D, generator=g, dtype=torch.float64),
        "dout": torch.randn(T, H, D, generator=g, dtype=torch.float64),
        "x": torch.randn(T, H * D, generator=g, dtype=torch.float64),
        "wqkv": torch.randn(3 * H * D, H * D, generator=g, dtype=torch.float64) / (H * D) ** 0.5,
        "head": torch.randn(V, H * D, generator=g, dtype=torch.float64),
        "labels": torch.randint(0, V, (T,), generator=g),
    }


def _layer_loss(x, wqkv, head, labels, positions, attn):
    """x -> qkv -> RoPE -> document-masked attention -> residual -> LM-head cross-entropy (sum over tokens)."""
    q, k, v = (x @ wqkv.T).reshape(x.shape[0], 3, H, D).unbind(1)
    cos, sin = rope_cos_sin(positions, D, dtype=x.dtype)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    h = x + attn(q, k, v).reshape(x.shape[0], H * D)
    return linear_cross_entropy(h, head, labels, reduction="sum", chunk_size=5)


def _single_process(inp):
    q, k, v = (inp[n].clone().requires_grad_() for n in "qkv")
    out = varlen_attention(q, k, v, CU, int((CU[1:] - CU[:-1]).max()), backend="dense")
    out.backward(inp["dout"])
    wqkv, head = inp["wqkv"].clone().requires_grad_(), inp["head"].clone().requires_grad_()
    loss = _layer_loss(inp["x"], wqkv, head, inp["labels"], positions_from_cu_seqlens(CU),
                       lambda q, k, v: varlen_attention(q, k, v, CU, 9, backend="dense"))
    loss.backward()
    return {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad, "loss": loss.detach(),
            "dwqkv": wqkv.grad, "dhead": head.grad}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        inp = _inputs()
        shard = lambda t: shard_tokens(t, rank, WORLD)  # noqa: E731
        # raw re-sharding round trip
        q_local = shard(inp["q"])
        assert torch.equal(head_to_seq(seq_to_head(q_local)), q_local)
        heads = slice(rank * H // WORLD, (rank + 1) * H // WORLD)
        assert torch.equal(seq_to_head(q_local), inp["q"][:, heads])
        # attention alone: outputs and q/k/v gradients
        q, k, v = (shard(inp[n]).clone().requires_grad_() for n in "qkv")
        out = ulysses_attention(q, k, v, CU, 9, backend="dense")
        out.backward(shard(inp["dout"]))
        # a full layer: weights are replicated, so their gradients are summed over the SP group
        wqkv, head = inp["wqkv"].clone().requires_grad_(), inp["head"].clone().requires_grad_()
        loss = _layer_loss(shard(inp["x"]), wqkv, head, shard(inp["labels"]), local_positions(CU, T, rank, WORLD),
                           lambda q, k, v: ulysses_attention(q, k, v, CU, 9, backend="dense"))
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        for w in (wqkv, head):
            dist.all_reduce(w.grad)
        torch.save({"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad, "loss": total,
                    "dwqkv": wqkv.grad, "dhead": head.grad}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sp_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ulysses")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", ["out", "dq", "dk", "dv"])
def test_ulysses_attention_matches_single_process(sp_results, name):
    ref = _single_process(_inputs())[name]
    got = torch.cat([r[name] for r in sp_results])  # rank order == token order
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["loss", "dwqkv", "dhead"])
def test_ulysses_layer_loss_and_weight_grads_match(sp_results, name):
    ref = _single_process(_inputs())[name]
    for r in sp_results:
        torch.testing.assert_close(r[name], ref, rtol=1e-10, atol=1e-10)


def test_ulysses_without_process_group_is_plain_attention():
    inp = _inputs()
    out = ulysses_attention(inp["q"], inp["k"], inp["v"], CU, 9, backend="dense")
    torch.testing.assert_close(out, varlen_attention(inp["q"], inp["k"], inp["v"], CU, 9, backend="dense"))


def test_local_positions_follow_the_full_row():
    # rank 1 starts mid-document (doc 2 spans tokens 5..13): its positions continue, not restart at 0
    assert local_positions(CU, T, 1, WORLD).tolist() == [7, 8, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="divisible"):
        shard_tokens(torch.zeros(25), 0, WORLD)


def test_cli_train_sp2_reproduces_the_single_process_run(stage2_build, tmp_path):
    """`cli.py train --nproc 2 --sp 2`: both ranks share each 128-token row (64 tokens each, documents crossing the
    split); losses and gradient norms must equal the one-process run on the same rows."""
    import subprocess
    import sys

    from trainer.metrics import read_metrics

    root = Path(__file__).resolve().parents[1]
    common = ["--data", str(stage2_build), "--preset", "tiny", "--seq-len", "128", "--steps", "4", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name, extra in (("sp1", ["--nproc", "1"]), ("sp2", ["--nproc", "2", "--sp", "2"])):
        proc = subprocess.run([sys.executable, str(root / "cli.py"), "train", *common, "--out", str(tmp_path / name),
                               *extra], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single, sp = read_metrics(tmp_path / "sp1"), read_metrics(tmp_path / "sp2")
    assert len(single) == len(sp) == 4
    for a, b in zip(single, sp):
        assert b["n_tokens"] == a["n_tokens"] == 128 and b["n_valid"] == a["n_valid"]
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert single[-1]["loss"] != single[0]["loss"]  # the runs trained (weights moved between steps)
