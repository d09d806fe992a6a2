"""Collect what bench/gpu_check.sh measured into one JSON summary and print a short table.

    python bench/gpu_summary.py LOGDIR SUMMARY.json

Reads LOGDIR/parts.tsv (name, exit code, seconds), the pytest JUnit files, the JSON written by
bench/train_throughput.py and bench/gpu_attention.py, the metrics.jsonl of each `cli.py train` run
(LOGDIR/run_*/metrics.jsonl) and the text logs of bench/kernels.py.
"""
from __future__ import annotations

import json
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def junit(path: Path) -> dict:
    if not path.exists():
        return {"missing": True}
    root = ET.parse(path).getroot()
    cases = {}
    for tc in root.iter("testcase"):
        name = f"{tc.get('classname', '').rpartition('.')[2]}::{tc.get('name')}"
        bad = next((c for c in tc if c.tag in ("failure", "error", "skipped")), None)
        cases[name] = "passed" if bad is None else f"{bad.tag}: {(bad.get('message') or '')[:300]}"
    counts = {}
    for v in cases.values():
        k = v.split(":")[0]
        counts[k] = counts.get(k, 0) + 1
    return {"counts": counts, "not_passed": {k: v for k, v in cases.items() if v != "passed"}}


def run_metrics(run: Path, skip: int = 5) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    if not rows:
        return {"steps": 0}
    steady = rows[skip:] or rows
    tps = [r["tokens_per_s"] for r in steady]
    mfu = [r["mfu"] for r in steady if r.get("mfu") is not None]
    return {"steps": len(rows), "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
            "tokens_per_step": rows[-1]["n_tokens"], f"median_tokens_per_s_after_step_{skip}": statistics.median(tps),
            "median_mfu": statistics.median(mfu) if mfu else None,
            "loss_finite": all(r["loss"] == r["loss"] for r in rows)}


def main() -> None:
    logdir, out = Path(sys.argv[1]), Path(sys.argv[2])
    summary: dict = {"parts": {}}
    parts = logdir / "parts.tsv"
    if parts.exists():
        for line in parts.read_text().splitlines():
            name, rc, sec = line.split("\t")
            summary["parts"][name] = {"rc": rc, "seconds": float(sec)}
    for name in ("pytest_gpu", "pytest_cpu"):
        summary[name] = junit(logdir / f"{name}.xml")
    for name in ("train_throughput", "attention"):
        p = logdir / f"{name}.json"
        summary[name] = json.loads(p.read_text()) if p.exists() else {"missing": True}
    summary["cli_train"] = {}
    for run in sorted(logdir.glob("run_*")):
        try:
            summary["cli_train"][run.name] = run_metrics(run)
        except Exception as e:  # noqa: BLE001
            summary["cli_train"][run.name] = {"error": f"{type(e).__name__}: {e}"}
    for name in ("kernels_accuracy", "kernels_ops", "kernels_model", "env"):
        p = logdir / f"{name}.log"
        if p.exists():
            summary[name] = [x for x in p.read_text().splitlines() if x.strip() and not x.startswith("+")][-60:]
    out.write_text(json.dumps(summary, indent=2, default=str))

    print("\n==== gpu_check summary ====")
    for name, p in summary["parts"].items():
        print(f"  part {name:22s} rc {p['rc']:>4s}  {p['seconds']:6.0f} s")
    for name in ("pytest_gpu", "pytest_cpu"):
        print(f"  {name}: {summary[name].get('counts', summary[name])}")
        for case, why in list(summary[name].get("not_passed", {}).items())[:12]:
            print(f"     {case}: {why[:160]}")
    for line in summary.get("kernels_model", [])[-2:]:
        print(f"  kernels model: {line}")
    tt = summary["train_throughput"]
    for cname, r in tt.get("configs", {}).items():
        if "error" in r:
            print(f"  {cname[:60]:60s} FAILED {r['error'][:80]}")
        else:
            print(f"  {cname[:60]:60s} {r.get('tokens_per_s', 0):9.0f} tok/s  MFU {r.get('mfu') or 0:.1%}")
    for run, r in summary["cli_train"].items():
        print(f"  cli {run}: {r}")


if __name__ == "__main__":
    main()
