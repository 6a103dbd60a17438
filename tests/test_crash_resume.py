"""A run that dies loses nothing: train.py is SIGKILLed three times at seeded random moments (one of
them inside a checkpoint write), each time continued with `--resume latest`, and the final weights
and every logged loss equal those of an uninterrupted run, bit for bit.

The kills: (1) as soon as the log shows a random step of the first third has passed, plus a random
few milliseconds (so it lands wherever the loop happens to be: a forward, an optimizer step, a log
append, a save or a rotation); (2) inside the save of a random later checkpoint, after the model files
and before the training state, through the MINISBERT_KILL_DURING_SAVE hook of minisbert/training.py;
(3) like (1) in the last third. After each kill, every checkpoint-<step> folder on disk must be
complete (state file + a readable model.safetensors): a kill leaves only hidden temporary folders,
which the next start removes. fp32, a tiny BERT with dropout (so the RNG state matters), save_steps 4
and save_total_limit 2 (so kills also meet rotations). Set MINISBERT_CRASH_SEED to try other moments.

A full disk during a save is tested in test_reliability.py (in-process, with a failing write).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train import TrainConfig, main  # noqa: E402

from minisbert import checkpoint  # noqa: E402
from minisbert.checkpoint import check_safetensors  # noqa: E402

STEPS, SAVE_STEPS = 48, 4
SEED = int(os.environ.get("MINISBERT_CRASH_SEED", "0"))
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, as the subprocesses run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import tiny_models

    root = tmp_path_factory.mktemp("crash")
    model = tiny_models.build("bert", root / "tiny")
    rows = [json.loads(line) for line in (ROOT / "tests" / "data" / "stsb_test_500.jsonl").read_text().splitlines()]
    close = [r for r in rows if r["score"] >= 0.7][:24]
    far = [r for r in rows if r["score"] <= 0.3][:24]
    data = root / "triplets.jsonl"
    data.write_text("".join(json.dumps({"anchor": a["sentence1"], "positive": a["sentence2"], "negative": b["sentence2"]}) + "\n"
                            for a, b in zip(close, far)))
    settings = dict(model=str(model), data=str(data), eval_data=[], batch_size=8, learning_rate=1e-3, max_steps=STEPS,
                    warmup_ratio=0.1, logging_steps=1, save_steps=SAVE_STEPS, save_total_limit=2, dtype="fp32", disable_tqdm=True)
    straight = root / "straight"
    main(TrainConfig(output_dir=str(straight), **settings))
    return {"root": root, "settings": settings, "straight": straight}


def _flags(settings: dict, out: Path) -> list[str]:
    flags = ["--output_dir", str(out), "--eval_data", "none", "--disable_tqdm"]
    for key, value in settings.items():
        if key not in ("eval_data", "disable_tqdm"):
            flags += [f"--{key}", str(value)]
    return flags


def _records(out: Path) -> list[dict]:
    """The complete lines of log.jsonl (a kill may leave half a line at the end)."""
    records = []
    try:
        text = (out / "log.jsonl").read_text()
    except FileNotFoundError:
        return records
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


def _spawn(settings, out: Path, log_file, resume: bool, env_extra: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "train.py"), *_flags(settings, out)] + (["--resume", "latest"] if resume else [])
    return subprocess.Popen(cmd, env=ENV | (env_extra or {}), stdout=log_file, stderr=subprocess.STDOUT)


def _kill_after_step(proc: subprocess.Popen, out: Path, step: int, jitter: float, timeout: float = 400) -> None:
    """SIGKILL `proc` `jitter` seconds after log.jsonl first shows a step >= `step`."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if any(r.get("step", 0) >= step and "loss" in r for r in _records(out)):
            time.sleep(jitter)
            proc.kill()
            break
        time.sleep(0.005)
    proc.wait(timeout=60)


def _assert_consistent(out: Path) -> int:
    """Every visible checkpoint folder is complete; returns the newest step (0: none)."""
    visible = [p for p in out.iterdir() if p.name.startswith("checkpoint-")] if out.is_dir() else []
    for folder in visible:
        assert (folder / checkpoint.RUN_STATE_FILE).is_file(), f"{folder} is visible but has no training state"
        check_safetensors(folder / "model.safetensors")
        assert checkpoint.load_run_state(folder)["step"] == int(folder.name.split("-")[1])
    found = checkpoint.run_checkpoints(out)
    assert len(found) == len(visible)
    return found[-1][0] if found else 0


def test_three_sigkills_and_resumes_equal_an_uninterrupted_run(setup, tmp_path):
    rnd = random.Random(SEED)
    settings, out = setup["settings"], tmp_path / "run"
    console = open(tmp_path / "console.txt", "ab")
    kills = []

    def run_until_killed(trigger):
        latest = _assert_consistent(out)
        resume = latest > 0  # killed before the first checkpoint: start again
        if trigger[0] == "step":
            step = rnd.randint(max(trigger[1], latest + 1), trigger[2])
            proc = _spawn(settings, out, console, resume)
            _kill_after_step(proc, out, step, jitter=rnd.uniform(0, 0.02))
        else:  # inside the save of a checkpoint that the resumed run has not written yet
            step = rnd.choice([s for s in range(latest + SAVE_STEPS, trigger[2] + 1, SAVE_STEPS)])
            proc = _spawn(settings, out, console, resume, {checkpoint.KILL_DURING_SAVE: str(step)})
            proc.wait(timeout=400)
        kills.append((trigger[0], step, latest, proc.returncode))
        assert proc.returncode == -9, f"{kills}: the process was not killed; see {tmp_path / 'console.txt'}"

    run_until_killed(("step", 2, STEPS // 3))
    run_until_killed(("save", None, 2 * STEPS // 3))  # a later save than kill 1's, before kill 3's steps
    assert any(p.name.startswith(".checkpoint-") and ".tmp-" in p.name for p in out.iterdir())  # the half-written save
    run_until_killed(("step", 2 * STEPS // 3, STEPS - 12))  # 12 steps of margin: the kill must land before the end
    assert _assert_consistent(out) > 0

    proc = _spawn(settings, out, console, resume=True)
    assert proc.wait(timeout=400) == 0, (tmp_path / "console.txt").read_text()[-3000:]
    console.close()

    a, b = load_file(setup["straight"] / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kills
    keys = ("step", "epoch", "loss", "lr", "grad_norm")
    straight = [{k: r.get(k) for k in keys} for r in _records(setup["straight"])]
    resumed = [{k: r.get(k) for k in keys} for r in _records(out)]
    assert resumed == straight, kills
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert not any(p.name.startswith(".") for p in out.iterdir())  # the killed saves' leftovers are gone
    assert [s for s, _ in checkpoint.run_checkpoints(out)] == [STEPS - SAVE_STEPS, STEPS]  # rotation kept the newest 2
    print(f"kills (trigger, step, resumed from, exit code): {kills}")
    shutil.rmtree(out)


def test_leftovers_of_killed_saves_are_removed_or_put_back(tmp_path):
    """What a kill can leave, by moment: inside atomic_dir (its temporary folder, or the model's own atomic
    save nested in it), between atomic_dir's two renames when it replaces a folder (the previous version,
    moved aside: it goes back), in its final cleanup, and in rotation's delete."""
    def folder(name, files=("model.safetensors",)):
        (tmp_path / name).mkdir()
        for f in files:
            (tmp_path / name / f).write_text(name)

    folder("checkpoint-4", ("model.safetensors", checkpoint.RUN_STATE_FILE))
    folder(".checkpoint-8.tmp-ab12cd")  # killed while writing checkpoint-8
    folder("..checkpoint-8.tmp-ab12cd.tmp-ef34gh")  # killed inside the model's save into it
    folder("..checkpoint-8.tmp-ab12cd.old-77")
    folder(".checkpoint-12.old-77", ("model.safetensors", checkpoint.RUN_STATE_FILE))  # killed between the two renames
    folder(".checkpoint-4.old-78")  # killed in the cleanup after checkpoint-4 was replaced
    folder(".final.tmp-xyz")  # killed while writing final/
    folder(".final.old-79")  # final/ was being replaced, the new one is not in place
    folder(".checkpoint-0.deleted-80", (checkpoint.RUN_STATE_FILE,))  # killed while rotation deleted checkpoint-0
    folder(".cache")  # not ours: left alone
    checkpoint.remove_partial_saves(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache", "checkpoint-12", "checkpoint-4", "final"]
    assert (tmp_path / "checkpoint-4" / "model.safetensors").read_text() == "checkpoint-4"
    assert (tmp_path / "final" / "model.safetensors").read_text() == ".final.old-79"
    assert [s for s, _ in checkpoint.run_checkpoints(tmp_path)] == [4, 12]
