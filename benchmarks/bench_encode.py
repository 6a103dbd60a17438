"""Encoding side by side (workload 1): 5,000 STS-B sentences, batch 64, all-MiniLM-L6-v2.

    python benchmarks/bench_encode.py [--n 5000] [--repeats 3]

With --distinct the sentences are the first n distinct ones (minisbert encodes each distinct text once,
so the default, repeats kept, gives it less work than ST; this shows the speed on equal work).

Cases: ST fp32 (`SentenceTransformer.encode`), minisbert fp32 (`BiEncoder.encode`, outputs checked
against ST's: max |difference|), minisbert bf16 (CPU autocast around `encode`, checked by cosine to
its own fp32 output), and for reference ST bf16 (the same autocast around ST's encode).
"""

from __future__ import annotations

import argparse
import contextlib

import common

BATCH = 64


def _case(name: str, sentences: list[str], batch_size: int = BATCH):
    import torch

    path = str(common.model_dir())
    lib, dtype = name.split("_")
    if lib == "st":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(path, device="cpu")
        encode = lambda: model.encode(sentences, batch_size=batch_size, convert_to_numpy=True)  # noqa: E731
    else:
        from minisbert import BiEncoder

        model = BiEncoder.from_pretrained(path, device="cpu")
        encode = lambda: model.encode(sentences, batch_size=batch_size)  # noqa: E731
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()

    def run(_i=0):
        with autocast:
            return encode()

    return run


CASES = ("st_fp32", "minisbert_fp32", "minisbert_bf16", "st_bf16")


def time_encode(n: int = 5000, repeats: int = 3, warmup: int = 1, cases=CASES, distinct: bool = False) -> dict:
    import numpy as np

    sentences = common.stsb_sentences(n, distinct)
    runs = {c: _case(c, sentences) for c in cases}
    out = {c: runs[c]() for c in cases}  # also the warm-up
    times = common.alternate(runs, repeats, warmup=max(0, warmup - 1))

    def cosine_min(a, b):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return float((a * b).sum(1).min())

    checks = {"minisbert_fp32_max_abs_diff_to_st": float(np.abs(out["minisbert_fp32"] - out["st_fp32"]).max())}
    if "minisbert_bf16" in out:
        checks["minisbert_bf16_min_cosine_to_fp32"] = cosine_min(out["minisbert_bf16"], out["minisbert_fp32"])
    if "st_bf16" in out:
        checks["st_bf16_min_cosine_to_fp32"] = cosine_min(out["st_bf16"], out["st_fp32"])
    return {"seconds": {c: common.median(t) for c, t in times.items()}, "all_seconds": times, "checks": checks, "n": n}


def mem_encode(case: str, n: int = 5000) -> dict:
    sentences = common.stsb_sentences(n)
    run = _case(case, sentences)
    run()
    return {"peak_mib": common.measure_peak(run)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--distinct", action="store_true")
    args = parser.parse_args()
    common.set_threads()
    common.quiet()
    r = time_encode(args.n, args.repeats, distinct=args.distinct)
    base = r["seconds"]["st_fp32"]
    for name, s in r["seconds"].items():
        print(f"{name:16s} {s:8.2f} s  {args.n / s:8.1f} sentences/s  {base / s:5.2f}x ST fp32")
    print(r["checks"])
