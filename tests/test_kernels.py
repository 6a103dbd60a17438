"""The kernel choices (minisbert/fast/kernels.py): the fast path equals the portable one to rounding, a probe that
fails (as oneDNN's bf16 linear does on an AVX2-only CPU) falls back without a crash and with the same
results, MINISBERT_KERNELS=portable / kernels.portable() force the portable path, non-x86 CPUs take it by
default, and bf16 where it would be emulated computes correctly and says so exactly once."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from capabilities import needs_onednn
from minisbert import BiEncoder, CrossEncoder
from minisbert.fast import kernels, linears

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["A man is playing a guitar.", "Two dogs run across the field while the children watch them from far away.",
         "Hi", "The cat sleeps on the warm windowsill.", "Scientists discovered a new species of frog in the rain forest.",
         "numbers 0 1 2 3 4 5 6 7 8 9 and symbols , . ! ? ; :"] * 3
PAIRS = [(a, b) for a, b in zip(TEXTS, TEXTS[1:] + TEXTS[:1])]
BF16 = dict(atol=3e-2, rtol=0)  # bf16 noise on unit-norm embeddings (as tests/test_packing.py)


@pytest.fixture
def auto(monkeypatch):
    """kernels in "auto" mode with fresh probes (also under MINISBERT_KERNELS=portable): the tests below are
    about the probes themselves."""
    monkeypatch.setattr(kernels, "MODE", "auto")
    monkeypatch.setattr(kernels, "_PROBED", {})
    monkeypatch.setattr(kernels, "_WARNED", set())


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs):
    return BiEncoder.from_pretrained(tiny_model_dirs["bert"]).eval()


def _encode(model, dtype):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        return model.encode(TEXTS, batch_size=8, convert_to_tensor=True)


def _grads(model, features):
    model.zero_grad(set_to_none=True)
    model(features).pow(2).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _no_dropout_copy(model):
    import copy

    model = copy.deepcopy(model).train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


@pytest.mark.parametrize("dtype", [pytest.param(d, marks=needs_onednn(d)) for d in (torch.float32, torch.bfloat16)])
def test_fast_inference_equals_portable(tiny, dtype, auto):
    """encode() through oneDNN's fused linears equals the portable path (F.linear + SDPA) to rounding."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bf16 emulated: not what this test is about
        fast = _encode(tiny, dtype)
        with kernels.portable():
            slow = _encode(tiny, dtype)
    torch.testing.assert_close(fast, slow, **(dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else BF16))


@needs_onednn(torch.float32)
def test_fast_training_equals_portable(tiny, auto):
    """A float32 training step through oneDNN's matmuls (both directions) equals the portable one's gradients."""
    model = _no_dropout_copy(tiny)
    features = model.tokenize(TEXTS)
    fast = _grads(model, features)
    with kernels.portable():
        slow = _grads(model, features)
    assert fast.keys() == slow.keys()
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_failing_onednn_probe_falls_back_without_a_crash(tiny, tiny_model_dirs, tiny_classifier_dirs, auto, monkeypatch):
    """As on an AMD Zen 3 (AVX2, no AVX-512): oneDNN's linear raises "could not create a primitive
    descriptor" and the weight reorder refuses bf16. The probe says no, nothing crashes, and encode (fp32,
    bf16 autocast, bf16 weights), predict and a training step give the portable path's results."""
    with kernels.portable(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref32, ref16 = _encode(tiny, torch.float32), _encode(tiny, torch.bfloat16)
        ref_grads = _grads(_no_dropout_copy(tiny), tiny.tokenize(TEXTS))
        ce = CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"])
        ref_scores = ce.predict(PAIRS, convert_to_tensor=True)

    def broken(*args, **kwargs):
        raise RuntimeError("could not create a primitive descriptor for the inner product forward propagation primitive")

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", broken)
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", broken)
    assert not kernels.onednn_linear(torch.float32) and not kernels.onednn_linear(torch.bfloat16)
    assert not kernels.onednn_prepack() and kernels.describe("cpu") == "portable"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        torch.testing.assert_close(_encode(tiny, torch.float32), ref32)
        torch.testing.assert_close(_encode(tiny, torch.bfloat16), ref16)
        bf16 = BiEncoder.from_pretrained(tiny_model_dirs["bert"], dtype=torch.bfloat16)
        torch.testing.assert_close(bf16.encode(TEXTS, convert_to_tensor=True), ref32, **BF16)
    grads = _grads(_no_dropout_copy(tiny), tiny.tokenize(TEXTS))
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name])
    torch.testing.assert_close(ce.predict(PAIRS, convert_to_tensor=True), ref_scores)


def test_a_probe_that_computes_wrongly_is_not_used(auto, monkeypatch):
    """The probe compares with F.linear: a kernel that runs but disagrees is not chosen."""
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: real(*a) * 1.01)
    assert not kernels.onednn_linear(torch.float32)


def test_only_the_reorder_failing_keeps_onednn_bf16_with_plain_weights(tiny, auto, monkeypatch):
    """An older CPU that runs oneDNN's bf16 linear but not its weight reorder: plain bf16 weights."""
    if not kernels.onednn_linear(torch.bfloat16):
        pytest.skip("oneDNN's bf16 linear does not run here")
    with kernels.portable():
        ref = _encode(tiny, torch.bfloat16)
    monkeypatch.setattr(kernels, "_PROBED", {})
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", lambda *a: (_ for _ in ()).throw(RuntimeError("no")))
    assert kernels.onednn_linear(torch.bfloat16) and not kernels.onednn_prepack()
    torch.testing.assert_close(_encode(tiny, torch.bfloat16), ref, **BF16)


@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD"])
def test_float32_matmuls_take_mkl_on_intel_and_onednn_elsewhere(tiny, auto, monkeypatch, vendor):
    """Intel CPUs: float32 linears with nothing fused in are F.linear (MKL), in inference and training; only
    the GELU-fused ones stay oneDNN's. Other vendors: oneDNN's for all. Same encodings either way."""
    if not kernels.onednn_linear(torch.float32) or not torch.backends.mkl.is_available():
        pytest.skip("oneDNN's float32 linear or MKL is not available here")
    with kernels.portable():
        ref = _encode(tiny, torch.float32)
    monkeypatch.setattr(kernels, "cpu_vendor", lambda: vendor)
    calls = []
    real = kernels.linear_pointwise
    monkeypatch.setattr(kernels, "linear_pointwise", lambda *a, **k: calls.append(a[3] if len(a) > 3 else k.get("gelu", False)) or real(*a, **k))
    intel = vendor == "GenuineIntel"
    assert kernels.mkl_float32() == intel
    x, w, b = kernels._probe_inputs((6, 16), (24, 16), (24,))
    with torch.inference_mode():
        y = linears.linear(x, w, b, torch.float32)
        assert calls == ([] if intel else [False])
        if intel:
            assert torch.equal(y, F.linear(x, w, b))
        torch.testing.assert_close(linears.linear(x, w, b, torch.float32, gelu=True), F.gelu(F.linear(x, w, b)))
        assert calls[-1] is True  # GELU fused in: oneDNN's, on every vendor
    assert linears.onednn_float32(x) == (not intel)
    calls.clear()
    torch.testing.assert_close(_encode(tiny, torch.float32), ref)
    assert (False in calls) == (not intel)


def test_probes_draw_no_random_numbers(auto):
    state = torch.get_rng_state()
    kernels.onednn_linear(torch.float32), kernels.onednn_prepack(), kernels.bf16_native("cpu")
    kernels.adamw_kernel("cpu", torch.float32, fused=True)
    assert torch.equal(torch.get_rng_state(), state)


def test_portable_context_and_non_x86_use_no_onednn(tiny, auto, monkeypatch):
    """kernels.portable() and a non-x86 CPU (oneDNN's linear is unmeasured there) run no oneDNN call, in
    inference and in training."""
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(a[0].dtype) or real(*a))
    model = _no_dropout_copy(tiny)

    def run():
        calls.clear()
        _encode(tiny, torch.float32)
        _grads(model, model.tokenize(TEXTS))
        return list(calls)

    with kernels.portable():
        assert kernels.is_portable() and run() == []
        assert kernels.describe("cpu", optimizer=True) == "portable (forced), adamw-plain"
    assert not kernels.is_portable()
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert run() == [] and kernels.describe("cpu") == "portable"


def test_environment_switch(tmp_path):
    """MINISBERT_KERNELS=portable in the environment forces the portable path for the whole process; an
    unknown value is refused with the values it takes."""
    code = "from minisbert.fast import kernels; import torch; print(kernels.describe('cpu', torch.bfloat16, optimizer=True))"
    env = dict(os.environ, PYTHONPATH=str(ROOT), MINISBERT_KERNELS="portable")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("portable (forced)") and out.strip().endswith("adamw-plain")
    bad = subprocess.run([sys.executable, "-c", code], env=env | {"MINISBERT_KERNELS": "fastest"}, capture_output=True, text=True)
    assert bad.returncode != 0 and "MINISBERT_KERNELS='fastest': expected one of ('auto', 'portable')" in bad.stderr


# ----------------------------------------------------------------------------- bf16 told honestly


def _emulated(record):
    return [w for w in record if issubclass(w.category, RuntimeWarning) and "bf16 is emulated" in str(w.message)]


def test_emulated_bf16_warns_once_naming_the_cpu(tiny, tiny_classifier_dirs, auto, monkeypatch):
    monkeypatch.setattr(kernels, "bf16_native", lambda device: False)
    ce = CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _encode(tiny, torch.float32)  # fp32: nothing to say
        assert _emulated(record) == []
        for _ in range(2):
            _encode(tiny, torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ce.predict(PAIRS)
    (only,) = _emulated(record)
    message = str(only.message)
    assert f"torch CPU capability {kernels.cpu_capability()}" in message and "float32" in message


def test_native_bf16_says_nothing(tiny, auto, monkeypatch):
    monkeypatch.setattr(kernels, "bf16_native", lambda device: True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _encode(tiny, torch.bfloat16)
    assert _emulated(record) == []


@pytest.mark.skipif(platform.machine().lower() not in kernels.X86, reason="oneDNN's ISA cap emulates an x86 CPU")
def test_an_avx2_only_cpu_for_real(tiny_model_dirs, tmp_path, auto):
    """oneDNN capped to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2) is what an AMD Zen 3 offers:
    in a fresh process bf16 is found emulated, oneDNN's bf16 linear is not used, bf16 encode (weights and
    autocast) runs and agrees with fp32, and the warning comes once."""
    code = f"""
import json, warnings, torch
from minisbert import BiEncoder
from minisbert.fast import kernels
warnings.simplefilter("always")
texts = {TEXTS!r}
with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    fp32 = BiEncoder.from_pretrained({str(tiny_model_dirs["bert"])!r})
    ref = fp32.encode(texts, convert_to_tensor=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = fp32.encode(texts, convert_to_tensor=True)
    bf16 = BiEncoder.from_pretrained({str(tiny_model_dirs["bert"])!r}, dtype=torch.bfloat16).encode(texts, convert_to_tensor=True)
print(json.dumps(dict(describe=kernels.describe("cpu", torch.bfloat16), fp32=kernels.describe("cpu"),
                      warnings=sum("bf16 is emulated" in str(w.message) for w in record),
                      diff=max(float((auto - ref).abs().max()), float((bf16 - ref).abs().max())))))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT), ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2",
               MINISBERT_KERNELS="auto", MINISBERT_FAST="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["describe"] == "onednn-bf16":
        pytest.skip("this torch build ignores oneDNN's ISA cap")
    # float32 is not capped: oneDNN's, or MKL's matmuls on an Intel CPU (kernels.mkl_float32), as in this process
    assert result["describe"] == "portable (bf16 emulated)" and result["fp32"] == kernels.describe("cpu")
    assert result["fp32"] in ("onednn-fp32", "mkl+onednn-fp32")
    assert result["warnings"] == 1 and result["diff"] < BF16["atol"]


def test_packing_reads_the_choice_at_call_time_and_only_for_cpu_tensors(tiny, auto):
    """The switch applies to models loaded before it (nothing is decided at load); a tensor on any other
    device (CUDA, here "meta") never reaches oneDNN, in inference or in training."""
    x = torch.zeros(4, 8)
    other = torch.zeros(4, 8, device="meta")
    with torch.inference_mode():
        assert linears.inference_dtype(x) == (torch.float32 if kernels.onednn_linear(torch.float32) else None)
        assert linears.inference_dtype(other) is None
        with kernels.portable():
            assert linears.inference_dtype(x) is None
    assert linears.onednn_float32(x) == (kernels.onednn_linear(torch.float32) and not kernels.mkl_float32())
    assert not linears.onednn_float32(other)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_portable_gelu_backward_equals_atens(dtype):
    u = torch.linspace(-6, 6, 997).to(dtype)
    g = torch.cos(torch.arange(997.0)).to(dtype)
    with kernels.portable():
        ours = kernels.gelu_backward(g, u)
    ref = torch.ops.aten.gelu_backward(g, u)
    x = u.float().requires_grad_()
    (by_autograd,) = torch.autograd.grad(torch.nn.functional.gelu(x), x, g.float())
    if dtype == torch.float32:
        torch.testing.assert_close(ours, by_autograd, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.float(), ref.float(), **(dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)))
