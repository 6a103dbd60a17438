"""No-duplicates sampler: minisbert vs sentence-transformers on synthetic hard-negative data.

    OMP_NUM_THREADS=1 python benchmarks/sampler.py [--rows 100000] [--batch_size 1024] [--negatives 2]

Data: `rows` (anchor, positive, negative_1..n) rows; negatives are drawn from the positives of
other rows, as mined hard negatives are, so rows conflict across columns. Two layouts: "mined",
where one anchor in ten is a repeat (a query with several positives), and "skewed", where a fifth
of the rows share 100 anchors (a batch holds at most 100 of them, so a pass yields fewer full
batches than rows / batch). For each layout and drop_last setting it prints the time of
one epoch, the number of batches an epoch really yields and the number announced before it
(minisbert: num_batches(epoch); ST: len(sampler), computed as ceil or floor of rows / batch).
ST's sampler is fed a minimal stand-in for a `datasets.Dataset` (column_names, len, row dicts),
which is all its plain path reads; its `precompute_hashes=True` variant needs `datasets` and
`xxhash` and is timed only when both are installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minisbert.data import from_columns  # noqa: E402
from minisbert.sampler import NoDuplicatesBatchSampler  # noqa: E402


def synthetic(rows: int, negatives: int, layout: str, seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    if layout == "mined":
        anchors = [f"query {i if rng.random() > 0.1 else rng.randrange(rows)}" for i in range(rows)]
    else:
        anchors = [f"query {i if rng.random() > 0.2 else rng.randrange(100)}" for i in range(rows)]
    columns = {"anchor": anchors, "positive": [f"passage {i}" for i in range(rows)]}
    for k in range(1, negatives + 1):
        columns[f"negative_{k}"] = [f"passage {rng.randrange(rows)}" for _ in range(rows)]
    return columns


class RowsView:
    """What ST's NoDuplicatesBatchSampler reads from a `datasets.Dataset`."""

    def __init__(self, columns):
        self.columns, self.column_names = columns, list(columns)

    def __len__(self):
        return len(self.columns["anchor"])

    def __getitem__(self, i):
        return {c: v[i] for c, v in self.columns.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--batch_size", type=int, default=1024)
    p.add_argument("--negatives", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    have_st = importlib.util.find_spec("sentence_transformers") is not None
    for layout in ("mined", "skewed"):
        columns = synthetic(args.rows, args.negatives, layout)
        print(f"\n{layout}: {args.rows:,} rows, {len(columns)} text columns, batch {args.batch_size}")
        start = time.perf_counter()
        dataset = from_columns(columns, name=layout)
        print(f"from_columns (validation): {time.perf_counter() - start:.2f} s")
        compare(columns, dataset, args, have_st)
    if not have_st:
        print("sentence-transformers is not installed: no reference timing")
    elif not all(importlib.util.find_spec(m) for m in ("datasets", "xxhash")):
        print("ST's no_duplicates_hashed variant needs `datasets` and `xxhash` (not installed): not timed")
    print("ST announces ceil/floor(rows / batch); a short epoch is padded with resampled rows and a long one keeps"
          " its extra small batches, so its LR schedule and its epoch disagree. minisbert's count is the epoch's.")


def compare(columns, dataset, args, have_st):
    if have_st:
        import torch
        from sentence_transformers.base.sampler import NoDuplicatesBatchSampler as STSampler

    print(f"{'sampler':<28} {'drop_last':>9} {'setup s':>8} {'epoch s':>8} {'batches':>8} {'announced':>9}")
    for drop_last in (False, True):
        start = time.perf_counter()
        ours = NoDuplicatesBatchSampler(dataset, args.batch_size, seed=args.seed, drop_last=drop_last)
        setup = time.perf_counter() - start
        start = time.perf_counter()
        announced = ours.num_batches(0)  # runs the epoch's pass
        batches = ours.batches(0)  # cached
        epoch = time.perf_counter() - start
        print(f"{'minisbert':<28} {drop_last!s:>9} {setup:>8.2f} {epoch:>8.2f} {len(batches):>8} {announced:>9}")
        if not have_st:
            continue
        variants = [("ST NoDuplicatesBatchSampler", {})]
        if all(importlib.util.find_spec(m) for m in ("datasets", "xxhash")):
            variants.append(("ST no_duplicates_hashed", {"precompute_hashes": True}))
        for label, extra in variants:
            view = RowsView(columns)
            if extra:
                import datasets

                view = datasets.Dataset.from_dict(columns)
            start = time.perf_counter()
            reference = STSampler(view, args.batch_size, drop_last, generator=torch.Generator(), seed=args.seed,
                                  **extra)
            setup = time.perf_counter() - start
            start = time.perf_counter()
            got = list(reference)
            epoch = time.perf_counter() - start
            first_pass = "" if got[:len(batches)] == batches else "  (first pass differs from minisbert!)"
            print(f"{label:<28} {drop_last!s:>9} {setup:>8.2f} {epoch:>8.2f} {len(got):>8} {len(reference):>9}"
                  f"{first_pass}")


if __name__ == "__main__":
    main()
