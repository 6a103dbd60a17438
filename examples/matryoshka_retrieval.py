"""Recipe 2, a Matryoshka retrieval fine-tune: CLS pooling + normalize, Matryoshka(MNRL) on SciFact
(query, cited abstract) pairs, retrieval metrics per embedding dimension, NDCG@10 plotted against it.

    python examples/matryoshka_retrieval.py                                 # the designed run (see below)
    python examples/matryoshka_retrieval.py --max_length 128 --train_rows 160 --dev_queries 30 \\
        --dev_corpus_size 200 --corpus_size 600 --gradient_accumulation_steps 1 --eval_steps 5   # the CPU run
    python examples/matryoshka_retrieval.py --model BAAI/bge-base-en-v1.5   # what the setup is for

The setup is the "fine-tune an embedding model for RAG" recipe built around BAAI/bge-base-en-v1.5
(768 dims, CLS pooling, normalized): Matryoshka dims (full, 512, 256, 128, 64; those wider than the
model are dropped), MNRL inside, batch 16 x 16 gradient accumulation, lr 2e-5, cosine schedule with
10% warmup, bf16 autocast, TF32 matmuls, fused AdamW (train.py fuses it on CUDA by itself; tf32 only
acts on CUDA), 4 epochs, the best checkpoint by dev NDCG@10 at dim 128 loaded at the end.

Stage 0 writes (query, passage) pairs from SciFact's train qrels, holding out --dev_queries train
queries as a dev set for choosing the best checkpoint (the test split is only reported, never used
to choose), and BEIR folders for dev and test whose corpus is, with --corpus_size N (test) and
--dev_corpus_size N (dev), the cited abstracts plus random others up to N (0: the full 5,183).
It saves the base model with CLS pooling and normalization as `base-cls/`; the "before" column is
that model, before any training.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import recipe_common as common

FN = "cosine"  # normalized embeddings: cosine == dot, so one similarity function is reported


def read_qrels(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [tuple(line.split("\t")[:2]) for line in lines[1:] if line.strip()]


def write_beir(folder: Path, split: str, queries: dict, corpus: list[dict], qrels, corpus_size: int, seed: int) -> Path:
    """A BEIR folder with the queries of `qrels`, and the cited docs plus random others up to corpus_size."""
    cited = {d for _, d in qrels}
    docs = [d for d in corpus if d["_id"] in cited]
    others = [d for d in corpus if d["_id"] not in cited]
    if corpus_size > 0:
        docs += random.Random(seed).sample(others, max(0, min(len(others), corpus_size - len(docs))))
    else:
        docs += others
    common.write_jsonl(folder / "corpus.jsonl", sorted(docs, key=lambda d: d["_id"]))
    common.write_jsonl(folder / "queries.jsonl", ({"_id": q, "text": queries[q]} for q in dict.fromkeys(q for q, _ in qrels)))
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in qrels))
    return folder


def plot(results: dict[str, dict], dims: list[int], path: Path, title: str) -> None:
    """NDCG@10 against the embedding dimension, one line per model (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, metrics in results.items():
        ax.plot(dims, [metrics[f"scifact-test_dim_{d}_{FN}_ndcg@10"] for d in dims], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("embedding dimension (Matryoshka truncation)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None) -> dict:
    p = common.parser(__doc__, "matryoshka_retrieval")
    p.add_argument("--pooling", default="cls", help="pooling of the base model (the setup: cls)")
    p.add_argument("--max_length", type=int, default=None, help="tokens per text (default: the model's)")
    p.add_argument("--matryoshka_dims", type=int, nargs="+", default=None,
                   help="default: the model's width, then 512 256 128 64 below it")
    p.add_argument("--train_rows", type=int, default=0, help="training pairs, drawn at random (0: all)")
    p.add_argument("--dev_queries", type=int, default=50, help="train queries held out to choose the best checkpoint")
    p.add_argument("--corpus_size", type=int, default=0, help="documents in the test corpus (0: all 5,183)")
    p.add_argument("--dev_corpus_size", type=int, default=None, help="documents in the dev corpus (default: --corpus_size)")
    p.add_argument("--num_train_epochs", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--gradient_accumulation_steps", type=int, default=16)
    p.add_argument("--warmup_ratio", type=float, default=0.1, help="share of the steps with a rising learning rate")
    p.add_argument("--eval_steps", type=int, default=0, help="evaluate on dev every N steps (0: once per epoch)")
    p.add_argument("--dtype", default="bf16", help="bf16 | fp32")
    args = p.parse_args(argv)
    out = common.start(args)
    scifact = args.data_dir / "scifact"

    # ---------------------------------------------------------------- stage 0: pairs, dev / test folders, CLS model
    queries = {q["_id"]: q["text"] for q in common.read_jsonl(scifact / "queries.jsonl")}
    corpus = common.read_jsonl(scifact / "corpus.jsonl")
    passage = {d["_id"]: (d.get("title", "") + " " + d["text"]).strip() for d in corpus}  # as the evaluator joins them
    train_qrels = read_qrels(scifact / "qrels" / "train.tsv")
    train_ids = list(dict.fromkeys(q for q, _ in train_qrels))
    dev_ids = set(random.Random(args.seed).sample(train_ids, min(args.dev_queries, len(train_ids) - 1)))
    pairs = [{"anchor": queries[q], "positive": passage[d]} for q, d in train_qrels if q not in dev_ids]
    pairs = common.write_jsonl(out / "data" / "scifact-train-pairs.jsonl", common.sample(pairs, args.train_rows, args.seed))
    dev = write_beir(out / "data" / "scifact-dev", "dev", queries, corpus,
                     [(q, d) for q, d in train_qrels if q in dev_ids],
                     args.corpus_size if args.dev_corpus_size is None else args.dev_corpus_size, args.seed)
    test = write_beir(out / "data" / "scifact-test", "test", queries, corpus,
                      read_qrels(scifact / "qrels" / "test.tsv"), args.corpus_size, args.seed)

    from minisbert import BiEncoder

    base = BiEncoder.from_pretrained(args.model, pooling=args.pooling, normalize=True, max_length=args.max_length)
    base_dir = base.save_pretrained(out / "base-cls")
    dims = args.matryoshka_dims or [base.embedding_dim] + [d for d in (512, 256, 128, 64) if d < base.embedding_dim]
    best_dim = 128 if 128 in dims else dims[-1]
    n_pairs = len(common.read_jsonl(pairs))
    steps_per_epoch = max(1, math.ceil(n_pairs / args.batch_size / args.gradient_accumulation_steps))
    del base

    # ---------------------------------------------------------------- training
    run = common.train({
        "model": str(base_dir), "data": str(pairs), "columns": ["anchor", "positive"],
        "loss": "matryoshka", "matryoshka_inner": "mnrl", "matryoshka_dims": dims, "batch_sampler": "no_duplicates",
        "batch_size": args.batch_size, "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "learning_rate": 2e-5, "lr_scheduler_type": "cosine", "warmup_ratio": args.warmup_ratio,
        "dtype": args.dtype, "tf32": True, "num_train_epochs": args.num_train_epochs, "max_steps": args.max_steps,
        "seed": args.seed, "eval_data": [f"scifact-dev={dev}"], "eval_steps": args.eval_steps or steps_per_epoch,
        "metric_for_best_model": f"scifact-dev_dim_{best_dim}_{FN}_ndcg@10", "save_steps": 0, "save_total_limit": 1,
        "logging_steps": 5, "output_dir": str(out / "train"), "disable_tqdm": True,
    }, out / "train.json")

    # ---------------------------------------------------------------- test evaluation per dimension, plot
    results = {}
    for name, model in (("before", base_dir), ("after", run["final"])):
        results[name] = common.evaluate(
            "--model", model, "--task", "retrieval", "--data", test, "--split", "test", "--name", "scifact-test",
            "--matryoshka_dims", *dims, "--similarity_fn_names", FN, "--output_dir", out / f"test-{name}")
    n_docs = len(common.read_jsonl(test / "corpus.jsonl"))
    plot({f"before ({args.pooling} pooling, untrained)": results["before"], "after (Matryoshka MNRL, best dev checkpoint)": results["after"]},
         dims, out / "ndcg_vs_dim.png", f"SciFact test, {n_docs:,}-document corpus")
    table = {"before": run["before"] | results["before"], "after": run["after"] | results["after"]}
    return common.report(out, table)


if __name__ == "__main__":
    main()
