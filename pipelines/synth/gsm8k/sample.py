"""Constrained resampling of a program's parameters.

New values keep the kind and magnitude of the originals: integers stay integers, money keeps its cents, round
numbers stay round (a $250 price becomes another multiple of 25 or 50, not $263), values land within [x/2, 2x]
(small counts get a few more choices), percentages stay in (0, 100], fractions below 1 stay below 1, and counts of 2
or more never become 1 (which would break "2 apples" grammar). A variant is valid only when every step keeps the
properties the original solution relied on: integral results stay integral (integral divisions), non-negative ones
non-negative, positive ones positive, decimal results stay short (money), and tied coincidences still hold.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction

from .binding import Param
from .parse import terminating_decimals
from .program import Program

MIN_WIDTH = 8  # small counts ("3 apples") still get about ten choices
_LADDER = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 100000, 1000000]


@dataclass(frozen=True, slots=True)
class Domain:
    """Values `unit * k` for integer k in [lo, hi]."""

    unit: Fraction
    lo: int
    hi: int

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1


def domain(p: Param, spread: float = 2.0) -> Domain:
    base = Fraction(1, 10**p.decimals)
    n = p.value / base
    assert n.denominator == 1, (p, n)
    n = int(n)
    g = max((g for g in _LADDER if n % g == 0 and g * 4 <= n), default=1)
    unit, k0 = base * g, n // g
    lo = max(1, math.floor(k0 / spread))
    hi = math.ceil(k0 * spread)
    if g == 1:
        hi = max(hi, k0 + MIN_WIDTH)
    if p.decimals == 0 and p.value >= 2:
        lo = max(lo, math.ceil(Fraction(2) / unit))  # "2 apples" never becomes "1 apples"
    if p.value < 1:
        hi = min(hi, math.ceil(Fraction(1) / unit) - 1)  # a fraction stays a fraction
    if p.percent:
        hi = min(hi, math.floor(Fraction(100) / unit))
    return Domain(unit, lo, max(lo, hi))


class Sampler:
    """Draws parameter values for one program: free parameters from their domains, frozen ones kept (derived
    ones are filled in by `Program.solve`)."""

    def __init__(self, program: Program, rng: random.Random, spread: float = 2.0):
        self.original = program.original_values()
        self.domains = [(p.name, domain(p, spread)) for p in program.free_params]
        self.rng = rng

    @property
    def space(self) -> int:
        """How many distinct draws exist."""
        return math.prod(d.size for _, d in self.domains)

    def draw(self) -> dict[str, Fraction]:
        values = dict(self.original)
        for name, d in self.domains:
            values[name] = d.unit * self.rng.randint(d.lo, d.hi)
        return values


def _short_decimal(value: Fraction, original: Fraction) -> bool:
    places = terminating_decimals(value)
    if places is None:
        return False
    if original.denominator == 1:
        return places == 0
    return places <= max(2, terminating_decimals(original) or 0)


def violation(program: Program, values: dict[str, Fraction], results: list[Fraction]) -> str | None:
    """Why (values, results) is not a valid variant of `program`, or None."""
    for i, (new, step) in enumerate(zip(results, program.steps)):
        old = step.result
        if not _short_decimal(new, old):
            return "non-integral or long decimal result"
        if (old >= 0 > new) or (old > 0 and new == 0):
            return "negative or zero result"
    for name, j in program.derived.items():
        p, new = program.params[name], values[name]
        if not _short_decimal(new, p.value) or new <= 0 or (p.percent and new > 100):
            return "derived number out of range"
    for a, b in program.ties:
        if program.operand_value(a, values, results) != program.operand_value(b, values, results):
            return "tied numbers differ"
    return None
