"""Document-masked attention backends on the GPU: which run without flash-attn, how exact, how fast.

    python bench/gpu_attention.py [--json out.json]          # CUDA (bench/gpu_check.sh)
    python bench/gpu_attention.py --device cpu --small       # CPU smoke of the same code path

Correctness: every backend of kernels.attention.varlen_attention on bf16 inputs (ragged documents, one of length 1)
against the dense block-diagonal reference computed in fp32 on the same values; relative error ||a-b||/||b|| of the
output and of dq, dk, dv. Speed: forward + backward of one packed row at the Instella-3B (32 x 80) and -1B
(16 x 128) head layouts, median of device-synchronised repeats, with full causal SDPA over the row (no document
masking) as the reference speed. TFLOP/s counts the document-masked work: 7 * sum(len^2) * heads * head_dim
(forward 2, backward 5, causal halves). A backend that fails is reported with its error; the others still run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from midtrain.kernels.attention import flash_attn_available, resolve_backend, varlen_attention  # noqa: E402

LAYOUTS = {"instella-3b": (32, 80), "instella-1b": (16, 128)}


def doc_lens(total: int, docs: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    cuts = sorted(torch.randperm(total - 1, generator=g)[: docs - 1].add(1).tolist())
    return [b - a for a, b in zip([0, *cuts], [*cuts, total])]


def cu_of(lens: list[int], device) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def fwd_bwd(backend: str, q, k, v, cu, max_len: int, upstream):
    xs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = varlen_attention(*xs, cu, max_len, backend=backend)
    out.backward(upstream.to(out.dtype))
    return out.detach(), [x.grad for x in xs]


def correctness(backends, heads: int, hd: int, device: str, dtype, total: int) -> dict:
    lens = [1, *doc_lens(total - 1, 6, seed=1)]  # a one-token document and ragged ones
    cu = cu_of(lens, device)
    g = torch.Generator().manual_seed(0)
    q, k, v, up = (torch.randn(total, heads, hd, generator=g).to(device, dtype) for _ in range(4))
    ref_out, ref_grads = fwd_bwd("dense", q.float(), k.float(), v.float(), cu, max(lens), up.float())
    res = {}
    for b in backends:
        try:
            out, grads = fwd_bwd(b, q, k, v, cu, max(lens), up)
            errs = {"out": rel_err(out, ref_out), **{f"d{n}": rel_err(gr, rg)
                                                     for n, gr, rg in zip("qkv", grads, ref_grads)}}
            errs["finite"] = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(x).all()) for x in grads)
            res[b] = errs
            print(f"  {b:10s} out {errs['out']:.2e}  dq {errs['dq']:.2e}  dk {errs['dk']:.2e}  dv {errs['dv']:.2e}"
                  f"{'' if errs['finite'] else '  NON-FINITE'}", flush=True)
        except Exception as e:  # noqa: BLE001
            res[b] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(f"  {b:10s} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
    return res


def timed(fn, device: str, warmup: int, reps: int) -> float:
    """Median milliseconds of fn(), synchronising the device around each call."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def speed(backends, heads: int, hd: int, device: str, dtype, total: int, docs: int, reps: int) -> dict:
    lens = doc_lens(total, docs, seed=2)
    cu = cu_of(lens, device)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(total, heads, hd, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
    work = 7.0 * sum(n * n for n in lens) * heads * hd

    def step(fn):
        def run():
            for x in (q, k, v):
                x.grad = None
            fn().sum().backward()
        return run

    def full_causal():
        return F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                              v.transpose(0, 1)[None], is_causal=True)

    cases = {"full causal SDPA (no doc mask)": full_causal}
    for b in backends:
        if b == "dense" and total > 8192:
            continue  # the O(T^2) mask: only at short rows
        cases[b] = lambda b=b: varlen_attention(q, k, v, cu, max(lens), backend=b)
    res = {}
    for name, fn in cases.items():
        try:
            ms = timed(step(fn), device, warmup=3, reps=reps)
            res[name] = {"ms": ms, "tflops": work / (ms / 1e3) / 1e12}
        except Exception as e:  # noqa: BLE001
            res[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    ref = res["full causal SDPA (no doc mask)"].get("ms")
    for name, r in res.items():
        if "ms" in r:
            r["speedup_vs_full_causal"] = ref / r["ms"] if ref else None
            print(f"  {name:32s} {r['ms']:9.3f} ms  {r['tflops']:7.1f} TFLOP/s (doc-masked work)  "
                  f"{r['speedup_vs_full_causal']:5.2f}x vs full causal", flush=True)
        else:
            print(f"  {name:32s} FAILED {r['error']}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    ap.add_argument("--small", action="store_true", help="short rows (smoke run)")
    ap.add_argument("--seq", default="4096,16384", help="row lengths to time (comma-separated)")
    ap.add_argument("--docs", type=int, default=8, help="documents per timed row")
    ap.add_argument("--reps", type=int, default=10, help="timed repeats (median)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not args.small:
        print("gpu_attention: no GPU; run with --device cpu --small for a smoke run of the CPU backends")
        return
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    backends = ["varlen", "flex", "sdpa_loop", "dense"] if device == "cuda" else ["sdpa_loop", "dense", "flex"]
    if device == "cuda" and flash_attn_available():
        backends.insert(0, "flash")
    probe = torch.zeros(1, 1, 8, device=device, dtype=dtype)
    record = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "flash_attn_installed": flash_attn_available(), "auto_backend": resolve_backend(probe),
              "dtype": str(dtype), "correctness": {}, "speed": {}}
    print(f"attention backends on {record['device']} ({dtype}); flash-attn installed: "
          f"{record['flash_attn_installed']}; 'auto' picks: {record['auto_backend']}")
    seqs = [128] if args.small else [int(s) for s in args.seq.split(",")]
    for name, (heads, hd) in LAYOUTS.items():
        if args.small:
            heads = 2
        total = 96 if args.small else 1024
        print(f"correctness vs fp32 dense reference, {name} layout {heads} x {hd}, {total} tokens:")
        record["correctness"][name] = correctness(backends, heads, hd, device, dtype, total)
        for seq in seqs:
            print(f"forward+backward, {name} layout {heads} x {hd}, {seq} tokens, {args.docs} documents:")
            record["speed"][f"{name}/{seq}"] = speed(backends, heads, hd, device, dtype, seq, args.docs,
                                                     3 if args.small else args.reps)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
