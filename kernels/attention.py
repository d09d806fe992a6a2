"""Document-masked (variable-length) causal attention over a packed row: one signature, several backends.

Interface (flash-attn varlen convention, kept stable because sequence parallelism wraps it):

    varlen_attention(q, k, v, cu_seqlens, max_seqlen, causal=True, backend="auto") -> out

q/k/v are [total_tokens, n_heads, head_dim]; `cu_seqlens` is int32 [n_docs + 1] with the document boundaries
(0, len0, len0+len1, ..., total). A token attends only to earlier tokens of its own document.

Backends:
- "flash": `flash_attn.flash_attn_varlen_func` (CUDA, fp16/bf16; only when the flash-attn package is installed).
- "varlen": torch's own `torch.nn.attention.varlen.varlen_attn` (CUDA, fp16/bf16).
- "flex": `flex_attention` with a document block mask (CUDA; in torch 2.13 it has no CPU backward).
- "sdpa_loop": one `scaled_dot_product_attention` call per document. The CPU path: it never forms a mask and skips
  the cross-document blocks entirely (measured 93 ms vs 196 ms full causal / 306 ms dense mask, S=2048, 8 docs).
- "dense": SDPA with an explicit [T, T] block-diagonal causal mask — the O(T²) reference the tests compare against.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "flash", "varlen", "flex", "sdpa_loop", "dense")


@functools.cache
def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:  # ImportError, or a build without a usable CUDA runtime
        return False
    return True


@functools.cache
def torch_varlen_available() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


FLEX_MIN_HEAD_DIM = 16


def resolve_backend(q: torch.Tensor, backend: str = "auto") -> str:
    """The backend `varlen_attention` will run for this tensor."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if q.device.type != "cuda":
        return "sdpa_loop"
    half = q.dtype in (torch.float16, torch.bfloat16)
    if half and flash_attn_available():
        return "flash"
    if half and torch_varlen_available():
        return "varlen"
    if q.shape[-1] < FLEX_MIN_HEAD_DIM:  # flex attention refuses small heads (seen on an H200 with head_dim 8)
        return "sdpa_loop"
    return "flex"


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
    if q.dim() != 3 or k.shape != q.shape or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"q/k/v must be [tokens, heads, head_dim] alike, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D [n_docs + 1], got shape {tuple(cu_seqlens.shape)}")


def doc_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Document index of every token, int64 [total]."""
    idx = torch.arange(total, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].long(), idx, right=True)


def _bhld(x: torch.Tensor) -> torch.Tensor:
    """[L, H, D] -> [1, H, L, D]. SDPA's fused CPU (flash) kernel needs 4-D inputs; 3-D ones fall back to the
    unfused math path (materialised scores and a tril mask), measured ~2x slower."""
    return x.transpose(0, 1)[None]


@torch.compiler.disable  # data-dependent loop over documents: a graph break, not a recompilation per batch
def attention_sdpa_loop(q, k, v, cu_seqlens, causal: bool = True) -> torch.Tensor:
    lens = cu_seqlens.diff().tolist()
    # split (not slicing): its backward concatenates the per-document gradients once instead of scattering each
    # into a zero tensor of the full row
    outs = [F.scaled_dot_product_attention(_bhld(qd), _bhld(kd), _bhld(vd), is_causal=causal)[0].transpose(0, 1)
            for qd, kd, vd in zip(q.split(lens), k.split(lens), v.split(lens)) if qd.shape[0]]
    return torch.cat(outs, dim=0)


def block_diagonal_mask(cu_seqlens: torch.Tensor, total: int, causal: bool = True) -> torch.Tensor:
    """Boolean [T, T] mask, True where query i may attend key j."""
    doc = doc_ids_from_cu_seqlens(cu_seqlens, total)
    mask = doc[:, None] == doc[None, :]
    if causal:
        mask &= torch.ones(total, total, dtype=torch.bool, device=doc.device).tril()
    return mask


@torch.compiler.disable
def attention_dense(q, k, v, cu_seqlens, causal: bool = True) -> torch.Tensor:
    mask = block_diagonal_mask(cu_seqlens, q.shape[0], causal)
    o = F.scaled_dot_product_attention(_bhld(q), _bhld(k), _bhld(v), attn_mask=mask)
    return o[0].transpose(0, 1)


@torch.compiler.disable  # the mask is built eagerly, once per batch
def document_block_mask(cu_seqlens: torch.Tensor, total: int, causal: bool = True):
    from torch.nn.attention.flex_attention import create_block_mask

    doc = doc_ids_from_cu_seqlens(cu_seqlens, total)

    def mask_mod(b, h, qi, ki):
        same = doc[qi] == doc[ki]
        return same & (ki <= qi) if causal else same

    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=total, KV_LEN=total, device=cu_seqlens.device)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def attention_flex(q, k, v, cu_seqlens, causal: bool = True) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = document_block_mask(cu_seqlens, q.shape[0], causal)
    # fused kernel on GPU: inside a compiled block dynamo traces flex_attention itself; eager callers get a compiled
    # copy. On CPU (tests only: no backward there in torch 2.13) the eager, unfused reference.
    if torch.compiler.is_compiling() or q.device.type != "cuda":
        fn = flex_attention
    else:
        fn = _compiled_flex()
    o = fn(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=block_mask)
    return o[0].transpose(0, 1)


def attention_flash(q, k, v, cu_seqlens, max_seqlen: int, causal: bool = True) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    cu = cu_seqlens.to(torch.int32)
    return flash_attn_varlen_func(q, k, v, cu, cu, max_seqlen, max_seqlen, causal=causal)


def attention_torch_varlen(q, k, v, cu_seqlens, max_seqlen: int, causal: bool = True) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    cu = cu_seqlens.to(torch.int32)
    return varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, window_size=(-1, 0) if causal else (-1, -1))


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention restricted to each document of a packed row; returns [total_tokens, n_heads, head_dim]."""
    _check(q, k, v, cu_seqlens)
    name = resolve_backend(q, backend)
    if name == "flash":
        return attention_flash(q, k, v, cu_seqlens, max_seqlen, causal)
    if name == "varlen":
        return attention_torch_varlen(q, k, v, cu_seqlens, max_seqlen, causal)
    if name == "flex":
        return attention_flex(q, k, v, cu_seqlens, causal)
    if name == "dense":
        return attention_dense(q, k, v, cu_seqlens, causal)
    return attention_sdpa_loop(q, k, v, cu_seqlens, causal)
