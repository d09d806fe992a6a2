"""Shared fixtures: the `../shared/data` mirror beside the checkout."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("MIDTRAIN_SHARED", ROOT.parent / "shared" / "data")).resolve()
HUB = SHARED / "hub"
TOKENIZER = SHARED / "tokenizers" / "allenai_eleuther-ai-gpt-neox-20b-pii-special.json"
os.environ.setdefault("NLTK_DATA", str(SHARED / "nltk_data"))


@pytest.fixture(scope="session")
def shared() -> Path:
    assert SHARED.is_dir(), f"shared data not found at {SHARED} (set MIDTRAIN_SHARED)"
    return SHARED


@pytest.fixture(scope="session")
def hub(shared: Path) -> Path:
    return HUB


@pytest.fixture(scope="session")
def tokenizer_path(shared: Path) -> Path:
    return TOKENIZER


def build(spec_name_or_path, out: Path, **kw) -> Path:
    """Build a mixture from the mirror into `out` (quietly) and return `out`."""
    from pipelines.build import BuildOptions, build_mixture
    from pipelines.spec import load_spec

    spec = load_spec(str(spec_name_or_path))
    kw.setdefault("source_root", str(HUB))
    kw.setdefault("progress", False)
    build_mixture(spec, BuildOptions(out=str(out), **kw))
    return out


@pytest.fixture(scope="session")
def stage2_build(tmp_path_factory, hub: Path) -> Path:
    """The full stage2 mixture built from the mirror (~1.5M tokens, ~360 rows of 4,096; a few seconds)."""
    return build("stage2", tmp_path_factory.mktemp("stage2") / "build")
