"""AdamW with torch.optim.AdamW's update and state_dict, without torch.optim.

Why not torch.optim.AdamW: every method of torch.optim.Optimizer (its constructor's add_param_group,
state_dict, load_state_dict, zero_grad) is wrapped in torch._disable_dynamo, whose first call imports
torch._dynamo, and with it sympy and torch.distributed's FSDP: 1.1-1.6 s of the launch of train.py on the
2-core CPU, more than the first training step itself. This class runs the same kernels
(torch._fused_adamw_, or torch's foreach formula where the fused kernel does not run, or the formula
tensor by tensor where neither does; kernels.adamw_kernel probes which) and keeps torch's state_dict
layout, so a checkpoint written by either one resumes in the other:

    {"state": {index: {"step": () float32, "exp_avg": like p, "exp_avg_sq": like p}},
     "param_groups": [{"lr", "betas", "eps", "weight_decay", ..., "params": [index, ...]}]}

with the parameters numbered in group order, as torch numbers them. Parameters whose .grad is None are
skipped (their step count does not advance), as torch does.

Reference: Loshchilov & Hutter 2019, Decoupled Weight Decay Regularization (arXiv:1711.05101).
"""

from __future__ import annotations

import torch

from .fast import kernels

FUSED_DEVICES = ("cpu", "cuda")  # where torch._fused_adamw_ has kernels that torch.optim.AdamW(fused=True) uses too


class AdamW:
    """p <- p - lr * wd * p, then the Adam step with bias correction (torch.optim.AdamW's order).

    `params`: tensors, or dicts {"params": [...], <any hyperparameter>} as torch takes them. `fused=None`
    picks the fused kernel when every parameter is a floating-point tensor on a device in FUSED_DEVICES.
    `fused` fixes the state layout (as torch's flag does); each step runs the fused kernel only where the
    probe says it works on that device and dtype (else foreach, else the plain formula: same update).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, fused: bool | None = None):
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        tensors = [p for g in groups for p in g["params"]]
        if len({id(p) for p in tensors}) != len(tensors):
            raise ValueError("AdamW: a parameter appears in more than one group (or twice in one)")
        if fused is None:
            fused = bool(tensors) and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in tensors)
        self.defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "amsgrad": False,
                         "maximize": False, "foreach": None if fused else True, "capturable": False,
                         "differentiable": False, "fused": bool(fused) or None, "decoupled_weight_decay": True}
        self.param_groups = [{**self.defaults, **g, "params": list(g["params"])} for g in groups]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ the update

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("AdamW does not support sparse gradients")
            for p in params:
                if p not in self.state:
                    self.state[p] = self._new_state(p, group)
            by_kind: dict[tuple, list[torch.Tensor]] = {}  # one kernel launch per (device, dtype)
            for p in params:
                by_kind.setdefault((p.device, p.dtype), []).append(p)
            beta1, beta2 = group["betas"]
            for (device, dtype), same in by_kind.items():
                state = [self.state[p] for p in same]
                update = kernels.ADAMW[kernels.adamw_kernel(device, dtype, fused=bool(group["fused"]))]
                update(same, [p.grad for p in same], [s["exp_avg"] for s in state], [s["exp_avg_sq"] for s in state],
                       [s["step"] for s in state], lr=group["lr"], beta1=beta1, beta2=beta2,
                       weight_decay=group["weight_decay"], eps=group["eps"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_()
                    p.grad.requires_grad_(False)
                    p.grad.zero_()

    @staticmethod
    def _new_state(p: torch.Tensor, group: dict) -> dict[str, torch.Tensor]:
        step = torch.zeros((), dtype=torch.float32, device=p.device if group["fused"] else "cpu")  # torch's placement
        return {"step": step, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}

    # ------------------------------------------------------------------ torch.optim's state_dict layout

    def state_dict(self) -> dict:
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": [index[id(p)] for p in group["params"]]})
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups):
            raise ValueError(f"optimizer state has {len(saved)} parameter groups, this optimizer has {len(self.param_groups)}")
        sizes = [(len(s["params"]), len(g["params"])) for s, g in zip(saved, self.param_groups)]
        if any(a != b for a, b in sizes):
            raise ValueError(f"optimizer state's groups hold {[a for a, _ in sizes]} parameters, this optimizer's "
                             f"{[b for _, b in sizes]}: it was saved for another model")
        groups = [{**s, "params": g["params"]} for s, g in zip(saved, self.param_groups)]
        by_index = {i: (p, g) for s, g in zip(saved, groups) for i, p in zip(s["params"], g["params"])}  # -> (param, group)
        self.state = {}
        for i, values in state_dict["state"].items():
            p, group = by_index[int(i)]
            self.state[p] = {k: _placed(k, v, p, group) for k, v in values.items()}
        self.param_groups = groups


def _placed(key: str, value, p: torch.Tensor, group: dict):
    """A saved state tensor moved where this parameter's updates need it (torch's rule: `step` float32 on
    the parameter's device when fused, as saved otherwise; moments in the parameter's dtype and device)."""
    if not isinstance(value, torch.Tensor):
        return value
    if key == "step":
        return value.to(dtype=torch.float32, device=p.device) if group["fused"] else value
    return value.to(dtype=p.dtype, device=p.device) if p.is_floating_point() else value.to(device=p.device)

