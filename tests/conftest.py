"""Shared fixtures: the `../shared/data` mirror beside the checkout."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Triton kernels are checked on CPU through the interpreter; the flag must be set before any kernel module is
# imported (decoration time). `backend="auto"` still picks the torch path on CPU tensors.
os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("MIDTRAIN_SHARED", ROOT.parent / "shared" / "data")).resolve()
# absolute for the CLI subprocesses the tests start in other working folders (`make test` passes a relative path)
os.environ["MIDTRAIN_SHARED"] = str(SHARED)
HUB = SHARED / "hub"
TOKENIZER = SHARED / "tokenizers" / "allenai_eleuther-ai-gpt-neox-20b-pii-special.json"
os.environ.setdefault("NLTK_DATA", str(SHARED / "nltk_data"))


# The fast tier (`make test-fast`, a few minutes: unit tests + one small end-to-end build) leaves out these modules:
# whole-mirror builds, multi-process training, kill/resume loops. `make test` (CI) runs everything and prints the
# slowest tests (--durations), so this list can follow the measurements.
SLOW_MODULES = {
    "test_build_stage2", "test_longpack", "test_longqa", "test_trainer_fsdp", "test_ulysses", "test_stage_b",
    "test_global_dedup", "test_dedup_decontam_build", "test_hf_interop", "test_fidelity", "test_mds_inputs",
    "test_spec_fingerprints", "test_trainer_checkpoint", "test_tokenize_dolma", "test_readme_queries",
    "test_integrity_inputs", "test_sandbox_hostile", "test_kernels_triton", "test_recipes", "test_synth_gsm8k_llm",
    "test_eval", "test_trainer_integrity", "test_build_crash_safety", "test_holdout_by_source", "test_recipes_carry",
    "test_mix_search_train", "test_hf_export_files", "test_faithful_specs", "test_verify_tampering",
    "test_import_names", "test_lm_eval", "test_dpo_build", "test_exact_copies", "test_dedup_verify", "test_executors",
    "test_tokenize_after",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


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


def build(spec_name_or_path, out: Path, cwd: Path | None = None, **kw) -> Path:
    """Build a mixture from the mirror into `out` (quietly) and return `out`.

    Relative source URIs (the synthetic GSM8K slot `out/synth/gsm8k/*.jsonl`) resolve against `cwd` (default: the
    build's parent folder), so a user's own `out/` in the checkout never leaks into a test."""
    from pipelines.build.options import BuildOptions
    from pipelines.build.run import build_mixture
    from pipelines.build.spec import load_spec

    spec = load_spec(str(spec_name_or_path))
    kw.setdefault("source_root", str(HUB))
    kw.setdefault("progress", False)
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    old = Path.cwd()
    os.chdir(cwd or out.parent)
    try:
        build_mixture(spec, BuildOptions(out=str(out), **kw))
    finally:
        os.chdir(old)
    return out


@pytest.fixture(scope="session")
def stage2_clean_build(tmp_path_factory, hub: Path) -> Path:
    """stage2-clean (stage2's sources + dedup + decontamination) built from the mirror."""
    return build("stage2-clean", tmp_path_factory.mktemp("stage2-clean") / "build")


@pytest.fixture(scope="session")
def stage2_build(tmp_path_factory, hub: Path) -> Path:
    """The full stage2 mixture built from the mirror (~1.5M tokens, ~360 rows of 4,096; a few seconds)."""
    return build("stage2", tmp_path_factory.mktemp("stage2") / "build")
