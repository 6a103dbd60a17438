"""Pooling: token embeddings (B, L, D) + attention mask (B, L) -> sentence embeddings (B, D).

Each mode is a plain function with sentence-transformers 6.2's formula (spec section 2), so
minisbert and ST give the same numbers for the same hidden states:

    cls                    H[b, first attended position]
    max                    max_t H[b, t]                 over attended t
    mean                   sum_t H m / max(sum_t m, 1e-9)   (sum in float32 under bf16/fp16)
    mean_sqrt_len_tokens   sum_t H m / sqrt(max(sum_t m, 1e-9))
    weightedmean           sum_t H m w / sum_t m w,  w_t = t + 1 - (left padding of row b)
    lasttoken              H[b, last attended position] (a zero vector for an all-pad row)

Several modes concatenate along the last dim in the order given (ST 5.4+ lists it; the legacy
config implies the fixed order of `MODES`).
`include_prompt=False` drops the first `prompt_length` attended tokens from the mask, on a
copy: mutating the caller's mask broke ST's GradCache replay (ST PR #3862).

Shapes: B batch, L tokens, D width.
"""

from __future__ import annotations

import torch

# ST's fixed concatenation order (st/sentence_transformer/modules/pooling.py:16-43).
MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


def _accumulation_dtype(h: torch.Tensor) -> torch.dtype:
    # Sums of hundreds of bf16 values lose digits; ST 6.2 accumulates in float32.
    return torch.float32 if h.dtype in (torch.float16, torch.bfloat16) else h.dtype


def _left_padding(mask: torch.Tensor) -> torch.Tensor:
    """(B,) number of leading zeros of each row of `mask` (B, L)."""
    return mask.long().cumsum(1).eq(0).sum(1)


def exclude_prompt(mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """A copy of `mask` (B, L) with the first `prompt_length` attended positions of each row zeroed."""
    if not prompt_length:
        return mask
    start = _left_padding(mask)  # (B,)
    pos = torch.arange(mask.shape[1], device=mask.device)  # (L,)
    in_prompt = (pos[None, :] >= start[:, None]) & (pos[None, :] < start[:, None] + prompt_length)  # (B, L)
    return mask.masked_fill(in_prompt, 0)


def pool(
    hidden: torch.Tensor,
    mask: torch.Tensor,
    modes: tuple[str, ...] | list[str] = ("mean",),
    *,
    prompt_length: int = 0,
    include_prompt: bool = True,
) -> torch.Tensor:
    """Pool `hidden` (B, L, D) under `mask` (B, L) with each of `modes`; returns (B, len(modes)*D)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"unknown pooling mode {unknown or modes!r}; expected one or more of {list(MODES)}")
    original = mask
    if not include_prompt:
        mask = exclude_prompt(mask, prompt_length)
    outs = [_POOLERS[m](hidden, mask, original) for m in modes]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)  # (B, k*D)


def _cls(h, m, _original):
    first = m.long().argmax(dim=1)  # (B,) first attended position
    return h[torch.arange(h.shape[0], device=h.device), first]  # (B, D)


def _max(h, m, _original):
    return h.masked_fill(m[..., None] == 0, float("-inf")).amax(dim=1)  # (B, D)


def _masked_sum(h, m):
    acc = _accumulation_dtype(h)
    mf = m[..., None].to(acc)  # (B, L, 1)
    return (h.to(acc) * mf).sum(1), mf.sum(1).clamp(min=1e-9)  # (B, D), (B, 1)


def _mean(h, m, _original):
    total, count = _masked_sum(h, m)
    return (total / count).to(h.dtype)


def _mean_sqrt(h, m, _original):
    total, count = _masked_sum(h, m)
    return (total / count.sqrt()).to(h.dtype)


def _weightedmean(h, m, original):
    acc = _accumulation_dtype(h)
    pos = torch.arange(1, h.shape[1] + 1, device=h.device)[None, :]  # (1, L)
    w = (pos - _left_padding(original)[:, None]).to(acc) * m.to(acc)  # (B, L)
    total = (h.to(acc) * w[..., None]).sum(1)  # (B, D)
    return (total / w.sum(1, keepdim=True).clamp(min=1e-9)).to(h.dtype)


def _lasttoken(h, m, _original):
    # Last attended position: argmax over the flipped mask; an all-zero row picks a zeroed vector.
    L = m.shape[1]
    last = L - 1 - m.long().flip(1).argmax(dim=1)  # (B,)
    masked = h * m[..., None].to(h.dtype)  # (B, L, D)
    return masked[torch.arange(h.shape[0], device=h.device), last]


_POOLERS = {
    "cls": _cls,
    "max": _max,
    "mean": _mean,
    "mean_sqrt_len_tokens": _mean_sqrt,
    "weightedmean": _weightedmean,
    "lasttoken": _lasttoken,
}
