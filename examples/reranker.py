"""Recipe 4, a cross-encoder reranker: a new one-logit head on a bi-encoder's backbone, trained with
BCE (pos_weight 5) on (query, passage) pairs whose negatives a bi-encoder mined, evaluated by
reranking TrecQA test against the untrained model and against the mining bi-encoder.

    python examples/reranker.py                                             # all 78 train questions
    python examples/reranker.py --train_queries 20                          # the few-minute CPU run
    python examples/reranker.py --model answerdotai/ModernBERT-base \\
        --mining_model sentence-transformers/static-retrieval-mrl-en-v1     # what the setup is for

The setup is sentence-transformers' GooAQ reranker (ModernBERT-base, negatives mined with a static
embedding model, num_negatives 5, margin 0, range_max 100, "top" sampling, labeled pairs, BCE with
pos_weight = number of negatives per positive, lr 2e-5, 10% warmup, bf16, one epoch). Here the
question-answer pairs are TrecQA's: every (question, correct answer sentence) is a positive; the
corpus to mine from is every candidate sentence of the training questions.

`minisbert.data.mine_hard_negatives` does the mining, as `sentence_transformers.util.
mine_hard_negatives(..., sampling_strategy="top", output_format="labeled-pair")` does: for each
question, the bi-encoder's nearest corpus sentences, skipping the question's own positives and,
with --margin m, any sentence scoring above (lowest positive score - m), or with --max_score s,
above s; the first --num_negatives left are its negatives.
"""

from __future__ import annotations

import recipe_common as common


def main(argv=None) -> dict:
    p = common.parser(__doc__, "reranker")
    p.add_argument("--mining_model", default=None, help="bi-encoder that mines the negatives (default: all-MiniLM-L6-v2)")
    p.add_argument("--train_queries", type=int, default=0, help="training questions, drawn at random (0: all)")
    p.add_argument("--num_negatives", type=int, default=5)
    p.add_argument("--margin", type=float, default=0.0, help="drop candidates within this of the lowest positive score")
    p.add_argument("--max_score", type=float, default=None, help="drop candidates scoring above this")
    p.add_argument("--range_max", type=int, default=100, help="how far down the bi-encoder's ranking to look")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_train_epochs", type=int, default=1)
    p.add_argument("--dtype", default="bf16", help="bf16 | fp32")
    p.add_argument("--gradient_checkpointing", action="store_true", help="recompute each layer in backward: "
                   "less memory for big backbones and long inputs (train.py's flag)")
    args = p.parse_args(argv)
    out = common.start(args)
    args.mining_model = args.mining_model or common.default_model()
    trecqa = args.data_dir / "trecqa-rerank"
    test = trecqa / "test.jsonl"

    # ---------------------------------------------------------------- stage 0: mine negatives with a bi-encoder
    from minisbert import BiEncoder
    from minisbert.data import mine_hard_negatives

    samples = common.sample(common.read_jsonl(trecqa / "train.jsonl"), args.train_queries, args.seed)
    queries = [s["query"] for s in samples for _ in s["positive"]]
    positives = [p for s in samples for p in s["positive"]]
    corpus = [text for s in samples for text in s["positive"] + s["negative"]]
    print(f"mining {args.num_negatives} negatives for {len(positives)} (question, answer) pairs of {len(samples)} "
          f"questions from {len(set(corpus))} candidate sentences with {args.mining_model}")
    miner = BiEncoder.from_pretrained(args.mining_model)
    rows = mine_hard_negatives(miner, queries, positives, corpus, num_negatives=args.num_negatives,
                               range_max=args.range_max, margin=args.margin, max_score=args.max_score)
    del miner
    # n-tuples -> labelled pairs, each (question, sentence) once (positives of one question share negatives)
    pairs = {}
    for query, positive, *negatives in rows:
        pairs[(query, positive)] = 1.0
        for negative in negatives:
            pairs.setdefault((query, negative), 0.0)
    train_file = common.write_jsonl(out / "data" / "trecqa-train-mined.jsonl",
                                    ({"query": q, "passage": t, "label": y} for (q, t), y in pairs.items()))
    n_pos = sum(y == 1.0 for y in pairs.values())
    print(f"{len(rows)} mined rows -> {n_pos} positive and {len(pairs) - n_pos} negative pairs in {train_file}")

    # ---------------------------------------------------------------- training: a CrossEncoder from a bi-encoder
    # A bi-encoder folder (or a plain backbone) passed to a cross-encoder loss gets a new one-logit head.
    run = common.train({
        "model": args.model, "data": str(train_file), "columns": ["query", "passage"], "label_column": "label",
        "loss": "bce", "pos_weight": float(args.num_negatives), "batch_size": args.batch_size,
        "num_train_epochs": args.num_train_epochs, "max_steps": args.max_steps, "learning_rate": 2e-5,
        "warmup_ratio": 0.1, "dtype": args.dtype, "seed": args.seed, "eval_data": [f"trecqa-test={test}"],
        "save_steps": 0, "logging_steps": 10, "output_dir": str(out / "train"), "disable_tqdm": True,
        "gradient_checkpointing": args.gradient_checkpointing,
    }, out / "train.json")

    # ---------------------------------------------------------------- the first stage's own ranking, for comparison
    bi_encoder = common.evaluate("--model", args.mining_model, "--task", "rerank", "--data", test, "--name", "trecqa-test")
    table = {"bi-encoder": bi_encoder, "untrained CE": run["before"], "trained CE": run["after"]}
    return common.report(out, table, ["trecqa-test_map", "trecqa-test_mrr@10", "trecqa-test_ndcg@10"])


if __name__ == "__main__":
    main()
