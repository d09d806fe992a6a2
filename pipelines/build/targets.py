"""Token targets and the spec keys that shape what a source yields: `tokens:` (stage), `share:`, `fetch:`, `filter:`.

`tokens: 58e9` (a number; YAML's `58e9` arrives as a string and is parsed) is the stage's target; a source's
`share: 0.1` is its planned fraction of it. `build-mixture --dry-run` turns them into the sampling rate each source
needs, `share × tokens / measured tokens at sample 1`, and the manifest's `share_plan` view sets the planned share
beside the achieved one. The checks here raise SpecError naming the spec file and the field.
"""
from __future__ import annotations

import math
from typing import Any

from pipelines.errors import SpecError
from pipelines.read.fetch import FetchConfig

SHARE_SLACK = 1e-6  # shares written with rounding may sum to 1.000001


def _spec_error(msg: str) -> SpecError:
    return SpecError(msg)


def parse_tokens(where: str, value: Any) -> float:
    number = value
    if isinstance(value, str):
        try:
            number = float(value.replace("_", ""))
        except ValueError:
            raise _spec_error(f"{where}: field 'tokens' must be a number of tokens such as 58e9, got {value!r}") from None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) or number <= 0:
        raise _spec_error(f"{where}: field 'tokens' must be a positive number of tokens, got {value!r}")
    return float(number)


def check_source_targets(where: str, source: dict[str, Any]) -> dict[str, Any]:
    """Validate a source's `share`, `fetch` and `filter`; returns the source with `share` as a float."""
    out = dict(source)
    share = source.get("share")
    if share is not None:
        if not 0 < share <= 1:
            raise _spec_error(f"{where}: field 'share' must be in (0, 1], got {share!r}")
        out["share"] = float(share)
    if source.get("fetch") is not None:
        try:
            FetchConfig.from_spec(source["fetch"])
        except ValueError as e:
            raise _spec_error(f"{where}: field 'fetch': {e}") from None
    flt = source.get("filter")
    if flt is not None:
        if not flt:
            raise _spec_error(f"{where}: field 'filter' must map a field name to the values to keep, got {{}}")
        for name, values in flt.items():
            if not isinstance(values, list) or not values or not all(
                    isinstance(v, (str, int, float, bool)) for v in values):
                raise _spec_error(f"{where}: field 'filter.{name}' must be a non-empty list of values to keep, "
                                  f"got {values!r}")
    return out


def check_mixture_targets(path: str, data: dict[str, Any]) -> dict[str, Any]:
    """Validate `tokens` and the sum of the sources' shares; returns the mixture with `tokens` as a float."""
    out = dict(data)
    if data.get("tokens") is not None:
        out["tokens"] = parse_tokens(path, data["tokens"])
    total = sum(s.share for s in data["sources"] if s.share is not None)
    if total > 1 + SHARE_SLACK:
        raise _spec_error(f"{path}: field 'share' of the sources sums to {total:g}, more than 1")
    return out


def required_rate(share: float | None, tokens: float | None, measured_tokens: int | None, sample: float) -> float | None:
    """The sampling rate that makes a source `share × tokens` tokens, from its tokens at the spec's `sample`."""
    if share is None or tokens is None or not measured_tokens or sample <= 0:
        return None
    return share * tokens / (measured_tokens / sample)
