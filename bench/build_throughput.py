"""End-to-end build throughput, stage-2 configuration (dedup + decontamination on), vs raw
`tokenizers.Tokenizer.encode_batch_fast` (the fastest call `tokenizers` has) on the same documents, same run.

Workloads (`--workload`, default all four), each written into several `.json.gz` files with distinct ids:

- `mixed`: the mirror's stage-2 kinds of text (Dolmino dclm/wiki/flan, python-edu, DeepMind maths, open-web-math,
  starcoder), one file per copy; every copy gets a distinct first line, so copies are near-duplicates, not exact
  ones (MinHash still runs on everything and stage B drops them). Issue 10's workload.
- `web`: web text, most of a real stage 2: the Dolmino dclm, OLMoE dclm and Dolmino wiki texts of the mirror
  (7,167 documents) in 6 files, each copy with a distinct first line (near-duplicates: every document is
  tokenized, as in a stage 2 whose sources are already deduplicated).
- `dedup-heavy`: the same web texts copied verbatim into 6 files (43,002 documents, 35,845 exact copies): issue 22's
  0.60x measurement. A build that decides exact duplicates before tokenization tokenizes 1/6 of it.
- `web-unique`: the same web texts in 6 files, the words of each document shuffled in every copy after the first
  (same words, lengths and tokenizer load; no duplicates at all): what a build costs when dedup drops nothing.

The build reads, decompresses, parses, decontaminates (Instella's evaluation suite), signs for dedup, tokenizes,
writes intermediates, dedups, packs, writes shards and the manifest; the baseline only tokenizes texts already in
memory (every document, duplicates included). The decontamination index is built (or taken from the cache) before
the timed build, as in any build after the first; its build time is printed separately. The build runs in a child
process: its CPU time (worker processes included, polled from /proc) and peak RSS come from getrusage and /proc.
Wall-clock ratios swing widely on a machine shared with other work; the CPU-time ratio (baseline CPU seconds /
build CPU seconds) compares two builds there. The load average is printed beside every result.

After each workload the bench prints where the build's time went (from the best build's logs): every stage's wall
clock and share, and inside each stage every step's time summed over its tasks (datatrove stats: worker seconds,
which on 2 workers add up to about twice the stage's wall clock).

Targets: issue 10, mixed >= 0.8x; issue 22, web and dedup-heavy >= 0.95x wall, dedup-heavy > 1x.

`--tokenize-after` builds with `dedup: {tokenize_after: true}` (pipelines/dedup/late_tokens.py): the same shards,
but no duplicate is tokenized (stage A signs, the global dedup decides, then `late_tokens` tokenizes the survivors).

    python bench/build_throughput.py [--workload mixed|web|dedup-heavy|web-unique|all] [--workers 2] [--repeat 2]
                                     [--no-dedup-decontam] [--tokenize-after]
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
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
MIXED_GLOBS = ("allenai/dolmino-mix-1124/data/dclm/**/*.json.zst", "allenai/dolmino-mix-1124/data/wiki/*.json.gz",
               "allenai/dolmino-mix-1124/data/flan/*.json.gz", "HuggingFaceTB/smollm-corpus/python-edu/*.parquet",
               "LLM360/TxT360/data/dm_maths/**/*.jsonl.gz", "allenai/OLMoE-mix-0924/data/open-web-math/*.jsonl.gz",
               "allenai/OLMoE-mix-0924/data/starcoder/*.json.gz")
WEB_GLOBS = ("allenai/dolmino-mix-1124/data/dclm/**/*.json.zst", "allenai/OLMoE-mix-0924/data/dclm/*.json.zst",
             "allenai/dolmino-mix-1124/data/wiki/*.json.gz")
# workload -> (source globs, copies, how copies differ: "first-line" (near duplicates), "verbatim" (exact copies),
# "shuffled" (every copy after the first has each document's words in another order: no duplicates at all))
WORKLOADS = {"mixed": (MIXED_GLOBS, 4, "first-line"), "web": (WEB_GLOBS, 6, "first-line"),
             "dedup-heavy": (WEB_GLOBS, 6, "verbatim"), "web-unique": (WEB_GLOBS, 6, "shuffled")}
TARGETS = {"mixed": 0.80, "web": 0.95, "dedup-heavy": 1.0, "web-unique": 0.95}


def make_corpus(dest: Path, globs: tuple[str, ...], copies: int, differ: str) -> list[str]:
    """Write `copies` .json.gz files of the mirror texts matched by `globs` (ids distinct across files); returns every
    document's text in build order. `differ` (see WORKLOADS): "first-line" gives each copy's documents their own
    first line (near duplicates), "verbatim" copies them exactly, "shuffled" shuffles the words of every document
    after the first copy (same words and lengths, no duplicates)."""
    import random

    from pipelines.read.formats import iter_records

    hub = SHARED / "hub"
    files = [f for g in globs for f in sorted(hub.glob(g))]
    texts = [r.text for f in files for r in iter_records(str(f)) if r.text]
    dest.mkdir(parents=True)
    all_texts = []
    for c in range(copies):  # each copy is a separate file with distinct ids, like more shards of the same source
        if differ == "first-line":
            copy = [f"copy {c} document {i}\n{t}" for i, t in enumerate(texts)]
        elif differ == "shuffled" and c:
            copy = [" ".join(random.Random(c * 1_000_003 + i).sample(t.split(" "), t.count(" ") + 1))
                    for i, t in enumerate(texts)]
        else:
            copy = texts
        lines = [json.dumps({"id": f"c{c}-{i}", "text": t}) for i, t in enumerate(copy)]
        (dest / f"part-{c:04d}.json.gz").write_bytes(gzip.compress("\n".join(lines).encode(), compresslevel=1))
        all_texts += copy
    return all_texts


def child_usage() -> tuple[float, float]:
    """(CPU seconds, peak RSS in MB) of every waited-for child process and its waited-for descendants (Linux: KiB)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime, r.ru_maxrss / 1024


class DescendantCPU(threading.Thread):
    """Polls /proc (Linux) every 50 ms for the CPU seconds and peak RSS of every descendant of `root`: datatrove's workers are
    children of a forkserver that is never waited for, so getrusage(RUSAGE_CHILDREN) does not see them. The last
    < 50 ms of each process are missed."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.cpu, self.stop = root, {}, threading.Event()
        self.peak_rss_mb = 0.0
        self.tick = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.stop.wait(0.05):
            stats = {}
            for d in os.listdir("/proc"):
                if d.isdigit():
                    try:
                        f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
                    except OSError:
                        continue
                    stats[int(d)] = (int(f[1]), (int(f[11]) + int(f[12])) / self.tick)  # ppid, utime + stime
            family = {self.root}
            for _ in range(4):  # build -> forkserver -> workers (-> their helpers)
                family |= {p for p, (pp, _) in stats.items() if pp in family}
            for p in family - {self.root}:
                self.cpu[p] = stats[p][1]
                try:
                    hwm = next(ln for ln in open(f"/proc/{p}/status") if ln.startswith("VmHWM:"))
                    self.peak_rss_mb = max(self.peak_rss_mb, int(hwm.split()[1]) / 1024)
                except (OSError, StopIteration):
                    pass

    def total(self) -> float:
        self.stop.set()
        self.join()
        return sum(self.cpu.values())


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_average() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


# The build, in a child process. Every stage's wall clock is taken around datatrove's executor.run (the stage name is
# the last part of its logging folder), so the bench needs nothing from the build but its normal logs.
BUILD = """
import sys, time
sys.path.insert(0, {root!r})
from datatrove.executor.local import LocalPipelineExecutor
_run = LocalPipelineExecutor.run
def _timed_run(self, *a, **k):
    t0 = time.perf_counter()
    try:
        return _run(self, *a, **k)
    finally:
        print("STAGE", self.logging_dir.path.rstrip("/").rsplit("/", 1)[-1], time.perf_counter() - t0, flush=True)
LocalPipelineExecutor.run = _timed_run
from pipelines.build.options import BuildOptions
from pipelines.build.run import build_mixture
from pipelines.build.spec import parse_spec
spec = parse_spec({spec!r}, {spec_path!r})
t0 = time.perf_counter()
build_mixture(spec, BuildOptions(out={out!r}, workers={workers}, progress=False))
print("TOTAL", time.perf_counter() - t0, flush=True)
# VmHWM, not ru_maxrss: Linux carries the parent's high-water mark (this bench holds every text and encoding)
# across fork + exec, so ru_maxrss would report the bench, not the build
print("MAIN_MAXRSS_KB", next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")).split()[1], flush=True)
"""


def step_seconds(out: Path) -> dict[str, list[tuple[str, float]]]:
    """{stage: [(step, seconds summed over the stage's tasks)]} from the datatrove stats of a finished build (every
    step's `time_stats`; a step that tracks parts of its work separately adds `seconds:<part>` stats)."""
    found: dict[str, list[tuple[str, float]]] = {}
    for stage_dir in sorted(glob.glob(str(out / "work" / "*" / "logs" / "*"))):
        totals: dict[str, float] = {}
        for f in sorted(glob.glob(os.path.join(stage_dir, "stats", "*.json"))):
            for step in json.load(open(f)):
                name = step["name"].split(": ", 1)[-1]
                totals[name] = totals.get(name, 0.0) + _total(step.get("time_stats"))
                for label, v in step.get("stats", {}).items():
                    if label.startswith("seconds:"):
                        part = f"{name} / {label.split(':', 1)[1]}"
                        totals[part] = totals.get(part, 0.0) + _total(v)
        if totals:
            found[os.path.basename(stage_dir)] = list(totals.items())
    return found


def _total(metric) -> float:
    """A datatrove stat's total (saved as a bare number when it is the only field)."""
    return float(metric.get("total", 0.0)) if isinstance(metric, dict) else float(metric or 0.0)


def print_breakdown(stages: list[tuple[str, float]], total: float, steps: dict[str, list[tuple[str, float]]]) -> None:
    print(f"  where the build's {total:.2f} s went (stage wall clock, share of the build; steps: seconds summed over "
          "the stage's tasks, share of the stage's task seconds):")
    accounted = 0.0
    for name, secs in stages:
        accounted += secs
        print(f"    {name:<18} {secs:7.2f} s  {100 * secs / total:5.1f}%")
        rows = steps.get(name, [])
        whole = sum(s for n, s in rows if " / " not in n) or 1.0
        for step, s in rows:
            indent = "        " if " / " in step else "      "
            print(f"{indent}{step:<40} {s:7.2f} s  {100 * s / whole:5.1f}%")
    print(f"    {'outside stages':<18} {total - accounted:7.2f} s  {100 * (total - accounted) / total:5.1f}%  "
          "(prepare, decontamination index copy, lock, input records)")


def run_workload(name: str, args, tmp: Path, tok) -> None:
    globs, copies, differ = WORKLOADS[name]
    texts = make_corpus(tmp / name / "data", globs, args.copies or copies, differ)
    n_bytes = sum(len(t.encode()) for t in texts)
    dedup = {"exact": True, "minhash": True, "url": True, **({"tokenize_after": True} if args.tokenize_after else {})}
    extra = {} if args.no_dedup_decontam else {"dedup": dedup, "decontaminate": {"ngram": 13}}
    spec = {"name": "bench", "seq_len": 4096, "tokenizer": str(TOKENIZER),
            "sources": [{"name": "mix", "uri": str(tmp / name / "data" / "*.json.gz")}], **extra}
    raw = {"wall": float("inf"), "cpu": float("inf")}
    e2e = {"wall": float("inf"), "cpu": float("inf")}
    n_tokens = rss_mb = worker_rss_mb = 0
    best_breakdown, loads = None, []
    for r in range(args.repeat):
        loads.append(os.getloadavg()[0])
        c0, t0 = self_cpu(), time.perf_counter()
        encs = [e for i in range(0, len(texts), 4096)
                for e in tok.encode_batch_fast(texts[i:i + 4096], add_special_tokens=False)]
        raw = {"wall": min(raw["wall"], time.perf_counter() - t0), "cpu": min(raw["cpu"], self_cpu() - c0)}
        n_tokens = sum(len(e.ids) for e in encs)  # outside the timing: the baseline is the encode call alone
        del encs
        out = tmp / name / f"out{r}"
        code = BUILD.format(root=str(ROOT), spec=spec, spec_path=str(tmp / "bench.yaml"), out=str(out),
                            workers=args.workers)
        (c0, _), t0 = child_usage(), time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        poll = DescendantCPU(proc.pid)
        poll.start()
        stdout, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"build failed (exit {proc.returncode})")
        (c1, _), wall = child_usage(), time.perf_counter() - t0
        lines = stdout.splitlines()
        rss_mb = max(rss_mb, max((int(ln.split()[1]) / 1024 for ln in lines if ln.startswith("MAIN_MAXRSS_KB")),
                                 default=0.0))
        if wall < e2e["wall"]:
            stages = [(ln.split()[1], float(ln.split()[2])) for ln in lines if ln.startswith("STAGE ")]
            total = next(float(ln.split()[1]) for ln in lines if ln.startswith("TOTAL "))
            best_breakdown = (stages, total, step_seconds(out))
        e2e = {"wall": min(e2e["wall"], wall), "cpu": min(e2e["cpu"], c1 - c0 + poll.total())}
        worker_rss_mb = max(worker_rss_mb, poll.peak_rss_mb)
        shutil.rmtree(out)

    config = "dedup + decontamination OFF" if args.no_dedup_decontam else "stage-2: dedup + decontamination ON" + (
        ", tokenized after dedup (dedup.tokenize_after)" if args.tokenize_after else "")
    print(f"\n== workload {name}: {config}; documents {len(texts):,} ({len(set(texts)):,} distinct)  text "
          f"{n_bytes / 1e6:.1f} MB  tokens {n_tokens:,}  workers {args.workers}  best of {args.repeat}  "
          f"(1-min load average before each run: {', '.join(f'{x:.2f}' for x in loads)}; now {load_average()})")
    print(f"raw tokenizers encode_batch_fast : {n_tokens / raw['wall']:12,.0f} tokens/s  ({raw['wall']:.2f} s wall, "
          f"{raw['cpu']:.2f} s CPU)")
    print(f"build-mixture end to end         : {n_tokens / e2e['wall']:12,.0f} tokens/s  ({e2e['wall']:.2f} s wall, "
          f"{e2e['cpu']:.2f} s CPU, all processes)")
    print(f"ratio end-to-end / raw, wall     : {raw['wall'] / e2e['wall']:.2f}x  (target >= {TARGETS[name]:.2f}x)")
    print(f"ratio end-to-end / raw, CPU time : {raw['cpu'] / e2e['cpu']:.2f}x  (baseline CPU s / build CPU s, "
          "rayon's thread overhead in both; compares builds on a shared machine)")
    print(f"peak RSS: build main process {rss_mb:.0f} MB, largest worker {worker_rss_mb:.0f} MB")
    if best_breakdown:
        print_breakdown(*best_breakdown)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all", help="which corpus to build")
    ap.add_argument("--copies", type=int, default=0, help="files per workload (default: mixed 4, web 6)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-dedup-decontam", action="store_true", help="build without dedup and decontamination")
    ap.add_argument("--tokenize-after", action="store_true",
                    help="spec dedup.tokenize_after: tokenize after the global dedup, so duplicates are never tokenized")
    ap.add_argument("--repeat", type=int, default=1, help="alternate baseline and build this many times; best of each")
    args = ap.parse_args()

    from tokenizers import Tokenizer

    from pipelines.decontam.ngram import DecontamConfig, build_decontam_index

    tmp = Path(tempfile.mkdtemp(prefix="midtrain-bench-"))
    try:
        tok = Tokenizer.from_file(str(TOKENIZER))
        if not args.no_dedup_decontam:
            t0 = time.perf_counter()
            build_decontam_index(DecontamConfig.from_spec({"ngram": 13}, tmp), tmp / "index-warmup")
            print(f"decontamination index (cached after the first run): {time.perf_counter() - t0:.2f} s")
        for name in (WORKLOADS if args.workload == "all" else [args.workload]):
            run_workload(name, args, tmp, tok)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
