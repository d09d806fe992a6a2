"""Where midtrain finds what it does not build: the checkout's mixtures, the shared data folder beside it
(tokenizers, benchmarks, GSM8K, NLTK data) and tokenizers by name. One home for each lookup, no dependencies, so the
builder, the synth commands and the trainer agree.

Environment: MIDTRAIN_SHARED (the shared data folder; default `../shared/data` beside the checkout),
MIDTRAIN_TOKENIZERS (an extra folder searched first for tokenizers by name), MIDTRAIN_BENCHMARKS (benchmarks).
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MIXTURES_DIR = REPO_ROOT / "mixtures"


def shared_data_dir() -> Path:
    """$MIDTRAIN_SHARED, else the `shared/data` folder beside the checkout (never the working directory)."""
    env = os.environ.get("MIDTRAIN_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def benchmarks_dir() -> Path:
    env = os.environ.get("MIDTRAIN_BENCHMARKS")
    return Path(env) if env else shared_data_dir() / "benchmarks"


def nltk_data_dir() -> Path:
    return shared_data_dir() / "nltk_data"


def tokenizer_file_name(name: str) -> str:
    """`allenai/eleuther-ai-gpt-neox-20b-pii-special` -> `allenai_eleuther-ai-gpt-neox-20b-pii-special.json`."""
    return name.replace("/", "_") + ("" if name.endswith(".json") else ".json")


def tokenizer_dirs() -> list[Path]:
    dirs = [os.environ.get("MIDTRAIN_TOKENIZERS"), shared_data_dir() / "tokenizers"]
    return [Path(d) for d in dirs if d]


def find_tokenizer(name_or_path: str) -> Path | None:
    """A tokenizer.json path as given, else the name looked up as `<owner>_<name>.json` in $MIDTRAIN_TOKENIZERS and
    the shared data's tokenizers/ folder; None when neither exists."""
    if Path(name_or_path).is_file():
        return Path(name_or_path).resolve()
    for d in tokenizer_dirs():
        candidate = d / tokenizer_file_name(name_or_path)
        if candidate.is_file():
            return candidate.resolve()
    return None


def tokenizer_not_found(name_or_path: str) -> str:
    """The message every lookup failure uses (what was tried, where)."""
    return (f"tokenizer {name_or_path!r} not found as a path or as {tokenizer_file_name(name_or_path)} in "
            "$MIDTRAIN_TOKENIZERS or the shared data's tokenizers/ folder")
