"""What sentence-transformers users keep reporting, shown not to happen in minisbert (one test per item).

Items that live with their module are tested there too; this file pins each one on the real
BiEncoder path, so the README's "Differences from sentence-transformers" list is backed here.
"""

from __future__ import annotations

import pytest
import torch

from minisbert import BiEncoder
from minisbert.gradcache import cached_step
from minisbert.losses import mnrl


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture()
def prompt_model(tiny_model_dirs):
    """A tiny BERT with a prompt excluded from pooling and dropout on: ST #3862's setting."""
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"], pooling="mean")
    model.include_prompt = False
    return model.train()


def _columns(model):
    anchors = [f"anchor sentence number {i} " + "word " * (i % 5) for i in range(10)]
    positives = [f"positive {i} text" for i in range(10)]
    return [model.tokenize(anchors, prompt="query: "), model.tokenize(positives, prompt="passage: ")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_equals_uncached_with_prompt_excluded_and_bf16(prompt_model, dtype):
    """ST #3862: cached losses with include_prompt=False (and under bf16) gave wrong gradients."""
    model = prompt_model
    columns = _columns(model)
    mini = 3  # does not divide 10

    def embed(chunk):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            return model(chunk)

    def loss_fn(e, _labels):
        return mnrl(e[0], torch.cat(e[1:]))

    torch.manual_seed(0)
    model.zero_grad()
    cached = cached_step(embed, columns, loss_fn, mini)
    g_cached = _grads(model)

    # Reference: the same chunks in the same order from the same seed, with grad, one backward.
    torch.manual_seed(0)
    model.zero_grad()
    embs = []
    for column in columns:
        parts = [embed({k: (v[i:i + mini] if torch.is_tensor(v) else v) for k, v in column.items()})
                 for i in range(0, 10, mini)]
        embs.append(torch.cat(parts))
    reference = loss_fn(embs, None)
    reference.backward()
    g_ref = _grads(model)

    tol = 1e-5 if dtype == torch.float32 else 2e-3  # bf16: the two paths round activations in different groupings
    assert abs(cached.item() - reference.item()) <= tol * max(1.0, abs(reference.item()))
    assert g_cached.keys() == g_ref.keys()
    scale = max(g.abs().max().item() for g in g_ref.values())
    for name in g_ref:
        assert torch.allclose(g_cached[name], g_ref[name], rtol=tol, atol=tol * scale), name
    # The prompt really is excluded: the columns keep their prompt_length and the mask is untouched.
    assert columns[0]["prompt_length"] > 1 and columns[0]["attention_mask"][:, 1].all()


def test_cached_loss_at_evaluation_time_without_gradients(prompt_model):
    """ST #2667: cached losses crashed at evaluation ("element 0 of tensors does not require grad")."""
    model = prompt_model.eval()
    columns = _columns(model)
    with torch.no_grad():
        value = cached_step(model, columns, lambda e, _y: mnrl(e[0], torch.cat(e[1:])), 4)
        reference = mnrl(model(columns[0]), model(columns[1]))
    assert abs(value.item() - reference.item()) <= 1e-5
    assert all(p.grad is None for p in model.parameters())
