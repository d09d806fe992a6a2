"""Held-out data in the build format of issue 19 (BUILD/holdout/<source>.npy + .idx.parquet + manifest `holdout`
table), written into a copy of a build, for tests that need held-out sources before the builder carves them."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_holdout(build: Path, source: str, docs: list[tuple[str, list[int], str]], dtype=np.uint16) -> None:
    """docs: (doc_id, token ids without EOS, text). Appends EOS (the build's) to each document."""
    import duckdb

    con = duckdb.connect(str(build / "manifest.duckdb"))
    eos = int(con.execute("select eos_id from build").fetchone()[0])
    out = build / "holdout"
    out.mkdir(exist_ok=True)
    tokens, starts, lengths, chars, nbytes = [], [], [], [], []
    pos = 0
    for _, ids, text in docs:
        seq = list(ids) + [eos]
        tokens.extend(seq)
        starts.append(pos)
        lengths.append(len(seq))
        chars.append(len(text))
        nbytes.append(len(text.encode("utf-8")))
        pos += len(seq)
    np.save(out / f"{source}.npy", np.asarray(tokens, dtype=dtype))
    pq.write_table(pa.table({"doc_id": [d for d, _, _ in docs], "start": pa.array(starts, pa.int64()),
                             "length": pa.array(lengths, pa.int64()), "n_chars": pa.array(chars, pa.int64()),
                             "n_bytes": pa.array(nbytes, pa.int64())}), out / f"{source}.idx.parquet")
    sha = hashlib.sha256((out / f"{source}.npy").read_bytes()).hexdigest()
    con.execute("create table if not exists holdout (source varchar, path varchar, n_docs bigint, "
                "n_tokens bigint, n_bytes bigint, sha256 varchar)")
    con.execute("insert into holdout values (?, ?, ?, ?, ?, ?)",
                [source, f"holdout/{source}.npy", len(docs), len(tokens), sum(nbytes), sha])
    con.close()


def build_with_holdout(src_build: Path, dest: Path, tokenizer_path: Path, texts: dict[str, list[str]]) -> Path:
    """A copy of `src_build` with the given held-out texts per source."""
    from tokenizers import Tokenizer

    shutil.copytree(src_build, dest)
    tok = Tokenizer.from_file(str(tokenizer_path))
    for source, items in texts.items():
        write_holdout(dest, source, [(f"{source}-{i}", tok.encode(t, add_special_tokens=False).ids, t)
                                     for i, t in enumerate(items)])
    return dest


def mirror_heldout_texts(shared: Path, n: int = 12) -> dict[str, list[str]]:
    """Texts no stage-2 training row holds: GSM8K train rows 6100+ (used nowhere in the hub mirror) and
    benchmark questions (decontaminated out of the mirror)."""
    import gzip
    import json

    gsm = [json.loads(x) for x in (shared / "gsm8k" / "train.jsonl").read_text().splitlines()[6100:6100 + n]]
    with gzip.open(shared / "benchmarks" / "arc_easy.jsonl.gz", "rt") as fh:
        arc = [json.loads(next(fh))["text"] for _ in range(n)]
    return {"dolmino-math-gsm8k": [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in gsm],
            "dolmino-wiki": arc}
