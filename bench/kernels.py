"""Kernel benchmarks: fused linear cross-entropy memory on CPU; Triton kernels vs references; 3B throughput on GPU.

    python bench/kernels.py loss-memory [--tokens 32768 --vocab 50304 --dim 256]   # CPU acceptance (issue #6)
    python bench/kernels.py accuracy        # Triton vs reference relative errors (GPU, or CPU with TRITON_INTERPRET=1)
    python bench/kernels.py ops             # time + peak memory of every op vs its reference (GPU; --device cpu smoke)
    python bench/kernels.py model           # instella-3b tokens/s and MFU at 4K tokens per row (GPU)
    python bench/kernels.py all             # everything that applies to the machine it runs on

loss-memory runs the naive path (full fp32 logits + F.cross_entropy, forward + backward) and the fused path each in
a fresh subprocess and reads the peak resident memory above the baseline after the inputs exist (ru_maxrss minus
the RSS before the loss), so torch's CPU allocations are all seen. Ratios are against the reference measured in the
same run; times are printed for information only.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

GB = 1024**3


# ----------------------------------------------------------------------------------------------------- loss memory
def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _mem_worker(path: str, tokens: int, vocab: int, dim: int, dtype: str, chunk_size: int, threads: int) -> None:
    """Child process: one forward + backward of one loss path; prints a JSON line."""
    from midtrain.kernels.loss import linear_cross_entropy, linear_cross_entropy_reference

    try:  # if memory runs out, let the kernel kill this process rather than another one on the machine
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    hidden = torch.randn(tokens, dim, generator=g).to(dt).requires_grad_()
    weight = (torch.randn(vocab, dim, generator=g) / dim**0.5).to(dt).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    labels[::10] = -100
    base = _current_rss()
    t0 = time.perf_counter()
    if path == "naive":
        loss = linear_cross_entropy_reference(hidden, weight, labels)
    else:
        loss = linear_cross_entropy(hidden, weight, labels, chunk_size=chunk_size, backend="torch")
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps({"path": path, "peak_bytes": peak - base, "seconds": seconds, "loss": loss.item(),
                      "grad_h_norm": hidden.grad.float().norm().item(),
                      "grad_w_norm": weight.grad.float().norm().item()}))


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def loss_memory(args) -> dict:
    n, v = args.tokens, args.vocab
    logits_bytes = n * v * 4
    # naive forward + backward holds log-softmax, its gradient and the logits gradient: ~3 fp32 [N, V] tensors
    need = 3 * logits_bytes + GB
    avail = _mem_available()
    print(f"fused vs naive linear+CE, CPU: {n} tokens x {v} vocab, d={args.dim}, {args.dtype}, "
          f"chunk {args.chunk_size}; fp32 logits alone = {logits_bytes / GB:.1f} GiB; "
          f"MemAvailable {avail / GB:.1f} GiB")
    results = {}
    for path in ("fused", "naive"):
        if path == "naive" and need > avail:
            print(f"  naive: skipped, needs ~{need / GB:.1f} GiB and only {avail / GB:.1f} GiB is available "
                  "(rerun with fewer --tokens or on a larger machine)")
            continue
        cmd = [sys.executable, __file__, "_mem-worker", path, str(n), str(v), str(args.dim), args.dtype,
               str(args.chunk_size), str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"  {path}: worker failed (rc {proc.returncode}): {proc.stderr.strip()[-500:]}")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results[path] = res
        print(f"  {path:5s}: peak +{res['peak_bytes'] / GB:6.2f} GiB  {res['seconds']:6.1f} s  loss {res['loss']:.6f}")
    if len(results) == 2:
        f, r = results["fused"], results["naive"]
        ratio = f["peak_bytes"] / r["peak_bytes"]
        print(f"  fused/naive peak memory = {ratio:.4f} (1/{1 / ratio:.1f}); target <= 1/8: "
              f"{'met' if ratio <= 1 / 8 else 'NOT met'}")
        dh, dw = (abs(f[k] / r[k] - 1) for k in ("grad_h_norm", "grad_w_norm"))
        print(f"  |loss diff| = {abs(f['loss'] - r['loss']):.2e}, grad-norm rel diff: h {dh:.2e}, w {dw:.2e}")
        results["ratio"] = ratio
    return results


# -------------------------------------------------------------------------------------------------------- accuracy
def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def _fwd_bwd(fn, inputs, upstream_seed: int = 0):
    xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*xs)
    g = torch.Generator(device=out.device).manual_seed(upstream_seed)
    out.backward(torch.randn(out.shape, generator=g, device=out.device, dtype=torch.float32).to(out.dtype)
                 if out.dim() else None)
    return out.detach(), [x.grad for x in xs if x.grad is not None]


def op_cases(device: str, dtype: torch.dtype, small: bool):
    """(name, triton_fn, reference_fn, inputs) for each op, at model-like shapes (or small ones)."""
    from midtrain.kernels.loss import linear_cross_entropy, linear_cross_entropy_reference
    from midtrain.kernels.norm import rms_norm, rms_norm_reference
    from midtrain.kernels.rope import apply_rope, apply_rope_reference, rope_cos_sin
    from midtrain.kernels.swiglu import swiglu, swiglu_reference

    # model shapes: instella-3b at 16K tokens (one 64K-row shard under sp=4 is 4x this); the loss at 32K tokens
    t, d, heads, ffn, vocab, t_loss = (64, 256, 4, 704, 2000, 64) if small else (16384, 2560, 32, 6912, 50304, 32768)
    hd = d // heads
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    cos, sin = rope_cos_sin(torch.arange(t, device=device) % 4096, hd)
    labels = torch.randint(0, vocab, (t_loss,), generator=g).to(device)
    loss_inputs = [rnd(t_loss, d), rnd(vocab, d, scale=d**-0.5)]
    return [
        ("rms_norm", lambda x, w: rms_norm(x, w, backend="triton"), rms_norm_reference, [rnd(t, d), rnd(d)]),
        ("qk_norm", lambda x, w: rms_norm(x, w, backend="triton"), rms_norm_reference, [rnd(t, heads, hd), rnd(hd)]),
        ("rope", lambda x: apply_rope(x, cos, sin, backend="triton"), lambda x: apply_rope_reference(x, cos, sin),
         [rnd(t, heads, hd)]),
        ("swiglu", lambda a, b: swiglu(a, b, backend="triton"), swiglu_reference, [rnd(t, ffn), rnd(t, ffn)]),
        ("linear_ce", lambda h, w: linear_cross_entropy(h, w, labels, backend="triton"),
         lambda h, w: linear_cross_entropy_reference(h, w, labels), loss_inputs),
        # the same chunked algorithm with the torch per-chunk step: separates chunking from the Triton kernel
        ("linear_ce_torch", lambda h, w: linear_cross_entropy(h, w, labels, backend="torch"),
         lambda h, w: linear_cross_entropy_reference(h, w, labels), loss_inputs),
    ]


def accuracy(args) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("accuracy: no GPU; rerun with TRITON_INTERPRET=1 to check the kernels under Triton's interpreter")
        return
    print(f"Triton vs reference, relative error ||a-b||/||b|| of forward and input gradients ({device})")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for name, fn, ref, inputs in op_cases(device, dtype, small=device == "cpu" or getattr(args, "small", False)):
            out_a, grads_a = _fwd_bwd(fn, inputs)
            out_b, grads_b = _fwd_bwd(ref, inputs)
            errs = [rel_err(out_a, out_b)] + [rel_err(a, b) for a, b in zip(grads_a, grads_b)]
            print(f"  {str(dtype):15s} {name:15s} fwd {errs[0]:.2e}  grads " + " ".join(f"{e:.2e}" for e in errs[1:]))


# ------------------------------------------------------------------------------------------------------ timing/mem
def measure(fn, device: str, iters: int = 10, warmup: int = 3) -> tuple[float, int | None]:
    """Median milliseconds per call and, on CUDA, peak memory allocated above what existed before the call."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times), torch.cuda.max_memory_allocated() - base
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), None


def ops(args) -> None:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("ops: timings compare Triton kernels on a GPU; on CPU run with TRITON_INTERPRET=1 --small (smoke only)")
        return
    dtype = torch.bfloat16
    small = args.small or device == "cpu"
    print(f"forward+backward, {dtype}, {'small' if small else 'model'} shapes, {device} (median of 10)")
    print(f"  {'op':15s} {'ref ms':>9s} {'triton ms':>10s} {'speedup':>8s} {'ref MiB':>9s} {'triton MiB':>11s}")
    for name, fn, ref, inputs in op_cases(device, dtype, small):
        xs = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]

        def run(f, xs=xs):
            def call():
                for x in xs:
                    x.grad = None
                out = f(*xs)
                out.backward(torch.ones_like(out) if out.dim() else None)
            return call

        t_ref, m_ref = measure(run(ref), device, iters=3 if small else 10, warmup=1 if small else 3)
        t_tri, m_tri = measure(run(fn), device, iters=3 if small else 10, warmup=1 if small else 3)
        mem = (f"{m_ref / 2**20:9.0f} {m_tri / 2**20:11.0f}" if m_ref is not None else f"{'-':>9s} {'-':>11s}")
        print(f"  {name:15s} {t_ref:9.2f} {t_tri:10.2f} {t_ref / t_tri:7.2f}x {mem}")


# ------------------------------------------------------------------------------------------------------------ model
def model(args) -> None:
    from midtrain.kernels.rope import positions_from_cu_seqlens
    from trainer.config import PRESETS
    from trainer.metrics import peak_flops, step_flops
    from trainer.model import Transformer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and args.preset == "instella-3b":
        print("model: instella-3b throughput needs a GPU (use --preset small --device cpu for a smoke run)")
        return
    cfg = PRESETS[args.preset].model
    seq = args.seq_len or cfg.seq_len
    torch.manual_seed(0)
    net = Transformer(cfg, args.attn_backend).to(device=device, dtype=torch.bfloat16)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=device == "cuda")
    # one packed row of `seq` tokens holding documents of 1/4 row each (document-masked attention)
    doc = seq // 4
    cu = torch.arange(0, seq + 1, doc, device=device, dtype=torch.int32)
    ids = torch.randint(0, cfg.vocab_size, (seq,), device=device)
    pos = positions_from_cu_seqlens(cu)
    labels = torch.roll(ids, -1)  # next-token targets (random tokens: this measures speed, not learning)

    def step():
        loss = net(ids, pos, cu, doc, labels=labels) / seq
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ms, mem = measure(step, device, iters=args.iters, warmup=2)
    tok_s = seq / (ms / 1e3)
    flops = step_flops(cfg, seq, 4 * doc * doc)
    peak = peak_flops(torch.device(device))
    mfu = f"{flops / (ms / 1e3) / peak:.1%}" if peak else "n/a (no peak for this device)"
    mem_s = f", peak +{mem / GB:.1f} GiB" if mem is not None else ""
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    opt_name = "AdamW (fused)" if device == "cuda" else "AdamW"
    print(f"{args.preset} on {name}: {seq} tokens/row, attention {args.attn_backend}, bf16 params + {opt_name}, "
          f"{ms:.0f} ms/step, "
          f"{tok_s:,.0f} tokens/s, MFU {mfu}{mem_s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("loss-memory", help="peak CPU memory of fused vs naive linear+cross-entropy")
    p.add_argument("--tokens", type=int, default=32768, help="tokens in the row")
    p.add_argument("--vocab", type=int, default=50304, help="vocabulary size (padded)")
    p.add_argument("--dim", type=int, default=256, help="hidden size (small keeps the CPU matmuls short)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="hidden/weight dtype")
    p.add_argument("--chunk-size", type=int, default=2048, help="fused path: tokens per logits chunk")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads in each worker")
    sub.add_parser("accuracy", help="Triton vs reference relative errors")
    for name, hlp in (("ops", "op timings and memory vs references"), ("model", "3B tokens/s and MFU"),
                      ("all", "every benchmark that applies here")):
        p = sub.add_parser(name, help=hlp)
        p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
        p.add_argument("--small", action="store_true", help="small shapes (smoke run)")
        p.add_argument("--preset", default="instella-3b", help="model preset for `model`")
        p.add_argument("--seq-len", type=int, default=4096, help="tokens per row for `model`")
        p.add_argument("--iters", type=int, default=10, help="timed steps for `model`")
        p.add_argument("--attn-backend", default="auto", help="attention backend for `model` (kernels.attention)")
    if len(sys.argv) > 1 and sys.argv[1] == "_mem-worker":
        path, n, v, d, dtype, chunk, threads = sys.argv[2:9]
        _mem_worker(path, int(n), int(v), int(d), dtype, int(chunk), int(threads))
        return
    args = ap.parse_args()
    if args.cmd == "loss-memory":
        loss_memory(args)
    elif args.cmd == "accuracy":
        accuracy(args)
    elif args.cmd == "ops":
        ops(args)
    elif args.cmd == "model":
        model(args)
    else:
        if torch.cuda.is_available():
            accuracy(args)
            ops(args)
            model(args)
        else:
            print("all: no GPU here; running the CPU loss-memory acceptance at its defaults")
            loss_memory(ap.parse_args(["loss-memory"]))


if __name__ == "__main__":
    main()
