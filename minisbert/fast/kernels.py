"""Every private or hardware-specific torch operation minisbert runs, each behind a probe, with a portable
fallback that gives the same results to float rounding.

    onednn_linear(dtype)    oneDNN's linear with bias / GELU fused in (torch.ops.mkldnn._linear_pointwise), for
                            CPU tensors in float32 or bfloat16; fallback F.linear (+ F.gelu)
    mkl_float32()           whether float32 matmuls with nothing fused in take MKL's sgemm (F.linear, torch.mm)
                            instead: on Intel CPUs
    onednn_prepack()        oneDNN's blocked bf16 weight layout (torch.ops.mkldnn._reorder_linear_weight);
                            fallback the plain (out, in) weight
    adamw_kernel(dev, dt)   torch._fused_adamw_, or torch's torch._foreach_* sequence; fallback the AdamW formula
                            tensor by tensor with public ops (torch.optim.AdamW(foreach=False)'s op sequence)
    gelu_backward(g, u)     aten's gelu_backward (fast/packing.py's recomputing feed-forward); fallback its formula
    bf16_native(device)     whether bf16 matmuls run natively there; `warn_if_bf16_emulated` says so once
    describe(device, dtype) the kernels a run uses, for train.py's startup line and the benchmark table

A probe runs once per process (and dtype / device type): a tiny real call inside try/except, compared with
the public operation's result on the same inputs; any exception or disagreement means "no", never a crash.
Capability flags alone are not proof: on an AVX2-only CPU `_linear_pointwise` exists but cannot build a bf16
primitive. The probes draw no random numbers from torch's generators (runs stay reproducible).

The portable path everywhere: MINISBERT_KERNELS=portable in the environment, or `with kernels.portable():`
(the padding-free path still runs, on public operations; MINISBERT_FAST=0 turns the whole fast path off).
oneDNN's linear is chosen only on x86 CPUs, where it was measured (benchmarks/README.md, "What the
measurements decided": which CPUs get the oneDNN kernels); elsewhere (e.g. aarch64 with oneDNN + ACL) the
portable path is the default until someone measures it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("auto", "portable")
MODE = os.environ.get("MINISBERT_KERNELS", "auto").strip().lower() or "auto"
if MODE not in MODES:
    raise ValueError(f"MINISBERT_KERNELS={os.environ['MINISBERT_KERNELS']!r}: expected one of {MODES} "
                     "('portable' forces public torch operations everywhere)")
X86 = ("x86_64", "amd64", "i386", "i686", "x86")  # platform.machine() spellings of the CPUs oneDNN was measured on

_FORCED = 0  # depth of nested `portable()` blocks
_PROBED: dict[tuple, bool | str] = {}  # probe key -> result, once per process
_WARNED: set[str] = set()  # device types already warned about emulated bf16


@contextlib.contextmanager
def portable():
    """Inside the block every operation takes the portable path (public torch operations only)."""
    global _FORCED
    _FORCED += 1
    try:
        yield
    finally:
        _FORCED -= 1


def is_portable() -> bool:
    return MODE == "portable" or _FORCED > 0


def _probed(key: tuple, probe) -> bool | str:
    if key not in _PROBED:
        try:
            _PROBED[key] = probe()
        except Exception:  # a probe never crashes the caller: whatever failed is simply not used
            _PROBED[key] = False
    return _PROBED[key]


def _probe_inputs(*shapes: tuple[int, ...]) -> list[Tensor]:
    """Deterministic probe tensors with values in [-1, 1), without touching torch's random generators."""
    out = []
    for i, shape in enumerate(shapes):
        n = 1
        for s in shape:
            n *= s
        out.append(torch.sin(torch.arange(n, dtype=torch.float32) * (0.37 + 0.11 * i)).reshape(shape))
    return out


# ----------------------------------------------------------------------------- oneDNN linear (CPU)


def linear_pointwise(x: Tensor, weight: Tensor, bias: Tensor | None, gelu: bool = False) -> Tensor:
    """oneDNN's x W^T + b (then exact GELU), (T, in) -> (T, out), for CPU tensors of one dtype; `weight` may
    be a prepacked one (`reorder_linear_weight`). Only where `onednn_linear(x.dtype)` says it works."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [], "none" if gelu else "")


def reorder_linear_weight(weight: Tensor) -> Tensor:
    """A bf16 (out, in) weight in oneDNN's blocked layout, for `linear_pointwise`. Only where `onednn_prepack()`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, None)


def _probe_onednn_linear(dtype: torch.dtype) -> bool:
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    x, w, b = _probe_inputs((32, 16), (24, 16), (24,))
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        ref = F.linear(x, w, b)  # (32, 24) float32
        plain = linear_pointwise(x.to(dtype), w.to(dtype), b.to(dtype)).float()
        fused = linear_pointwise(x.to(dtype), w.to(dtype), b.to(dtype), gelu=True).float()
    return torch.allclose(plain, ref, **tol) and torch.allclose(fused, F.gelu(ref), **tol)


def onednn_linear(dtype: torch.dtype) -> bool:
    """True where `linear_pointwise` runs in `dtype` (float32 or bfloat16) and is chosen: an x86 CPU, the
    probe passed, the portable path not forced."""
    if is_portable() or dtype not in (torch.float32, torch.bfloat16) or platform.machine().lower() not in X86:
        return False
    return bool(_probed(("onednn_linear", dtype), lambda: _probe_onednn_linear(dtype)))


def cpu_vendor() -> str:
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD", ...) from /proc/cpuinfo, else platform.processor()'s
    words (Windows names the vendor there), else ""."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    words = platform.processor().split()
    return next((w for w in words if w in ("GenuineIntel", "AuthenticAMD")), "")


def mkl_float32() -> bool:
    """True where float32 matmuls with nothing fused in (no GELU) take MKL's sgemm (F.linear, torch.mm) rather
    than oneDNN's linear: Intel CPUs, where MKL, Intel's own library, ran every measured matmul 3-12% faster
    than oneDNN, in inference and in training (benchmarks/README.md, decision table: float32 matmuls through
    MKL on Intel CPUs). On other x86 CPUs MKL's sgemm runs AVX2 code, so oneDNN's is kept there."""
    if is_portable():
        return False
    return bool(_probed(("mkl_float32",), lambda: torch.backends.mkl.is_available()
                        and platform.machine().lower() in X86 and cpu_vendor() == "GenuineIntel"))


def _probe_prepack() -> bool:
    if not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    x, w, b = (t.bfloat16() for t in _probe_inputs((32, 16), (24, 16), (24,)))
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        packed = linear_pointwise(x, reorder_linear_weight(w), b).float()
        plain = linear_pointwise(x, w, b).float()
    return torch.allclose(packed, plain, atol=1e-2, rtol=1e-2)


def onednn_prepack() -> bool:
    """True where bf16 weights can be handed to `linear_pointwise` prepacked (`reorder_linear_weight`)."""
    return onednn_linear(torch.bfloat16) and bool(_probed(("onednn_prepack",), _probe_prepack))


# ----------------------------------------------------------------------------- GELU backward


def gelu_backward(grad: Tensor, u: Tensor) -> Tensor:
    """d/du of exact GELU u Phi(u), times grad: aten's gelu_backward kernel, or on the portable path the
    formula Phi(u) + u phi(u) with public ops (equal to rounding)."""
    if not is_portable():
        return torch.ops.aten.gelu_backward(grad, u)
    cdf = 0.5 * (1 + torch.erf(u * 0.7071067811865476))  # Phi(u)
    pdf = torch.exp(-0.5 * u * u) * 0.3989422804014327  # phi(u) = exp(-u^2 / 2) / sqrt(2 pi)
    return grad * (cdf + u * pdf)


# ----------------------------------------------------------------------------- AdamW updates


def adamw_plain(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, weight_decay, eps) -> None:
    """The AdamW step tensor by tensor with public operations: torch.optim.adam._single_tensor_adam's
    sequence (decoupled decay, not capturable), so it equals torch.optim.AdamW(foreach=False) bitwise."""
    for p, g, m, v, s in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        s += 1
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        n = s.item()
        step_size = lr / (1 - beta1**n)
        denom = (v.sqrt() / (1 - beta2**n) ** 0.5).add_(eps)
        p.addcdiv_(m, denom, value=-step_size)


def adamw_fused(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, weight_decay, eps) -> None:
    """torch._fused_adamw_: one pass over all tensors (what torch.optim.AdamW(fused=True) runs)."""
    torch._foreach_add_(steps, 1)
    torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=lr, beta1=beta1,
                        beta2=beta2, weight_decay=weight_decay, eps=eps, maximize=False)


def adamw_foreach(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, weight_decay, eps) -> None:
    """torch.optim.adam._multi_tensor_adam's op sequence (not capturable), so results are bitwise equal."""
    torch._foreach_add_(steps, 1)
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    counts = [float(s.item()) for s in steps]
    step_size = [(lr / (1 - beta1**n)) * -1 for n in counts]
    correction2_sqrt = [(1 - beta2**n) ** 0.5 for n in counts]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)


ADAMW = {"fused": adamw_fused, "foreach": adamw_foreach, "plain": adamw_plain}


def _probe_adamw(kind: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Two steps of `kind` on tiny tensors against `adamw_plain` on copies."""
    p, g = (t.to(device=device, dtype=dtype) for t in _probe_inputs((5, 3), (5, 3)))
    runs = []
    for update in (ADAMW[kind], adamw_plain):
        state = [p.clone()], [g.clone()], [torch.zeros_like(p)], [torch.zeros_like(p)]
        step = [torch.zeros((), dtype=torch.float32, device=device if kind == "fused" else "cpu")]
        for _ in range(2):
            update(*state, step, lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8)
        runs.append(state[0][0].float())
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    return torch.allclose(runs[0], runs[1], atol=tol, rtol=tol) and not torch.equal(runs[0], p.float())


def adamw_kernel(device: torch.device, dtype: torch.dtype, fused: bool) -> str:
    """"fused" (asked for, and it works on this device type and dtype), else "foreach" where it works,
    else "plain"; "plain" whenever the portable path is forced."""
    if is_portable():
        return "plain"
    device = torch.device(device)
    for kind in (("fused", "foreach") if fused else ("foreach",)):
        if _probed(("adamw", kind, device.type, dtype), lambda: _probe_adamw(kind, device, dtype)):
            return kind
    return "plain"


# ----------------------------------------------------------------------------- bf16 honesty


def _probe_bf16_cpu() -> bool:
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(supported is not None and supported()) and _probe_onednn_linear(torch.bfloat16)


def bf16_native(device) -> bool:
    """Whether bf16 matmuls run on bf16 hardware on `device`, not emulated. CPU: oneDNN reports bf16
    support (AVX-512 BW/VL/DQ, AVX-NE-CONVERT, AMX, or Arm BF16) and a real bf16 oneDNN linear agrees with
    float32; otherwise torch emulates bf16 matmuls, correct but many times slower than float32. CUDA: compute
    capability 8.0 or newer. Other devices: assumed native (nothing to warn about). Independent of the
    portable switch: it describes the machine, not the kernels chosen."""
    device = torch.device(device)
    if device.type == "cpu":
        return bool(_probed(("bf16_native", "cpu"), _probe_bf16_cpu))
    if device.type == "cuda":
        return bool(_probed(("bf16_native", "cuda"), lambda: torch.cuda.get_device_capability(device) >= (8, 0)))
    return True


def cpu_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:
        return "unknown"


def warn_if_bf16_emulated(device) -> bool:
    """Warn (once per process and device type) when bf16 would be emulated on `device`; True if it warned."""
    device = torch.device(device)
    if device.type in _WARNED or bf16_native(device):
        return False
    _WARNED.add(device.type)
    if device.type == "cpu":
        found = f"this CPU ({platform.machine()}, torch CPU capability {cpu_capability()}) has no native bf16 support in oneDNN"
    else:
        found = f"{device.type} device {torch.cuda.get_device_name(device) if device.type == 'cuda' else device} " \
                "has no native bf16 (compute capability < 8.0)"
    warnings.warn(f"minisbert: bf16 is emulated here: {found}. Results stay correct, but bf16 matmuls run many times "
                  "slower than float32; use float32 (train.py --dtype fp32, dtype=torch.float32).", RuntimeWarning, stacklevel=2)
    return True


def describe(device, dtype: torch.dtype = torch.float32, optimizer: bool = False) -> str:
    """The kernels a run on `device` in `dtype` uses, e.g. "onednn-fp32", "mkl+onednn-fp32" (MKL's matmuls,
    oneDNN's with GELU fused in), "onednn-bf16", "portable",
    "portable (forced)", "portable (bf16 emulated)"; with `optimizer`, the AdamW update too (", adamw-fused")."""
    device = torch.device(device)
    if is_portable():
        name = "portable (forced)"
    elif device.type == "cpu" and onednn_linear(dtype):
        name = "onednn-bf16" if dtype == torch.bfloat16 else "mkl+onednn-fp32" if mkl_float32() else "onednn-fp32"
    else:
        name = "portable"
    if dtype == torch.bfloat16 and not bf16_native(device):
        name += " (bf16 emulated)"
    if optimizer:
        name += f", adamw-{adamw_kernel(device, torch.float32, fused=True)}"
    return name
