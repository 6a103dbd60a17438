"""Every training loss as a plain function of tensors: embeddings (or logits) and labels in, a scalar out.

A loss never sees the model, the tokenizer or text; the trainer embeds the columns and calls the loss,
the cached step (gradcache.py) calls the same functions on cached embeddings, and `matryoshka` wraps any
of them. Each formula is written once, next to the sentence-transformers (ST) class it reproduces.

Shape letters used in comments and docstrings:
    B  batch size (number of anchors / rows)
    D  embedding width
    n  number of hard-negative columns per anchor (n >= 0)
    C  number of candidates = (1 + n) * B, column-blocked: rows [0, B) are the positives,
       rows [B, 2B) negative_1 of each anchor, ..., i.e. candidate k*B + i belongs to anchor i.

Numerics: every loss computes its similarities and cross-entropy in float32 with autocast switched off,
so bf16 embeddings only lose precision in the model, never in the loss (ST PR #3800, #3862).

False negatives from duplicates: the in-batch losses (mnrl, mnrl_symmetric, gist) take optional ids of
the candidate texts (e.g. hashes), `candidate_ids` (C,) or `positive_ids` (B,). A candidate j that is
not anchor i's own positive but carries the same id as anchor i's positive is the same text, so a
false negative: its logit is set to -inf (ST #3189, #2827; the maintainer's suggestion in PR #3946).

Left to others: embedding the columns (the trainer), pairing texts for cross-encoders (the trainer
scores the pairs and passes logits), similarities (similarity.py), and distributed gathering
(distributed.py gathers the embeddings of every process first, so these losses see the global batch).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .similarity import cosine, normalize, pairwise_cosine

# ----------------------------------------------------------------------------- float32 + checks


def _upcast(x):
    """float16/bfloat16 tensors (also inside lists/tuples) -> float32; everything else unchanged."""
    if isinstance(x, Tensor):
        return x.float() if x.is_floating_point() and torch.finfo(x.dtype).bits < 32 else x
    if isinstance(x, (list, tuple)):
        return type(x)(_upcast(v) for v in x)
    return x


def _first_tensor(values) -> Tensor | None:
    for v in values:
        if isinstance(v, Tensor):
            return v
        if isinstance(v, (list, tuple)) and (t := _first_tensor(v)) is not None:
            return t
    return None


def _float32(fn: Callable) -> Callable:
    """Run `fn` with its low-precision tensor arguments upcast and autocast disabled.

    Under bf16 autocast a matmul of float32 inputs would still run in bf16; similarities of ~1.0 then
    carry ~1e-2 error, times scale=20 that is a visible error in every logit.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = [_upcast(a) for a in args]
        kwargs = {k: _upcast(v) for k, v in kwargs.items()}
        t = _first_tensor([*args, *kwargs.values()])
        device_type = t.device.type if t is not None else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


def _check_2d(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor (rows, D); got {shape}")


def _check_candidates(anchors: Tensor, candidates: Tensor, a_name="anchors", c_name="candidates") -> int:
    """Validate anchors (B, D) and candidates ((1+n)B, D); return 1 + n."""
    _check_2d(a_name, anchors)
    _check_2d(c_name, candidates)
    B, C = anchors.shape[0], candidates.shape[0]
    if B == 0:
        raise ValueError(f"{a_name} is empty (0 rows)")
    if C == 0 or C % B != 0:
        raise ValueError(
            f"{c_name} has {C} rows, which is not a positive multiple of the {B} {a_name}; expected "
            f"(1 + n) * {B} rows: the {B} positives, then each hard-negative column of {B} rows"
        )
    if anchors.shape[1] != candidates.shape[1]:
        raise ValueError(f"{a_name} have width {anchors.shape[1]} but {c_name} have width {candidates.shape[1]}")
    return C // B


def _check_same_shape(names: Sequence[str], tensors: Sequence[Tensor]) -> None:
    for name, t in zip(names, tensors):
        _check_2d(name, t)
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        got = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(names, tensors))
        raise ValueError(f"expected one row per example and the same width in every input; got {got}")


def _check_labels(name: str, labels: Tensor, B: int) -> Tensor:
    """Labels of shape (B,) or (B, 1) -> (B,)."""
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if labels.shape not in ((B,), (B, 1)):
        raise ValueError(f"{name} must have shape ({B},) or ({B}, 1), one per example; got {tuple(labels.shape)}")
    return labels.reshape(B)


def _check_ids(name: str, ids: Tensor | None, rows: int, device) -> Tensor | None:
    if ids is None:
        return None
    ids = torch.as_tensor(ids, device=device)
    if ids.shape != (rows,):
        raise ValueError(f"{name} must have shape ({rows},), one id per row; got {tuple(ids.shape)}")
    return ids


def _duplicates(row_ids: Tensor, col_ids: Tensor) -> Tensor:
    """(R,) x (K,) -> (R, K) bool: column j carries row i's id but is not row i's own column j == i."""
    same = row_ids[:, None] == col_ids[None, :]  # (R, K)
    own = torch.arange(row_ids.shape[0], device=row_ids.device)
    same[own, own] = False
    return same


# ----------------------------------------------------------------------------- in-batch contrastive

DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
PARTITION_MODES = ("joint", "per_direction")


@_float32
def mnrl(
    anchors: Tensor,
    candidates: Tensor,
    scale: float = 20.0,
    directions: Sequence[str] = ("query_to_doc",),
    partition_mode: str = "joint",
    candidate_ids: Tensor | None = None,
) -> Tensor:
    """Multiple negatives ranking loss (InfoNCE with in-batch negatives), ST's MultipleNegativesRankingLoss.

        loss = mean_i [ logZ_i - scale * cos(a_i, c_i) ],  logZ_i = logsumexp_j scale * s_ij over the directions

    anchors (B, D); candidates (C, D) = positives then n hard-negative columns (column-blocked, see module
    docstring). With the default direction this is CE(scale * cos(anchors, candidates), arange(B)).

    scale: 1 / temperature of the softmax (20 = temperature 0.05).
    directions: which similarity blocks enter the softmax of row i (GTE's improved contrastive loss):
        query_to_doc    a_i vs every candidate (always required: it holds the positive)      (B, C)
        query_to_query  a_i vs every other anchor (self excluded)                            (B, B)
        doc_to_query    p_i vs every anchor                                                  (B, B)
        doc_to_doc      p_i vs every candidate except anchor i's own positive and negatives  (B, C)
    partition_mode: "joint" = one softmax over all chosen blocks; "per_direction" = one softmax per
        block, logZ averaged (only for blocks that contain the positive: query_to_doc, doc_to_query).
    candidate_ids: optional (C,) ids of the candidate texts; a candidate with the id of anchor i's
        positive (other than the positive itself) is masked out of row i in query_to_doc, doc_to_query
        (compared by positive ids) and doc_to_doc.

    References: van den Oord et al. 2018 (InfoNCE, arXiv:1807.03748); Henderson et al. 2017
    (arXiv:1705.00652); Li et al. 2023 GTE (arXiv:2308.03281) for the extra directions.
    """
    _check_candidates(anchors, candidates)
    directions = tuple(directions)
    unknown = set(directions) - set(DIRECTIONS)
    if not directions or unknown:
        raise ValueError(f"unknown directions {sorted(unknown) or directions!r}; expected a subset of {DIRECTIONS}")
    if "query_to_doc" not in directions:
        raise ValueError("directions must include 'query_to_doc', the block that holds the positive pair")
    if partition_mode not in PARTITION_MODES:
        raise ValueError(f"unknown partition_mode {partition_mode!r}; expected one of {PARTITION_MODES}")
    if partition_mode == "per_direction" and set(directions) & {"query_to_query", "doc_to_doc"}:
        raise ValueError(
            "partition_mode='per_direction' needs every direction to contain the positive pair; "
            "'query_to_query' and 'doc_to_doc' do not, use partition_mode='joint'"
        )
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")

    B, C = anchors.shape[0], candidates.shape[0]
    ids = _check_ids("candidate_ids", candidate_ids, C, anchors.device)
    q = normalize(anchors)  # (B, D): q @ d.T below is cosine(anchors, candidates), each block sharing the norms
    d = normalize(candidates)  # (C, D)
    p = d[:B]  # (B, D)
    rows = torch.arange(B, device=anchors.device)

    blocks = {"query_to_doc": q @ d.T}  # (B, C)
    if "query_to_query" in directions:
        self_pair = torch.eye(B, dtype=torch.bool, device=anchors.device)  # (B, B)
        blocks["query_to_query"] = (q @ q.T).masked_fill(self_pair, -torch.inf)  # (B, B)
    if "doc_to_query" in directions:
        blocks["doc_to_query"] = p @ q.T  # (B, B)
    if "doc_to_doc" in directions:
        own = (torch.arange(C, device=anchors.device) % B)[None, :] == rows[:, None]  # (B, C)
        blocks["doc_to_doc"] = (p @ d.T).masked_fill(own, -torch.inf)  # (B, C)
    if ids is not None:
        dup = _duplicates(ids[:B], ids)  # (B, C)
        for name in ("query_to_doc", "doc_to_doc"):
            if name in blocks:
                blocks[name] = blocks[name].masked_fill(dup, -torch.inf)
        if "doc_to_query" in blocks:
            blocks["doc_to_query"] = blocks["doc_to_query"].masked_fill(dup[:, :B], -torch.inf)

    logits = {name: scale * s for name, s in blocks.items()}
    positive = logits["query_to_doc"][rows, rows]  # (B,)
    if partition_mode == "joint":
        log_z = torch.logsumexp(torch.cat(list(logits.values()), dim=1), dim=1)  # (B,)
    else:
        log_z = torch.stack([torch.logsumexp(s, dim=1) for s in logits.values()]).mean(0)  # (B,)
    return (log_z - positive).mean()


def mnrl_symmetric(
    anchors: Tensor, positives: Tensor, scale: float = 20.0, positive_ids: Tensor | None = None
) -> Tensor:
    """Symmetric in-batch loss, ST's MultipleNegativesSymmetricRankingLoss: anchor->positive and
    positive->anchor, each with its own softmax, averaged.

        loss = 1/2 [ CE(scale * cos(A, P), arange(B)) + CE(scale * cos(P, A), arange(B)) ]

    anchors (B, D), positives (B, D) (pairs only; for hard negatives use mnrl with
    directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction").
    scale: 1 / temperature. positive_ids: optional (B,) ids of the positive texts (see module docstring).
    Reference: Günther et al. 2024, Jina Embeddings 2 (arXiv:2310.19923).
    """
    _check_same_shape(("anchors", "positives"), (anchors, positives))
    return mnrl(
        anchors,
        positives,
        scale=scale,
        directions=("query_to_doc", "doc_to_query"),
        partition_mode="per_direction",
        candidate_ids=positive_ids,
    )


MARGIN_STRATEGIES = ("absolute", "relative")


@_float32
def gist(
    anchors: Tensor,
    candidates: Tensor,
    guide_anchors: Tensor,
    guide_candidates: Tensor,
    scale: float = 100.0,
    margin_strategy: str = "absolute",
    margin: float = 0.0,
    contrast_anchors: bool = True,
    contrast_positives: bool = True,
    candidate_ids: Tensor | None = None,
    *,
    temperature: float | None = None,
) -> Tensor:
    """Guided in-batch negatives, ST's GISTEmbedLoss / CachedGISTEmbedLoss.

        loss = CE( scale * [cos(A,P) | cos(A,A) | cos(P,P) | cos(A,N)], arange(B) ),
        where every entry whose guide similarity exceeds the guide's g_i = gcos(a_i, p_i) - margin is -inf

    anchors (B, D); candidates (C, D) = positives then n >= 0 hard-negative columns (column-blocked);
    guide_anchors (B, D_g), guide_candidates (C, D_g): the frozen guide model's embeddings of the same
    texts (computed without grad by the caller; any width D_g; `matryoshka` keeps their width).
    scale: 1 / temperature of the softmax, as every other loss here (100 = ST's temperature 0.01).
        `temperature=` is still accepted (deprecated: pass scale = 1 / temperature).
    margin_strategy: "absolute" masks gsim > g_i - margin; "relative" masks gsim > g_i - |g_i| * margin.
    contrast_anchors / contrast_positives: include the anchor-anchor / positive-positive blocks
        (self-pairs there are masked by the guide, whose self-similarity is ~1 >= g_i).
    candidate_ids: optional (C,) ids (see module docstring); masks duplicates of the positive in the
        candidate and positive-positive blocks.
    Reference: Solatorio 2024, GISTEmbed (arXiv:2402.16829).
    """
    _check_candidates(anchors, candidates)
    _check_candidates(guide_anchors, guide_candidates, "guide_anchors", "guide_candidates")
    if guide_anchors.shape[0] != anchors.shape[0] or guide_candidates.shape[0] != candidates.shape[0]:
        raise ValueError(
            f"guide embeddings must have one row per text: guide_anchors {tuple(guide_anchors.shape)} vs "
            f"anchors {tuple(anchors.shape)}, guide_candidates {tuple(guide_candidates.shape)} vs "
            f"candidates {tuple(candidates.shape)}"
        )
    if margin_strategy not in MARGIN_STRATEGIES:
        raise ValueError(f"unknown margin_strategy {margin_strategy!r}; expected one of {MARGIN_STRATEGIES}")
    if temperature is not None:
        warnings.warn("gist(temperature=t) is deprecated; pass scale=1/t, as every other loss takes",
                      DeprecationWarning, stacklevel=3)  # 3: past the _float32 wrapper, at the caller
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
    elif not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    else:
        temperature = 1 / scale  # divided by below, as ST divides: the same floats as its GISTEmbedLoss

    B, C = anchors.shape[0], candidates.shape[0]
    ids = _check_ids("candidate_ids", candidate_ids, C, anchors.device)
    rows = torch.arange(B, device=anchors.device)
    guide_ac = cosine(guide_anchors, guide_candidates)  # (B, C)
    g = guide_ac[rows, rows][:, None]  # (B, 1) the guide's anchor-positive similarity
    threshold = g - margin if margin_strategy == "absolute" else g - g.abs() * margin  # (B, 1)

    def suppress(sim: Tensor, guide_sim: Tensor, extra: Tensor | None = None) -> Tensor:
        mask = guide_sim > threshold
        if extra is not None:
            mask = mask | extra
        return sim.masked_fill(mask, -torch.inf)

    dup = _duplicates(ids[:B], ids) if ids is not None else None  # (B, C)
    own_positive = torch.zeros(B, C, dtype=torch.bool, device=anchors.device)
    own_positive[rows, rows] = True
    ac_guide = guide_ac.masked_fill(own_positive, -torch.inf)  # the positive itself is never suppressed
    ac = suppress(cosine(anchors, candidates), ac_guide, dup)  # (B, C)
    scores = [ac[:, :B]]  # (B, B) anchor-positive
    if contrast_anchors:
        scores.append(suppress(cosine(anchors, anchors), cosine(guide_anchors, guide_anchors)))  # (B, B)
    if contrast_positives:
        p, gp = candidates[:B], guide_candidates[:B]
        same_positive = ids[:B, None] == ids[None, :B] if ids is not None else None  # (B, B)
        scores.append(suppress(cosine(p, p), cosine(gp, gp), same_positive))  # (B, B)
    scores.append(ac[:, B:])  # (B, nB) anchor-negative
    logits = torch.cat(scores, dim=1) / temperature  # (B, B * (1 + contrast_anchors + contrast_positives + n))
    return F.cross_entropy(logits, rows)


# ----------------------------------------------------------------------------- pairwise / triplet

TRIPLET_DISTANCES = ("euclidean", "cosine", "manhattan", "dot")


def _distance(name: str, a: Tensor, b: Tensor) -> Tensor:
    """Row-wise distance (N, D), (N, D) -> (N,), as ST's TripletDistanceMetric (distance = -similarity)."""
    if name == "euclidean":
        return torch.linalg.vector_norm(a - b, ord=2, dim=-1)  # (N,)
    if name == "cosine":
        return 1 - pairwise_cosine(a, b)
    if name == "manhattan":
        return (a - b).abs().sum(-1)
    # ST 6.2's TripletDistanceMetric has no dot metric; this follows its convention distance = -similarity
    # with ST's dot_score similarity.
    return -(a * b).sum(-1)


@_float32
def triplet(
    anchors: Tensor, positives: Tensor, negatives: Tensor, distance: str = "euclidean", margin: float = 5.0
) -> Tensor:
    """Triplet margin loss, ST's TripletLoss.

        loss = mean_i max(0, d(a_i, p_i) - d(a_i, n_i) + margin)

    anchors, positives, negatives: (B, D) each.
    distance: "euclidean" |a-b|_2, "cosine" 1 - cos(a, b), "manhattan" |a-b|_1, "dot" -a.b.
    margin: how much farther the negative must be than the positive (5 suits unnormalized euclidean;
        use ~0.1-0.5 for cosine).
    Reference: Schroff et al. 2015, FaceNet (arXiv:1503.03832); Reimers & Gurevych 2019 (arXiv:1908.10084).
    """
    if distance not in TRIPLET_DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; expected one of {TRIPLET_DISTANCES}")
    _check_same_shape(("anchors", "positives", "negatives"), (anchors, positives, negatives))
    d_pos = _distance(distance, anchors, positives)  # (B,)
    d_neg = _distance(distance, anchors, negatives)  # (B,)
    return F.relu(d_pos - d_neg + margin).mean()


def _rank_by_score(similarities: Tensor, scores: Tensor, scale: float) -> Tensor:
    """CoSENT's ranking loss on precomputed pair similarities (N,) and gold scores (N,).

    log(1 + sum_{y_i < y_j} exp(s_i - s_j)) with s = scale * similarity, in O(N log N) as ST does: sort by
    gold score, then each s_i meets the logsumexp of -s over the strictly-higher-score suffix.
    """
    s = scale * similarities  # (N,)
    y = scores.int() if scores.dtype == torch.bool else scores
    y, order = y.sort()
    s = s[order]
    higher_start = torch.searchsorted(y, y, right=True)  # (N,) first index with a strictly higher score
    suffix = torch.logcumsumexp(-s.flip(0), dim=0).flip(0)  # (N,) logsumexp_{k >= j} -s_k
    suffix = torch.cat((suffix, s.new_full((1,), -torch.inf)))  # (N + 1,)
    terms = s + suffix[higher_start]  # (N,) log sum_{j: y_j > y_i} exp(s_i - s_j)
    return torch.logsumexp(torch.cat((s.new_zeros(1), terms)), dim=0)


@_float32
def cosent(a: Tensor, b: Tensor, scores: Tensor, scale: float = 20.0) -> Tensor:
    """CoSENT, ST's CoSENTLoss: pairs with a higher gold score must have a higher cosine.

        loss = log(1 + sum_{(i, j): y_i < y_j} exp(scale * (cos(a_i, b_i) - cos(a_j, b_j))))

    a, b: (B, D) the two sides of each pair; scores: (B,) or (B, 1) gold similarity (only the order
    matters; ties contribute nothing). scale: 1 / temperature.
    Reference: Su 2022, CoSENT (https://kexue.fm/archives/8847); Huang et al. 2024 (doi:10.1109/TASLP.2024.3402087).
    """
    _check_same_shape(("a", "b"), (a, b))
    scores = _check_labels("scores", scores, a.shape[0])
    return _rank_by_score(pairwise_cosine(a, b), scores, scale)


def _angle_similarity(x: Tensor, y: Tensor) -> Tensor:
    """ST's pairwise_angle_sim: |cos + sin| of the normalized pair viewed as complex vectors (x1 + i x2)."""
    x, y = normalize(x), normalize(y)  # (B, D)
    if x.shape[-1] % 2:  # pair dimension k with k + D/2: pad an odd width by one zero
        x, y = F.pad(x, (0, 1)), F.pad(y, (0, 1))
    cos = (x * y).sum(-1)  # (B,)
    x1, x2 = x.chunk(2, dim=-1)  # (B, D/2) each
    y1, y2 = y.chunk(2, dim=-1)
    sin = (x2 * y1 - x1 * y2).sum(-1)  # (B,)
    return (cos + sin).abs()


@_float32
def angle(a: Tensor, b: Tensor, scores: Tensor, scale: float = 20.0) -> Tensor:
    """AnglE, ST's AnglELoss: CoSENT's ranking loss on the angle similarity instead of the cosine.

        loss = log(1 + sum_{(i, j): y_i < y_j} exp(scale * (angle(a_i, b_i) - angle(a_j, b_j)))),
        angle(x, y) = |cos(x, y) + sum_k (x2_k y1_k - x1_k y2_k)| on normalized x, y split into halves

    a, b: (B, D); scores: (B,) or (B, 1) gold similarity. scale: 1 / temperature.
    Reference: Li & Li 2024, AoE: Angle-optimized Embeddings (arXiv:2309.12871).
    """
    _check_same_shape(("a", "b"), (a, b))
    scores = _check_labels("scores", scores, a.shape[0])
    return _rank_by_score(_angle_similarity(a, b), scores, scale)


# ----------------------------------------------------------------------------- Matryoshka


def matryoshka(loss_fn: Callable[..., Tensor], dims: Sequence[int], weights: Sequence[float] | None = None):
    """Matryoshka representation learning: the same loss on the first d columns of the embeddings, for each d.

        loss(*args) = sum_d w_d * loss_fn(*[normalize(x[..., :d]) if x is an embedding else x for x in args])

    Returns a function with loss_fn's signature. Which arguments are embeddings: every floating-point
    tensor with ndim >= 2 (also inside a list/tuple argument, so a cached-step loss `lambda e, y: ...`
    works), except arguments whose parameter name starts with "guide_" (gist's guide embeddings keep
    their width, as in ST, which never truncates the guide). Labels/scores (ndim 1), ids and other
    values pass through. An argument named `labels` that holds embeddings (float, 2-D or 3-D, as wide as
    the embeddings: teacher embeddings for distillation) is cut to d but not normalized, as ST cuts its
    labels. Like ST's `shrink`, truncated embeddings are re-normalized (also at the full width), which
    changes nothing for cosine-based losses but makes e.g. euclidean triplet work on unit vectors.

    dims: widths to train, each in (0, D]; evaluated from largest to smallest, as ST does.
    weights: one weight per dim (default 1 each).
    Reference: Kusupati et al. 2022, Matryoshka Representation Learning (arXiv:2205.13147).
    """
    dims = list(dims)
    if not dims:
        raise ValueError("matryoshka needs at least one dim")
    if any(not isinstance(d, int) or isinstance(d, bool) or d <= 0 for d in dims):
        raise ValueError(f"matryoshka dims must be positive integers, got {dims}")
    weights = [1.0] * len(dims) if weights is None else list(weights)
    if len(weights) != len(dims):
        raise ValueError(f"matryoshka got {len(weights)} weights for {len(dims)} dims; give one weight per dim")
    dims_weights = sorted(zip(dims, weights), key=lambda dw: dw[0], reverse=True)
    try:
        signature = inspect.signature(loss_fn)
    except (TypeError, ValueError):  # no signature (a builtin): arguments are named by position
        signature = None

    def is_embedding(x) -> bool:
        return isinstance(x, Tensor) and x.is_floating_point() and x.ndim >= 2

    def width(name: str, x) -> int | None:
        """The width of the first embedding in argument `x` (labels and guide embeddings excluded)."""
        if name.startswith(("guide_", "label")):
            return None
        if isinstance(x, (list, tuple)):
            return next((w for w in (width(name, v) for v in x) if w is not None), None)
        return x.shape[-1] if is_embedding(x) else None

    def shrink(name: str, x, d: int, full: int | None):
        """One argument at width d: embeddings truncated and re-normalized, the rest unchanged."""
        if name.startswith("guide_"):
            return x
        if name.startswith("label"):  # teacher embeddings: ST cuts labels as wide as the embeddings, never normalizes
            return x[..., :d] if is_embedding(x) and x.ndim <= 3 and x.shape[-1] == full else x
        if isinstance(x, (list, tuple)):
            return type(x)(shrink(name, v, d, full) for v in x)
        if not is_embedding(x):
            return x
        if d > x.shape[-1]:
            raise ValueError(f"matryoshka dim {d} is larger than the width {x.shape[-1]} of argument {name!r}")
        return F.normalize(x[..., :d], p=2, dim=-1)  # ST's shrink

    def at_width(args, kwargs, d: int):
        if signature is None:
            named = [(f"argument {i}", a) for i, a in enumerate(args)] + list(kwargs.items())
            full = next((w for w in (width(n, v) for n, v in named) if w is not None), None)
            return [shrink(f"argument {i}", a, d, full) for i, a in enumerate(args)], {
                k: shrink(k, v, d, full) for k, v in kwargs.items()
            }
        bound = signature.bind(*args, **kwargs)
        named = []
        for name, value in bound.arguments.items():
            var_kw = signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD
            named += list(value.items()) if var_kw else [(name, value)]
        full = next((w for w in (width(n, v) for n, v in named) if w is not None), None)
        for name, value in list(bound.arguments.items()):
            if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:  # **kwargs: by their own names
                bound.arguments[name] = {k: shrink(k, v, d, full) for k, v in value.items()}
            else:
                bound.arguments[name] = shrink(name, value, d, full)
        return bound.args, bound.kwargs

    @functools.wraps(loss_fn)  # keeps loss_fn's signature, so matryoshka(matryoshka(f, ...), ...) works
    @_float32
    def loss(*args, **kwargs):
        total = 0.0
        for d, w in dims_weights:
            call_args, call_kwargs = at_width(args, kwargs, d)
            total = total + w * loss_fn(*call_args, **call_kwargs)
        return total

    loss.__name__ = loss.__qualname__ = f"matryoshka_{getattr(loss_fn, '__name__', 'loss')}"
    return loss


# ----------------------------------------------------------------------------- cross-encoder


@_float32
def bce(logits: Tensor, labels: Tensor, pos_weight: float | Tensor | None = None) -> Tensor:
    """Binary cross-entropy on cross-encoder logits, ST's cross-encoder BinaryCrossEntropyLoss.

        loss = mean_i -[ w y_i log sigmoid(z_i) + (1 - y_i) log(1 - sigmoid(z_i)) ]

    logits: (B,) or (B, 1) raw scores z (no activation); labels: (B,) or (B, 1) targets in [0, 1].
    pos_weight: weight w of the positive term (e.g. #negatives / #positives for imbalanced data).
    Reference: Nogueira & Cho 2019, Passage Re-ranking with BERT (arXiv:1901.04085).
    """
    if not isinstance(logits, Tensor) or logits.ndim not in (1, 2) or (logits.ndim == 2 and logits.shape[1] != 1):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must have shape (B,) or (B, 1), one score per pair; got {shape}")
    B = logits.shape[0]
    labels = _check_labels("labels", labels, B).to(device=logits.device, dtype=torch.float32)
    if pos_weight is not None:
        pos_weight = torch.as_tensor(pos_weight, dtype=torch.float32, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits.reshape(B), labels, pos_weight=pos_weight)


LISTWISE_ACTIVATIONS = ("sigmoid", "identity")


@_float32
def listwise(logits: Tensor, scale: float = 10.0, activation: str = "sigmoid") -> Tensor:
    """One positive against its negatives, softmax cross-entropy, ST's cross-encoder MultipleNegativesRankingLoss.

        loss = mean_i -log softmax(scale * act(z_i))_0

    logits: (B, 1 + n) cross-encoder scores, row i = [score(q_i, positive_i), score(q_i, negative_1), ...]:
        the positive is always column 0; the negatives may be hard negatives or other rows' documents
        (in-batch), as the caller chooses when it builds the pairs.
    scale: 1 / temperature, applied after the activation (ST default 10 with sigmoid).
    activation: "sigmoid" (ST's default, bounds the logits to (0, scale)) or "identity".
    Reference: Henderson et al. 2017 (arXiv:1705.00652).
    """
    if activation not in LISTWISE_ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {LISTWISE_ACTIVATIONS}")
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must have shape (B, 1 + n) with n >= 1, positive in column 0; got {shape}")
    z = torch.sigmoid(logits) if activation == "sigmoid" else logits  # (B, 1 + n)
    targets = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(scale * z, targets)


# ----------------------------------------------------------------------------- registry

# The training CLI's --loss values; cached_mnrl and matryoshka are composed by the trainer.
LOSSES: dict[str, Callable[..., Tensor]] = {
    "mnrl": mnrl,
    "mnrl_symmetric": mnrl_symmetric,
    "gist": gist,
    "triplet": triplet,
    "cosent": cosent,
    "angle": angle,
    "bce": bce,
    "listwise": listwise,
}
