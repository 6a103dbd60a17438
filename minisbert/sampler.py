"""Batch samplers: which rows go together in one training step, decided before training starts.

    ShuffledBatchSampler      a plain shuffle cut into batches (losses without in-batch negatives)
    NoDuplicatesBatchSampler  no text twice in a batch, across all text columns (MNRL and friends)
    MultiDatasetSchedule      several datasets, every batch from one of them

Every sampler answers two questions for an epoch `e`: `batches(e)`, the list of batches (lists of
row indices), and `num_batches(e)`, its EXACT length. sentence-transformers announces
`ceil(N / batch_size)` for its no-duplicates sampler and then yields a different number (fewer
with drop_last, more small ones without; ST #3611, #3946), so the LR schedule ends early or late.
Here the epoch is computed up front, deterministically from `seed + epoch`, so the count is the
real one. A list of batches works directly as a DataLoader's `batch_sampler`. A sampler's `dataset` is
a data.TextDataset (its `columns`, `source` and length; this module does not import data.py, which
re-exports the samplers under their old names).

Orders are `torch.randperm` draws from a CPU generator seeded `seed + epoch`, exactly as ST's
samplers seed theirs, so for the same seed and epoch the batches equal ST's (tests pin this).
torch is imported on first use only.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass

from .errors import DataError

DATASET_SCHEDULES = ("round_robin", "proportional", "weighted")  # how MultiDatasetSchedule picks a dataset per batch


def __getattr__(name):
    if name == "SCHEDULES":  # the old name, which training.py's learning-rate schedules also had
        warnings.warn("minisbert.sampler.SCHEDULES is deprecated; use DATASET_SCHEDULES", DeprecationWarning, stacklevel=2)
        return DATASET_SCHEDULES
    raise AttributeError(f"module 'minisbert.sampler' has no attribute {name!r}")


def _epoch_seed(seed: int, epoch: int, repeat: int) -> int:
    """`seed + epoch` (ST's rule) for the first pass of an epoch; later passes of the same epoch
    (only the weighted schedule asks for them) get a seed hashed from (seed, epoch, repeat)."""
    if repeat == 0:
        return seed + epoch
    digest = hashlib.sha256(f"{seed}/{epoch}/{repeat}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: valid for torch.Generator.manual_seed


def _permutation(n: int, seed: int) -> list[int]:
    import torch

    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.randperm(n, generator=generator).tolist()


def _check_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DataError(f"{what} must be an integer, got {value!r}")
    return int(value)


class ShuffledBatchSampler:
    """Shuffle all rows with `seed + epoch`, cut into consecutive batches of `batch_size`.

    Identical to ST's default sampler (`BatchSampler(RandomSampler(dataset, generator))`) with the
    generator seeded `seed + epoch`. drop_last=True drops the final partial batch; otherwise it is
    kept. num_batches = floor(N / B) with drop_last, else ceil(N / B).
    """

    def __init__(self, dataset, batch_size: int, *, seed: int = 42, drop_last: bool = False):
        self.dataset = dataset
        self.batch_size = _check_batch_size(dataset, batch_size)
        self.seed = _check_int(seed, "seed")
        self.drop_last = bool(drop_last)

    def batches(self, epoch: int, *, repeat: int = 0) -> list[list[int]]:
        """The batches of `epoch` (row indices). `repeat` > 0 gives a fresh reshuffle of the same
        epoch, used by the weighted schedule when a dataset runs out."""
        order = _permutation(len(self.dataset), _epoch_seed(self.seed, _check_int(epoch, "epoch"), repeat))
        stop = self.num_batches(epoch) * self.batch_size
        return [order[i:i + self.batch_size] for i in range(0, min(stop, len(order)), self.batch_size)]

    def num_batches(self, epoch: int) -> int:
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)


class NoDuplicatesBatchSampler:
    """Batches in which no text occurs twice, across all text columns (ST spec §4.1).

    A row's key is the set of its texts (anchor, positive, negative_1, ...; labels do not count).
    A row joins a batch only if its key is disjoint from the union of the keys already in the
    batch, so "anchor of row i == negative of row j" is a conflict too, while duplicates inside
    one row are fine. The greedy pass is ST's: shuffle with `seed + epoch`; each batch scans the
    remaining rows in that order, takes every row that does not conflict and defers (leaves in
    place) those that do, until the batch is full or the rows run out.

    Leftovers: a scan that reaches the end before the batch is full gives a partial batch.
    drop_last=False keeps it, so every row is used exactly once per epoch and the epoch may end
    with several small batches when duplicates force it. drop_last=True discards it, so only full
    batches remain and the rows of discarded partial batches are skipped this epoch (another epoch
    shuffles them elsewhere). ST adds up to two resampled passes to reach its announced length;
    we do not: `num_batches(epoch)` is the exact length of this single pass.

    Speed: texts are mapped once, at construction, to integer ids (exact, no hash collisions) and
    the pass compares ints via a per-id "last batch" stamp, so an epoch is planned in a fraction of
    a second (benchmarks/README.md, decision table: no-duplicates sampler). Deferred rows are rescanned by
    each later batch, so data where one text appears in a large share of rows costs
    O(rows x batches), as in ST. The last two epochs' batches are cached.
    """

    def __init__(self, dataset, batch_size: int, *, seed: int = 42, drop_last: bool = False):
        self.dataset = dataset
        self.batch_size = _check_batch_size(dataset, batch_size)
        self.seed = _check_int(seed, "seed")
        self.drop_last = bool(drop_last)
        ids: dict[str, int] = {}
        columns = [[ids.setdefault(text, len(ids)) for text in texts] for texts in dataset.columns.values()]
        self._row_ids: list[tuple[int, ...]] = list(zip(*columns))  # (N,) tuples of one id per column
        self._num_ids = len(ids)
        self._cache: OrderedDict[tuple[int, int], list[list[int]]] = OrderedDict()
        self._counts: dict[int, int] = {}

    def batches(self, epoch: int, *, repeat: int = 0) -> list[list[int]]:
        """The batches of `epoch` (row indices). `repeat` > 0 gives a fresh reshuffle of the same
        epoch, used by the weighted schedule when a dataset runs out."""
        key = (_check_int(epoch, "epoch"), repeat)
        if key not in self._cache:
            order = _permutation(len(self._row_ids), _epoch_seed(self.seed, epoch, repeat))
            result = self._one_pass(order)
            if not result:
                raise DataError(
                    f"{self.dataset.source}: no full batch of {self.batch_size} rows without duplicate texts "
                    f"can be formed (epoch {epoch}); lower batch_size or use drop_last=False"
                )
            self._cache[key] = result
            if len(self._cache) > 2:
                self._cache.popitem(last=False)
            if repeat == 0:
                self._counts[epoch] = len(result)
        return [list(batch) for batch in self._cache[key]]

    def num_batches(self, epoch: int) -> int:
        """Exact number of batches of `epoch` (runs the epoch's pass once, then remembers it)."""
        if epoch not in self._counts:
            self.batches(epoch)
        return self._counts[epoch]

    def most_repeated(self) -> tuple[str, str, int]:
        """(column, text, rows): the text found in the most rows and the column holding it most often.
        A batch holds each text at most once, so an epoch has at least `rows` batches."""
        rows_with = Counter(text for row in zip(*self.dataset.columns.values()) for text in set(row))
        text, rows = rows_with.most_common(1)[0]
        column = max(self.dataset.columns, key=lambda c: self.dataset.columns[c].count(text))
        return column, text, rows

    def _one_pass(self, order: list[int]) -> list[list[int]]:
        row_ids, batch_size = self._row_ids, self.batch_size
        stamp = [0] * self._num_ids  # stamp[t] == b  <=>  text t is already in batch b
        following = list(range(1, len(order) + 1))  # singly linked list over positions in `order`
        following[-1] = -1
        head, b, result = 0, 0, []
        while head != -1:
            b += 1
            batch: list[int] = []
            position, previous, full = head, -1, False
            while position != -1:
                after = following[position]
                row = order[position]
                ids = row_ids[row]
                for t in ids:
                    if stamp[t] == b:
                        break  # conflict: defer this row, it stays in the list
                else:
                    batch.append(row)
                    if previous == -1:
                        head = after
                    else:
                        following[previous] = after
                    if len(batch) == batch_size:
                        full = True
                        break
                    for t in ids:
                        stamp[t] = b
                    position = after
                    continue
                previous, position = position, after
            if full or not self.drop_last:
                result.append(batch)
        return result


@dataclass(frozen=True)
class BatchFill:
    """How full one epoch's batches are: what a sampler will actually give the loss."""

    batches: int
    rows: int  # rows in all batches (fewer than the data's when drop_last drops some)
    smallest: int
    largest: int
    batch_size: int  # rows asked per batch

    @classmethod
    def of(cls, batches: list[list[int]], batch_size: int) -> "BatchFill":
        sizes = [len(b) for b in batches]
        return cls(len(sizes), sum(sizes), min(sizes), max(sizes), batch_size)

    @property
    def mean(self) -> float:
        return self.rows / self.batches

    def __str__(self) -> str:  # 2757, rows per batch mean 1.98 (min 1, max 2) of 32 asked
        return (f"{self.batches}, rows per batch mean {self.mean:.2f} (min {self.smallest}, max {self.largest}) "
                f"of {self.batch_size} asked")


def _check_batch_size(dataset, batch_size) -> int:
    _check_int(batch_size, "batch_size")
    source = getattr(dataset, "source", "<dataset>")
    if batch_size < 1:
        raise DataError(f"{source}: batch_size must be at least 1, got {batch_size}")
    if batch_size > len(dataset):
        raise DataError(
            f"{source}: batch_size {batch_size} is larger than the data ({len(dataset)} rows); lower batch_size"
        )
    return batch_size


class MultiDatasetSchedule:
    """Interleave several samplers; every batch comes from ONE dataset. Yields (dataset index, rows).

    mode:
      round_robin   d0, d1, ..., d(n-1), d0, ... until the dataset with the fewest batches runs
                    out (ST's semantics): n * min_i num_batches_i batches; larger sets are truncated.
      proportional  (ST's default) every batch of every dataset once, in an order shuffled with
                    `seed + epoch`, so each dataset is drawn in proportion to its number of batches:
                    sum_i num_batches_i batches, all data used. Same order as ST's sampler.
      weighted      sum_i num_batches_i batches (one "epoch" of steps); each step draws dataset i
                    with probability w_i / sum(w) (`seed + epoch` generator). A dataset that runs out
                    is reshuffled: its next pass is `sampler.batches(epoch, repeat=r)` with a new seed.
                    A weight of 0 never draws that dataset.

    Every child's order depends on its own `seed + epoch`, so children reshuffle every epoch too
    (ST #3040, #2975). num_batches(epoch) is exact.
    """

    def __init__(self, samplers: list, *, mode: str = "proportional", weights=None, seed: int = 42):
        self.samplers = list(samplers)
        if not self.samplers:
            raise DataError("MultiDatasetSchedule needs at least one sampler")
        if mode not in DATASET_SCHEDULES:
            raise DataError(f"unknown schedule {mode!r}; expected one of {', '.join(DATASET_SCHEDULES)}")
        self.mode = mode
        self.seed = _check_int(seed, "seed")
        if mode != "weighted":
            if weights is not None:
                raise DataError(f"weights are only used by mode='weighted', not mode={mode!r}")
            self.weights = None
        else:
            self.weights = _check_weights(weights, len(self.samplers))

    def num_batches(self, epoch: int) -> int:
        counts = [sampler.num_batches(epoch) for sampler in self.samplers]
        if self.mode == "round_robin":
            return len(counts) * min(counts)
        return sum(counts)

    def batches(self, epoch: int) -> list[tuple[int, list[int]]]:
        children = [sampler.batches(epoch) for sampler in self.samplers]
        if self.mode == "round_robin":
            rounds = min(len(c) for c in children)
            return [(i, children[i][r]) for r in range(rounds) for i in range(len(children))]

        import torch

        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        if self.mode == "proportional":
            # ST: SubsetRandomSampler over [0]*n_0 + [1]*n_1 + ... with the generator at seed + epoch.
            owners = [i for i, c in enumerate(children) for _ in range(len(c))]
            picks = [owners[j] for j in torch.randperm(len(owners), generator=generator).tolist()]
        else:
            total = sum(len(c) for c in children)
            weights = torch.tensor(self.weights, dtype=torch.float64)
            picks = torch.multinomial(weights, total, replacement=True, generator=generator).tolist()
        result, taken, passes = [], [0] * len(children), [0] * len(children)
        for i in picks:
            if taken[i] == len(children[i]):  # only in weighted mode: start the next reshuffled pass
                passes[i] += 1
                children[i], taken[i] = self.samplers[i].batches(epoch, repeat=passes[i]), 0
            result.append((i, children[i][taken[i]]))
            taken[i] += 1
        return result


def _check_weights(weights, n: int) -> list[float]:
    if weights is None:
        raise DataError("mode='weighted' needs weights, one per dataset")
    weights = list(weights)
    if len(weights) != n:
        raise DataError(f"mode='weighted' got {len(weights)} weights for {n} datasets; give one per dataset")
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
            raise DataError(f"weight {i} must be a finite number >= 0, got {w!r}")
    if sum(weights) <= 0:
        raise DataError("weights must not all be 0")
    return [float(w) for w in weights]
