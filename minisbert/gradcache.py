"""The cached (GradCache) training step: an in-batch loss over a large batch with the activation memory of
one mini-batch.

In-batch losses (mnrl, gist, ...) need every embedding of the batch at once, so plain training keeps the
activations of all B rows of every column alive until backward. GradCache (Gao et al. 2021, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup", arXiv:2101.06983) splits the step in three, after choosing the chunks:

    0. plan, balanced_order     each column's chunks: bounded rows and tokens, rows spread by token count
    1. embed_without_graph      embed every chunk of every column under no_grad, saving each chunk's RNG state
    2. loss_and_cached_grads    loss on detached leaf embeddings (B, D), backward to them, keep d loss / d emb
    3. replay_with_cached_grads re-embed each chunk under its saved RNG state (same dropout masks) and
                                backpropagate sum(emb * cached_grad), one chunk at a time

Peak activation memory is one chunk's forward plus the K x (B, D) embeddings and the loss's score
matrix; the price is a second forward pass. The result (loss and parameter gradients) equals plain
training that embeds the same chunks with the same dropout masks.

This module owns only the step. It receives `embed` (the model's forward on one chunk) and `loss_fn` (a
function of the column embeddings, e.g. `lambda e, y: mnrl(e[0], torch.cat(e[1:]))`) and never imports
the model or the losses. Shape letters: K columns, B batch, b chunk rows, L tokens, D width.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import get_device_states, set_device_states

Column = Mapping[str, Any]  # one input column: batch-first tensors (B, ...) plus pass-through values
Embed = Callable[[dict[str, Any]], Tensor]  # chunk -> (b, D), with grad
LossFn = Callable[[list[Tensor], Any], Tensor]  # K x (B, D), labels -> scalar


# ----------------------------------------------------------------------------- chunks


def _batch_size(columns: Sequence[Column]) -> int:
    """The shared first dim B of every batch-first tensor in every column, or a ValueError naming the odd one."""
    if not columns:
        raise ValueError("cached_step needs at least one column")
    sizes = {}
    for c, column in enumerate(columns):
        if not isinstance(column, Mapping):
            raise ValueError(f"column {c} must be a dict of batch-first tensors, got {type(column).__name__}")
        for key, value in column.items():
            if isinstance(value, Tensor) and value.ndim >= 1:
                sizes[(c, key)] = value.shape[0]
    if not sizes:
        raise ValueError("no column holds a batch-first tensor (e.g. input_ids (B, L)) to split into chunks")
    B = next(iter(sizes.values()))
    for (c, key), size in sizes.items():
        if size != B:
            raise ValueError(f"column {c} {key!r} has {size} rows, but the batch has {B}; every column needs B rows")
    return B


def chunk_ranges(batch_size: int, mini_batch_size: int) -> list[tuple[int, int]]:
    """[(0, m), (m, 2m), ..., (.., B)]: row ranges of the chunks; the last one may be shorter."""
    if isinstance(mini_batch_size, bool) or not isinstance(mini_batch_size, int) or mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be a positive integer, got {mini_batch_size!r}")
    return [(i, min(i + mini_batch_size, batch_size)) for i in range(0, batch_size, mini_batch_size)]


def _chunk(column: Column, begin: int, end: int) -> dict[str, Any]:
    """Rows [begin, end) of a column, as a fresh dict of fresh tensors.

    Cloned, not viewed: an `embed` that edits its input in place (a mask edit, a popped key; ST #3862)
    must not change what the replay in stage 3 sees. Token ids are tiny next to the activations.
    """
    return {
        key: value[begin:end].clone() if isinstance(value, Tensor) and value.ndim >= 1 else value
        for key, value in column.items()
    }


Ranges = Sequence[tuple[int, int]]  # one column's chunks: row ranges [(begin, end), ...]


def _tokens(column: Column) -> list[int] | None:
    mask = column.get("attention_mask")
    return mask.sum(1).tolist() if isinstance(mask, Tensor) and mask.ndim == 2 else None  # (B,)


def plan(columns: Sequence[Column], mini_batch_size: int) -> list[list[tuple[int, int]]]:
    """K x the row ranges of each column's chunks: at most `mini_batch_size` rows and, where the columns
    carry an "attention_mask", at most about `mini_batch_size` x (the mean real tokens of a row over all
    columns of the batch) tokens. The second bound splits a column of long rows (NLI premises next to short
    hypotheses) into more, smaller chunks, so that no chunk costs more activation memory than the average
    one; a column of short rows keeps ST's chunks of mini_batch_size rows. Rows are spread over the
    chunks by `balanced_order`.

    Why: the step's peak is the heaviest chunk's activations on top of the parameter gradients, which
    exist from the first chunk's backward on. Chunked by rows only, every long-row chunk after the first
    paid both (1.5x the peak of a 32-row batch at 128 to 1024 rows of NLI triplets).
    """
    B = _batch_size(columns)
    ranges = chunk_ranges(B, mini_batch_size)
    lengths = [_tokens(column) for column in columns]
    if any(t is None for t in lengths):
        return [list(ranges) for _ in columns]
    budget = mini_batch_size * sum(map(sum, lengths)) / (len(columns) * B)  # tokens of mini_batch_size mean rows
    if budget <= 0:
        return [list(ranges) for _ in columns]
    out = []
    for tokens in lengths:
        count = max(len(ranges), math.ceil(sum(tokens) / budget - 1e-9))
        sizes = [B // count + (1 if c < B % count else 0) for c in range(count)]
        starts = [sum(sizes[:c]) for c in range(count)]
        out.append([(start, start + size) for start, size in zip(starts, sizes)] if count > len(ranges) else list(ranges))
    return out


def balanced_order(column: Column, ranges: Ranges) -> Tensor | None:
    """(B,) a permutation of the column's rows after which each of `ranges` holds about the same number of
    real tokens, or None when the column has no "attention_mask" (nothing to balance).

    With packing (fast/packing.py) a chunk's activation memory follows its real tokens, not its row count, and
    the step's peak memory is its heaviest chunk's. Rows taken in batch order put several long rows in one
    chunk now and then, and the more chunks a batch has the more often it happens: at 512 rows of NLI
    triplets the heaviest of 16 chunks cost 1.5x the activations of a 32-row batch. Longest rows first,
    each row goes to the chunk with the fewest tokens so far that still has room, so every chunk keeps
    its row count (mini_batch_size, as ST's) and the heaviest is close to the mean. Within a chunk, rows
    keep their batch order. Deterministic: ties go to the lower chunk.
    """
    lengths = _tokens(column)
    if lengths is None or len(ranges) < 2:
        return None
    room = [end - begin for begin, end in ranges]
    tokens = [0] * len(ranges)
    members: list[list[int]] = [[] for _ in ranges]
    for row in sorted(range(len(lengths)), key=lambda r: (-lengths[r], r)):
        c = min((c for c in range(len(ranges)) if room[c]), key=lambda c: (tokens[c], c))
        members[c].append(row)
        tokens[c] += lengths[row]
        room[c] -= 1
    return torch.tensor([row for rows in members for row in sorted(rows)], dtype=torch.long)


def _take(column: Column, order: Tensor | None) -> Column:
    """The column's rows in `order` (batch-first tensors gathered, other values as they are)."""
    if order is None:
        return column
    return {key: value[order.to(value.device)] if isinstance(value, Tensor) and value.ndim >= 1 else value
            for key, value in column.items()}


# ----------------------------------------------------------------------------- RNG state


@dataclass
class RngState:
    """The CPU RNG state and the RNG states of the accelerator devices (CUDA, XPU, ...) a chunk's tensors live on.

    The chunk's tensors must be on the model's device (as the model needs them anyway): the devices are
    found through them, as in GradCache and ST's RandContext.
    """

    cpu: Tensor
    device_type: str  # "cuda", "xpu", ...; "cpu" when the chunk has no accelerator tensor
    devices: list[int]
    states: list[Tensor]

    @classmethod
    def capture(cls, chunk: Mapping[str, Any]) -> RngState:
        tensors = [v for v in chunk.values() if isinstance(v, Tensor)]
        device_type = next((t.device.type for t in tensors if t.device.type not in ("cpu", "meta")), "cpu")
        if device_type == "cpu":
            return cls(torch.get_rng_state(), "cpu", [], [])
        _check_replayable(device_type)
        devices, states = get_device_states(*tensors)  # the device type is inferred from the tensors
        return cls(torch.get_rng_state(), device_type, devices, states)

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        """Run the block from this state; the RNG state outside the block is left as it was."""
        # Both default to CUDA; a device type is passed only where it is another one (checked in capture).
        kind = {} if self.device_type in ("cpu", "cuda") else {"device_type": self.device_type}
        with torch.random.fork_rng(devices=self.devices, **kind):
            torch.set_rng_state(self.cpu)
            if self.devices:
                set_device_states(self.devices, self.states, **kind)
            yield


def _check_replayable(device_type: str) -> None:
    """Refuse, with the reason, an accelerator whose RNG state torch cannot save and restore per device:
    the replay would draw other dropout masks than the first pass. CUDA always can; another type needs
    set_device_states to take its device type (torch 2.4's does not) and its module to select a device
    (`.device`, which torch.mps lacks)."""
    if device_type == "cuda":
        return
    module = getattr(torch, device_type, None)
    if ("device_type" not in inspect.signature(set_device_states).parameters
            or not hasattr(module, "device") or not hasattr(module, "get_rng_state")):
        raise RuntimeError(
            f"the cached step cannot replay the random state of {device_type} tensors with torch "
            f"{torch.__version__}: its second pass would draw other dropout masks than its first. "
            f"Train on cuda or cpu, or use the loss without the cache (e.g. mnrl instead of cached_mnrl)")


# ----------------------------------------------------------------------------- the three stages


def _per_column(ranges: Ranges | Sequence[Ranges], k: int) -> list[Ranges]:
    """The stages take one list of ranges for every column, or K lists (`plan`)."""
    shared = len(ranges) > 0 and isinstance(ranges[0], tuple) and isinstance(ranges[0][0], int)
    return [ranges] * k if shared else list(ranges)


def embed_without_graph(
    embed: Embed, columns: Sequence[Column], ranges: Ranges | Sequence[Ranges], save_rng: bool = True
) -> tuple[list[Tensor], list[list[RngState]]]:
    """Stage 1: embed every chunk of every column without a graph; return K x (B, D) and the RNG state
    each chunk started from (K x chunks; empty lists when save_rng is False)."""
    embeddings, states = [], []
    with torch.no_grad():
        for column, column_ranges in zip(columns, _per_column(ranges, len(columns))):
            parts, column_states = [], []
            for begin, end in column_ranges:
                chunk = _chunk(column, begin, end)
                if save_rng:
                    column_states.append(RngState.capture(chunk))
                parts.append(embed(chunk))  # (b, D)
            embeddings.append(torch.cat(parts))  # (B, D)
            states.append(column_states)
    return embeddings, states


def loss_and_cached_grads(
    embeddings: Sequence[Tensor], loss_fn: LossFn, labels: Any = None, loss_scale: float = 1.0
) -> tuple[Tensor, list[Tensor]]:
    """Stage 2: the loss on detached float32 leaves and d(loss_scale * loss)/d embeddings, K x (B, D).

    The leaves are float32 even when the model runs in bf16: the loss upcasts anyway, and the cached
    gradient then keeps full precision until it meets the model's bf16 output in stage 3.
    """
    leaves = [e.detach().float().requires_grad_() for e in embeddings]  # K x (B, D)
    with torch.enable_grad():
        loss = loss_fn(leaves, labels)
        (loss * loss_scale).backward()
    grads = []
    for k, leaf in enumerate(leaves):
        if leaf.grad is None:
            raise ValueError(f"loss_fn does not use column {k}; drop it from columns instead of embedding it twice")
        grads.append(leaf.grad)
    return loss.detach(), grads


def replay_with_cached_grads(
    embed: Embed,
    columns: Sequence[Column],
    ranges: Ranges | Sequence[Ranges],
    states: Sequence[Sequence[RngState]],
    grads: Sequence[Tensor],
) -> None:
    """Stage 3: re-embed each chunk from its saved RNG state and backpropagate its cached gradient.

    d/dθ sum(emb(θ) * g) = g · d emb/dθ, the chain rule with g = d loss / d emb held fixed. The product is
    taken in float32 so bf16 embeddings neither overflow nor lose the gradient's precision (ST PR #3862).
    Each chunk's graph is freed by its own backward, so only one chunk's activations are alive at a time.
    """
    for column, column_ranges, column_states, grad in zip(columns, _per_column(ranges, len(columns)), states, grads):
        for (begin, end), state in zip(column_ranges, column_states):
            with state.restored():
                reps = embed(_chunk(column, begin, end))  # (b, D)
            surrogate = (reps.float() * grad[begin:end]).sum()
            surrogate.backward()


# ----------------------------------------------------------------------------- the step


def cached_step(
    embed: Embed,
    columns: Sequence[Column],
    loss_fn: LossFn,
    mini_batch_size: int,
    *,
    labels: Any = None,
    loss_scale: float = 1.0,
) -> Tensor:
    """One GradCache step: embeds `columns` in chunks of at most `mini_batch_size` rows (fewer in a column
    of long rows, see `plan`), computes
    `loss_fn(embeddings, labels)` and accumulates the parameter gradients of `loss_scale * loss` (e.g.
    loss_scale = 1 / accumulation_steps) into `.grad`, with the memory of one chunk. Returns the detached,
    unscaled loss; the caller must not call backward on it.

    embed(chunk) -> (b, D): the model's forward with grad on one chunk (may use autocast inside).
    columns: K dicts of batch-first tensors with the same first dim B (e.g. input_ids (B, L)); a chunk is
        {key: value[rows]}; non-tensor (and 0-d tensor) values are passed unchanged to every chunk.
    loss_fn(embeddings, labels) -> scalar: the loss on the K column embeddings, each (B, D).

    With grad disabled (evaluation) it only embeds in chunks and returns the loss: no RNG snapshots and
    no backward (ST #2667).
    """
    ranges = plan(columns, mini_batch_size)  # K x chunks of bounded rows and tokens
    # Rows spread over the chunks by token count (balanced_order): the stages run on the reordered rows,
    # the loss sees every column in batch order.
    orders = [balanced_order(column, r) for column, r in zip(columns, ranges)]
    columns = [_take(column, order) for column, order in zip(columns, orders)]

    def batch_order(embeddings):  # K x (B, D) reordered -> batch order
        return [e if o is None else e[torch.argsort(o.to(e.device))] for e, o in zip(embeddings, orders)]

    if not torch.is_grad_enabled():
        embeddings, _ = embed_without_graph(embed, columns, ranges, save_rng=False)
        return loss_fn(batch_order(embeddings), labels).detach()
    embeddings, states = embed_without_graph(embed, columns, ranges)
    loss, grads = loss_and_cached_grads(batch_order(embeddings), loss_fn, labels, loss_scale)
    del embeddings  # K x (B, D): not needed while the replay runs on top of the parameter gradients
    grads = [g if o is None else g[o.to(g.device)] for g, o in zip(grads, orders)]  # back to the reordered rows
    replay_with_cached_grads(embed, columns, ranges, states, grads)
    return loss
