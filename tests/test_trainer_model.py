"""The decoder: document masking makes a packed document behave exactly as if it were alone."""
from __future__ import annotations

import dataclasses

import torch

from trainer.config import PRESETS, ModelConfig
from trainer.data import IGNORE, Sample, collate
from trainer.model import Transformer

CFG = ModelConfig(n_layers=2, d_model=32, n_heads=4, ffn_dim=64, seq_len=64, vocab_size=97)


def _docs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 97, (n,), generator=g).numpy() for n in (11, 17, 6)]


def _batch(docs, keep: int | None = None, mask_documents: bool = True):
    """Collate docs into one row; with `keep`, only that document's targets count."""
    import numpy as np

    tokens = np.concatenate(docs)
    lens = [len(d) for d in docs] if mask_documents else [len(tokens)]
    b = collate([Sample(tokens, lens, [False] * len(lens), None)])
    if keep is not None:
        start = sum(len(d) for d in docs[:keep])
        labels = torch.full_like(b.labels, IGNORE)
        labels[start:start + len(docs[keep]) - 1] = b.labels[start:start + len(docs[keep]) - 1]
        b.labels = labels
    return b


def _loss_and_grads(model, b):
    model.zero_grad()
    loss = model(b.input_ids, b.positions, b.cu_seqlens, b.max_seqlen, b.labels)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_packed_document_matches_document_alone():
    torch.manual_seed(0)
    model = Transformer(CFG).double()
    docs = _docs()
    for i, doc in enumerate(docs):
        packed_loss, packed_grads = _loss_and_grads(model, _batch(docs, keep=i))
        alone_loss, alone_grads = _loss_and_grads(model, _batch([doc]))
        torch.testing.assert_close(packed_loss, alone_loss, rtol=1e-10, atol=1e-10)
        for name in alone_grads:
            torch.testing.assert_close(packed_grads[name], alone_grads[name], rtol=1e-8, atol=1e-10, msg=name)


def test_without_document_masking_the_packed_loss_differs():
    """Guard that the test above can fail: plain causal attention over the row lets doc 1 see doc 0."""
    torch.manual_seed(0)
    model = Transformer(CFG).double()
    docs = _docs()
    b = _batch(docs, keep=1, mask_documents=False)
    b_masked = _batch(docs, keep=1)
    b.labels = b_masked.labels
    b.positions = b_masked.positions
    unmasked, _ = _loss_and_grads(model, b)
    alone, _ = _loss_and_grads(model, _batch([docs[1]]))
    assert abs(float(unmasked - alone)) > 1e-6


def test_logits_shape_and_loss_is_sum_of_token_losses():
    torch.manual_seed(0)
    model = Transformer(CFG).double()
    b = _batch(_docs())
    logits = model(b.input_ids, b.positions, b.cu_seqlens, b.max_seqlen)
    assert logits.shape == (len(b.input_ids), CFG.vocab_size)
    ref = torch.nn.functional.cross_entropy(logits, b.labels, ignore_index=IGNORE, reduction="sum")
    loss = model(b.input_ids, b.positions, b.cu_seqlens, b.max_seqlen, b.labels)
    torch.testing.assert_close(loss, ref)


def test_presets_and_parameter_count():
    p = PRESETS["instella-3b"].model
    assert (p.n_layers, p.d_model, p.n_heads, p.ffn_dim, p.seq_len, p.vocab_size) == (36, 2560, 32, 6912, 4096, 50304)
    assert 3.0e9 < p.n_params() < 3.2e9  # Instella-3B: 3.11B parameters
    with torch.device("meta"):
        m = Transformer(dataclasses.replace(PRESETS["tiny"].model))
    assert sum(t.numel() for t in m.parameters()) == PRESETS["tiny"].model.n_params()
