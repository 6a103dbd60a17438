"""Same hyperparameters, same result: fine-tune all-MiniLM-L6-v2 with MNRL on the NLI triplets with minisbert's
train.py and with sentence-transformers' trainer, then score both (and the model before training).

    python benchmarks/quality.py                 # 1 epoch each, STS-B test Spearman + SciFact test nDCG@10
    python benchmarks/quality.py --quick         # 40 steps each, STS-B only
    python benchmarks/quality.py --out runs/quality --json quality.json

Hyperparameters (both): batch 32, 1 epoch, AdamW lr 5e-5, weight decay 0.01 (not on biases and LayerNorm
weights), linear decay without warmup, gradient clipping 1.0, seed 42, the no-duplicates batch sampler,
max length 256 (the model's), fp32, CPU. The two runs see different batch orders and dropout draws
(each library's own sampler and RNG), so their scores differ by training noise only; the check is that
they land within 0.005 of each other on STS-B test Spearman (cosine).
Scores come from one implementation for every model (minisbert's STSEvaluator and RetrievalEvaluator,
pinned to ST's evaluators by tests/test_evaluation.py). ST's trainer needs sentence-transformers[train]
(datasets, accelerate); without it the ST run is a plain loop over ST's model and loss with the same
optimizer, schedule, clipping and sampler (marked "st_loop").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common

TRAIN = common.DATA / "nli-triplets" / "train.jsonl"
HYPER = {"batch_size": 32, "learning_rate": 5e-5, "weight_decay": 0.01, "seed": 42}


def evaluate(model_path: str, scifact: bool = True) -> dict:
    """STS-B test Spearman (cosine) and SciFact test nDCG@10 (cosine) of a bi-encoder folder."""
    from minisbert import BiEncoder
    from minisbert.evaluation import RetrievalEvaluator, STSEvaluator

    model = BiEncoder.from_pretrained(model_path, device="cpu")
    out = {"stsb_spearman": float(STSEvaluator.from_file(common.DATA / "stsb", "test")(model)["spearman_cosine"])}
    if scifact:
        out["scifact_ndcg@10"] = float(RetrievalEvaluator.from_beir(common.DATA / "scifact", "test")(model)["cosine_ndcg@10"])
    return out


def _env(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
                PYTHONPATH=str(common.REPO))


def train_minisbert(out: Path, threads: int, max_steps: int = -1) -> float:
    cmd = [sys.executable, str(common.REPO / "train.py"), "--data", str(TRAIN), "--columns", "anchor", "positive", "negative",
           "--loss", "mnrl", "--num_train_epochs", "1", "--max_steps", str(max_steps), "--warmup_ratio", "0",
           "--lr_scheduler_type", "linear", "--max_grad_norm", "1.0", "--dtype", "fp32", "--save_steps", "0",
           "--eval_data", "none", "--output_dir", str(out), "--disable_tqdm"]
    for k, v in HYPER.items():
        cmd += [f"--{k}", str(v)]
    t = time.perf_counter()
    subprocess.run(cmd, env=_env(threads), cwd=str(common.REPO), check=True, capture_output=True, text=True)
    return time.perf_counter() - t


def train_st(out: Path, threads: int) -> float:
    """One epoch with SentenceTransformerTrainer (st_first_step.py --max_steps 0); the model goes to out/final."""
    cmd = [sys.executable, str(common.HERE / "st_first_step.py"), str(TRAIN), str(out), "--max_steps", "0", "--epochs", "1"]
    for k, v in HYPER.items():
        cmd += [f"--{k}", str(v)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(threads), cwd=str(common.REPO), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"ST trainer failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def train_st_loop(out: str, max_steps: int = -1) -> dict:
    """sentence-transformers' model and MNRL loss in a plain loop: fused AdamW (transformers' default), linear
    decay, clipping 1.0, minisbert's no-duplicates batches (seed 42), one epoch; saves to `out`."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from minisbert.data import from_columns
    from minisbert.sampler import NoDuplicatesBatchSampler
    from minisbert.training import decay_parameter_names

    torch.manual_seed(HYPER["seed"])
    texts = common.nli_triplets()
    batches = NoDuplicatesBatchSampler(from_columns(texts), HYPER["batch_size"], seed=HYPER["seed"]).batches(0)
    if max_steps > 0:
        batches = batches[:max_steps]
    model = SentenceTransformer(str(common.model_dir()), device="cpu").train()
    loss_fn = MultipleNegativesRankingLoss(model)
    decay = decay_parameter_names(model)
    params = list(model.named_parameters())
    optimizer = torch.optim.AdamW([{"params": [p for n, p in params if n in decay], "weight_decay": HYPER["weight_decay"]},
                                   {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0}],
                                  lr=HYPER["learning_rate"], fused=True)
    total = len(batches)
    t = time.perf_counter()
    for step, rows in enumerate(batches):
        for g in optimizer.param_groups:
            g["lr"] = HYPER["learning_rate"] * (total - step) / total
        loss = loss_fn([model.preprocess([texts[c][r] for r in rows]) for c in texts], None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.save_pretrained(out)
    return {"seconds": time.perf_counter() - t}


def run(out: Path | None = None, quick: bool = False, threads: int = 2) -> dict:
    import tempfile

    out = Path(out or tempfile.mkdtemp(prefix="minisbert_quality_"))
    scifact = not quick
    max_steps = 40 if quick else -1
    result = {"hyperparameters": HYPER | {"epochs": 1, "max_steps": max_steps}, "output_dir": str(out)}
    result["before"] = common.worker("quality", "evaluate", {"model_path": str(common.model_dir()), "scifact": scifact},
                                     threads=threads)
    result["minisbert_train_seconds"] = train_minisbert(out / "minisbert", threads, max_steps)
    result["minisbert"] = common.worker("quality", "evaluate", {"model_path": str(out / "minisbert" / "final"),
                                                                "scifact": scifact}, threads=threads)
    if common.has_st_training() and max_steps < 0:
        result["st_runner"] = "SentenceTransformerTrainer"
        result["st_train_seconds"] = train_st(out / "st", threads)
    else:
        result["st_runner"] = "st_loop (plain loop over ST's model and loss)"
        result["st_train_seconds"] = common.worker("quality", "train_st_loop", {"out": str(out / "st" / "final"),
                                                                                "max_steps": max_steps}, threads=threads)["seconds"]
    result["st"] = common.worker("quality", "evaluate", {"model_path": str(out / "st" / "final"), "scifact": scifact},
                                 threads=threads)
    result["stsb_spearman_diff"] = abs(result["st"]["stsb_spearman"] - result["minisbert"]["stsb_spearman"])
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="where the two fine-tuned models go (default: a temp folder)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 2)))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    r = run(args.out, args.quick, args.threads)
    print(f"{'':24s}{'before':>10s}{'minisbert':>12s}{'ST':>10s}")
    for key in r["before"]:
        print(f"{key:24s}{r['before'][key]:10.4f}{r['minisbert'][key]:12.4f}{r['st'][key]:10.4f}")
    print(f"STS-B Spearman |minisbert - ST| = {r['stsb_spearman_diff']:.4f} (must be <= 0.005); ST run: {r['st_runner']}; "
          f"training time minisbert {r['minisbert_train_seconds']:.0f} s, ST {r['st_train_seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    sys.exit(0 if r["stsb_spearman_diff"] <= 0.005 else 1)
