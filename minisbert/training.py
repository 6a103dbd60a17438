"""One training step and the pieces it is made of; train.py's loop calls them, run_state.py keeps the
loop's state between steps, run.py builds a run from its config.

    column losses      which embedding columns go where in each --loss, and what data each one needs
    optimizer          torch.optim.AdamW, weight decay off for biases and norm weights (transformers' rule)
    LR schedule        warmup, then linear / cosine / constant, as a pure function of the step
    tokenized columns  every text column tokenized once, up front (TokenizedColumn); collate pads a batch's rows
    the step           Task (a dataset tokenized once, with its loss) -> make_batch -> train_step:
                       forward, loss, backward of one micro-batch, plain or cached (GradCache); dev_loss
    steps per epoch    sampler batches -> optimizer steps (accumulation); the batches are global,
                       each process takes its share of them (distributed.World.shard)
    evaluation         the evaluators' metrics and the dev loss during training

Nothing here imports train.py; the model is only saved and loaded through its own methods.
Shapes: B rows of a micro-batch (b: this process's share), D embedding width, K columns.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from . import distributed, gradcache, losses
from .fast import kernels
from .cross_encoder import CrossEncoder
from .errors import ConfigError
from .tokenizer import Truncation, prompt_length, tokenize


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

LR_SCHEDULES = ("linear", "cosine", "constant")


def resolve_warmup(total_steps: int, warmup_steps: int, warmup_ratio: float) -> int:
    """warmup_steps when > 0, else ceil(total * warmup_ratio) (transformers' rule)."""
    return warmup_steps if warmup_steps > 0 else math.ceil(total_steps * warmup_ratio)


def learning_rate(peak: float, schedule: str, step: int, *, total_steps: int, warmup_steps: int) -> float:
    """The learning rate of the (step + 1)-th optimizer step: `peak` times the schedule's multiplier."""
    return peak * lr_multiplier(schedule, step, total_steps, warmup_steps)


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
    raise ConfigError(f"--lr_scheduler_type {schedule!r} is unknown; expected one of {', '.join(LR_SCHEDULES)}")


# ----------------------------------------------------------------------------------------------
# tokenized columns: every text column tokenized once, up front (unpadded, truncated to max_length,
# one flat int array plus row offsets); a batch only gathers its rows and pads them to its longest,
# which is what BiEncoder.tokenize / CrossEncoder.tokenize give for the same texts (tests pin it).
# Plain values, never a model: the tokenizer, the max length and the model's `input_names`.
# Shapes: b rows of a batch, L the longest row of the batch.


@dataclass
class TokenizedColumn:
    """Unpadded token ids of N rows: row i is ids[offsets[i]:offsets[i+1]]."""

    ids: np.ndarray  # (total tokens,) int64
    type_ids: np.ndarray | None  # (total tokens,) token_type_ids, or None when the model takes none
    offsets: np.ndarray  # (N + 1,) int64
    keys: tuple[str, ...]  # the features the model's forward takes: input_ids, attention_mask[, token_type_ids]
    pad_id: int
    pad_type_id: int
    padding_side: str
    prompt_length: int = 0  # tokens of the training prompt (bi-encoders; pooling may exclude them)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _pack(encoded, input_names, tokenizer, prompt_tokens: int) -> TokenizedColumn:
    keys = tuple(k for k in input_names if k in encoded)  # (B, L) features the tokenizer gives and the model takes
    rows = encoded["input_ids"]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = lambda lists: np.fromiter((t for r in lists for t in r), dtype=np.int64, count=int(offsets[-1]))  # noqa: E731
    type_ids = flat(encoded["token_type_ids"]) if "token_type_ids" in keys else None
    return TokenizedColumn(
        ids=flat(rows), type_ids=type_ids, offsets=offsets, keys=keys,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        pad_type_id=getattr(tokenizer, "pad_token_type_id", 0), padding_side=tokenizer.padding_side,
        prompt_length=prompt_tokens,
    )


def tokenize_column(tokenizer, texts, *, max_length: int, input_names, prompt: str | None = None,
                    truncation: Truncation | None = None) -> TokenizedColumn:
    """One text column of a bi-encoder's data, with the training prompt prepended (as ST's collator):
    `tokenize_column(model.tokenizer, texts, max_length=model.max_length, input_names=model.input_names)`."""
    if prompt:
        texts = [prompt + t for t in texts]
    encoded = tokenize(tokenizer, list(texts), max_length=max_length, truncation=truncation)
    return _pack(encoded, input_names, tokenizer, prompt_length(tokenizer, prompt))


def tokenize_pairs(tokenizer, queries, documents, *, max_length: int, input_names,
                   truncation: Truncation | None = None) -> TokenizedColumn:
    """(query, document) pairs for a cross-encoder: one column of joint inputs."""
    encoded = tokenize(tokenizer, list(queries), list(documents), max_length=max_length, truncation=truncation)
    return _pack(encoded, input_names, tokenizer, 0)


def collate(column: TokenizedColumn, indices) -> dict:
    """Rows `indices` of a column, padded to their longest: {"input_ids" (b, L), "attention_mask" (b, L), ...}."""
    indices = np.asarray(indices, dtype=np.int64)
    starts, ends = column.offsets[indices], column.offsets[indices + 1]
    lengths = ends - starts  # (b,)
    b, L = len(indices), int(lengths.max()) if len(indices) else 0
    input_ids = np.full((b, L), column.pad_id, dtype=np.int64)
    mask = np.zeros((b, L), dtype=np.int64)
    type_ids = np.full((b, L), column.pad_type_id, dtype=np.int64) if column.type_ids is not None else None
    for r, (s, e, n) in enumerate(zip(starts, ends, lengths)):
        cols = slice(0, n) if column.padding_side == "right" else slice(L - n, L)
        input_ids[r, cols] = column.ids[s:e]
        mask[r, cols] = 1
        if type_ids is not None:
            type_ids[r, cols] = column.type_ids[s:e]
    arrays = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": type_ids}
    features = {k: torch.from_numpy(arrays[k]) for k in column.keys}
    features["prompt_length"] = column.prompt_length
    return features


# ----------------------------------------------------------------------------------------------
# the step: a Task (one dataset, tokenized once) -> make_batch -> train_step


@dataclass
class Task:
    """One training (or dev) dataset, ready to batch: token ids per column, labels, its column loss."""

    name: str
    size: int
    columns: list[TokenizedColumn]  # one per model input column (SimCSE: the one text column twice)
    loss_fn: Callable  # fn(outputs, labels, guide_embeddings=None) -> scalar
    labels: Tensor | None = None  # (N,) float32
    cross: bool = False  # cross-encoder: each column holds (column 0, column k) pairs, outputs are (B, 1) logits
    mini_batch_size: int | None = None  # the cached step's chunk size; None: the plain step
    guide: torch.nn.Module | None = None  # gist's frozen guide bi-encoder
    guide_columns: list[TokenizedColumn] = field(default_factory=list)  # the same texts tokenized for the guide
    text_ids: Tensor | None = None  # (K, N) int64: equal texts have equal ids (--mask_duplicates)


def build_task(model, name: str, texts: list[list[str]], loss_fn: Callable, *, loss: str, labels=None,
               prompts: list[str | None] | None = None, guide=None, mini_batch_size: int | None = None,
               mask_duplicates: bool = False, truncation=None) -> Task:
    """Tokenize a dataset's text columns (in role order) once, up front, for `model`.

    loss: the base --loss name (one text column and an mnrl-type loss: SimCSE, the column twice);
    prompts: one training prompt per column, prepended before tokenization (bi-encoders);
    guide: gist's guide model; truncation: counts the inputs cut to max_length.
    """
    cross = isinstance(model, CrossEncoder)
    guide_columns = []
    if cross:  # (column 0, column k) pairs
        columns = [tokenize_pairs(model.tokenizer, texts[0], texts[k], max_length=model.max_length,
                                  input_names=model.input_names, truncation=truncation) for k in range(1, len(texts))]
    else:
        prompts = prompts or [None] * len(texts)
        columns = [tokenize_column(model.tokenizer, t, max_length=model.max_length, input_names=model.input_names,
                                   prompt=p, truncation=truncation) for t, p in zip(texts, prompts)]
        if guide is not None:
            guide_columns = [tokenize_column(guide.tokenizer, t, max_length=guide.max_length, input_names=guide.input_names,
                                             prompt=p) for t, p in zip(texts, prompts)]
        if len(columns) == 1 and loss in SIMCSE_LOSSES:  # SimCSE: the same texts twice, two dropout masks
            columns, guide_columns = columns * 2, guide_columns * 2
    text_ids = None
    if mask_duplicates and loss in IN_BATCH_LOSSES:
        number = {}  # text -> id, over every column: a positive repeated as a negative is caught too
        text_ids = torch.tensor([[number.setdefault(t, len(number)) for t in column] for column in texts])  # (K, N)
        text_ids = text_ids.repeat(len(columns) // len(texts), 1)  # SimCSE: the one column, twice
    labels = torch.tensor(labels, dtype=torch.float32) if labels is not None else None
    return Task(name, len(texts[0]), columns, loss_fn, labels, cross, mini_batch_size, guide, guide_columns, text_ids)


def make_batch(task: Task, rows: list[int], *, device, autocast=contextlib.nullcontext(),
               world: distributed.World | None = None, sizes: list[int] | None = None, batch: list[int] | None = None):
    """Padded features of each column for `rows`, their labels, and the loss with the guide bound in.

    Given `world` and `sizes` (every process's share of the global `batch`, of which `rows` is this
    process's), the loss all-gathers the outputs and sees the global batch (distributed.World.gathered).
    """
    # On the model's device up front: the cached step finds the CUDA RNG to save and replay through them.
    columns = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(c, rows).items()} for c in task.columns]
    labels = task.labels[rows].to(device) if task.labels is not None else None
    loss_fn = task.loss_fn if sizes is None else world.gathered(task.loss_fn, sizes)
    if task.guide_columns:
        with torch.no_grad(), autocast:
            guide_embeddings = [task.guide(collate(c, rows)) for c in task.guide_columns]  # (b, D_guide) each
        loss_fn = functools.partial(loss_fn, guide_embeddings=guide_embeddings)
    if task.text_ids is not None:  # ids of the whole batch's candidates, in the gathered layout
        candidate_ids = task.text_ids[1:, rows if batch is None else batch].reshape(-1).to(device)  # (C,)
        loss_fn = functools.partial(loss_fn, candidate_ids=candidate_ids)
    return columns, labels, loss_fn


def _embed(model, features, autocast):
    with autocast:
        return model(features)  # (b, D) embeddings or (b, 1) logits


def train_step(model: torch.nn.Module, task: Task, rows: list[int], *, world: distributed.World,
               autocast=contextlib.nullcontext(), loss_scale: float = 1.0, sync: bool = True) -> Tensor:
    """Forward + backward of one micro-batch (`rows`: the global batch); returns the detached loss.

    model: what to run (the DistributedDataParallel wrapper in a multi-process run); loss_scale:
    1 / micro-batches per optimizer step. The loss is computed from the columns' outputs in one place
    (`loss_fn(outputs, labels)`): a multi-process run embeds this process's share of `rows` and
    all-gathers the outputs (with grad) and labels before the loss, so every process computes the loss
    of the whole batch. DDP all-reduces the gradients only when `sync` (the last micro-batch of a step).
    """
    if world.distributed:  # this process's share of the batch; the loss all-gathers the outputs (distributed.py)
        mine, sizes = world.shard(rows)
        columns, labels, loss_fn = make_batch(task, mine, device=world.device, autocast=autocast, world=world,
                                              sizes=sizes, batch=rows)
    else:
        columns, labels, loss_fn = make_batch(task, rows, device=world.device, autocast=autocast)
    embed = functools.partial(_embed, model, autocast=autocast)
    if task.mini_batch_size:  # the cached step (gradcache.py): embed without graph, loss, replay chunk by chunk
        if not world.distributed:
            return gradcache.cached_step(embed, columns, loss_fn, task.mini_batch_size, labels=labels, loss_scale=loss_scale)
        replays = sum(len(r) for r in gradcache.plan(columns, task.mini_batch_size))  # forwards with grad
        forward = distributed.SyncLastForward(model, embed, replays, sync)  # DDP all-reduces in the last replay only
        loss = gradcache.cached_step(forward, columns, loss_fn, task.mini_batch_size, labels=labels, loss_scale=loss_scale)
        forward.check()
        return loss
    # DDP all-reduces the gradients only in the step's last micro-batch (`sync`); one process has nothing to sync.
    with distributed.sync_gradients(model, sync) if world.distributed else contextlib.nullcontext():
        # A bi-encoder embeds all columns in one pass (BiEncoder.forward of a list: padding-free on the fast path).
        outputs = [embed(c) for c in columns] if task.cross else embed(columns)  # K x (B, D), or K x (B, 1) logits
        loss = loss_fn(outputs, labels)
        (loss * loss_scale).backward()
    return loss.detach()


@torch.no_grad()
def dev_loss(model: torch.nn.Module, task: Task, batch_size: int, *, device, autocast=contextlib.nullcontext()) -> float:
    """The task's loss on its whole dataset, in batches of `batch_size` in file order (eval_loss)."""
    total = 0.0
    for start in range(0, task.size, batch_size):
        rows = list(range(start, min(start + batch_size, task.size)))
        columns, labels, loss_fn = make_batch(task, rows, device=device, autocast=autocast)
        total += float(loss_fn([_embed(model, c, autocast) for c in columns], labels)) * len(rows)
    return total / task.size


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
# evaluation during training


@torch.no_grad()
def evaluate(model, evaluators: list, dev_task: Task | None, *, batch_size: int, device,
             autocast=contextlib.nullcontext()) -> dict:
    """Every evaluator's metrics and the dev task's loss, keyed eval_<metric>, in eval mode."""
    was_training = model.training
    model.eval()
    metrics = {}
    for ev in evaluators:
        metrics.update({f"eval_{k}": float(v) for k, v in ev(model).items()})
    if dev_task is not None:
        metrics["eval_loss"] = dev_loss(model, dev_task, batch_size, device=device, autocast=autocast)
    model.train(was_training)
    return metrics
