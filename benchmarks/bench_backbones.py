"""The backbones users train, side by side (workload `backbones`): ModernBERT-base and XLM-RoBERTa large.

    python benchmarks/run.py --workload backbones [--quick]
    python benchmarks/bench_backbones.py --quick          # every case once, on 2-layer models (smoke)

Models: random weights (seed 0) from the real configs recorded in benchmarks/configs/ (speed does not
depend on the weights): modernbert-base.json (answerdotai/ModernBERT-base; mmBERT-base has the same
body with a 256k vocabulary) and bge-m3.json (BAAI/bge-m3: XLM-RoBERTa large, 24 x 1024, 568M
parameters, 8,194 positions). `build` writes each once into $MINISBERT_BENCH_CACHE (default
/tmp/minisbert-bench); both libraries load that same folder: sentence-transformers (ST) with its
Transformer + mean pooling, minisbert with BiEncoder / CrossEncoder (ModernBERT through
minisbert.modernbert, XLM-R through minisbert.bert and minisbert.fast). Tokenizer: all-MiniLM-L6-v2's
WordPiece for both (no ModernBERT or XLM-R tokenizer is available offline), so the built configs take
its special-token ids ([PAD] 0, [CLS] 101, [SEP] 102); every other field is the real config's.
--quick builds 2-layer models with a 30,522-row vocabulary instead, to test the code paths only.

Data, at the issue's lengths: NLI triplets at max length 75 (the mmBERT embedder) for ModernBERT's
encode / MNRL / cached MNRL; SciFact (claim, abstract) pairs from the train qrels at 512 tokens for the
ModernBERT BCE reranker (each claim with its abstract, label 1, and a random abstract, label 0) and at
1024 tokens for XLM-R large's MNRL step and encoding (the bge-m3 legal-retrieval case); NLI triplets
for XLM-R large's cached MNRL. Steps: AdamW (lr 5e-5, weight decay 0.01), clip 1.0, as bench_train.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import common

CACHE = Path(os.environ.get("MINISBERT_BENCH_CACHE", "/tmp/minisbert-bench"))
CONFIGS = common.HERE / "configs"
LR, WEIGHT_DECAY = 5e-5, 0.01
# The tokenizer's special tokens, replacing the real configs' ids (see the module docstring).
SPECIAL = {"pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102, "cls_token_id": 101, "sep_token_id": 102}


def native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX), where a bf16 encode row means something."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def build(name: str, quick: bool = False, classifier: bool = False) -> str:
    """The folder of a random-weight `name` model ("modernbert-base" | "bge-m3"), built once (seed 0)."""
    import torch
    import transformers as tf

    folder = CACHE / f"{name}{'-quick' if quick else ''}{'-classifier' if classifier else ''}"
    if (folder / "model.safetensors").exists() or (folder / "model.safetensors.index.json").exists():
        return str(folder)
    values = json.loads((CONFIGS / f"{name}.json").read_text()) | SPECIAL
    if values["model_type"] == "xlm-roberta":
        values["pad_token_id"] = 0  # RoBERTa positions count from the pad id: the tokenizer's
    if quick:
        values |= {"num_hidden_layers": 2, "vocab_size": 30522}
    values.pop("architectures", None)
    config = tf.AutoConfig.for_model(values.pop("model_type"), **values)
    if classifier:
        config.num_labels = 1
    torch.manual_seed(0)
    cls = tf.AutoModelForSequenceClassification if classifier else tf.AutoModel
    model = cls.from_config(config)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tf.AutoTokenizer.from_pretrained(common.model_dir()).save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return str(folder)


# ----------------------------------------------------------------------------- data


def nli(n: int | None = None) -> dict[str, list[str]]:
    cols = common.nli_triplets()
    return {c: v[:n] if n else v for c, v in cols.items()}


def scifact_pairs(n: int | None = None) -> tuple[list[str], list[str]]:
    """(claim, abstract) pairs of the SciFact train qrels, in file order."""
    queries = {r["_id"]: r["text"] for r in common.read_jsonl(common.DATA / "scifact" / "queries.jsonl")}
    corpus = {r["_id"]: f"{r['title']} {r['text']}" for r in common.read_jsonl(common.DATA / "scifact" / "corpus.jsonl")}
    lines = (common.DATA / "scifact" / "qrels" / "train.tsv").read_text().splitlines()[1:]
    pairs = [(queries[q], corpus[d]) for q, d, _ in (line.split("\t") for line in lines) if q in queries and d in corpus]
    pairs = pairs[:n] if n else pairs
    return [q for q, _ in pairs], [d for _, d in pairs]


def rerank_rows(n: int) -> tuple[list[tuple[str, str]], list[float]]:
    """n (claim, abstract) rows for BCE: each claim with its abstract (1) and a random other one (0)."""
    queries, docs = scifact_pairs()
    rng = random.Random(0)
    pairs, labels = [], []
    for i in range(n // 2):
        pairs += [(queries[i], docs[i]), (queries[i], docs[rng.randrange(len(docs))])]
        labels += [1.0, 0.0]
    return pairs, labels


def _columns(data: str, n: int) -> dict[str, list[str]]:
    if data == "nli":
        return nli(n)
    queries, docs = scifact_pairs(n)
    return {"anchor": queries, "positive": docs}


# ----------------------------------------------------------------------------- steps


def _autocast(dtype: str):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()


def make_step(lib: str, folder: str, *, data: str = "nli", loss: str = "mnrl", batch_size: int = 32, max_length: int = 75,
              mini_batch_size: int = 32, steps: int = 4, checkpointing: bool = False):
    """A callable step(i) -> loss on batch i (rows i*B.. of the data, cycling; i < 0: warm-up on batch 0)
    for `lib` in st | minisbert, as bench_train.make_step does for MiniLM."""
    import torch
    from bench_train import _finish, _param_groups, shipped_step

    columns = _columns(data, batch_size * steps)
    names = list(columns)
    count = len(columns[names[0]])
    pick = lambda i: [(max(i, 0) * batch_size + j) % count for j in range(batch_size)]  # noqa: E731
    torch.manual_seed(0)
    if lib == "st":
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer import losses as st_losses

        model = SentenceTransformer(folder, device="cpu")
        model.max_seq_length = max_length
        if checkpointing:
            model.gradient_checkpointing_enable()
        loss_fn = (st_losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch_size)
                   if loss == "cached_mnrl" else st_losses.MultipleNegativesRankingLoss(model))
        model.train()
        optimizer = torch.optim.AdamW(_param_groups(model), lr=LR, fused=True)

        def step(i):
            rows = pick(i)
            value = loss_fn([model.preprocess([columns[c][r] for r in rows]) for c in names], None)  # ST's collator
            value.backward()
            return _finish(model, optimizer, value)
    else:
        from minisbert import training
        from minisbert.bi_encoder import BiEncoder

        model = BiEncoder.from_pretrained(folder, max_length=max_length, device="cpu")
        if checkpointing:
            model.gradient_checkpointing_enable()
        # the shipped step, on columns tokenized once, up front (as train.py does)
        task = training.build_task(model, data, [columns[c] for c in names], training.column_loss(loss), loss=loss,
                                   mini_batch_size=mini_batch_size if loss == "cached_mnrl" else None)
        return shipped_step(model, task, pick)

    step.model, step.optimizer = model, optimizer
    return step


def make_cross_step(lib: str, folder: str, *, batch_size: int = 16, max_length: int = 512, steps: int = 4):
    """A BCE training step of a cross-encoder on the SciFact rerank rows, as bench_cross.make_train_step."""
    import torch
    from bench_train import _finish, _param_groups, shipped_step

    pairs, labels = rerank_rows(batch_size * steps)
    pick = lambda i: [(max(i, 0) * batch_size + j) % len(pairs) for j in range(batch_size)]  # noqa: E731
    if lib == "st":
        from sentence_transformers import CrossEncoder as STCrossEncoder
        from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

        model = STCrossEncoder(folder, max_length=max_length, device="cpu")
        loss_fn = BinaryCrossEntropyLoss(model)
        optimizer = torch.optim.AdamW(_param_groups(model), lr=LR, fused=True)
        model.train()

        def step(i):
            rows = pick(i)
            value = loss_fn([[pairs[r][0] for r in rows], [pairs[r][1] for r in rows]], torch.tensor([labels[r] for r in rows]))
            value.backward()
            return _finish(model, optimizer, value)
    else:
        from minisbert import CrossEncoder, training

        model = CrossEncoder.from_pretrained(folder, max_length=max_length, device="cpu")
        task = training.build_task(model, "scifact", [[p[0] for p in pairs], [p[1] for p in pairs]],
                                   training.column_loss("bce"), loss="bce", labels=labels)
        return shipped_step(model, task, pick)

    step.model, step.optimizer = model, optimizer
    return step


# ----------------------------------------------------------------------------- workers (run.py calls these)


def time_encode(model: str, quick: bool = False, data: str = "nli", n: int = 512, max_length: int = 75,
                batch_size: int = 32, repeats: int = 3, dtypes=("fp32",)) -> dict:
    """Seconds to encode n texts, each library and dtype alternated in one process; outputs compared."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from minisbert import BiEncoder

    folder = build(model, quick)
    texts = nli(n)["anchor"] if data == "nli" else scifact_pairs(n)[1]
    st = SentenceTransformer(folder, device="cpu")
    st.max_seq_length = max_length
    mini = BiEncoder.from_pretrained(folder, max_length=max_length, device="cpu")
    runs = {}
    for dtype in dtypes:
        autocast = _autocast(dtype)

        def st_run(_i, autocast=autocast):
            with autocast:
                return st.encode(texts, batch_size=batch_size, convert_to_numpy=True)

        def mini_run(_i, autocast=autocast):
            with autocast:
                return mini.encode(texts, batch_size=batch_size)

        runs[f"st_{dtype}"], runs[f"minisbert_{dtype}"] = st_run, mini_run
    out = {name: run(0) for name, run in runs.items()}  # also the warm-up
    times = common.alternate(runs, repeats, warmup=0)

    def cosine_min(a, b):
        a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
        return float((a * b).sum(1).min())

    checks = {"max_abs_diff_fp32": float(np.abs(out["minisbert_fp32"] - out["st_fp32"]).max()) if "st_fp32" in out else None}
    if "minisbert_bf16" in out:
        checks["minisbert_bf16_min_cosine_to_st_fp32"] = cosine_min(out["minisbert_bf16"], out["st_fp32"])
    tokens = int(mini.tokenize(texts)["attention_mask"].sum())
    return {"seconds": {k: common.median(v) for k, v in times.items()}, "all_seconds": times, "checks": checks, "n": n,
            "real_tokens": tokens}


def time_train(model: str, quick: bool = False, libs=("st", "minisbert"), repeats: int = 3, warmup: int = 1,
               cross: bool = False, **kwargs) -> dict:
    """Seconds per step of each library, alternated in one process on the same batches (step i = batch i)."""
    folder = build(model, quick, classifier=cross)
    steps = repeats + warmup
    maker = make_cross_step if cross else make_step
    runs = {lib: maker(lib, folder, steps=steps, **kwargs) for lib in libs}
    losses = {lib: [] for lib in runs}
    times = common.alternate({lib: (lambda i, lib=lib: losses[lib].append(runs[lib](i))) for lib in runs}, repeats, warmup)
    return {"seconds": {k: common.median(v) for k, v in times.items()}, "all_seconds": times, "losses": losses}


def mem_train(model: str, lib: str, quick: bool = False, cross: bool = False, **kwargs) -> dict:
    """Peak MiB one step adds over the warmed-up process (a warm-up step of the same size first, as
    bench_train.mem_train), and that step's seconds."""
    folder = build(model, quick, classifier=cross)
    step = (make_cross_step if cross else make_step)(lib, folder, steps=2, **kwargs)
    step(1)
    seconds = []

    def timed(i):
        t = time.perf_counter()
        step(0)
        seconds.append(time.perf_counter() - t)

    peak = common.measure_peak(timed)
    return {"peak_mib": peak, "seconds": seconds[0]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    common.set_threads()
    common.quiet()
    print(time_encode("modernbert-base", args.quick, n=64, repeats=1))
    print(time_train("modernbert-base", args.quick, repeats=1, batch_size=8))
