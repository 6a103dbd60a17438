"""Edges of the run and the API where sentence-transformers users expect a result or one clear message.

* losses.matryoshka under distillation: 2-D float labels (teacher embeddings) are cut, never normalized,
  equal to ST's MatryoshkaLoss(MSELoss).
* API edges where ST returns a result (compared with ST on the same inputs): encode([]), predict([]),
  rank(q, []), predict(["q", "d"]) as one pair, one pair with a one-label model -> np.float32,
  truncate_dim wider than the model -> no truncation. encode([]) is (0, D) float32 where ST gives (0,)
  float64 (README "Differences from sentence-transformers").
* max_length beyond the position embeddings (from_pretrained, a saved max_seq_length, train.py
  --max_length) is capped with a warning and long inputs encode; one that leaves no room for text
  beside the special tokens is refused.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minisbert import BiEncoder, CrossEncoder, ModelLoadError
from minisbert import losses as L

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
           PYTHONPATH=str(ROOT))
TRACEBACK = "Traceback (most recent call last)"
LONG = "the quick brown fox jumps over the lazy dog " * 60  # about 540 tokens: past the tiny models' 128 positions


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ----------------------------------------------------------------------------------------------
# matryoshka distillation


def test_matryoshka_cuts_teacher_labels_without_normalizing_them_as_st():
    st = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    from test_losses import ColumnModel, st_loss

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 16, generator=g), 3 * torch.randn(6, 16, generator=g)  # teacher far from unit norm
    dims, weights = [16, 8, 4], [1.0, 0.5, 0.25]

    def mse(embeddings, labels):
        return F.mse_loss(embeddings, labels)

    got = L.matryoshka(mse, dims, weights)(student, teacher)
    naive = sum(w * F.mse_loss(F.normalize(student[:, :d], dim=-1), teacher[:, :d]) for d, w in zip(dims, weights))
    torch.testing.assert_close(got, naive)
    model = ColumnModel([student])
    ref = st.MatryoshkaLoss(model, st.MSELoss(model), dims, weights)
    torch.testing.assert_close(got, st_loss(ref, [student], teacher).float())


# ----------------------------------------------------------------------------------------------
# API edges: what ST returns, minisbert returns


@pytest.fixture(scope="module")
def st_models(tiny_model_dirs, tiny_classifier_dirs):
    st = pytest.importorskip("sentence_transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (st.SentenceTransformer(str(tiny_model_dirs["bert"]), device="cpu"),
                st.CrossEncoder(str(tiny_classifier_dirs["bert"]), device="cpu"))


def test_encode_of_no_texts_is_empty_as_in_st(tiny_model_dirs, st_models):
    ours = BiEncoder.from_pretrained(tiny_model_dirs["bert"], device="cpu")
    theirs = st_models[0].encode([])
    assert isinstance(theirs, np.ndarray) and theirs.size == 0
    got = ours.encode([])
    assert isinstance(got, np.ndarray) and got.shape == (0, 32) and got.dtype == np.float32
    assert np.concatenate([got, ours.encode(["a"])]).shape == (1, 32)  # stacks with a non-empty batch
    tensor = ours.encode([], convert_to_tensor=True)
    assert isinstance(st_models[0].encode([], convert_to_tensor=True), torch.Tensor)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (0, 32)
    assert ours.encode([], truncate_dim=8).shape == (0, 8)


def test_truncate_dim_wider_than_the_model_does_not_truncate_as_in_st(tiny_model_dirs, st_models):
    ours = BiEncoder.from_pretrained(tiny_model_dirs["bert"], device="cpu")
    texts = ["A man is playing a guitar.", "Two dogs run across the field."]
    theirs = st_models[0].encode(texts, truncate_dim=1000)
    assert theirs.shape == (2, 32)
    np.testing.assert_allclose(ours.encode(texts, truncate_dim=1000), theirs, atol=1e-5)
    ours.truncate_dim = 1000  # as a saved truncate_dim: the same
    np.testing.assert_allclose(ours.encode(texts), theirs, atol=1e-5)


def test_predict_and_rank_edges_as_in_st(tiny_classifier_dirs, st_models):
    ours, theirs = CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"], device="cpu"), st_models[1]
    empty = ours.predict([])
    assert isinstance(theirs.predict([]), np.ndarray) and theirs.predict([]).size == 0
    assert isinstance(empty, np.ndarray) and empty.shape == (0,) and empty.dtype == np.float32
    assert ours.predict([], convert_to_tensor=True).shape == (0,)
    assert ours.rank("q", []) == theirs.rank("q", []) == []
    for one in (["a query", "a document"], ("a query", "a document")):
        got, ref = ours.predict(one), theirs.predict(one)
        assert type(ref) is np.float32 and type(got) is np.float32
        np.testing.assert_allclose(got, ref, atol=1e-5)
    assert ours.predict(("a query", "a document"), convert_to_tensor=True).shape == ()
    np.testing.assert_allclose(ours.predict([["a query", "a document"]]), theirs.predict([["a query", "a document"]]), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# max_length: capped at the positions, refused below the special tokens


def _triplets(path: Path, n: int = 16, long_row: bool = True) -> Path:
    rows = [{"anchor": f"anchor number {i}", "positive": f"positive text {i}", "negative": f"other words {i}"} for i in range(n)]
    if long_row:
        rows[0]["anchor"] = LONG
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _train_argv(model, data, out, *extra):
    return ["--model", str(model), "--data", str(data), "--output_dir", str(out), "--eval_data", "none", "--batch_size", "8",
            "--max_steps", "2", "--save_steps", "0", "--logging_steps", "1", "--disable_tqdm", *extra]


def test_max_length_beyond_the_positions_is_capped_with_a_warning(tiny_model_dirs, tiny_classifier_dirs, tmp_path, caplog):
    folder = tiny_model_dirs["bert"]  # 128 position embeddings
    reference = BiEncoder.from_pretrained(folder, device="cpu")
    assert reference.max_length == 128
    with caplog.at_level(logging.WARNING, logger="minisbert"):
        capped = BiEncoder.from_pretrained(folder, device="cpu", max_length=100_000)
    assert capped.max_length == 128
    assert "max_length 100000 exceeds the 128 positions of" in caplog.text and "using max_length 128" in caplog.text
    np.testing.assert_array_equal(capped.encode([LONG, "short"]), reference.encode([LONG, "short"]))

    reference.save_pretrained(tmp_path / "saved")  # a saved max_seq_length: the same cap
    config = tmp_path / "saved" / "sentence_bert_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"max_seq_length": 100_000}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="minisbert"):
        loaded = BiEncoder.from_pretrained(tmp_path / "saved", device="cpu")
    assert loaded.max_length == 128 and "the saved max_seq_length 100000 exceeds the 128 positions" in caplog.text
    assert loaded.encode([LONG]).shape == (1, 32)

    ce = CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"], device="cpu", max_length=100_000)
    assert ce.max_length == 128 and np.isfinite(ce.predict([(LONG, LONG)])).all()


def test_max_length_without_room_for_text_is_refused(tiny_model_dirs, tiny_classifier_dirs, tmp_path):
    with pytest.raises(ValueError, match=r"max_length 2 leaves no room for text: every input of .* carries 2 special tokens; "
                                         r"use a max_length of at least 3"):
        BiEncoder.from_pretrained(tiny_model_dirs["bert"], device="cpu", max_length=2)
    with pytest.raises(ValueError, match=r"max_length 3 leaves no room for text: every pair .* carries 3 special tokens"):
        CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"], device="cpu", max_length=3)
    assert BiEncoder.from_pretrained(tiny_model_dirs["bert"], device="cpu", max_length=3).encode(["a b c"]).shape == (1, 32)

    BiEncoder.from_pretrained(tiny_model_dirs["bert"], device="cpu").save_pretrained(tmp_path / "saved")
    config = tmp_path / "saved" / "sentence_bert_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"max_seq_length": "long"}))
    with pytest.raises(ModelLoadError, match=r"saved: the saved max_seq_length \(sentence_bert_config\.json\) must be a "
                                             r"positive integer, got 'long'"):
        BiEncoder.from_pretrained(tmp_path / "saved", device="cpu")


def test_train_max_length_is_capped_and_one_is_refused(tiny_model_dirs, tmp_path, capsys):
    data = _triplets(tmp_path / "triplets.jsonl")
    out = tmp_path / "run"
    assert train.cli(_train_argv(tiny_model_dirs["bert"], data, out, "--max_length", "100000")) == 0
    assert json.loads((out / "train_config.json").read_text())["max_length"] == 128
    assert BiEncoder.from_pretrained(out / "final", device="cpu").max_length == 128
    capsys.readouterr()
    assert train.cli(_train_argv(tiny_model_dirs["bert"], data, tmp_path / "one", "--max_length", "1")) == 2
    err = capsys.readouterr().err
    assert "max_length 1 leaves no room for text" in err and TRACEBACK not in err
    assert not (tmp_path / "one").exists()
