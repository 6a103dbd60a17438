"""The loop's helpers pinned to their references: LR schedules to transformers', weight-decay groups to
transformers' Trainer, collate to the models' own tokenize, the state file to weights_only loading,
checkpoint rotation to "never the best", column losses to the loss functions called directly."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from minisbert import checkpoint, errors, losses, run_state, training
from minisbert.bi_encoder import trim_padding
from minisbert.fast import kernels
from minisbert.training import collate, tokenize_column, tokenize_pairs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import tiny_models

    from minisbert import BiEncoder, CrossEncoder

    root = tmp_path_factory.mktemp("tiny")
    folder = tiny_models.build("bert", root / "bert")
    return BiEncoder.from_pretrained(folder, max_length=12), CrossEncoder.from_pretrained(folder, max_length=16)


TEXTS = ["A man is playing a guitar.", "Two dogs run across the field while children watch from the fence.",
         "Paris.", "", "The cat sleeps on the warm windowsill and dreams of birds and mice."]


# ----------------------------------------------------------------------------------------------
# collate == the model's own tokenize


def test_collate_equals_model_tokenize(tiny):
    model, _ = tiny
    for prompt in (None, "query: "):
        column = tokenize_column(model.tokenizer, TEXTS, max_length=model.max_length, input_names=model.input_names,
                                 prompt=prompt)
        for rows in ([0, 1, 2, 3, 4], [4, 2], [3]):
            ours = collate(column, rows)
            ref = model.tokenize([TEXTS[i] for i in rows], prompt=prompt)
            assert ours.keys() == ref.keys()
            for k in ref:
                assert torch.equal(ours[k], ref[k]) if torch.is_tensor(ref[k]) else ours[k] == ref[k], k


def test_collate_left_padding_equals_model_tokenize(tiny):
    model, _ = tiny
    model.tokenizer.padding_side = "left"  # decoder-style tokenizers pad on the left
    try:
        column = tokenize_column(model.tokenizer, TEXTS, max_length=model.max_length, input_names=model.input_names)
        ours, ref = collate(column, [0, 2, 4]), model.tokenize([TEXTS[i] for i in (0, 2, 4)])
        assert all(torch.equal(ours[k], ref[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
        assert ours["attention_mask"][1, 0] == 0
    finally:
        model.tokenizer.padding_side = "right"


@pytest.mark.parametrize("side", ["right", "left"])
def test_trim_padding_cuts_only_all_padding_trailing_columns(tiny, side):
    """Rows cut from a wider batch (GradCache's chunks) lose the trailing columns no row uses; the
    embeddings of those rows are unchanged (also under left padding, where nothing is cut)."""
    model, _ = tiny
    model.tokenizer.padding_side = side
    try:
        batch = model.tokenize(TEXTS)
        rows = {k: v[[0, 2]] if torch.is_tensor(v) and v.ndim == 2 else v for k, v in batch.items()}  # short rows
        trimmed = trim_padding(rows)
        width = int(rows["attention_mask"].sum(1).max())
        expected = width if side == "right" else rows["attention_mask"].shape[1]
        assert trimmed["attention_mask"].shape == (2, expected) and trimmed["input_ids"].shape == (2, expected)
        assert trimmed["prompt_length"] == rows["prompt_length"]
        if side == "right":
            assert trimmed["attention_mask"].shape[1] < rows["attention_mask"].shape[1]
        if side == "right":  # the same as tokenizing those rows alone
            ref = model.tokenize([TEXTS[0], TEXTS[2]])
            assert all(torch.equal(trimmed[k], ref[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
        model.eval()
        with torch.no_grad():  # reference: the backbone's own forward on the untrimmed rows, then the head
            inputs = {k: rows[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            ref = model.head(model.backbone(**inputs).last_hidden_state, rows["attention_mask"])
            torch.testing.assert_close(model(rows), ref, atol=1e-6, rtol=1e-5)
    finally:
        model.tokenizer.padding_side = "right"


def test_collate_pairs_equals_cross_encoder_tokenize(tiny):
    _, ce = tiny
    column = tokenize_pairs(ce.tokenizer, TEXTS, TEXTS[::-1], max_length=ce.max_length, input_names=ce.input_names)
    rows = [1, 0, 4]
    ours = collate(column, rows)
    ref = ce.tokenize([(TEXTS[i], TEXTS[::-1][i]) for i in rows])
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k


def test_truncation_is_counted_up_front(tiny):
    from minisbert.tokenizer import Truncation, tokenize

    model, _ = tiny
    truncation = Truncation()
    column = tokenize_column(model.tokenizer, TEXTS, max_length=model.max_length, input_names=model.input_names,
                             truncation=truncation)
    lengths = [len(tokenize(model.tokenizer, t)["input_ids"]) for t in TEXTS]
    assert truncation.total == len(TEXTS) and truncation.count == sum(n > 12 for n in lengths) == 2
    assert column.lengths().max() == 12


# ----------------------------------------------------------------------------------------------
# optimizer groups and schedules, against transformers


def test_weight_decay_groups_match_transformers_trainer(tiny):
    from transformers import Trainer

    model, ce = tiny
    for m in (model, ce):
        assert training.decay_parameter_names(m) == set(Trainer.get_decay_parameter_names(None, m))
    optimizer = training.make_optimizer(model, 1e-4, 0.01)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("bias" in names[id(p)] or "LayerNorm" in names[id(p)] for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_optimizer_is_fused_adamw_and_steps_like_the_reference_adamw(tiny):
    """Fused on CPU (and CUDA) where kernels.py's probe finds the kernel (plain on the portable path); its updates
    equal torch's plain AdamW with the same groups and settings."""
    import copy

    model, _ = tiny
    model = copy.deepcopy(model)
    reference = copy.deepcopy(model)
    ours = training.make_optimizer(model, 1e-3, 0.01)
    assert bool(ours.defaults["fused"]) == (kernels.adamw_kernel("cpu", torch.float32, fused=True) == "fused")
    assert isinstance(ours, torch.optim.AdamW) and ours.defaults["betas"] == (0.9, 0.999) and ours.defaults["eps"] == 1e-8
    theirs = torch.optim.AdamW([{"params": [dict(reference.named_parameters())[n] for n, p in model.named_parameters()
                                            if any(p is q for q in g["params"])], "weight_decay": g["weight_decay"]}
                                for g in ours.param_groups], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        for p, q in zip(model.parameters(), reference.parameters()):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("schedule, reference", [
    ("linear", "get_linear_schedule_with_warmup"),
    ("cosine", "get_cosine_schedule_with_warmup"),
    ("constant", "get_constant_schedule_with_warmup"),
])
@pytest.mark.parametrize("total, warmup", [(10, 0), (10, 3), (7, 7), (1, 0)])
def test_lr_schedules_match_transformers(schedule, reference, total, warmup):
    import transformers

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    if schedule == "constant":
        sched = getattr(transformers, reference)(optimizer, num_warmup_steps=warmup)
    else:
        sched = getattr(transformers, reference)(optimizer, num_warmup_steps=warmup, num_training_steps=total)
    for step in range(total + 1):
        assert training.lr_multiplier(schedule, step, total, warmup) == pytest.approx(sched.get_last_lr()[0], abs=1e-12)
        optimizer.step()
        sched.step()


def test_warmup_ratio_rounds_up_like_transformers():
    assert training.resolve_warmup(100, 0, 0.1) == 10
    assert training.resolve_warmup(101, 0, 0.1) == 11
    assert training.resolve_warmup(101, 5, 0.1) == 5


def test_epoch_steps_group_micro_batches():
    class Schedule:
        def batches(self, epoch):
            return [(0, [0, 1, 2, 3]), (1, [4, 5, 6, 7]), (0, [8, 9, 10, 11])]

        def num_batches(self, epoch):
            return 3

    steps = training.epoch_steps(Schedule(), 0, 2)
    assert steps == [[(0, [0, 1, 2, 3]), (1, [4, 5, 6, 7])], [(0, [8, 9, 10, 11])]]
    assert training.total_steps(Schedule(), 3, -1, 2) == 6 and training.total_steps(Schedule(), 3, 4, 2) == 4


# ----------------------------------------------------------------------------------------------
# column losses are the loss functions on the right columns


def test_column_losses_call_the_loss_functions():
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(6, 8, generator=g) for _ in range(3))
    y = torch.rand(6, generator=g)
    fn = training.column_loss
    assert torch.equal(fn("mnrl")([a, p, n], None), losses.mnrl(a, torch.cat([p, n]), scale=20.0))
    assert torch.equal(fn("cached_mnrl", scale=10.0)([a, p], None), losses.mnrl(a, p, scale=10.0))
    assert torch.equal(fn("mnrl_symmetric")([a, p], None), losses.mnrl_symmetric(a, p))
    assert torch.equal(fn("triplet", distance="cosine", margin=0.3)([a, p, n], None), losses.triplet(a, p, n, "cosine", 0.3))
    assert torch.equal(fn("triplet")([a, p, n], None), losses.triplet(a, p, n, margin=5.0))
    assert torch.equal(fn("cosent")([a, p], y), losses.cosent(a, p, y))
    assert torch.equal(fn("angle")([a, p], y), losses.angle(a, p, y))
    assert torch.equal(fn("gist")([a, p, n], None, guide_embeddings=[p, a, n]),
                       losses.gist(a, torch.cat([p, n]), p, torch.cat([a, n]), scale=100.0, margin=0.0))
    logits = torch.randn(6, 1, generator=g)
    assert torch.equal(fn("bce", pos_weight=2.0)([logits], (y > 0.5).float()), losses.bce(logits, (y > 0.5).float(), 2.0))
    assert torch.equal(fn("listwise")([logits, -logits, logits * 2], None), losses.listwise(torch.cat([logits, -logits, logits * 2], 1)))
    # matryoshka wraps a column loss and keeps the guide's width
    wrapped = losses.matryoshka(fn("gist"), [8, 4])
    expected = sum(fn("gist")([torch.nn.functional.normalize(x[:, :d], dim=-1) for x in (a, p, n)], None, guide_embeddings=[p, a, n])
                   for d in (8, 4))
    assert torch.allclose(wrapped([a, p, n], None, guide_embeddings=[p, a, n]), expected)


@pytest.mark.parametrize("loss, columns, labels, ok", [
    ("mnrl", 1, False, True), ("mnrl", 3, False, True), ("mnrl_symmetric", 3, False, False), ("gist", 1, False, False),
    ("triplet", 2, False, False), ("triplet", 3, False, True), ("cosent", 2, False, False), ("cosent", 2, True, True),
    ("bce", 2, True, True), ("bce", 3, True, False), ("listwise", 2, False, False), ("listwise", 4, False, True),
])
def test_check_loss_data(loss, columns, labels, ok):
    if ok:
        training.check_loss_data(loss, columns, labels, "data.jsonl")
    else:
        with pytest.raises(errors.ConfigError, match=f"data.jsonl: --loss {loss} needs"):
            training.check_loss_data(loss, columns, labels, "data.jsonl")


def test_default_matryoshka_dims():
    assert training.default_matryoshka_dims(384) == [384, 256, 128, 64, 32]
    assert training.default_matryoshka_dims(768) == [768, 512, 256, 128, 64, 32]
    assert training.default_matryoshka_dims(32) == [32]


# ----------------------------------------------------------------------------------------------
# RNG, state file, checkpoints


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    run_state.set_seed(3)
    state = run_state.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    run_state.set_seed(99)
    run_state.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


class _Saver:
    """A stand-in model: save_pretrained writes one file (checkpoint logic does not care what)."""

    def save_pretrained(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"x")


def _state(step):
    return {k: None for k in run_state.LoopState.KEYS} | {"step": step, "log": [{"step": step, "loss": 1.5}], "format": 1}


def test_checkpoints_latest_and_rotation_that_keeps_the_best(tmp_path):
    for step in (5, 10, 15, 20):
        checkpoint.save_run_checkpoint(tmp_path, step, _Saver(), _state(step))
    (tmp_path / "checkpoint-25").mkdir()  # no state file: incomplete, never resumed from
    (tmp_path / ".checkpoint-30.tmp-abc").mkdir()  # a killed save
    assert [s for s, _ in checkpoint.run_checkpoints(tmp_path)] == [5, 10, 15, 20]
    assert checkpoint.find_resume("latest", tmp_path) == tmp_path / "checkpoint-20"
    assert checkpoint.load_run_state(tmp_path / "checkpoint-20")["log"] == [{"step": 20, "loss": 1.5}]
    assert checkpoint.rotate_run_checkpoints(tmp_path, 2, keep_step=5) == [10]
    assert [s for s, _ in checkpoint.run_checkpoints(tmp_path)] == [5, 15, 20]
    assert checkpoint.rotate_run_checkpoints(tmp_path, None, keep_step=None) == []
    checkpoint.remove_partial_saves(tmp_path)
    assert not (tmp_path / ".checkpoint-30.tmp-abc").exists() and (tmp_path / "checkpoint-25").exists()
    with pytest.raises(errors.ConfigError, match="no complete checkpoint"):
        checkpoint.find_resume("latest", tmp_path / "nowhere")
    with pytest.raises(errors.ConfigError, match="checkpoint-25: no training_state.pt"):
        checkpoint.load_run_state(tmp_path / "checkpoint-25")


def test_state_file_refuses_arbitrary_objects(tmp_path):
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    torch.save(_state(1) | {"config": Path("x")}, folder / checkpoint.RUN_STATE_FILE)  # a pickled object, not a primitive
    with pytest.raises(errors.ConfigError, match="cannot read training_state.pt"):
        checkpoint.load_run_state(folder)


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path):
    checkpoint.save_run_checkpoint(tmp_path, 1, _Saver(), _state(1))

    class Broken(_Saver):
        def save_pretrained(self, path):
            super().save_pretrained(path)
            raise OSError("disk full")

    with pytest.raises(OSError):
        checkpoint.save_run_checkpoint(tmp_path, 2, Broken(), _state(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]



def test_loop_state_round_trips_through_its_state_file(tmp_path):
    """torchtune's resume test at the unit level: state_dict() -> training_state.pt -> load_state_dict()
    gives the same loop, optimizer and RNG, so the next step is the one the uninterrupted run takes
    (test_train_e2e.py::test_resume_after_stop_is_bitwise_identical runs the whole loop that way)."""

    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        return model, training.make_optimizer(model, 1e-2, 0.01)

    def step(model, optimizer, loop):
        loss = model(torch.randn(3, 4)).square().mean()  # draws from the RNG the state restores
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loop.advance(loss.item(), 3, steps_in_epoch=4)
        return loss.item()

    model, optimizer = make()
    loop = run_state.LoopState(8, 2, config=json.dumps({"loss": "mnrl"}), world_size=1)
    loop.best = run_state.Best("eval_loss", greater_is_better=False)
    for _ in range(3):
        step(model, optimizer, loop)
    loop.best.update({"eval_loss": 0.5}, loop.step)
    loop.log.append({"step": loop.step, "epoch": round(loop.epoch_float, 4), "eval_loss": 0.5})
    weights = {k: v.clone() for k, v in model.state_dict().items()}  # what checkpoint-3/ holds as an ST folder
    state = loop.state_dict(optimizer, [run_state.rng_state()])
    assert sorted(state) == sorted(run_state.LoopState.KEYS)
    (tmp_path / "checkpoint-3").mkdir()
    checkpoint.save_run_state(state, tmp_path / "checkpoint-3" / checkpoint.RUN_STATE_FILE)
    expected = [step(model, optimizer, loop) for _ in range(2)]

    resumed_model, resumed_optimizer = make()
    resumed_model.load_state_dict(weights)
    saved = checkpoint.load_run_state(tmp_path / "checkpoint-3", run_state.LoopState.KEYS)
    resumed = run_state.LoopState(8, 2, config=saved["config"], world_size=1)
    run_state.set_seed(123)  # the resume restores the RNG, whatever was drawn before it
    resumed.load_state_dict(saved, resumed_optimizer)
    again = resumed.state_dict(resumed_optimizer, [run_state.rng_state()])
    for key in run_state.LoopState.KEYS:
        if key not in ("optimizer", "rng"):
            assert again[key] == saved[key], key
    assert (resumed.step, resumed.epoch, resumed.epoch_step, resumed.best.value, resumed.best.step) == (3, 0, 3, 0.5, 3)
    assert resumed.epoch_float == saved["log"][-1]["epoch"]
    assert again["optimizer"]["param_groups"] == saved["optimizer"]["param_groups"]
    for a, b in zip(again["optimizer"]["state"].values(), saved["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert [step(resumed_model, resumed_optimizer, resumed) for _ in range(2)] == expected  # bitwise: same RNG, same state
    assert torch.equal(resumed_model.weight, model.weight) and resumed.state_dict(resumed_optimizer, [])["window"] == loop.window

# ----------------------------------------------------------------------------------------------
# best model, metric names, log


def test_best_tracking_and_metric_names():
    best = run_state.Best("eval_loss", greater_is_better=False)
    assert best.update({"eval_loss": 2.0}, 1) and not best.update({"eval_loss": 2.0}, 2) and best.update({"eval_loss": 1.0}, 3)
    assert (best.value, best.step) == (1.0, 3)
    assert not best.update({"eval_loss": float("nan")}, 4) and best.step == 3
    assert run_state.resolve_metric("dev_cosine_accuracy", ["eval_dev_cosine_accuracy"]) == "eval_dev_cosine_accuracy"
    assert run_state.resolve_metric("eval_loss", ["eval_loss"]) == "eval_loss"
    with pytest.raises(errors.ConfigError, match="available: eval_a, eval_b"):
        run_state.resolve_metric("c", ["eval_a", "eval_b"])


def test_run_log_rewrites_from_the_state(tmp_path):
    log = run_state.RunLog(tmp_path / "log.jsonl")
    for step in (1, 2, 3):
        log.append({"step": step, "loss": 1.0 / step})
    resumed = run_state.RunLog(tmp_path / "log.jsonl", log.records[:2])  # a checkpoint at step 2
    resumed.append({"step": 3, "loss": 0.3})
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}, {"step": 3, "loss": 0.3}]
    shutil.rmtree(tmp_path)
