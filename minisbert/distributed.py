"""Multi-process training with torch.distributed: one process per GPU (or per CPU worker), started by torchrun.

    torchrun --nproc_per_node 4 train.py --loss mnrl --batch_size 256        # 4 processes x 64 rows

What a run with W processes does differently from one process, and where:

    World           this process's rank, the number of processes W, its device; read from torchrun's
                    environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) by `init`
    init / close    the process group: NCCL on GPUs (process r on cuda:LOCAL_RANK), gloo on CPU
    shard           every process computes the same global batch (same sampler, same seed) and takes
                    its contiguous share rows[lo_r:hi_r]; the no-duplicates guarantee is therefore
                    one of the global batch
    gather          all_gather with autograd, per column: (n_r, D) on each process -> (n, D) in the
                    order of the global batch, so [anchors | positives | negatives_1 | ...] keeps the
                    one-process layout (sentence-transformers #3453 interleaved rank blocks and got
                    the labels of hard negatives wrong)
    gathered        a column loss that sees the global batch on every process
    wrap            DistributedDataParallel around the model
    sync_gradients  DDP all-reduces only on the last backward of an optimizer step
    SyncLastForward the same for the cached (GradCache) step, which runs one backward per chunk

Why N processes with B rows each train exactly like one process with N*B rows: every process
computes the SAME loss L of the global batch from the gathered embeddings. The backward of
all_gather sums, at the process that owns row i, the gradients of the W identical losses:
W * dL/de_i. DDP averages parameter gradients over the W processes, dividing by W, so each
process ends with sum_r dL/de_r * de_r/dθ = dL/dθ of one process with the whole batch. No loss
changes for this (losses.py never hears of processes); labels and gist's guide embeddings are
gathered the same way. The price is that every process computes the (n x C) score matrix of the
global batch, which costs little next to the encoder.

A global batch with fewer rows than processes (the last batch of an epoch can have 1 row) leaves
some processes without rows. They embed one stand-in row (the batch's first) and contribute 0
rows to the gather: its gradient is zero, but the process still runs a forward and a backward, as
DDP needs every process to take part in every gradient all-reduce.

Nothing here imports train.py; losses and gradcache never import this module.
Shapes: n rows of the global batch, n_r rows of process r (sum_r n_r = n), D width, W processes.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from .errors import ConfigError

DEFAULT_TIMEOUT_S = 1800  # as transformers' ddp_timeout: rank 0's evaluation or checkpoint write must fit in it


# ----------------------------------------------------------------------------------------------
# the processes


@dataclass(frozen=True)
class World:
    """Where this process stands: rank in [0, world_size), the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the only process that logs, evaluates and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ batches

    def shard(self, rows: Sequence[int]) -> tuple[list[int], list[int]]:
        """This process's contiguous share of a global batch, and every process's share size.

        Shares differ by at most one row, the first processes taking the extra ones. A process
        whose share is empty (fewer rows than processes) gets the batch's first row as a stand-in:
        it embeds it, and `gathered` drops it (its size in the returned list is 0).
        """
        rows = list(rows)
        n, W = len(rows), self.world_size
        if n == 0:
            raise ValueError("cannot shard an empty batch")
        sizes = [n // W + (r < n % W) for r in range(W)]
        lo = sum(sizes[: self.rank])
        mine = rows[lo:lo + sizes[self.rank]] or rows[:1]
        return mine, sizes

    def gather(self, x: Tensor, sizes: Sequence[int]) -> Tensor:
        """(n_r, ...) on each process -> (n, ...): the rows of all processes in rank order, with autograd.

        Shares may differ in size; all_gather needs equal shapes, so each share is zero-padded to
        the largest and the padding is cut off after the gather (it gets no gradient).
        """
        if not self.distributed:
            return x
        size = sizes[self.rank]
        own = x[:size]  # a stand-in row is dropped here: size 0
        longest = max(sizes)
        if own.shape[0] < longest:
            own = torch.cat([own, own.new_zeros((longest - own.shape[0], *own.shape[1:]))])  # (max n_r, ...)
        parts = _AllGather.apply(own).split(longest)  # W x (max n_r, ...)
        return torch.cat([part[:s] for part, s in zip(parts, sizes)])  # (n, ...)

    def gathered(self, loss_fn: Callable, sizes: Sequence[int]) -> Callable:
        """The column loss `fn(outputs, labels, guide_embeddings=None, **kwargs)` of the global batch.

        Each output column (n_r, D), the labels (n_r,) and the guide embeddings are gathered to
        (n, ...) before `loss_fn`, column by column, so the global layout is the one of a single
        process: [anchor_all | positive_all | negative_1_all | ...]. Every process then computes
        the same loss; see the module docstring for why the gradients come out right. Other keyword
        arguments (candidate_ids) already describe the global batch and pass through unchanged.
        """
        if not self.distributed:
            return loss_fn

        def fn(outputs, labels, guide_embeddings=None, **of_the_global_batch):
            outputs = [self.gather(o, sizes) for o in outputs]  # K x (n, D) or K x (n, 1) logits
            labels = None if labels is None else self.gather(labels, sizes)  # (n,)
            if guide_embeddings is not None:
                of_the_global_batch["guide_embeddings"] = [self.gather(g, sizes) for g in guide_embeddings]
            return loss_fn(outputs, labels, **of_the_global_batch)  # e.g. candidate_ids: every process has them all

        fn.__name__ = getattr(loss_fn, "__name__", "loss")
        return fn

    # ------------------------------------------------------------------ small collectives

    def broadcast(self, value):
        """Rank 0's `value` (any picklable object) on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_objects(self, value) -> list:
        """[value of rank 0, value of rank 1, ...] on every process."""
        if not self.distributed:
            return [value]
        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out


class _AllGather(torch.autograd.Function):
    """(m, ...) on each of W processes -> (W m, ...) in rank order, the same on every process.

    Backward: every process holds a gradient for all W m rows; the rows of process r get the sum
    of all W processes' gradients for them (an all-reduce, then r's slice), so a process's rows
    receive what every process's loss asks of them. (torch.distributed.nn.functional.all_gather
    does the same and is deprecated in torch 2.13.)
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.contiguous()
        out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))  # (W m, ...)
        dist.all_gather_into_tensor(out, x)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
        dist.all_reduce(grad)  # sum over processes, (W m, ...)
        m = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * m:(dist.get_rank() + 1) * m]  # (m, ...)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def init(device: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """The World of this process; in a torchrun worker (WORLD_SIZE > 1) also joins the process group.

    device: "cpu", "cuda" or None (cuda when available). In a multi-process run with CUDA each
    process takes cuda:LOCAL_RANK and NCCL; on CPU, gloo. A collective that waits longer than
    `timeout_s` seconds (a dead peer on another node, a rank 0 evaluation that runs too long)
    fails with an error instead of hanging. Without WORLD_SIZE (plain `python train.py`), `device`
    may name any device, e.g. cuda:1.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ConfigError(f"RANK={rank} is not in [0, WORLD_SIZE={world_size}); launch with torchrun, which sets both")
    wanted = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    if world_size == 1:
        return World(device=wanted)
    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group is already initialized in this process")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ConfigError(f"WORLD_SIZE={world_size} but {name} is not set; launch with torchrun, which sets it")
    if wanted.type == "cuda":
        if wanted.index is not None:
            raise ConfigError(f"--device {device}: under torchrun each process takes cuda:LOCAL_RANK; pass --device cuda "
                              "and choose GPUs with CUDA_VISIBLE_DEVICES")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ConfigError(f"process with LOCAL_RANK={local_rank} has no GPU: this node has {count}; "
                              f"use --nproc_per_node {count} or fewer")
        wanted = torch.device("cuda", local_rank)
        torch.cuda.set_device(wanted)
    elif wanted.type != "cpu":
        raise ConfigError(f"--device {device}: multi-process training runs on cuda (NCCL) or cpu (gloo)")
    backend = "nccl" if wanted.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=wanted if wanted.type == "cuda" else None)
    return World(rank=rank, world_size=world_size, local_rank=local_rank, device=wanted)


def close() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# the model under DistributedDataParallel


def wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """DistributedDataParallel around `model` when there are several processes, else `model` itself.

    Wrapping broadcasts rank 0's parameters, so a freshly initialized head (a cross-encoder made from
    a bi-encoder) starts equal everywhere. find_unused_parameters: a BERT backbone computes its pooler
    but a bi-encoder pools the token states itself, so the pooler gets no gradient. forward_sync_buffers
    off: the buffers (position ids) never change, and broadcasting them at every forward would make
    every forward a collective, which processes with different chunk counts would not match (they
    are still made equal once, when wrapping).
    Save and evaluate the model itself (`wrapped.module`), never the wrapper: its keys stay clean.
    """
    if not world.distributed:
        return model
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:  # torch >= 2.13
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True,
                                       forward_sync_buffers=False)
    # Before 2.13 the switch is broadcast_buffers=False, which also skips the broadcast when wrapping: done here.
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True,
                                   broadcast_buffers=False)


def sync_gradients(model: torch.nn.Module, sync: bool):
    """Context for forward + backward: DDP all-reduces the gradients of a backward whose forward ran
    inside only when `sync`. Unsynced gradients add up locally and join the next synced all-reduce,
    so an optimizer step of several micro-batches costs one all-reduce, not one per micro-batch."""
    if sync or not isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


class SyncLastForward:
    """`embed` for the cached step of a DDP model: all-reduces the gradients only after the last chunk.

    The cached step (gradcache.cached_step) embeds every chunk twice: first without grad, then once
    more with grad, each replay followed by its own backward (K columns x chunks backward passes).
    With plain DDP, each of them would all-reduce the whole model's gradients. Here every replay
    runs under no_sync except the last one (`forwards`-th forward with grad), whose backward
    all-reduces the sum of all of them, as ST's CachedMNRL does. `sync=False` (an earlier
    micro-batch of a gradient-accumulation step) syncs none.

    The count is checked after the step: a different number of forwards with grad would leave the
    gradients unsynchronized, and `check()` raises instead of letting the processes drift apart.
    """

    def __init__(self, model: torch.nn.Module, embed: Callable, forwards: int, sync: bool = True):
        self.model, self.embed, self.forwards, self.sync = model, embed, forwards, sync
        self.calls = 0

    def __call__(self, features):
        if not torch.is_grad_enabled():  # stage 1 of the cached step: no graph, nothing to sync
            return self.embed(features)
        self.calls += 1
        with sync_gradients(self.model, self.sync and self.calls == self.forwards):
            return self.embed(features)

    def check(self) -> None:
        if isinstance(self.model, DistributedDataParallel) and self.calls != self.forwards:
            raise RuntimeError(f"the cached step ran {self.calls} forwards with grad, {self.forwards} were expected; "
                               "DDP would not have synchronized the gradients")
