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
