"""A run's state between steps, and what it writes around them; train.py's loop keeps one LoopState.

    LoopState          step, sampler position, log, best, RNG states: state_dict() is the run
                       checkpoint's training_state.pt (written by checkpoint.save_run_checkpoint): the one
                       resume contract
    RNG states         torch CPU + CUDA, numpy and python, as tensors and primitives
    best model         metric_for_best_model, validated against the keys the evaluators return
    log                log.jsonl, one JSON object per logging step and per evaluation
    messages           what a stopped run says: where its last checkpoint is and how to continue
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .checkpoint import run_checkpoints, write_run_file
from .errors import ConfigError


# ----------------------------------------------------------------------------------------------
# RNG states (torch CPU + CUDA, numpy, python) as tensors and primitives


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


# ----------------------------------------------------------------------------------------------
# best model


def resolve_metric(name: str, available: list[str]) -> str:
    """The eval key `name` refers to (with or without the "eval_" prefix), or a ConfigError listing them."""
    key = name if name.startswith("eval_") else f"eval_{name}"
    if key not in available:
        listed = ", ".join(available) if available else "none: give --eval_data or --eval_dataset"
        raise ConfigError(f"--metric_for_best_model {name!r} is not a metric of this run's evaluation; available: {listed}")
    return key


@dataclass
class Best:
    """The best value of one eval metric so far and the step it was reached at."""

    metric: str
    greater_is_better: bool
    value: float | None = None
    step: int | None = None

    def update(self, metrics: dict, step: int) -> bool:
        """Record metrics[metric] at `step`; True when it is a new best (ties keep the earlier step)."""
        v = float(metrics[self.metric])
        better = self.value is None or (v > self.value if self.greater_is_better else v < self.value)
        if better and math.isfinite(v):
            self.value, self.step = v, step
            return True
        return False

    def state(self) -> dict:
        return {"metric": self.metric, "greater_is_better": self.greater_is_better, "value": self.value, "step": self.step}


# ----------------------------------------------------------------------------------------------
# log.jsonl


class RunLog:
    """Records of the run in memory (they travel in the training state) and in output_dir/log.jsonl.

    `records` is appended to in place: pass LoopState.log, and the next checkpoint saves what was logged."""

    def __init__(self, path: Path, records: list[dict] | None = None):
        self.path = Path(path)
        self.records = records if records is not None else []
        write_run_file(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def append(self, record: dict) -> None:
        self.records.append(record)
        write_run_file(self.path, json.dumps(record) + "\n", append=True)



def format_record(record: dict, total_steps: int) -> str:
    """One human line: `step 10/375 | epoch 0.08 | loss 1.2345 | lr 4.87e-05 | ...`."""
    parts = [f"step {record['step']}/{total_steps}", f"epoch {record['epoch']:.2f}"]
    for k, v in record.items():
        if k in ("step", "epoch"):
            continue
        parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return " | ".join(parts)


# ----------------------------------------------------------------------------------------------
# LoopState: where the loop is, and the one resume contract


@dataclass
class LoopState:
    """Everything the loop needs to continue exactly where it stopped; `state_dict()` is training_state.pt.

    window: sums since the last logged step (loss_sum, steps, examples) and over the run (total_loss_sum).
    """

    total_steps: int
    warmup_steps: int
    config: str = "{}"  # the resolved TrainConfig as JSON: a resumed run checks that it continues this one
    world_size: int = 1
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    epoch_step: int = 0  # optimizer steps taken in `epoch`: the samplers' position
    examples_seen: int = 0
    window: dict = field(default_factory=lambda: {"loss_sum": 0.0, "steps": 0, "examples": 0, "total_loss_sum": 0.0})
    log: list[dict] = field(default_factory=list)  # log.jsonl's records
    best: Best | None = None
    epoch_float: float = 0.0  # epoch + its fraction done, as logged; not saved (a resumed run reads it from the log)

    FORMAT: ClassVar[int] = 1
    # The keys of training_state.pt. optimizer: its state_dict(); rng: one rng_state() per process, by rank.
    KEYS: ClassVar[tuple[str, ...]] = ("format", "step", "epoch", "epoch_step", "total_steps", "warmup_steps", "optimizer",
                                       "rng", "log", "best", "window", "examples_seen", "config", "world_size")

    def state_dict(self, optimizer, rng: list[dict]) -> dict:
        """The training state at this step: this loop's fields, the optimizer's state and every process's RNG."""
        return {"format": self.FORMAT, "step": self.step, "epoch": self.epoch, "epoch_step": self.epoch_step,
                "total_steps": self.total_steps, "warmup_steps": self.warmup_steps, "optimizer": optimizer.state_dict(),
                "rng": rng, "log": self.log, "best": self.best.state() if self.best else None, "window": dict(self.window),
                "examples_seen": self.examples_seen, "config": self.config, "world_size": self.world_size}

    def load_state_dict(self, state: dict, optimizer, rank: int = 0) -> None:
        """Continue from `state` (which check_resumable accepted): the loop's fields, the optimizer, and this
        process's RNG state last: nothing before the loop may draw random numbers after this."""
        optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.epoch_step = state["step"], state["epoch"], state["epoch_step"]
        self.examples_seen, self.window, self.log = state["examples_seen"], dict(state["window"]), list(state["log"])
        self.epoch_float = self.log[-1]["epoch"] if self.log else 0.0
        if state["best"] is not None:
            self.best = Best(**state["best"])
        set_rng_state(state["rng"][rank])

    def advance(self, loss: float, examples: int, steps_in_epoch: int) -> None:
        """One optimizer step done: its mean micro-batch `loss`, the rows it trained on."""
        self.step += 1
        self.epoch_step += 1
        self.examples_seen += examples
        self.window["examples"] += examples
        self.window["loss_sum"] += loss
        self.window["total_loss_sum"] += loss
        self.window["steps"] += 1
        self.epoch_float = self.epoch + self.epoch_step / steps_in_epoch

    def take_window(self, lr: float, grad_norm: float, elapsed: float) -> dict:
        """The log record of the steps since the last one (mean loss, examples/s); starts a new window."""
        record = {"step": self.step, "epoch": round(self.epoch_float, 4), "loss": self.window["loss_sum"] / self.window["steps"],
                  "lr": lr, "grad_norm": grad_norm, "examples_per_second": round(self.window["examples"] / max(elapsed, 1e-9), 2)}
        self.window.update(loss_sum=0.0, steps=0, examples=0)
        return record


def check_resumable(state: dict, resume_dir: Path, world_size: int, total_steps: int, warmup_steps: int,
                    config: dict) -> list[str]:
    """A ConfigError unless `state` can continue with this many processes and steps; returns the settings
    that differ from the checkpoint's (a warning, not an error)."""
    if state["world_size"] != world_size:
        raise ConfigError(
            f"--resume {resume_dir}: that run had {state['world_size']} process(es), this one has {world_size}; "
            f"resume with the same number (torchrun --nproc_per_node ...), as each process's RNG state is restored"
        )
    if (state["total_steps"], state["warmup_steps"]) != (total_steps, warmup_steps):
        raise ConfigError(
            f"--resume {resume_dir}: that run scheduled {state['total_steps']} steps ({state['warmup_steps']} warmup), "
            f"these settings give {total_steps} ({warmup_steps}); resume with the same data, batch size, epochs and max_steps"
        )
    saved = json.loads(state["config"])
    return sorted(k for k, v in saved.items() if k not in ("resume", "disable_tqdm") and config.get(k) != v)


# ----------------------------------------------------------------------------------------------
# messages of a stopped run


def interrupted_message(output_dir: Path | None) -> str:
    """Ctrl-C: the last complete checkpoint and the command that resumes from it."""
    if output_dir is None:
        return "interrupted before training started; nothing was written"
    found = run_checkpoints(output_dir)
    if not found:
        return (f"interrupted; no checkpoint was saved yet in {output_dir} (lower --save_steps to save sooner); "
                "run the same command again to start over")
    return (f"interrupted; the last complete checkpoint is {found[-1][1]}. Continue with: python train.py --config "
            f"{Path(output_dir) / 'train_config.json'} --resume latest")


def nonfinite_message(what: str, step: int, dataset: str | None, output_dir: Path) -> str:
    """A NaN/inf loss or gradient norm: where, what to try, and the last good checkpoint."""
    found = run_checkpoints(output_dir)
    last = f"the last good checkpoint is {found[-1][1]}" if found else "no checkpoint was saved yet"
    where = f" on dataset {dataset!r}" if dataset else ""
    return (f"training stopped at step {step}{where}: {what}. Try a lower --learning_rate, --dtype fp32 or "
            f"--max_grad_norm 1.0; {last}")
