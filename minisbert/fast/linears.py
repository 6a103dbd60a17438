"""The linear layers of the fast path: oneDNN's kernels where kernels.py's probes say they work, F.linear
elsewhere, with the same results to float rounding.

    inference_dtype(x)            the dtype oneDNN's fused inference linears run in for x, or None
    linear(x, W, b, dtype, gelu)  x W^T + b (then GELU): oneDNN with bias and GELU fused in for inference,
                                  `Linear` for float32 training on CPU, F.linear elsewhere (and for
                                  float32 without GELU on Intel CPUs: MKL, kernels.mkl_float32)
    dense(x, lin, dtype, gelu)    `linear` on an nn.Linear's parameters (or its inference copies)
    mm(a, b, bias)                a b (+ bias) outside autograd, through oneDNN in float32 on CPU (not on
                                  Intel CPUs, where MKL is the faster one: kernels.mkl_float32)
    Linear                        x W^T + b with both directions' matmuls through `mm`
    reusing_weights()             the scope in which inference copies of the weights are made once
    prepared(dtype, *linears)     those copies: stacked (the fused QKV), cast, in bf16 in oneDNN's layout

Each choice is a row of benchmarks/README.md's decision table.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import minisbert.fast.kernels as kernels  # the module itself, not the package (fast/__init__.py imports us)


def inference_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype oneDNN's fused linear kernels run in (see `linear`), or None to use F.linear: only for
    inference (no autograd) on CPU, in float32, or in bfloat16 (bf16 weights, or CPU autocast to bf16),
    where the kernel probe says oneDNN runs in that dtype (kernels.onednn_linear)."""
    if torch.is_grad_enabled() or x.device.type != "cpu":
        return None
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None
    else:
        dtype = x.dtype if x.dtype in (torch.float32, torch.bfloat16) else None
    return dtype if dtype is not None and kernels.onednn_linear(dtype) else None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype | None, gelu: bool = False) -> Tensor:
    """x W^T + b (then exact GELU when `gelu`), (T, in) -> (T, out).

    dtype given: oneDNN's linear with the bias (and GELU) fused in, computing in `dtype` (inputs cast to it,
    as autocast would; `weight`, `bias` may come from `prepared`): one pass instead of F.linear's matmul,
    bias and GELU passes (benchmarks/README.md, decision table: oneDNN fused linear for inference). It has
    no autograd formula of its own: dtype None (training) takes `Linear` in float32 on CPU, F.linear elsewhere.
    Results agree with F.linear to float rounding (~1e-6 in float32).
    """
    if dtype is not None:
        x = x.to(dtype)
        if dtype == torch.float32 and not gelu and kernels.mkl_float32():
            return F.linear(x, weight, bias)  # nothing to fuse: MKL's sgemm is the faster one there
        if not weight.is_mkldnn:
            weight, bias = weight.to(dtype), bias.to(dtype) if bias is not None else None
        return kernels.linear_pointwise(x, weight, bias, gelu)
    y = Linear.apply(x, weight, bias) if onednn_float32(x) else F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def onednn_float32(x: Tensor) -> bool:
    """True where float32 matmuls of training go through oneDNN (`mm`): on CPU, in float32, outside autocast,
    where MKL is not the faster one (kernels.mkl_float32: Intel CPUs take F.linear / torch.mm)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and kernels.onednn_linear(torch.float32) and not kernels.mkl_float32())


def mm(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """a b (+ bias), (m, k) x (k, n) -> (m, n), outside autograd.

    In float32 on CPU outside autocast (`onednn_float32`) this is oneDNN's linear on b^T (copied to rows when b
    is not a transposed row-major matrix): torch.mm and F.linear take MKL's sgemm there, which runs AVX2 code on
    AMD CPUs, at the cost of oneDNN's cache of compiled kernels (benchmarks/README.md, decision table: float32
    training matmuls through oneDNN). On Intel CPUs, and elsewhere (autocast, other dtypes and devices) it is torch.mm /
    F.linear under the caller's autocast state, as autograd would run them.
    """
    if onednn_float32(a) and b.dtype == torch.float32:
        return linear(a.contiguous(), b.t().contiguous(), bias, torch.float32)
    return F.linear(a, b.t(), bias) if bias is not None else a.mm(b)


class Linear(torch.autograd.Function):
    """x W^T + b, (T, in) -> (T, out), with every matmul of both directions through `mm`: for float32
    training on CPU where `onednn_float32` chooses oneDNN over autograd's F.linear (MKL; see `mm`). Gradients
    equal F.linear's to float rounding (tests/test_packing.py)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.bias = bias is not None
        return mm(x, weight.t(), bias)  # (T, out)

    @staticmethod
    def backward(ctx, dy):  # dy (T, out)
        x, weight = ctx.saved_tensors
        dx = mm(dy, weight) if ctx.needs_input_grad[0] else None  # (T, in)
        dw = mm(dy.t(), x) if ctx.needs_input_grad[1] else None  # (out, in)
        db = dy.sum(0) if ctx.bias and ctx.needs_input_grad[2] else None  # (out,)
        return dx, dw, db


# The inference copies of the weights while `reusing_weights()` is active: {(dtype, parameter ids): (W, b)}.
_REUSED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("minisbert_reused_weights", default=None)
# bf16 weights are reused in oneDNN's own blocked layout (kernels.onednn_prepack), which it would otherwise
# reorder on every call; float32 keeps the parameters themselves (benchmarks/README.md, decision table:
# inference weights made once per encode / predict call).


@contextlib.contextmanager
def reusing_weights():
    """Inside the block, each linear's inference weights (the fused QKV matrix, the bf16 casts, oneDNN's
    packed layout) are made once and reused by every batch, instead of once per batch. For one encode()
    or predict() call: under torch.inference_mode the weights do not change within it. Nested blocks
    share the outer one's copies; they are dropped when the outermost block ends."""
    token = _REUSED.set({} if _REUSED.get() is None else _REUSED.get())
    try:
        yield
    finally:
        _REUSED.reset(token)


def prepared(dtype: torch.dtype, *linears: nn.Linear) -> tuple[Tensor, Tensor | None]:
    """The weight (out, in) and bias (out,) of `linears` stacked along their outputs (one for a plain
    linear, query/key/value for the fused QKV projection), ready for `linear` in `dtype`: cast, and in
    bf16 packed for oneDNN. Made once per `reusing_weights()` block, else on every call."""
    cache = _REUSED.get()
    key = (dtype, *(id(lin.weight) for lin in linears))
    if cache is not None and key in cache:
        return cache[key]
    weight = linears[0].weight if len(linears) == 1 else torch.cat([lin.weight for lin in linears])  # (out, in)
    biases = [lin.bias for lin in linears]
    bias = None if any(b is None for b in biases) else biases[0] if len(biases) == 1 else torch.cat(biases)  # (out,)
    if cache is not None and dtype != weight.dtype:
        weight, bias = weight.to(dtype), bias.to(dtype) if bias is not None else None
        if dtype == torch.bfloat16 and kernels.onednn_prepack():
            weight = kernels.reorder_linear_weight(weight)
    if cache is not None:
        cache[key] = (weight, bias)
    return weight, bias


def dense(x: Tensor, lin: nn.Linear, dtype: torch.dtype | None, gelu: bool = False) -> Tensor:
    """lin(x) (then exact GELU) through `linear`: the layer's own parameters in training (dtype None), their
    inference copies (`prepared`) else, (t, in) -> (t, out). A wrapped or hooked linear (LoRA, ...) runs its
    own forward: its weights must not be bypassed."""
    if type(lin) is not nn.Linear or lin._forward_hooks or lin._forward_pre_hooks:
        y = lin(x)
        return F.gelu(y) if gelu else y
    return linear(x, *((lin.weight, lin.bias) if dtype is None else prepared(dtype, lin)), dtype, gelu)
