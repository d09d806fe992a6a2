"""Token parity with `dolma tokens` (allenai/dolma 1.2.1, the tool Instella tokenized stages 1 and 2 with).

For every document of the given files (default: the mirror's Dolmino wiki, DCLM and FLAN text) this compares

- dolma's own ids: `dolma.tokenizer.tokenize_file` — the per-file function `dolma tokens` runs — executed by the
  Python of a separate environment that has dolma (it needs `aiobotocore==2.5.4 boto3==1.28.17 botocore==1.31.17`,
  which would downgrade this project's boto stack, so it is kept out of the project's dependencies), with
- ours: `tokenization: dolma` (pipelines/steps/tokenize_modes.py) and, for reference, the default tokenization.

    python -m venv /tmp/dolma-venv && /tmp/dolma-venv/bin/pip install dolma==1.2.1 aiobotocore==2.5.4 \
        boto3==1.28.17 botocore==1.31.17
    python bench/dolma_parity.py --dolma-python /tmp/dolma-venv/bin/python

Without a dolma environment (no --dolma-python, no $DOLMA_PYTHON) it prints why and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rss_peak import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("MIDTRAIN_SHARED", ROOT.parent / "shared" / "data"))
DOLMINO = SHARED / "hub" / "allenai" / "dolmino-mix-1124" / "data"
DEFAULT_GLOBS = ("wiki/*.json.gz", "dclm/**/*.json.zst", "flan/*.json.gz")
TOKENIZER = SHARED / "tokenizers" / "allenai_eleuther-ai-gpt-neox-20b-pii-special.json"

# runs inside the dolma environment: one JSON line {src, loc, ids} per document dolma tokenizes
DOLMA_SIDE = """
import json, sys
from dolma.tokenizer.tokenizer import tokenize_file
tok, out = sys.argv[1], open(sys.argv[2], "w")
for path in sys.argv[3:]:
    for o in tokenize_file(tok, path, eos_token_id=0, pad_token_id=1):
        out.write(json.dumps({"src": path, "loc": int(o.loc), "ids": [int(t) for t in o.tokens]}) + "\\n")
out.close()
"""


def dolma_ids(python: str, tokenizer: Path, files: list[str]) -> dict[tuple[str, int], list[int]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dolma.jsonl"
        # dolma's smart_open reads .gz natively; .zst needs extras its pinned environment may lack, so those
        # files are handed over decompressed (same lines, same line numbers)
        inputs, original = [], {}
        for i, f in enumerate(files):
            if f.endswith(".zst"):
                import zstandard

                plain = Path(tmp) / f"{i}.jsonl"
                with open(f, "rb") as src, open(plain, "wb") as dst:
                    zstandard.ZstdDecompressor().copy_stream(src, dst)
                original[str(plain)] = f
                f = str(plain)
            inputs.append(f)
        subprocess.run([python, "-c", DOLMA_SIDE, str(tokenizer), str(out), *inputs], check=True,
                       stderr=subprocess.DEVNULL)
        rows = map(json.loads, out.read_text().splitlines())
        return {(original.get(r["src"], r["src"]), r["loc"]): r["ids"] for r in rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="Dolma JSON-lines files (default: mirror wiki + DCLM + FLAN).")
    ap.add_argument("--dolma-python", default=os.environ.get("DOLMA_PYTHON"),
                    help="Python of an environment with dolma 1.2.1 installed (or $DOLMA_PYTHON).")
    ap.add_argument("--tokenizer", default=str(TOKENIZER), help="tokenizer.json (default: Instella's).")
    args = ap.parse_args()
    if not args.dolma_python or not Path(args.dolma_python).exists():
        print("skipped: no dolma environment (pass --dolma-python or set $DOLMA_PYTHON)")
        return 0
    check = subprocess.run([args.dolma_python, "-c", "import dolma.tokenizer.tokenizer"], capture_output=True)
    if check.returncode != 0:
        print(f"skipped: dolma is not importable by {args.dolma_python}")
        return 0

    from tokenizers import Tokenizer

    from pipelines.read.formats import iter_records
    from pipelines.steps.tokenize_modes import dolma_encode

    files = args.files or sorted(str(p) for g in DEFAULT_GLOBS for p in DOLMINO.glob(g))
    theirs = dolma_ids(args.dolma_python, Path(args.tokenizer), files)
    tok = Tokenizer.from_file(args.tokenizer)
    n = same_dolma = same_default = 0
    missing, diffs = [], []
    for path in files:
        for rec in iter_records(path):
            if rec.reason:
                continue
            n += 1
            want = theirs.get((path, rec.line))
            if want is None:
                missing.append(f"{path}:{rec.line}")
                continue
            ours = dolma_encode(tok, [rec.text], 0)[0].tolist()
            default = tok.encode(rec.text, add_special_tokens=False).ids + [0]
            same_dolma += ours == want
            same_default += default == want
            if ours != want:
                diffs.append(f"{path}:{rec.line}")
    print(f"documents: {n} in {len(files)} files; dolma tokenized {len(theirs)}")
    print(f"tokenization: dolma   identical to `dolma tokens`: {same_dolma}/{n}")
    print(f"tokenization: default identical to `dolma tokens`: {same_default}/{n}")
    for d in (missing + diffs)[:10]:
        print("  differs:", d)
    print(f"peak RSS: {peak_rss_mb():.0f} MB (this process; dolma's own run is a child)")
    return 0 if same_dolma == n and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
