"""Cold start side by side (workload 7): imports, and launching a training run up to its first step.

    python benchmarks/bench_cold.py [--repeats 3]

import: a fresh `python -c "import X"`, wall time to exit: `import minisbert` (lazy: torch loads on first
use) against `import sentence_transformers`, and the names one uses, `from minisbert import BiEncoder`
against `from sentence_transformers import SentenceTransformer`.
launch to first step: from spawning the process to the end of the first optimizer step of MNRL on the
NLI triplets (batch 32, no evaluation, no saving): `python train.py ... --max_steps 1` (the time its
log.jsonl gets the step-1 record) against sentence-transformers' trainer doing the same
(st_first_step.py, which prints a line from an on_step_end callback). The process is stopped there.
Runs alternate ST / minisbert; medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

IMPORTS = {
    "import minisbert": "import minisbert",
    "import sentence_transformers": "import sentence_transformers",
    "from minisbert import BiEncoder": "from minisbert import BiEncoder; BiEncoder",
    "from sentence_transformers import SentenceTransformer": "from sentence_transformers import SentenceTransformer",
}
TRAIN_DATA = common.DATA / "nli-triplets" / "train.jsonl"


def _env(threads: int) -> dict:
    """A user's launch: the threads capped, offline, and otherwise each library's defaults (common.py turns
    tokenizers' thread pool off for the side-by-side workers; a launched run keeps it, as a user's does)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(common.REPO))
    env.pop("TOKENIZERS_PARALLELISM", None)
    return env


def import_seconds(statement: str, threads: int = 2) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], env=_env(threads), cwd=str(common.REPO), check=True,
                   capture_output=True)
    return time.perf_counter() - t


def _first_step_minisbert(out: Path, threads: int) -> float:
    log = out / "log.jsonl"
    cmd = [sys.executable, str(common.REPO / "train.py"), "--data", str(TRAIN_DATA), "--columns", "anchor", "positive",
           "negative", "--max_steps", "1", "--output_dir", str(out), "--disable_tqdm", "--save_steps", "0"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(threads), cwd=str(common.REPO), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if log.exists() and '"step": 1' in log.read_text():
                return time.perf_counter() - t
            if proc.poll() is not None:
                raise RuntimeError(f"train.py exited ({proc.returncode}) before its first step:\n{proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()


def _first_step_st(out: Path, threads: int) -> float:
    cmd = [sys.executable, str(common.HERE / "st_first_step.py"), str(TRAIN_DATA), str(out)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(threads), cwd=str(common.REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stdout:
            if line.startswith("FIRST_STEP"):
                return time.perf_counter() - t
        raise RuntimeError(f"st_first_step.py exited ({proc.wait()}) before its first step:\n{proc.stderr.read()[-2000:]}")
    finally:
        proc.kill()
        proc.wait()


def time_cold(repeats: int = 3, threads: int = 2, first_step: bool = True) -> dict:
    out = {name: [] for name in IMPORTS}
    for r in range(repeats):
        names = list(IMPORTS) if r % 2 == 0 else list(IMPORTS)[::-1]
        for name in names:
            out[name].append(import_seconds(IMPORTS[name], threads))
    if first_step:
        out["train.py to first step"], out["ST trainer to first step"] = [], []
        if not common.has_st_training():
            out.pop("ST trainer to first step")
        for r in range(repeats):
            order = ["minisbert", "st"] if r % 2 == 0 else ["st", "minisbert"]
            for lib in order:
                if lib == "st" and "ST trainer to first step" not in out:
                    continue
                tmp = Path(tempfile.mkdtemp(prefix=f"cold_{lib}_"))
                try:
                    if lib == "st":
                        out["ST trainer to first step"].append(_first_step_st(tmp / "run", threads))
                    else:
                        out["train.py to first step"].append(_first_step_minisbert(tmp / "run", threads))
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    return {"seconds": {k: common.median(v) for k, v in out.items()}, "all_seconds": out}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    args = parser.parse_args()
    r = time_cold(args.repeats, args.threads)
    for k, v in r["seconds"].items():
        print(f"{k:60s} {v:6.2f} s")
