"""Every loss in minisbert.losses pinned twice: to a naive per-example Python loop (float64, written from
the formula), and to the sentence-transformers class fed the same embeddings through a fake model."""

from __future__ import annotations

import math
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

from minisbert import losses as L

B, D = 6, 16


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def batch(n_neg: int, seed=0):
    """anchors (B, D), candidates ((1+n)B, D) with positives correlated to their anchors."""
    a = rand(B, D, seed=seed)
    c = rand((1 + n_neg) * B, D, seed=seed + 1)
    c[:B] += a  # positives close to their anchor, so the loss is not just noise
    return a, c


def close(x, y, tol=1e-5):
    x, y = float(x), float(y)
    assert math.isclose(x, y, rel_tol=tol, abs_tol=tol), (x, y)


# ----------------------------------------------------------------------------- naive references


def cos(u, v):
    u, v = u.double(), v.double()
    return float(u @ v / (u.norm() * v.norm()))


def lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def naive_mnrl(a, c, scale=20.0, directions=("query_to_doc",), partition_mode="joint", ids=None):
    Bn, C = a.shape[0], c.shape[0]
    p = c[:Bn]
    total = 0.0
    for i in range(Bn):
        dup = lambda j: ids is not None and j != i and int(ids[j]) == int(ids[i])  # noqa: E731
        blocks = {"query_to_doc": [scale * cos(a[i], c[j]) for j in range(C) if not dup(j)]}
        if "query_to_query" in directions:
            blocks["query_to_query"] = [scale * cos(a[i], a[j]) for j in range(Bn) if j != i]
        if "doc_to_query" in directions:
            blocks["doc_to_query"] = [scale * cos(p[i], a[j]) for j in range(Bn) if not dup(j)]
        if "doc_to_doc" in directions:
            blocks["doc_to_doc"] = [scale * cos(p[i], c[j]) for j in range(C) if j % Bn != i and not dup(j)]
        if partition_mode == "joint":
            log_z = lse([x for block in blocks.values() for x in block])
        else:
            log_z = sum(lse(block) for block in blocks.values()) / len(blocks)
        total += log_z - scale * cos(a[i], p[i])
    return total / Bn


def naive_gist(a, c, ga, gc, temperature=0.01, strategy="absolute", margin=0.0, ca=True, cp=True, ids=None):
    Bn, C = a.shape[0], c.shape[0]
    total = 0.0
    for i in range(Bn):
        g = cos(ga[i], gc[i])
        thr = g - margin if strategy == "absolute" else g - abs(g) * margin
        dup = lambda j: ids is not None and j != i and int(ids[j]) == int(ids[i])  # noqa: E731
        row = []
        for j in range(Bn):  # anchor-positive, own positive kept
            if j == i or (cos(ga[i], gc[j]) <= thr and not dup(j)):
                row.append(cos(a[i], c[j]))
        if ca:
            row += [cos(a[i], a[j]) for j in range(Bn) if cos(ga[i], ga[j]) <= thr]
        if cp:
            row += [
                cos(c[i], c[j])
                for j in range(Bn)
                if cos(gc[i], gc[j]) <= thr and not (ids is not None and int(ids[j]) == int(ids[i]))
            ]
        row += [cos(a[i], c[j]) for j in range(Bn, C) if cos(ga[i], gc[j]) <= thr and not dup(j)]
        total += lse([x / temperature for x in row]) - cos(a[i], c[i]) / temperature
    return total / Bn


def naive_distance(name, u, v):
    u, v = u.double(), v.double()
    if name == "euclidean":
        return float(((u - v) ** 2).sum().sqrt())
    if name == "manhattan":
        return float((u - v).abs().sum())
    if name == "cosine":
        return 1 - cos(u, v)
    return -float(u @ v)


def naive_triplet(a, p, n, distance, margin):
    return sum(
        max(0.0, naive_distance(distance, a[i], p[i]) - naive_distance(distance, a[i], n[i]) + margin)
        for i in range(a.shape[0])
    ) / a.shape[0]


def naive_rank(sims, y, scale):
    """Quadratic CoSENT: log(1 + sum_{y_i < y_j} exp(scale (s_i - s_j)))."""
    terms = [0.0]
    for i in range(len(sims)):
        for j in range(len(sims)):
            if float(y[i]) < float(y[j]):
                terms.append(scale * (sims[i] - sims[j]))
    return lse(terms)


def naive_angle(u, v):
    """|cos + sum_k (x2_k y1_k - x1_k y2_k)| on the normalized vectors split into halves (zero-padded if odd)."""
    u, v = F.normalize(u.double(), dim=0).tolist(), F.normalize(v.double(), dim=0).tolist()
    if len(u) % 2:
        u, v = u + [0.0], v + [0.0]
    h = len(u) // 2
    cosine = sum(x * y for x, y in zip(u, v))
    sine = sum(u[h + k] * v[k] - u[k] * v[h + k] for k in range(h))
    return abs(cosine + sine)


# ----------------------------------------------------------------------------- ST fakes


@pytest.fixture(scope="module")
def st():
    pytest.importorskip("sentence_transformers")
    import sentence_transformers.sentence_transformer.losses as st_losses

    return st_losses


class ColumnModel(torch.nn.Module):
    """Stands in for a SentenceTransformer: features {"column": k} -> the k-th precomputed embedding, so an
    ST loss runs its own math on our tensors. ST's merged forward needs input_ids to merge columns, so it
    falls back to one call per column."""

    def __init__(self, columns):
        super().__init__()
        from tokenizers import Tokenizer, models
        from transformers import PreTrainedTokenizerFast

        self.columns = list(columns)
        self.tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
        )
        self.max_seq_length = 128

    def forward(self, features):
        return {"sentence_embedding": self.columns[features["column"]]}

    def get_embedding_dimension(self):
        return self.columns[0].shape[1]

    def _get_untruncated_embedding_dimension(self):  # ST >= 6.3's MatryoshkaLoss checks dims against it
        return self.get_embedding_dimension()

    def __getitem__(self, i):  # ST's StaticEmbedding check looks at model[0]
        return torch.nn.Identity()


def st_loss(loss, columns, labels=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return loss([{"column": k} for k in range(len(columns))], labels)


def split(c, n_cols):
    return list(c.chunk(n_cols))


# ----------------------------------------------------------------------------- mnrl

CONFIGS = [
    (("query_to_doc",), "joint"),
    (("query_to_doc", "doc_to_query"), "per_direction"),
    (("query_to_doc", "doc_to_query"), "joint"),
    (("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"), "joint"),
    (("query_to_doc", "doc_to_doc"), "joint"),
]


@pytest.mark.parametrize("n_neg", [0, 1, 2])
@pytest.mark.parametrize("directions,partition_mode", CONFIGS)
def test_mnrl_matches_naive_loop(n_neg, directions, partition_mode):
    a, c = batch(n_neg)
    got = L.mnrl(a, c, scale=20.0, directions=directions, partition_mode=partition_mode)
    close(got, naive_mnrl(a, c, 20.0, directions, partition_mode))


@pytest.mark.parametrize("n_neg", [0, 1, 2])
@pytest.mark.parametrize("directions,partition_mode", CONFIGS)
def test_mnrl_matches_st(st, n_neg, directions, partition_mode):
    a, c = batch(n_neg, seed=3)
    model = ColumnModel([a, *split(c, 1 + n_neg)])
    ref = st.MultipleNegativesRankingLoss(model, scale=13.0, directions=directions, partition_mode=partition_mode)
    got = L.mnrl(a, c, scale=13.0, directions=directions, partition_mode=partition_mode)
    close(got, st_loss(ref, model.columns))


def test_mnrl_default_is_cross_entropy():
    a, c = batch(2)
    ref = F.cross_entropy(20 * F.normalize(a, dim=-1) @ F.normalize(c, dim=-1).T, torch.arange(B))
    close(L.mnrl(a, c), ref, 1e-6)


def test_mnrl_symmetric_matches_naive_and_st(st):
    a, c = batch(0, seed=5)
    got = L.mnrl_symmetric(a, c, scale=20.0)
    s = 20 * F.normalize(a.double(), dim=-1) @ F.normalize(c.double(), dim=-1).T
    naive = 0.5 * (F.cross_entropy(s, torch.arange(B)) + F.cross_entropy(s.T, torch.arange(B)))
    close(got, naive)
    model = ColumnModel([a, c])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = st.MultipleNegativesSymmetricRankingLoss(model, scale=20.0)
    close(got, st_loss(ref, model.columns))


# ----------------------------------------------------------------------------- candidate_ids


def test_candidate_ids_mask_a_duplicated_positive():
    """Row k's positive is the same text as row 0's: with ids, row 0 no longer treats it as a negative.

    The masked loss must equal the mean of per-row losses where row 0 is scored without column k and row k
    without column 0 (computed by a plain CE on the kept columns), other rows unchanged."""
    k = 3
    a, c = batch(1, seed=7)
    c[k] = c[0]  # same text -> same embedding
    ids = torch.arange(2 * B) + 100
    ids[k] = ids[0]
    logits = 20 * F.normalize(a, dim=-1) @ F.normalize(c, dim=-1).T  # (B, 2B)
    per_row = []
    for i in range(B):
        keep = [j for j in range(2 * B) if not (i == 0 and j == k) and not (i == k and j == 0)]
        row = logits[i, keep]
        target = keep.index(i)
        per_row.append(F.cross_entropy(row[None], torch.tensor([target])))
    expected = torch.stack(per_row).mean()
    got = L.mnrl(a, c, candidate_ids=ids)
    close(got, expected)
    close(got, naive_mnrl(a, c, ids=ids))
    assert abs(float(L.mnrl(a, c)) - float(got)) > 1e-3  # the mask changed something
    # ids that are all distinct change nothing
    close(L.mnrl(a, c, candidate_ids=torch.arange(2 * B)), L.mnrl(a, c), 1e-7)


@pytest.mark.parametrize("directions", [("query_to_doc", "doc_to_query"), L.DIRECTIONS])
def test_candidate_ids_in_other_directions_match_naive(directions):
    a, c = batch(1, seed=8)
    c[4], c[B + 2] = c[1], c[1]  # a duplicated positive, and a hard negative equal to row 1's positive
    ids = torch.arange(2 * B)
    ids[4] = ids[B + 2] = ids[1]
    mode = "per_direction" if len(directions) == 2 else "joint"
    close(L.mnrl(a, c, directions=directions, partition_mode=mode, candidate_ids=ids),
          naive_mnrl(a, c, 20.0, directions, mode, ids))


def test_positive_ids_mnrl_symmetric():
    a, c = batch(0, seed=9)
    c[2] = c[5]
    ids = torch.tensor([0, 1, 2, 3, 4, 2])
    close(L.mnrl_symmetric(a, c, positive_ids=ids),
          naive_mnrl(a, c, 20.0, ("query_to_doc", "doc_to_query"), "per_direction", ids))


# ----------------------------------------------------------------------------- gist


def gist_batch(n_neg, seed=0, guide_width=12):
    a, c = batch(n_neg, seed)
    ga = rand(B, guide_width, seed=seed + 10)
    gc = rand((1 + n_neg) * B, guide_width, seed=seed + 11)
    gc[:B] += 0.7 * ga  # the guide agrees the positives are related ...
    gc[4] = ga[0] + 0.01  # ... but thinks another row's positive (and a hard negative) is even closer
    if n_neg:
        gc[B + 1] = ga[2] * 3
    return a, c, ga, gc


def count_masked(ga, gc, margin=0.0):
    g = (F.normalize(ga, dim=-1) * F.normalize(gc[:B], dim=-1)).sum(-1, keepdim=True)
    gs = F.normalize(ga, dim=-1) @ F.normalize(gc, dim=-1).T
    gs[torch.arange(B), torch.arange(B)] = -2
    return int((gs > g - margin).sum())


GIST_CONFIGS = [
    dict(),
    dict(margin_strategy="relative", margin=0.1),
    dict(margin_strategy="absolute", margin=0.05, contrast_anchors=False),
    dict(contrast_positives=False, temperature=0.05),
]  # in ST's spelling (GISTEmbedLoss takes temperature); ours(kw) is the same config for L.gist


def ours(kw: dict) -> dict:
    """A GIST_CONFIGS entry as L.gist takes it: scale = 1 / temperature, like every other loss."""
    kw = dict(kw)
    if "temperature" in kw:
        kw["scale"] = 1 / kw.pop("temperature")
    return kw


@pytest.mark.parametrize("n_neg", [0, 1, 2])
@pytest.mark.parametrize("kw", GIST_CONFIGS)
def test_gist_matches_naive_loop(n_neg, kw):
    a, c, ga, gc = gist_batch(n_neg, seed=1)
    assert 0 < count_masked(ga, gc) < B * c.shape[0] - B  # some, not all, candidates are suppressed
    got = L.gist(a, c, ga, gc, **ours(kw))
    naive = naive_gist(
        a, c, ga, gc, kw.get("temperature", 0.01), kw.get("margin_strategy", "absolute"), kw.get("margin", 0.0),
        kw.get("contrast_anchors", True), kw.get("contrast_positives", True),
    )
    close(got, naive)


@pytest.mark.parametrize("n_neg", [0, 1, 2])
@pytest.mark.parametrize("kw", GIST_CONFIGS)
def test_gist_matches_st(st, n_neg, kw):
    a, c, ga, gc = gist_batch(n_neg, seed=2)
    got = L.gist(a, c, ga, gc, **ours(kw))
    model, guide = ColumnModel([a, *split(c, 1 + n_neg)]), ColumnModel([ga, *split(gc, 1 + n_neg)])
    if n_neg <= 1:  # GISTEmbedLoss takes pairs or triplets only
        ref = st_loss(st.GISTEmbedLoss(model, guide, **kw), model.columns)
    else:  # CachedGISTEmbedLoss takes any number of negatives; run its loss on our embeddings directly
        ref = st.CachedGISTEmbedLoss(model, guide, mini_batch_size=4, **kw).calculate_loss(
            [[x] for x in model.columns], [[x] for x in guide.columns]
        )
    close(got, ref)


def test_gist_temperature_is_deprecated_and_equals_scale():
    a, c, ga, gc = gist_batch(1, seed=3)
    with pytest.warns(DeprecationWarning, match="scale=1/t"):
        old = L.gist(a, c, ga, gc, temperature=0.05)
    assert torch.equal(old, L.gist(a, c, ga, gc, scale=20.0))  # 1 / 20 == 0.05: the same division, bit for bit
    assert torch.equal(L.gist(a, c, ga, gc), L.gist(a, c, ga, gc, scale=100.0))
    with pytest.raises(ValueError, match="scale must be positive"):
        L.gist(a, c, ga, gc, scale=0.0)


def test_gist_candidate_ids_match_naive():
    a, c, ga, gc = gist_batch(1, seed=4)
    c[3] = c[0]  # a duplicate positive that the guide, here, does not catch by itself
    gc[3] = 0.5 * gc[0] - 0.3 * ga[0]
    ids = torch.arange(2 * B)
    ids[3] = ids[0]
    got = L.gist(a, c, ga, gc, candidate_ids=ids)
    close(got, naive_gist(a, c, ga, gc, ids=ids))
    assert abs(float(got) - float(L.gist(a, c, ga, gc))) > 1e-4


# ----------------------------------------------------------------------------- triplet


@pytest.mark.parametrize("distance", L.TRIPLET_DISTANCES)
def test_triplet_matches_naive_and_st(st, distance):
    a, p, n = rand(B, D, seed=1), rand(B, D, seed=2), rand(B, D, seed=3)
    p += a
    margin = {"euclidean": 5.0, "manhattan": 5.0, "cosine": 0.5, "dot": 20.0}[distance]
    got = L.triplet(a, p, n, distance=distance, margin=margin)
    expected = naive_triplet(a, p, n, distance, margin)
    assert expected > 0
    close(got, expected)
    from sentence_transformers.util import pairwise_dot_score

    metric = {
        "euclidean": st.TripletDistanceMetric.EUCLIDEAN,
        "manhattan": st.TripletDistanceMetric.MANHATTAN,
        "cosine": st.TripletDistanceMetric.COSINE,
        # ST has no dot metric; its convention distance = -similarity with its dot_score
        "dot": lambda x, y: -pairwise_dot_score(x, y),
    }[distance]
    model = ColumnModel([a, p, n])
    close(got, st_loss(st.TripletLoss(model, distance_metric=metric, triplet_margin=margin), model.columns))


# ----------------------------------------------------------------------------- cosent / angle


@pytest.mark.parametrize("name", ["cosent", "angle"])
@pytest.mark.parametrize("width", [16, 15])
@pytest.mark.parametrize("labels", ["float", "ties"])
def test_cosent_angle_match_naive_and_st(st, name, width, labels):
    a, b = rand(B, width, seed=1), rand(B, width, seed=2)
    b[:3] += a[:3]
    y = rand(B, seed=3).sigmoid() if labels == "float" else torch.tensor([0, 1, 1, 2, 0, 2])
    fn = getattr(L, name)
    got = fn(a, b, y, scale=20.0)
    sim = (lambda u, v: cos(u, v)) if name == "cosent" else naive_angle
    close(got, naive_rank([sim(a[i], b[i]) for i in range(B)], y, 20.0))
    model = ColumnModel([a, b])
    ref = (st.CoSENTLoss if name == "cosent" else st.AnglELoss)(model, scale=20.0)
    close(got, st_loss(ref, model.columns, y))


def test_cosent_accepts_column_labels_and_bool():
    a, b = rand(B, D, seed=1), rand(B, D, seed=2)
    y = torch.tensor([1, 0, 1, 1, 0, 0])
    close(L.cosent(a, b, y[:, None].float()), L.cosent(a, b, y.bool()), 1e-7)


# ----------------------------------------------------------------------------- matryoshka


def naive_matryoshka(inner, dims, weights, args, keep=()):
    total = 0.0
    for d, w in zip(dims, weights):
        shrunk = [x if i in keep or x.ndim < 2 else F.normalize(x[:, :d], dim=-1) for i, x in enumerate(args)]
        total += w * float(inner(*shrunk))
    return total


@pytest.mark.parametrize("case", ["mnrl", "gist", "triplet", "cosent"])
def test_matryoshka_matches_naive_and_st(st, case):
    dims, weights = [16, 8, 4], [1.0, 0.5, 0.25]
    if case == "mnrl":  # two hard-negative columns
        a, c = batch(2, seed=11)
        args, cols, labels = (a, c), [a, *split(c, 3)], None
        ref_inner = lambda m: st.MultipleNegativesRankingLoss(m, scale=20.0)  # noqa: E731
        guide = None
    elif case == "gist":
        a, c, ga, gc = gist_batch(1, seed=12)
        args, cols, labels = (a, c, ga, gc), [a, *split(c, 2)], None
        guide = ColumnModel([ga, *split(gc, 2)])
        ref_inner = lambda m: st.GISTEmbedLoss(m, guide)  # noqa: E731
    elif case == "triplet":
        a, p, n = rand(B, D, seed=1), rand(B, D, seed=2), rand(B, D, seed=3)
        args, cols, labels = (a, p, n), [a, p, n], None
        ref_inner = lambda m: st.TripletLoss(m, triplet_margin=1.0)  # noqa: E731
    else:
        a, b, y = rand(B, D, seed=1), rand(B, D, seed=2), rand(B, seed=3)
        args, cols, labels = (a, b, y), [a, b], y
        ref_inner = lambda m: st.CoSENTLoss(m)  # noqa: E731
    inner = {"mnrl": L.mnrl, "gist": L.gist, "triplet": lambda *x: L.triplet(*x, margin=1.0), "cosent": L.cosent}[case]
    got = L.matryoshka(inner, dims[::-1], weights[::-1])(*args)  # order of dims given does not matter
    keep = (2, 3) if case == "gist" else ()
    close(got, naive_matryoshka(inner, dims, weights, args, keep))
    model = ColumnModel(cols)
    ref = st.MatryoshkaLoss(model, ref_inner(model), dims, weights)
    close(got, st_loss(ref, cols, labels))


@pytest.mark.parametrize("case", ["mnrl", "mnrl_symmetric", "gist", "cosent", "angle"])
def test_matryoshka_full_dim_equals_inner(case):
    a, c, ga, gc = gist_batch(1, seed=13)
    y = rand(B, seed=3)
    args = {"mnrl": (a, c), "mnrl_symmetric": (a, c[:B]), "gist": (a, c, ga, gc),
            "cosent": (a, c[:B], y), "angle": (a, c[:B], y)}[case]
    fn = getattr(L, case)
    close(L.matryoshka(fn, [D])(*args), fn(*args), 1e-6)


def test_matryoshka_keeps_guide_width_and_passes_keywords():
    a, c, ga, gc = gist_batch(1, seed=14, guide_width=6)  # guide narrower than the smallest dim: never cut
    m = L.matryoshka(L.gist, [16, 8])
    expected = naive_matryoshka(L.gist, [16, 8], [1, 1], (a, c, ga, gc), keep=(2, 3))
    close(m(a, c, ga, gc), expected)
    close(m(a, c, guide_anchors=ga, guide_candidates=gc), expected)
    close(m(anchors=a, candidates=c, guide_anchors=ga, guide_candidates=gc, scale=100.0), expected)


def test_matryoshka_of_a_list_loss_and_nested():
    a, c = batch(1, seed=15)
    list_loss = L.matryoshka(lambda e, y: L.mnrl(e[0], torch.cat(e[1:])), [16, 4])
    close(list_loss([a, c[:B], c[B:]], None), L.matryoshka(L.mnrl, [16, 4])(a, c), 1e-6)


def test_matryoshka_grad_flows_through_truncation():
    a, c = batch(1, seed=16)
    a.requires_grad_()
    L.matryoshka(L.mnrl, [16, 8], [1.0, 2.0])(a, c).backward()
    a2 = a.detach().clone().requires_grad_()
    (L.mnrl(F.normalize(a2, dim=-1), c) + 2 * L.mnrl(F.normalize(a2[:, :8], dim=-1), c[:, :8])).backward()
    torch.testing.assert_close(a.grad, a2.grad, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- cross-encoder


@pytest.mark.parametrize("pos_weight", [None, 3.0])
@pytest.mark.parametrize("shape", ["flat", "column"])
def test_bce_matches_naive_and_st(pos_weight, shape):
    z, y = rand(B, seed=1) * 3, torch.tensor([1, 0, 1, 0, 0, 1])
    logits = z if shape == "flat" else z[:, None]
    got = L.bce(logits, y, pos_weight=pos_weight)
    w = 1.0 if pos_weight is None else pos_weight
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    naive = -sum(w * int(y[i]) * math.log(sig(float(z[i]))) + (1 - int(y[i])) * math.log(1 - sig(float(z[i])))
                 for i in range(B)) / B
    close(got, naive)
    pytest.importorskip("sentence_transformers")
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    class FakeCrossEncoder(torch.nn.Module):  # ST's forward only needs preprocess, device and scores
        device = torch.device("cpu")

        def preprocess(self, pairs, prompt=None, task=None):
            return {}

        def forward(self, features):
            return {"scores": logits}

    ref = BinaryCrossEntropyLoss.__new__(BinaryCrossEntropyLoss)  # skip the isinstance(CrossEncoder) check
    torch.nn.Module.__init__(ref)
    ref.model, ref.activation_fn = FakeCrossEncoder(), torch.nn.Identity()
    ref.bce_with_logits_loss = torch.nn.BCEWithLogitsLoss(
        pos_weight=None if pos_weight is None else torch.tensor(pos_weight)
    )
    close(got, ref([["q"] * B, ["d"] * B], y))


@pytest.mark.parametrize("activation", ["sigmoid", "identity"])
def test_listwise_matches_naive_and_st(activation):
    z = rand(B, 4, seed=2) * 2
    got = L.listwise(z, scale=10.0, activation=activation)
    act = (lambda x: 1 / (1 + math.exp(-x))) if activation == "sigmoid" else (lambda x: x)  # noqa: E731
    naive = sum(lse([10 * act(float(x)) for x in z[i]]) - 10 * act(float(z[i, 0])) for i in range(B)) / B
    close(got, naive)
    pytest.importorskip("sentence_transformers")
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss as CEMNRL

    ref = types.SimpleNamespace(
        activation_fn=torch.nn.Sigmoid() if activation == "sigmoid" else None,
        scale=10.0,
        cross_entropy_loss=torch.nn.CrossEntropyLoss(),
    )
    close(got, CEMNRL.calculate_loss(ref, list(z.T), B))  # ST takes one (B,) score tensor per column


# ----------------------------------------------------------------------------- float32 under bf16


@pytest.mark.parametrize("name", ["mnrl", "mnrl_symmetric", "gist", "triplet", "cosent", "angle", "matryoshka"])
def test_losses_compute_in_float32_under_bf16_autocast(name):
    a, c, ga, gc = gist_batch(1, seed=17)
    y = rand(B, seed=3)
    fn, args = {
        "mnrl": (L.mnrl, (a, c)),
        "mnrl_symmetric": (L.mnrl_symmetric, (a, c[:B])),
        "gist": (L.gist, (a, c, ga, gc)),
        "triplet": (L.triplet, (a, c[:B], c[B:])),
        "cosent": (L.cosent, (a, c[:B], y)),
        "angle": (L.angle, (a, c[:B], y)),
        "matryoshka": (L.matryoshka(L.mnrl, [16, 8]), (a, c)),
    }[name]
    low = [x.bfloat16() if x.ndim == 2 else x for x in args]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(*low)
    assert got.dtype == torch.float32
    ref = fn(*[x.float() for x in low])  # the same bf16 values, float32 math
    close(got, ref, 1e-6)


def test_cross_encoder_losses_upcast_bf16():
    z = (rand(B, 3, seed=1) * 2).bfloat16()
    close(L.listwise(z), L.listwise(z.float()), 1e-6)
    close(L.bce(z[:, 0], torch.ones(B)), L.bce(z[:, 0].float(), torch.ones(B)), 1e-6)


# ----------------------------------------------------------------------------- errors


def test_bad_input_raises_clear_value_errors():
    a, c = batch(1)
    y = rand(B)
    cases = [
        (lambda: L.mnrl(a, c[:-1]), "multiple"),
        (lambda: L.mnrl(a, c[:, :8]), "width"),
        (lambda: L.mnrl(a[0], c), "2-D"),
        (lambda: L.mnrl(a, c, directions=("query_to_doc", "sideways")), "sideways"),
        (lambda: L.mnrl(a, c, directions=("doc_to_query",)), "query_to_doc"),
        (lambda: L.mnrl(a, c, partition_mode="both"), "partition_mode"),
        (lambda: L.mnrl(a, c, directions=L.DIRECTIONS, partition_mode="per_direction"), "joint"),
        (lambda: L.mnrl(a, c, candidate_ids=torch.arange(B)), "candidate_ids"),
        (lambda: L.mnrl_symmetric(a, c), "same width"),
        (lambda: L.gist(a, c, a[:3], c), "guide"),
        (lambda: L.gist(a, c, a, c, margin_strategy="max"), "margin_strategy"),
        (lambda: L.triplet(a, c[:B], c[:B - 1]), "one row per example"),
        (lambda: L.triplet(a, c[:B], c[B:], distance="chebyshev"), "chebyshev"),
        (lambda: L.cosent(a, c[:B], y[:-1]), "scores"),
        (lambda: L.angle(a, c[:B], torch.rand(B, 2)), "scores"),
        (lambda: L.matryoshka(L.mnrl, [32, 8])(a, c), "larger than the width"),
        (lambda: L.matryoshka(L.mnrl, [16, 0]), "positive"),
        (lambda: L.matryoshka(L.mnrl, []), "at least one"),
        (lambda: L.matryoshka(L.mnrl, [16, 8], [1.0]), "weights"),
        (lambda: L.bce(rand(B, 2), y), "logits"),
        (lambda: L.bce(y, y[:-1]), "labels"),
        (lambda: L.listwise(y), "logits"),
        (lambda: L.listwise(rand(B, 3), activation="tanh"), "activation"),
    ]
    for fn, fragment in cases:
        with pytest.raises(ValueError, match=fragment):
            fn()


def test_registry_names_are_function_names():
    assert set(L.LOSSES) == {"mnrl", "mnrl_symmetric", "gist", "triplet", "cosent", "angle", "bce", "listwise"}
    for name, fn in L.LOSSES.items():
        assert fn is getattr(L, name) and fn.__name__ == name
