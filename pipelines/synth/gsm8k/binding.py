"""Binding the literals of a solution's calculations to what they stand for.

A literal such as `16` in `<<32+16=48>>` may be a question number, an earlier result, a percentage of a question
number, or a constant explained by the text. Readings are narrowed in three ways, then the program is built:

1. A question number equal to an explained constant ("2 friends ... twice a week") is frozen: it keeps its value,
   so both readings stay right.
2. A worked solution uses the intermediates it computes and the numbers it is given: among the joint readings of
   all ambiguous literals only those using the most intermediate results, then the most question numbers, are
   kept ("6*2=12 ... 12*52": the 12 is the result, not the months).
3. What is still ambiguous is *tied*: the variant must keep the coincidence. A question number equal to an earlier
   result becomes derived from it ("16 slices" and "2 x 8 = 16"); other coincidences become equality constraints
   that sampling enforces. Both readings then give the same numbers, so the guess cannot be wrong.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction

MAX_JOINT_READINGS = 4096


class Rejected(Exception):
    """A problem (or variant) that cannot be used; `reason` is a short stable key for the report."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Param:
    name: str
    value: Fraction
    decimals: int  # places as written in the question
    percent: bool  # written "20%" / "20 percent": stays within (0, 100]
    fixed: str | None = None  # why it is not resampled (ordinal, year, unused, same as a constant ...)


@dataclass(frozen=True, slots=True)
class Operand:
    """What a literal stands for: kind is 'param', 'pct' (param / 100), 'result' (step index) or 'const'."""

    kind: str
    ref: str | int | Fraction


@dataclass(slots=True)
class Step:
    tokens: list[str | Operand]  # operators as strings, literals as operands
    const_text: dict[int, str]  # original text of constant literals, by token index
    result: Fraction  # the original annotated result


def _options(v: Fraction, i: int, params: dict[str, Param], results: list[Fraction],
             allowed: set[Fraction]) -> list[Operand]:
    opts: list[Operand] = []
    for name, p in params.items():
        if p.fixed is None and p.value == v:
            opts.append(Operand("param", name))
        if p.fixed is None and p.percent and p.value / 100 == v:
            opts.append(Operand("pct", name))
    opts += [Operand("result", j) for j in range(i) if results[j] == v]
    if v in allowed or any(p.fixed and p.value == v for p in params.values()):
        opts.append(Operand("const", v))
    return opts


def bind_steps(step_tokens: list[list[str]], results: list[Fraction], params: dict[str, Param],
               allowed: set[Fraction], exprs: list[str], notes: list[str]
               ) -> tuple[list[Step], list[tuple[Operand, Operand]], dict[str, int]]:
    """Bind every literal; returns the steps, the equality ties and the derived parameters (name -> step)."""
    literals = [(i, k, Fraction(t)) for i, toks in enumerate(step_tokens) for k, t in enumerate(toks)
                if t not in "+-*/()"]
    # 1. Freeze question numbers that a calculation could also read as an explained constant.
    for _, _, v in literals:
        if v in allowed:
            for p in params.values():
                if p.fixed is None and (p.value == v or (p.percent and p.value / 100 == v)):
                    p.fixed = "same value as a constant"
    options = {(i, k): _options(v, i, params, results, allowed) for i, k, v in literals}
    for (i, k), opts in options.items():
        if not opts:
            raise Rejected("unexplained number in a calculation", f"{step_tokens[i][k]} in <<{exprs[i]}>>")

    # 2. Keep the joint readings that use the most intermediate results, then the most question numbers.
    ambiguous = [key for key, opts in options.items() if len(opts) > 1]
    n_joint = 1
    for key in ambiguous:
        n_joint *= len(options[key])
    if n_joint > MAX_JOINT_READINGS:
        raise Rejected("ambiguous number in a calculation", f"{n_joint} joint readings")
    fixed = [o for opts in options.values() if len(opts) == 1 for o in opts]
    needed = set(range(len(results) - 1))

    def coverage(reading: tuple[Operand, ...]) -> tuple[int, int]:
        ops = fixed + list(reading)
        return (len(needed & {o.ref for o in ops if o.kind == "result"}),
                len({o.ref for o in ops if o.kind in ("param", "pct")}))

    joint = list(itertools.product(*(options[key] for key in ambiguous)))
    best = max(map(coverage, joint), default=None)
    readings = [r for r in joint if coverage(r) == best]
    chosen: dict[tuple[int, int], Operand] = {key: opts[0] for key, opts in options.items() if len(opts) == 1}
    ties: list[tuple[Operand, Operand]] = []
    derived: dict[str, int] = {}
    for n, key in enumerate(ambiguous):
        left = sorted({r[n] for r in readings}, key=_preference)
        chosen[key] = left[0]
        if len(left) == 1:
            continue
        # 3. Tie the remaining readings to the chosen one (the most recent result when there is one).
        head = left[0]
        for other in left[1:]:
            if head.kind == "result" and other.kind == "param" and derived.get(other.ref, head.ref) == head.ref:
                derived[other.ref] = head.ref
            else:
                ties.append((head, other))
        notes.append(f"tied {step_tokens[key[0]][key[1]]} in <<{exprs[key[0]]}>>: {[o.kind for o in left]}")

    steps: list[Step] = []
    for i, toks in enumerate(step_tokens):
        bound: list[str | Operand] = []
        const_text: dict[int, str] = {}
        for k, t in enumerate(toks):
            if t in "+-*/()":
                bound.append(t)
                continue
            op = chosen[(i, k)]
            if op.kind == "const":
                const_text[k] = t
            bound.append(op)
        steps.append(Step(bound, const_text, results[i]))

    used = {t.ref for s in steps for t in s.tokens if isinstance(t, Operand) and t.kind in ("param", "pct")}
    used |= set(derived)  # a derived number moves with its result even where no literal names it
    for name, p in params.items():
        if name not in used and p.fixed is None:
            p.fixed = "unused by the solution"
    for name in list(derived):
        if params[name].fixed:
            del derived[name]
    _check_acyclic(steps, derived)
    return steps, ties, derived


def _preference(o: Operand) -> tuple:
    """Deterministic order of readings: most recent result first, then parameters, percentages, constants."""
    rank = {"result": 0, "param": 1, "pct": 2, "const": 3}[o.kind]
    return (rank, -o.ref if o.kind == "result" else 0, str(o.ref))


def _check_acyclic(steps: list[Step], derived: dict[str, int]) -> None:
    """A derived parameter must not feed the result it is derived from."""
    deps: list[set[str]] = []
    for s in steps:
        d: set[str] = set()
        for t in s.tokens:
            if isinstance(t, Operand):
                if t.kind in ("param", "pct"):
                    d.add(t.ref)
                elif t.kind == "result":
                    d |= deps[t.ref]
        deps.append(d)
    for _ in range(len(derived) + 1):  # expand derived parameters into what they come from
        for d in deps:
            for name in list(d):
                if name in derived:
                    d |= deps[derived[name]]
    for name, j in derived.items():
        if name in deps[j]:
            raise Rejected("ambiguous number in a calculation", f"{name} would be derived from its own result")
