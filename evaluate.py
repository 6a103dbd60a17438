"""Evaluate a model on one task; print a table and write the metrics as JSON, keyed as sentence-transformers keys them.

    python evaluate.py --model PATH --task retrieval --data ../shared/data/scifact [--split test] \
        [--matryoshka_dims 384 256 128 64] [--output_dir results] [--plot ndcg_vs_dim.png]
    python evaluate.py --model PATH --task sts --data ../shared/data/stsb
    python evaluate.py --model PATH --task triplet --data ../shared/data/nli-triplets --split dev
    python evaluate.py --model PATH --task rerank --data ../shared/data/trecqa-rerank
    python evaluate.py --model PATH --task classification --data ../shared/data/nli-triplets --split dev
    python evaluate.py --model PATH --task clustering --data ../shared/data/nli-triplets --split dev
    python evaluate.py --task plot_log --data runs/x/log.jsonl --plot curves.png

--data is a BEIR folder (retrieval), or a file / a folder holding <split>.jsonl|.csv|.tsv (the other
tasks; classification also reads <folder>/train.*). Column layouts are those of ../shared/data:
sts: sentence1, sentence2, score; triplet: anchor, positive, negative; rerank: query, positive,
negative (or documents); classification / clustering: text + label, or the nli-triplets anchor +
source (SNLI vs MultiNLI premises), or --text_column/--label_column. `--task rerank` scores with a
CrossEncoder when the model folder is a sequence classifier, else ranks by bi-encoder similarity.

--matryoshka_dims and --output_dir are spelled as in train.py (--output_dir gets metrics.json); the
old spellings `--matryoshka_dims 384,256` and `--output FILE` still work, with a deprecation message.

Defaults follow the issue: retrieval reports cosine and dot; sts and triplet all four similarity
functions (ST 6.2's evaluators default to the model's own; pass --similarity_fn_names to choose).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

from minisbert import evaluation as E
from minisbert.checkpoint import atomic_write

TASKS = ("retrieval", "sts", "triplet", "rerank", "classification", "clustering", "plot_log")
DEFAULT_FNS = {"retrieval": "cosine,dot", "sts": "cosine,dot,euclidean,manhattan", "triplet": "cosine,dot,euclidean,manhattan"}


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (sentence-transformers / minisbert / transformers) or hub name")
    p.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}")
    p.add_argument("--data", required=True, help="BEIR folder, data folder with <split> files, a data file, or a log.jsonl")
    p.add_argument("--split", default="test")
    p.add_argument("--name", default="", help="evaluator name: keys become <name>_<metric>")
    p.add_argument("--matryoshka_dims", nargs="+", default=None, help="widths, e.g. 384 256 128 64 (retrieval, sts, triplet)")
    p.add_argument("--similarity_fn_names", default=None, help="comma-separated subset of cosine,dot,euclidean,manhattan")
    p.add_argument("--batch_size", type=_positive, default=None,
                   help="default: ST's evaluator default (retrieval 32, sts/triplet 16, rerank 64); batches change the last bits")
    p.add_argument("--corpus_chunk_size", type=_positive, default=50000, help="retrieval: documents encoded and scored at a time")
    p.add_argument("--text_column", default=None)
    p.add_argument("--label_column", default=None)
    p.add_argument("--output_dir", default=None, help="write the metrics to <output_dir>/metrics.json")
    p.add_argument("--output", default=None, help="deprecated: the JSON file to write; use --output_dir")
    p.add_argument("--plot", default=None, help="PNG: metric vs Matryoshka dimension, or the curves of --task plot_log")
    args = p.parse_args(argv)
    if args.output is not None:
        _deprecated("--output FILE", "--output_dir FOLDER, which gets FOLDER/metrics.json (train.py's spelling)")
        if args.output_dir is not None:
            p.error("give --output_dir or the deprecated --output, not both")
    if any("," in value for value in args.matryoshka_dims or ()):
        _deprecated(f"--matryoshka_dims {' '.join(args.matryoshka_dims)}",
                    "widths separated by spaces, --matryoshka_dims 384 256 (train.py's spelling)")
    return args


def _deprecated(old: str, new: str) -> None:
    print(f"warning: {old} is deprecated and goes in the next release; use {new}", file=sys.stderr)


def metrics_path(args) -> Path | None:
    """Where the metrics JSON goes: <--output_dir>/metrics.json, or the deprecated --output file."""
    if args.output_dir is not None:
        return Path(args.output_dir) / "metrics.json"
    return Path(args.output) if args.output is not None else None


# ----------------------------------------------------------------------------------------------
# Models


def is_cross_encoder(path) -> bool:
    """True when the folder's transformers config names a *ForSequenceClassification architecture."""
    folder = Path(path)
    config = folder / "config.json"
    if not config.is_file() and (folder / "modules.json").is_file():  # ST 5.4+ CE: the model sits in a module folder
        first = json.loads((folder / "modules.json").read_text())[0]
        config = folder / first.get("path", "") / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text()).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in architectures)


@functools.lru_cache(maxsize=2)  # one process evaluating several tasks (tests) loads a model once
def load_model(path: str, cross_encoder: bool):
    from minisbert import BiEncoder, CrossEncoder

    return (CrossEncoder if cross_encoder else BiEncoder).from_pretrained(path)


# ----------------------------------------------------------------------------------------------
# Evaluators


def _int_list(values: list[str] | None) -> list[int] | None:
    """--matryoshka_dims as integers: `384 256`, or the deprecated `384,256` (one value, commas)."""
    if not values:
        return None
    dims = []
    for text in values:
        try:
            dims += [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            expected = "comma-separated integers such as 384,256,128" if "," in text else "integers such as 384 256 128"
            raise ValueError(f"--matryoshka_dims {text!r}: expected {expected}") from None
    return dims or None


def build_evaluator(args, cross_encoder: bool) -> E.Evaluator:
    fns = (args.similarity_fn_names or DEFAULT_FNS.get(args.task, "")).split(",") if args.task in DEFAULT_FNS else None
    dims = _int_list(args.matryoshka_dims)
    if dims and args.task not in ("retrieval", "sts", "triplet"):
        raise ValueError(f"--matryoshka_dims applies to retrieval, sts and triplet, not {args.task!r}")
    common = {"name": args.name} | ({"batch_size": args.batch_size} if args.batch_size is not None else {})
    if args.task == "retrieval":
        return E.RetrievalEvaluator.from_beir(args.data, args.split, similarity_fn_names=fns, matryoshka_dims=dims,
                                              corpus_chunk_size=args.corpus_chunk_size, **common)
    if args.task == "sts":
        return E.STSEvaluator.from_file(args.data, args.split, similarity_fn_names=fns, matryoshka_dims=dims, **common)
    if args.task == "triplet":
        return E.TripletEvaluator.from_file(args.data, args.split, similarity_fn_names=fns, matryoshka_dims=dims, **common)
    if args.task == "rerank":
        cls = E.CrossEncoderRerankingEvaluator if cross_encoder else E.RerankingEvaluator
        return cls.from_file(args.data, args.split, **common)
    columns = {"text_column": args.text_column, "label_column": args.label_column}
    if args.task == "classification":
        return E.ClassificationEvaluator.from_file(args.data, args.split, **columns, **common)
    return E.ClusteringEvaluator.from_file(args.data, args.split, **columns, **common)


# ----------------------------------------------------------------------------------------------
# Output: table, JSON, plots


def print_table(metrics: dict[str, float], primary: str | None = None) -> None:
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        mark = "  <- primary" if key == primary else ""
        print(f"{key:<{width}}  {value:.6f}{mark}")


def write_json(metrics: dict, path) -> None:
    with atomic_write(path, "w") as f:  # never leave a half-written file behind
        f.write(json.dumps(metrics, indent=2) + "\n")


def check_outputs(args) -> None:
    """--output_dir, --output and --plot are checked before the evaluation: a run that cannot write its result
    fails at once."""
    if args.output_dir and Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise ValueError(f"--output_dir {args.output_dir} is a file; name the folder to write metrics.json into")
    output_flag = "--output_dir" if args.output_dir else "--output"
    for flag, value in ((output_flag, metrics_path(args)), ("--plot", args.plot)):
        if value and Path(value).is_dir():
            raise ValueError(f"{flag} {value} is a folder; name the file to write")
        if value:
            folder = next(p for p in Path(value).absolute().parents if p.exists())
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise ValueError(f"{flag} {value}: {folder} is not a writable folder")
    if args.plot:
        _pyplot()  # matplotlib is there
        if args.task != "plot_log" and not _int_list(args.matryoshka_dims):
            raise ValueError("--plot draws the metric against --matryoshka_dims; give the dims (or use --task plot_log)")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install matplotlib") from None
    return plt


def plot_matryoshka(metrics: dict[str, float], dims: list[int], primary: str, path) -> None:
    """One line per similarity function: the primary metric against the embedding dimension."""
    plt = _pyplot()
    prefix = f"dim_{dims[0]}_"
    name = primary[: primary.index(prefix)] if prefix in primary else ""
    suffix = primary[len(name) + len(prefix):]  # e.g. cosine_ndcg@10, spearman_max, max_accuracy
    fns = ("cosine", "dot", "euclidean", "manhattan")
    stem = next((fn for fn in fns if fn in suffix), "max" if "max" in suffix else None)
    lines = [suffix.replace(stem, fn) for fn in fns] if stem else [suffix]
    fig, ax = plt.subplots(figsize=(6, 4))
    for line in lines:
        keys = [f"{name}dim_{d}_{line}" for d in dims]
        if all(k in metrics for k in keys):
            ax.plot(dims, [metrics[k] for k in keys], marker="o", label=line)
    ax.set_xlabel("embedding dimension")
    ax.set_ylabel(suffix.replace(stem, "").strip("_") if stem else suffix)
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_log(log_path, path) -> dict[str, list]:
    """Training curves from a run's log.jsonl: loss (left) and every eval_* metric (right) by step."""
    rows = E.read_jsonl(log_path)
    curves: dict[str, tuple[list, list]] = {}
    for i, row in enumerate(rows, 1):
        if "step" not in row:
            raise ValueError(f"{log_path}: line {i} has no 'step' (has {sorted(row)})")
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and (key == "loss" or key.startswith("eval_")):
                xs, ys = curves.setdefault(key, ([], []))
                xs.append(row["step"])
                ys.append(value)
    if not curves:
        raise ValueError(f"{log_path}: no 'loss' or 'eval_*' values to plot")
    if path:
        plt = _pyplot()
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for key, (xs, ys) in curves.items():
            (left if key == "loss" else right).plot(xs, ys, label=key)
        for ax, title in ((left, "training loss"), (right, "evaluation")):
            ax.set_xlabel("step")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
    return {k: ys for k, (_, ys) in curves.items()}


# ----------------------------------------------------------------------------------------------
# Main


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.task not in TASKS:
        raise ValueError(f"unknown --task {args.task!r}; expected one of {', '.join(TASKS)}")
    check_outputs(args)

    if args.task == "plot_log":
        curves = plot_log(args.data, args.plot)
        print(f"{args.data}: {', '.join(f'{k} ({len(v)} points)' for k, v in curves.items())}")
        return {k: v[-1] for k, v in curves.items()}

    if not args.model:
        raise ValueError(f"--task {args.task} needs --model")
    cross_encoder = args.task == "rerank" and is_cross_encoder(args.model)
    evaluator = build_evaluator(args, cross_encoder)  # read the data before loading the model: errors come fast
    model = load_model(str(args.model), cross_encoder)

    metrics = evaluator(model)

    print(f"{type(evaluator).__name__} on {args.data} ({args.split}), model {args.model}")
    print_table(metrics, evaluator.primary_metric)
    if metrics_path(args):
        write_json(metrics, metrics_path(args))
    if args.plot:
        plot_matryoshka(metrics, _int_list(args.matryoshka_dims), evaluator.primary_metric, args.plot)
    return metrics


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:  # bad input: one line on stderr and exit 2, as train.py and argparse do
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
