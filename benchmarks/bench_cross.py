"""Cross-encoders side by side (workload 5): predict 2,000 query-passage pairs (batch 32) and BCE training.

    python benchmarks/bench_cross.py [--pairs 2000] [--repeats 3]

Pairs: TrecQA train (question, candidate answer sentence, label 1/0), in file order. Model: all-MiniLM-L6-v2
with a new one-logit head; minisbert's model gets ST's randomly initialised head copied in, so both score
with the same weights (predict outputs are compared). Training step (batch 32, max length 128, AdamW
lr 5e-5 / weight decay 0.01, clip 1.0): ST tokenizes in its BinaryCrossEntropyLoss (`model.preprocess`),
minisbert collates pairs tokenized once up front and calls `losses.bce`, as train.py does.
"""

from __future__ import annotations

import argparse

import common

BATCH, MAX_LENGTH, LR = 32, 128, 5e-5


def trecqa_pairs(n: int | None = None) -> tuple[list[tuple[str, str]], list[float]]:
    pairs, labels = [], []
    for r in common.read_jsonl(common.DATA / "trecqa-rerank" / "train.jsonl"):
        for doc in r["positive"]:
            pairs.append((r["query"], doc))
            labels.append(1.0)
        for doc in r["negative"]:
            pairs.append((r["query"], doc))
            labels.append(0.0)
    return (pairs[:n], labels[:n]) if n else (pairs, labels)


def _models():
    import torch
    from sentence_transformers import CrossEncoder as STCrossEncoder

    from minisbert import CrossEncoder

    path = str(common.model_dir())
    torch.manual_seed(0)
    st = STCrossEncoder(path, num_labels=1, max_length=MAX_LENGTH, device="cpu")
    mini = CrossEncoder.from_pretrained(path, max_length=MAX_LENGTH, device="cpu")
    missing, unexpected = mini.backbone.load_state_dict(st.model.state_dict(), strict=False)  # ST's new head, same weights
    assert not unexpected, unexpected
    return st, mini


def time_predict(n: int = 2000, repeats: int = 3, warmup: int = 1) -> dict:
    import numpy as np

    pairs, _ = trecqa_pairs(n)
    st, mini = _models()
    runs = {"st": lambda i: st.predict(pairs, batch_size=BATCH, convert_to_numpy=True),
            "minisbert": lambda i: mini.predict(pairs, batch_size=BATCH)}
    diff = float(np.abs(np.asarray(runs["st"](0)) - runs["minisbert"](0)).max())
    times = common.alternate(runs, repeats, max(0, warmup - 1))
    return {"seconds": {k: common.median(v) for k, v in times.items()}, "all_seconds": times,
            "checks": {"max_abs_score_diff": diff}, "n": len(pairs)}


def make_train_step(lib: str, steps: int = 8, model=None):
    """A BCE step on TrecQA pairs (batch BATCH), ST's loss or minisbert's shipped step; AdamW and clipping as
    bench_train.py (same lr, weight decay, max grad norm)."""
    import torch
    from bench_train import _finish, _param_groups, shipped_step

    pairs, labels = trecqa_pairs()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randperm(len(pairs), generator=g)[:BATCH].tolist() for _ in range(steps)]
    model = model if model is not None else _models()[0 if lib == "st" else 1]
    if lib == "st":
        from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

        loss_fn = BinaryCrossEntropyLoss(model)
        optimizer = torch.optim.AdamW(_param_groups(model), lr=LR, fused=True)
        model.train()

        def step(i):
            rows = batches[i % steps]
            value = loss_fn([[pairs[r][0] for r in rows], [pairs[r][1] for r in rows]],
                            torch.tensor([labels[r] for r in rows]))
            value.backward()
            return _finish(model, optimizer, value)

        step.model = model
        return step
    from minisbert import training

    # the shipped step: one (query, document) column tokenized up front, bce on the logits
    task = training.build_task(model, "trecqa", [[p[0] for p in pairs], [p[1] for p in pairs]],
                               training.column_loss("bce"), loss="bce", labels=labels)
    return shipped_step(model, task, lambda i: batches[i % steps])


def time_train(repeats: int = 5, warmup: int = 2) -> dict:
    st, mini = _models()
    runs = {"st": make_train_step("st", repeats + warmup, st), "minisbert": make_train_step("minisbert", repeats + warmup, mini)}
    times = common.alternate(runs, repeats, warmup)
    return {"seconds": {k: common.median(v) for k, v in times.items()}, "all_seconds": times}


def mem_predict(lib: str, n: int = 2000) -> dict:
    pairs, _ = trecqa_pairs(n)
    model = _models()[0 if lib == "st" else 1]
    run = lambda i: model.predict(pairs, batch_size=BATCH)  # noqa: E731
    run(0)
    return {"peak_mib": common.measure_peak(run)}


def mem_train(lib: str) -> dict:
    step = make_train_step(lib, 3)
    step(0)
    return {"peak_mib": common.measure_peak(lambda i: step(1 + i))}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    common.set_threads()
    common.quiet()
    p = time_predict(args.pairs, args.repeats)
    print(f"predict {p['n']} pairs: ST {p['seconds']['st']:.2f} s, minisbert {p['seconds']['minisbert']:.2f} s, "
          f"{p['seconds']['st'] / p['seconds']['minisbert']:.2f}x; {p['checks']}")
    t = time_train(args.repeats)
    print(f"BCE step: ST {t['seconds']['st'] * 1000:.0f} ms, minisbert {t['seconds']['minisbert'] * 1000:.0f} ms, "
          f"{t['seconds']['st'] / t['seconds']['minisbert']:.2f}x")
