"""Our packages under names that clash with no common package (issue 21, item 10): Hugging Face's `kernels`
(which transformers >= 5 imports when it is installed) and ours coexist; transformers loads an export from the
project root and from another folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HF_KERNELS = os.environ.get("MIDTRAIN_HF_KERNELS_PATH")  # a `pip install --target DIR kernels` when not installed


def _hf_kernels_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if HF_KERNELS:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [HF_KERNELS, env.get("PYTHONPATH")]))
    return env


def _hf_kernels_available(env) -> bool:
    code = "import importlib.metadata as m; m.version('kernels')"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd="/", capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def export(tmp_path_factory, tokenizer_path) -> Path:
    import torch
    from midtrain.kernels.attention import varlen_attention  # noqa: F401  (ours, under the package name)

    from trainer.checkpoint import export_safetensors
    from trainer.config import ModelConfig
    from trainer.hf import export_hf
    from trainer.model import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=1, d_model=32, n_heads=4, ffn_dim=64, seq_len=64, vocab_size=50304)
    src = tmp_path_factory.mktemp("w")
    export_safetensors(src, Transformer(cfg).state_dict(), {"model": cfg.__dict__})
    return export_hf(src, src / "hf", tokenizer=str(tokenizer_path))


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_transformers_loads_an_export_beside_hf_kernels(export, where, tmp_path):
    env = _hf_kernels_env()
    if not _hf_kernels_available(env):
        pytest.skip("Hugging Face `kernels` is not installed (pip install 'kernels>=0.18.2,<0.19', or set "
                    "MIDTRAIN_HF_KERNELS_PATH to a `pip install --target` dir)")
    code = ("import transformers, kernels, importlib.metadata as m\n"
            f"model = transformers.AutoModelForCausalLM.from_pretrained({str(export)!r})\n"
            "assert hasattr(kernels, 'get_kernel'), kernels.__path__  # HF's package, not ours\n"
            "import midtrain.kernels.attention as ours\n"
            f"assert ours.__file__.startswith({str(ROOT)!r}), ours.__file__\n"
            "print('loaded', type(model).__name__)")
    cwd = ROOT if where == "root" else tmp_path
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "loaded OlmoeForCausalLM" in proc.stdout, proc.stderr[-3000:]


def test_every_package_is_installed_and_no_top_level_kernels():
    """pyproject.toml lists every package (an explicit list: kernels/ maps to midtrain.kernels), and nothing is
    installed as a bare top-level `kernels`."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.relative_to(ROOT).parent.parts) for top in ("pipelines", "trainer", "mixtures", "midtrain")
             for p in (ROOT / top).rglob("__init__.py")}
    assert set(cfg["packages"]) == found | {"midtrain.kernels"}
    assert cfg["package-dir"] == {"midtrain.kernels": "kernels"}
    assert not (ROOT / "kernels" / "__init__.py").exists()  # a bare `import kernels` from the root is HF's
