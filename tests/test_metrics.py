"""minisbert.metrics against hand-computed values and the references ST calls (its loops, sklearn, scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from minisbert import metrics as M

# ----------------------------------------------------------------------------------------------
# Retrieval metrics on hand-made rankings

# Three queries, K = 5 retrieved each. Grades: 0 = not relevant.
#   q0: relevant at ranks 2 and 4 (1-based), 3 relevant in total (one never retrieved)
#   q1: nothing relevant retrieved, 2 relevant in total
#   q2: graded: ranks 1 (grade 1) and 3 (grade 3); relevant grades {3, 2, 1}
GAINS = torch.tensor([[0, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 0, 3, 0, 0]])
NUM_RELEVANT = torch.tensor([3, 2, 3])
IDEAL = torch.tensor([[1, 1, 1], [1, 1, 0], [3, 2, 1]])  # padded with 0


def test_accuracy_precision_recall_by_hand():
    assert M.accuracy_at_k(GAINS, 1).tolist() == [0, 0, 1]
    assert M.accuracy_at_k(GAINS, 3).tolist() == [1, 0, 1]
    assert M.precision_at_k(GAINS, 3).tolist() == pytest.approx([1 / 3, 0, 2 / 3])
    # precision always divides by k, even when k exceeds the retrieved list (ST does)
    assert M.precision_at_k(GAINS, 10).tolist() == pytest.approx([2 / 10, 0, 2 / 10])
    assert M.recall_at_k(GAINS, NUM_RELEVANT, 5).tolist() == pytest.approx([2 / 3, 0, 2 / 3])


def test_mrr_by_hand_including_no_hit():
    assert M.mrr_at_k(GAINS, 10).tolist() == pytest.approx([1 / 2, 0, 1])
    assert M.mrr_at_k(GAINS, 1).tolist() == pytest.approx([0, 0, 1])


def test_map_by_hand():
    # q0: hits at 2 and 4 -> (1/2 + 2/4) / min(5, 3); q2: hits at 1, 3 -> (1 + 2/3) / 3
    assert M.map_at_k(GAINS, NUM_RELEVANT, 5).tolist() == pytest.approx([1 / 3, 0, (1 + 2 / 3) / 3])
    # the normaliser is min(k, #relevant): at k=2, q0 has one hit at rank 2 -> (1/2) / 2
    assert M.map_at_k(GAINS, NUM_RELEVANT, 2).tolist() == pytest.approx([1 / 4, 0, 1 / 2])


def test_ndcg_binary_and_graded_by_hand():
    d = [1 / math.log2(i + 2) for i in range(5)]
    binary = (GAINS > 0).long()
    got = M.ndcg_at_k(binary, (IDEAL > 0).long(), 5).tolist()
    want = [(d[1] + d[3]) / (d[0] + d[1] + d[2]), 0.0, (d[0] + d[2]) / (d[0] + d[1] + d[2])]
    assert got == pytest.approx(want)
    graded = M.ndcg_at_k(GAINS, IDEAL, 5).tolist()
    assert graded[2] == pytest.approx((1 * d[0] + 3 * d[2]) / (3 * d[0] + 2 * d[1] + 1 * d[2]))
    # a cut at k=1 only sees the first rank on both sides
    assert M.ndcg_at_k(GAINS, IDEAL, 1).tolist() == pytest.approx([0, 0, 1 / 3])


def _st_metrics_loop(ranked_ids: list[list[str]], relevant: list[set[str]], k: int):
    """The per-query loops of ST's InformationRetrievalEvaluator.compute_metrics (:497-583)."""
    out = {"acc": [], "prec": [], "rec": [], "mrr": [], "ndcg": [], "map": []}
    for hits, rel in zip(ranked_ids, relevant):
        top = hits[:k]
        flags = [1 if h in rel else 0 for h in top]
        out["acc"].append(float(any(flags)))
        out["prec"].append(sum(flags) / k)
        out["rec"].append(sum(flags) / len(rel))
        out["mrr"].append(next((1 / (r + 1) for r, f in enumerate(flags) if f), 0.0))
        dcg = sum(f / np.log2(i + 2) for i, f in enumerate(flags))
        idcg = sum(1 / np.log2(i + 2) for i in range(min(len(rel), k)))
        out["ndcg"].append(dcg / idcg)
        correct, s = 0, 0.0
        for r, f in enumerate(flags):
            if f:
                correct += 1
                s += correct / (r + 1)
        out["map"].append(s / min(k, len(rel)))
    return out


def test_retrieval_metrics_match_st_loops_on_random_rankings():
    rng = np.random.default_rng(0)
    ranked, relevant = [], []
    for q in range(50):
        ranked.append([f"d{j}" for j in rng.permutation(30)[: rng.integers(3, 12)]])  # some lists shorter than k
        relevant.append({f"d{j}" for j in rng.choice(30, size=rng.integers(1, 6), replace=False)})
    K = 12
    gains = torch.zeros(len(ranked), K, dtype=torch.long)
    for q, (hits, rel) in enumerate(zip(ranked, relevant)):
        gains[q, : len(hits)] = torch.tensor([1 if h in rel else 0 for h in hits])
    num_relevant = torch.tensor([len(r) for r in relevant])
    ideal = torch.zeros(len(ranked), 6, dtype=torch.long)
    for q, r in enumerate(relevant):
        ideal[q, : len(r)] = 1
    for k in (1, 3, 5, 10):
        ref = _st_metrics_loop(ranked, relevant, k)
        np.testing.assert_allclose(M.accuracy_at_k(gains, k), ref["acc"], atol=1e-12)
        np.testing.assert_allclose(M.precision_at_k(gains, k), ref["prec"], atol=1e-12)
        np.testing.assert_allclose(M.recall_at_k(gains, num_relevant, k), ref["rec"], atol=1e-12)
        np.testing.assert_allclose(M.mrr_at_k(gains, k), ref["mrr"], atol=1e-12)
        np.testing.assert_allclose(M.ndcg_at_k(gains, ideal, k), ref["ndcg"], atol=1e-12)
        np.testing.assert_allclose(M.map_at_k(gains, num_relevant, k), ref["map"], atol=1e-12)


def test_graded_ndcg_matches_sklearn_over_the_whole_corpus():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    Q, C, k = 20, 40, 10
    scores = torch.tensor(rng.normal(size=(Q, C)))
    grades = torch.tensor(rng.integers(0, 4, size=(Q, C)) * (rng.random((Q, C)) < 0.2))
    grades[:, 0] = 2  # every query has a relevant document
    values, idx = M.topk_by_score_then_index(scores, k)
    gains = grades.gather(1, idx)
    got = M.ndcg_at_k(gains, grades, k)
    for q in range(Q):
        want = sklearn_metrics.ndcg_score([grades[q].numpy()], [scores[q].numpy()], k=k)
        assert got[q].item() == pytest.approx(want, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# Top-k under (-score, index), chunked merge


def _naive_topk(scores: torch.Tensor, k: int):
    rows = []
    for row in scores.tolist():
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        rows.append(order)
    return torch.tensor(rows)


def test_topk_breaks_ties_by_lowest_index():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0, 1.0]])
    values, idx = M.topk_by_score_then_index(scores, 3)
    assert idx.tolist() == [[1, 0, 2], [0, 1, 2]]
    assert torch.equal(values, scores.gather(1, idx))


@pytest.mark.parametrize("chunk", [1, 3, 7, 50])
def test_chunked_merge_equals_global_sort_with_heavy_ties(chunk):
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (9, 50), generator=g).float()  # many ties
    k = 10
    values = torch.empty(9, 0)
    indices = torch.empty(9, 0, dtype=torch.long)
    for start in range(0, 50, chunk):
        v, i = M.topk_by_score_then_index(scores[:, start : start + chunk], k, offset=start)
        values, indices = M.merge_topk(values, indices, v, i, k)
    assert torch.equal(indices, _naive_topk(scores, k))
    assert torch.equal(values, scores.gather(1, indices))


# ----------------------------------------------------------------------------------------------
# Reranking metrics: sklearn semantics, ties included


def test_average_precision_and_ndcg_by_hand():
    # ranking by score: rel, irr, rel -> AP = (1/1 + 2/3) / 2
    assert M.average_precision([1, 0, 1], [0.9, 0.5, 0.1]) == pytest.approx((1 + 2 / 3) / 2)
    # all tied: one threshold with precision 2/3 and recall 1
    assert M.average_precision([1, 0, 1], [0.2, 0.2, 0.2]) == pytest.approx(2 / 3)
    # ndcg with a tie between ranks 1 and 2: gains averaged -> 0.5 * (1 + 1/log2 3) over ideal 1
    assert M.ndcg([1, 0, 0], [0.5, 0.5, 0.1]) == pytest.approx(0.5 * (1 + 1 / math.log2(3)))
    # One relevant document the candidates miss: it only joins the recall (AP) and the ideal ranking (ndcg).
    assert M.average_precision([1, 0, 1], [0.9, 0.5, 0.1], missing=1) == pytest.approx((1 + 2 / 3) / 3)
    assert M.ndcg([1, 0, 0], [0.9, 0.5, 0.1], missing=1) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert M.ndcg([0, 1], [0.9, 0.1], k=1, missing=1) == 0.0
    assert M.ndcg([0, 0, 0], [0.3, 0.2, 0.1]) == 0.0


def test_reciprocal_rank_by_hand_and_tie_orders():
    assert M.reciprocal_rank([0, 1, 0], [0.9, 0.8, 0.1], k=10) == 0.5
    assert M.reciprocal_rank([1, 0, 0], [0.5, 0.5, 0.5], k=10) == pytest.approx(1 / 3)  # pessimistic
    assert M.reciprocal_rank([0, 0, 1], [0.9, 0.8, 0.1], k=2) == 0.0
    # "numpy" / "torch" make ST's own sort calls, whatever order they give tied scores
    rng = np.random.default_rng(7)
    for _ in range(50):
        scores = (rng.integers(0, 3, 12) / 2).astype(np.float32)
        rel = rng.integers(0, 2, 12)
        first = next((r for r, i in enumerate(np.argsort(scores)[::-1][:10]) if rel[i]), None)
        assert M.reciprocal_rank(rel, scores, 10, tie_order="numpy") == (0.0 if first is None else 1 / (first + 1))
        t = torch.tensor(scores)
        first = next((r for r, i in enumerate(torch.argsort(-t)[:10].tolist()) if rel[i]), None)
        assert M.reciprocal_rank(rel, t, 10, tie_order="torch") == (0.0 if first is None else 1 / (first + 1))
    with pytest.raises(ValueError, match="tie_order"):
        M.reciprocal_rank([1], [1.0], 1, tie_order="random")


def test_reranking_metrics_match_sklearn_on_random_lists_with_ties():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    for trial in range(200):
        n = int(rng.integers(2, 30))
        rel = rng.integers(0, 2, n)
        rel[rng.integers(n)] = 1
        scores = rng.integers(0, 5, n).astype(np.float32) if trial % 2 else rng.normal(size=n).astype(np.float32)
        assert M.average_precision(rel, scores) == pytest.approx(sklearn_metrics.average_precision_score(rel, scores), abs=1e-12)
        for k in (None, 3, 10):
            want = sklearn_metrics.ndcg_score([rel], [scores], k=k)
            assert M.ndcg(rel, scores, k) == pytest.approx(want, abs=1e-12)


def test_graded_reranking_ndcg_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rel = np.array([3, 0, 2, 1, 0, 0, 1])
    scores = np.array([0.1, 0.9, 0.4, 0.4, 0.3, 0.9, 0.2])
    assert M.ndcg(rel, scores, 5) == pytest.approx(sklearn_metrics.ndcg_score([rel], [scores], k=5), abs=1e-12)


# ----------------------------------------------------------------------------------------------
# Correlation


def test_rankdata_average_ties_by_hand():
    assert M.rankdata([10, 20, 10, 30, 20, 20]).tolist() == [1.5, 4.0, 1.5, 6.0, 4.0, 4.0]


def test_pearson_spearman_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    x = rng.normal(size=300).astype(np.float32)
    y = (x + rng.normal(size=300)).astype(np.float32)
    y_tied = np.round(y * 2) / 2  # many ties, like STS gold scores
    assert M.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert M.spearman(x, y_tied) == pytest.approx(stats.spearmanr(x, y_tied)[0], abs=1e-12)
    assert M.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # gold scores as a list of Python floats keep float64 precision (0.2 is not a float32)
    gold = [float(v) for v in np.round(rng.random(300) * 5) / 5]
    assert M.pearson(gold, x) == pytest.approx(stats.pearsonr(gold, x)[0], abs=1e-14)


# ----------------------------------------------------------------------------------------------
# Classification / clustering


def test_f1_macro_and_v_measure_match_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(4)
    for _ in range(30):
        y_true = rng.integers(0, 4, 60)
        y_pred = rng.integers(0, 5, 60)  # a label never in y_true, maybe one never predicted
        assert M.f1_macro(y_true, y_pred) == pytest.approx(sklearn_metrics.f1_score(y_true, y_pred, average="macro"), abs=1e-12)
        assert M.v_measure(y_true, y_pred) == pytest.approx(sklearn_metrics.v_measure_score(y_true, y_pred), abs=1e-12)
    assert M.v_measure([0, 0, 1, 1], [5, 5, 2, 2]) == pytest.approx(1.0)
    assert M.v_measure([0, 0, 0], [1, 2, 3]) == pytest.approx(sklearn_metrics.v_measure_score([0, 0, 0], [1, 2, 3]))
    assert M.accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75


def test_logistic_regression_matches_sklearn_optimum():
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(3, 8)) * 2
    y = rng.integers(0, 3, 150)
    x = centres[y] + rng.normal(size=(150, 8))
    W, b = M.logistic_regression(torch.tensor(x), torch.tensor(y), C=1.0, max_iter=200)
    ref = linear_model.LogisticRegression(C=1.0, tol=1e-10, max_iter=1000).fit(x, y)
    # the objective is strictly convex: both solvers reach the same optimum
    ours = torch.softmax(torch.tensor(x) @ W.T + b, dim=1).numpy()
    np.testing.assert_allclose(ours, ref.predict_proba(x), atol=1e-4)
    W2, b2 = M.logistic_regression(torch.tensor(x), torch.tensor(y), C=1.0, max_iter=200)
    assert torch.equal(W, W2) and torch.equal(b, b2)  # deterministic


def test_kmeans_finds_separated_clusters_and_is_deterministic():
    rng = np.random.default_rng(6)
    y = np.repeat(np.arange(4), 25)
    x = torch.tensor(rng.normal(size=(4, 5))[y] * 10 + rng.normal(size=(100, 5)))
    labels = M.kmeans(x, 4, seed=0)
    assert M.v_measure(y, labels) == pytest.approx(1.0)
    assert torch.equal(labels, M.kmeans(x, 4, seed=0))
    with pytest.raises(ValueError, match="n_clusters"):
        M.kmeans(x, 101)


def test_chunked_topk_property_any_scores_chunks_and_k():
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @hypothesis.settings(max_examples=60, deadline=None)
    @hypothesis.given(
        st.integers(1, 4), st.integers(1, 30), st.integers(1, 12), st.integers(1, 31), st.integers(0, 2**31 - 1)
    )
    def check(q, c, k, chunk, seed):
        g = torch.Generator().manual_seed(seed)
        scores = torch.randint(0, 3, (q, c), generator=g).float()  # 3 values: ties at every boundary
        values = torch.empty(q, 0)
        indices = torch.empty(q, 0, dtype=torch.long)
        for start in range(0, c, chunk):
            v, i = M.topk_by_score_then_index(scores[:, start:start + chunk], k, offset=start)
            values, indices = M.merge_topk(values, indices, v, i, k)
        assert torch.equal(indices, _naive_topk(scores, k))

    check()
