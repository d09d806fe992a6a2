"""DPO end to end (issue 21, item 9): a synthetic preference set in the real layout (parquet, `chosen` / `rejected`
message lists) built with `format: preference` into paired shards, trained with `--recipe instella-dpo` against the
frozen reference until the reward accuracy passes 0.9, then exported and answering through transformers'
`apply_chat_template`."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

WORDS = ("apple river stone cloud market violin summer engine garden window paper silver orange tiger pencil "
         "candle forest bridge rocket ocean").split()
SUFFIX = "I hope this helps!"
N_PAIRS = 96


def _answer(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))


def write_preference_set(path: Path, n: int = N_PAIRS, seed: int = 0) -> list[dict]:
    """OLMo-2 preference-mix layout: id, chosen / rejected message lists sharing the prompt; the chosen answer always
    ends with SUFFIX, the rejected one never does. Some pairs are multi-turn (an earlier assistant turn in both)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"Tell me about {rng.choice(WORDS)} and {rng.choice(WORDS)}."}]
        if i % 4 == 0:
            prompt += [{"role": "assistant", "content": _answer(rng)}, {"role": "user", "content": "And then?"}]
        rows.append({"id": f"pair-{i}", "source": "synthetic",
                     "chosen": prompt + [{"role": "assistant", "content": f"{_answer(rng)}. {SUFFIX}"}],
                     "rejected": prompt + [{"role": "assistant", "content": f"{_answer(rng)}."}]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows


@pytest.fixture(scope="module")
def dpo_build(tmp_path_factory) -> tuple[Path, list[dict]]:
    import yaml
    from conftest import build

    from pipelines.build.spec import MIXTURES_DIR

    tmp = tmp_path_factory.mktemp("dpo")
    rows = write_preference_set(tmp / "prefs" / "train-00000.parquet")
    raw = yaml.safe_load((MIXTURES_DIR / "dpo.yaml").read_text())
    raw["seq_len"] = 64
    raw["sources"][0]["uri"] = str(tmp / "prefs" / "*.parquet")
    (tmp / "dpo.yaml").write_text(yaml.safe_dump(raw))
    return build(tmp / "dpo.yaml", tmp / "build"), rows


def test_preference_build_writes_pairs_with_final_turn_masks(dpo_build, tokenizer_path):
    from tokenizers import Tokenizer

    from pipelines.shards.reader import connect

    out, rows = dpo_build
    con = connect(out)
    n_rows, = con.execute("SELECT sum(n_rows) FROM shards").fetchone()
    assert n_rows == 2 * len(rows)
    assert con.execute("SELECT count(*) FROM documents WHERE status = 'kept'").fetchone()[0] == len(rows)
    tok = Tokenizer.from_file(str(tokenizer_path))
    by_id = {r["id"]: r for r in rows}
    checked = 0
    for path, in con.execute("SELECT path FROM shards ORDER BY path").fetchall():
        arr, mask = np.load(out / path), np.load(out / path.replace(".npy", ".mask.npy"))
        segs = con.execute("SELECT row, doc_id, doc_start FROM segments WHERE shard = ? ORDER BY row",
                           [path]).fetchall()
        for (row_c, id_c, start_c), (row_r, id_r, start_r) in zip(segs[0::2], segs[1::2]):
            assert (row_r, id_r, start_c, start_r) == (row_c + 1, id_c, 0, 64)  # rows 2k, 2k+1 of one pair
            pair = by_id[id_c]
            for row, side in ((row_c, "chosen"), (row_r, "rejected")):
                final = pair[side][-1]["content"]
                labelled = arr[row][mask[row] == 1]
                # the mask covers exactly the final answer and its EOS; earlier turns are context
                assert tok.decode(labelled[:-1].tolist()) == final and labelled[-1] == 0
                assert arr[row][0] == 0  # the template's leading EOS
            checked += 1
    assert checked == len(rows)


def test_dpo_learns_the_preferred_suffix_and_the_export_answers(dpo_build, tokenizer_path, tmp_path):
    from trainer.checkpoint import export_safetensors
    from trainer.config import ModelConfig, TrainConfig
    from trainer.hf import export_hf
    from trainer.metrics import read_metrics
    from trainer.model import Transformer
    from trainer.train import train

    out, rows = dpo_build
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=2, d_model=64, n_heads=4, ffn_dim=176, seq_len=64)
    sft = export_safetensors(tmp_path / "sft", Transformer(cfg).state_dict(), {"model": cfg.__dict__})
    run = tmp_path / "dpo"
    # Instella's recipe (dpo_norm, β 5, linear schedule with 10% warmup, no weight decay) at a tiny model's scale:
    # a larger LR, 8 pairs per step, 3 passes; fp32 instead of the recipe's bf16, which has no fast CPU matmul (the
    # 50K-vocabulary head took ~10 s a step: 6 minutes of the suite)
    train(TrainConfig(data=str(out), out=str(run), recipe="instella-dpo", init_from=str(sft), seq_len=64,
                      lr=3e-3, batch_tokens=8 * 2 * 64, epochs=3, dtype="fp32", progress=False, plot=False))
    metrics = read_metrics(run)
    assert len(metrics) == 3 * len(rows) // 8
    resolved = json.loads((run / "train_config.json").read_text())["resolved"]
    assert (resolved["objective"], resolved["dpo_loss"], resolved["dpo_beta"]) == ("dpo", "dpo_norm", 5.0)
    assert resolved["warmup"] == int(0.1 * resolved["steps"]) and resolved["weight_decay"] == 0.0
    assert abs(metrics[0]["reward_margin"]) < 1e-6 and metrics[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)
    late = metrics[-len(rows) // 8:]  # the last pass
    assert np.mean([m["reward_accuracy"] for m in late]) > 0.9, [m["reward_accuracy"] for m in metrics]
    assert np.mean([m["reward_margin"] for m in late]) > 0 and late[-1]["loss"] < metrics[0]["loss"]

    transformers = pytest.importorskip("transformers")
    hf = export_hf(run, tmp_path / "hf", tokenizer=str(tokenizer_path))  # a DPO run: chat template shipped
    tok = transformers.AutoTokenizer.from_pretrained(hf)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    prompt = tok.apply_chat_template(rows[1]["chosen"][:-1], add_generation_prompt=True, return_tensors="pt",
                                     return_dict=True)
    assert tok.decode(prompt["input_ids"][0]).endswith("<|assistant|>\n")
    answer = model.generate(**prompt, max_new_tokens=40, do_sample=False, eos_token_id=0, pad_token_id=1)
    text = tok.decode(answer[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip()  # the exported DPO model answers in the chat template
