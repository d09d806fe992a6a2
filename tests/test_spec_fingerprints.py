"""Every shipped spec, built on the mirror, gives the same shard bytes and manifest rows as the fingerprints
recorded before the pipelines/ layout move (tests/data/spec_fingerprints.json, `python tests/spec_fingerprints.py
--record` writes them again after a deliberate change of output)."""
from __future__ import annotations

import json

import pytest
from conftest import HUB, build
from spec_fingerprints import RECORD, build_fingerprint, shipped_specs

RECORDED = json.loads(RECORD.read_text())


@pytest.mark.parametrize("name", shipped_specs())
def test_shipped_spec_builds_byte_identical_to_its_recorded_fingerprint(name, tmp_path):
    assert name in RECORDED, f"{name}: no recorded fingerprint; run python tests/spec_fingerprints.py --record"
    got = build_fingerprint(name, tmp_path / name / "build", HUB, build)
    want = RECORDED[name]
    assert sorted(got) == sorted(want)
    changed = sorted(k for k in want if got[k] != want[k])
    assert not changed, f"{name}: changed since the recording: {changed}"
