"""The whitelisted-subset interpreter (safe_eval) runs legitimate generated programs exactly as Python does, refuses
everything outside the subset with a reason, and meters what could grow without bound."""
from __future__ import annotations

from fractions import Fraction

import pytest

from pipelines.synth.gsm8k.llm import extract_program
from pipelines.synth.gsm8k.prompts import PROGRAM_EXAMPLES
from pipelines.synth.gsm8k.safe_eval import (
    EvalLimits,
    LimitExceeded,
    ProgramFailed,
    check,
    evaluate,
)
from pipelines.synth.gsm8k.sandbox import run_program

# Programs of the kind the PROGRAM prompt asks for, with their arguments. The reference answer is what CPython
# itself computes for the same (trusted, test-owned) source.
LEGIT = [
    # the prompt's own example and the LLM-mode test fixtures
    (extract_program(PROGRAM_EXAMPLES[0][1]), {"num_drinks": 2, "drink_price": 4, "num_bars": 5, "total_spent": 28}),
    ("def answer(april: int) -> float:\n    return april + april / 2\n", {"april": 48}),
    ("def answer(cost):\n    return cost * 3\n", {"cost": 100}),
    ("def answer(rate, minutes):\n    return rate / 60 * minutes\n", {"rate": 12, "minutes": 50}),
    # the math module, by module name, by bare name and imported
    ("import math\ndef answer(area: float) -> int:\n    side = math.sqrt(area)\n    return math.ceil(side * 4)\n",
     {"area": 50.0}),
    ("from math import floor, pi\ndef answer(r):\n    return floor(pi * r ** 2)\n", {"r": 3}),
    ("from math import comb, factorial, gcd, isqrt\n"
     "def answer(n, k):\n    return comb(n, k) + factorial(5) + gcd(12, n) + isqrt(n)\n", {"n": 10, "k": 3}),
    ("import math as m\ndef answer(x):\n    return round(m.log10(x) + m.exp(1), 6)\n", {"x": 1000}),
    # exact arithmetic with Fraction, typing annotations, docstrings
    ("from fractions import Fraction\nfrom typing import Union\n\n"
     "def answer(total: int, share: float) -> Union[int, float]:\n    \"\"\"Split the total.\"\"\"\n"
     "    part = Fraction(total) * Fraction(1, 3)\n    return float(part + Fraction(share))\n",
     {"total": 90, "share": 0.5}),
    # control flow: loops, while, break/continue, for-else, helpers, defaults, keyword-only, tuple unpacking
    ("def weekly(days, per_day=3):\n    return days * per_day\n\n"
     "def answer(weeks: int, hours: int) -> int:\n    total = 0\n    for w in range(weeks):\n"
     "        if w % 2 == 0:\n            continue\n        total += weekly(7, per_day=hours)\n"
     "    return total\n", {"weeks": 5, "hours": 2}),
    ("def answer(target, step):\n    n, acc = 0, 0\n    while True:\n        acc += step\n        n += 1\n"
     "        if acc >= target:\n            break\n    return n\n", {"target": 100, "step": 7}),
    ("def answer(n):\n    for d in range(2, n):\n        if n % d == 0:\n            return d\n    else:\n"
     "        return n\n", {"n": 91}),
    ("def answer(a, *, b=2):\n    q, r = divmod(a, b)\n    return q * 10 + r\n", {"a": 17}),
    # lists: displays, append, comprehensions, generator expressions, slicing, builtins over them
    ("def answer(price, qty):\n    items = [price, price * 2, price / 4]\n    bought = []\n"
     "    for p in items:\n        bought.append(p * qty)\n"
     "    return sum(bought[:2]) + max(x for x in items if x < 10) + len(sorted(items, reverse=True))\n",
     {"price": 8, "qty": 3}),
    ("def answer(n):\n    squares = [i * i for i in range(1, n + 1) if i % 2]\n"
     "    pairs = list(zip(squares, reversed(squares)))\n    return sum(a - b for a, b in pairs) + min(squares)\n",
     {"n": 9}),
    # number behaviour Python users rely on
    ("def answer(a, b):\n    return (a // b, a % b, -a // b, -a % b, round(2.5), round(3.5), int(-2.7),"
     " abs(-a), a ** -1, 2 ** 0.5, True + 1, 7 / 2 == 3.5, 1 < a <= 9, a and b, 0 or b)[0 if a else 1]\n",
     {"a": 7, "b": 2}),
    ("def answer(x):\n    y = x * 1.5\n    if y.is_integer():\n        return int(y)\n    return y\n", {"x": 4}),
    ("def answer(x):\n    assert x > 0\n    return x if x < 10 else -x\n", {"x": 12}),
]


def reference(source: str, kwargs: dict):
    namespace: dict = {}
    exec(compile(source, "<reference>", "exec"), namespace)  # trusted test programs only
    return namespace["answer"](**kwargs)


@pytest.mark.parametrize("source,kwargs", LEGIT, ids=[f"legit{i}" for i in range(len(LEGIT))])
def test_legitimate_programs_give_pythons_answers(source, kwargs):
    assert check(source) is None
    expected = reference(source, kwargs)
    got = evaluate(source, "answer", kwargs)
    assert got == expected and type(got) is type(expected), (got, expected)


def test_legitimate_programs_of_the_llm_tests_run_in_the_sandbox():
    for source, kwargs in LEGIT[:4]:
        result = run_program(source, kwargs)
        assert result.ok and result.value == reference(source, kwargs), result
    # a Fraction answer comes back as a plain number the caller can compare
    frac = run_program("from fractions import Fraction\ndef answer(a):\n    return Fraction(a, 4)\n", {"a": 6})
    assert frac.ok and frac.value == 1.5


@pytest.mark.parametrize("source,reason", [
    ("def answer(a):\n    return (lambda: a)()\n", "lambda not allowed"),
    ("class X:\n    pass\ndef answer(a):\n    return a\n", "class not allowed"),
    ("def answer(a):\n    try:\n        return 1 / a\n    except ZeroDivisionError:\n        return 0\n",
     "try not allowed"),
    ("def answer(a):\n    with a:\n        return a\n", "with not allowed"),
    ("X = 1\ndef answer(a):\n    global X\n    return a\n", "global not allowed"),
    ("def answer(a):\n    return {'a': a}['a']\n", "dicts not allowed"),
    ("def answer(a):\n    return len(f'{a}')\n", "f-strings not allowed"),
    ("def deco(f):\n    return f\n@deco\ndef answer(a):\n    return a\n", "decorators are not allowed"),
    ("def answer(*args):\n    return 1\n", "*args/**kwargs parameters are not allowed"),
    ("from math import *\ndef answer(a):\n    return a\n", "import of '*' from 'math' is not allowed"),
    ("from math import system\ndef answer(a):\n    return a\n", "import of 'system' from 'math' is not allowed"),
    ("import math\ndef answer(a):\n    math.pi = 3\n    return a\n", "assignment to attribute '.pi' is not allowed"),
    ("def answer(a):\n    return __builtins__\n", "name '__builtins__' is not allowed"),
    ("def answer(a):\n    return eval('a')\n", "name 'eval' is not allowed"),
    ("def answer(a):\n    return a.real\n", "attribute access '.real' is not allowed"),
    ("def answer(a):\n    return b'x'\n", "constants of type bytes are not allowed"),
    ("def answer(a):\n    return 1j\n", "constants of type complex are not allowed"),
    ("def answer(a):\n    return (b := a)\n", "walrus assignments not allowed"),
    ("def answer(a)\n    return a\n", "syntax error"),
    ("x = 1\n" * 5000 + "def answer(a):\n    return a\n", "program longer than 20000 characters"),
])
def test_constructs_outside_the_subset_are_refused(source, reason):
    why = check(source)
    assert why is not None and why.startswith(reason), why


@pytest.mark.parametrize("source,error", [
    ("def answer(a):\n    return a / 0\n", "ZeroDivisionError"),
    ("def answer(a):\n    return 'x' - a\n", "TypeError"),
    ("def answer(a):\n    return [1, 2][5]\n", "IndexError"),
    ("def answer(a):\n    raise ValueError('negative', a)\n", "ValueError: negative 1"),
    ("def answer(a):\n    assert a > 5\n", "AssertionError"),
    ("import math\ndef answer(a):\n    return math.sqrt(-a)\n", "ValueError: math domain error"),
    ("def answer(a):\n    return (-8) ** 0.5\n", "ValueError: power has a complex result"),
    ("def answer(a):\n    return 1e308 * 10 ** 400\n", "OverflowError"),
    ("def answer(a):\n    return sorted([a, 'x'])\n", "TypeError"),
    ("def other(a):\n    return a\n", "NameError: no function 'answer'"),
    ("def answer(a):\n    break\n", "SyntaxError: break outside a loop"),
])
def test_program_errors_are_reported(source, error):
    with pytest.raises(ProgramFailed, match=error.replace("(", r"\(")):
        evaluate(source, "answer", {"a": 1})


@pytest.mark.parametrize("source,limit", [
    ("def answer(a):\n    for i in range(40):\n        for j in range(40):\n            a += 1\n",
     "more than 1000 evaluation steps"),
    ("def answer(a):\n    for i in range(10 ** 9):\n        pass\n", "loop ran more than 50 iterations"),
    ("def f(n):\n    return f(n + 1)\ndef answer(a):\n    return f(a)\n", "calls nested deeper than 8"),
    ("def answer(a):\n    return 3 ** 200\n", "integer larger than 64 bits"),
    ("def answer(a):\n    return (2 ** 40) * (2 ** 40)\n", "integer larger than 64 bits"),
    ("def answer(a):\n    return a << 100\n", "integer larger than 64 bits"),
    ("def answer(a):\n    return Fraction(1, 3) ** 100\n", "integer larger than 64 bits"),
    ("def answer(a):\n    return factorial(5000)\n", "factorial() argument larger than 1000"),
    ("def answer(a):\n    return len([a] * 500)\n", "sequence longer than 100 items"),
    ("def answer(a):\n    return len([i for i in range(40) for j in range(40)])\n", "sequence longer than 100 items"),
    ("def answer(a):\n    for i in range(40):\n        print('x' * 90)\n", "printed more than 1000 bytes"),
])
def test_limits_stop_runaway_programs(source, limit):
    limits = EvalLimits(max_steps=1000, max_loop_iterations=50, max_call_depth=8, max_int_bits=64, max_items=100,
                        max_output_bytes=1000)
    with pytest.raises(LimitExceeded, match=limit.replace("(", r"\(").replace(")", r"\)")):
        evaluate(source, "answer", {"a": 1}, limits)


def test_math_functions_also_work_by_bare_name():
    import math
    for name, args in [("sqrt", (16,)), ("ceil", (2.1,)), ("floor", (-2.1,)), ("log", (8, 2)), ("gcd", (12, 18))]:
        source = f"def answer(a):\n    return {name}({', '.join(map(repr, args))})\n"
        assert evaluate(source, "answer", {"a": 1}) == getattr(math, name)(*args)


def test_within_limits_the_same_programs_run():
    limits = EvalLimits(max_int_bits=64)
    assert evaluate("def answer(a):\n    return 3 ** 40\n", "answer", {"a": 1}, limits) == 3 ** 40
    third = evaluate("def answer(a):\n    return Fraction(1, 3) ** 40\n", "answer", {"a": 1}, limits)
    assert third == Fraction(1, 3**40)
