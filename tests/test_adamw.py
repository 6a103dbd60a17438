"""adamw.AdamW against torch.optim.AdamW: the same updates bit for bit (fused and foreach), state_dicts that
load into each other mid-run, torch's handling of parameters without gradients, clear errors for a state
from another model, and no torch._dynamo import (the reason the class exists)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from capabilities import needs_adamw
from minisbert.fast import kernels
from minisbert.adamw import AdamW


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))


def _groups(net):
    decay = [p for n, p in net.named_parameters() if n.endswith("weight") and not n.startswith("1.")]
    plain = [p for n, p in net.named_parameters() if not any(p is q for q in decay)]
    return [{"params": decay, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}]


def _grads(nets, step, skip_last=False):
    """The same random gradients on every net; with skip_last the last parameter gets none (frozen this step)."""
    g = torch.Generator().manual_seed(step)
    shapes = [p.shape for p in nets[0].parameters()]
    values = [torch.randn(s, generator=g) for s in shapes]
    for net in nets:
        for i, (p, v) in enumerate(zip(net.parameters(), values)):
            p.grad = None if skip_last and i == len(values) - 1 else v.clone()


def _equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("fused", [pytest.param(True, marks=needs_adamw("fused")),
                                   pytest.param(False, marks=needs_adamw("foreach"))])
def test_updates_equal_torch_adamw_bitwise(fused):
    ours_net, torch_net = _net(), _net()
    ours = AdamW(_groups(ours_net), lr=3e-3, betas=(0.8, 0.99), eps=1e-7, fused=fused)
    theirs = torch.optim.AdamW(_groups(torch_net), lr=3e-3, betas=(0.8, 0.99), eps=1e-7,
                               fused=fused or None, foreach=None if fused else True)
    for step in range(6):
        for g in ours.param_groups + theirs.param_groups:
            g["lr"] = 3e-3 * (1 - step / 10)  # train.py sets the rate each step
        _grads([ours_net, torch_net], step, skip_last=step in (1, 2))
        ours.step()
        theirs.step()
        ours.zero_grad(set_to_none=True)
        theirs.zero_grad(set_to_none=True)
        assert _equal(ours_net, torch_net), step
    last = list(ours_net.parameters())[-1]
    assert float(ours.state[last]["step"]) == 4.0  # skipped twice: torch does not count steps without a gradient
    assert all(p.grad is None for p in ours_net.parameters())
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert ours_sd["param_groups"] == theirs_sd["param_groups"]
    assert ours_sd["state"].keys() == theirs_sd["state"].keys()
    for i, s in ours_sd["state"].items():
        assert s.keys() == theirs_sd["state"][i].keys()
        for k in s:
            assert s[k].dtype == theirs_sd["state"][i][k].dtype and s[k].device == theirs_sd["state"][i][k].device
            assert torch.equal(s[k], theirs_sd["state"][i][k]), (i, k)


def _torch_running_ours() -> dict:
    """torch.optim.AdamW's flags for the kernel ours runs here in its default (fused) layout."""
    kind = kernels.adamw_kernel("cpu", torch.float32, fused=True)
    return {"fused": dict(fused=True), "foreach": dict(foreach=True), "plain": dict(foreach=False)}[kind]


@pytest.mark.parametrize("direction", ["torch->ours", "ours->torch"])
def test_state_dicts_resume_across_implementations(direction, tmp_path):
    """Three steps with one, its state saved and reloaded (torch.save/load, weights_only) into the other,
    two more steps: equal to five steps of the other alone. Old checkpoints (torch.optim) keep resuming."""
    first_net, second_net, straight_net = _net(), _net(), _net()
    make_ours = lambda net: AdamW(_groups(net), lr=1e-2)  # noqa: E731
    make_torch = lambda net: torch.optim.AdamW(_groups(net), lr=1e-2, **_torch_running_ours())  # noqa: E731
    make_first, make_second = (make_torch, make_ours) if direction == "torch->ours" else (make_ours, make_torch)
    first, straight = make_first(first_net), make_second(straight_net)
    for step in range(3):
        _grads([first_net, straight_net], step)
        first.step()
        straight.step()
    torch.save(first.state_dict(), tmp_path / "opt.pt")
    second_net.load_state_dict(first_net.state_dict())
    second = make_second(second_net)
    second.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for step in range(3, 5):
        _grads([second_net, straight_net], step)
        second.step()
        straight.step()
    if kernels.adamw_kernel("cpu", torch.float32, fused=True) == "fused":
        assert _equal(second_net, straight_net)
    else:  # torch takes `fused` from the loaded groups: its fused kernel against ours' fallback, equal to rounding
        for p, q in zip(second_net.parameters(), straight_net.parameters()):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)


def test_loading_a_state_for_another_model_is_refused():
    a = AdamW(_groups(_net()), lr=1e-3)
    other = torch.nn.Linear(6, 5)
    b = AdamW([{"params": list(other.parameters())}], lr=1e-3)
    with pytest.raises(ValueError, match="1 parameter groups, this optimizer has 2"):
        a.load_state_dict(b.state_dict())
    c = AdamW([{"params": [other.weight]}, {"params": [other.bias, torch.nn.Parameter(torch.zeros(2))]}], lr=1e-3)
    with pytest.raises(ValueError, match="another model"):
        a.load_state_dict(c.state_dict())
    with pytest.raises(ValueError, match="more than one group"):
        AdamW([{"params": [other.weight]}, {"params": [other.weight]}])


def test_zero_grad_without_set_to_none_zeroes_in_place():
    net = _net()
    opt = AdamW(net.parameters(), lr=1e-3)
    _grads([net], 0)
    grads = [p.grad for p in net.parameters()]
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is g and not g.any() for p, g in zip(net.parameters(), grads))


def test_a_training_step_does_not_import_torch_dynamo():
    """torch.optim's first use imports torch._dynamo (about a second of train.py's launch); a full step of
    minisbert's optimizer, clipping and schedule does not."""
    code = (
        "import sys, torch\n"
        "from minisbert import training\n"
        "net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))\n"
        "opt = training.make_optimizer(net, 1e-3, 0.01)\n"
        "net(torch.randn(2, 4)).sum().backward()\n"
        "torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)\n"
        "opt.step(); opt.zero_grad(); opt.state_dict()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"



def _five_steps(net, **kw):
    opt = AdamW(_groups(net), lr=3e-3, betas=(0.8, 0.99), eps=1e-7, **kw)
    for step in range(5):
        _grads([net], step, skip_last=step == 1)
        opt.step()
    return opt


def test_portable_update_is_torchs_single_tensor_formula_bitwise():
    """kernels.portable(): the plain formula, public ops tensor by tensor, equal bit for bit to
    torch.optim.AdamW(foreach=False), whichever layout (fused or not) the optimizer keeps."""
    for fused in (True, False):
        ours_net, torch_net = _net(), _net()
        with kernels.portable():
            assert kernels.adamw_kernel("cpu", torch.float32, fused=fused) == "plain"
            _five_steps(ours_net, fused=fused)
        theirs = torch.optim.AdamW(_groups(torch_net), lr=3e-3, betas=(0.8, 0.99), eps=1e-7, foreach=False)
        for step in range(5):
            _grads([torch_net], step, skip_last=step == 1)
            theirs.step()
        assert _equal(ours_net, torch_net), fused


def test_failing_kernels_fall_back_to_the_same_update(monkeypatch):
    """As on a machine without them: when torch._fused_adamw_ raises, the probe picks foreach; when the
    foreach ops raise too, the plain formula. No crash, and the update equals the plain one to rounding."""
    reference = _net()
    with kernels.portable():
        _five_steps(reference)

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this CPU")

    monkeypatch.setattr(kernels, "MODE", "auto")  # also under MINISBERT_KERNELS=portable: this test is about the probe
    monkeypatch.setattr(kernels, "_PROBED", {})
    monkeypatch.setattr(torch, "_fused_adamw_", broken)
    assert kernels.adamw_kernel("cpu", torch.float32, fused=True) == "foreach"
    net = _net()
    opt = _five_steps(net)
    assert opt.defaults["fused"]  # the layout stays the fused one: checkpoints do not depend on the machine
    for p, q in zip(net.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)
    monkeypatch.setattr(kernels, "_PROBED", {})
    monkeypatch.setattr(torch, "_foreach_lerp_", broken)
    assert kernels.adamw_kernel("cpu", torch.float32, fused=True) == "plain"
    net = _net()
    _five_steps(net)
    assert _equal(net, reference)
