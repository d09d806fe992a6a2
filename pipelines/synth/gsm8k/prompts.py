"""Every prompt of LLM mode, in one place, in the order Instella's procedure uses them.

1. ABSTRACTION  question -> question with its numbers replaced by named parameters + their original values
2. PROGRAM      abstract question -> `def answer(...)`; kept only if it reproduces the original answer (sandboxed)
3. PERTURB      question + parameters -> new parameter values (several sets per call)
4. REWRITE      question + old and new values -> the question with the new values
5. SOLVE        new question -> GSM8K-style worked solution (`<<expr=result>>`, `#### answer`); kept only if every
                annotation re-checks and the answer equals what the program computes for the new values

Instella (scripts/generate_gsm8k_programs.py, generate_gsm8k_new_samples.py) used the same five stages with
Qwen2.5-72B-Instruct; the wording here is ours and asks for JSON where their scripts parsed free text.
"""
from __future__ import annotations

import json

ABSTRACTION_SYSTEM = (
    "You turn a math word problem into an abstract template. Identify the numerical values in the question and "
    "replace the ones the answer depends on with Python parameters (snake_case names, int or float), so that the "
    "abstract question is answerable by the same general solution. Reply with JSON only: "
    '{"abstract_question": "<question with each replaced number written as {name}>", '
    '"parameters": {"<name>": <original value>, ...}}'
)
ABSTRACTION_EXAMPLES = [
    (
        "Jack has a stack of books that is 12 inches thick. He knows from experience that 80 pages is one inch "
        "thick. If he has 6 books, how many pages is each one on average?",
        {"abstract_question": "Jack has a stack of books that is {thickness_inches} inches thick. He knows from "
                              "experience that {pages_per_inch} pages is one inch thick. If he has {num_books} "
                              "books, how many pages is each one on average?",
         "parameters": {"thickness_inches": 12, "pages_per_inch": 80, "num_books": 6}},
    ),
    (
        "Benny bought 2 soft drinks for $4 each and 5 candy bars. He spent a total of 28 dollars. How much did "
        "each candy bar cost?",
        {"abstract_question": "Benny bought {num_drinks} soft drinks for ${drink_price} each and {num_bars} candy "
                              "bars. He spent a total of {total_spent} dollars. How much did each candy bar cost?",
         "parameters": {"num_drinks": 2, "drink_price": 4, "num_bars": 5, "total_spent": 28}},
    ),
]

PROGRAM_SYSTEM = (
    "Write a Python program that solves the given abstract math question. It must define a function "
    "`answer(...)` taking exactly the listed parameters as keyword arguments and returning the numeric answer. "
    "Use only numbers, arithmetic, lists, if/for/while, helper functions and the math module; no dicts, classes, "
    "lambdas, try, f-strings, methods, input, output, files or other imports (it runs in a restricted interpreter). "
    "Reply with one ```python code block."
)
PROGRAM_EXAMPLES = [
    (
        "Benny bought {num_drinks} soft drinks for ${drink_price} each and {num_bars} candy bars. He spent a total "
        "of {total_spent} dollars. How much did each candy bar cost?\nParameters: num_drinks: int, drink_price: int, "
        "num_bars: int, total_spent: int",
        "```python\ndef answer(num_drinks: int, drink_price: int, num_bars: int, total_spent: int) -> float:\n"
        "    drinks_cost = num_drinks * drink_price\n    bars_cost = total_spent - drinks_cost\n"
        "    return bars_cost / num_bars\n```",
    ),
]

PERTURB_SYSTEM = "You are a helpful assistant."
PERTURB_USER = (
    "Here is a math question with its parameters and their values. Propose {k} different sets of new values that "
    "keep the question realistic: same kind of number (whole numbers stay whole), similar magnitude, and "
    "consistent with each other (no negative counts, percentages at most 100, divisions that come out even where "
    "the story needs it). Reply with a JSON list of {k} objects with exactly these keys.\n\n"
    "Question:\n{question}\n\nParameters:\n{parameters}"
)

REWRITE_SYSTEM = "You are a helpful assistant."
REWRITE_USER = (
    "Rewrite the math question so that every parameter takes its new value instead of its old one. Change "
    "nothing else. Reply with the new question only.\n\nQuestion:\n{question}\n\nOld values:\n{old}\n\n"
    "New values:\n{new}"
)

SOLVE_SYSTEM = (
    "Solve grade-school math problems step by step in the GSM8K style: one short sentence per step, every "
    "calculation written as <<expression=result>> right before its result (expressions use only numbers and "
    "+ - * / and parentheses), and the last line '#### <answer>' with the final number only."
)
SOLVE_EXAMPLES = [
    (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
        "clips did Natalia sell altogether in April and May?",
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
        "in April and May.\n#### 72",
    ),
]

# Markers a fake endpoint (tests) can route on; they are the first words of each system prompt.
STAGE_MARKERS = {
    "abstraction": ABSTRACTION_SYSTEM[:40],
    "program": PROGRAM_SYSTEM[:40],
    "perturb": "Propose ",
    "rewrite": "Rewrite the math question",
    "solve": SOLVE_SYSTEM[:40],
}


def _chat(system: str, examples: list[tuple[str, str]], user: str) -> list[dict]:
    msgs = [{"role": "system", "content": system}]
    for q, a in examples:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return msgs + [{"role": "user", "content": user}]


def abstraction_messages(question: str) -> list[dict]:
    return _chat(ABSTRACTION_SYSTEM, [(q, json.dumps(a)) for q, a in ABSTRACTION_EXAMPLES], question)


def program_messages(abstract_question: str, parameters: dict) -> list[dict]:
    sig = ", ".join(f"{k}: {'int' if isinstance(v, int) else 'float'}" for k, v in parameters.items())
    return _chat(PROGRAM_SYSTEM, PROGRAM_EXAMPLES, f"{abstract_question}\nParameters: {sig}")


def perturb_messages(question: str, parameters: dict, k: int) -> list[dict]:
    return _chat(PERTURB_SYSTEM, [], PERTURB_USER.format(k=k, question=question, parameters=json.dumps(parameters)))


def rewrite_messages(question: str, old: dict, new: dict) -> list[dict]:
    return _chat(REWRITE_SYSTEM, [], REWRITE_USER.format(question=question, old=json.dumps(old),
                                                         new=json.dumps(new)))


def solve_messages(question: str) -> list[dict]:
    return _chat(SOLVE_SYSTEM, SOLVE_EXAMPLES, question)
