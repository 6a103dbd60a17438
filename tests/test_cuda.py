"""The CUDA path: packing, bf16 autocast, fused AdamW, the cached step's RNG replay and train.py on a GPU,
each against the same computation done another way (the padded forward, fp32, torch's plain AdamW, the
first pass of the cached step, sentence-transformers).

They skip without CUDA. MINISBERT_TEST_DEVICE=cpu runs them on the CPU instead (benchmarks/gpu_check.py
--device cpu does, as a dry run of the GPU check).
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch

from minisbert import BiEncoder, fast, gradcache, training
from minisbert.fast import kernels, packing

DEVICE = os.environ.get("MINISBERT_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                reason="needs a CUDA device (MINISBERT_TEST_DEVICE=cpu runs these tests on the CPU)")
ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["A man is playing a guitar.", "Two dogs run across the field while the children watch them from far away.",
         "Hi", "The cat sleeps on the warm windowsill.", "Scientists discovered a new species of frog in the rain forest.",
         "numbers 0 1 2 3 4 5 6 7 8 9 and symbols , . ! ? ; :"] * 2


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs):
    return BiEncoder.from_pretrained(tiny_model_dirs["bert"], device=DEVICE)


def _without_dropout(model):
    model = copy.deepcopy(model).train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def _grads(model, features, padded=False):
    model.zero_grad(set_to_none=True)
    with fast.disabled() if padded else torch.enable_grad():
        out = model(features)
    out.pow(2).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_equals_padded_on_the_device(tiny):
    """Embeddings and gradients of the packed pass equal the backbone's padded forward on the device."""
    model = _without_dropout(tiny)
    features = {k: v.to(DEVICE) for k, v in model.tokenize(TEXTS).items() if torch.is_tensor(v)}
    assert packing.supports(model.backbone)
    out, grads = _grads(model, features)
    ref_out, ref_grads = _grads(model, features, padded=True)
    assert out.device.type == torch.device(DEVICE).type
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-4, rtol=1e-4, msg=name)


def test_bf16_autocast_close_to_fp32_on_the_device(tiny):
    with torch.inference_mode():
        ref = tiny.encode(TEXTS, convert_to_tensor=True)
        with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
            ours = tiny.encode(TEXTS, convert_to_tensor=True)
    assert torch.nn.functional.cosine_similarity(ours.float(), ref).min() > 0.99


def test_encode_on_the_device_equals_the_cpu(tiny, tiny_model_dirs):
    cpu = BiEncoder.from_pretrained(tiny_model_dirs["bert"], device="cpu")
    torch.testing.assert_close(tiny.encode(TEXTS, convert_to_tensor=True).cpu(), cpu.encode(TEXTS, convert_to_tensor=True),
                               atol=1e-5, rtol=1e-5)


def test_encode_equals_sentence_transformers_on_the_device(minilm_path, stsb_sentences):
    st = pytest.importorskip("sentence_transformers")
    sentences = stsb_sentences[:64]
    ours = BiEncoder.from_pretrained(minilm_path, device=DEVICE).encode(sentences, convert_to_tensor=True)
    theirs = st.SentenceTransformer(str(minilm_path), device=DEVICE).encode(sentences, convert_to_tensor=True)
    torch.testing.assert_close(ours, theirs.to(ours.device), atol=2e-5, rtol=1e-4)


def test_adamw_on_the_device_runs_the_probed_kernel_and_equals_plain_adamw():
    """training.make_optimizer on the device: torch.optim.AdamW with the kernel the probe picks there, equal to
    torch's plain AdamW (foreach=False, fused=False) to float rounding."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5)).to(DEVICE)
    ref = copy.deepcopy(net)
    kind = kernels.adamw_kernel(torch.device(DEVICE), torch.float32, fused=True)
    ours = training.make_optimizer(net, 1e-2, 0.01)
    assert ("fused" if ours.defaults["fused"] else "foreach" if ours.defaults["foreach"] else "plain") == kind
    twin = dict(zip(map(id, net.parameters()), ref.parameters()))
    theirs = torch.optim.AdamW([{"params": [twin[id(p)] for p in g["params"]], "weight_decay": g["weight_decay"]}
                                for g in ours.param_groups], lr=1e-2, foreach=False, fused=False)
    for step in range(4):
        g = torch.Generator().manual_seed(step)
        for p, q in zip(net.parameters(), ref.parameters()):
            p.grad = torch.randn(p.shape, generator=g).to(DEVICE)
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_cached_step_replays_the_dropout_masks_on_the_device(tiny):
    """With dropout on, each chunk's replay (stage 3) draws the dropout masks of its no-grad pass (stage 1):
    the device's RNG is saved through the chunk's tensors, which must be on the device (train.py moves them)."""
    model = copy.deepcopy(tiny).train()
    features = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in model.tokenize(TEXTS).items()}
    ranges = gradcache.chunk_ranges(len(TEXTS), 4)
    first, states = gradcache.embed_without_graph(model, [features], ranges)
    if torch.device(DEVICE).type == "cuda":
        assert all(s.cuda_devices for s in states[0])
    replayed = []
    for (begin, end), state in zip(ranges, states[0]):
        with state.restored():
            replayed.append(model(gradcache._chunk(features, begin, end)).detach())
    torch.testing.assert_close(torch.cat(replayed), first[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model(features).detach(), first[0], atol=1e-4)  # dropout is really on


def test_train_py_on_the_device_bf16_cached_and_tf32(tiny_model_dirs, tmp_path, monkeypatch, capsys):
    """train.py on the device: bf16 autocast, the cached step (its chunks on the device, so the RNG replay
    sees the device's generator) and --tf32; finite losses, the kernels named at startup."""
    sys.path.insert(0, str(ROOT))
    import train

    captured = []
    real = gradcache.RngState.capture
    monkeypatch.setattr(gradcache.RngState, "capture", classmethod(lambda cls, chunk: captured.append(
        {v.device.type for v in chunk.values() if torch.is_tensor(v)}) or real.__func__(cls, chunk)))
    cfg = train.TrainConfig(model=str(tiny_model_dirs["bert"]), data=str(ROOT / "examples" / "data" / "nli-triplets-small.jsonl"),
                            output_dir=str(tmp_path / "run"), eval_data=[], batch_size=8, mini_batch_size=4, max_steps=3,
                            dtype="bf16", tf32=True, device=DEVICE, logging_steps=1, save_steps=0, disable_tqdm=True)
    final = train.main(cfg)
    assert torch.isfinite(torch.tensor(final["train_loss"]))
    assert captured and all(devices == {torch.device(DEVICE).type} for devices in captured)
    assert "kernels: " in capsys.readouterr().out
