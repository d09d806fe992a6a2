"""Declarative mixture specs: YAML in `mixtures/`, validated into dataclasses with errors that name the field."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.build.targets import check_mixture_targets, check_source_targets
from pipelines.errors import SpecError
from pipelines.read.registry import EXTRA_FORMATS, FORMATS
from pipelines.resources import (
    MIXTURES_DIR,
    REPO_ROOT,
    find_tokenizer,
    tokenizer_not_found,
)
from pipelines.steps.tokenize_modes import TOKENIZE_STEPS

# How a record becomes text (see pipelines/read/formats.py); the container (jsonl/gz/zst/parquet/json array) is inferred
# from the file name.
# pre-tokenized MDS shards (pipelines/read/mds_source.py) and chat turns for the SFT template (pipelines/read/chat.py)
TOKENIZATIONS = tuple(TOKENIZE_STEPS)  # spec key `tokenization`


# Names become path components (default `out/<name>`, work dirs) and id prefixes: no separators, no `..`.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


@dataclass(frozen=True)
class SourceSpec:
    name: str
    uri: str
    sample: float = 1.0  # < 1 subsamples, > 1 repeats (by document-id hash)
    format: str = "text"
    text_key: str = "text"
    id_key: str = "id"
    optional: bool = False  # an optional source with no files is reported, not an error condition
    packing: str | dict[str, Any] | None = None  # packer-specific role of this source (e.g. long / short), see pipelines/pack/plan.py
    options: dict[str, Any] = field(default_factory=dict)  # free-form per-source settings for packers/adapters
    share: float | None = None  # planned fraction of the stage's `tokens` (pipelines/build/targets.py)
    fetch: dict[str, Any] | None = None  # text stored elsewhere, fetched by a row field (pipelines/read/fetch.py)
    filter: dict[str, list] | None = None  # keep rows whose fields have these values (pipelines/read/rowfilters.py)


@dataclass(frozen=True)
class MixtureSpec:
    name: str
    seq_len: int
    tokenizer: str
    sources: tuple[SourceSpec, ...]
    description: str = ""
    eos_id: int | None = None  # default: the tokenizer's <|endoftext|> (0 for the Instella tokenizer)
    pad_id: int | None = None  # default: the tokenizer's <|padding|> (1 for the Instella tokenizer)
    rope_theta: float = 10_000.0  # recorded for the trainer
    seed: int = 0
    shard_tokens: int = 1 << 27  # target tokens per shard file (rounded to whole rows)
    packing: dict[str, Any] = field(default_factory=lambda: {"mode": "concat"})
    dedup: dict[str, Any] | None = None
    decontaminate: dict[str, Any] | None = None
    tokens: float | None = None  # target tokens of the stage (e.g. 58e9), with per-source `share:`
    tokenization: str = "default"  # "dolma": dolma-tokens-compatible text handling (pipelines/steps/tokenize_modes.py)
    holdout: dict[str, Any] | None = None  # {fraction, max_docs}: documents held out per source (pipelines/pack/holdout.py)
    variant_of: str | None = None  # the spec this one improves on (stage2-clean: stage2); --dry-run prints both
    path: str = ""  # where the spec was loaded from (not part of the hash)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("path")
        if d["holdout"] is None:  # absent: the spec (and its hash) reads as before the key existed
            d.pop("holdout")
        if d["variant_of"] is None:  # absent: the hash of every spec without the key stays what it was
            d.pop("variant_of")
        return d

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()

    def resolve_tokenizer(self) -> str:
        """A tokenizer.json path, or a name (`allenai/eleuther-ai-gpt-neox-20b-pii-special`) looked up as
        `<owner>_<name>.json` in $MIDTRAIN_TOKENIZERS and the shared data's tokenizers/ folder."""
        path = self.resolve_path(self.tokenizer)
        if Path(path).exists():
            return path
        found = find_tokenizer(self.tokenizer)
        if found is None:
            raise SpecError(f"{self.path}: {tokenizer_not_found(self.tokenizer)}")
        return str(found)

    def load_tokenizer(self):
        """(path, tokenizers.Tokenizer) of the spec's tokenizer; SpecError when it is missing or not a tokenizer."""
        from tokenizers import Tokenizer

        path = self.resolve_tokenizer()
        try:
            return path, Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception for unreadable/invalid files
            raise SpecError(f"{self.path}: field 'tokenizer': {path} is not a readable tokenizer.json "
                            f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None

    def check_token_ids(self, eos_id: int, pad_id: int, vocab_size: int) -> None:
        """eos/pad ids must be ids of the tokenizer: shards hold uint16 when the vocabulary fits, so an id beyond it
        would be silently wrapped (70000 -> 4464)."""
        for key, value in (("eos_id", eos_id), ("pad_id", pad_id)):
            if not 0 <= value < vocab_size:
                raise SpecError(f"{self.path}: field '{key}' must be a token id of the tokenizer (0..{vocab_size - 1}), "
                                f"got {value}")

    def check_sections(self) -> None:
        """Validate the sections other modules interpret (packing mode, dedup, decontaminate) before any work runs."""
        from pipelines.pack.registry import MODES

        mode = self.packing.get("mode", "concat")
        if mode not in MODES:
            raise SpecError(f"{self.path}: field 'packing': unknown packing mode {mode!r}; available: {sorted(MODES)}")
        preference = [s.name for s in self.sources if s.format == "preference"]
        if (mode == "preference") != bool(preference) or (preference and len(preference) != len(self.sources)):
            raise SpecError(f"{self.path}: field 'packing': mode 'preference' (chosen/rejected row pairs) and sources "
                            "of format 'preference' go together: every source of a preference build is a preference "
                            "source, and such sources need `packing: {mode: preference, loss_mask: true}`")
        if mode == "preference" and not self.packing.get("loss_mask"):
            raise SpecError(f"{self.path}: field 'packing.loss_mask' must be true with mode 'preference' (the DPO "
                            "loss reads only the final assistant turn)")
        spec_dir = Path(self.path).parent if self.path else Path.cwd()
        for key in ("dedup", "decontaminate"):
            if getattr(self, key) is None:
                continue
            try:
                if key == "dedup":
                    from pipelines.dedup.signatures import DedupConfig

                    DedupConfig.from_spec(self.dedup)
                else:
                    from pipelines.decontam.ngram import DecontamConfig

                    DecontamConfig.from_spec(self.decontaminate, spec_dir)
            except (ValueError, TypeError, OSError) as e:
                raise SpecError(f"{self.path}: field '{key}': {e}") from None

    def resolve_path(self, value: str) -> str:
        """Resolve a spec-relative local path (tokenizer, benchmarks): spec dir first, then the repo root."""
        if "://" in value or Path(value).is_absolute():
            return value
        for base in (Path(self.path).parent if self.path else None, REPO_ROOT):
            if base is not None and (base / value).exists():
                return str((base / value).resolve())
        return str((REPO_ROOT / value).resolve())


def _check_type(where: str, key: str, value: Any, types: tuple[type, ...]) -> None:
    if isinstance(value, bool) and bool not in types:
        raise SpecError(f"{where}: field '{key}' must be {' or '.join(t.__name__ for t in types)}, got bool")
    if not isinstance(value, types):
        raise SpecError(
            f"{where}: field '{key}' must be {' or '.join(t.__name__ for t in types)}, got {type(value).__name__} ({value!r})"
        )


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.name != "path"}


_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "uri": (str,), "sample": (int, float), "format": (str,), "text_key": (str,), "id_key": (str,),
    "optional": (bool,), "packing": (str, dict), "options": (dict,), "seq_len": (int,), "tokenizer": (str,),
    "sources": (list,), "description": (str,), "eos_id": (int,), "pad_id": (int,), "rope_theta": (int, float),
    "seed": (int,), "shard_tokens": (int,), "dedup": (dict,), "decontaminate": (dict,),
    "share": (int, float), "fetch": (dict,), "filter": (dict,), "tokens": (int, float, str),
    "tokenization": (str,), "holdout": (dict,), "variant_of": (str,),
}


def _validate_mapping(where: str, raw: Any, cls) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known = _fields(cls)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(known)}")
    missing = [
        k for k, f in known.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and k not in raw
    ]
    if missing:
        raise SpecError(f"{where}: missing required field(s) {missing}")
    for key, value in raw.items():
        if value is None and key in ("dedup", "decontaminate", "eos_id", "pad_id", "share", "fetch", "filter",
                                     "tokens", "holdout", "variant_of") + (("packing",) if cls is SourceSpec else ()):
            continue
        _check_type(where, key, value, _TYPES[key])
    return dict(raw)


def _check_name(where: str, key: str, value: str) -> None:
    if not SAFE_NAME.fullmatch(value) or value in (".", ".."):
        raise SpecError(f"{where}: field '{key}' must be a plain name (letters, digits, '.', '_', '-', '+'; no '/' "
                        f"or '..'; at most 128 characters), got {value!r}")


def _check_number(where: str, key: str, value: float, minimum: float, inclusive: bool = True) -> None:
    """Finite and >= (or >) minimum; NaN fails every comparison, so it is checked explicitly."""
    ok = math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
    if not ok:
        bound = f">= {minimum}" if inclusive else f"> {minimum}"
        raise SpecError(f"{where}: field '{key}' must be a finite number {bound}, got {value!r}")


def _check_source(where: str, s: dict[str, Any]) -> SourceSpec:
    _check_name(where, "name", s["name"])
    if not s["uri"].strip():
        raise SpecError(f"{where}: field 'uri' must not be empty")
    sample = s.get("sample", 1.0)
    _check_number(where, "sample", sample, 0)
    if s.get("format", "text") not in FORMATS + EXTRA_FORMATS:
        raise SpecError(f"{where}: field 'format' must be one of {list(FORMATS + EXTRA_FORMATS)}, got {s['format']!r}")
    if s.get("format") in EXTRA_FORMATS:
        from pipelines.read.registry import validate_source_options

        validate_source_options(where, s["format"], s.get("options") or {})
    for key in ("text_key", "id_key"):
        if key in s and not s[key]:
            raise SpecError(f"{where}: field '{key}' must not be empty")
    if s.get("optional") and planned_share(s) is not None:
        raise SpecError(f"{where}: a source with a planned share ({planned_share(s):g}) cannot be 'optional': its "
                        "missing files would silently shrink the mix; drop 'optional' (missing files are then an "
                        "error) or the share")
    return SourceSpec(**{**s, "sample": float(sample)})


def planned_share(source: dict[str, Any] | SourceSpec) -> float | None:
    """A source's planned share of the mix: spec `share:`, or a packer's `options.share` (long-context specs)."""
    get = source.get if isinstance(source, dict) else lambda k, d=None: getattr(source, k, d)
    share = get("share")
    if share is None:
        share = (get("options") or {}).get("share")
    return None if share is None else float(share)


def parse_spec(raw: Any, path: str = "<spec>") -> MixtureSpec:
    if isinstance(raw, dict) and "packing" in raw and not isinstance(raw["packing"], dict):
        raise SpecError(f"{path}: field 'packing' must be a mapping like {{mode: concat}}, got {raw['packing']!r}")
    data = _validate_mapping(path, raw, MixtureSpec)
    _check_name(path, "name", data["name"])
    if not isinstance(data.get("packing", {}).get("mode", "concat"), str):
        raise SpecError(f"{path}: field 'packing.mode' must be a string, got {data['packing']['mode']!r}")
    if not isinstance(data.get("packing", {}).get("loss_mask", False), bool):
        raise SpecError(f"{path}: field 'packing.loss_mask' must be true or false, got {data['packing']['loss_mask']!r}")
    by_source = data.get("packing", {}).get("by_source", False)
    if not isinstance(by_source, bool):
        raise SpecError(f"{path}: field 'packing.by_source' must be true or false, got {by_source!r}")
    if by_source and data["packing"].get("mode", "concat") != "concat":
        raise SpecError(f"{path}: field 'packing.by_source' applies to mode concat only, got mode "
                        f"{data['packing']['mode']!r}")
    from pipelines.pack.holdout import HoldoutConfig

    HoldoutConfig.from_spec(data.get("holdout"), path)
    if data.get("tokenization", "default") not in TOKENIZATIONS:
        raise SpecError(f"{path}: field 'tokenization' must be one of {list(TOKENIZATIONS)}, got {data['tokenization']!r}")
    if data["seq_len"] <= 0:
        raise SpecError(f"{path}: field 'seq_len' must be positive, got {data['seq_len']}")
    if not data["tokenizer"].strip():
        raise SpecError(f"{path}: field 'tokenizer' must not be empty")
    for key in ("eos_id", "pad_id", "seed"):
        if data.get(key) is not None and data[key] < 0:
            raise SpecError(f"{path}: field '{key}' must be >= 0, got {data[key]}")
    if "shard_tokens" in data and data["shard_tokens"] <= 0:
        raise SpecError(f"{path}: field 'shard_tokens' must be positive, got {data['shard_tokens']}")
    if "rope_theta" in data:
        _check_number(path, "rope_theta", data["rope_theta"], 0, inclusive=False)
        data["rope_theta"] = float(data["rope_theta"])
    if not data["sources"]:
        raise SpecError(f"{path}: field 'sources' must list at least one source")
    sources = []
    seen: set[str] = set()
    for i, raw_source in enumerate(data["sources"]):
        where = f"{path}: sources[{i}]"
        s = _validate_mapping(where, raw_source, SourceSpec)
        if s["name"] in seen:
            raise SpecError(f"{where}: duplicate source name '{s['name']}'")
        seen.add(s["name"])
        sources.append(_check_source(where, check_source_targets(where, s)))
    data["sources"] = tuple(sources)
    data = check_mixture_targets(path, data)
    return MixtureSpec(**data, path=path)


def available_specs() -> list[str]:
    return sorted(p.stem for p in MIXTURES_DIR.glob("*.yaml"))


def related_specs(spec: MixtureSpec) -> list[str]:
    """The shipped specs `spec` is a variant of, or that are variants of it (`variant_of:`), for --dry-run."""
    names = [spec.variant_of] if spec.variant_of else []
    for name in available_specs():
        if name != spec.name and name not in names and load_spec(name).variant_of == spec.name:
            names.append(name)
    return names


def load_spec(name_or_path: str) -> MixtureSpec:
    """Load a spec by name (`stage2`) or path (`my/spec.yaml`)."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        candidate = MIXTURES_DIR / f"{name_or_path}.yaml"
        if not candidate.exists():
            if path.suffix in (".yaml", ".yml"):
                raise SpecError(f"spec file not found: {name_or_path}")
            raise SpecError(f"unknown mixture '{name_or_path}'; available: {', '.join(available_specs())}")
        path = candidate
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read the spec: {e}") from e
    return parse_spec(raw, str(path))
