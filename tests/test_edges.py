"""Edges of the run and the API where sentence-transformers users expect a result or one clear message.

* losses.matryoshka under distillation: 2-D float labels (teacher embeddings) are cut, never normalized,
  equal to ST's MatryoshkaLoss(MSELoss).
* API edges where ST returns a result (compared with ST on the same inputs): encode([]), predict([]),
  rank(q, []), predict(["q", "d"]) as one pair, one pair with a one-label model -> np.float32,
  truncate_dim wider than the model -> no truncation. encode([]) is (0, D) float32 where ST gives (0,)
  float64 (README "Differences from sentence-transformers").
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minisbert import BiEncoder, CrossEncoder
from minisbert import losses as L


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
