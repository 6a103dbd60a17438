"""What sentence-transformers users keep reporting, shown not to happen in minisbert (one test per item).

Items that live with their module are tested there too; this file pins each one on the real
BiEncoder path, so the README's "Differences from sentence-transformers" list is backed here.
"""

from __future__ import annotations

import pytest
import torch

from minisbert import BiEncoder
from minisbert.gradcache import balanced_order, cached_step, plan
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

    # Reference: the same chunks (cached_step's plan and token-balanced rows) in the same order from the same seed,
    # with grad, back in batch order, one backward.
    torch.manual_seed(0)
    model.zero_grad()
    embs = []
    for column, ranges in zip(columns, plan(columns, mini)):
        order = balanced_order(column, ranges)
        column = {k: (v[order] if torch.is_tensor(v) else v) for k, v in column.items()}
        parts = [embed({k: (v[i:j] if torch.is_tensor(v) else v) for k, v in column.items()}) for i, j in ranges]
        embs.append(torch.cat(parts)[torch.argsort(order)])
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


def test_predict_reports_truncation_once_per_call(tiny_classifier_dirs, caplog):
    """ST #4060 for cross-encoders: pairs cut to max_length are counted, and said once per predict call."""
    import logging

    from minisbert import CrossEncoder

    model = CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"], max_length=16)
    long = " ".join(["word"] * 40)
    pairs = [("query", long), ("query", "short"), (long, "short"), ("q", "d")]
    with caplog.at_level(logging.WARNING, logger="minisbert"):
        model.predict(pairs, batch_size=1)  # four batches, one message
    assert [r.getMessage() for r in caplog.records] == [
        "predict: 2 of 4 inputs were longer than max_length=16 tokens and were truncated to it"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="minisbert"):
        model.predict([("q", "d")])
    assert caplog.records == []  # nothing cut, nothing said


def test_best_model_with_several_evaluators_takes_any_of_their_keys(tiny_model_dirs, tmp_path):
    """ST #2749: with several evaluators, metric_for_best_model names a key of any of them; it is checked
    at start-up, and the best checkpoint follows that key, not the first evaluator's."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import train
    from minisbert import errors

    rows = [json.loads(line) for line in (Path(__file__).parent / "data" / "stsb_test_500.jsonl").read_text().splitlines()]
    triplets = tmp_path / "triplets.jsonl"
    triplets.write_text("".join(json.dumps({"anchor": a["sentence1"], "positive": a["sentence2"], "negative": b["sentence2"]}) + "\n"
                                for a, b in zip(rows[:40], rows[40:80])))
    sts = tmp_path / "sts.jsonl"
    sts.write_text("".join(json.dumps({"sentence1": r["sentence1"], "sentence2": r["sentence2"], "score": r["score"]}) + "\n"
                           for r in rows[100:140]))

    def run(out, metric):
        # lowest Spearman wins (perverse on purpose), so that an early checkpoint tends to be the best one,
        # which the run must keep and load back at the end
        return train.main(train.TrainConfig(
            model=str(tiny_model_dirs["bert"]), data=str(triplets), output_dir=str(out), batch_size=8, learning_rate=1e-3,
            max_steps=6, eval_steps=2, save_steps=0, disable_tqdm=True, metric_for_best_model=metric,
            greater_is_better=False, eval_data=[f"nli-dev={triplets}", f"sts-dev={sts}"]))

    with pytest.raises(errors.ConfigError) as refused:
        run(tmp_path / "refused", "sts-dev_spearman")
    assert "eval_nli-dev_cosine_accuracy" in str(refused.value) and "eval_sts-dev_spearman_cosine" in str(refused.value)
    assert not (tmp_path / "refused").exists()

    out = tmp_path / "run"
    final = run(out, "sts-dev_spearman_cosine")  # the SECOND evaluator's key
    evals = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "eval_sts-dev_spearman_cosine" in r]
    assert all("eval_nli-dev_cosine_accuracy" in r for r in evals)  # both evaluators ran each time
    during = [r for r in evals if 0 < r["step"] and "best_step" not in r]  # steps 2, 4 and the end, 6
    best = min(during, key=lambda r: (r["eval_sts-dev_spearman_cosine"], r["step"]))  # ties keep the earlier step
    if best["step"] < 6:  # an earlier checkpoint won: it was kept and loaded back
        assert evals[-1]["best_step"] == best["step"]
    else:
        assert "best_step" not in evals[-1]
    assert final["eval_sts-dev_spearman_cosine"] == pytest.approx(best["eval_sts-dev_spearman_cosine"], abs=1e-6)
    assert final["eval_nli-dev_cosine_accuracy"] == pytest.approx(best["eval_nli-dev_cosine_accuracy"], abs=1e-6)
