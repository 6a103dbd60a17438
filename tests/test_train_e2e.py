"""End-to-end runs of train.py on a tiny random BERT: every --loss learns, resume is exact (also after
SIGKILL mid-save), accumulation == a bigger batch, the schedule ends exactly at the last step, the
trained folder loads in sentence-transformers, and bad input fails early with a message for people.

Data: rows built from the committed STSb slice (tests/data/stsb_test_500.jsonl).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from train import TrainConfig, main  # noqa: E402

from capabilities import needs_fast  # noqa: E402
from minisbert import checkpoint, errors, losses, run, run_state, training  # noqa: E402
from minisbert.data import load_dataset  # noqa: E402
from minisbert.sampler import NoDuplicatesBatchSampler  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, as the subprocesses run


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import tiny_models

    root = tmp_path_factory.mktemp("models")
    tiny = tiny_models.build("bert", root / "tiny")
    still = root / "tiny-no-dropout"  # the same weights without dropout
    shutil.copytree(tiny, still)
    config = json.loads((still / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (still / "config.json").write_text(json.dumps(config))
    return {"tiny": tiny, "still": still}


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rows = [json.loads(line) for line in (ROOT / "tests" / "data" / "stsb_test_500.jsonl").read_text().splitlines()]
    close = [r for r in rows if r["score"] >= 0.7][:24]
    far = [r for r in rows if r["score"] <= 0.3][:24]
    root = tmp_path_factory.mktemp("data")
    triplets = [{"anchor": a["sentence1"], "positive": a["sentence2"], "negative": b["sentence2"]} for a, b in zip(close, far)]
    pairs = [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "score": r["score"]} for r in rows[:24]]
    labelled = [{"query": r["sentence1"], "document": r["sentence2"], "label": float(r["score"] >= 0.6)} for r in rows[:24]]
    return {
        "triplets": _write(root / "triplets.jsonl", triplets),
        "pairs": _write(root / "pairs.jsonl", [{"anchor": t["anchor"], "positive": t["positive"]} for t in triplets]),
        "scored": _write(root / "scored.jsonl", pairs),
        "labelled": _write(root / "labelled.jsonl", labelled),
        "single": _write(root / "single.jsonl", [{"text": t["anchor"]} for t in triplets]),
        # texts repeat across rows, so the no-duplicates sampler makes more batches than ceil(N / B)
        "repeats": _write(root / "repeats.jsonl", [{"anchor": t["anchor"], "positive": triplets[i % 5]["positive"]}
                                                   for i, t in enumerate(triplets)]),
    }


def config(models, files, tmp_path, **overrides) -> TrainConfig:
    base = dict(model=str(models["tiny"]), data=str(files["triplets"]), output_dir=str(tmp_path / "run"), eval_data=[],
                batch_size=8, learning_rate=1e-3, max_steps=30, logging_steps=1, save_steps=0, disable_tqdm=True)
    return TrainConfig(**(base | overrides))


def logged(output_dir, key="loss") -> list:
    records = [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines()]
    return [r[key] for r in records if key in r]


def weights(folder) -> dict:
    return load_file(Path(folder) / "model.safetensors")


# ----------------------------------------------------------------------------------------------
# every loss learns

LOSS_CASES = {
    "mnrl": dict(loss="mnrl"),
    "mnrl_symmetric": dict(loss="mnrl_symmetric", data="pairs"),
    "cached_mnrl": dict(loss="cached_mnrl", mini_batch_size=4),
    "gist": dict(loss="gist", guide_model="tiny"),
    "matryoshka": dict(loss="matryoshka", matryoshka_dims=[32, 16, 8]),
    "matryoshka_cached_triplet": dict(loss="matryoshka", matryoshka_inner="triplet", matryoshka_dims=[32, 16], mini_batch_size=4),
    "triplet": dict(loss="triplet"),
    "cosent": dict(loss="cosent", data="scored"),
    "angle": dict(loss="angle", data="scored"),
    "bce": dict(loss="bce", data="labelled", pos_weight=2.0),
    # Without dropout: the tiny random cross-encoder's listwise loss starts at ln 2 and moves little in 30 steps,
    # so dropout noise alone decided the comparison.
    "listwise": dict(loss="listwise", model="still"),
    "simcse": dict(loss="mnrl", data="single"),
}


@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_every_loss_goes_down(case, models, data, tmp_path):
    overrides = dict(LOSS_CASES[case])
    overrides["data"] = str(data[overrides.get("data", "triplets")])
    for key in ("guide_model", "model"):
        if key in overrides:
            overrides[key] = str(models[overrides[key]])
    cfg = config(models, data, tmp_path, **overrides)
    main(cfg)
    losses_ = logged(cfg.output_dir)
    assert len(losses_) == 30
    first, last = sum(losses_[:5]) / 5, sum(losses_[-5:]) / 5
    assert last < first, (case, losses_)
    final = Path(cfg.output_dir) / "final"
    card = (final / "README.md").read_text()
    assert str(models["tiny"]) in card and "Full training configuration" in card


# ----------------------------------------------------------------------------------------------
# exact resume


@pytest.fixture(scope="module")
def straight_run(models, data, tmp_path_factory):
    """20 steps of mnrl with dropout (so the RNG state matters), a checkpoint every 10 steps."""
    out = tmp_path_factory.mktemp("straight")
    cfg = TrainConfig(model=str(models["tiny"]), data=str(data["triplets"]), output_dir=str(out / "run"), eval_data=[],
                      batch_size=8, learning_rate=1e-3, max_steps=20, logging_steps=1, save_steps=10, warmup_ratio=0.1,
                      disable_tqdm=True)
    main(cfg)
    return cfg


def test_resume_after_stop_is_bitwise_identical(straight_run, tmp_path, monkeypatch):
    cfg = replace(straight_run, output_dir=str(tmp_path / "run"))
    save = checkpoint.save_run_checkpoint

    def save_then_stop(output_dir, step, model, state):
        path = save(output_dir, step, model, state)
        if step == 10:
            raise KeyboardInterrupt  # the run stops right after checkpoint-10, as with Ctrl-C
        return path

    monkeypatch.setattr(checkpoint, "save_run_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        main(cfg)
    monkeypatch.undo()
    assert logged(cfg.output_dir)[-1] == logged(straight_run.output_dir)[9]
    main(replace(cfg, resume="latest"))

    a, b = weights(Path(straight_run.output_dir) / "final"), weights(Path(cfg.output_dir) / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert logged(cfg.output_dir) == logged(straight_run.output_dir)
    assert logged(cfg.output_dir, "lr") == logged(straight_run.output_dir, "lr")
    assert not all(torch.equal(a[k], weights(Path(straight_run.output_dir) / "checkpoint-10")[k]) for k in a)


def test_resume_after_sigkill_during_checkpoint_write(straight_run, tmp_path):
    out = tmp_path / "run"
    flags = ["--model", straight_run.model, "--data", straight_run.data, "--output_dir", str(out), "--eval_data", "none",
             "--batch_size", "8", "--learning_rate", "1e-3", "--max_steps", "20", "--logging_steps", "1",
             "--save_steps", "5", "--warmup_ratio", "0.1", "--disable_tqdm"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", **{checkpoint.KILL_DURING_SAVE: "15"})
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *flags], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert [s for s, _ in checkpoint.run_checkpoints(out)] == [5, 10]
    assert any(p.name.startswith(".checkpoint-15.tmp-") for p in out.iterdir())  # the half-written save

    main(replace(straight_run, output_dir=str(out), save_steps=5, resume="latest"))
    a, b = weights(Path(straight_run.output_dir) / "final"), weights(out / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert logged(out) == logged(straight_run.output_dir)
    assert not any(p.name.startswith(".checkpoint-") for p in out.iterdir())


def test_checkpoint_folder_is_an_st_model_plus_one_state_file(straight_run):
    folder = Path(straight_run.output_dir) / "checkpoint-10"
    assert (folder / "modules.json").is_file() and (folder / "model.safetensors").is_file()
    assert {p.name for p in folder.iterdir()} - {"training_state.pt"} == {p.name for p in (Path(straight_run.output_dir) / "final").iterdir()}
    state = torch.load(folder / checkpoint.RUN_STATE_FILE, weights_only=True)
    assert sorted(state) == sorted(run_state.LoopState.KEYS)
    assert state["step"] == 10 and state["total_steps"] == 20 and state["warmup_steps"] == 2
    assert [r["step"] for r in state["log"]] == list(range(1, 11))
    saved = json.loads((Path(straight_run.output_dir) / "train_config.json").read_text())
    assert saved["max_length"] == 128 and saved["batch_sampler"] == "no_duplicates"


# ----------------------------------------------------------------------------------------------
# gradient accumulation, cached step, schedule length


def test_accumulation_equals_bigger_batch(models, data, tmp_path):
    # cosine, not euclidean: a euclidean loss is blind to a shift of every embedding, so the last
    # LayerNorm bias has an exactly-zero gradient that AdamW turns into +-lr steps of rounding noise.
    common = dict(model=str(models["still"]), loss="triplet", distance="cosine", margin=0.5, batch_sampler="shuffled", max_steps=3)
    big = config(models, data, tmp_path / "big", batch_size=8, **common)
    small = config(models, data, tmp_path / "small", batch_size=4, gradient_accumulation_steps=2, **common)
    main(big)
    main(small)
    a, b = weights(Path(big.output_dir) / "final"), weights(Path(small.output_dir) / "final")
    start = weights(models["still"])
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5  # float summation order only
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-3  # and training did move the weights
    assert logged(big.output_dir) == pytest.approx(logged(small.output_dir), rel=1e-5)


def test_cached_step_equals_plain_step_under_matryoshka(models, data, tmp_path):
    common = dict(model=str(models["still"]), loss="matryoshka", matryoshka_dims=[32, 8], max_steps=3)
    plain = config(models, data, tmp_path / "plain", **common)
    cached = config(models, data, tmp_path / "cached", mini_batch_size=3, **common)
    main(plain)
    main(cached)
    a, b = weights(Path(plain.output_dir) / "final"), weights(Path(cached.output_dir) / "final")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert logged(plain.output_dir) == pytest.approx(logged(cached.output_dir), rel=1e-5)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_schedule_ends_exactly_at_the_last_step(schedule, models, data, tmp_path):
    cfg = config(models, data, tmp_path, data=str(data["repeats"]), loss="mnrl", max_steps=-1, num_train_epochs=2,
                 gradient_accumulation_steps=2, lr_scheduler_type=schedule, warmup_steps=2)
    dataset = load_dataset(cfg.data)
    sampler = NoDuplicatesBatchSampler(dataset, 8, seed=42)
    batches = [sampler.num_batches(e) for e in range(2)]
    assert batches[0] != -(-len(dataset) // 8)  # duplicates force extra small batches: ceil(N/B) would be wrong
    expected = sum(-(-n // 2) for n in batches)
    main(cfg)
    steps, lrs = logged(cfg.output_dir, "step"), logged(cfg.output_dir, "lr")
    assert steps == list(range(1, expected + 1))
    end = training.lr_multiplier(schedule, expected, expected, 2) * cfg.learning_rate
    assert lrs[-1] == end
    assert end == (cfg.learning_rate if schedule == "constant" else 0.0)
    assert lrs[0] == cfg.learning_rate / 2  # after step 1 of 2 warmup steps


# ----------------------------------------------------------------------------------------------
# evaluation, best model, prompts, multi-dataset, sentence-transformers


def test_best_model_is_kept_and_loaded(models, data, tmp_path):
    # Maximizing the dev loss (perverse on purpose) makes an early checkpoint the best one, so the
    # run must reload it at the end.
    cfg = config(models, data, tmp_path, max_steps=12, eval_steps=3, eval_data=[f"dev={data['triplets']}"],
                 eval_dataset=str(data["triplets"]), metric_for_best_model="loss", greater_is_better=True,
                 save_steps=6, save_total_limit=1)
    final = main(cfg)
    evals = [r for r in map(json.loads, (Path(cfg.output_dir) / "log.jsonl").read_text().splitlines()) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 3, 6, 9, 12, 12]
    best = max(evals[1:-1], key=lambda r: r["eval_loss"])
    assert best["step"] == 3 and evals[-1]["best_step"] == 3
    assert final["eval_loss"] == pytest.approx(best["eval_loss"], abs=1e-6)
    assert final["eval_dev_cosine_accuracy"] == best["eval_dev_cosine_accuracy"]
    assert [s for s, _ in checkpoint.run_checkpoints(cfg.output_dir)] == [3, 12]  # rotation (limit 1) never deletes the best


def test_unknown_best_metric_lists_the_available_keys(models, data, tmp_path):
    cfg = config(models, data, tmp_path, eval_data=[f"dev={data['triplets']}"], metric_for_best_model="accuracy")
    with pytest.raises(errors.ConfigError, match="available: eval_dev_cosine_accuracy"):
        main(cfg)
    assert not Path(cfg.output_dir).exists()  # checked before the run writes anything


def test_prompts_multi_dataset_and_per_dataset_losses(models, data, tmp_path, monkeypatch):
    calls = []
    for name in ("triplet", "cosent"):
        fn = getattr(losses, name)
        monkeypatch.setattr(losses, name, lambda *a, _fn=fn, _n=name, **k: calls.append(_n) or _fn(*a, **k))
    spec = [{"path": str(data["triplets"]), "name": "nli", "loss": "triplet", "prompts": {"anchor": "query: ", "positive": "passage: ", "negative": "passage: "}},
            {"path": str(data["scored"]), "name": "sts", "loss": "cosent"}]
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps({"datasets": spec, "multi_dataset_schedule": "round_robin", "max_steps": 6}))
    cfg = train.parse_args(["--config", str(cfg_file), "--model", str(models["tiny"]), "--output_dir", str(tmp_path / "run"),
                            "--eval_data", "none", "--batch_size", "8", "--logging_steps", "1", "--disable_tqdm"])
    assert cfg.max_steps == 6 and cfg.datasets == spec and cfg.eval_data == []
    main(cfg)
    assert calls == ["triplet", "cosent"] * 3  # round robin, every batch from one dataset with its own loss
    st_config = json.loads((tmp_path / "run" / "final" / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"query": "query: ", "document": "passage: "}
    again = train.parse_args(["--config", str(tmp_path / "run" / "train_config.json")])  # the saved config reads back
    assert again.datasets == spec and again.max_length == 128


@needs_fast
def test_gradient_checkpointing_trains_the_same_weights(models, data, tmp_path, monkeypatch):
    """--gradient_checkpointing recomputes the packed layers in backward (dropout on: the RNG state is
    replayed), so 3 steps, plain and cached, give the weights of the same run without it."""
    from minisbert.fast import packing

    calls = []
    real = packing._layer
    monkeypatch.setattr(packing, "_layer", lambda *a: calls.append(torch.is_grad_enabled()) or real(*a))
    for step in ({}, {"loss": "cached_mnrl", "mini_batch_size": 3}):
        runs, with_grad = [], []
        for flag in (False, True):
            cfg = config(models, data, tmp_path / f"{bool(step)}-{flag}", max_steps=3, gradient_checkpointing=flag, **step)
            calls.clear()
            main(cfg)
            with_grad.append(calls.count(True))
            runs.append(weights(Path(cfg.output_dir) / "final"))
        assert with_grad[1] == 2 * with_grad[0] > 0  # each packed layer with grad ran again in backward
        assert runs[0].keys() == runs[1].keys()
        for k in runs[0]:
            torch.testing.assert_close(runs[1][k], runs[0][k], atol=1e-6, rtol=0, msg=k)
    assert train.parse_args(["--gradient_checkpointing"]).gradient_checkpointing


def test_trained_folders_load_in_sentence_transformers(models, data, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    from minisbert import BiEncoder, CrossEncoder

    bi = config(models, data, tmp_path / "bi", max_steps=4, loss="matryoshka", matryoshka_dims=[32, 16], max_length=24)
    main(bi)
    folder = Path(bi.output_dir) / "final"
    texts = [json.loads(line)["anchor"] for line in data["triplets"].read_text().splitlines()]
    ours = BiEncoder.from_pretrained(folder).encode(texts)
    theirs = st.SentenceTransformer(str(folder), device="cpu").encode(texts)
    assert abs(ours - theirs).max() < 1e-5
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 24

    ce = config(models, data, tmp_path / "ce", max_steps=4, loss="bce", data=str(data["labelled"]))
    main(ce)
    folder = Path(ce.output_dir) / "final"
    pairs = [(r["query"], r["document"]) for r in map(json.loads, data["labelled"].read_text().splitlines())]
    ours = CrossEncoder.from_pretrained(folder).predict(pairs)
    theirs = st.CrossEncoder(str(folder), device="cpu").predict(pairs)
    assert abs(ours - theirs).max() < 1e-5


def test_truncation_is_reported_once_and_bf16_runs(models, data, tmp_path, capsys):
    cfg = config(models, data, tmp_path, max_steps=3, max_length=8, dtype="bf16")
    main(cfg)
    out = capsys.readouterr().out
    assert out.count("truncation:") == 1
    assert "72 training inputs were longer than max_length=8" in out
    assert all(torch.isfinite(torch.tensor(logged(cfg.output_dir))))


@pytest.mark.parametrize("native", [False, True])
def test_bf16_says_once_when_emulated_and_names_the_kernels(native, models, data, tmp_path, capsys, monkeypatch):
    """--dtype bf16 with evaluation, a dev loss and the cached step: where bf16 would be emulated (the probe
    monkeypatched to say so, as on an AVX2-only CPU) the run warns exactly once; natively it says nothing.
    The startup line names the kernels in use."""
    import warnings

    from minisbert.fast import kernels

    monkeypatch.setattr(kernels, "bf16_native", lambda device: native)
    monkeypatch.setattr(kernels, "_WARNED", set())
    cfg = config(models, data, tmp_path, max_steps=2, dtype="bf16", mini_batch_size=4, eval_data=[f"trip={data['triplets']}"],
                 eval_dataset=str(data["triplets"]), eval_steps=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        final = main(cfg)
    emulated = [w for w in record if "bf16 is emulated" in str(w.message)]
    assert len(emulated) == (0 if native else 1)
    assert "eval_trip_cosine_accuracy" in final and math.isfinite(final["eval_loss"])
    out = capsys.readouterr().out
    assert f"kernels: {kernels.describe('cpu', torch.bfloat16, optimizer=True)}" in out.splitlines()


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(models, data, tmp_path, monkeypatch):
    calls = []
    triplet = losses.triplet

    def nan_after_seven(*args, **kwargs):
        calls.append(1)
        loss = triplet(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 8 else loss

    monkeypatch.setattr(losses, "triplet", nan_after_seven)
    cfg = config(models, data, tmp_path, loss="triplet", save_steps=5)
    with pytest.raises(errors.NonFiniteLoss, match="step 8.*the loss is nan.*checkpoint-5"):
        main(cfg)
    assert [s for s, _ in checkpoint.run_checkpoints(cfg.output_dir)] == [5]
    assert checkpoint.load_run_state(Path(cfg.output_dir) / "checkpoint-5")["step"] == 5
    assert not (Path(cfg.output_dir) / "final").exists()


# ----------------------------------------------------------------------------------------------
# bad input: a clear error before any training


def _bad_files(tmp_path) -> dict:
    files = {
        "empty": "",
        "missing_column": '{"anchor": "a", "positive": "b"}\n{"anchor": "c"}\n',
        "not_text": '{"anchor": "a", "positive": "b"}\n{"anchor": "c", "positive": 3}\n',
        "bad_label": '{"sentence1": "a", "sentence2": "b", "score": 0.5}\n{"sentence1": "c", "sentence2": "d", "score": "high"}\n',
    }
    return {k: _write_text(tmp_path / f"{k}.jsonl", v) for k, v in files.items()}


def _write_text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case, overrides, message", [
    ("missing file", dict(data="{tmp}/nope.jsonl"), r"nope\.jsonl: file not found"),
    ("empty file", dict(data="{tmp}/empty.jsonl"), r"empty\.jsonl: the file has no rows"),
    ("row missing a column", dict(data="{tmp}/missing_column.jsonl", batch_size=1), r"missing_column\.jsonl, line 2, column 'positive': missing"),
    ("non-string text", dict(data="{tmp}/not_text.jsonl", batch_size=1), r"not_text\.jsonl, line 2, column 'positive': expected text"),
    ("label not a number", dict(data="{tmp}/bad_label.jsonl", loss="cosent", batch_size=1), r"bad_label\.jsonl, line 2, column 'score': expected a number"),
    ("unknown loss", dict(loss="contrastive"), r"--loss 'contrastive' is unknown; expected one of mnrl"),
    ("batch larger than data", dict(batch_size=64), r"triplets\.jsonl: batch_size 64 is larger than the data \(24 rows\)"),
    ("negative learning rate", dict(learning_rate=-1e-5), r"--learning_rate must be > 0"),
    ("output_dir is a file", dict(output_dir="{tmp}/empty.jsonl"), r"--output_dir .*empty\.jsonl exists and is a file"),
    ("matryoshka dims too wide", dict(loss="matryoshka", matryoshka_dims=[64, 32]), r"--matryoshka_dims \[64\] exceed the model's embedding width 32"),
    ("mini-batch larger than batch", dict(mini_batch_size=16), r"--mini_batch_size 16 is larger than --batch_size 8"),
    ("gist without guide", dict(loss="gist"), r"--loss gist needs --guide_model"),
    ("triplet on pairs", dict(loss="triplet", data="{pairs}"), r"--loss triplet needs exactly anchor, positive, negative"),
    ("fp16", dict(dtype="fp16"), r"--dtype 'fp16' is not one of fp32, bf16 \(fp16 is not supported"),
])
def test_bad_input_fails_before_training(case, overrides, message, models, data, tmp_path):
    _bad_files(tmp_path)
    overrides = {k: v.format(tmp=tmp_path, pairs=data["pairs"]) if isinstance(v, str) else v for k, v in overrides.items()}
    cfg = config(models, data, tmp_path, **({"output_dir": str(tmp_path / "out")} | overrides))
    with pytest.raises(ValueError, match=message):
        main(cfg)
    assert not (tmp_path / "out").exists()  # nothing was written: the error came before training


def test_cli_prints_errors_without_traceback_and_exits_2(models, data, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--loss", "contrastive", "--model", str(models["tiny"]),
                           "--data", str(data["triplets"]), "--output_dir", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --loss 'contrastive' is unknown") and "Traceback" not in proc.stderr


def test_unknown_flags_and_bad_config_files(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--loss", "mnrl", "--lerning_rate", "1e-5"])
    assert e.value.code == 2 and "unrecognized arguments: --lerning_rate" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"loss": "mnrl", "epochs": 3}))
    with pytest.raises(errors.ConfigError, match=r"bad\.json: unknown field\(s\) \['epochs'\]"):
        train.parse_args(["--config", str(bad)])
    assert train.cli(["--config", str(bad)]) == 2
    assert "error: --config" in capsys.readouterr().err
    wrong_type = tmp_path / "wrong.json"
    wrong_type.write_text(json.dumps({"batch_size": "32"}))
    with pytest.raises(errors.ConfigError, match="--batch_size must be int, got '32'"):
        main(train.parse_args(["--config", str(wrong_type)]))


def test_eval_data_layouts_pick_their_evaluator(models, data, tmp_path):
    from minisbert import BiEncoder, evaluation

    rows = [json.loads(line) for line in data["triplets"].read_text().splitlines()]
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    _write(beir / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": r["positive"]} for i, r in enumerate(rows)])
    _write(beir / "queries.jsonl", [{"_id": f"q{i}", "text": r["anchor"]} for i, r in enumerate(rows)])
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(rows))))
    rerank = _write(tmp_path / "rerank.jsonl", [{"query": r["anchor"], "positive": [r["positive"]], "negative": [r["negative"]]} for r in rows])
    model = BiEncoder.from_pretrained(models["tiny"])
    expected = {"triplets": (data["triplets"], evaluation.TripletEvaluator, "trip_cosine_accuracy"),
                "sts": (data["scored"], evaluation.STSEvaluator, "trip_spearman_cosine"),
                "beir": (beir, evaluation.RetrievalEvaluator, "trip_cosine_ndcg@10"),
                "rerank": (rerank, evaluation.RerankingEvaluator, "trip_ndcg@10")}
    for path, cls, key in expected.values():
        evaluator = run.make_evaluator(f"trip={path}", False, None)
        assert type(evaluator) is cls and key in evaluator(model)
    dims = run.make_evaluator(str(data["triplets"]), False, [32, 16])(model)
    assert set(dims) == {"triplets_dim_32_cosine_accuracy", "triplets_dim_16_cosine_accuracy"}
    with pytest.raises(errors.ConfigError, match="cannot tell the evaluator from the columns"):
        run.make_evaluator(str(data["pairs"]), False, None)

    cfg = config(models, data, tmp_path / "ce", loss="listwise", max_steps=3, eval_data=[f"rr={rerank}"],
                 metric_for_best_model="rr_ndcg@10")
    final = main(cfg)
    assert {"eval_rr_ndcg@10", "eval_rr_map", "eval_rr_mrr@10"} <= set(final)


def test_mask_duplicates_removes_repeated_positives_from_the_negatives(models, data, tmp_path):
    """--mask_duplicates with a shuffled sampler: the first step's loss is MNRL with every candidate that
    repeats the anchor's positive text left out of the softmax (a naive loop over the batch)."""
    import math

    from minisbert import BiEncoder

    rows = [json.loads(line) for line in Path(data["repeats"]).read_text().splitlines()]  # positives repeat every 5 rows
    model = BiEncoder.from_pretrained(models["still"])  # no dropout: the step's embeddings are the eval ones
    a = torch.tensor(model.encode([r["anchor"] for r in rows]))
    p = torch.tensor(model.encode([r["positive"] for r in rows]))
    a, p = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(p, dim=-1)
    naive = 0.0
    for i, r in enumerate(rows):
        kept = [j for j, other in enumerate(rows) if j == i or other["positive"] != r["positive"]]
        logits = [20.0 * float(a[i] @ p[j]) for j in kept]
        naive += math.log(sum(math.exp(x) for x in logits)) - 20.0 * float(a[i] @ p[i])
    naive /= len(rows)

    def first_loss(out, *extra):
        cfg = config(models, data, tmp_path, model=str(models["still"]), data=str(data["repeats"]), output_dir=str(tmp_path / out),
                     batch_sampler="shuffled", batch_size=len(rows), max_steps=1, mask_duplicates=bool(extra))
        main(cfg)
        return logged(cfg.output_dir)[0]

    masked, unmasked = first_loss("masked", True), first_loss("unmasked")
    assert masked == pytest.approx(naive, rel=1e-4)
    assert unmasked > masked + 0.1  # the duplicates were false negatives


def test_mask_duplicates_needs_an_in_batch_loss(models, data, tmp_path):
    cfg = config(models, data, tmp_path, loss="triplet", mask_duplicates=True)
    with pytest.raises(errors.ConfigError, match="--mask_duplicates masks in-batch negatives"):
        main(cfg)
    assert not Path(cfg.output_dir).exists()


def test_pooling_and_normalize_flags_shape_the_trained_model(models, data, tmp_path):
    """--pooling cls --normalize on a plain backbone: the run trains and saves that bi-encoder (CLS pooling,
    a Normalize module), which sentence-transformers loads with the same unit-norm embeddings."""
    import numpy as np

    from minisbert import BiEncoder

    cfg = config(models, data, tmp_path, max_steps=3, pooling="cls", normalize=True)
    main(cfg)
    folder = Path(cfg.output_dir) / "final"
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_cls_token"] and not pooling["pooling_mode_mean_tokens"]
    assert "sentence_transformers.models.Normalize" in (folder / "modules.json").read_text()
    texts = [json.loads(line)["anchor"] for line in data["triplets"].read_text().splitlines()]
    ours = BiEncoder.from_pretrained(folder).encode(texts)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # the trained weights under the base model's own pooling (mean) give other embeddings
    assert not np.allclose(ours, BiEncoder.from_pretrained(folder, pooling="mean", normalize=True).encode(texts), atol=1e-4)
    st = pytest.importorskip("sentence_transformers")
    theirs = st.SentenceTransformer(str(folder), device="cpu").encode(texts)
    assert abs(ours - theirs).max() < 1e-5


@pytest.mark.parametrize("overrides, message", [
    ({"pooling": "avg"}, r"--pooling 'avg' is not one of cls, max, mean"),
    ({"pooling": "cls", "loss": "bce"}, r"--pooling and --normalize shape a bi-encoder's embedding"),
])
def test_pooling_flag_errors(models, data, tmp_path, overrides, message):
    cfg = config(models, data, tmp_path, **({"data": str(data["labelled"])} if overrides.get("loss") == "bce" else {}), **overrides)
    with pytest.raises(errors.ConfigError, match=message):
        main(cfg)
    assert not Path(cfg.output_dir).exists()


# ----------------------------------------------------------------------------------------------
# --tf32 on every torch: fp32_precision from 2.9, allow_tf32 before


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9: no fp32_precision")
def test_tf32_sets_fp32_precision_where_torch_has_it():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    try:
        matmul.fp32_precision, conv.fp32_precision = "ieee", "ieee"
        train.allow_tf32()
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def test_tf32_sets_allow_tf32_on_torch_before_2_9(monkeypatch):
    from types import SimpleNamespace

    # torch 2.4 ... 2.8 as this build would look: allow_tf32 flags, no fp32_precision, no cudnn.conv
    matmul, cudnn = SimpleNamespace(allow_tf32=False), SimpleNamespace(allow_tf32=False)
    monkeypatch.setattr(torch.backends.cuda, "matmul", matmul)
    monkeypatch.setattr(torch.backends, "cudnn", cudnn)
    train.allow_tf32()
    assert matmul.allow_tf32 is True and cudnn.allow_tf32 is True
