"""Symbolic synthetic GSM8K: parsing, abstraction, constrained resampling, and the acceptance checks on real data."""
from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

from pipelines.synth.gsm8k.binding import Rejected
from pipelines.synth.gsm8k.decontam import ngrams
from pipelines.synth.gsm8k.parse import (
    annotate_bare_calculations,
    check_solution,
    find_numbers,
    format_number,
)
from pipelines.synth.gsm8k.program import abstract
from pipelines.synth.gsm8k.rewrite import render
from pipelines.synth.gsm8k.sample import domain
from pipelines.synth.gsm8k.symbolic import (
    Context,
    SymbolicConfig,
    run_symbolic,
    synthesize_problem,
)

N_PROBLEMS = 300  # the first 300 train problems: ~1 s per run; the full set is in bench/synth_gsm8k.py


@pytest.fixture(scope="module")
def gsm8k(shared: Path) -> dict[str, Path]:
    return {"train": shared / "gsm8k" / "train.jsonl", "test": shared / "gsm8k" / "test.jsonl"}


@pytest.fixture(scope="module")
def train_rows(gsm8k) -> list[dict]:
    return [json.loads(line) for line in gsm8k["train"].read_text().splitlines()]


@pytest.fixture(scope="module")
def run300(gsm8k, tokenizer_path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    report = run_symbolic(gsm8k["train"], out, SymbolicConfig(variants=5, seed=7), gsm8k["test"], tokenizer_path,
                          limit=N_PROBLEMS)
    return out, report


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(out.glob("*.jsonl")) for line in p.read_text().splitlines()]


# --- parsing ---------------------------------------------------------------------------------------------------
def test_numbers_and_formatting():
    toks = find_numbers("He paid $1,250.50 for 3 items, i.e. .5 each at 12:30.")
    assert [t.text for t in toks] == ["1,250.50", "3", ".5", "12", "30"]
    assert toks[0].value == Fraction("1250.5") and toks[0].commas and toks[0].decimals == 2
    assert format_number(Fraction(5, 2), decimals=2) == "2.50"
    assert format_number(Fraction(1234567), commas=True) == "1,234,567"
    with pytest.raises(ValueError):
        format_number(Fraction(1, 3))


def test_check_solution_catches_every_kind_of_error():
    assert check_solution("a 48/2 = <<48/2=24>>24\nb <<48+24=72>>72\n#### 72").ok
    assert not check_solution("<<48/2=25>>25\n#### 25").ok  # wrong annotation
    assert not check_solution("<<48/2=24>>24\n#### 25").ok  # answer is not the last result
    assert not check_solution("no calculations\n#### 3").ok
    assert not check_solution("<<10/3=3.33>>3.33\n#### 3.33").ok  # exact arithmetic: rounded is wrong
    assert not check_solution("<<48/2=24>>24").ok  # no #### line


def test_bare_calculations_become_annotations():
    text, n = annotate_bare_calculations("She has 4 tops for $20 so 20/4 = $5\n#### 5")
    assert n == 1 and "<<20/4=5>>" in text and check_solution(text).ok
    same, n = annotate_bare_calculations("a 20/4 = $6 wrong\n#### 6")
    assert n == 0 and same == "a 20/4 = $6 wrong\n#### 6"


# --- abstraction -------------------------------------------------------------------------------------------------
def test_program_reproduces_the_original_and_rewrites_consistently(train_rows):
    row = train_rows[1]  # Weng: $12 an hour, 50 minutes
    program = abstract(1, row["question"], row["answer"])
    values, results = program.solve(program.original_values())
    assert results[-1] == 10
    assert render(program, values, results) == (row["question"], row["answer"])  # identity on original values
    names = {p.value: n for n, p in program.params.items()}
    new = dict(values, **{names[Fraction(12)]: Fraction(18), names[Fraction(50)]: Fraction(40)})
    values, results = program.solve(new)
    q, a = render(program, values, results)
    assert "$18 an hour" in q and "40 minutes" in q
    assert "<<18/60=0.3>>" in a and a.endswith("#### 12") and check_solution(a).ok


def test_rejections_have_reasons():
    with pytest.raises(Rejected) as e:
        abstract(0, "Tom has 5 apples.", "He has 5 apples.\n#### 5")
    assert e.value.reason == "no calculator annotations"
    with pytest.raises(Rejected) as e:  # 7 comes from nowhere in the question or the text
        abstract(0, "Tom has 5 apples and buys 3 more.", "5+3+7=<<5+3+7=15>>15\n#### 15")
    assert e.value.reason == "unexplained number in a calculation"
    with pytest.raises(Rejected) as e:
        abstract(0, "Tom has 5 apples and buys 3 more.", "5+3=<<5+3=9>>9\n#### 9")
    assert e.value.reason == "annotation does not reproduce its result"


def test_result_reading_is_chosen_when_the_solution_needs_it(train_rows):
    # "A large pizza has 16 slices" and "2 x 8 = 16": the 16 in "32 + 16" is the small pizzas' result (else that
    # step would be unused), so variants must add the small pizzas' slices, whatever they become.
    row = train_rows[6]
    ctx = Context(SymbolicConfig(variants=8, seed=1), frozenset(), None)
    out = synthesize_problem(6, row["question"], row["answer"], ctx)
    assert len(out.records) == 8
    for r in out.records:
        q, a = r["messages"][0]["content"], r["messages"][1]["content"]
        n_large, n_small = map(int, re.search(r"buys (\d+) large pizzas and (\d+) small", q).groups())
        large, small = map(int, re.search(r"large pizza has (\d+) slices and a small pizza has (\d+)", q).groups())
        assert int(a.rsplit("#### ", 1)[1]) == n_large * large + n_small * small


def test_unresolvable_coincidence_is_tied_not_guessed():
    # Bob's 12 pears equal Ann's 3*4 apples; "12+12" cannot tell which 12 is which, so variants keep them equal.
    q = "Ann has 3 bags with 4 apples each. Bob has 12 pears. How many fruits do they have together?"
    a = "Ann has 3*4=<<3*4=12>>12 apples.\nTogether they have 12+12=<<12+12=24>>24 fruits.\n#### 24"
    program = abstract(0, q, a)
    assert program.derived or program.ties
    out = synthesize_problem(0, q, a, Context(SymbolicConfig(variants=6, seed=3), frozenset(), None))
    assert len(out.records) == 6
    for r in out.records:
        bags, apples, pears = map(int, re.findall(r"\d+", r["messages"][0]["content"]))
        assert pears == bags * apples
        assert int(r["messages"][1]["content"].rsplit("#### ", 1)[1]) == bags * apples + pears


def test_sampling_keeps_kind_and_magnitude():
    from pipelines.synth.gsm8k.binding import Param

    d = domain(Param("p", Fraction(250), 0, False))
    assert d.unit == 50 and d.lo * d.unit >= 100 and d.hi * d.unit <= 500  # round stays round, [x/2, 2x]
    d = domain(Param("p", Fraction(30), 0, True))
    assert d.hi * d.unit <= 60 and d.hi * d.unit <= 100  # percentages stay <= 100
    d = domain(Param("p", Fraction("0.25"), 2, False))
    assert d.hi * d.unit < 1  # fractions stay fractions
    d = domain(Param("p", Fraction(2), 0, False))
    assert d.lo * d.unit >= 2  # "2 apples" never becomes "1 apples"


# --- acceptance on real data ------------------------------------------------------------------------------------
def test_abstraction_rate_and_report(run300):
    out, report = run300
    assert report["problems"] == N_PROBLEMS
    assert report["abstraction_rate"] >= 0.70, report["problems_rejected"]
    assert sum(report["problems_rejected"].values()) == N_PROBLEMS - report["problems_abstracted"]
    assert report["variants_emitted"] == len(_records(out)) > 0
    assert report["tokens"] > 0 and (out / "report.json").is_file()


def test_every_emitted_solution_rechecks_and_is_new(run300, train_rows, gsm8k):
    out, _ = run300
    records = _records(out)
    train_questions = {r["question"] for r in train_rows}
    test_grams = set()
    for line in gsm8k["test"].read_text().splitlines():
        row = json.loads(line)
        test_grams |= ngrams(row["question"] + "\n" + row["answer"])
    ids = set()
    for r in records:
        q, a = r["messages"][0]["content"], r["messages"][1]["content"]
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert check_solution(a).ok, (r["id"], a)
        assert q not in train_questions
        assert ngrams(q + "\n" + a).isdisjoint(test_grams), r["id"]
        assert r["id"] == f"gsm8k-synth-{r['source_index']}-{r['id'].rsplit('-', 1)[1]}" and r["id"] not in ids
        ids.add(r["id"])
        src = train_rows[r["source_index"]]
        for name, v in r["params"].items():  # integers stay integers, counts stay positive
            orig = r["original_params"][name]
            assert v > 0 and (isinstance(v, int) or not isinstance(orig, int))
            assert f"{v:,}" in q or str(v) in q or v == orig
        assert r["params"] != r["original_params"] and src["question"] != q


def test_deterministic_by_seed_and_worker_count(gsm8k, run300, tmp_path):
    out, _ = run300
    again = tmp_path / "again"
    run_symbolic(gsm8k["train"], again, SymbolicConfig(variants=5, seed=7, workers=2), gsm8k["test"], None,
                 limit=N_PROBLEMS)
    assert (again / "gsm8k-synthetic-00000.jsonl").read_bytes() == (out / "gsm8k-synthetic-00000.jsonl").read_bytes()
    other = tmp_path / "other"
    run_symbolic(gsm8k["train"], other, SymbolicConfig(variants=5, seed=8), gsm8k["test"], None, limit=50)
    first = [r["messages"] for r in _records(other)]
    assert first != [r["messages"] for r in _records(out) if r["source_index"] < 50]


def test_bad_input_lines_are_counted_skips(tmp_path, train_rows):
    src = tmp_path / "train.jsonl"
    good = json.dumps(train_rows[0])
    src.write_text(good + "\n{not json\n" + json.dumps({"question": 3}) + "\n")
    report = run_symbolic(src, tmp_path / "o", SymbolicConfig(variants=2), None, None)
    assert report["rows"] == 3 and report["problems"] == 1
    assert [s["line"] for s in report["skipped_rows"]] == [2, 3]
    assert report["variants_emitted"] == 2


def test_cli_writes_the_output_contract(gsm8k, tmp_path):
    from typer.testing import CliRunner

    import cli

    out = tmp_path / "synth"
    res = CliRunner().invoke(cli.app, ["synth", "gsm8k", "--input", str(gsm8k["train"]), "--out", str(out),
                                       "--variants", "3", "--limit", "40", "--test", str(gsm8k["test"])])
    assert res.exit_code == 0, res.output
    assert (out / "gsm8k-synthetic-00000.jsonl").is_file() and json.loads((out / "report.json").read_text())
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries
