"""Similarity functions between embedding matrices, spelled and signed as sentence-transformers does.

    cosine     a_i . b_j / (|a_i| |b_j|)
    dot        a_i . b_j
    euclidean  -|a_i - b_j|_2      (negated: larger is more similar)
    manhattan  -|a_i - b_j|_1

`similarity(name)(a, b)` takes a (N, D) and b (M, D) and returns (N, M);
`pairwise_similarity(name)(a, b)` takes two (N, D) and returns the (N,) diagonal.
Cosine is defined here only: `cosine(a, b) = dot(normalize(a), normalize(b))`; the losses and the
evaluators call these functions (or `normalize` once, then `dot`, which gives the same floats).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIMILARITY_FUNCTIONS = ("cosine", "dot", "euclidean", "manhattan")


def _as_tensor(x) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t[None, :] if t.ndim == 1 else t


def normalize(x):
    """Rows scaled to unit L2 norm (ST's util.normalize_embeddings): (N, D) -> (N, D)."""
    return F.normalize(_as_tensor(x), p=2, dim=-1)


def dot(a, b):
    a, b = _as_tensor(a), _as_tensor(b)
    return a @ b.T  # (N, M)


def cosine(a, b):
    """ST's util.cos_sim: (N, D), (M, D) -> (N, M)."""
    return dot(normalize(a), normalize(b))  # (N, M)


def euclidean(a, b):
    a, b = _as_tensor(a), _as_tensor(b)
    return -torch.cdist(a, b, p=2.0)  # (N, M)


def manhattan(a, b):
    a, b = _as_tensor(a), _as_tensor(b)
    return -torch.cdist(a, b, p=1.0)  # (N, M)


def pairwise_dot(a, b):
    return (_as_tensor(a) * _as_tensor(b)).sum(-1)  # (N,)


def pairwise_cosine(a, b):
    return pairwise_dot(normalize(a), normalize(b))  # (N,)


def pairwise_euclidean(a, b):
    return -(_as_tensor(a) - _as_tensor(b)).norm(p=2, dim=-1)


def pairwise_manhattan(a, b):
    return -(_as_tensor(a) - _as_tensor(b)).abs().sum(-1)


_MATRIX = {"cosine": cosine, "dot": dot, "euclidean": euclidean, "manhattan": manhattan}
_PAIRWISE = {"cosine": pairwise_cosine, "dot": pairwise_dot, "euclidean": pairwise_euclidean, "manhattan": pairwise_manhattan}


def _check(name: str) -> None:
    if name not in SIMILARITY_FUNCTIONS:
        raise ValueError(f"unknown similarity function {name!r}; expected one of {list(SIMILARITY_FUNCTIONS)}")


def similarity(name: str):
    _check(name)
    return _MATRIX[name]


def pairwise_similarity(name: str):
    _check(name)
    return _PAIRWISE[name]
