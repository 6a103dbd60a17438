"""Edges of the run and the API where sentence-transformers users expect a result or one clear message.

* losses.matryoshka under distillation: 2-D float labels (teacher embeddings) are cut, never normalized,
  equal to ST's MatryoshkaLoss(MSELoss).
* API edges where ST returns a result (compared with ST on the same inputs): encode([]), predict([]),
  rank(q, []), predict(["q", "d"]) as one pair, one pair with a one-label model -> np.float32,
  truncate_dim wider than the model -> no truncation. encode([]) is (0, D) float32 where ST gives (0,)
  float64 (README "Differences from sentence-transformers").
* max_length beyond the position embeddings (from_pretrained, a saved max_seq_length, train.py
  --max_length) is capped with a warning and long inputs encode; one that leaves no room for text
  beside the special tokens is refused.
* --output_dir is locked for a run: a second run (a real second process holds the lock) is refused
  with the holder's pid; the lock of a train.py killed mid-save is stale and taken over by the resume.
* A full disk, on a real tmpfs of a few MiB (root only, else skipped): a checkpoint whose
  model.safetensors or training_state.pt does not fit, a train_config.json or log.jsonl that cannot be
  written: one message naming the file and the last complete checkpoint, exit 1, no traceback, never a
  half-written checkpoint; after the disk grows, --resume latest ends where an uninterrupted run ends.
* Bad input to train.py and evaluate.py that raised a traceback or an unclear message: one line naming
  the flag, file, row or column (a device that is not one, a dataset path that is a number, a lone
  surrogate, a non-UTF-8 --config, a huge --seed, NaN --margin / --matryoshka_weights, a model path
  that is a file; evaluate's --output folder, --plot checks, classification texts and label types,
  --batch_size / --corpus_chunk_size 0, parquet reranking samples). evaluate fails before evaluating.
* Ctrl-C (SIGINT) in train.py: exit 130, the last checkpoint and the command that resumes, no traceback;
  that command finishes the run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from safetensors.torch import load_file

from minisbert import BiEncoder, CrossEncoder, ModelLoadError, checkpoint
from minisbert import losses as L

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402
import train  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
           PYTHONPATH=str(ROOT))
TRACEBACK = "Traceback (most recent call last)"
LONG = "the quick brown fox jumps over the lazy dog " * 60  # about 540 tokens: past the tiny models' 128 positions


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, as the subprocesses run


# ----------------------------------------------------------------------------------------------
# matryoshka distillation


def test_matryoshka_cuts_teacher_labels_without_normalizing_them_as_st():
    st = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    from test_losses import ColumnModel, st_loss

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 16, generator=g), 3 * torch.randn(6, 16, generator=g)  # teacher far from unit norm
    dims, weights = [16, 8, 4], [1.0, 0.5, 0.25]

    def mse(embeddings, labels):
        return F.mse_loss(embeddings, labels)

    got = L.matryoshka(mse, dims, weights)(student, teacher)
    naive = sum(w * F.mse_loss(F.normalize(student[:, :d], dim=-1), teacher[:, :d]) for d, w in zip(dims, weights))
    torch.testing.assert_close(got, naive)
    model = ColumnModel([student])
    ref = st.MatryoshkaLoss(model, st.MSELoss(model), dims, weights)
    torch.testing.assert_close(got, st_loss(ref, [student], teacher).float())


# ----------------------------------------------------------------------------------------------
# API edges: what ST returns, minisbert returns


@pytest.fixture(scope="module")
def st_models(tiny_model_dirs, tiny_classifier_dirs):
    st = pytest.importorskip("sentence_transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (st.SentenceTransformer(str(tiny_model_dirs["bert"]), device="cpu"),
                st.CrossEncoder(str(tiny_classifier_dirs["bert"]), device="cpu"))


def test_encode_of_no_texts_is_empty_as_in_st(tiny_model_dirs, st_models):
    ours = BiEncoder.from_pretrained(tiny_model_dirs["bert"], device="cpu")
    theirs = st_models[0].encode([])
    assert isinstance(theirs, np.ndarray) and theirs.size == 0
    got = ours.encode([])
    assert isinstance(got, np.ndarray) and got.shape == (0, 32) and got.dtype == np.float32
    assert np.concatenate([got, ours.encode(["a"])]).shape == (1, 32)  # stacks with a non-empty batch
    tensor = ours.encode([], convert_to_tensor=True)
    assert isinstance(st_models[0].encode([], convert_to_tensor=True), torch.Tensor)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (0, 32)
    assert ours.encode([], truncate_dim=8).shape == (0, 8)


def test_truncate_dim_wider_than_the_model_does_not_truncate_as_in_st(tiny_model_dirs, st_models):
    ours = BiEncoder.from_pretrained(tiny_model_dirs["bert"], device="cpu")
    texts = ["A man is playing a guitar.", "Two dogs run across the field."]
    theirs = st_models[0].encode(texts, truncate_dim=1000)
    assert theirs.shape == (2, 32)
    np.testing.assert_allclose(ours.encode(texts, truncate_dim=1000), theirs, atol=1e-5)
    ours.truncate_dim = 1000  # as a saved truncate_dim: the same
    np.testing.assert_allclose(ours.encode(texts), theirs, atol=1e-5)


def test_predict_and_rank_edges_as_in_st(tiny_classifier_dirs, st_models):
    ours, theirs = CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"], device="cpu"), st_models[1]
    empty = ours.predict([])
    assert isinstance(theirs.predict([]), np.ndarray) and theirs.predict([]).size == 0
    assert isinstance(empty, np.ndarray) and empty.shape == (0,) and empty.dtype == np.float32
    assert ours.predict([], convert_to_tensor=True).shape == (0,)
    assert ours.rank("q", []) == theirs.rank("q", []) == []
    for one in (["a query", "a document"], ("a query", "a document")):
        got, ref = ours.predict(one), theirs.predict(one)
        assert type(ref) is np.float32 and type(got) is np.float32
        np.testing.assert_allclose(got, ref, atol=1e-5)
    assert ours.predict(("a query", "a document"), convert_to_tensor=True).shape == ()
    np.testing.assert_allclose(ours.predict([["a query", "a document"]]), theirs.predict([["a query", "a document"]]), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# max_length: capped at the positions, refused below the special tokens


def _triplets(path: Path, n: int = 16, long_row: bool = True) -> Path:
    rows = [{"anchor": f"anchor number {i}", "positive": f"positive text {i}", "negative": f"other words {i}"} for i in range(n)]
    if long_row:
        rows[0]["anchor"] = LONG
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _train_argv(model, data, out, *extra):
    return ["--model", str(model), "--data", str(data), "--output_dir", str(out), "--eval_data", "none", "--batch_size", "8",
            "--max_steps", "2", "--save_steps", "0", "--logging_steps", "1", "--disable_tqdm", *extra]


def test_max_length_beyond_the_positions_is_capped_with_a_warning(tiny_model_dirs, tiny_classifier_dirs, tmp_path, caplog):
    folder = tiny_model_dirs["bert"]  # 128 position embeddings
    reference = BiEncoder.from_pretrained(folder, device="cpu")
    assert reference.max_length == 128
    with caplog.at_level(logging.WARNING, logger="minisbert"):
        capped = BiEncoder.from_pretrained(folder, device="cpu", max_length=100_000)
    assert capped.max_length == 128
    assert "max_length 100000 exceeds the 128 positions of" in caplog.text and "using max_length 128" in caplog.text
    np.testing.assert_array_equal(capped.encode([LONG, "short"]), reference.encode([LONG, "short"]))

    reference.save_pretrained(tmp_path / "saved")  # a saved max_seq_length: the same cap
    config = tmp_path / "saved" / "sentence_bert_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"max_seq_length": 100_000}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="minisbert"):
        loaded = BiEncoder.from_pretrained(tmp_path / "saved", device="cpu")
    assert loaded.max_length == 128 and "the saved max_seq_length 100000 exceeds the 128 positions" in caplog.text
    assert loaded.encode([LONG]).shape == (1, 32)

    ce = CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"], device="cpu", max_length=100_000)
    assert ce.max_length == 128 and np.isfinite(ce.predict([(LONG, LONG)])).all()


def test_max_length_without_room_for_text_is_refused(tiny_model_dirs, tiny_classifier_dirs, tmp_path):
    with pytest.raises(ValueError, match=r"max_length 2 leaves no room for text: every input of .* carries 2 special tokens; "
                                         r"use a max_length of at least 3"):
        BiEncoder.from_pretrained(tiny_model_dirs["bert"], device="cpu", max_length=2)
    with pytest.raises(ValueError, match=r"max_length 3 leaves no room for text: every pair .* carries 3 special tokens"):
        CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"], device="cpu", max_length=3)
    assert BiEncoder.from_pretrained(tiny_model_dirs["bert"], device="cpu", max_length=3).encode(["a b c"]).shape == (1, 32)

    BiEncoder.from_pretrained(tiny_model_dirs["bert"], device="cpu").save_pretrained(tmp_path / "saved")
    config = tmp_path / "saved" / "sentence_bert_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"max_seq_length": "long"}))
    with pytest.raises(ModelLoadError, match=r"saved: the saved max_seq_length \(sentence_bert_config\.json\) must be a "
                                             r"positive integer, got 'long'"):
        BiEncoder.from_pretrained(tmp_path / "saved", device="cpu")


def test_train_max_length_is_capped_and_one_is_refused(tiny_model_dirs, tmp_path, capsys):
    data = _triplets(tmp_path / "triplets.jsonl")
    out = tmp_path / "run"
    assert train.cli(_train_argv(tiny_model_dirs["bert"], data, out, "--max_length", "100000")) == 0
    assert json.loads((out / "train_config.json").read_text())["max_length"] == 128
    assert BiEncoder.from_pretrained(out / "final", device="cpu").max_length == 128
    capsys.readouterr()
    assert train.cli(_train_argv(tiny_model_dirs["bert"], data, tmp_path / "one", "--max_length", "1")) == 2
    err = capsys.readouterr().err
    assert "max_length 1 leaves no room for text" in err and TRACEBACK not in err
    assert not (tmp_path / "one").exists()


# ----------------------------------------------------------------------------------------------
# one run per output_dir


HOLD_LOCK = """
import sys
from pathlib import Path
from minisbert import checkpoint
lock = checkpoint.OutputDirLock(Path(sys.argv[1])).__enter__()
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_second_run_into_a_locked_output_dir_is_refused(tiny_model_dirs, tmp_path):
    data, out = _triplets(tmp_path / "triplets.jsonl"), tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=ENV, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *_train_argv(tiny_model_dirs["bert"], data, out)],
                              env=ENV, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 2 and TRACEBACK not in proc.stderr, proc.stderr
        assert f"error: --output_dir {out} is in use by another run (pid {holder.pid} on {socket.gethostname()}); " \
               "wait for it to finish, or pick another --output_dir" in proc.stderr
        assert os.listdir(out) == [checkpoint.LOCK_FILE]  # nothing of the refused run
    finally:
        holder.kill()
        holder.wait()
    assert os.listdir(out) == [checkpoint.LOCK_FILE]  # a killed holder leaves its file: stale, so the next run goes on
    assert train.cli(_train_argv(tiny_model_dirs["bert"], data, out)) == 0
    assert (out / "final").is_dir() and not (out / checkpoint.LOCK_FILE).exists()


def test_the_lock_of_a_run_killed_mid_save_is_taken_over_by_the_resume(tiny_model_dirs, tmp_path):
    data, out = _triplets(tmp_path / "triplets.jsonl"), tmp_path / "run"
    argv = _train_argv(tiny_model_dirs["bert"], data, out, "--save_steps", "1", "--max_steps", "3")
    env = ENV | {checkpoint.KILL_DURING_SAVE: "2"}  # SIGKILL inside checkpoint-2's save
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL
    lock = json.loads((out / checkpoint.LOCK_FILE).read_text())
    assert lock["pid"] != os.getpid() and checkpoint.output_dir_holder(out) is None  # its file is there, its flock is gone
    assert train.cli(argv + ["--resume", "latest"]) == 0
    assert (out / "final").is_dir() and not (out / checkpoint.LOCK_FILE).exists()


# ----------------------------------------------------------------------------------------------
# a full disk: a real small filesystem


@pytest.fixture
def small_disk(tmp_path):
    """make(mib) -> a folder on a real tmpfs of that size; unmounted at teardown. Needs root."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def make(mib: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(folder)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _grow(disk: Path, mib: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={mib}m", str(disk)], check=True)


def _fill(disk: Path, leave_pages: int) -> None:
    """Take all free space of `disk` but `leave_pages` blocks (a tmpfs gives every non-empty file whole pages)."""
    st = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * ((st.f_bavail - leave_pages) * st.f_frsize))
    assert os.statvfs(disk).f_bavail == leave_pages


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and TRACEBACK not in err, err
    return err


# A checkpoint of the tiny model: model.safetensors 4.0 MB (written first), tokenizer 0.7 MB, training_state.pt 8.0 MB.
@pytest.mark.parametrize("mib, fails_in", [(16, "model.safetensors"), (20, "training_state.pt")])
def test_a_checkpoint_that_does_not_fit_leaves_the_last_one_and_resumes_exactly(
        tiny_model_dirs, small_disk, tmp_path, capsys, mib, fails_in):
    data = _triplets(tmp_path / "triplets.jsonl", long_row=False)
    argv = lambda out: _train_argv(tiny_model_dirs["bert"], data, out, "--save_steps", "1", "--max_steps", "3")  # noqa: E731
    assert train.cli(argv(tmp_path / "straight")) == 0
    disk = small_disk(mib)  # room for checkpoint-1, not for checkpoint-2
    out = disk / "run"
    capsys.readouterr()
    assert train.cli(argv(out)) == 1
    err = _one_line_error(capsys)
    assert f"could not write {out / 'checkpoint-2'}: " in err and "No space left on device" in err
    assert f"Nothing was half-written: the last complete checkpoint is {out / 'checkpoint-1'}" in err
    assert sorted(os.listdir(out)) == ["checkpoint-1", "log.jsonl", "train_config.json"]  # no partial folder, no lock
    assert checkpoint.load_run_state(out / "checkpoint-1")["step"] == 1

    _grow(disk, 64)  # space freed: the run continues where it stopped
    assert train.cli(argv(out) + ["--resume", "latest"]) == 0
    a, b = load_file(out / "final" / "model.safetensors"), load_file(tmp_path / "straight" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("leave_pages, fails_in", [(0, "train_config.json"), (2, "log.jsonl")])
def test_a_full_disk_for_the_run_files_is_one_message(tiny_model_dirs, small_disk, tmp_path, capsys, leave_pages, fails_in):
    # 2 pages: one for the lock file, one for train_config.json (1.3 kB), none for log.jsonl's first record
    data = _triplets(tmp_path / "triplets.jsonl", long_row=False)
    disk = small_disk(1)
    out = disk / "run"
    _fill(disk, leave_pages)
    capsys.readouterr()
    assert train.cli(_train_argv(tiny_model_dirs["bert"], data, out, "--save_steps", "1")) == 1
    err = _one_line_error(capsys)
    assert f"error: could not write {out / fails_in}: No space left on device (errno 28)" in err
    assert "no checkpoint was saved before; free space (or fix the permissions) and run again" in err
    assert not any(p.name.startswith("checkpoint") for p in out.iterdir())


# ----------------------------------------------------------------------------------------------
# Ctrl-C


def test_ctrl_c_says_where_the_last_checkpoint_is_and_that_command_resumes(tiny_model_dirs, tmp_path):
    data, out = _triplets(tmp_path / "triplets.jsonl", n=8, long_row=False), tmp_path / "run"
    argv = _train_argv(tiny_model_dirs["bert"], data, out, "--batch_size", "2", "--max_steps", "80", "--save_steps", "2",
                       "--save_total_limit", "1", "--logging_steps", "50")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # a bound on a hung run, not a timing assertion
    while not checkpoint.run_checkpoints(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert TRACEBACK not in err and "KeyboardInterrupt" not in err, err
    step, last = checkpoint.run_checkpoints(out)[-1]
    command = f"python train.py --config {out / 'train_config.json'} --resume latest"
    assert err.strip().splitlines()[-1] == f"interrupted; the last complete checkpoint is {last}. Continue with: {command}"
    assert step < 80 and not (out / "final").exists() and not (out / checkpoint.LOCK_FILE).exists()
    assert train.cli(command.split()[2:] + ["--disable_tqdm"]) == 0  # the printed command finishes the run
    assert checkpoint.load_run_state(checkpoint.run_checkpoints(out)[-1][1])["step"] == 80 and (out / "final").is_dir()


# ----------------------------------------------------------------------------------------------
# bad input: one message, no traceback


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


TRAIN_CASES = {
    "device": (["--device", "foo"], r"^--device 'foo' is not a device; expected cpu, cuda or cuda:N"),
    "dataset path": (["--datasets", '[{"path": 5}]'], r"^--datasets\[0\] 'path' must be str, got 5$"),
    "dataset columns": (["--datasets", '[{"path": "x.jsonl", "columns": "anchor"}]'],
                        r"^--datasets\[0\] 'columns' must be list\[str\] or None, got 'anchor'$"),
    "lone surrogate": (["--data", "{surrogate}"], r"surrogate\.jsonl, line 3, column 'positive': character 4 is a lone "
                                                   r"surrogate \('\\ud800'\), which is not Unicode text"),
    "config not UTF-8": (["--config", "{latin1}"], r"^--config .*latin1\.json: not UTF-8 text \(byte 0xe9 at byte 13\)"),
    "seed": (["--seed", str(10**23)], r"^--seed must be an integer from 0 to 2\*\*63 - 1, got 1" + "0" * 23 + "$"),
    "margin nan": (["--loss", "triplet", "--margin", "nan"], r"^--margin must be finite, got nan$"),
    "matryoshka weights nan": (["--loss", "matryoshka", "--matryoshka_dims", "32", "16", "--matryoshka_weights", "nan", "1"],
                               r"^--matryoshka_weights must be finite, got \[nan, 1\.0\]$"),
    "model is a file": (["--model", "{surrogate}"], r"surrogate\.jsonl is a file, not a model folder"),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_bad_input_is_one_message(case, tiny_model_dirs, tmp_path, capsys):
    extra, message = TRAIN_CASES[case]
    rows = [{"anchor": f"a{i}", "positive": f"p{i}", "negative": f"n{i}"} for i in range(8)]
    rows[2]["positive"] = "abc\ud800"
    names = {"surrogate": _jsonl(tmp_path / "surrogate.jsonl", rows), "latin1": tmp_path / "latin1.json"}
    names["latin1"].write_bytes('{"loss": "caf\u00e9"}'.encode("latin-1"))
    data = _triplets(tmp_path / "triplets.jsonl")
    argv = _train_argv(tiny_model_dirs["bert"], data, tmp_path / "out") + [str(names.get(a.strip("{}"), a)) for a in extra]
    if "--datasets" in extra:
        argv.remove("--data"), argv.remove(str(data))
    capsys.readouterr()
    assert train.cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert re.search(message, err.removeprefix("error: ")), err
    assert not (tmp_path / "out").exists()


def _evaluate(argv, capsys) -> tuple[int, str]:
    """evaluate.py's exit code and stderr, in-process: its __main__ prints a ValueError as one line, exit 2."""
    evaluate.load_model.cache_clear()
    capsys.readouterr()
    try:
        evaluate.main([str(a) for a in argv])
    except ValueError as e:
        return 2, str(e)
    except SystemExit as e:  # argparse
        return e.code, capsys.readouterr().err.strip().splitlines()[-1]
    return 0, ""


def test_evaluate_output_that_is_a_folder_fails_before_evaluating(tiny_model_dirs, tmp_path):
    sts = _jsonl(tmp_path / "sts.jsonl", [{"sentence1": f"a {i}", "sentence2": f"b {i}", "score": i / 4} for i in range(4)])
    folder = tmp_path / "metrics"
    folder.mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--model", str(tiny_model_dirs["bert"]), "--task", "sts",
                           "--data", str(sts), "--output", str(folder)], env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and TRACEBACK not in proc.stderr, proc.stderr
    warning, error = proc.stderr.strip().splitlines()  # --output is deprecated (--output_dir): said first, on stderr
    assert warning.startswith("warning: --output FILE is deprecated") and "--output_dir" in warning, warning
    assert error == f"error: --output {folder} is a folder; name the file to write"
    assert proc.stdout == ""  # nothing was evaluated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics", "sts.jsonl"] and not any(folder.iterdir())


def test_evaluate_plot_is_checked_before_evaluating_and_makes_its_folder(tiny_model_dirs, tmp_path, capsys):
    sts = _jsonl(tmp_path / "sts.jsonl", [{"sentence1": f"a {i}", "sentence2": f"b {i}", "score": i / 4} for i in range(4)])
    # no dims to plot against: said before the (here missing) model is loaded
    code, err = _evaluate(["--model", tmp_path / "no-model", "--task", "sts", "--data", sts, "--plot", tmp_path / "p.png"], capsys)
    assert code == 2 and err.startswith("--plot ") and "no-model" not in err, err
    pytest.importorskip("matplotlib")
    target = tmp_path / "new" / "folder" / "dims.png"
    code, err = _evaluate(["--model", tiny_model_dirs["bert"], "--task", "sts", "--data", sts, "--matryoshka_dims", "32,16",
                           "--plot", target], capsys)
    assert code == 0 and target.read_bytes().startswith(b"\x89PNG")


def test_evaluate_takes_train_py_spellings_and_the_old_ones_with_a_warning(tiny_model_dirs, tmp_path, capsys):
    """--matryoshka_dims 32 16 and --output_dir as train.py spells them; 32,16 and --output FILE still work."""
    sts = _jsonl(tmp_path / "sts.jsonl", [{"sentence1": f"a {i}", "sentence2": f"b {i}", "score": i / 4} for i in range(4)])
    base = ["--model", str(tiny_model_dirs["bert"]), "--task", "sts", "--data", str(sts)]
    evaluate.load_model.cache_clear()
    capsys.readouterr()
    new = evaluate.main(base + ["--matryoshka_dims", "32", "16", "--output_dir", str(tmp_path / "new")])
    assert "warning" not in capsys.readouterr().err
    old = evaluate.main(base + ["--matryoshka_dims", "32,16", "--output", str(tmp_path / "old.json")])
    err = capsys.readouterr().err
    assert "warning: --matryoshka_dims 32,16 is deprecated" in err and "warning: --output FILE is deprecated" in err, err
    assert new == old and "dim_16_spearman_cosine" in new
    assert json.loads((tmp_path / "new" / "metrics.json").read_text()) == new == json.loads((tmp_path / "old.json").read_text())
    code, err = _evaluate(base + ["--output_dir", sts], capsys)
    assert code == 2 and err == f"--output_dir {sts} is a file; name the folder to write metrics.json into", err
    code, err = _evaluate(base + ["--matryoshka_dims", "32", "x"], capsys)
    assert code == 2 and err == "--matryoshka_dims 'x': expected integers such as 384 256 128", err


EVALUATE_CASES = {
    "classification text a number": (["--task", "classification", "--data", "{number}"],
                                     r"number/test\.jsonl, line 2, column 'text': expected text \(a string\), got the number 5"),
    "classification label types": (["--task", "classification", "--data", "{types}"],
                                   r"test labels \['0', '1'\] never occur in the train labels \[0, 1\] "
                                   r"\(labels are compared with their type: 1 and '1' differ\)"),
    "rerank parquet": (["--task", "rerank", "--data", "{parquet}"],
                       r"rerank\.parquet: (reading parquet needs pyarrow|not a readable parquet file)"),
    "batch_size 0": (["--task", "sts", "--data", "{sts}", "--batch_size", "0"],
                     r"argument --batch_size: expected a positive integer, got '0'"),
    "corpus_chunk_size 0": (["--task", "retrieval", "--data", "{tmp}", "--corpus_chunk_size", "0"],
                            r"argument --corpus_chunk_size: expected a positive integer, got '0'"),
}


@pytest.mark.parametrize("case", EVALUATE_CASES)
def test_evaluate_bad_input_is_one_message(case, tiny_model_dirs, tmp_path, capsys):
    number = tmp_path / "number"
    number.mkdir()
    _jsonl(number / "train.jsonl", [{"text": f"t {i}", "label": i % 2} for i in range(6)])
    _jsonl(number / "test.jsonl", [{"text": "fine", "label": 0}, {"text": 5, "label": 1}])
    types = tmp_path / "types"
    types.mkdir()
    _jsonl(types / "train.jsonl", [{"text": f"t {i}", "label": i % 2} for i in range(6)])
    _jsonl(types / "test.jsonl", [{"text": "a", "label": "1"}, {"text": "b", "label": "0"}])
    parquet = tmp_path / "rerank.parquet"
    parquet.write_bytes(b"PAR1\x15\x04\x15\xff\xfe\x00PAR1")
    sts = _jsonl(tmp_path / "sts.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 0.5}])
    names = {"number": number, "types": types, "parquet": parquet, "sts": sts, "tmp": tmp_path}
    argv, message = EVALUATE_CASES[case]
    code, err = _evaluate(["--model", tiny_model_dirs["bert"], *[names.get(a.strip("{}"), a) for a in argv]], capsys)
    assert code == 2 and re.search(message, err), err
