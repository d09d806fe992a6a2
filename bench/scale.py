"""How a build scales with the number of documents: peak RSS of the largest process, wall time and docs/s per stage.

A synthetic corpus of N short documents (random words, 16 JSONL files, so a file holds N/16 documents: per-file
stages must be bounded by their batches, not by the file) with planted *exact* copies (the same text under another
id) and *near* copies (the same text with its last word changed: Jaccard of word 5-grams ~0.98), built with dedup
on and `--workers 2`. Every planted copy must be dropped (`exact-dup` / `near-dup`) and nothing else.
Each N runs in a fresh subprocess and each stage of it in a forked child (as on a cluster, where every stage is a
job), so `ru_maxrss` of the children is the peak of this build alone; /proc is also sampled every 0.1 s for the
largest live process per stage (file-backed pages of memory-mapped intermediates count too).

Targets (issue 10): peak RSS <= 2 GB at 5M documents, RSS(5M) <= 1.3 x RSS(0.5M), recall = precision = 1.

    nice -n 10 python bench/scale.py --docs 500000 2000000 5000000 [--workers 2] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("MIDTRAIN_SHARED", ROOT.parent / "shared" / "data"))
TOKENIZER = SHARED / "tokenizers" / "allenai_eleuther-ai-gpt-neox-20b-pii-special.json"

N_FILES = 16
WORDS_PER_DOC = 60
PLANT_RATE = 0.02  # of N: exact copies, and as many near copies


def make_corpus(dest: Path, n_docs: int, seed: int = 0) -> tuple[set[str], set[str]]:
    """Write N documents over N_FILES JSONL files; returns (ids of exact copies, ids of near copies).

    Originals are drawn first; copies are appended to later files than their original (so the original has the
    lower build key and survives dedup)."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20000)]
    n_plant = int(n_docs * PLANT_RATE)
    n_orig = n_docs - 2 * n_plant
    per_file = -(-n_orig // N_FILES)
    exact, near = set(), set()
    dest.mkdir(parents=True, exist_ok=True)
    files = [open(dest / f"part-{f:03d}.jsonl", "w") for f in range(N_FILES)]
    originals: list[tuple[int, int]] = []  # (file, index) of a sample of originals to copy
    texts_for_copy: list[str] = []
    copy_every = max(1, n_orig // (2 * n_plant)) if n_plant else 0
    for i in range(n_orig):
        text = " ".join(rng.choices(vocab, k=WORDS_PER_DOC))
        f = i // per_file
        files[f].write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
        if copy_every and i % copy_every == 0 and len(texts_for_copy) < 2 * n_plant and f < N_FILES - 1:
            texts_for_copy.append(text)
            originals.append((f, i))
    for j, (text, (f, _)) in enumerate(zip(texts_for_copy, originals)):
        target = rng.randrange(f + 1, N_FILES)
        if j % 2 == 0:
            doc_id, out = f"exact{j}", text
            exact.add(doc_id)
        else:
            words = text.split(" ")
            words[-1] = "changed"
            doc_id, out = f"near{j}", " ".join(words)
            near.add(doc_id)
        files[target].write(json.dumps({"id": doc_id, "text": out}) + "\n")
    for fh in files:
        fh.close()
    return exact, near


def write_spec(path: Path, corpus: Path) -> None:
    path.write_text(f"""name: scale
description: synthetic short documents with planted copies (bench/scale.py)
seq_len: 2048
tokenizer: {TOKENIZER}
seed: 0
dedup: {{exact: true, minhash: true, url: false}}
sources:
  - {{name: synthetic, uri: "{corpus}/*.jsonl"}}
""")


class RssSampler:
    """Largest VmRSS of any process in this process's tree, sampled from /proc."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.peak = 0
        self.stage_peak = 0
        self.stage_peak_cmd = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(p))
        out, todo = [], [os.getpid()]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += children.get(pid, [])
        return out

    def take(self) -> int:
        """The peak since the last take (per-stage peaks)."""
        peak, self.stage_peak = self.stage_peak, 0
        self.last_cmd, self.stage_peak_cmd = self.stage_peak_cmd, ""
        return peak

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid in self._tree():
                try:
                    for line in open(f"/proc/{pid}/status"):
                        if line.startswith("VmRSS:"):
                            rss = int(line.split()[1]) * 1024
                            self.peak = max(self.peak, rss)
                            if rss > self.stage_peak:
                                self.stage_peak = rss
                                self.stage_peak_cmd = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")[:120]
                except OSError:
                    pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_one(n_docs: int, workers: int, keep: Path | None) -> dict:
    """Child process: build N documents, report per-stage numbers as JSON on stdout."""
    from pipelines.build.options import BuildOptions
    from pipelines.build.run import executor_options, plan_stages
    from pipelines.build.context import prepare
    from pipelines.build.executors import make_executors
    from pipelines.build.spec import load_spec

    tmp = Path(tempfile.mkdtemp(prefix=f"scale-{n_docs}-", dir=keep))
    corpus, out = tmp / "corpus", tmp / "out"
    # the corpus is written by a short-lived child: its texts never sit in this process, whose pages every forked
    # stage below would otherwise carry (and count) in its own RSS
    with multiprocessing.get_context("fork").Pool(1) as pool:
        exact, near = pool.apply(make_corpus, (corpus, n_docs))
    write_spec(tmp / "scale.yaml", corpus)
    spec = load_spec(str(tmp / "scale.yaml"))
    opts = BuildOptions(out=str(out), workers=workers, progress=False)
    ctx = prepare(spec, opts)
    out.mkdir(parents=True, exist_ok=True)
    stages = plan_stages(ctx)
    executors = make_executors(stages, executor_options(ctx), os.path.join(ctx.work_dir, "logs"))
    for ex in executors:  # run in order below; a forked stage must not relaunch its (already run) dependency
        ex.depends = None
    per_stage = []
    with RssSampler() as sampler:
        t_all = time.perf_counter()
        for stage, ex in zip(stages, executors):
            t0 = time.perf_counter()
            sampler.take()
            # each stage in its own process (as on a cluster): one-task stages would otherwise run inside this
            # process and carry their memory into the next stage's measurement
            child = multiprocessing.get_context("fork").Process(target=ex.run)
            child.start()
            child.join()
            if child.exitcode:
                raise RuntimeError(f"stage {stage.name} failed (exit {child.exitcode}); logs in {ctx.work_dir}/logs")
            per_stage.append({"stage": stage.name, "tasks": stage.tasks, "seconds": time.perf_counter() - t0,
                              "peak_rss": sampler.take(), "peak_process": sampler.last_cmd})
        wall = time.perf_counter() - t_all
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024

    import duckdb

    con = duckdb.connect(str(out / "manifest.duckdb"), read_only=True)
    dropped = dict(con.execute("SELECT doc_id, reason FROM documents WHERE status = 'dropped'").fetchall())
    n_docs_manifest, = con.execute("SELECT count(*) FROM documents").fetchone()
    con.close()
    planted = exact | near
    caught = {d for d in planted if d in dropped}
    wrong_reason = [d for d in caught if dropped[d] != ("exact-dup" if d in exact else "near-dup")]
    false_drops = set(dropped) - planted
    bounded = [s["peak_rss"] for s in per_stage if s["stage"] != "decide"]
    result = {
        "peak_rss_without_decide": max(bounded) if bounded else None,
        "n_docs": n_docs, "n_docs_manifest": n_docs_manifest, "workers": workers, "wall_s": wall,
        "peak_rss_largest_process": max(sampler.peak, self_rss, child_rss), "rss_self": self_rss,
        "rss_children": child_rss, "rss_sampled": sampler.peak, "stages": per_stage,
        "planted": len(planted), "caught": len(caught), "wrong_reason": len(wrong_reason),
        "false_drops": len(false_drops), "false_drop_examples": sorted(false_drops)[:5],
    }
    if keep is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def report(r: dict) -> None:
    gb = r["peak_rss_largest_process"] / 2**30
    print(f"\nN = {r['n_docs']:,} documents, --workers {r['workers']}: wall {r['wall_s']:.1f} s, "
          f"peak RSS of the largest process {gb:.2f} GB (self {r['rss_self'] / 2**30:.2f}, "
          f"children {r['rss_children'] / 2**30:.2f}, sampled {r['rss_sampled'] / 2**30:.2f})")
    for s in r["stages"]:
        rss = f"{s['peak_rss'] / 2**30:6.2f} GB" if "peak_rss" in s else ""
        print(f"  {s['stage']:<14} {s['tasks']:>4} task(s) {s['seconds']:8.1f} s  {r['n_docs'] / s['seconds']:>10,.0f} "
              f"docs/s  largest process {rss} (sampled)")
    print(f"  planted copies {r['planted']:,}: removed {r['caught']:,} (wrong reason {r['wrong_reason']}), "
          f"other documents removed: {r['false_drops']} {r['false_drop_examples']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, nargs="+", default=[500_000, 2_000_000, 5_000_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="build under this folder and keep it")
    ap.add_argument("--json", type=Path, default=None, help="append each result as a JSON line here")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print("RESULT " + json.dumps(run_one(args.child, args.workers, args.keep)), flush=True)
        return
    results = []
    for n in args.docs:
        cmd = [sys.executable, __file__, "--child", str(n), "--workers", str(args.workers)]
        if args.keep:
            cmd += ["--keep", str(args.keep)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"N = {n:,}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}")
            break
        r = json.loads(line[len("RESULT "):])
        results.append(r)
        report(r)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")
    if len(results) > 1:
        base = results[0]["peak_rss_largest_process"]
        for r in results[1:]:
            print(f"RSS({r['n_docs']:,}) / RSS({results[0]['n_docs']:,}) = {r['peak_rss_largest_process'] / base:.2f}")


if __name__ == "__main__":
    main()
