"""Plain-torch references of the fused ops (norm, RoPE, SwiGLU) against independent formulations, and the
dispatcher's CPU/GPU choice."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from midtrain.kernels._backend import triton_available, use_triton
from midtrain.kernels.norm import rms_norm, rms_norm_reference
from midtrain.kernels.rope import apply_rope, positions_from_cu_seqlens, rope_cos_sin
from midtrain.kernels.swiglu import swiglu


def test_rms_norm_matches_torch_functional():
    x, w = torch.randn(6, 3, 32, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), F.rms_norm(x, (32,), w, 1e-6))
    torch.testing.assert_close(rms_norm(x, None, 1e-5), F.rms_norm(x, (32,), None, 1e-5))
    with pytest.raises(ValueError, match="weight shape"):
        rms_norm(x, torch.ones(16))


def test_rms_norm_low_precision_computes_stats_in_fp32():
    x = torch.randn(4, 512, dtype=torch.bfloat16) * 100  # sum of squares would lose digits in bf16
    got = rms_norm_reference(x, None).float()
    ref = F.rms_norm(x.double(), (512,), None, 1e-6).float()
    assert (got - ref).abs().max() <= 2 ** -7 * ref.abs().max()


def test_swiglu_matches_definition():
    g, u = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    torch.testing.assert_close(swiglu(g, u), g * torch.sigmoid(g) * u)
    with pytest.raises(ValueError, match="same shape"):
        swiglu(g, u[:, :3])


def test_rope_matches_complex_rotation():
    t, h, d, theta = 9, 2, 8, 500.0
    x = torch.randn(t, h, d, dtype=torch.float64)
    pos = torch.arange(t) * 3
    cos, sin = rope_cos_sin(pos, d, theta, dtype=torch.float64)
    got = apply_rope(x, cos, sin)
    # independent formulation: pair dim i with i + d/2 as a complex number, rotate by pos * theta^(-2i/d)
    z = torch.complex(x[..., : d // 2], x[..., d // 2 :])
    freqs = torch.tensor([theta ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)
    rot = torch.polar(torch.ones(t, d // 2, dtype=torch.float64), pos[:, None].double() * freqs)
    zr = z * rot[:, None, :]
    torch.testing.assert_close(got, torch.cat([zr.real, zr.imag], dim=-1), rtol=1e-6, atol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    d = 16
    q, k = torch.randn(1, 1, d, dtype=torch.float64), torch.randn(1, 1, d, dtype=torch.float64)

    def score(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([pq]), d, dtype=torch.float64)
        ck, sk = rope_cos_sin(torch.tensor([pk]), d, dtype=torch.float64)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()

    assert math.isclose(score(7, 3), score(104, 100), rel_tol=1e-9)
    assert not math.isclose(score(7, 3), score(7, 4), rel_tol=1e-6)


def test_positions_restart_per_document():
    cu = torch.tensor([0, 3, 3, 7, 8], dtype=torch.int32)  # includes an empty document
    assert positions_from_cu_seqlens(cu).tolist() == [0, 1, 2, 0, 1, 2, 3, 0]


def test_rope_shape_errors():
    x = torch.randn(4, 2, 8)
    cos, sin = rope_cos_sin(torch.arange(4), 8)
    with pytest.raises(ValueError, match="tokens, heads, head_dim"):
        apply_rope(x[0], cos, sin)
    with pytest.raises(ValueError, match="cos/sin"):
        apply_rope(x, cos[:3], sin[:3])


def test_dispatcher_picks_reference_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(2, 4)
    assert not use_triton(x, "auto")
    assert not use_triton(x, "torch")
    with pytest.raises(ValueError, match="backend"):
        use_triton(x, "cuda")
    with pytest.raises(RuntimeError):  # triton forced on a CPU tensor without the interpreter
        use_triton(x, "triton")


def test_dispatcher_picks_triton_for_cuda_tensors_when_triton_imports():
    fake_cuda_tensor = SimpleNamespace(device=torch.device("cuda"), dtype=torch.bfloat16)  # only these are consulted
    assert use_triton(fake_cuda_tensor, "auto") == triton_available()
    assert not use_triton(fake_cuda_tensor, "torch")


def test_fp64_cuda_tensors_stay_on_the_reference():
    """The Triton kernels accumulate in fp32: `auto` must not send fp64 to them (an H200 run failed fp64 gradcheck
    through `auto` before), and forcing it is an error rather than a silent loss of precision."""
    fp64_cuda = SimpleNamespace(device=torch.device("cuda"), dtype=torch.float64)
    assert not use_triton(fp64_cuda, "auto")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert use_triton(SimpleNamespace(device=torch.device("cuda"), dtype=dtype), "auto") == triton_available()
    if triton_available():
        with pytest.raises(ValueError, match="float64"):
            use_triton(fp64_cuda, "triton")
