"""Every spec key is range-checked before any work: a bad value is exit code 2 and one line naming the spec file and
field — never a traceback, never a silently wrong build (issue 11)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import TOKENIZER
from typer.testing import CliRunner

from pipelines.build.spec import available_specs, load_spec, parse_spec
from pipelines.errors import SpecError

RUNNER = CliRunner()


def base_spec(data: Path) -> dict:
    return {"name": "valid", "seq_len": 64, "tokenizer": str(TOKENIZER),
            "sources": [{"name": "docs", "uri": str(data)}]}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"document {i} " * 20}) + "\n" for i in range(4)))
    return path


def cli_app():
    import cli

    return cli.app


# (mutation of the top level or of sources[0], message) — each was accepted or a traceback before
BAD_SPECS = [
    ({"eos_id": 70000}, "field 'eos_id' must be a token id of the tokenizer (0..50279), got 70000"),
    ({"pad_id": 70000}, "field 'pad_id' must be a token id of the tokenizer"),
    ({"eos_id": -3}, "field 'eos_id' must be >= 0"),
    ({"seed": -1}, "field 'seed' must be >= 0, got -1"),
    ({"packing": None}, "field 'packing' must be a mapping"),
    ({"packing": {"mode": "zigzag"}}, "field 'packing': unknown packing mode 'zigzag'"),
    ({"packing": {"mode": 3}}, "field 'packing.mode' must be a string"),
    ({"packing": {"mode": "sft", "loss_mask": "yes"}}, "field 'packing.loss_mask' must be true or false"),
    ({"shard_tokens": 0}, "field 'shard_tokens' must be positive, got 0"),
    ({"seq_len": 0}, "field 'seq_len' must be positive"),
    ({"rope_theta": 0}, "field 'rope_theta' must be a finite number > 0"),
    ({"rope_theta": float("inf")}, "field 'rope_theta' must be a finite number > 0"),
    ({"name": "../.."}, "field 'name' must be a plain name"),
    ({"name": "a/b"}, "field 'name' must be a plain name"),
    ({"tokenizer": ""}, "field 'tokenizer' must not be empty"),
    ({"dedup": {"ngram": 0}}, "field 'dedup': dedup.ngram must be a positive integer"),
    ({"dedup": {"colour": 1}}, "field 'dedup': dedup: unknown key(s) ['colour']"),
    ({"decontaminate": {"ngram": 1}}, "field 'decontaminate': decontaminate: ngram must be >= 2"),
    ({"sources": [{"name": "docs", "uri": "DATA", "sample": float("nan")}]},
     "sources[0]: field 'sample' must be a finite number >= 0, got nan"),
    ({"sources": [{"name": "docs", "uri": "DATA", "sample": float("inf")}]}, "field 'sample' must be a finite number"),
    ({"sources": [{"name": "docs", "uri": "DATA", "sample": -0.5}]}, "field 'sample' must be a finite number >= 0"),
    ({"sources": [{"name": "../docs", "uri": "DATA"}]}, "sources[0]: field 'name' must be a plain name"),
    ({"sources": [{"name": "docs", "uri": " "}]}, "sources[0]: field 'uri' must not be empty"),
    ({"sources": [{"name": "docs", "uri": "DATA", "text_key": ""}]}, "field 'text_key' must not be empty"),
    ({"sources": [{"name": "docs", "uri": "DATA", "optional": "yes"}]}, "field 'optional' must be bool"),
    ({"sources": []}, "field 'sources' must list at least one source"),
]


def _write(tmp_path: Path, data: Path, mutation: dict) -> Path:
    spec = {**base_spec(data), **mutation}
    spec["sources"] = [{**s, "uri": str(data) if s.get("uri") == "DATA" else s["uri"]} for s in spec["sources"]]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("mutation,message", BAD_SPECS, ids=[m for _, m in BAD_SPECS])
def test_bad_spec_value_exits_2_naming_file_and_field(tmp_path: Path, data: Path, mutation: dict, message: str):
    spec = _write(tmp_path, data, mutation)
    out = tmp_path / "out"
    res = RUNNER.invoke(cli_app(), ["build-mixture", str(spec), "--out", str(out), "--no-progress"],
                        env={"COLUMNS": "300"})
    assert res.exit_code == 2, (res.output, res.exception)
    text = " ".join(res.output.split())
    assert message in text and str(spec) in text, text
    assert not (out / "work").exists()  # nothing read or written before the spec was found wrong


def test_non_tokenizer_json_is_a_spec_error(tmp_path: Path, data: Path):
    not_a_tokenizer = tmp_path / "config.json"
    not_a_tokenizer.write_text(json.dumps({"hidden_size": 512}))
    spec = _write(tmp_path, data, {"tokenizer": str(not_a_tokenizer)})
    res = RUNNER.invoke(cli_app(), ["build-mixture", str(spec), "--out", str(tmp_path / "o"), "--no-progress"],
                        env={"COLUMNS": "300"})
    assert res.exit_code == 2, (res.output, res.exception)
    assert "field 'tokenizer'" in res.output and "is not a readable tokenizer.json" in res.output


def test_unreadable_spec_file_is_a_spec_error(tmp_path: Path):
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(SpecError, match="cannot read the spec"):
        load_spec(str(tmp_path / "dir.yaml"))


def test_valid_spec_and_shipped_mixtures_pass(data: Path):
    spec = parse_spec(base_spec(data), "ok.yaml")
    assert spec.sources[0].sample == 1.0
    for name in available_specs():
        load_spec(name).check_sections()
