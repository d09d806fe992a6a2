"""Render a program's question and solution templates with new values.

Every number slot is written in the style of the number it replaced ("$1,250", "2.50"); every annotation is
re-written from the step's expression with the new operands and the new exact result.
"""
from __future__ import annotations

from fractions import Fraction

from .parse import format_number
from .program import Program, Slot, StepSlot


def _slot_text(program: Program, slot: Slot, values: dict[str, Fraction], results: list[Fraction]) -> str:
    value = program.operand_value(slot.operand, values, results)
    return format_number(value, slot.decimals, slot.commas and abs(value) >= 1000)


def render_step(program: Program, i: int, values: dict[str, Fraction], results: list[Fraction]) -> str:
    step = program.steps[i]
    parts = []
    for k, t in enumerate(step.tokens):
        if isinstance(t, str):
            parts.append(t)
        elif t.kind == "const":
            parts.append(step.const_text[k])
        else:
            parts.append(format_number(program.operand_value(t, values, results)))
    return f"<<{''.join(parts)}={format_number(results[i])}>>"


def render(program: Program, values: dict[str, Fraction], results: list[Fraction]) -> tuple[str, str]:
    """(question, solution) for the given values; raises ValueError when a number has no finite decimal form."""
    q = "".join(p if isinstance(p, str) else _slot_text(program, p, values, results) for p in program.question_parts)
    out = []
    for p in program.solution_parts:
        if isinstance(p, str):
            out.append(p)
        elif isinstance(p, StepSlot):
            out.append(render_step(program, p.step, values, results))
        else:
            out.append(_slot_text(program, p, values, results))
    return q, "".join(out)


def param_values_json(program: Program, values: dict[str, Fraction]) -> dict[str, int | float]:
    """Provenance: the value of every parameter that appears in the question (int when integral)."""
    out: dict[str, int | float] = {}
    for name in program.params:
        v = values[name]
        out[name] = int(v) if v.denominator == 1 else float(v)
    return out

