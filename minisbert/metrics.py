"""Metric functions on tensors: the numbers the evaluators report, with no model, text or file in sight.

Each function is pinned by tests/test_metrics.py to hand-computed values and to the reference that
sentence-transformers (ST) 6.2 calls (its own loops, sklearn, scipy), none of which is imported here.

Retrieval (ST's InformationRetrievalEvaluator). A query's retrieved list is a row of `gains` (Q, K):
the relevance grade of the document at each rank (0 = not relevant, 1 = relevant, >1 = graded),
padded with 0 when fewer than K documents were retrieved. Every function returns one value per
query, (Q,) float64; the evaluator averages them.

    accuracy@k   1 if any of the top k is relevant
    precision@k  #relevant in top k / k                  (always / k, as ST does)
    recall@k     #relevant in top k / #relevant
    mrr@k        1 / rank of the first relevant in the top k, else 0
    ndcg@k       sum_{i<k} g_i / log2(i + 2) over the ideal ordering's value; binary gains give ST's
                 ndcg, grades give the graded ndcg of trec_eval/pytrec_eval (linear gain)
    map@k        sum over relevant ranks r <= k of (relevant so far / r), / min(k, #relevant)

Ranking order: ST ranks by (-score, corpus_id). `topk_by_score_then_index` and `merge_topk`
reproduce that total order with corpus positions standing in for ids (the evaluator sorts the
corpus by id first), so a corpus can be scored in chunks with only (Q, K) kept between chunks.

Reranking (ST's RerankingEvaluator / CrossEncoderRerankingEvaluator call sklearn):
`average_precision` = sklearn.metrics.average_precision_score, `ndcg` = sklearn.metrics.ndcg_score
(tied scores share their averaged gain), `reciprocal_rank` = ST's loop, with ST's own sort call
for the order among tied scores when asked (ST leaves that order to numpy / torch).

Correlation: `pearson`, `spearman` (average ranks for ties) = scipy.stats.pearsonr / spearmanr.
Classification / clustering: `accuracy`, `f1_macro`, `v_measure` = sklearn's; `logistic_regression`
(full-batch L-BFGS, sklearn's objective) and `kmeans` (k-means++ seeded, Lloyd) are the probes.

Shapes: Q queries, K retrieved per query, C corpus (chunk) size, N items, D width.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------
# Ranking a corpus: top-k under ST's (-score, corpus position) order, mergeable across chunks


def _sort_by_score_then_index(values: torch.Tensor, indices: torch.Tensor):
    """Sort each row by descending value, ascending index among equal values."""
    order = indices.argsort(dim=1)  # indices are distinct within a row
    values, indices = values.gather(1, order), indices.gather(1, order)
    order = values.argsort(dim=1, descending=True, stable=True)  # stable keeps ascending index on ties
    return values.gather(1, order), indices.gather(1, order)


def topk_by_score_then_index(scores: torch.Tensor, k: int, offset: int = 0):
    """The k best columns of each row of `scores` (Q, C) under the order (-score, column).

    torch.topk breaks ties arbitrarily; rows where the k-th score is tied with a score left out
    are re-selected so that the lowest column indices win, as ST does (information_retrieval.py
    :357-376). Returns (values, indices + offset), each (Q, min(k, C)), sorted in that order.
    """
    k = min(k, scores.shape[1])
    values, indices = scores.topk(k, dim=1, largest=True, sorted=False)  # (Q, k)
    if k > 0:
        threshold = values.min(dim=1, keepdim=True).values  # (Q, 1)
        tied_rows = ((scores >= threshold).sum(dim=1) > k).nonzero().squeeze(1)
        if len(tied_rows):
            s, t = scores[tied_rows], threshold[tied_rows]  # (T, C), (T, 1)
            n = s.shape[1]
            position = torch.arange(n, device=s.device).expand_as(s)
            # Integer key: scores above the threshold first, then tied ones by position, then the rest.
            key = torch.where(s > t, position, 2 * n)
            key = torch.where(s == t, position + n, key)
            chosen = key.topk(k, dim=1, largest=False).indices  # (T, k)
            indices[tied_rows] = chosen
            values[tied_rows] = s.gather(1, chosen)
    return _sort_by_score_then_index(values, indices + offset)


def merge_topk(values: torch.Tensor, indices: torch.Tensor, new_values: torch.Tensor, new_indices: torch.Tensor, k: int):
    """Merge two per-row top lists (Q, K1) and (Q, K2) into the top k under (-score, index)."""
    values = torch.cat([values, new_values], dim=1)  # (Q, K1 + K2)
    indices = torch.cat([indices, new_indices], dim=1)
    values, indices = _sort_by_score_then_index(values, indices)
    return values[:, :k], indices[:, :k]


# ----------------------------------------------------------------------------------------------
# Retrieval metrics on the gains of each query's ranked list


def _top(gains: torch.Tensor, k: int) -> torch.Tensor:
    return gains[:, :k].double()  # (Q, min(k, K))


def accuracy_at_k(gains: torch.Tensor, k: int) -> torch.Tensor:
    """(Q,) 1.0 where any of the top k of `gains` (Q, K) is relevant."""
    return (_top(gains, k) > 0).any(dim=1).double()


def precision_at_k(gains: torch.Tensor, k: int) -> torch.Tensor:
    """(Q,) number of relevant documents in the top k, divided by k."""
    return (_top(gains, k) > 0).sum(dim=1).double() / k


def recall_at_k(gains: torch.Tensor, num_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """(Q,) number of relevant documents in the top k, divided by the query's `num_relevant` (Q,)."""
    return (_top(gains, k) > 0).sum(dim=1).double() / num_relevant.double()


def mrr_at_k(gains: torch.Tensor, k: int) -> torch.Tensor:
    """(Q,) 1 / (1-based rank of the first relevant document in the top k), 0 when there is none."""
    hit = _top(gains, k) > 0  # (Q, k)
    ranks = torch.arange(1, hit.shape[1] + 1, dtype=torch.float64)
    first = torch.where(hit, ranks, math.inf).min(dim=1).values  # inf when no hit
    return 1.0 / first if hit.shape[1] else torch.zeros(len(gains), dtype=torch.float64)


def _dcg(gains: torch.Tensor, k: int) -> torch.Tensor:
    g = _top(gains, k)  # (Q, k)
    discount = 1.0 / torch.log2(torch.arange(g.shape[1], dtype=torch.float64) + 2)  # (k,)
    return (g * discount).sum(dim=1)


def ndcg_at_k(gains: torch.Tensor, ideal_gains: torch.Tensor, k: int) -> torch.Tensor:
    """(Q,) DCG of the top k of `gains` (Q, K) over the DCG of the best possible ranking.

    `ideal_gains` (Q, R) holds the grades of all of a query's relevant documents (any order, padded
    with 0). With 0/1 gains this is ST's binary ndcg (IDCG = DCG of min(#relevant, k) ones).
    Queries with no relevant document get 0.
    """
    ideal = ideal_gains.double().sort(dim=1, descending=True).values  # (Q, R)
    idcg = _dcg(ideal, k)
    dcg = _dcg(gains, k)
    return torch.where(idcg > 0, dcg / idcg.clamp_min(1e-300), torch.zeros_like(dcg))


def map_at_k(gains: torch.Tensor, num_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """(Q,) average precision over the top k, normalised by min(k, #relevant) as ST does."""
    hit = (_top(gains, k) > 0).double()  # (Q, k)
    ranks = torch.arange(1, hit.shape[1] + 1, dtype=torch.float64)
    precision_at_hits = hit.cumsum(dim=1) / ranks * hit  # (Q, k)
    return precision_at_hits.sum(dim=1) / num_relevant.double().clamp(max=k)


# ----------------------------------------------------------------------------------------------
# Reranking one query's candidate list: relevance (n,) and scores (n,)


def _as_1d(x) -> torch.Tensor:
    # Through numpy so a list of Python floats stays float64 (torch.as_tensor would make it float32).
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.reshape(-1).double()


def reciprocal_rank(relevance, scores, k: int, tie_order: str = "pessimistic") -> float:
    """1 / (1-based rank of the first relevant candidate among the top k by score), else 0.

    ST sorts with np.argsort / torch.argsort, whose order among tied scores is unspecified (numpy's
    SIMD sort is not stable even for 5 elements). `tie_order` picks the order among ties:
    "pessimistic" (irrelevant first, so a constant scorer gets no credit), or "numpy" /
    "torch", which make ST's own call - `np.argsort(scores)[::-1]` (CrossEncoderRerankingEvaluator)
    or `torch.argsort(-scores)` (RerankingEvaluator) - on the scores in their own dtype, so the
    result equals ST's with the same numpy / torch build.
    """
    relevance = _as_1d(relevance)
    if tie_order == "numpy":
        order = np.argsort(np.asarray(scores.numpy() if isinstance(scores, torch.Tensor) else scores))[::-1].tolist()
    elif tie_order == "torch":
        order = torch.argsort(-torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores)).tolist()
    elif tie_order == "pessimistic":
        s = _as_1d(scores).tolist()
        order = sorted(range(len(s)), key=lambda i: (-s[i], relevance[i].item() > 0, i))
    else:
        raise ValueError(f"tie_order must be 'pessimistic', 'numpy' or 'torch', got {tie_order!r}")
    for rank, i in enumerate(order[:k]):
        if relevance[i] > 0:
            return 1.0 / (rank + 1)
    return 0.0


def average_precision(relevance, scores, missing: int = 0) -> float:
    """sklearn.metrics.average_precision_score for one query: sum_t (R_t - R_{t-1}) P_t.

    Thresholds t are the distinct scores, from high to low; P_t and R_t are the precision and recall
    of "score >= t", so tied candidates enter together. `missing` relevant documents that are not among
    the candidates (a first stage did not retrieve them) count in the recall, never reached: AP times
    retrieved / (retrieved + missing), as ST 6.3's reranker computes it. Returns 0.0 when nothing is
    relevant (sklearn warns and returns a meaningless value there; ST never asks).
    """
    relevance, scores = _as_1d(relevance) > 0, _as_1d(scores)
    total = int(relevance.sum()) + missing
    if total == 0:
        return 0.0
    order = scores.argsort(descending=True, stable=True)
    s, rel = scores[order], relevance[order].double()
    last_of_group = torch.ones(len(s), dtype=torch.bool)
    last_of_group[:-1] = s[1:] != s[:-1]  # the last position of each run of equal scores
    tp = rel.cumsum(0)[last_of_group]  # (T,) true positives at each threshold
    seen = (torch.arange(1, len(s) + 1, dtype=torch.float64))[last_of_group]  # (T,)
    precision = tp / seen
    recall_step = torch.diff(tp, prepend=torch.zeros(1, dtype=torch.float64)) / total
    return float((recall_step * precision).sum())


def _discount(n: int, k: int | None) -> torch.Tensor:
    """(n,) 1 / log2(rank + 1) of ranks 1..n, 0 past rank k."""
    discount = 1.0 / torch.log2(torch.arange(n, dtype=torch.float64) + 2)
    if k is not None:
        discount[k:] = 0
    return discount


def ndcg(relevance, scores, k: int | None = None, missing: int = 0) -> float:
    """sklearn.metrics.ndcg_score([relevance], [scores], k=k) for one query.

    Candidates with equal scores share the average of their gains (McSherry & Najork 2008), which
    equals the mean NDCG over all orderings of the ties. `missing` relevant documents (gain 1) that are
    not among the candidates join the ideal ranking only, as ST 6.3's reranker counts them. 0.0 when
    nothing is relevant.
    """
    relevance, scores = _as_1d(relevance), _as_1d(scores)
    n = len(scores)
    discount = _discount(n, k)  # (n,)
    ideal_gains = torch.cat([relevance, torch.ones(missing, dtype=torch.float64)]).sort(descending=True).values
    ideal = (ideal_gains * _discount(n + missing, k)).sum()
    if ideal == 0:
        return 0.0
    unique, inverse, counts = torch.unique(-scores, return_inverse=True, return_counts=True)  # groups by score, best first
    mean_gain = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, relevance) / counts
    group_end = counts.cumsum(0) - 1
    discount_cumsum = discount.cumsum(0)[group_end]
    group_discount = torch.diff(discount_cumsum, prepend=torch.zeros(1, dtype=torch.float64))
    return float((mean_gain * group_discount).sum() / ideal)


# ----------------------------------------------------------------------------------------------
# Correlation


def pearson(x, y) -> float:
    """Pearson correlation of two (N,) sequences, in float64 (scipy.stats.pearsonr's statistic)."""
    x, y = _as_1d(x), _as_1d(y)
    if len(x) != len(y):
        raise ValueError(f"pearson: got {len(x)} and {len(y)} values; expected equal lengths")
    xm, ym = x - x.mean(), y - y.mean()
    # Normalise each side first, as scipy does, so huge or tiny scales do not overflow.
    xm, ym = xm / xm.norm(), ym / ym.norm()
    return float((xm * ym).sum().clamp(-1.0, 1.0))


def rankdata(x) -> torch.Tensor:
    """(N,) 1-based ranks of `x`, tied values sharing the average of their ranks (scipy's "average")."""
    x = _as_1d(x)
    order = x.argsort(stable=True)
    s = x[order]
    new_group = torch.ones(len(s), dtype=torch.bool)
    new_group[1:] = s[1:] != s[:-1]
    group = new_group.cumsum(0) - 1  # (N,) group id of each sorted position
    counts = torch.bincount(group).double()
    first = torch.cumsum(counts, 0) - counts  # 0-based first position of each group
    average_rank = first + (counts + 1) / 2  # mean of ranks first+1 .. first+count
    ranks = torch.empty(len(x), dtype=torch.float64)
    ranks[order] = average_rank[group]
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson on average ranks (scipy.stats.spearmanr's statistic)."""
    return pearson(rankdata(x), rankdata(y))


# ----------------------------------------------------------------------------------------------
# Classification and clustering scores on integer labels (N,)


def accuracy(y_true, y_pred) -> float:
    """Fraction of positions where the labels agree."""
    y_true, y_pred = torch.as_tensor(y_true), torch.as_tensor(y_pred)
    return float((y_true == y_pred).double().mean())


def f1_macro(y_true, y_pred) -> float:
    """sklearn.metrics.f1_score(average="macro"): unweighted mean over the labels seen in either
    argument of F1 = 2 TP / (2 TP + FP + FN), a label with no TP, FP or FN scoring 0."""
    y_true, y_pred = torch.as_tensor(y_true), torch.as_tensor(y_pred)
    f1s = []
    for label in torch.unique(torch.cat([y_true, y_pred])):
        tp = ((y_pred == label) & (y_true == label)).sum().item()
        fp = ((y_pred == label) & (y_true != label)).sum().item()
        fn = ((y_pred != label) & (y_true == label)).sum().item()
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s)


def _entropy(counts: torch.Tensor) -> float:
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log()).sum())


def v_measure(labels_true, labels_pred) -> float:
    """sklearn.metrics.v_measure_score: harmonic mean of homogeneity 1 - H(C|K)/H(C) and
    completeness 1 - H(K|C)/H(K) (each 1.0 when its denominator entropy is 0)."""
    _, t = torch.unique(torch.as_tensor(labels_true), return_inverse=True)
    _, p = torch.unique(torch.as_tensor(labels_pred), return_inverse=True)
    n_t, n_p = int(t.max()) + 1, int(p.max()) + 1
    contingency = torch.bincount(t * n_p + p, minlength=n_t * n_p).reshape(n_t, n_p).double()  # (classes, clusters)
    n = contingency.sum()
    h_c, h_k = _entropy(contingency.sum(1)), _entropy(contingency.sum(0))
    nz = contingency > 0
    mutual_info = float(
        (contingency[nz] / n * (contingency[nz] * n / (contingency.sum(1, keepdim=True) * contingency.sum(0, keepdim=True))[nz]).log()).sum()
    )
    homogeneity = 1.0 if h_c == 0 else mutual_info / h_c
    completeness = 1.0 if h_k == 0 else mutual_info / h_k
    if homogeneity + completeness == 0:
        return 0.0
    return 2 * homogeneity * completeness / (homogeneity + completeness)


# ----------------------------------------------------------------------------------------------
# Probes fitted on frozen embeddings


def logistic_regression(x: torch.Tensor, y: torch.Tensor, C: float = 1.0, max_iter: int = 100):
    """Multinomial logistic regression on `x` (N, D) with integer labels `y` (N,) in 0..n_classes-1.

    Minimises sklearn's objective, mean cross-entropy + ||W||^2 / (2 C N) (intercept not penalised),
    full batch with L-BFGS in float64, from zeros: no randomness, so the same inputs give the same
    probe. Returns (W (n_classes, D), b (n_classes,)); predict with (x @ W.T + b).argmax(1).
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.long)
    n_classes = int(y.max()) + 1
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
        history_size=20, line_search_fn="strong_wolfe",
    )
    l2 = 1.0 / (C * len(x))

    def closure():
        optimizer.zero_grad()
        logits = x @ weight.T + bias  # (N, n_classes)
        loss = torch.nn.functional.cross_entropy(logits, y) + 0.5 * l2 * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def kmeans(x: torch.Tensor, n_clusters: int, seed: int = 0, n_init: int = 3, max_iter: int = 300, tol: float = 1e-6) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; returns the (N,) cluster ids of the best of `n_init`
    runs (lowest inertia). A torch.Generator seeded with `seed` drives every random choice, so the
    result is a function of (x, n_clusters, seed)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if not 1 <= n_clusters <= len(x):
        raise ValueError(f"kmeans: n_clusters={n_clusters} must be between 1 and the number of points ({len(x)})")
    generator = torch.Generator().manual_seed(seed)
    best_labels, best_inertia = None, math.inf
    for _ in range(n_init):
        # k-means++: each next centre drawn with probability proportional to squared distance.
        centres = [x[torch.randint(len(x), (1,), generator=generator)].squeeze(0)]
        d2 = ((x - centres[0]) ** 2).sum(1)  # (N,)
        for _ in range(1, n_clusters):
            probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / len(d2))
            centres.append(x[torch.multinomial(probs, 1, generator=generator)].squeeze(0))
            d2 = torch.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
        centres = torch.stack(centres)  # (k, D)
        for _ in range(max_iter):
            labels = torch.cdist(x, centres).argmin(1)  # (N,)
            sums = torch.zeros_like(centres).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=n_clusters).double()
            # An emptied cluster keeps its old centre rather than becoming NaN.
            new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
            shift = ((new - centres) ** 2).sum()
            centres = new
            if shift <= tol:
                break
        labels = torch.cdist(x, centres).argmin(1)
        inertia = float(((x - centres[labels]) ** 2).sum())
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    return best_labels
