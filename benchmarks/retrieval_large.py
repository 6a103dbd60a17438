"""Retrieval over a synthetic 200k-document corpus: time and peak memory, minisbert vs sentence-transformers.

    python benchmarks/retrieval_large.py                      # 200k docs, 1000 queries, both libraries
    python benchmarks/retrieval_large.py --docs 50000 --impl ours

A fake encoder maps "doc 17" to row 17 of a fixed matrix of random unit vectors (and a query to a
noisy copy of one of its relevant documents), so no model time is measured: only the evaluator's
own work, i.e. chunked scoring, the running top-k merge and the metrics. Each library runs in its own
child process so that the peak resident memory (ru_maxrss) of one does not hide the other's; the
report gives the peak above the memory held before evaluation starts (the embedding matrix and the
texts), then checks both libraries printed the same metrics.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]


class FakeEncoder:
    """Looks up precomputed unit vectors: "doc i" -> docs[i], "query j" -> queries[j]."""

    similarity_fn_name = "cosine"
    prompts: dict = {}
    model_card_data = SimpleNamespace(set_evaluation_metrics=lambda *a, **k: None)

    def __init__(self, docs: torch.Tensor, queries: torch.Tensor):
        self.tables = {"doc": docs, "query": queries}

    def encode(self, texts, convert_to_tensor=True, truncate_dim=None, **kwargs):
        kind = texts[0].split(" ", 1)[0]
        rows = torch.tensor([int(t.split(" ", 1)[1]) for t in texts])
        emb = self.tables[kind].index_select(0, rows)[:, :truncate_dim]
        return emb if convert_to_tensor else emb.numpy()

    encode_query = encode
    encode_document = encode

    def similarity(self, a, b):
        from minisbert.similarity import cosine

        return cosine(a, b)


def make_data(n_docs: int, n_queries: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    docs = torch.nn.functional.normalize(torch.randn(n_docs, dim, generator=g), dim=-1)  # (N, D)
    relevant_rows = torch.randint(n_docs, (n_queries, 3), generator=g)  # 3 relevant docs per query
    # a query is a noisy copy of its first relevant document, so the metrics are not all zero
    queries = torch.nn.functional.normalize(docs[relevant_rows[:, 0]] + 1.2 * torch.randn(n_queries, dim, generator=g) / dim**0.5, dim=-1)
    corpus = {f"{i:07d}": f"doc {i}" for i in range(n_docs)}
    query_texts = {f"q{j}": f"query {j}" for j in range(n_queries)}
    qrels = {f"q{j}": {f"{int(i):07d}" for i in relevant_rows[j]} for j in range(n_queries)}
    return docs, queries, corpus, query_texts, qrels


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so it measures the evaluation alone (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(impl: str, n_docs: int, n_queries: int, dim: int, chunk: int) -> dict:
    if impl == "ours":
        from minisbert.evaluation import RetrievalEvaluator as Evaluator

        kwargs = {}
    else:
        from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator as Evaluator

        kwargs = {"write_csv": False}
    docs, queries, corpus, query_texts, qrels = make_data(n_docs, n_queries, dim)
    model = FakeEncoder(docs, queries)
    exact_peak = reset_peak()
    before = rss_mib()
    start = time.perf_counter()
    metrics = Evaluator(query_texts, corpus, qrels, corpus_chunk_size=chunk, **kwargs)(model)
    seconds = time.perf_counter() - start
    peak = peak_mib()
    return {"impl": impl, "seconds": seconds, "rss_before_mib": before, "peak_rss_mib": peak, "exact_peak": exact_peak,
            "peak_above_before_mib": peak - before, "metrics": {k: float(v) for k, v in metrics.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=200_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--chunk", type=int, default=50_000, help="corpus_chunk_size for both libraries")
    p.add_argument("--impl", choices=["ours", "st", "both"], default="both")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_one(args.impl, args.docs, args.queries, args.dim, args.chunk)))
        return

    impls = ["ours", "st"] if args.impl == "both" else [args.impl]
    results = {}
    for impl in impls:
        cmd = [sys.executable, __file__, "--child", "--impl", impl, "--docs", str(args.docs), "--queries", str(args.queries),
               "--dim", str(args.dim), "--chunk", str(args.chunk)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), **_env()})
        results[impl] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"corpus {args.docs} docs x {args.dim} dims, {args.queries} queries, corpus_chunk_size {args.chunk}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'impl':<6} {'seconds':>8} {'rss before MiB':>15} {'peak MiB':>9} {'peak above before MiB':>22}")
    for r in results.values():
        print(f"{r['impl']:<6} {r['seconds']:>8.2f} {r['rss_before_mib']:>15.0f} {r['peak_rss_mib']:>9.0f} {r['peak_above_before_mib']:>22.0f}"
              + ("" if r["exact_peak"] else "  (peak since process start: /proc/self/clear_refs not writable)"))
    if len(results) == 2:
        ours, st = results["ours"], results["st"]
        print(f"time ratio ours/st: {ours['seconds'] / st['seconds']:.2f}; "
              f"extra-memory ratio ours/st: {ours['peak_above_before_mib'] / max(st['peak_above_before_mib'], 1):.2f}")
        diff = max(abs(ours["metrics"][k] - st["metrics"][k]) for k in st["metrics"])
        print(f"same keys: {set(ours['metrics']) == set(st['metrics'])}; max |metric difference|: {diff:.2e}")
        print(f"cosine_ndcg@10: ours {ours['metrics']['cosine_ndcg@10']:.6f}, st {st['metrics']['cosine_ndcg@10']:.6f}")


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


if __name__ == "__main__":
    main()
