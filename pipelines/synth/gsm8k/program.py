"""Abstraction: turn one GSM8K problem into a program over the question's numbers, verified on the original values.

The program's parameters are the distinct resamplable numbers of the question; its steps are the solution's
`<<expr=result>>` annotations with every literal bound to a parameter, an earlier step's result, a percentage
parameter divided by 100, or a constant the text explains ("half" -> 2, "hours" -> 60, "three" -> 3). A literal that
could be two different things (a parameter and an earlier result with the same value) makes the problem ambiguous
and it is rejected rather than guessed; a parameter that collides with an explained constant is frozen instead.
Question and solution also become templates whose number slots point at parameters or step results, so a new
assignment of values re-renders both consistently (rewrite.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction

from .binding import Operand, Param, Rejected, Step, bind_steps
from .parse import (
    AnnotationError,
    NumberToken,
    annotate_bare_calculations,
    eval_tokens,
    final_answer,
    find_annotations,
    find_numbers,
    parse_number,
    tokenize_expr,
)

# Words that explain a constant in a calculation. Number words stand for themselves; unit words for their
# conversion factors. Matched on lower-cased words of question + solution.
NUMBER_WORDS: dict[str, tuple[Fraction, ...]] = {
    w: (Fraction(i),)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
NUMBER_WORDS.update({w: (Fraction(v),) for w, v in [("thirty", 30), ("forty", 40), ("fifty", 50), ("sixty", 60),
                                                      ("seventy", 70), ("eighty", 80), ("ninety", 90),
                                                      ("hundred", 100), ("thousand", 1000), ("million", 10**6)]})
_F = Fraction
UNIT_WORDS: dict[str, tuple[Fraction, ...]] = {
    "half": (_F(2), _F(1, 2)), "halves": (_F(2), _F(1, 2)), "twice": (_F(2),), "double": (_F(2),),
    "doubled": (_F(2),), "doubles": (_F(2),), "both": (_F(2),), "pair": (_F(2),), "pairs": (_F(2),),
    "couple": (_F(2),), "triple": (_F(3),), "tripled": (_F(3),), "thrice": (_F(3),), "third": (_F(3),),
    "thirds": (_F(3),), "quarter": (_F(4), _F(1, 4)), "quarters": (_F(4), _F(1, 4)), "fourth": (_F(4),),
    "fifth": (_F(5),), "dozen": (_F(12),), "dozens": (_F(12),), "percent": (_F(100), _F(1, 100)), "%": (_F(100), _F(1, 100)),
    "percentage": (_F(100),), "cents": (_F(100),), "cent": (_F(100),), "dollars": (_F(100),),
    "minute": (_F(60),), "minutes": (_F(60),), "hour": (_F(60), _F(24)), "hours": (_F(60), _F(24)),
    "second": (_F(60),), "seconds": (_F(60),), "day": (_F(24), _F(7), _F(30), _F(365)),
    "days": (_F(24), _F(7), _F(30), _F(365)), "daily": (_F(7), _F(30), _F(365)), "week": (_F(7), _F(52)),
    "weeks": (_F(7), _F(52)), "weekly": (_F(52), _F(4)), "weekend": (_F(2),), "weekday": (_F(5),),
    "weekdays": (_F(5),), "month": (_F(12), _F(30), _F(4)), "months": (_F(12), _F(30), _F(4)),
    "monthly": (_F(12),), "year": (_F(12), _F(365), _F(52)), "years": (_F(12), _F(365), _F(52)),
    "annual": (_F(12),), "yearly": (_F(12),), "decade": (_F(10),), "century": (_F(100),),
    "foot": (_F(12),), "feet": (_F(12), _F(3)), "inch": (_F(12),), "inches": (_F(12),), "yard": (_F(3), _F(36)),
    "yards": (_F(3), _F(36)), "pound": (_F(16),), "pounds": (_F(16),), "ounce": (_F(16),), "ounces": (_F(16),),
    "gallon": (_F(4), _F(128)), "gallons": (_F(4), _F(128)), "quart": (_F(4),), "quarts": (_F(4),),
    "meter": (_F(100), _F(1000)), "meters": (_F(100), _F(1000)), "centimeters": (_F(100),),
    "kilometers": (_F(1000),), "kilograms": (_F(1000),), "grams": (_F(1000),), "liters": (_F(1000),),
    "milliliters": (_F(1000),), "ml": (_F(1000),), "kg": (_F(1000),), "mile": (_F(5280),),
}
ALWAYS_CONSTANTS = frozenset({Fraction(1)})
WORD_RE = re.compile(r"[a-z]+|%")


@dataclass(frozen=True, slots=True)
class Slot:
    """A number slot in a template, rendered with the written style of the number it replaced."""

    operand: Operand
    decimals: int
    commas: bool


@dataclass(frozen=True, slots=True)
class StepSlot:
    """A `<<expr=result>>` annotation in the solution template."""

    step: int


@dataclass(slots=True)
class Program:
    """A verified abstraction of one train problem."""

    source_index: int
    question: str
    solution: str  # the original answer with bare calculations annotated
    params: dict[str, Param]
    steps: list[Step]
    question_parts: list[str | Slot]
    solution_parts: list[str | Slot | StepSlot]
    notes: list[str] = field(default_factory=list)
    # Equalities a variant must keep: a literal that could be read two ways stays right under both readings.
    ties: list[tuple[Operand, Operand]] = field(default_factory=list)
    # Parameters whose new value is an earlier result (tied "16 slices" to "2 x 8 = 16"), by step index.
    derived: dict[str, int] = field(default_factory=dict)
    _compiled: list | None = field(default=None, repr=False, compare=False)

    @property
    def free_params(self) -> list[Param]:
        """The parameters sampling draws (neither frozen nor derived from a result)."""
        return [p for p in self.params.values() if p.fixed is None and p.name not in self.derived]

    def operand_value(self, op: Operand, values: dict[str, Fraction], results: list[Fraction]) -> Fraction:
        if op.kind == "param":
            return values[op.ref]
        if op.kind == "pct":
            return values[op.ref] / 100
        if op.kind == "result":
            return results[op.ref]
        return op.ref

    def _run_once(self, values: dict[str, Fraction]) -> list[Fraction]:
        if self._compiled is None:
            self._compiled = [_compile_step(s) for s in self.steps]
        results: list[Fraction] = []
        for fn in self._compiled:
            results.append(fn(values, results))
        return results

    def solve(self, values: dict[str, Fraction]) -> tuple[dict[str, Fraction], list[Fraction]]:
        """All parameter values (derived ones filled in) and every step's result, exactly.

        Raises AnnotationError (division by zero) when the values break a step.
        """
        values = dict(values)
        for _ in range(len(self.derived) + 1):
            results = self._run_once(values)
            stale = {n: results[j] for n, j in self.derived.items() if values[n] != results[j]}
            if not stale:
                return values, results
            values.update(stale)
        raise AnnotationError("derived parameters do not settle")

    def run(self, values: dict[str, Fraction]) -> list[Fraction]:
        return self.solve(values)[1]

    def original_values(self) -> dict[str, Fraction]:
        return {name: p.value for name, p in self.params.items()}


def _compile_step(step: Step):
    """A step as a Python function of (values, results) over Fractions.

    The source is generated from validated tokens only (numbers, + - * / parentheses, operand references), so
    evaluating it is as safe as `eval_tokens` and ~5x faster; Python's precedence rules are the same.
    """
    consts: list[Fraction] = []
    src = []
    for t in step.tokens:
        if isinstance(t, str):
            src.append(t)
        elif t.kind == "param":
            src.append(f"V[{t.ref!r}]")
        elif t.kind == "pct":
            src.append(f"(V[{t.ref!r}]/100)")
        elif t.kind == "result":
            src.append(f"R[{int(t.ref)}]")
        else:
            consts.append(Fraction(t.ref))
            src.append(f"C[{len(consts) - 1}]")
    code = compile(f"lambda V, R: Fraction({''.join(src)})", "<step>", "eval")
    fn = eval(code, {"Fraction": Fraction, "C": consts, "__builtins__": {}})

    def run(values: dict[str, Fraction], results: list[Fraction]) -> Fraction:
        try:
            return fn(values, results)
        except ZeroDivisionError as e:
            raise AnnotationError("division by zero") from e

    return run


# ---------------------------------------------------------------------------------------------------------------
def _question_token_fixed(text: str, tok: NumberToken) -> str | None:
    """Why a question number must not be resampled, or None."""
    after = text[tok.end:tok.end + 3]
    before = text[max(0, tok.start - 2):tok.start]
    if re.match(r"(st|nd|rd|th)\b", after):
        return "ordinal"
    if after.startswith(":") or before.endswith(":") or re.match(r"\s?[ap]\.?m\b", after, re.I):
        return "clock time"
    if after.startswith("/") or before.endswith("/"):
        return "fraction"
    if before[-1:].isalpha() or re.match(r"[a-zA-Z]", text[tok.end:tok.end + 1] or " ") and \
            not re.match(r"(k|m|g|kg|km|cm|mm|ml|lb|lbs|oz|ft|in|mph|hr|hrs|min|pm|am|s|x)\b", after, re.I):
        return "part of a word"
    if tok.decimals == 0 and not tok.commas and 1900 <= tok.value <= 2099 and not before.endswith("$"):
        return "year"
    if tok.value in (0, 1):
        return "zero or one"
    return None


def _is_percent(text: str, tok: NumberToken) -> bool:
    return bool(re.match(r"\s?(%|percent\b)", text[tok.end:tok.end + 9]))


def _allowed_constants(text: str, fixed_values: set[Fraction]) -> set[Fraction]:
    out = set(ALWAYS_CONSTANTS) | fixed_values
    for w in WORD_RE.findall(text.lower()):
        out.update(NUMBER_WORDS.get(w, ()))
        out.update(UNIT_WORDS.get(w, ()))
    return out


def abstract(source_index: int, question: str, answer: str) -> Program:
    """Build and verify the program of one train problem; raises `Rejected` with a reason key."""
    try:
        solution, n_bare = annotate_bare_calculations(answer)
        anns = find_annotations(solution)
    except AnnotationError as e:
        raise Rejected("malformed annotation", str(e)) from e
    if not anns:
        raise Rejected("no calculator annotations")
    final = final_answer(solution)
    if final is None:
        raise Rejected("no final answer")

    # 1. The original annotations must be right on their own (GSM8K has some rounded or mistyped ones).
    step_tokens: list[list[str]] = []
    results: list[Fraction] = []
    for a in anns:
        try:
            toks = tokenize_expr(a.expr)
            value, printed = eval_tokens(toks), parse_number(a.result_text)
        except (AnnotationError, ValueError, ZeroDivisionError) as e:
            raise Rejected("malformed annotation", f"<<{a.expr}={a.result_text}>>: {e}") from e
        if value != printed:
            raise Rejected("annotation does not reproduce its result", f"<<{a.expr}={a.result_text}>> is {value}")
        step_tokens.append(toks)
        results.append(value)
    try:
        if parse_number(final) != results[-1]:
            raise Rejected("final answer is not the last calculation", f"#### {final} vs {results[-1]}")
    except ValueError as e:
        raise Rejected("final answer is not a number", final) from e

    # 2. Parameters: distinct values of the question's resamplable numbers.
    q_tokens = find_numbers(question)
    params: dict[str, Param] = {}
    by_value: dict[Fraction, str] = {}
    token_param: dict[int, str] = {}
    fixed_values: set[Fraction] = set()
    for i, tok in enumerate(q_tokens):
        reason = _question_token_fixed(question, tok)
        if reason:
            fixed_values.add(tok.value)
            continue
        name = by_value.get(tok.value)
        if name is None:
            name = by_value[tok.value] = f"p{len(params)}"
            params[name] = Param(name, tok.value, tok.decimals, _is_percent(question, tok))
        else:
            params[name].decimals = max(params[name].decimals, tok.decimals)
            params[name].percent |= _is_percent(question, tok)
        token_param[i] = name
    allowed = _allowed_constants(question + " " + solution, fixed_values)

    # 3. Bind every literal of every step (binding.py resolves literals with several readings).
    notes: list[str] = [f"{n_bare} bare calculation(s) annotated"] if n_bare else []
    steps, ties, derived = bind_steps(step_tokens, results, params, allowed, [a.expr for a in anns], notes)
    if not any(p.fixed is None for p in params.values()):
        raise Rejected("no resamplable number")

    program = Program(source_index, question, solution, params, steps, [], [], notes, ties, derived)
    # 4. Verify: the program reproduces every annotated intermediate and the final answer on the original values.
    if program.run(program.original_values()) != results:
        raise Rejected("program does not reproduce the solution")

    program.question_parts = _question_template(question, q_tokens, token_param, params)
    program.solution_parts = _solution_template(solution, anns, steps, params, results, allowed,
                                                _tie_classes(ties, derived))
    return program


def _question_template(question: str, tokens: list[NumberToken], token_param: dict[int, str],
                       params: dict[str, Param]) -> list[str | Slot]:
    parts: list[str | Slot] = []
    last = 0
    for i, tok in enumerate(tokens):
        name = token_param.get(i)
        if name is None or params[name].fixed:
            continue
        parts += [question[last:tok.start], Slot(Operand("param", name), tok.decimals, tok.commas)]
        last = tok.end
    parts.append(question[last:])
    return parts


def _tie_classes(ties: list[tuple[Operand, Operand]], derived: dict[str, int]) -> dict[Operand, Operand]:
    """Representative of each operand tied to others (tied operands always have equal values)."""
    rep: dict[Operand, Operand] = {}

    def find(o: Operand) -> Operand:
        while rep.get(o, o) != o:
            o = rep[o]
        return o

    pairs = ties + [(Operand("result", j), Operand("param", n)) for n, j in derived.items()]
    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            rep[rb] = ra
    return {o: find(o) for o in rep}


def _solution_template(solution: str, anns: list, steps: list[Step], params: dict[str, Param],
                       results: list[Fraction], allowed: set[Fraction],
                       same: dict[Operand, Operand]) -> list[str | Slot | StepSlot]:
    """Slots for the annotations and for every number of the prose between them."""
    free = {p.value: n for n, p in params.items() if p.fixed is None}
    pct = {p.value / 100: n for n, p in params.items() if p.fixed is None and p.percent}
    line_of = [solution.count("\n", 0, a.start) for a in anns]
    final_line_start = solution.rfind("####")
    parts: list[str | Slot | StepSlot] = []
    last = 0

    def classes(ops: set[Operand]) -> set[Operand]:
        return {same.get(o, o) for o in ops}

    def step_operands(i: int, v: Fraction) -> set[Operand]:
        s = steps[i]
        ops = {t for t in s.tokens if isinstance(t, Operand)}
        out = {o for o in ops if _orig_value(o, params, results) == v}
        if results[i] == v:
            out.add(Operand("result", i))
        return classes(out)

    def resolve(pos: int, tok: NumberToken) -> Operand | None:
        v = tok.value
        if final_line_start != -1 and pos >= final_line_start:
            return Operand("result", len(steps) - 1)
        line = solution.count("\n", 0, pos)
        near = [i for i, ln in enumerate(line_of) if ln == line]
        after = [i for i in near if anns[i].start >= pos]
        before = [i for i in near if anns[i].end <= pos]
        for group in ([after[0]] if after else [], [before[-1]] if before else []):
            for i in group:
                ops = step_operands(i, v)
                if len(ops) == 1:
                    op = next(iter(ops))
                    return None if op.kind == "const" else op
                if len(ops) > 1:
                    raise Rejected("ambiguous number in the solution text", f"{tok.text} near <<{anns[i].expr}>>")
        upto = (near[-1] + 1) if near else sum(1 for a in anns if a.end <= pos)
        cands = set()
        if v in free:
            cands.add(Operand("param", free[v]))
        if v in pct:
            cands.add(Operand("pct", pct[v]))
        prior = [j for j in range(upto) if results[j] == v]
        if prior:
            cands.add(Operand("result", prior[-1]))
        cands = classes(cands)
        if not cands:
            if v in allowed or v in {p.value for p in params.values()}:
                return None  # a constant or a frozen number: stays as written
            raise Rejected("unexplained number in the solution text", tok.text)
        if len(cands) > 1:
            raise Rejected("ambiguous number in the solution text", tok.text)
        return next(iter(cands))

    # Positional reading first: the display "$30 - $15 = " before <<30-15=15>> lists the literals in order, and
    # the number right after ">>" is the result.
    forced: dict[int, Operand | None] = {}
    prev_end = 0
    for i, a in enumerate(anns):
        lits = [t for t in steps[i].tokens if isinstance(t, Operand)]
        region_start = max(prev_end, solution.rfind("\n", 0, a.start) + 1)
        shown = find_numbers(solution[region_start:a.start])
        if len(lits) <= len(shown) and [n.value for n in shown[len(shown) - len(lits):]] == \
                [_orig_value(o, params, results) for o in lits]:
            for n, o in zip(shown[len(shown) - len(lits):], lits):
                forced[region_start + n.start] = None if o.kind == "const" else same.get(o, o)
        m = re.match(r"\s*\$?\s*", solution[a.end:])
        after = find_numbers(solution[a.end:a.end + m.end() + 20])
        if after and after[0].start == m.end() and after[0].value == results[i]:
            forced[a.end + after[0].start] = same.get(Operand("result", i), Operand("result", i))
        prev_end = a.end

    for a_i, a in enumerate(anns + [None]):
        seg_end = a.start if a is not None else len(solution)
        segment = solution[last:seg_end]
        seg_last = 0
        for tok in find_numbers(segment):
            if re.match(r"(st|nd|rd|th)\b", segment[tok.end:tok.end + 3]):
                continue
            op = forced[last + tok.start] if last + tok.start in forced else resolve(last + tok.start, tok)
            if op is None:
                continue
            parts += [segment[seg_last:tok.start], Slot(op, tok.decimals, tok.commas)]
            seg_last = tok.end
        parts.append(segment[seg_last:])
        if a is not None:
            parts.append(StepSlot(a_i))
            last = a.end
    return [p for p in parts if p != ""]


def _orig_value(op: Operand, params: dict[str, Param], results: list[Fraction]) -> Fraction:
    if op.kind == "param":
        return params[op.ref].value
    if op.kind == "pct":
        return params[op.ref].value / 100
    if op.kind == "result":
        return results[op.ref]
    return op.ref

