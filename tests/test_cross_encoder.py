"""CrossEncoder against sentence-transformers' CrossEncoder: scores, rank order, folders both ways."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from minisbert import BiEncoder, CrossEncoder, ModelLoadError

PAIRS = [("what is the capital of France?", "Paris is the capital and largest city of France."),
         ("a man plays guitar", "A man is playing a guitar."), ("", "empty query"),
         ("long", "Der Hund läuft über die Wiese. " * 10)]


def st():
    return pytest.importorskip("sentence_transformers")


@pytest.mark.parametrize("kind", ["bert", "xlmr", "modernbert"])
def test_scores_and_round_trips_match_st(kind, tiny_classifier_dirs, tmp_path):
    STm = st()
    reference = STm.CrossEncoder(str(tiny_classifier_dirs[kind]), device="cpu")
    ours = CrossEncoder.from_pretrained(tiny_classifier_dirs[kind])
    expected = reference.predict(PAIRS)
    assert np.abs(ours.predict(PAIRS) - expected).max() <= 1e-5
    # minisbert save -> ST load and minisbert load
    ours.save_pretrained(tmp_path / "ours")
    assert np.abs(STm.CrossEncoder(str(tmp_path / "ours"), device="cpu").predict(PAIRS) - expected).max() <= 1e-5
    assert np.abs(CrossEncoder.from_pretrained(tmp_path / "ours").predict(PAIRS) - expected).max() <= 1e-5
    # ST save (5.4+ layout with modules.json) -> minisbert load
    reference.save(str(tmp_path / "st"))
    assert np.abs(CrossEncoder.from_pretrained(tmp_path / "st").predict(PAIRS) - expected).max() <= 1e-5


def test_rank_matches_st(tiny_classifier_dirs):
    reference = st().CrossEncoder(str(tiny_classifier_dirs["bert"]), device="cpu")
    ours = CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"])
    docs = [d for _, d in PAIRS]
    expected = reference.rank("a query", docs, return_documents=True, top_k=3)
    got = ours.rank("a query", docs, return_documents=True, top_k=3)
    assert [r["corpus_id"] for r in got] == [r["corpus_id"] for r in expected]
    assert [r["text"] for r in got] == [r["text"] for r in expected]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in expected], atol=1e-5)


def test_activation_is_stored_and_restored(tiny_classifier_dirs, tmp_path):
    STm = st()
    ours = CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"], activation_fn="torch.nn.modules.linear.Identity")
    ours.save_pretrained(tmp_path / "m")
    logits = ours.predict(PAIRS)
    assert CrossEncoder.from_pretrained(tmp_path / "m").activation_fn_name.endswith("Identity")
    assert np.abs(STm.CrossEncoder(str(tmp_path / "m"), device="cpu").predict(PAIRS) - logits).max() <= 1e-5
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["sentence_transformers"]["activation_fn"] == "torch.nn.modules.linear.Identity"
    with torch.no_grad():
        raw = ours(ours.tokenize(PAIRS))[:, 0].numpy()
    assert np.abs(raw - logits).max() <= 1e-6


def test_single_pair_scalar_and_shapes(tiny_classifier_dirs):
    ours = CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"])
    batch = ours.predict(PAIRS)
    assert batch.shape == (4,)
    single = ours.predict(PAIRS[0])
    assert np.ndim(single) == 0 and abs(float(single) - batch[0]) <= 1e-6


def test_repeated_pairs_are_scored_once_and_returned_in_place(tiny_classifier_dirs, monkeypatch):
    ours = CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"])
    pairs = [PAIRS[1], PAIRS[0], list(PAIRS[1]), PAIRS[3], PAIRS[0], PAIRS[1]]
    one_by_one = np.array([ours.predict([p])[0] for p in pairs])  # the naive reference: no repeats in a call
    rows = []
    tokenize = ours.tokenize
    monkeypatch.setattr(ours, "tokenize", lambda batch, *a, **k: rows.extend(batch) or tokenize(batch, *a, **k))
    scores = ours.predict(pairs, batch_size=2)
    assert np.abs(scores - one_by_one).max() <= 1e-6
    assert sorted(rows) == sorted({PAIRS[0], PAIRS[1], PAIRS[3]})  # each distinct pair scored once
    assert ours.last_truncation.total == len(pairs)


def test_new_head_from_a_bi_encoder_folder(tiny_model_dirs, tmp_path):
    BiEncoder.from_pretrained(tiny_model_dirs["bert"]).save_pretrained(tmp_path / "bi")
    torch.manual_seed(0)
    ce = CrossEncoder.from_pretrained(tmp_path / "bi")
    assert ce.num_labels == 1 and ce.activation_fn_name.endswith("Sigmoid")
    scores = ce.predict(PAIRS)
    assert scores.shape == (4,) and ((scores > 0) & (scores < 1)).all()


def test_bad_pairs(tiny_classifier_dirs, tmp_path):
    ours = CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"])
    with pytest.raises(TypeError, match=r"pairs\[1\]"):
        ours.predict([("a", "b"), ("only one",)])
    with pytest.raises(TypeError, match=r"pairs\[0\]"):
        ours.predict([("a", None)])
    with pytest.raises(ModelLoadError, match="does not exist"):
        CrossEncoder.from_pretrained(tmp_path / "missing")


@pytest.mark.parametrize("kind", ["bert", "xlmr", "modernbert"])
def test_both_models_name_the_backbone_and_its_inputs_alike(kind, tiny_classifier_dirs, tiny_model_dirs):
    """`backbone` and `input_names` mean the same on both models; `CrossEncoder.model` is the old name."""
    ce, bi = CrossEncoder.from_pretrained(tiny_classifier_dirs[kind]), BiEncoder.from_pretrained(tiny_model_dirs[kind])
    for model, features in ((ce, ce.tokenize(PAIRS[:2])), (bi, bi.tokenize(["a", "b c"]))):
        assert isinstance(model.input_names, tuple) and set(features) - {"prompt_length"} <= set(model.input_names)
    with pytest.warns(DeprecationWarning):
        assert ce.model is ce.backbone
