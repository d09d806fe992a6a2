"""lm-evaluation-harness on an export (issue 21): a local JSONL rolling-loglikelihood task runs through lm-eval's
`hf` model on `export-hf` output, and its numbers are exactly our model's on [EOS] + document — the EOS at position 0
that lm-eval puts before every rolling / empty-context request (item 12). A document-masked model (our default
`--attention document`) never saw a document start after an EOS, so that first-token term is what separates lm-eval's
numbers from the in-loop loss, which never scores a document's first token; the test measures it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

lm_eval = pytest.importorskip("lm_eval")

DOCS = ["The quick brown fox jumps over the lazy dog.",
        "Instella is a family of fully open language models trained on AMD GPUs.",
        "Mathematics is the study of numbers, shapes and patterns."]


@pytest.fixture(scope="module")
def export(stage2_build, tokenizer_path, tmp_path_factory) -> Path:
    from trainer.config import TrainConfig
    from trainer.hf import export_hf
    from trainer.train import train

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("lme") / "run"
    train(TrainConfig(data=str(stage2_build), out=str(run), preset="tiny", seq_len=256, steps=20, lr=3e-3,
                      progress=False, plot=False))  # document attention, our default
    return export_hf(run, run.parent / "hf", tokenizer=str(tokenizer_path))


def _task(tmp: Path) -> Path:
    (tmp / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    (tmp / "rolling.yaml").write_text(
        "task: midtrain_rolling\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp / 'docs.jsonl'}\ntest_split: test\noutput_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n'
        "  - metric: bits_per_byte\n")
    return tmp


def test_lm_eval_runs_on_an_export_and_matches_our_eos_prefixed_numbers(export, tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager
    from tokenizers import Tokenizer

    from trainer.checkpoint import load_model_weights, read_model_config
    from trainer.config import ModelConfig
    from trainer.model import Transformer

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={export},dtype=float32",
                                  tasks=["midtrain_rolling"], task_manager=TaskManager(include_path=str(_task(tmp_path))),
                                  device="cpu", batch_size=1, log_samples=True)
    result = out["results"]["midtrain_rolling"]
    assert result["word_perplexity,none"] > 1 and result["bits_per_byte,none"] > 0
    by_text = {s["doc"]["text"]: s["resps"][0][0] for s in out["samples"]["midtrain_rolling"]}

    run = export.parent / "run"
    model = Transformer(ModelConfig(**read_model_config(run)))
    model.load_state_dict(load_model_weights(run))
    model.eval()
    tok = Tokenizer.from_file(str(export / "tokenizer.json"))
    first_token_nll, rest_nll = [], []
    for text in DOCS:
        ids = torch.tensor(tok.encode(text, add_special_tokens=False).ids)
        with torch.no_grad():  # lm-eval's request: [EOS] + document, every document token scored
            x = torch.cat([torch.tensor([0]), ids])
            lp = F.log_softmax(model(x, torch.arange(len(x)), torch.tensor([0, len(x)], dtype=torch.int32),
                                     len(x)).double(), -1)
            ours = lp[:-1].gather(-1, x[1:, None])[:, 0]
            # the in-loop (document-masked) view: the document alone, its first token never a target
            lp_doc = F.log_softmax(model(ids, torch.arange(len(ids)), torch.tensor([0, len(ids)], dtype=torch.int32),
                                         len(ids)).double(), -1)
            in_loop = lp_doc[:-1].gather(-1, ids[1:, None])[:, 0]
        assert float(ours.sum()) == pytest.approx(by_text[text], rel=1e-4, abs=1e-3)  # lm-eval == ours with EOS
        first_token_nll.append(-float(ours[0]))
        rest_nll.append(-float(ours[1:].mean()) + float(in_loop.mean()))
    # what separates lm-eval's rolling numbers from the in-loop loss (reported, see README "Evaluating")
    print(f"\nfirst-token NLL after EOS {sum(first_token_nll) / len(DOCS):.3f}; later tokens: EOS prefix changes "
          f"their mean NLL by {sum(rest_nll) / len(DOCS):+.4f}")
