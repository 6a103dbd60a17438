"""The fast path, behind one boundary: padding-free execution (packing.py; ModernBERT's in modernbert.py),
the oneDNN kernels and their probes (kernels.py), and the custom autograd Functions they use.

The reference path (bert.py, modernbert.py, pooling.py, losses.py, gradcache.py and the models' padded
forward) is complete without this package and never imports it. The models call it in one place each,
the way transformers falls back from a named attention implementation to eager:

    hidden_states(encoder, columns)     K padded feature dicts -> K x (B_k, L_k, H) last hidden states,
                                        or None: not supported here, run the encoder's own forward
    classifier_logits(model, features)  a sequence classifier's logits (B, C), or None: run its forward
    inference(model)                    the scope of one encode / predict call (inference weights made
                                        once for it; bf16 that would be emulated is said once)
    disabled()                          inside the block, everything runs on the reference path

`MINISBERT_FAST=0` in the environment runs everything on the reference path for the whole process, with
public torch operations only (it implies the portable kernels, so the optimizer's too);
`MINISBERT_KERNELS=portable` (kernels.py) keeps the padding-free path but with public torch operations only.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor

from ..modernbert import ModernBertClassifier, ModernBertEncoder
from . import kernels, linears, modernbert, packing

_SWITCH = {"1": True, "on": True, "true": True, "yes": True, "0": False, "off": False, "false": False, "no": False}
_VALUE = os.environ.get("MINISBERT_FAST", "1").strip().lower() or "1"
if _VALUE not in _SWITCH:
    raise ValueError(f"MINISBERT_FAST={os.environ['MINISBERT_FAST']!r}: expected 1 or 0 "
                     "(0 runs everything on the reference path)")
ENABLED = _SWITCH[_VALUE]
if not ENABLED:
    kernels.MODE = "portable"


@contextlib.contextmanager
def disabled():
    """Run the block on the reference path: every backbone's own (padded) forward, portable kernels."""
    global ENABLED
    old, ENABLED = ENABLED, False
    try:
        with kernels.portable():
            yield
    finally:
        ENABLED = old


def hidden_states(encoder, columns: list[dict]) -> list[Tensor] | None:
    """K feature dicts {"input_ids" (B_k, L_k), "attention_mask" (B_k, L_k)[, "token_type_ids"]} ->
    K x (B_k, L_k, H) last hidden states in one padding-free pass (zeros at pads), or None where the fast
    path does not apply (switched off, another architecture, a wrapped linear, an empty row)."""
    if not ENABLED:
        return None
    if isinstance(encoder, ModernBertEncoder):
        return modernbert.hidden_states(encoder, columns)
    return packing.hidden_states(encoder, columns)


def classifier_logits(model, features: dict) -> Tensor | None:
    """A sequence classifier's logits (B, C) from one padding-free pass, or None where the fast path does
    not apply (then run `model(**features).logits`)."""
    if not ENABLED:
        return None
    if isinstance(model, ModernBertClassifier):
        return modernbert.classifier_logits(model, features)
    return packing.classifier_logits(model, features)


@contextlib.contextmanager
def inference(model):
    """The scope of one encode / predict call on `model`: each linear's inference weights are made once
    for it (linears.reusing_weights), and bf16 (weights or autocast) that this device would emulate is
    said once per process (kernels.warn_if_bf16_emulated: it describes the machine, so also when the fast
    path is off)."""
    param = next(model.parameters(), None)
    if param is not None:
        kind = param.device.type
        autocast_bf16 = torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.bfloat16
        if param.dtype == torch.bfloat16 or autocast_bf16:
            kernels.warn_if_bf16_emulated(param.device)
    with linears.reusing_weights():
        yield
