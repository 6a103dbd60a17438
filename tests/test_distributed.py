"""minisbert.distributed: N processes with B rows each train like one process with N*B rows.

    shard            contiguous shares of the global batch, stand-in rows (no processes needed)
    gathered loss    2 gloo processes (forked): the loss and the embedding gradients of every in-batch
                     loss equal one process's BITWISE, with uneven and empty shares, two hard-negative
                     columns (ST #3453), labels (cosent), guide embeddings (gist), CE logits (listwise);
                     the cached step under DDP equals the plain step and all-reduces once per step
    train.py         torchrun, 2 processes: the weights after 3 optimizer steps equal those of one
                     process with the same --batch_size (the global batch) within REL / ATOL / TIGHT
                     below, for mnrl and cached_mnrl (also with --gradient_checkpointing); rank 0 alone writes clean ST folders, evaluates and keeps the best
                     checkpoint as one process does; resume with 2 processes is bitwise exact; resume
                     with another number of processes is refused
    kill             SIGKILL of rank 1 mid-run: torchrun exits non-zero within 120 s, naming rank 1

The 2-process runs are the documented command, `torchrun --standalone --nproc_per_node 2 train.py ...`
(examples/DISTRIBUTED.md), one launch per run: --standalone lets torchrun pick a free port itself, so
no port is chosen here and raced for, and no run shares a store with another.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import train  # noqa: E402

from minisbert import checkpoint, distributed, errors, losses, training  # noqa: E402
from minisbert.distributed import SyncLastForward, World  # noqa: E402
from minisbert.gradcache import cached_step, plan  # noqa: E402
from minisbert.sampler import NoDuplicatesBatchSampler  # noqa: E402
from minisbert.data import load_dataset  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
# 2 processes vs 1 process, after 3 AdamW steps at lr 1e-3. The gradients agree to float summation order
# (~2e-7 relative: the batch is embedded in 2 forwards instead of 1 and DDP adds 2 partial sums), so the
# logged loss and gradient norm of every step must agree to REL. AdamW's update lr * m / (sqrt(v) + 1e-8)
# then magnifies a 1e-11 difference in a gradient entry near zero (attention key biases, whose true
# gradient is 0; a rare token's embedding) up to ~1e-2 * lr. So: every weight within ATOL (3% of one
# step), and all but a ten-thousandth of the weights within TIGHT. Measured: max |Δw| 7.6e-6 (mnrl),
# one of 1.0M weights above 1e-6.
REL, ATOL, TIGHT = 1e-5, 3e-5, 1e-6


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the same thread count as the OMP_NUM_THREADS=1 workers
    yield
    torch.set_num_threads(old)


# ----------------------------------------------------------------------------------------------
# shard: no processes needed


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [1, 2, 5, 8, 9])
def test_shards_are_contiguous_and_cover_the_batch(n, world_size):
    rows = [100 + i for i in range(n)]  # row ids of a global batch
    shares = [World(rank=r, world_size=world_size).shard(rows) for r in range(world_size)]
    sizes = shares[0][1]
    assert all(s == sizes for _, s in shares)  # every process knows every share's size
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    real = [mine[:size] for (mine, _), size in zip(shares, sizes)]
    assert sum(real, []) == rows  # contiguous, in order: gathering them rebuilds the global batch
    for (mine, _), size in zip(shares, sizes):
        assert mine == (rows[:1] if size == 0 else mine[:size])  # an empty share embeds a stand-in row


def test_every_process_shards_the_same_no_duplicates_batches(tmp_path):
    """The sampler runs in every process with the same seed, so the global batches (and the no-duplicates
    guarantee, which is theirs) are the same everywhere; each process then takes its share."""
    path = _quads(tmp_path / "q.jsonl", 30, repeat_every=4)  # some texts repeat across rows
    ds = load_dataset(path)
    a = NoDuplicatesBatchSampler(ds, 8, seed=3).batches(0)
    b = NoDuplicatesBatchSampler(ds, 8, seed=3).batches(0)
    assert a == b
    for batch in a:
        texts = [t for i in batch for t in ds.rows([i])[0]]
        shares = [World(rank=r, world_size=2).shard(batch) for r in range(2)]
        union = sum((mine[:sizes[r]] for r, (mine, sizes) in enumerate(shares)), [])
        assert union == batch and len(set(texts)) == len(texts)


# ----------------------------------------------------------------------------------------------
# the gathered loss, in 2 forked gloo processes


def _global_batch(n, K, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, D, generator=g) for _ in range(K)], torch.rand(n, generator=g)


LOSS_CASES = {  # name: (column loss, number of columns, guide columns?, output width)
    "mnrl_two_hard_negatives": (training.column_loss("mnrl"), 4, False, 8),
    "matryoshka_mnrl": (losses.matryoshka(training.column_loss("mnrl"), [8, 4]), 4, False, 8),
    "mnrl_symmetric": (training.column_loss("mnrl_symmetric"), 2, False, 8),
    "gist_two_hard_negatives": (training.column_loss("gist"), 4, True, 8),
    "cosent_labels": (training.column_loss("cosent"), 2, False, 8),
    "listwise_logits": (training.column_loss("listwise"), 3, False, 1),
}


IN_BATCH_CASES = ("mnrl_two_hard_negatives", "matryoshka_mnrl", "mnrl_symmetric", "gist_two_hard_negatives")


def _check_gathered_losses(world: World):
    cases = [(name, n, masked) for name in LOSS_CASES for n in (5, 8, 1)  # uneven, even, an empty share (a stand-in row)
             for masked in ((False, True) if name in IN_BATCH_CASES else (False,))]
    for name, n, masked in cases:
        fn, K, guided, D = LOSS_CASES[name]
        columns, labels = _global_batch(n, K, D, seed=n)
        guide = _global_batch(n, K, 8, seed=100 + n)[0] if guided else None
        # --mask_duplicates: ids of the global batch's candidates; the last one repeats anchor 0's positive
        # (the same text, so the same embedding; a close positive, so it weighs in anchor 0's softmax)
        ids = torch.arange((K - 1) * n)
        ids[-1] = ids[0]
        extra = {"candidate_ids": ids} if masked else {}
        if masked:
            columns[1][0] = columns[0][0]
            columns[K - 1][n - 1] = columns[1][0]
        kw = {"guide_embeddings": guide} if guided else {}
        leaves = [c.clone().requires_grad_() for c in columns]
        reference = fn(leaves, labels, **kw, **extra)  # one process, the whole batch
        reference.backward()
        if masked and n > 1:
            assert not torch.equal(reference, fn(columns, labels, **kw)), f"{name}: the ids masked nothing"

        mine, sizes = world.shard(list(range(n)))
        local = [c[mine].clone().requires_grad_() for c in columns]
        kw = {"guide_embeddings": [g[mine] for g in guide]} if guided else {}
        loss = world.gathered(fn, sizes)(local, labels[mine], **kw, **extra)  # the ids pass through ungathered
        loss.backward()
        size = sizes[world.rank]
        where = f"{name}, n={n}, {'masked, ' if masked else ''}rank {world.rank}"
        assert torch.equal(loss, reference), where
        for k, (leaf, ref) in enumerate(zip(local, leaves)):
            # all_gather's backward sums the W identical losses' gradients; DDP divides by W
            assert torch.equal(leaf.grad[:size] / world.world_size, ref.grad[mine[:size]]), f"{where}, column {k}"
            assert not leaf.grad[size:].any(), f"{where}: the stand-in row got a gradient"


class _Encoder(torch.nn.Module):
    """A stand-in for BiEncoder: a feature dict with batch-first "x" (b, 6) -> (b, 8), plus an unused layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8))
        self.unused = torch.nn.Linear(8, 8)  # as BERT's pooler in a bi-encoder: no gradient, ever

    def forward(self, features):
        return self.body(features["x"])


def _check_cached_step_under_ddp(world: World):
    """cached_step + SyncLastForward under DDP == one process's plain step; one all-reduce per step."""
    n, m = 7, 2  # shares of 4 and 3 rows, chunks of 2
    inputs = [torch.randn(n, 6, generator=torch.Generator().manual_seed(k)) for k in range(3)]  # anchor, pos, neg
    fn = training.column_loss("mnrl")

    single = _Encoder()
    fn([single({"x": x}) for x in inputs], None).backward()

    model = _Encoder()
    ddp = distributed.wrap(model, world)  # as train.py wraps it, on any torch
    all_reduces = []

    def counting_hook(state, bucket):
        all_reduces.append(bucket.index())
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting_hook)
    mine, sizes = world.shard(list(range(n)))
    columns = [{"x": x[mine]} for x in inputs]
    forward = SyncLastForward(ddp, ddp, sum(len(r) for r in plan(columns, m)))
    cached_step(forward, columns, world.gathered(fn, sizes), m)
    forward.check()
    assert all_reduces == [0], all_reduces  # one bucket, all-reduced once: after the last replay
    for (name, p), q in zip(model.named_parameters(), single.parameters()):
        if name.startswith("unused"):
            assert p.grad is None and q.grad is None, name  # untouched, so AdamW skips it in both
        else:
            # float32 summation order only: DDP averages two partial sums of 4 and 3 rows' terms where one
            # process adds 7, so entries of size ~5 move by a few ulps (measured 2.6e-6 = 5e-7 relative)
            torch.testing.assert_close(p.grad, q.grad, rtol=REL, atol=1e-6, msg=name)

    with pytest.raises(RuntimeError, match="forwards with grad"):  # a count that would skip the sync fails loudly
        wrong = SyncLastForward(ddp, ddp, 5)
        wrong({"x": inputs[0][mine]})
        wrong.check()


class _DDPBefore213(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel as torch 2.4 ... 2.12 declare it: broadcast_buffers, no forward_sync_buffers."""

    def __init__(self, module, device_ids=None, find_unused_parameters=False, broadcast_buffers=True):
        with warnings.catch_warnings():  # torch 2.13 deprecates broadcast_buffers; older ones do not warn
            warnings.simplefilter("ignore", FutureWarning)
            super().__init__(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters,
                             broadcast_buffers=broadcast_buffers)


def _check_wrap_on_torch_before_2_13(world: World):
    """wrap() on a DDP without forward_sync_buffers: rank 0's buffers once at wrapping, never at a forward."""
    model = _Encoder()
    model.register_buffer("ids", torch.full((3,), float(world.rank)))  # differs per process, as no real buffer does
    original, distributed.DistributedDataParallel = distributed.DistributedDataParallel, _DDPBefore213
    try:
        ddp = distributed.wrap(model, world)
    finally:
        distributed.DistributedDataParallel = original
    assert isinstance(ddp, _DDPBefore213)
    assert model.ids.tolist() == [0.0] * 3, model.ids  # rank 0's, broadcast when wrapping
    model.ids.fill_(10.0 + world.rank)
    ddp({"x": torch.randn(2, 6)}).sum().backward()
    assert model.ids.tolist() == [10.0 + world.rank] * 3, model.ids  # not broadcast again at the forward


def _gather_worker(rank: int, world_size: int, store: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        world = World(rank=rank, world_size=world_size)
        _check_gathered_losses(world)
        _check_cached_step_under_ddp(world)
        _check_wrap_on_torch_before_2_13(world)
    finally:
        dist.destroy_process_group()


def test_gathered_losses_and_cached_ddp_step_equal_one_process(tmp_path):
    # fork: the children reuse this process's imports (spawn would re-import torch in each)
    torch.multiprocessing.start_processes(_gather_worker, args=(2, str(tmp_path / "store")), nprocs=2,
                                          start_method="fork")


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "MASTER_ADDR is not set; launch with torchrun"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, r"RANK=2 is not in \[0, WORLD_SIZE=2\)"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
])
def test_a_broken_launch_environment_is_named(env, message, monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(errors.ConfigError, match=message):
        distributed.init("cpu")
    assert not dist.is_initialized()


def test_single_process_world_changes_nothing():
    world = World()
    fn = training.column_loss("mnrl")
    assert world.gathered(fn, [4]) is fn and world.shard([3, 1, 2]) == ([3, 1, 2], [3])
    model = torch.nn.Linear(2, 2)
    forward = SyncLastForward(model, model, forwards=99)
    forward(torch.ones(1, 2))
    forward.check()  # no DDP: nothing to check


# ----------------------------------------------------------------------------------------------
# train.py under torchrun


@functools.cache
def _texts() -> list[str]:
    """The 925 distinct sentences of the committed STSb slice."""
    rows = [json.loads(line) for line in (ROOT / "tests" / "data" / "stsb_test_500.jsonl").read_text().splitlines()]
    return list(dict.fromkeys(t for r in rows for t in (r["sentence1"], r["sentence2"])))


def _quads(path: Path, n: int, repeat_every: int = 0) -> Path:
    """n rows (anchor, positive, negative_1, negative_2); unique texts unless repeat_every > 0."""
    t = _texts()
    rows = []
    for i in range(n):
        j = i % repeat_every if repeat_every and i % 3 == 0 else i
        rows.append({"anchor": t[4 * i], "positive": t[4 * i + 1], "negative_1": t[4 * i + 2], "negative_2": t[4 * j + 3]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _torchrun_command(args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    """`cmd` in its own session (so _stop can kill all of it), output to `log`."""
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _torchrun(args, log: Path) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node 2 ARGS`."""
    return _spawn(_torchrun_command(args), log)


def _torchrun_each(runs, log: Path) -> subprocess.Popen:
    """One `torchrun ... train.py FLAGS` launch after the other, stopping at the first failure."""
    return _spawn(["bash", "-c", " && ".join(shlex.join(_torchrun_command(["train.py", *flags])) for flags in runs)], log)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the session this test started: torchrun and its workers
        proc.wait()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import tiny_models

    folder = tiny_models.build("bert", tmp_path_factory.mktemp("models") / "still")
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # same masks in 1 and 2 processes: none
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _flags(model_dir, data, out, *extra):
    return ["--model", str(model_dir), "--data", str(data), "--output_dir", str(out), "--eval_data", "none",
            "--batch_size", "8", "--learning_rate", "1e-3", "--logging_steps", "1", "--device", "cpu",
            "--disable_tqdm", "--ddp_timeout", "120", *extra]  # a lost peer fails a collective in 120 s, not 30 min


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory):
    """The same trainings with 1 process (here) and 2 processes (four torchrun launches, one after the other)."""
    root = tmp_path_factory.mktemp("runs")
    mnrl_data = _quads(root / "quads21.jsonl", 21)  # batches 8, 8, 5: the last one splits 3 + 2
    cached_data = _quads(root / "quads33.jsonl", 33)  # 8, 8 | 8, 8 | 1: the last leaves rank 1 a stand-in row
    triplets = root / "dev.jsonl"  # evaluation data: rank 0 evaluates, the best checkpoint is kept and loaded
    quads = [json.loads(line) for line in _quads(root / "dev-quads.jsonl", 60).read_text().splitlines()][40:]
    triplets.write_text("".join(json.dumps({"anchor": q["anchor"], "positive": q["positive"], "negative": q["negative_1"]}) + "\n"
                                for q in quads))
    mnrl = ["--loss", "mnrl", "--save_steps", "0"]
    evaluated = [*mnrl, "--eval_data", f"dev={triplets}", "--eval_steps", "1", "--metric_for_best_model", "dev_cosine_accuracy"]
    cached = ["--loss", "cached_mnrl", "--mini_batch_size", "3", "--gradient_accumulation_steps", "2", "--save_steps", "1"]
    two = [
        _flags(model_dir, mnrl_data, root / "mnrl-2", *mnrl),
        _flags(model_dir, cached_data, root / "cached-2", *cached),
        _flags(model_dir, cached_data, root / "cached-2-resumed", *cached, "--resume", root / "cached-2" / "checkpoint-1"),
        _flags(model_dir, mnrl_data, root / "evaluated-2", *evaluated),
        _flags(model_dir, cached_data, root / "cached-2-checkpointed", *cached, "--gradient_checkpointing"),
    ]
    proc = _torchrun_each(two, root / "torchrun.log")
    try:
        # meanwhile, the one-process runs in this process
        assert train.cli(_flags(model_dir, mnrl_data, root / "mnrl-1", *mnrl)) == 0
        assert train.cli(_flags(model_dir, cached_data, root / "cached-1", *cached)) == 0
        assert train.cli(_flags(model_dir, mnrl_data, root / "evaluated-1", *evaluated)) == 0
        try:
            proc.wait(timeout=400)  # about 40 s on an idle 2-core machine
        except subprocess.TimeoutExpired:
            pytest.fail("the 2-process runs did not end in 400 s; torchrun's output:\n"
                        + (root / "torchrun.log").read_text()[-6000:])
    finally:
        _stop(proc)
    output = (root / "torchrun.log").read_text()
    assert proc.returncode == 0, output[-6000:]
    return {"root": root, "output": output, "mnrl_data": mnrl_data, "cached_data": cached_data, "launched": len(two)}


def _weights(run: Path) -> dict:
    return load_file(run / "final" / "model.safetensors")


def _logged(run: Path, key="loss") -> list:
    return [r[key] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if key in r]


def _assert_same_training(one: Path, two: Path, model_dir: Path):
    initial = load_file(model_dir / "model.safetensors")
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    above = sum(int(((a[k] - b[k]).abs() > TIGHT).sum()) for k in a)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=ATOL) for k in a), f"max |Δw| = {worst:.3g}"
    assert above <= 1e-4 * sum(v.numel() for v in a.values()), f"{above} weights differ by more than {TIGHT}"
    assert any(not torch.equal(a[k], initial[k]) for k in a)  # it did train
    # parameters without gradient (BERT's pooler) stay untouched in both: DDP leaves their grad None
    untouched = {k for k in a if torch.equal(a[k], initial[k])}
    assert untouched == {k for k in b if torch.equal(b[k], initial[k])} and all(k.startswith("pooler.") for k in untouched)
    assert _logged(one, "step") == _logged(two, "step") == [1, 2, 3]
    assert _logged(two) == pytest.approx(_logged(one), rel=REL)
    # AdamW and clipping are blind to a gradient's scale (a missed 1/W would not move the weights);
    # the norm before clipping is not
    assert _logged(two, "grad_norm") == pytest.approx(_logged(one, "grad_norm"), rel=REL)
    print(f"{two.name}: max |Δw| {worst:.2g}, {above} weights above {TIGHT}")


@pytest.mark.parametrize("loss", ["mnrl", "cached"])
def test_two_processes_train_like_one_process_with_the_global_batch(loss, runs, model_dir):
    batches = NoDuplicatesBatchSampler(load_dataset(runs[f"{loss}_data"]), 8, seed=42).batches(0)
    expected = {"mnrl": [8, 8, 5], "cached": [8, 8, 8, 8, 1]}[loss]
    assert [len(b) for b in batches] == expected  # the uneven and the stand-in shares are exercised
    _assert_same_training(runs["root"] / f"{loss}-1", runs["root"] / f"{loss}-2", model_dir)


def test_gradient_checkpointing_under_ddp_trains_like_one_process_without_it(runs, model_dir):
    """DDP (find_unused_parameters) + the cached step + layers recomputed on the packed tokens in backward."""
    _assert_same_training(runs["root"] / "cached-1", runs["root"] / "cached-2-checkpointed", model_dir)


def test_rank0_alone_writes_clean_st_folders_and_per_process_state(runs):
    root = runs["root"]
    one, two = root / "cached-1", root / "cached-2"
    assert {p.name for p in (two / "final").iterdir()} == {p.name for p in (one / "final").iterdir()}
    assert not any(k.startswith("module.") for k in _weights(two))  # the backbone, not the DDP wrapper
    assert [s for s, _ in checkpoint.run_checkpoints(two)] == [1, 2, 3]
    state = checkpoint.load_run_state(two / "checkpoint-2")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each process its own dropout stream
    assert checkpoint.load_run_state(one / "checkpoint-2")["world_size"] == 1
    assert runs["output"].count("step 3/3 | epoch 1.00 | loss") == runs["launched"]  # once per run: only rank 0 prints


def test_rank0_evaluates_and_keeps_the_best_checkpoint_as_one_process_does(runs):
    """Evaluation at every step on rank 0; its "new best" reaches every process (a save gathers all RNG states)."""
    one, two = runs["root"] / "evaluated-1", runs["root"] / "evaluated-2"
    records = [json.loads(line) for line in (two / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_dev_cosine_accuracy" in r]
    assert [r["step"] for r in evals][:3] == [0, 1, 2]  # before training, then every step; the end may add a best reload
    assert [s for s, _ in checkpoint.run_checkpoints(two)] == [s for s, _ in checkpoint.run_checkpoints(one)]
    assert _logged(two, "eval_dev_cosine_accuracy") == pytest.approx(_logged(one, "eval_dev_cosine_accuracy"), abs=1e-6)
    assert (two / "final" / "model.safetensors").is_file()


def test_resume_with_two_processes_is_bitwise_exact(runs):
    root = runs["root"]
    straight, resumed = _weights(root / "cached-2"), _weights(root / "cached-2-resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert _logged(root / "cached-2-resumed") == _logged(root / "cached-2")


def test_resume_with_another_number_of_processes_is_refused(runs, model_dir, tmp_path):
    flags = _flags(model_dir, runs["cached_data"], tmp_path / "out", "--loss", "cached_mnrl", "--mini_batch_size", "3",
                   "--gradient_accumulation_steps", "2", "--resume", str(runs["root"] / "cached-2" / "checkpoint-1"))
    with pytest.raises(errors.ConfigError, match=r"that run had 2 process\(es\), this one has 1"):
        train.main(train.parse_args(flags))
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# a killed process fails the run, it does not hang


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            found += [int(child), *_descendants(int(child))]
    return found


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(v[5:]) for v in env if v.startswith(b"RANK=")]
    return ranks[0] if ranks else None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through /proc")
def test_sigkill_of_one_rank_fails_the_run_quickly(model_dir, tmp_path):
    data = _quads(tmp_path / "quads.jsonl", 40)
    out = tmp_path / "run"
    proc = _torchrun(["train.py", *_flags(model_dir, data, out, "--max_steps", "100000", "--save_steps", "0")],
                     tmp_path / "torchrun.log")
    try:
        deadline = time.monotonic() + 180
        while not ((out / "log.jsonl").is_file() and len((out / "log.jsonl").read_text().splitlines()) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "torchrun.log").read_text()[-3000:]
            time.sleep(0.2)
        victim = next(p for p in _descendants(proc.pid) if _rank_of(p) == 1)  # training, mid-run
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=120)
        took = time.monotonic() - killed
    finally:
        _stop(proc)
    output = (tmp_path / "torchrun.log").read_text()
    assert proc.returncode != 0, output[-3000:]
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*-9", output), output[-3000:]
    assert "Signal 9 (SIGKILL)" in output
    assert took < 120
    assert not (out / "final").exists()
