"""The pieces train.py's loop is made of, each with its own rules; train.py reads top to bottom around them.

    column losses      which embedding columns go where in each --loss, and what data each one needs
    optimizer          AdamW with weight decay off for biases and norm weights (transformers' rule)
    LR schedule        warmup, then linear / cosine / constant, as a pure function of the step
    steps per epoch    sampler batches -> optimizer steps (accumulation); the batches are global,
                       each process takes its share of them (distributed.World.shard)
    training state     optimizer, step, sampler position, RNG states, the log: one file beside the
                       model in every checkpoint, loaded with torch.load(weights_only=True)
    checkpoints        atomic write, `latest`, rotation that never deletes the best
    output_dir lock    one run at a time per output_dir: a lock file with the pid, stale locks taken over
    best model         metric_for_best_model, validated against the keys the evaluators return
    log                log.jsonl, one JSON object per logging step and per evaluation

Nothing here imports train.py; the model is only saved and loaded through its own methods.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import socket
import random
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from . import kernels, losses
from .checkpoint import atomic_dir


class ConfigError(ValueError):
    """A training setting that cannot work; the message names the flag (or file, row) and the fix."""


class NonFiniteLoss(RuntimeError):
    """The loss or the gradient became NaN/inf; the message names the step and the last good checkpoint."""


class SaveError(OSError):
    """A checkpoint or model folder could not be written (disk full, permissions); the message names the
    folder and the last complete checkpoint, which the failed save left untouched."""


# What a failed write raises: OSError from Python's files, SafetensorError from safetensors (a full disk
# while writing model.safetensors is "Error while serializing: I/O error: No space left on device").
WRITE_ERRORS = (OSError, SafetensorError)


# ----------------------------------------------------------------------------------------------
# column losses: outputs of the model for each column of a batch -> one scalar
#
# `outputs` is a list with one tensor per column: bi-encoders give (B, D) embeddings of the text
# columns in role order (anchor, positive, negative_1, ...); cross-encoders give (B, 1) logits of
# each (column 0, column k) pair, k = 1..n. Every column loss has the signature
# `fn(outputs, labels, guide_embeddings=None)`, so `losses.matryoshka` can wrap it (it truncates the
# (B, D) tensors in `outputs` and leaves labels and `guide_*` arguments alone), the cached step can
# call it, and a distributed run can all-gather `outputs` before calling it.

CROSS_ENCODER_LOSSES = ("bce", "listwise")
# Losses whose negatives are the other rows of the batch: a duplicate text would be a false
# negative, hence the no-duplicates sampler by default.
IN_BATCH_LOSSES = ("mnrl", "mnrl_symmetric", "cached_mnrl", "gist")
LOSS_NAMES = tuple(losses.LOSSES) + ("cached_mnrl", "matryoshka")
EMBEDDING_LOSSES = tuple(n for n in LOSS_NAMES if n not in CROSS_ENCODER_LOSSES and n != "matryoshka")
# Losses that train SimCSE-style when the data has one text column: (x, x) with two dropout masks.
SIMCSE_LOSSES = ("mnrl", "cached_mnrl", "mnrl_symmetric")
# The loss's own default for --scale (1 / temperature) and --margin when the flag is not given.
DEFAULT_SCALE = {"mnrl": 20.0, "cached_mnrl": 20.0, "mnrl_symmetric": 20.0, "gist": 100.0, "cosent": 20.0,
                 "angle": 20.0, "listwise": 10.0}
DEFAULT_MARGIN = {"triplet": 5.0, "gist": 0.0}


def check_loss_data(loss: str, num_text_columns: int, has_labels: bool, where: str) -> None:
    """Raise ConfigError unless a dataset with these columns can train `loss` (the base loss, not matryoshka)."""
    n = num_text_columns
    need = {
        "mnrl": (n >= 1, "1 text column (SimCSE) or anchor, positive[, negatives...]"),
        "cached_mnrl": (n >= 1, "1 text column (SimCSE) or anchor, positive[, negatives...]"),
        "mnrl_symmetric": (n in (1, 2), "1 text column (SimCSE) or exactly anchor, positive"),
        "gist": (n >= 2, "anchor, positive[, negatives...]"),
        "triplet": (n == 3, "exactly anchor, positive, negative"),
        "cosent": (n == 2 and has_labels, "two text columns and a score column (label/score)"),
        "angle": (n == 2 and has_labels, "two text columns and a score column (label/score)"),
        "bce": (n == 2 and has_labels, "query, document and a 0/1 label column (label/score)"),
        "listwise": (n >= 3, "query, positive, negative_1[, negative_2...]"),
    }
    ok, expected = need[loss]
    if not ok:
        label = " and a label column" if has_labels else ", no label column"
        raise ConfigError(f"{where}: --loss {loss} needs {expected}; the data has {n} text column(s){label}")


def column_roles(loss: str, columns: list[str]) -> str:
    """What each text column is to `loss` (the base loss): "anchor -> anchor, positive -> positive, ..."."""
    if len(columns) == 1 and loss in SIMCSE_LOSSES:
        return f"{columns[0]} -> anchor and positive (SimCSE: two dropout masks)"
    if loss in ("cosent", "angle"):
        roles = [f"text {k + 1}" for k in range(len(columns))]
    elif loss == "bce":
        roles = ["query", "document"]
    elif loss == "listwise":
        roles = ["query", "positive"] + [f"negative {k}" for k in range(1, len(columns) - 1)]
    elif loss == "triplet":
        roles = ["anchor", "positive", "negative"]
    else:  # in-batch losses: every other row's positive and negatives are negatives too
        roles = ["anchor", "positive"] + [f"hard negative {k}" for k in range(1, len(columns) - 1)]
    return ", ".join(f"{c} -> {r}" for c, r in zip(columns, roles))


def column_loss(loss: str, *, scale: float | None = None, margin: float | None = None, distance: str = "euclidean",
                pos_weight: float | None = None):
    """The column loss `fn(outputs, labels, guide_embeddings=None) -> scalar` for a base --loss name."""
    scale = DEFAULT_SCALE.get(loss) if scale is None else scale
    margin = DEFAULT_MARGIN.get(loss) if margin is None else margin
    # In-batch losses also take `candidate_ids` ((C,) ids of the candidate texts, column-blocked like
    # the candidates) to mask a candidate that repeats the anchor's positive (train.py --mask_duplicates).
    if loss in ("mnrl", "cached_mnrl"):
        def fn(outputs, labels, guide_embeddings=None, candidate_ids=None):
            return losses.mnrl(outputs[0], torch.cat(outputs[1:]), scale=scale,  # candidates ((1+n)B, D)
                               candidate_ids=candidate_ids)
    elif loss == "mnrl_symmetric":
        def fn(outputs, labels, guide_embeddings=None, candidate_ids=None):
            positive_ids = None if candidate_ids is None else candidate_ids[: outputs[1].shape[0]]  # (B,)
            return losses.mnrl_symmetric(outputs[0], outputs[1], scale=scale, positive_ids=positive_ids)
    elif loss == "gist":
        def fn(outputs, labels, guide_embeddings=None, candidate_ids=None):
            return losses.gist(outputs[0], torch.cat(outputs[1:]), guide_embeddings[0], torch.cat(guide_embeddings[1:]),
                               scale=scale, margin=margin, candidate_ids=candidate_ids)
    elif loss == "triplet":
        def fn(outputs, labels, guide_embeddings=None):
            return losses.triplet(outputs[0], outputs[1], outputs[2], distance=distance, margin=margin)
    elif loss == "cosent":
        def fn(outputs, labels, guide_embeddings=None):
            return losses.cosent(outputs[0], outputs[1], labels, scale=scale)
    elif loss == "angle":
        def fn(outputs, labels, guide_embeddings=None):
            return losses.angle(outputs[0], outputs[1], labels, scale=scale)
    elif loss == "bce":
        def fn(outputs, labels, guide_embeddings=None):
            return losses.bce(outputs[0], labels, pos_weight=pos_weight)  # outputs[0]: (B, 1) logits
    elif loss == "listwise":
        def fn(outputs, labels, guide_embeddings=None):
            return losses.listwise(torch.cat(outputs, dim=1), scale=scale)  # (B, 1 + n), positive first
    else:
        raise ConfigError(f"--loss {loss!r} is not a base loss; expected one of {', '.join(LOSS_NAMES)}")
    fn.__name__ = loss
    return fn


def default_matryoshka_dims(width: int) -> list[int]:
    """The model's width, then the usual smaller Matryoshka widths (384 -> [384, 256, 128, 64, 32])."""
    return [width] + [d for d in (1024, 768, 512, 256, 128, 64, 32) if d < width]


# ----------------------------------------------------------------------------------------------
# optimizer

# transformers' get_decay_parameter_names (spec 5.1): no decay for biases and normalization weights.
_NO_DECAY = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


def decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters that get weight decay: not in a LayerNorm module, not matching _NO_DECAY."""
    in_layernorm = {
        f"{module_name}.{p}" if module_name else p
        for module_name, module in model.named_modules() if isinstance(module, torch.nn.LayerNorm)
        for p, _ in module.named_parameters(recurse=False)
    }
    return {n for n, _ in model.named_parameters() if n not in in_layernorm and not _NO_DECAY.search(n.lower())}


def make_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """torch.optim.AdamW (betas 0.9/0.999, eps 1e-8, as ST), two groups: decayed and not.

    Fused (one pass over all parameters, transformers' default too) where this torch has the flag, as
    nanoGPT checks it, and kernels.py's probe found the fused kernel working on the parameters' device type
    and dtype; else foreach, else the plain loop, which the portable path forces
    (benchmarks/README.md, decision table: AdamW).
    """
    decay = decay_parameter_names(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]
    fused_available = "fused" in inspect.signature(torch.optim.AdamW).parameters
    kinds = {kernels.adamw_kernel(p.device, p.dtype, fused=fused_available) for _, p in params}
    kind = min(kinds, key=("plain", "foreach", "fused").index, default="plain")  # the one every parameter can run
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True}, "plain": {"foreach": False}}[kind]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.999), eps=1e-8, **flags)


# ----------------------------------------------------------------------------------------------
# learning-rate schedule: a multiplier of the base LR as a function of the optimizer step

SCHEDULES = ("linear", "cosine", "constant")


def resolve_warmup(total_steps: int, warmup_steps: int, warmup_ratio: float) -> int:
    """warmup_steps when > 0, else ceil(total * warmup_ratio) (transformers' rule)."""
    return warmup_steps if warmup_steps > 0 else math.ceil(total_steps * warmup_ratio)


def lr_multiplier(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """transformers' schedules: step/warmup during warmup, then
    linear (T - t) / (T - w), cosine 0.5 (1 + cos(pi (t - w) / (T - w))), or constant 1.

    `step` counts the optimizer steps already taken: the k-th step (1-based) uses step = k - 1, and
    step = T is the value after the last one (0 for linear and cosine)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ConfigError(f"--lr_scheduler_type {schedule!r} is unknown; expected one of {', '.join(SCHEDULES)}")


# ----------------------------------------------------------------------------------------------
# steps per epoch, and the one place where a global batch would be split across processes


def steps_in_epoch(num_batches: int, accumulation: int) -> int:
    """Optimizer steps of an epoch of `num_batches` micro-batches; a last, shorter group is a step too."""
    return -(-num_batches // accumulation)


def total_steps(schedule, num_train_epochs: int, max_steps: int, accumulation: int) -> int:
    """max_steps when > 0, else the samplers' exact batch counts summed over the epochs / accumulation."""
    if max_steps > 0:
        return max_steps
    return sum(steps_in_epoch(schedule.num_batches(e), accumulation) for e in range(num_train_epochs))


def epoch_steps(schedule, epoch: int, accumulation: int) -> list[list[tuple[int, list[int]]]]:
    """The optimizer steps of `epoch`: each a list of `accumulation` micro-batches (dataset index, rows).

    The rows are the global batch, the same in every process of a multi-process run (same sampler,
    same seed); train.py gives each process its contiguous share (distributed.World.shard) and
    gathers the embeddings before the loss.
    """
    batches = schedule.batches(epoch)
    return [batches[i:i + accumulation] for i in range(0, len(batches), accumulation)]


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
# training state + checkpoints
#
# output_dir/checkpoint-<step>/ = the ST model folder + training_state.pt, written together into a
# temporary sibling and renamed into place, so a crash (even SIGKILL) mid-save leaves the previous
# checkpoints intact and never a folder without its state.

STATE_FILE = "training_state.pt"
# rng: one RNG state per process (a list of rng_state() dicts, by rank); world_size: the number of processes.
STATE_KEYS = ("format", "step", "epoch", "epoch_step", "total_steps", "warmup_steps", "optimizer", "rng", "log",
              "best", "window", "examples_seen", "config", "world_size")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# What killed saves leave in output_dir: atomic_dir's temporary folders (".checkpoint-8.tmp-x", and
# "..checkpoint-8.tmp-x.tmp-y" from the model's own atomic save inside it, ".final.tmp-x"), the previous
# version it was replacing (".checkpoint-8.old-<pid>") and rotation's trash (".checkpoint-4.deleted-<pid>").
_PARTIAL = re.compile(r"^\.+(checkpoint-\d+|final)\.(tmp|old|deleted)-")
_REPLACED = re.compile(r"^\.(checkpoint-\d+|final)\.old-\d+$")
# Test hook: the step whose checkpoint save kills its own process after writing the model but
# before the training state, to prove that `--resume latest` then finds the previous checkpoint.
KILL_DURING_SAVE = "MINISBERT_KILL_DURING_SAVE"


def save_checkpoint(output_dir: Path, step: int, model, state: dict) -> Path:
    """Write checkpoint-<step>/ (model folder + training_state.pt) atomically; returns its path."""
    missing = set(STATE_KEYS) - set(state)
    if missing:
        raise ValueError(f"training state lacks {sorted(missing)}")
    target = Path(output_dir) / f"checkpoint-{step}"
    try:
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            if os.environ.get(KILL_DURING_SAVE) == str(step):
                os.kill(os.getpid(), signal.SIGKILL)
            save_state(state, tmp / STATE_FILE)
    except WRITE_ERRORS as e:  # disk full, quota, permissions: atomic_dir has removed the partial folder
        raise SaveError(save_failed(target, e, output_dir)) from e
    return target


def save_state(state: dict, path: Path) -> None:
    """torch.save into `path`; a failed write (a full disk) raises its OSError, not the RuntimeError
    ("unexpected pos ...") torch's zip writer makes of it."""
    try:
        with open(path, "wb") as f:
            torch.save(state, f)
    except RuntimeError as e:
        if isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise


def save_failed(target: Path, error: Exception, output_dir: Path) -> str:
    """The message for a save that failed with `error`: what, why, and where the run can continue from."""
    found = checkpoints(output_dir)
    last = f"the last complete checkpoint is {found[-1][1]}" if found else "no checkpoint was saved before"
    why = f"{error.strerror} (errno {error.errno})" if getattr(error, "strerror", None) else str(error)
    then = "continue with --resume latest" if found else "run again"
    return (f"could not write {target}: {why}. Nothing was half-written: {last}; free space (or fix the "
            f"permissions) and {then}")


def load_state(folder: Path) -> dict:
    """The training state of a checkpoint, unpickled with weights_only=True (tensors + primitives only)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"--resume {folder}: no {STATE_FILE} there; it is not a complete minisbert checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise ConfigError(f"--resume {folder}: cannot read {path.name} ({type(e).__name__}: {e})") from None
    missing = set(STATE_KEYS) - set(state)
    if missing:
        raise ConfigError(f"--resume {folder}: {path.name} lacks {sorted(missing)}")
    return state


def checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (with their state file) in output_dir, oldest first."""
    found = []
    if Path(output_dir).is_dir():
        for p in Path(output_dir).iterdir():
            m = _CHECKPOINT.match(p.name)
            if m and p.is_dir() and (p / STATE_FILE).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def find_resume(resume: str, output_dir: Path) -> Path:
    """`latest` -> the newest complete checkpoint in output_dir; otherwise the given folder."""
    if resume == "latest":
        found = checkpoints(output_dir)
        if not found:
            raise ConfigError(f"--resume latest: {output_dir} has no complete checkpoint-<step> folder")
        return found[-1][1]
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"--resume {resume}: no such checkpoint folder (pass a checkpoint-<step> folder or 'latest')")
    return path


def remove_partial_saves(output_dir: Path) -> None:
    """Clean up after killed saves: delete their temporary folders, and put back a folder that atomic_dir
    had moved aside to replace it (`.checkpoint-8.old-<pid>` without `checkpoint-8`: the kill fell between
    its two renames, so that is the last complete version)."""
    if Path(output_dir).is_dir():
        for p in sorted(Path(output_dir).iterdir()):
            if not (p.is_dir() and _PARTIAL.match(p.name)):
                continue
            replaced = _REPLACED.match(p.name)
            if replaced and not p.with_name(replaced.group(1)).exists():
                os.rename(p, p.with_name(replaced.group(1)))
            else:
                shutil.rmtree(p, ignore_errors=True)


def rotate_checkpoints(output_dir: Path, save_total_limit: int | None, keep_step: int | None = None) -> list[int]:
    """Delete the oldest checkpoints beyond `save_total_limit`, never the one at `keep_step` (the best)."""
    if not save_total_limit:
        return []
    found = checkpoints(output_dir)
    newest = {step for step, _ in found[-save_total_limit:]}
    deleted = []
    for step, path in found:
        if step not in newest and step != keep_step:
            # Renamed first: a kill mid-delete leaves a hidden folder (removed at the next start), never
            # a checkpoint-<step> that lost its weights but kept its state file and so looks complete.
            trash = path.with_name(f".{path.name}.deleted-{os.getpid()}")
            os.rename(path, trash)
            shutil.rmtree(trash)
            deleted.append(step)
    return deleted


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
    """Records of the run in memory (they travel in the training state) and in output_dir/log.jsonl."""

    def __init__(self, path: Path, records: list[dict] | None = None):
        self.path = Path(path)
        self.records = list(records or [])
        write_run_file(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def append(self, record: dict) -> None:
        self.records.append(record)
        write_run_file(self.path, json.dumps(record) + "\n", append=True)


def write_run_file(path: Path, text: str, append: bool = False) -> None:
    """Write (or append to) train_config.json or log.jsonl; a failed write (a full disk) is a SaveError
    naming the file and the last complete checkpoint. The records also travel in each checkpoint's state,
    so a resumed run rewrites log.jsonl whole."""
    try:
        with open(path, "a" if append else "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise SaveError(save_failed(path, e, path.parent)) from e


# ----------------------------------------------------------------------------------------------
# output_dir lock: one run at a time
#
# output_dir/.lock holds {"pid", "host"} of the run writing there, under an advisory flock: the kernel
# drops the flock when its process dies, so a lock file left by a killed run is stale and taken over.

LOCK_FILE = ".lock"


def output_dir_holder(output_dir: Path) -> str | None:
    """Who holds output_dir's lock ("pid 123 on host"), or None when nobody (no file, or a stale one)."""
    lock = OutputDirLock(output_dir)
    if not lock.path.is_file():
        return None
    try:
        if lock.acquire(create=False):
            lock.release(remove=False)  # only looking: a stale file stays for the run that takes it
            return None
    except OSError:
        return None
    return lock.holder()


class OutputDirLock:
    """`with OutputDirLock(output_dir):` holds output_dir for this process, or raises ConfigError naming
    the run (pid, host) that holds it. Systems without fcntl (Windows) run unlocked."""

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILE
        self.fd = None

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on {info['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self, create: bool = True) -> bool:
        """Take the flock; False when another process holds it."""
        try:
            import fcntl
        except ImportError:
            return True
        while True:
            fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:  # the holder may have removed the file between our open and our flock: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return True
            os.close(fd)
            if not create:
                return True

    def release(self, remove: bool = True) -> None:
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)  # before the unlock: nobody can lock a file that is about to vanish
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self):
        if not self.acquire():
            raise ConfigError(f"--output_dir {self.output_dir} is in use by another run ({self.holder()}); wait for it "
                              "to finish, or pick another --output_dir")
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
                os.write(self.fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
            except OSError:  # a full disk: the flock still holds, a second run just cannot name us
                pass
        return self

    def __exit__(self, *exc):
        self.release()


def format_record(record: dict, total_steps: int) -> str:
    """One human line: `step 10/375 | epoch 0.08 | loss 1.2345 | lr 4.87e-05 | ...`."""
    parts = [f"step {record['step']}/{total_steps}", f"epoch {record['epoch']:.2f}"]
    for k, v in record.items():
        if k in ("step", "epoch"):
            continue
        parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return " | ".join(parts)
