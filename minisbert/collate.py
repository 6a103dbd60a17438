"""Text columns -> token ids once, before training; row indices -> padded feature dicts per batch.

Tokenization is kept off the training step's critical path: every text column is tokenized once
up front, unpadded and truncated to the model's max_length, and stored as one flat int array
plus row offsets. A batch then only gathers its rows and pads them to the longest row of the
batch, which is what `BiEncoder.tokenize` / `CrossEncoder.tokenize` would produce for the same
texts (tests pin this).

    TokenizedColumn      the token ids of one column (or of one (query, document) pair column)
    tokenize_column      texts [+ a prompt] -> TokenizedColumn, counting truncated inputs
    tokenize_pairs       two text columns -> one TokenizedColumn of pairs (cross-encoders)
    collate              TokenizedColumn + row indices -> {"input_ids" (b, L), "attention_mask" (b, L), ...}
    trim_padding         a feature dict cut to its longest row (drops trailing all-padding columns)

It takes plain values, never a model: the tokenizer, the max length, and the model's `input_names` (the
features its backbone takes); a column keeps those of them the tokenizer gives (XLM-R's gives no
token_type_ids), as the model's own `tokenize` does. Shapes: b rows of a batch, L the longest row of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .tokenizer import Truncation, prompt_length, tokenize


@dataclass
class TokenizedColumn:
    """Unpadded token ids of N rows: row i is ids[offsets[i]:offsets[i+1]]."""

    ids: np.ndarray  # (total tokens,) int64
    type_ids: np.ndarray | None  # (total tokens,) token_type_ids, or None when the model takes none
    offsets: np.ndarray  # (N + 1,) int64
    keys: tuple[str, ...]  # the features the model's forward takes: input_ids, attention_mask[, token_type_ids]
    pad_id: int
    pad_type_id: int
    padding_side: str
    prompt_length: int = 0  # tokens of the training prompt (bi-encoders; pooling may exclude them)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _pack(encoded, input_names, tokenizer, prompt_tokens: int) -> TokenizedColumn:
    keys = tuple(k for k in input_names if k in encoded)  # (B, L) features the tokenizer gives and the model takes
    rows = encoded["input_ids"]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = lambda lists: np.fromiter((t for r in lists for t in r), dtype=np.int64, count=int(offsets[-1]))  # noqa: E731
    type_ids = flat(encoded["token_type_ids"]) if "token_type_ids" in keys else None
    return TokenizedColumn(
        ids=flat(rows), type_ids=type_ids, offsets=offsets, keys=keys,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        pad_type_id=getattr(tokenizer, "pad_token_type_id", 0), padding_side=tokenizer.padding_side,
        prompt_length=prompt_tokens,
    )


def tokenize_column(tokenizer, texts, *, max_length: int, input_names, prompt: str | None = None,
                    truncation: Truncation | None = None) -> TokenizedColumn:
    """One text column of a bi-encoder's data, with the training prompt prepended (as ST's collator):
    `tokenize_column(model.tokenizer, texts, max_length=model.max_length, input_names=model.input_names)`."""
    if prompt:
        texts = [prompt + t for t in texts]
    encoded = tokenize(tokenizer, list(texts), max_length=max_length, truncation=truncation)
    return _pack(encoded, input_names, tokenizer, prompt_length(tokenizer, prompt))


def tokenize_pairs(tokenizer, queries, documents, *, max_length: int, input_names,
                   truncation: Truncation | None = None) -> TokenizedColumn:
    """(query, document) pairs for a cross-encoder: one column of joint inputs."""
    encoded = tokenize(tokenizer, list(queries), list(documents), max_length=max_length, truncation=truncation)
    return _pack(encoded, input_names, tokenizer, 0)


def collate(column: TokenizedColumn, indices) -> dict:
    """Rows `indices` of a column, padded to their longest: {"input_ids" (b, L), "attention_mask" (b, L), ...}."""
    indices = np.asarray(indices, dtype=np.int64)
    starts, ends = column.offsets[indices], column.offsets[indices + 1]
    lengths = ends - starts  # (b,)
    b, L = len(indices), int(lengths.max()) if len(indices) else 0
    input_ids = np.full((b, L), column.pad_id, dtype=np.int64)
    mask = np.zeros((b, L), dtype=np.int64)
    type_ids = np.full((b, L), column.pad_type_id, dtype=np.int64) if column.type_ids is not None else None
    for r, (s, e, n) in enumerate(zip(starts, ends, lengths)):
        cols = slice(0, n) if column.padding_side == "right" else slice(L - n, L)
        input_ids[r, cols] = column.ids[s:e]
        mask[r, cols] = 1
        if type_ids is not None:
            type_ids[r, cols] = column.type_ids[s:e]
    arrays = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": type_ids}
    features = {k: torch.from_numpy(arrays[k]) for k in column.keys}
    features["prompt_length"] = column.prompt_length
    return features


def trim_padding(features: dict) -> dict:
    """Drop the trailing columns where no row has a token: {"attention_mask" (b, L), ...} -> (b, L') with L'
    the end of the longest row. Rows cut from a batch (GradCache's chunks) keep the whole batch's width,
    and a forward would carry those pad columns through pooling and its backward. Every (b, L) tensor is
    cut alike; real tokens and their positions (also under left padding, whose trailing columns are all
    real) are unchanged, so the embeddings are too."""
    mask = features["attention_mask"]
    used = mask.any(0).nonzero()  # (L' or fewer, 1)
    width = int(used.max()) + 1 if used.numel() else mask.shape[1]
    if width == mask.shape[1]:
        return features
    return {k: v[:, :width] if isinstance(v, torch.Tensor) and v.shape == mask.shape else v for k, v in features.items()}
