"""End-to-end build throughput, stage-2 configuration (dedup + decontamination on), vs raw
`tokenizers.Tokenizer.encode_batch_fast` (the fastest call `tokenizers` has) on the same documents, same run.

The corpus is the mirror's stage-2 kinds of text (Dolmino dclm/wiki/flan, python-edu, DeepMind maths, open-web-math,
starcoder) replicated into several files; every copy gets a distinct first line, so copies are not exact
duplicates of each other (near-duplicates: MinHash still runs on everything and stage B drops them). The build
reads, decompresses, parses, decontaminates (Instella's evaluation suite), signs for dedup, tokenizes, writes
intermediates, dedups, packs, writes shards and the manifest; the baseline only tokenizes texts already in memory.
The decontamination index is built (or taken from the cache) before the timed build, as in any build after the
first; its build time is printed separately. The build runs in a child process: its CPU time (worker processes
included, polled from /proc) and peak RSS come from getrusage and /proc. Wall-clock ratios swing widely on a machine
shared with other work; the CPU-time ratio (baseline CPU seconds / build CPU seconds) compares two builds there.
Target (issue 10): ratio >= 0.8.

    python bench/build_throughput.py [--copies 4] [--workers 2] [--no-dedup-decontam] [--repeat 2]
"""
from __future__ import annotations

import argparse
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
CORPUS_GLOBS = ("allenai/dolmino-mix-1124/data/dclm/**/*.json.zst", "allenai/dolmino-mix-1124/data/wiki/*.json.gz",
                "allenai/dolmino-mix-1124/data/flan/*.json.gz", "HuggingFaceTB/smollm-corpus/python-edu/*.parquet",
                "LLM360/TxT360/data/dm_maths/**/*.jsonl.gz", "allenai/OLMoE-mix-0924/data/open-web-math/*.jsonl.gz",
                "allenai/OLMoE-mix-0924/data/starcoder/*.json.gz")


def make_corpus(dest: Path, copies: int) -> list[str]:
    from pipelines.read.formats import iter_records

    hub = SHARED / "hub"
    files = [f for g in CORPUS_GLOBS for f in sorted(hub.glob(g))]
    texts = [r.text for f in files for r in iter_records(str(f)) if r.text]
    dest.mkdir(parents=True)
    all_texts = []
    for c in range(copies):  # each copy is a separate file with distinct ids, like more shards of the same source
        copy = [f"copy {c} document {i}\n{t}" for i, t in enumerate(texts)]
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


BUILD = """
import sys
sys.path.insert(0, {root!r})
from pipelines.build.options import BuildOptions
from pipelines.build.run import build_mixture
from pipelines.build.spec import parse_spec
spec = parse_spec({spec!r}, {spec_path!r})
build_mixture(spec, BuildOptions(out={out!r}, workers={workers}, progress=False))
import resource
print("MAIN_MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=4, help="replications of the mirror text (one file each)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-dedup-decontam", action="store_true", help="build without dedup and decontamination")
    ap.add_argument("--repeat", type=int, default=1, help="alternate baseline and build this many times; best of each")
    args = ap.parse_args()

    from tokenizers import Tokenizer

    from pipelines.decontam.ngram import DecontamConfig, build_decontam_index

    tmp = Path(tempfile.mkdtemp(prefix="midtrain-bench-"))
    try:
        texts = make_corpus(tmp / "data", args.copies)
        n_bytes = sum(len(t.encode()) for t in texts)
        tok = Tokenizer.from_file(str(TOKENIZER))
        extra = {} if args.no_dedup_decontam else {"dedup": {"exact": True, "minhash": True, "url": True},
                                                    "decontaminate": {"ngram": 13}}
        spec = {"name": "bench", "seq_len": 4096, "tokenizer": str(TOKENIZER),
                "sources": [{"name": "mix", "uri": str(tmp / "data" / "*.json.gz")}], **extra}
        if extra:
            t0 = time.perf_counter()
            build_decontam_index(DecontamConfig.from_spec(extra["decontaminate"], tmp), tmp / "index-warmup")
            print(f"decontamination index (cached after the first run): {time.perf_counter() - t0:.2f} s")

        raw = {"wall": float("inf"), "cpu": float("inf")}
        e2e = {"wall": float("inf"), "cpu": float("inf")}
        n_tokens = rss_mb = worker_rss_mb = 0
        for r in range(args.repeat):
            c0, t0 = self_cpu(), time.perf_counter()
            encs = [e for i in range(0, len(texts), 4096)
                    for e in tok.encode_batch_fast(texts[i:i + 4096], add_special_tokens=False)]
            raw = {"wall": min(raw["wall"], time.perf_counter() - t0), "cpu": min(raw["cpu"], self_cpu() - c0)}
            n_tokens = sum(len(e.ids) for e in encs)  # outside the timing: the baseline is the encode call alone
            del encs
            out = tmp / f"out{r}"
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
            rss_mb = max(rss_mb, max((int(ln.split()[1]) / 1024 for ln in stdout.splitlines()
                                      if ln.startswith("MAIN_MAXRSS_KB")), default=0.0))
            e2e = {"wall": min(e2e["wall"], wall), "cpu": min(e2e["cpu"], c1 - c0 + poll.total())}
            worker_rss_mb = max(worker_rss_mb, poll.peak_rss_mb)
            shutil.rmtree(out)

        config = "dedup + decontamination OFF" if args.no_dedup_decontam else "stage-2: dedup + decontamination ON"
        print(f"{config}; documents {len(texts):,}  text {n_bytes / 1e6:.1f} MB  tokens {n_tokens:,}  "
              f"workers {args.workers}  best of {args.repeat}")
        print(f"raw tokenizers encode_batch_fast : {n_tokens / raw['wall']:12,.0f} tokens/s  ({raw['wall']:.2f} s wall, "
              f"{raw['cpu']:.2f} s CPU)")
        print(f"build-mixture end to end         : {n_tokens / e2e['wall']:12,.0f} tokens/s  ({e2e['wall']:.2f} s wall, "
              f"{e2e['cpu']:.2f} s CPU, all processes)")
        print(f"ratio end-to-end / raw, wall     : {raw['wall'] / e2e['wall']:.2f}x  (target >= 0.80x)")
        print(f"ratio end-to-end / raw, CPU time : {raw['cpu'] / e2e['cpu']:.2f}x  (baseline CPU s / build CPU s, "
              "rayon's thread overhead in both; compares builds on a shared machine)")
        print(f"peak RSS: build main process {rss_mb:.0f} MB, largest worker {worker_rss_mb:.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
