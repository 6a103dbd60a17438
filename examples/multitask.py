"""Recipe 5, multi-task training: round robin over three datasets, each with its own loss, with
triplet and STS evaluation.

    python examples/multitask.py                                            # all rows (see examples/README.md)
    python examples/multitask.py --rows_per_dataset 64 --batch_size 16 \\
        --max_length 128 --eval_rows 200                                   # the few-minute CPU run
    python examples/multitask.py --model intfloat/multilingual-e5-base      # what the setup is for

  nli      NLI (anchor, positive, negative) triplets      triplet loss, euclidean distance, margin 5
  scifact  SciFact (claim, cited abstract) pairs          MNRL, with "query: " / "passage: " prefixes
  stsb     STS-B (sentence1, sentence2, score in 0..1)    CoSENT, scale 20

Every batch comes from one dataset, in turn (nli, scifact, stsb, nli, ...), until the dataset with
the fewest batches runs out (sentence-transformers' ROUND_ROBIN), so each loss gets the same number
of steps. The prefixes are E5's (designed for intfloat/multilingual-e5-base, an XLM-R model); they
are prepended at training time and saved with the model as its "query" / "document" prompts, so
`model.encode(texts, prompt_name="query")` uses them. The evaluation is the NLI dev triplets and
the STS-B test pairs, before and after training.
"""

from __future__ import annotations

import recipe_common as common


def main(argv=None) -> dict:
    p = common.parser(__doc__, "multitask")
    p.add_argument("--rows_per_dataset", type=int, default=0, help="rows drawn from each training set (0: all)")
    p.add_argument("--eval_rows", type=int, default=0, help="rows drawn from each evaluation set (0: all)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_length", type=int, default=None, help="tokens per text (default: the model's)")
    p.add_argument("--num_train_epochs", type=int, default=1)
    args = p.parse_args(argv)
    out = common.start(args)
    d, n = args.data_dir, args.rows_per_dataset

    # ---------------------------------------------------------------- stage 0: the three training sets, the eval sets
    nli = common.write_jsonl(out / "data" / "nli.jsonl",
                             common.sample(common.read_jsonl(d / "nli-triplets" / "train.jsonl"), n, args.seed))
    stsb = common.write_jsonl(out / "data" / "stsb.jsonl",
                              common.sample(common.read_jsonl(d / "stsb" / "train.jsonl"), n, args.seed))
    queries = {q["_id"]: q["text"] for q in common.read_jsonl(d / "scifact" / "queries.jsonl")}
    passages = {c["_id"]: (c.get("title", "") + " " + c["text"]).strip() for c in common.read_jsonl(d / "scifact" / "corpus.jsonl")}
    qrels = [line.split("\t")[:2] for line in (d / "scifact" / "qrels" / "train.tsv").read_text().splitlines()[1:] if line.strip()]
    scifact = common.write_jsonl(out / "data" / "scifact.jsonl", common.sample(
        [{"query": queries[q], "passage": passages[c]} for q, c in qrels], n, args.seed))
    nli_dev = common.write_jsonl(out / "data" / "nli-dev.jsonl",
                                 common.sample(common.read_jsonl(d / "nli-triplets" / "dev.jsonl"), args.eval_rows, args.seed))
    sts_test = common.write_jsonl(out / "data" / "stsb-test.jsonl",
                                  common.sample(common.read_jsonl(d / "stsb" / "test.jsonl"), args.eval_rows, args.seed))

    # ---------------------------------------------------------------- training
    # margin and distance reach the triplet loss only, scale reaches MNRL and CoSENT (20 for both).
    run = common.train({
        "model": args.model, "max_length": args.max_length,
        "datasets": [
            {"name": "nli", "path": str(nli), "loss": "triplet", "columns": ["anchor", "positive", "negative"]},
            {"name": "scifact", "path": str(scifact), "loss": "mnrl", "columns": ["query", "passage"],
             "prompts": {"query": "query: ", "passage": "passage: "}},
            {"name": "stsb", "path": str(stsb), "loss": "cosent", "columns": ["sentence1", "sentence2"],
             "label_column": "score"},
        ],
        "multi_dataset_schedule": "round_robin", "distance": "euclidean", "margin": 5.0, "scale": 20.0,
        "batch_size": args.batch_size, "num_train_epochs": args.num_train_epochs, "max_steps": args.max_steps,
        "learning_rate": 2e-5, "warmup_ratio": 0.1, "seed": args.seed,
        "eval_data": [f"nli-dev={nli_dev}", f"stsb-test={sts_test}"],
        "save_steps": 0, "logging_steps": 5, "output_dir": str(out / "train"), "disable_tqdm": True,
    }, out / "train.json")
    return common.report(out, {"before": run["before"], "after": run["after"]})


if __name__ == "__main__":
    main()
