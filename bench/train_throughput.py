"""Training throughput of the trainer's model against HF `LlamaForCausalLM` of the same size, in the same run.

    python bench/train_throughput.py [--preset small] [--seq-len 2048] [--docs 8] [--steps 4] [--no-compile]

Part 1 — tokens/s of full training steps (forward, backward, clip, AdamW) on one packed row of `seq_len` tokens
holding `docs` documents:
  * baseline: HF LlamaForCausalLM (same layers/width/heads/FFN/vocab, untied, fp32, SDPA attention, full causal —
    it has no document masking without flash-attn), logits materialised, as a user of HF would train it;
  * ours: trainer.model.Transformer under FSDP2 (world 1) exactly as `cli.py train` runs it — fp32 eager, then
    bf16 mixed precision, then bf16 + torch.compile. Document-masked attention (per-document SDPA on CPU) and the
    fused linear cross-entropy.
Part 2 — attention alone, forward + backward at `attn_seq` tokens and `docs` documents: per-document SDPA loop
(doc-masked) vs full causal SDPA over the row (no masking) vs SDPA with a dense block-diagonal mask.
Configurations are timed in interleaved rounds and the minimum is kept, because the CPU may be shared.

On a CUDA device (default when one is present; --device cpu keeps the CPU run) the same configurations run on the
GPU, one after another (build, warm up, time with the device synchronised, free), so that several large models need
not fit at once; the HF baseline is also timed under bf16 autocast (the strongest HF baseline without flash-attn),
and each line gets an MFU: the FLOPs of the document-masked step (trainer.metrics.step_flops, the same count for
every configuration, so HF's extra cross-document attention work is not credited) over the device's dense bf16 peak.
A configuration that fails (out of memory, a compile error) is reported and the others still run.

Needs `transformers` for the baseline; without it part 1 prints that and measures ours only.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from midtrain.kernels.attention import varlen_attention  # noqa: E402
from trainer import parallel  # noqa: E402
from trainer.config import PRESETS, TrainConfig  # noqa: E402
from trainer.data import Sample, collate  # noqa: E402
from trainer.metrics import peak_flops, step_flops  # noqa: E402
from trainer.optim import build_optimizer  # noqa: E402


def packed_row(seq_len: int, docs: int, vocab: int, seed: int = 0):
    """One row of random tokens cut into `docs` documents of uneven lengths."""
    g = torch.Generator().manual_seed(seed)
    cuts = sorted(torch.randperm(seq_len - 1, generator=g)[: docs - 1].add(1).tolist())
    lens = [b - a for a, b in zip([0, *cuts], [*cuts, seq_len])]
    tokens = torch.randint(2, vocab, (seq_len,), generator=g).numpy()
    return collate([Sample(tokens, lens, [False] * len(lens), None)])


def time_steps(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / max(steps, 1)


def interleaved_min(steps: dict[str, callable], rounds: int) -> dict[str, float]:
    """Seconds per step of each configuration: the minimum over `rounds` rounds that visit every configuration in
    turn, so that load from other processes (a shared CPU) hits all of them alike and the minimum filters it out."""
    best = {name: float("inf") for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def ours_step(preset: str, batch, dtype: str, compile: bool, attn_backend: str = "auto"):
    """One full training step of the trainer's model as `cli.py train` builds it (FSDP2 over the open group)."""
    from trainer.train import build_model

    env = parallel.init_distributed()
    mcfg = dataclasses.replace(PRESETS[preset].model, seq_len=len(batch.input_ids))
    cfg = TrainConfig(data="-", out="-", preset=preset, dtype=dtype, compile=compile, attn_backend=attn_backend)
    model = build_model(mcfg, cfg, env)
    batch = batch.to(env.device)  # CPU: a no-op; GPU: the trainer moves each microbatch the same way
    opt = build_optimizer(model, 1e-4, (0.9, 0.95), 1e-8, 0.1)
    n_valid = batch.n_valid

    def step():
        loss = model(batch.input_ids, batch.positions, batch.cu_seqlens, batch.max_seqlen, batch.labels) / n_valid
        loss.backward()
        parallel.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def hf_step(preset: str, batch, device: str = "cpu", bf16_autocast: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    m = PRESETS[preset].model
    hf_cfg = LlamaConfig(vocab_size=m.vocab_size, hidden_size=m.d_model, intermediate_size=m.ffn_dim,
                         num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads, num_key_value_heads=m.n_heads,
                         max_position_embeddings=len(batch.input_ids), rope_theta=m.rope_theta, rms_norm_eps=m.norm_eps,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(hf_cfg).to(device)
    opt = build_optimizer(model, 1e-4, (0.9, 0.95), 1e-8, 0.1)
    ids = batch.input_ids[None].to(device)

    def step():
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16_autocast):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_attention(seq_len: int, docs: int, heads: int, head_dim: int, rounds: int,
                    device: str = "cpu") -> dict[str, float]:
    b = packed_row(seq_len, docs, 100).to(device)
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q, k, v = (torch.randn(seq_len, heads, head_dim, generator=g).to(device, dtype).requires_grad_()
               for _ in range(3))

    def once(fn):
        def step():
            fn().sum().backward()
        return step

    def full():  # [1, H, T, D]: 4-D so SDPA may use its fused CPU kernel
        return F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                              v.transpose(0, 1)[None], is_causal=True)

    steps = {
        "doc-masked (per-document SDPA)": once(lambda: varlen_attention(q, k, v, b.cu_seqlens, b.max_seqlen,
                                                                          backend="sdpa_loop")),
        "full causal SDPA (no masking)": once(full),
        "dense block-diagonal mask": once(lambda: varlen_attention(q, k, v, b.cu_seqlens, b.max_seqlen,
                                                                     backend="dense")),
    }
    if device == "cuda":
        for name in ("varlen", "flex"):  # the GPU backends the trainer picks without flash-attn
            steps[f"doc-masked ({name})"] = once(lambda name=name: varlen_attention(q, k, v, b.cu_seqlens,
                                                                                   b.max_seqlen, backend=name))
        return {name: _gpu_time(step, 2, rounds)[0] for name, step in steps.items()}
    for step in steps.values():
        time_steps(step, 2, 0)
    return interleaved_min(steps, rounds)


def _gpu_time(step, warmup: int, steps: int) -> tuple[float, float]:
    """(median, min) seconds per step on the GPU, the device synchronised around every step."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def gpu_part1(args, batch, record: dict, save=lambda: None) -> dict[str, float]:
    """Each configuration alone on the GPU: build, warm up (compilation happens here), time, free. Failures are
    reported and skipped; `save` is called after each configuration (partial results survive a timeout)."""
    configs: list[tuple[str, callable]] = []
    try:
        import transformers

        for bf16 in (False, True):
            label = (f"HF LlamaForCausalLM {'bf16 autocast' if bf16 else 'fp32'} "
                     f"(transformers {transformers.__version__})")
            configs.append((label, lambda bf16=bf16: hf_step(args.preset, batch, "cuda", bf16)))
    except ImportError:
        print("transformers is not installed: no HF baseline (pip install transformers); measuring ours only")
    base = args.attn_backend
    for dtype, comp, backend in [("fp32", False, base), ("bf16", False, base)] + \
            [("bf16", False, b) for b in args.extra_backends] + ([] if args.no_compile else [("bf16", True, base)]):
        label = f"ours {dtype}{' + compile' if comp else ''} {backend} (FSDP2)"
        configs.append((label, lambda d=dtype, c=comp, b=backend: ours_step(args.preset, batch, d, c, b)))
    results = {}
    for name, make in configs:
        step = None
        try:
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            step = make()
            med, best = _gpu_time(step, args.warmup, args.steps)
            mem = torch.cuda.max_memory_allocated() / 2**30
            results[name] = med
            record[name] = {"median_s": med, "min_s": best, "peak_gib": mem,
                            "setup_and_warmup_s": time.perf_counter() - t0 - med * args.steps}
            print(f"  {name}: median {med:.4f} s/step (min {best:.4f}), peak {mem:.1f} GiB", flush=True)
        except Exception as e:  # noqa: BLE001 - one failing configuration must not hide the others
            record[name] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
            print(f"  {name}: FAILED {type(e).__name__}: {str(e)[:400]}", flush=True)
        finally:
            del step
            gc.collect()
            torch.cuda.empty_cache()
            save()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS), help="model size for both models")
    ap.add_argument("--seq-len", type=int, default=2048, help="tokens per training step")
    ap.add_argument("--docs", type=int, default=8, help="documents packed in the row")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per configuration (interleaved; min taken)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    ap.add_argument("--no-compile", action="store_true", help="skip the bf16 + torch.compile configuration")
    ap.add_argument("--attn-seq", type=int, default=2048, help="row length for the attention comparison")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"],
                    help="where to run (default: cuda when available); cuda runs configurations one at a time")
    ap.add_argument("--extra-backends", default="",
                    help="GPU only: comma-separated attention backends (flex, varlen, sdpa_loop) to time as extra "
                         "'ours bf16' configurations")
    ap.add_argument("--attn-backend", default="auto",
                    help="GPU only: attention backend of the 'ours' configurations (kernels.attention)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    args.extra_backends = [b for b in args.extra_backends.split(",") if b]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    m = PRESETS[args.preset].model
    print(f"preset {args.preset}: {m.n_layers} layers, d {m.d_model}, {m.n_heads} heads, FFN {m.ffn_dim}, "
          f"vocab {m.vocab_size}, {m.n_params() / 1e6:.1f}M params; one row of {args.seq_len} tokens, "
          f"{args.docs} documents; torch {torch.__version__}, {torch.get_num_threads()} threads")
    batch = packed_row(args.seq_len, args.docs, m.vocab_size)
    if device == "cuda":
        gpu_main(args, m, batch)
        return
    steps: dict[str, callable] = {}
    try:
        import transformers

        steps[f"HF LlamaForCausalLM fp32 (transformers {transformers.__version__})"] = hf_step(args.preset, batch)
    except ImportError:
        print("transformers is not installed: no HF baseline (pip install transformers); measuring ours only")
    configs = [("fp32", False), ("bf16", False)] + ([] if args.no_compile else [("bf16", True)])
    for dtype, comp in configs:
        steps[f"ours {dtype}{' + compile' if comp else ''} (FSDP2, doc-masked)"] = ours_step(args.preset, batch,
                                                                                             dtype, comp)
    for name, step in steps.items():  # warmup (compilation happens here)
        time_steps(step, args.warmup, 0)
    results = interleaved_min(steps, args.steps)
    parallel.cleanup()

    base = next((v for k, v in results.items() if k.startswith("HF")), None)
    print(f"\n{'configuration':<58} {'s/step':>8} {'tokens/s':>10} {'vs HF':>7}")
    for name, sec in results.items():
        ratio = f"{base / sec:.2f}x" if base else "-"
        print(f"{name:<58} {sec:8.3f} {args.seq_len / sec:10.0f} {ratio:>7}")
    if base:
        best = min(v for k, v in results.items() if k.startswith("ours"))
        print(f"best ours vs HF: {base / best:.2f}x (target >= 1.2x)")

    attn = bench_attention(args.attn_seq, args.docs, m.n_heads, m.head_dim, max(5, args.steps))
    ref = attn["full causal SDPA (no masking)"]
    print(f"\nattention forward+backward, {args.attn_seq} tokens, {args.docs} documents, {m.n_heads} heads x "
          f"{m.head_dim}")
    for name, sec in attn.items():
        print(f"{name:<40} {sec * 1e3:8.1f} ms  {ref / sec:5.2f}x vs full causal")


def gpu_main(args, m, batch) -> None:
    name = torch.cuda.get_device_name()
    peak = peak_flops(torch.device("cuda"))
    flops = step_flops(m, args.seq_len, batch.attn_cost)
    print(f"device {name}; one step = {flops / 1e12:.2f} TFLOP (document-masked count); MFU against "
          f"{peak / 1e12 if peak else float('nan'):.0f} TFLOP/s dense bf16")
    record = {"device": name, "preset": args.preset, "seq_len": args.seq_len, "docs": args.docs,
              "params_m": m.n_params() / 1e6, "step_tflop": flops / 1e12, "peak_tflops": peak / 1e12 if peak else None,
              "torch": torch.__version__, "configs": {}}

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(record, indent=2))

    results = gpu_part1(args, batch, record["configs"], save)
    parallel.cleanup()
    base = min((v for k, v in results.items() if k.startswith("HF")), default=None)
    print(f"\n{'configuration':<62} {'s/step':>8} {'tokens/s':>10} {'MFU':>6} {'vs best HF':>10}")
    for cname, sec in results.items():
        mfu = flops / sec / peak if peak else None
        ratio = base / sec if base else None
        record["configs"][cname].update(tokens_per_s=args.seq_len / sec, mfu=mfu, vs_best_hf=ratio)
        print(f"{cname:<62} {sec:8.4f} {args.seq_len / sec:10.0f} {mfu if mfu is not None else float('nan'):6.1%} "
              f"{f'{ratio:.2f}x' if ratio else '-':>10}")
    for cname, r in record["configs"].items():
        if "error" in r:
            print(f"{cname:<62} FAILED: {r['error'][:200]}")
    if base and any(k.startswith("ours") for k in results):
        best = min(v for k, v in results.items() if k.startswith("ours"))
        record["best_ours_vs_best_hf"] = base / best
        print(f"best ours vs best HF: {base / best:.2f}x")
    if args.attn_seq:
        attn = bench_attention(args.attn_seq, args.docs, m.n_heads, m.head_dim, max(5, args.steps), "cuda")
        ref = attn["full causal SDPA (no masking)"]
        print(f"\nattention forward+backward (bf16, GPU), {args.attn_seq} tokens, {args.docs} documents, "
              f"{m.n_heads} heads x {m.head_dim}")
        for aname, sec in attn.items():
            print(f"{aname:<40} {sec * 1e3:8.2f} ms  {ref / sec:5.2f}x vs full causal")
        record["attention_ms"] = {k: v * 1e3 for k, v in attn.items()}
    save()


if __name__ == "__main__":
    main()
