"""Skip marks for tests that pin a hardware-specific kernel (minisbert/fast/kernels.py): they skip, with the reason,
where the kernel probe says no or MINISBERT_KERNELS=portable forces the portable path; and for tests that pin
the fast path itself, which skip under MINISBERT_FAST=0 (everything on the reference path)."""

from __future__ import annotations

import pytest
import torch

from minisbert import fast
from minisbert.fast import kernels


def needs_onednn(dtype: torch.dtype):
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    return pytest.mark.skipif(not kernels.onednn_linear(dtype), reason=(
        f"pins oneDNN's {name} linear, which does not run here (MINISBERT_KERNELS={kernels.MODE}, "
        f"torch CPU capability {kernels.cpu_capability()})"))


def needs_adamw(kind: str):
    return pytest.mark.skipif(kernels.adamw_kernel("cpu", torch.float32, fused=kind == "fused") != kind, reason=(
        f"pins torch's {kind} AdamW kernel, which does not run here (MINISBERT_KERNELS={kernels.MODE})"))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

needs_fast = pytest.mark.skipif(not fast.ENABLED, reason="pins the fast path, which MINISBERT_FAST=0 turns off")
