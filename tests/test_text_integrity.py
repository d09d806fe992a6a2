"""Issue 11: exact dedup never merges texts that differ in digits, signs, operators or code symbols; one
normalisation module (`pipelines/text.py`) shared by dedup, decontamination and the GSM8K leak check; the builder's
control tokens (EOS, pad) never come from a document's text."""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
import yaml
from conftest import TOKENIZER, build
from datatrove.data import Document
from tokenizers import Tokenizer

from pipelines.decontam.ngram import DecontamConfig, DecontamIndex, build_decontam_index
from pipelines.dedup.signatures import DedupConfig, DedupSignatureStep, find_duplicates
from pipelines.steps.tokenize import Tokenize
from pipelines.synth.gsm8k.decontam import NgramIndex
from pipelines.text import (
    fold_exact,
    fold_tokens,
    fold_words,
    token_hashes_batch,
    word_hashes,
)

EOS, PAD, EMAIL = 0, 1, 50277  # ids in the Instella (GPT-NeoX-20B + PII) tokenizer


def dedup_drops(texts: list[str], cfg: DedupConfig) -> dict[int, tuple[str, str]]:
    """{index of dropped text: (reason, doc_id of survivor)} for texts signed and clustered in this order."""
    docs = [Document(text=t, id=f"d{i}", metadata={"status": "kept"}) for i, t in enumerate(texts)]
    out = list(DedupSignatureStep(cfg).run(iter(docs)))
    df = pl.DataFrame({"key": range(len(out)), "doc_id": [d.id for d in out],
                       "text_hash": [d.metadata["text_hash"] for d in out],
                       "minhash": [d.metadata.get("minhash") for d in out], "url": [None] * len(out),
                       "minhash_sig": [d.metadata.get("minhash_sig") for d in out]},
                      schema={"key": pl.Int64, "doc_id": pl.Utf8, "text_hash": pl.Int64, "minhash": pl.List(pl.Int64),
                              "url": pl.Utf8, "minhash_sig": pl.Binary})
    found = find_duplicates(df, cfg)
    return {k: (r, d) for k, r, d in zip(found["key"], found["reason"], found["duplicate_of"])}


MEANING_PAIRS = [  # each pair differs only in digits, signs, operators or code symbols
    ("Calculate -5 + 3.\n-2", "Calculate 5 - 3.\n2"),
    ("Let x = 3 - 1. Let y = -x. What is y?\n-2", "Let x = 3 + 1. Let y = x. What is y?\n2"),
    ("Solve 126*m = 110*m + 80 for m.\n-5", "Solve 126*m = 110*m - 80 for m.\n5"),
    ("def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n"),
    ("x = [i**2 for i in range(10)]", "x = [i*2 for i in range(10)]"),
    ("if (a < b) { return 1; }", "if (a > b) { return 1; }"),
]


def test_exact_dedup_keeps_texts_that_differ_in_meaning():
    texts = [t for pair in MEANING_PAIRS for t in pair]
    assert dedup_drops(texts, DedupConfig(minhash=False, url=False)) == {}


def test_near_dedup_keeps_short_math_that_differs_in_signs():
    """Under ~5 words a text is one MinHash shingle: folding signs made these certain near-duplicates. (Longer
    texts differing in one token are near-duplicates with the probability their Jaccard similarity gives.)"""
    texts = [t for pair in MEANING_PAIRS[:3] for t in pair]
    assert dedup_drops(texts, DedupConfig()) == {}


def test_exact_dedup_folds_case_whitespace_and_unicode_form():
    base = "Café: Return A + B;\n  x = -5"
    variants = [base, "café: return a + b; x = -5", "CAFÉ:  RETURN A + B;\t\tx = -5 ",
                unicodedata.normalize("NFD", base)]  # "é" as "e" + combining accent
    drops = dedup_drops(variants, DedupConfig(minhash=False, url=False))
    assert drops == {k: ("exact-dup", "d0") for k in (1, 2, 3)}
    assert len({fold_exact(v) for v in variants}) == 1


def test_normalisations_fold_what_they_document():
    t = "Ünïcode x_1=-5; (a+b)**2\n\tEND."
    assert fold_exact(t) == "ünïcode x_1=-5; (a+b)**2 end.".encode()
    assert fold_tokens(t) == "ünïcode x _ 1 =- 5 ; ( a + b )** 2 end .".encode()
    assert fold_words(t) == "ünïcode x 1 5 a b 2 end".encode()
    # the batched token hashes are the hashes of `fold_tokens`, text by text, for ASCII and non-ASCII texts alike
    texts = [t, "plain ascii, with-symbols!", "", "  \n ", "naïve — “quoted” (é)"]
    th, doc = token_hashes_batch(texts)
    per_text = [word_hashes(fold_tokens(x)) for x in texts]
    assert np.array_equal(th, np.concatenate(per_text))
    assert np.array_equal(doc, np.repeat(np.arange(len(texts)), [len(p) for p in per_text]))


# a GSM8K-like item whose every 13-gram holds an accented word: written with decomposed accents (NFD) it is the same
# text on screen, and both checks must still see it
ITEM_Q = ("José bakes 12 crème brûlée tarts every morning for the café near the station. He sells half to the "
          "résumé writers next door and gives 3 to his niña. How many tarts does José keep for the café?")
ITEM_A = "He sells 12 / 2 = 6 tarts and gives away 3, so José keeps 12 - 6 - 3 = 3 tarts.\n#### 3"


def test_leak_check_and_decontamination_agree_on_unicode_forms(tmp_path: Path, monkeypatch):
    leaked = unicodedata.normalize("NFD", f"Rewritten problem: {ITEM_Q}\nSolution: {ITEM_A}")
    assert leaked != f"Rewritten problem: {ITEM_Q}\nSolution: {ITEM_A}"
    gsm8k_test = tmp_path / "test.jsonl"
    gsm8k_test.write_text(json.dumps({"question": ITEM_Q, "answer": ITEM_A}) + "\n")
    assert NgramIndex.from_gsm8k(gsm8k_test).overlaps(leaked)

    monkeypatch.setenv("MIDTRAIN_CACHE", "off")
    bench = tmp_path / "gsm8k.jsonl"
    bench.write_text(json.dumps({"id": "g1", "question": ITEM_Q, "answer": ITEM_A, "split": "test"}) + "\n")
    cfg = DecontamConfig.from_spec({"benchmarks": [str(bench)]}, tmp_path)
    build_decontam_index(cfg, tmp_path / "index")
    index = DecontamIndex(tmp_path / "index")
    assert [h["item_id"] for h in index.hits(leaked)] == ["g1"]
    clean = "José bakes bread. " * 20
    assert index.hits(clean) == [] and not NgramIndex.from_gsm8k(gsm8k_test).overlaps(clean)


# ------------------------------------------------------------------------------------------------- control tokens
CONTROL_TEXT = "Docs are joined with <|endoftext|> and padded with <|padding|>; mail |||EMAIL_ADDRESS||| now."


@pytest.mark.parametrize("with_offsets", [False, True])
def test_control_strings_in_text_are_text(with_offsets):
    step = Tokenize(str(TOKENIZER), eos_id=EOS, pad_id=PAD, with_offsets=with_offsets)
    doc = Document(text=CONTROL_TEXT, id="x", metadata={"status": "kept"})
    ids = list(step.run(iter([doc])))[0].metadata["tokens"]
    assert ids[-1] == EOS and (ids == EOS).sum() == 1  # only the appended EOS
    assert (ids == PAD).sum() == 0
    assert (ids == EMAIL).sum() == 1  # the PII placeholder Dolma inserted stays one token
    assert Tokenizer.from_file(str(TOKENIZER)).decode(ids[:-1].tolist(), skip_special_tokens=False) == CONTROL_TEXT


def test_build_shards_hold_no_false_document_boundary(tmp_path: Path):
    texts = [CONTROL_TEXT, "second <|endoftext|><|endoftext|> doc", "third doc, plain", "<|padding|>"]
    data = tmp_path / "data"
    data.mkdir()
    rows = [json.dumps({"id": f"t{i}", "text": t}) for i, t in enumerate(texts)]
    (data / "docs.jsonl").write_text("\n".join(rows) + "\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "ctl", "seq_len": 64, "tokenizer": str(TOKENIZER),
                                    "sources": [{"name": "s", "uri": str(data / "*.jsonl")}]}))
    out = build(spec, tmp_path / "out")
    con = duckdb.connect(str(out / "manifest.duckdb"), read_only=True)
    try:
        shards = [p for (p,) in con.execute("SELECT path FROM shards ORDER BY path").fetchall()]
        n_kept, n_tokens = con.execute(
            "SELECT count(*), sum(n_tokens) FROM documents WHERE status = 'kept'").fetchone()
    finally:
        con.close()
    tokens = np.concatenate([np.load(out / p).reshape(-1) for p in shards])
    assert n_kept == len(texts)
    assert (tokens[:n_tokens] == EOS).sum() == len(texts)  # one boundary per document, none from text
    assert (tokens[:n_tokens] == PAD).sum() == 0
    assert (tokens == EMAIL).sum() == 1
    tok = Tokenizer.from_file(str(TOKENIZER))
    docs = np.split(tokens[:n_tokens], np.flatnonzero(tokens[:n_tokens] == EOS)[:-1] + 1)
    assert sorted(tok.decode(d[:-1].tolist(), skip_special_tokens=False) for d in docs) == sorted(texts)


def test_minhash_of_a_text_does_not_depend_on_its_batch():
    """Signatures are computed for a batch of texts at once: no shingle may span two texts, whatever their length."""
    from pipelines.dedup.signatures import MinHasher

    texts = ["one two three", "", "four five six seven eight nine ten", "x=-1", "naïve café — “quoted” " * 30,
             " ".join(f"w{i}" for i in range(5000)), "a b c d e"]
    h = MinHasher(DedupConfig())
    together = h.bands_batch(texts)
    for t, b in zip(texts, together):
        alone, = h.bands_batch([t])
        assert (b is None and alone is None) or np.array_equal(b, alone), t[:30]
    assert together[1] is None and together[0] is not None


def test_fast_paths_equal_the_documented_definitions(hub: Path):
    """ASCII and common-symbol fast paths give exactly the regex definitions, on the mirror's non-ASCII documents
    (curly quotes, dashes, NBSP, accents, CJK...) and on crafted edge cases."""
    import re

    from quality_mirror import iter_mirror_docs

    def ref_words(t: str) -> bytes:
        return " ".join(re.sub(r"[\W_]+", " ", unicodedata.normalize("NFC", t.lower())).split()).encode()

    def ref_tokens(t: str) -> bytes:
        return " ".join(re.findall(r"[^\W_]+|(?:[^\w\s]|_)+", unicodedata.normalize("NFC", t.lower()))).encode()

    texts = [t for _, _, t in iter_mirror_docs(hub) if not t.isascii()][:1500]
    texts += ["“Quoted”—dash… ½ × 3 ≤ 4\u00a0nbsp\u2009thin", "x_y’s «naïve» Ω≈ω", "a\u0301 e\u0301",
              "ＡＢＣ！", "\u0085next\u2028line", "", "plain"]
    assert len(texts) > 500
    for t in texts:
        assert fold_words(t) == ref_words(t), t[:80]
        assert fold_tokens(t) == ref_tokens(t), t[:80]
    th, doc = token_hashes_batch(texts)
    assert np.array_equal(th, np.concatenate([word_hashes(ref_tokens(t)) for t in texts]))


def test_word_tokens_are_the_fold_words_stream(hub: Path):
    """Decontamination reads its words from the dedup token pass: they must be exactly `fold_words`, with the
    multiple-choice label letters where `fold_words` has single-letter a-h words."""
    from quality_mirror import iter_mirror_docs

    from pipelines.text import token_batch, words_and_labels

    texts = [t for _, _, t in iter_mirror_docs(hub)][::20][:800]
    texts += ["A) x_1 (b) C. 'd' e", "Ωmega — naïve (é) a", "", "ＡＢＣ！ 𝔘nicode ٣"]
    wh, doc, lab = token_batch(texts).words()
    for i, t in enumerate(texts):
        ref_wh, ref_lab = words_and_labels(fold_words(t))
        assert np.array_equal(wh[doc == i], ref_wh) and np.array_equal(lab[doc == i], ref_lab), t[:80]
