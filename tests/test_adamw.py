"""training.make_optimizer is torch.optim.AdamW: it steps like torch's plain AdamW (foreach=False, fused=False),
is a torch.optim.Optimizer that torch's LR schedulers take, resumes exactly from a saved state_dict, and runs
the kernel that kernels.py's probe chose (fused, foreach or plain: what kernels.describe reports)."""

import pytest
import torch

from capabilities import needs_adamw
from minisbert import training
from minisbert.fast import kernels


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))


def _grads(nets, step, skip_last=False):
    """The same random gradients on every net; with skip_last the last parameter gets none (frozen this step)."""
    g = torch.Generator().manual_seed(step)
    values = [torch.randn(p.shape, generator=g) for p in nets[0].parameters()]
    for net in nets:
        for i, (p, v) in enumerate(zip(net.parameters(), values)):
            p.grad = None if skip_last and i == len(values) - 1 else v.clone()


def _equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _plain_reference(ours, ours_net, torch_net):
    """torch.optim.AdamW(foreach=False, fused=False) with `ours`' groups and settings, on torch_net's twins of
    ours_net's parameters."""
    twin = dict(zip((id(p) for p in ours_net.parameters()), torch_net.parameters()))
    groups = [{"params": [twin[id(p)] for p in g["params"]], "weight_decay": g["weight_decay"]} for g in ours.param_groups]
    d = ours.defaults
    return torch.optim.AdamW(groups, lr=d["lr"], betas=d["betas"], eps=d["eps"], foreach=False, fused=False)


def _make(net, lr=3e-3, weight_decay=0.1):
    return training.make_optimizer(net, lr, weight_decay)


def test_make_optimizer_is_torch_adamw_and_steps_like_the_plain_reference():
    ours_net, torch_net = _net(), _net()
    ours = _make(ours_net)
    assert isinstance(ours, torch.optim.Optimizer) and type(ours) is torch.optim.AdamW
    assert ours.defaults["betas"] == (0.9, 0.999) and ours.defaults["eps"] == 1e-8
    assert [g["weight_decay"] for g in ours.param_groups] == [0.1, 0.0]  # biases and LayerNorm: no decay
    theirs = _plain_reference(ours, ours_net, torch_net)
    for step in range(6):
        for g in ours.param_groups + theirs.param_groups:
            g["lr"] = 3e-3 * (1 - step / 10)  # train.py sets the rate each step
        _grads([ours_net, torch_net], step, skip_last=step in (1, 2))
        ours.step()
        theirs.step()
        ours.zero_grad(set_to_none=True)
        theirs.zero_grad(set_to_none=True)
        for p, q in zip(ours_net.parameters(), torch_net.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=f"step {step}")
    last = list(ours_net.parameters())[-1]
    assert float(ours.state[last]["step"]) == 4.0  # skipped twice: no step is counted without a gradient


def test_kernel_is_the_probed_one_that_describe_reports():
    kind = kernels.adamw_kernel("cpu", torch.float32, fused=True)
    opt = _make(_net())
    ran = "fused" if opt.defaults["fused"] else "foreach" if opt.defaults["foreach"] else "plain"
    assert ran == kind
    assert kernels.describe("cpu", optimizer=True).endswith(f"adamw-{kind}")
    with kernels.portable():
        opt = _make(_net())
        assert not opt.defaults["fused"] and opt.defaults["foreach"] is False
        assert kernels.describe("cpu", optimizer=True).endswith("adamw-plain")


@pytest.mark.parametrize("kind", [pytest.param("fused", marks=needs_adamw("fused")),
                                  pytest.param("foreach", marks=needs_adamw("foreach"))])
def test_fast_kernels_equal_the_plain_update_to_rounding(kind, monkeypatch):
    if kind == "foreach":  # as on a machine whose probe refused the fused kernel
        monkeypatch.setattr(kernels, "adamw_kernel", lambda device, dtype, fused: "foreach")
    ours_net, torch_net = _net(), _net()
    ours = _make(ours_net)
    assert bool(ours.defaults["fused"]) == (kind == "fused") and bool(ours.defaults["foreach"]) == (kind == "foreach")
    theirs = _plain_reference(ours, ours_net, torch_net)
    for step in range(4):
        _grads([ours_net, torch_net], step)
        ours.step()
        theirs.step()
    for p, q in zip(ours_net.parameters(), torch_net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_torch_lr_scheduler_drives_it():
    net = _net()
    opt = _make(net, lr=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: training.lr_multiplier("linear", step, 10, 2))
    seen = []
    for step in range(5):
        seen.append(opt.param_groups[0]["lr"])
        _grads([net], step)
        opt.step()
        schedule.step()
    expected = [1e-2 * training.lr_multiplier("linear", s, 10, 2) for s in range(5)]
    assert seen == pytest.approx(expected, rel=1e-12) and all(g["lr"] == opt.param_groups[0]["lr"] for g in opt.param_groups)


def test_resume_from_a_saved_state_dict_is_exact(tmp_path):
    """Three steps, the state saved and reloaded (torch.save / torch.load(weights_only=True)) into a new
    optimizer on a copy of the parameters, three more: bit for bit the six steps of one optimizer."""
    first_net, second_net, straight_net = _net(), _net(), _net()
    first, straight = _make(first_net), _make(straight_net)
    for step in range(3):
        _grads([first_net, straight_net], step, skip_last=step == 1)
        first.step()
        straight.step()
    torch.save(first.state_dict(), tmp_path / "opt.pt")
    second_net.load_state_dict(first_net.state_dict())
    second = _make(second_net)
    second.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for step in range(3, 6):
        _grads([second_net, straight_net], step)
        second.step()
        straight.step()
    assert _equal(second_net, straight_net)
    for a, b in zip(second.state_dict()["state"].values(), straight.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_loading_a_state_for_another_model_is_refused():
    a = _make(_net())
    other = torch.nn.Linear(6, 5)
    b = torch.optim.AdamW([{"params": list(other.parameters())}], lr=1e-3)
    with pytest.raises(ValueError, match="different number of parameter groups"):
        a.load_state_dict(b.state_dict())
