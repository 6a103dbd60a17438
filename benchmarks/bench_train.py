"""Training steps side by side: MNRL, Matryoshka(MNRL) and cached MNRL on NLI triplets (workloads 2-4).

    python benchmarks/bench_train.py [--dtype fp32|bf16] [--loss mnrl|matryoshka|cached_mnrl] [--batch_size 32]

One step = what each library's trainer does per batch, on the same batches (minisbert's no-duplicates
sampler, seed 42), the same model (all-MiniLM-L6-v2, max length 128), AdamW (lr 5e-5, weight decay
0.01 off for biases and LayerNorm weights), gradient clipping at 1.0:

    st         sentence-transformers: its collator's `model.preprocess` of each column (tokenization is
               on ST's step: its trainer tokenizes in the data collator), the ST loss module, backward,
               clip, fused AdamW (transformers' default optimizer, `adamw_torch_fused`)
    minisbert  the shipped step, `training.train_step` on a `training.build_task` of pre-tokenized
               columns: `collate`, the model on the list of columns (one padding-free pass over all of
               them) under autocast, `training.column_loss` (+ `losses.matryoshka`, or the cached step),
               backward; then clip, `training.make_optimizer`
    floor      plain transformers: AutoModel forward on pre-tokenized padded columns, mean pooling, the
               same loss, backward, clip, fused AdamW: what any padded implementation pays

bf16 = CPU autocast to bfloat16 around the forward, loss in float32 (both libraries), as ST's
`bf16=True` does through accelerate.
"""

from __future__ import annotations

import argparse
import contextlib

import common

LR, WEIGHT_DECAY, MAX_GRAD_NORM, MAX_LENGTH = 5e-5, 0.01, 1.0, 128
MATRYOSHKA_DIMS = [384, 256, 128, 64]


def _autocast(dtype: str):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()


def _param_groups(model):
    """transformers' rule, as train.py's make_optimizer: no weight decay for biases and norm weights."""
    from minisbert.training import decay_parameter_names

    decay = decay_parameter_names(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in params if n in decay], "weight_decay": WEIGHT_DECAY},
            {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0}]


def _finish(model, optimizer, loss) -> float:
    import torch

    value = float(loss)
    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return value


def shipped_step(model, task, pick):
    """minisbert's step as train.py runs it (training.train_step on one process, then clip + AdamW):
    `step(i)` trains on the rows `pick(i)` of `task` and returns the loss."""
    from minisbert import distributed, training

    world = distributed.World()  # one process, on the CPU
    optimizer = training.make_optimizer(model, LR, WEIGHT_DECAY)
    model.train()

    def step(i):
        return _finish(model, optimizer, training.train_step(model, task, pick(i), world=world))

    step.model, step.optimizer = model, optimizer
    return step


def make_step(lib: str, *, loss: str = "mnrl", dtype: str = "fp32", batch_size: int = 32, mini_batch_size: int = 32,
              steps: int = 8, seed: int = 0, variant: str = ""):
    """A callable step(i) -> loss on batch i of the shared batches, for `lib` in st | minisbert | floor.

    variant (minisbert only, to measure ideas): "per_column" embeds each column with its own forward
    (train.py embeds the list of columns in one packed pass), "padded" turns padding-free execution off,
    "fused" uses fused AdamW.
    """
    import torch

    torch.manual_seed(seed)
    texts = common.nli_triplets()
    cols = list(texts)
    batches = common.triplet_batches(batch_size, steps)
    warm = common.triplet_batches(32, 1)[0]
    # Warm-up calls pass a negative i: a batch of 32 rows, so that warming up a large batch (which loads the
    # kernels and creates the optimizer state) does not cost a whole large step.
    pick = lambda i: warm if i < 0 else batches[i % len(batches)]  # noqa: E731
    autocast = _autocast(dtype)
    path = str(common.model_dir())

    if lib == "st":
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer import losses as st_losses

        model = SentenceTransformer(path, device="cpu")
        model.max_seq_length = MAX_LENGTH
        if loss == "cached_mnrl":
            loss_fn = st_losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch_size)
        else:
            loss_fn = st_losses.MultipleNegativesRankingLoss(model)
            if loss == "matryoshka":
                loss_fn = st_losses.MatryoshkaLoss(model, loss_fn, MATRYOSHKA_DIMS)
        model.train()
        optimizer = torch.optim.AdamW(_param_groups(model), lr=LR, fused=True)

        def step(i):
            rows = pick(i)
            features = [model.preprocess([texts[c][r] for r in rows]) for c in cols]  # ST's collator
            with autocast:
                value = loss_fn(features, None)
            value.backward()
            return _finish(model, optimizer, value)

        step.model, step.optimizer = model, optimizer
        return step

    if lib == "floor":
        from transformers import AutoModel, AutoTokenizer

        from minisbert import losses

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).train()
        optimizer = torch.optim.AdamW(_param_groups(model), lr=LR, fused=True)
        ready = {i: [tokenizer([texts[c][r] for r in pick(i)], padding=True, truncation=True, max_length=MAX_LENGTH,
                               return_tensors="pt") for c in cols] for i in range(-1, len(batches))}

        def step(i):
            embeddings = []
            with autocast:
                for f in ready[max(-1, i) if i < 0 else i % len(batches)]:
                    hidden = model(**f).last_hidden_state  # (B, L, H)
                    mask = f["attention_mask"][..., None].to(hidden.dtype)
                    embeddings.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))  # (B, H)
            value = losses.mnrl(embeddings[0], torch.cat(embeddings[1:]))
            value.backward()
            return _finish(model, optimizer, value)

        step.model, step.optimizer = model, optimizer
        return step

    # minisbert: the shipped step (training.train_step, as train.py calls it) + the optimizer step
    from minisbert import distributed, fast, losses, training
    from minisbert.bi_encoder import BiEncoder
    from minisbert.training import collate

    model = BiEncoder.from_pretrained(path, max_length=MAX_LENGTH, device="cpu")
    loss_fn = training.column_loss("cached_mnrl" if loss == "cached_mnrl" else "mnrl")
    if loss == "matryoshka":
        loss_fn = losses.matryoshka(loss_fn, MATRYOSHKA_DIMS)
    # Tokenized once, up front, as train.py does.
    task = training.build_task(model, "nli", [texts[c] for c in cols], loss_fn, loss=loss if loss == "cached_mnrl" else "mnrl",
                               mini_batch_size=mini_batch_size if loss == "cached_mnrl" else None)
    world = distributed.World()  # one process, on the CPU
    optimizer = training.make_optimizer(model, LR, WEIGHT_DECAY)
    if variant == "fused":
        optimizer = torch.optim.AdamW(_param_groups(model), lr=LR, fused=True)
    model.train()
    switch = fast.disabled if variant == "padded" else contextlib.nullcontext

    def step(i):
        rows = pick(i)
        with switch():
            if variant == "per_column":  # the idea measured: one forward per column instead of one packed pass
                with autocast:
                    outputs = [model(collate(c, rows)) for c in task.columns]  # (B, D) each
                value = task.loss_fn(outputs, None)
                value.backward()
            else:
                value = training.train_step(model, task, rows, world=world, autocast=autocast)
        return _finish(model, optimizer, value)

    step.model, step.optimizer = model, optimizer
    return step


def loss_check(loss: str = "mnrl", batch_size: int = 32) -> dict:
    """Both libraries' loss on the first shared batch with dropout off (eval mode): the same work gives
    the same loss, whatever each does to get there."""
    out = {}
    for lib in ("st", "minisbert"):
        step = make_step(lib, loss=loss, batch_size=batch_size, steps=1)
        step.model.eval()  # the step still updates the weights, after its loss is computed
        out[lib] = step(0)
    return out


def time_train(cases=None, dtype: str = "fp32", batch_size: int = 32, mini_batch_size: int = 32, repeats: int = 5,
               warmup: int = 2) -> dict:
    """Seconds per step of each case, alternated in one process on the same batches (step i = batch i).

    cases: [{"name", "lib", "loss", "variant"}]; default: MNRL for st, minisbert and floor."""
    cases = cases or [{"name": lib, "lib": lib, "loss": "mnrl"} for lib in ("st", "minisbert", "floor")]
    steps = repeats + warmup
    runs = {c["name"]: make_step(c["lib"], loss=c.get("loss", "mnrl"), dtype=dtype, batch_size=batch_size,
                                 mini_batch_size=mini_batch_size, steps=steps, variant=c.get("variant", ""))
            for c in cases}
    losses = {name: [] for name in runs}

    def timed(name):
        return lambda i: losses[name].append(runs[name](i))

    times = common.alternate({n: timed(n) for n in runs}, repeats, warmup)
    return {"seconds": {n: common.median(t) for n, t in times.items()}, "all_seconds": times,
            "mean_loss": {n: sum(v[warmup:]) / max(1, len(v[warmup:])) for n, v in losses.items()}}


def loss_overhead(batch_size: int = 32, repeats: int = 50) -> dict:
    """Milliseconds of the loss alone (forward + backward from fixed embeddings): mnrl against
    matryoshka(mnrl) of minisbert, and ST's MNRL against ST's MatryoshkaLoss fed the same embeddings."""
    import time

    import torch

    from minisbert import losses, training

    torch.manual_seed(0)
    embeddings = [torch.randn(batch_size, 384, requires_grad=True) for _ in range(3)]
    mnrl = training.column_loss("mnrl")
    cases = {"mnrl": mnrl, "matryoshka": losses.matryoshka(mnrl, MATRYOSHKA_DIMS)}
    out = {}
    for name, fn in cases.items():
        for _ in range(5):
            fn(embeddings, None).backward()
        t = time.perf_counter()
        for _ in range(repeats):
            fn(embeddings, None).backward()
        out[name] = (time.perf_counter() - t) / repeats * 1000
    return out


def mem_train(lib: str, loss: str = "mnrl", dtype: str = "fp32", batch_size: int = 32, mini_batch_size: int = 32,
              variant: str = "") -> dict:
    """Peak MiB one training step on batch 0 adds, after a warm-up step of the same size on batch 1 (which
    creates the optimizer state and whatever the kernels keep for a batch of that size), as in a running
    training. A 32-row warm-up, used before, left first-time allocations of the larger shapes in the
    measured step (about 46 MiB of minisbert's 311 at 128 rows)."""
    step = make_step(lib, loss=loss, dtype=dtype, batch_size=batch_size, mini_batch_size=mini_batch_size, steps=2,
                     variant=variant)
    step(1)
    peak = common.measure_peak(lambda i: step(0))
    # What a GPU's max_memory_allocated would add on top: the weights and the optimizer state (both in the
    # warmed-up baseline here, the same for both libraries).
    tensors = [p for p in step.model.parameters()] + [t for s in step.optimizer.state.values() for t in s.values()
                                                      if hasattr(t, "numel") and t.dim() > 0]
    state = sum(t.numel() * t.element_size() for t in tensors) / 2**20
    return {"peak_mib": peak, "weights_and_optimizer_mib": state}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss", default="mnrl", choices=["mnrl", "matryoshka", "cached_mnrl"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="*", default=[], help="minisbert variants: per_column padded fused")
    args = parser.parse_args()
    common.set_threads()
    common.quiet()
    cases = [{"name": lib, "lib": lib, "loss": args.loss} for lib in ("st", "minisbert")]
    cases += [{"name": f"minisbert[{v}]", "lib": "minisbert", "loss": args.loss, "variant": v} for v in args.variants]
    if args.loss == "mnrl":
        cases.append({"name": "floor", "lib": "floor", "loss": "mnrl"})
    r = time_train(cases, args.dtype, args.batch_size, repeats=args.repeats)
    base = r["seconds"]["st"]
    for name, s in r["seconds"].items():
        print(f"{name:22s} {s * 1000:8.1f} ms/step {args.batch_size / s:7.1f} samples/s  {base / s:5.2f}x ST  "
              f"mean loss {r['mean_loss'][name]:.4f}")
