"""Retrieval evaluation side by side (workload 6): SciFact test (300 queries, 5,183 abstracts).

    python benchmarks/bench_retrieval.py [--corpus_limit N] [--repeats 1]

ST's InformationRetrievalEvaluator against minisbert's RetrievalEvaluator, both with their defaults
(batch 32, cosine, the same metrics at the same k), on all-MiniLM-L6-v2. Time is the whole evaluator
call (encoding queries and corpus, scoring, top-k, metrics); nDCG@10 of both is reported so equal work
can be checked. minisbert bf16 = the same evaluator call under CPU bf16 autocast.
`--corpus_limit N` keeps the relevant documents plus the first others up to N (for smoke runs).
"""

from __future__ import annotations

import argparse
import contextlib

import common


def scifact(corpus_limit: int | None = None):
    from minisbert.evaluation import read_beir

    queries, corpus, qrels = read_beir(common.DATA / "scifact", "test")
    if corpus_limit:
        keep = {c for rel in qrels.values() for c in rel}
        for cid in corpus:
            if len(keep) >= corpus_limit:
                break
            keep.add(cid)
        corpus = {c: t for c, t in corpus.items() if c in keep}
    return queries, corpus, qrels


def _case(name: str, corpus_limit: int | None):
    import torch

    queries, corpus, qrels = scifact(corpus_limit)
    path = str(common.model_dir())
    lib, dtype = name.split("_")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    if lib == "st":
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

        model = SentenceTransformer(path, device="cpu")
        evaluator = InformationRetrievalEvaluator(queries, corpus, {q: set(r) for q, r in qrels.items()}, name="scifact")
    else:
        from minisbert import BiEncoder
        from minisbert.evaluation import RetrievalEvaluator

        model = BiEncoder.from_pretrained(path, device="cpu")
        evaluator = RetrievalEvaluator(queries, corpus, qrels, name="scifact")

    def run(_i=0):
        with autocast:
            return evaluator(model)

    run.model = model
    return run


CASES = ("st_fp32", "minisbert_fp32", "minisbert_bf16")


def time_retrieval(corpus_limit: int | None = None, repeats: int = 1, cases=CASES) -> dict:
    runs = {c: _case(c, corpus_limit) for c in cases}
    metrics = {}

    def timed(c):
        def run(i):
            metrics[c] = float(runs[c]()["scifact_cosine_ndcg@10"])
        return run

    times = common.alternate({c: timed(c) for c in cases}, repeats, warmup=0)
    return {"seconds": {c: common.median(t) for c, t in times.items()}, "all_seconds": times,
            "checks": {f"{c}_ndcg@10": v for c, v in metrics.items()}}


def mem_retrieval(case: str, corpus_limit: int | None = None) -> dict:
    run = _case(case, corpus_limit)
    # No warm-up run (it would double a long workload): the peak is measured on the first call, after
    # one short encode has loaded the kernels.
    run.model.encode(["a warm-up sentence"] * 4)
    return {"peak_mib": common.measure_peak(run)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_limit", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    common.set_threads()
    common.quiet()
    r = time_retrieval(args.corpus_limit, args.repeats)
    base = r["seconds"]["st_fp32"]
    for c, s in r["seconds"].items():
        print(f"{c:16s} {s:8.1f} s  {base / s:5.2f}x ST fp32   nDCG@10 {r['checks'][c + '_ndcg@10']:.4f}")
