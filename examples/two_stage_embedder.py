"""Recipe 1, a two-stage general embedder: unsupervised SimCSE on raw sentences, then supervised NLI
triplets with MNRL (large batch, no-duplicates sampler), then classification and clustering probes.

    python examples/two_stage_embedder.py                                   # full data (see examples/README.md)
    python examples/two_stage_embedder.py --simcse_sentences 512 --nli_rows 640 \\
        --nli_batch_size 128 --probe_rows 400                               # the few-minute CPU run
    python examples/two_stage_embedder.py --model answerdotai/ModernBERT-base   # what the setup is for

Designed for a raw masked-LM backbone (SimCSE: bert-base-uncased; today answerdotai/ModernBERT-base):
stage 1 teaches it sentence similarity from dropout noise alone, stage 2 sharpens it with labelled
NLI triplets. On the CPU it runs on all-MiniLM-L6-v2, which is already a trained embedder, so there
the stages show how much each moves a good model rather than how they build one.

Stage 0 writes the SimCSE sentences (the unique texts of nli-triplets train, one "text" column) and
the probe sets; stage 1 and 2 are one `python train.py --config ...` each; the evaluation is
evaluate.py's triplet, classification (logistic-regression probe, SNLI vs MultiNLI premises) and
clustering (k-means v-measure) tasks on the base model and after each stage.
"""

from __future__ import annotations

import recipe_common as common


def main(argv=None) -> dict:
    p = common.parser(__doc__, "two_stage_embedder")
    p.add_argument("--simcse_sentences", type=int, default=0, help="sentences for stage 1 (0: every unique text)")
    p.add_argument("--simcse_batch_size", type=int, default=64, help="SimCSE's unsupervised batch")
    p.add_argument("--simcse_learning_rate", type=float, default=3e-5, help="SimCSE's rate for a base-size BERT")
    p.add_argument("--nli_rows", type=int, default=0, help="NLI triplets for stage 2 (0: all)")
    p.add_argument("--nli_batch_size", type=int, default=256, help="stage 2 batch: every other row's positive and "
                   "negative is a negative too, so larger is better")
    p.add_argument("--nli_learning_rate", type=float, default=2e-5)
    p.add_argument("--probe_rows", type=int, default=0, help="triplet rows per split for the evaluations (0: all)")
    p.add_argument("--dtype", default="fp32", help="fp32 | bf16")
    p.add_argument("--gradient_checkpointing", action="store_true", help="recompute each layer in backward: "
                   "less memory for big backbones and long inputs (train.py's flag)")
    args = p.parse_args(argv)
    out = common.start(args)
    nli = args.data_dir / "nli-triplets"

    # ---------------------------------------------------------------- stage 0: data
    train_rows = common.read_jsonl(nli / "train.jsonl")
    texts = list(dict.fromkeys(r[c] for r in train_rows for c in ("anchor", "positive", "negative")))
    sentences = common.write_jsonl(out / "data" / "simcse-sentences.jsonl",
                                   ({"text": t} for t in common.sample(texts, args.simcse_sentences, args.seed)))
    triplets = common.write_jsonl(out / "data" / "nli-train.jsonl", common.sample(train_rows, args.nli_rows, args.seed))
    probe = nli  # triplets (anchor/positive/negative) + source: all three evaluations read this folder
    if args.probe_rows > 0:
        probe = out / "data" / "nli-probe"
        for split in ("train", "dev"):
            common.write_jsonl(probe / f"{split}.jsonl",
                               common.sample(common.read_jsonl(nli / f"{split}.jsonl"), args.probe_rows, args.seed))

    common_fields = {"seed": args.seed, "dtype": args.dtype, "max_steps": args.max_steps, "eval_data": [],
                     "save_steps": 0, "logging_steps": 5, "disable_tqdm": True,
                     "gradient_checkpointing": args.gradient_checkpointing}
    # ---------------------------------------------------------------- stage 1: unsupervised SimCSE
    # One text column + an MNRL loss = SimCSE: the batch is embedded twice, the two dropout masks
    # make the positive pair, the other rows are the negatives; scale 20 = SimCSE's temperature 0.05.
    stage1 = common.train(common_fields | {
        "model": args.model, "data": str(sentences), "loss": "mnrl", "scale": 20.0,
        "batch_size": args.simcse_batch_size, "learning_rate": args.simcse_learning_rate,
        "output_dir": str(out / "stage1-simcse"),
    }, out / "stage1-simcse.json")

    # ---------------------------------------------------------------- stage 2: supervised NLI triplets
    stage2 = common.train(common_fields | {
        "model": stage1["final"], "data": str(triplets), "columns": ["anchor", "positive", "negative"],
        "loss": "mnrl", "scale": 20.0, "batch_sampler": "no_duplicates", "batch_size": args.nli_batch_size,
        "learning_rate": args.nli_learning_rate, "warmup_ratio": 0.1, "output_dir": str(out / "stage2-nli"),
    }, out / "stage2-nli.json")

    # ---------------------------------------------------------------- evaluation of each model
    table = {}
    for name, model in (("base", args.model), ("stage1", stage1["final"]), ("stage2", stage2["final"])):
        table[name] = {}
        table[name] |= common.evaluate("--model", model, "--task", "triplet", "--data", probe, "--split", "dev",
                                       "--similarity_fn_names", "cosine", "--name", "nli-dev")
        table[name] |= common.evaluate("--model", model, "--task", "classification", "--data", probe, "--split", "dev",
                                       "--name", "probe")
        table[name] |= common.evaluate("--model", model, "--task", "clustering", "--data", probe, "--split", "dev",
                                       "--name", "probe")
    return common.report(out, table)


if __name__ == "__main__":
    main()
