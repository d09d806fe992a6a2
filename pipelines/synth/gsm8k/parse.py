"""Numbers in GSM8K text, `<<expr=result>>` calculator annotations, and the re-check of a worked solution.

All arithmetic is exact (`fractions.Fraction`): a GSM8K annotation is right when its expression evaluates to exactly
the printed result, so `0.1+0.2=0.3` is right and `10/3=3.33` is not.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

# A number as written in prose: "1,250", "48", "0.25", ".5" ("1,2" is not one number, "3.5.2" stops after "3.5").
NUMBER_RE = re.compile(r"(?<![\d.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])|(?<![\d.])\.\d+(?![\d])")
ANNOTATION_RE = re.compile(r"<<([^<>]*)>>")
# Tokens of an annotation's expression; anything else makes the annotation unparseable.
EXPR_TOKEN_RE = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([-+*/()]))")
FINAL_RE = re.compile(r"####\s*(.+?)\s*$", re.S)


@dataclass(frozen=True, slots=True)
class NumberToken:
    """One number in a text: where it is, what it is worth, and how it was written."""

    start: int
    end: int
    text: str
    value: Fraction
    decimals: int  # digits after the point as written ("1.50" -> 2)
    commas: bool  # written with thousands separators ("1,250")


def parse_number(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


def find_numbers(text: str) -> list[NumberToken]:
    out = []
    for m in NUMBER_RE.finditer(text):
        t = m.group(0)
        decimals = len(t.split(".", 1)[1]) if "." in t else 0
        out.append(NumberToken(m.start(), m.end(), t, parse_number(t), decimals, "," in t))
    return out


def terminating_decimals(value: Fraction) -> int | None:
    """Digits needed to write `value` exactly in decimal, or None when it does not terminate (1/3)."""
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    return max(twos, fives) if den == 1 else None


def format_number(value: Fraction, decimals: int = 0, commas: bool = False) -> str:
    """Exact decimal text of `value`; keeps `decimals` places when they suffice (money "$2.50"), else the minimum.

    Raises ValueError for a value with no finite decimal expansion.
    """
    if value.denominator == 1 and not decimals:  # fast path: integers
        return f"{value.numerator:,}" if commas else str(value.numerator)
    need = terminating_decimals(value)
    if need is None:
        raise ValueError(f"{value} has no finite decimal expansion")
    places = max(need, decimals) if decimals else need
    sign = "-" if value < 0 else ""
    scaled = abs(value) * 10**places
    assert scaled.denominator == 1
    digits = str(scaled.numerator).rjust(places + 1, "0")
    whole, frac = (digits[:-places], digits[-places:]) if places else (digits, "")
    if commas:
        whole = f"{int(whole):,}"
    return sign + whole + ("." + frac if frac else "")


@dataclass(frozen=True, slots=True)
class Annotation:
    """`<<expr=result>>` at [start, end) of the solution text."""

    start: int
    end: int
    expr: str
    result_text: str


class AnnotationError(ValueError):
    pass


def tokenize_expr(expr: str) -> list[str]:
    """Split an annotation expression into number and operator tokens; raise on anything else."""
    tokens, pos = [], 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = EXPR_TOKEN_RE.match(expr, pos)
        if not m:
            raise AnnotationError(f"unsupported character {expr[pos:pos + 1]!r} in expression {expr!r}")
        tokens.append(m.group(1) or m.group(2))
        pos = m.end()
    if not tokens:
        raise AnnotationError("empty expression")
    return tokens


def eval_tokens(tokens: list[str | Fraction]) -> Fraction:
    """Exact value of an arithmetic expression given as tokens (+ - * / parentheses, unary minus).

    A token is an operator string, a decimal string, or an already-exact `Fraction` operand.
    """
    pos = 0

    def peek() -> str | Fraction | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str | Fraction:
        nonlocal pos
        if pos >= len(tokens):
            raise AnnotationError("expression ends early")
        pos += 1
        return tokens[pos - 1]

    def atom() -> Fraction:
        t = take()
        if isinstance(t, Fraction):
            return t
        if t == "(":
            v = expr()
            if take() != ")":
                raise AnnotationError("unbalanced parentheses")
            return v
        if t == "-":
            return -atom()
        if t == "+":
            return atom()
        if t in "*/)":
            raise AnnotationError(f"unexpected {t!r}")
        return Fraction(t)

    def term() -> Fraction:
        v = atom()
        while peek() in ("*", "/"):
            op, rhs = take(), atom()
            if op == "/" and rhs == 0:
                raise AnnotationError("division by zero")
            v = v * rhs if op == "*" else v / rhs
        return v

    def expr() -> Fraction:
        v = term()
        while peek() in ("+", "-"):
            op, rhs = take(), term()
            v = v + rhs if op == "+" else v - rhs
        return v

    value = expr()
    if pos != len(tokens):
        raise AnnotationError(f"trailing tokens {tokens[pos:]}")
    return value


def find_annotations(solution: str) -> list[Annotation]:
    out = []
    for m in ANNOTATION_RE.finditer(solution):
        body = m.group(1)
        if body.count("=") != 1:
            raise AnnotationError(f"annotation {m.group(0)!r} needs exactly one '='")
        expr, result = body.split("=")
        out.append(Annotation(m.start(), m.end(), expr, result.strip()))
    return out


def final_answer(solution: str) -> str | None:
    m = FINAL_RE.search(solution)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------------------------------
# Unannotated calculations ("so 20/4 = $5") become annotations, so the program sees every step.
_BARE_NUM = r"\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_BARE_OP = r"\s*(?:[-+*/x×−÷])\s*"
BARE_CALC_RE = re.compile(
    rf"(?<![\w.$<=>])({_BARE_NUM}(?:{_BARE_OP}{_BARE_NUM})+)\s*=\s*(\$?)((?:\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.\d+)?)(?![\d<])"
)
_OP_NORMAL = {"x": "*", "×": "*", "−": "-", "÷": "/"}


def annotate_bare_calculations(solution: str) -> tuple[str, int]:
    """Insert `<<expr=result>>` before results of plain-text calculations that are exactly right.

    Only text outside existing annotations is touched; returns the new text and how many were added.
    """
    pieces, added, last = [], 0, 0
    spans = [(a.start, a.end) for a in find_annotations(solution)] + [(len(solution), len(solution))]
    for a_start, a_end in spans:
        # The display right before an annotation ("48/2 = <<48/2=24>>24") never matches: its result is past it.
        segment = solution[last:a_start]

        def repl(m: re.Match[str]) -> str:
            nonlocal added
            lhs = m.group(1)
            expr = re.sub(r"[x×−÷]", lambda o: _OP_NORMAL[o.group(0)], lhs).replace("$", "").replace(",", "")
            expr = re.sub(r"\s+", "", expr)
            try:
                ok = eval_tokens(tokenize_expr(expr)) == parse_number(m.group(3))
            except (AnnotationError, ValueError, ZeroDivisionError):
                ok = False
            if not ok:
                return m.group(0)
            added += 1
            eq = m.group(0)[len(lhs):m.start(2) - m.start(0)]
            return f"{lhs}{eq}{m.group(2)}<<{expr}={m.group(3).replace(',', '')}>>{m.group(3)}"

        pieces.append(BARE_CALC_RE.sub(repl, segment))
        pieces.append(solution[a_start:a_end])
        last = a_end
    return "".join(pieces), added


# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    reason: str | None = None
    n_annotations: int = 0


def check_solution(solution: str) -> CheckResult:
    """The acceptance re-check of an emitted solution.

    Every `<<expr=result>>` evaluates exactly to its result, there is at least one, and the `####` answer equals
    the last annotation's result.
    """
    try:
        anns = find_annotations(solution)
    except AnnotationError as e:
        return CheckResult(False, str(e))
    if not anns:
        return CheckResult(False, "no calculator annotations")
    for a in anns:
        try:
            value = eval_tokens(tokenize_expr(a.expr))
            printed = parse_number(a.result_text)
        except (AnnotationError, ValueError, ZeroDivisionError) as e:
            return CheckResult(False, f"annotation <<{a.expr}={a.result_text}>>: {e}", len(anns))
        if value != printed:
            return CheckResult(False, f"annotation <<{a.expr}={a.result_text}>> evaluates to {value}", len(anns))
    final = final_answer(solution)
    if final is None:
        return CheckResult(False, "no '####' answer line", len(anns))
    try:
        if parse_number(final) != parse_number(anns[-1].result_text):
            return CheckResult(False, f"'#### {final}' differs from the last result {anns[-1].result_text}", len(anns))
    except ValueError:
        return CheckResult(False, f"'#### {final}' is not a number", len(anns))
    return CheckResult(True, None, len(anns))
