"""The cached (GradCache) step pinned to uncached training.

Reference: seed the RNG, embed the same chunks in the same order as stage 1 does, with grad and dropout
on, concatenate, compute the loss and backward once. The cached step must give the same loss and the same
gradient for every parameter: fp32 within rtol 1e-5 (atol 1e-5 x the largest gradient entry of the model);
bf16 autocast within rtol 1e-3, or 2e-2 with one autocast region around the whole step (see that test). A replay that does not restore the RNG is shown to
miss that tolerance by far, so these tests would catch a wrong replay.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from minisbert import losses as L
from minisbert.gradcache import (
    RngState,
    balanced_order,
    cached_step,
    chunk_ranges,
    embed_without_graph,
    loss_and_cached_grads,
    plan,
    replay_with_cached_grads,
)

B, SEQ, VOCAB, WIDTH = 10, 7, 40, 12


class TinyEncoder(nn.Module):
    """Embedding -> MLP with dropout -> masked mean pooling: (b, L) ids -> (b, WIDTH)."""

    def __init__(self, p=0.1, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(VOCAB, 16)
        self.mlp = nn.Sequential(nn.Dropout(p), nn.Linear(16, 32), nn.GELU(), nn.Dropout(p), nn.Linear(32, WIDTH))

    def forward(self, chunk):
        assert chunk["prompt_length"] == 0  # non-tensor values reach every chunk
        x = self.mlp(self.emb(chunk["input_ids"]))  # (b, L, WIDTH)
        m = chunk["attention_mask"].unsqueeze(-1).to(x.dtype)  # (b, L, 1)
        return (x * m).sum(1) / m.sum(1).clamp_min(1)  # (b, WIDTH)


def make_columns(k, seed=1):
    g = torch.Generator().manual_seed(seed)
    columns = []
    for _ in range(k):
        lengths = torch.randint(1, SEQ + 1, (B,), generator=g)
        mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()  # (B, L)
        ids = torch.randint(1, VOCAB, (B, SEQ), generator=g) * mask
        columns.append({"input_ids": ids, "attention_mask": mask, "prompt_length": 0})
    return columns


def chunk(column, i, j):
    return {k: v[i:j].clone() if isinstance(v, torch.Tensor) else v for k, v in column.items()}


def guide_embeddings(columns):
    with torch.no_grad():
        guide = TinyEncoder(p=0.0, seed=5).eval()
        return [guide(c) for c in columns]


def loss_for(name, columns):
    """(loss_fn over the list of column embeddings, number of columns, labels)."""
    labels = None
    if name == "mnrl":
        fn = lambda e, y: L.mnrl(e[0], torch.cat(e[1:]))  # noqa: E731
    elif name == "matryoshka_mnrl":
        fn = lambda e, y: L.matryoshka(L.mnrl, [12, 6, 3], [1.0, 0.5, 0.25])(e[0], torch.cat(e[1:]))  # noqa: E731
    elif name == "triplet":
        fn = lambda e, y: L.triplet(*e, margin=5.0)  # noqa: E731
    elif name == "cosent":
        labels = torch.rand(B, generator=torch.Generator().manual_seed(3))
        fn = lambda e, y: L.cosent(e[0], e[1], y)  # noqa: E731
    elif name == "mnrl_symmetric":
        fn = lambda e, y: L.mnrl_symmetric(e[0], e[1])  # noqa: E731
    elif name == "gist":
        g = guide_embeddings(columns)  # the trainer computes these without grad and closes over them
        fn = lambda e, y: L.gist(e[0], torch.cat(e[1:]), g[0], torch.cat(g[1:]), scale=20.0)  # noqa: E731
    elif name == "matryoshka_triplet":
        fn = L.matryoshka(lambda e, y: L.triplet(*e, margin=1.0), [12, 4])  # a list-taking loss, wrapped whole
    return fn, labels


N_COLUMNS = {"mnrl": 3, "matryoshka_mnrl": 3, "triplet": 3, "cosent": 2, "mnrl_symmetric": 2, "gist": 3,
             "matryoshka_triplet": 3}


def reference(model, embed, columns, loss_fn, mini_batch_size, labels, seed, balanced=True):
    """Uncached: the same chunks (plan's ranges over balanced_order's rows, as cached_step makes them;
    plain chunk_ranges in batch order with balanced=False, as the stages alone take them) embedded in the same order under the same seed, put
    back in batch order, one graph, one backward."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    plans = plan(columns, mini_batch_size) if balanced else [chunk_ranges(B, mini_batch_size)] * len(columns)
    embeddings = []
    for col, ranges in zip(columns, plans):
        order = balanced_order(col, ranges) if balanced else None
        order = torch.arange(B) if order is None else order
        col = {k: v[order] if isinstance(v, torch.Tensor) else v for k, v in col.items()}
        emb = torch.cat([embed(chunk(col, i, j)) for i, j in ranges])  # (B, D), rows in `order`
        embeddings.append(emb[torch.argsort(order)])
    loss = loss_fn(embeddings, labels)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def cached(model, embed, columns, loss_fn, mini_batch_size, labels, seed, **kw):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = cached_step(embed, columns, loss_fn, mini_batch_size, labels=labels, **kw)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_grads_close(got, expected, rtol):
    """|got - expected| <= rtol * |expected| + rtol * (largest entry of any parameter's gradient): gradients
    that cancel exactly (the last bias under a euclidean triplet loss) are float noise and compare absolutely."""
    scale = max(g.abs().max() for g in expected.values())
    assert scale > 0, "no gradient at all: the test would be vacuous"
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=rtol, atol=rtol * scale, msg=name)


def max_rel_diff(got, expected):
    scale = max(g.abs().max() for g in expected.values())
    return max(float((got[n] - expected[n]).abs().max() / scale) for n in expected)


# ----------------------------------------------------------------------------- cached == uncached


@pytest.mark.parametrize("mini_batch_size", [2, 5, 3, 4, 16])  # divides B, does not, larger than B
@pytest.mark.parametrize("name", ["mnrl", "matryoshka_mnrl", "triplet", "cosent"])
def test_cached_equals_uncached_fp32_with_dropout(name, mini_batch_size):
    model = TinyEncoder(p=0.1)
    columns = make_columns(N_COLUMNS[name])
    loss_fn, labels = loss_for(name, columns)
    ref_loss, ref_grads = reference(model, model, columns, loss_fn, mini_batch_size, labels, seed=7)
    loss, grads = cached(model, model, columns, loss_fn, mini_batch_size, labels, seed=7)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert_grads_close(grads, ref_grads, rtol=1e-5)


@pytest.mark.parametrize("name", ["mnrl_symmetric", "gist", "matryoshka_triplet"])
def test_cached_equals_uncached_other_losses(name):
    model = TinyEncoder(p=0.1)
    columns = make_columns(N_COLUMNS[name])
    loss_fn, labels = loss_for(name, columns)
    ref_loss, ref_grads = reference(model, model, columns, loss_fn, 3, labels, seed=8)
    loss, grads = cached(model, model, columns, loss_fn, 3, labels, seed=8)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert_grads_close(grads, ref_grads, rtol=1e-5)


@pytest.mark.parametrize("placement", ["inside_embed", "around_step"])
@pytest.mark.parametrize("name", ["mnrl", "matryoshka_mnrl", "triplet", "cosent"])
def test_cached_equals_uncached_under_bf16_autocast(name, placement):
    """The model runs under bf16 autocast; the loss and the cached-gradient product stay in float32.

    inside_embed (each forward opens its own autocast): both paths do the same bf16 arithmetic; tolerance
    rtol 1e-3. around_step (one autocast around the whole step): autocast caches one bf16 copy of each
    weight for the whole region, so the uncached reference sums all chunks' weight gradients in bf16 before
    they reach float32 .grad, while the cached step hands each chunk's gradient over separately; tolerance
    rtol 2e-2. Both are far below what a wrong replay gives (> 0.1, see the NoRestore test)."""
    model = TinyEncoder(p=0.1)

    def embed(c):
        if placement == "around_step":
            return model(c)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(c)

    # nullcontext, not autocast(enabled=False): any autocast region, even a disabled one, makes the inner
    # ones keep their weight-cast cache alive until it exits
    outer = torch.autocast("cpu", dtype=torch.bfloat16) if placement == "around_step" else contextlib.nullcontext()
    columns = make_columns(N_COLUMNS[name])
    loss_fn, labels = loss_for(name, columns)
    with outer:
        ref_loss, ref_grads = reference(model, embed, columns, loss_fn, 3, labels, seed=9)
        loss, grads = cached(model, embed, columns, loss_fn, 3, labels, seed=9)
        assert embed(chunk(columns[0], 0, 2)).dtype == torch.bfloat16  # bf16 really reaches the loss
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert_grads_close(grads, ref_grads, rtol=1e-3 if placement == "inside_embed" else 2e-2)
    fp32_loss, fp32_grads = reference(model, model, columns, loss_fn, 3, labels, seed=9)
    assert max_rel_diff(grads, fp32_grads) > 1e-3  # bf16 is really in effect: fp32 gradients differ


def test_cached_equals_full_batch_training_without_dropout():
    """Dropout off: chunking is invisible, the cached step equals embedding each column in one forward."""
    model = TinyEncoder(p=0.0).eval()
    columns = make_columns(3)
    loss_fn, _ = loss_for("mnrl", columns)
    ref_loss, ref_grads = reference(model, model, columns, loss_fn, B, None, seed=0)
    loss, grads = cached(model, model, columns, loss_fn, 3, None, seed=0)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert_grads_close(grads, ref_grads, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_equals_uncached_on_cuda(dtype):
    """On CUDA dropout draws from the device's RNG: the replay must restore the CUDA state of the chunk's
    device, not only the CPU one."""
    model = TinyEncoder(p=0.1).cuda()

    def embed(c):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            return model(c)

    columns = [{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in c.items()} for c in make_columns(3)]
    loss_fn, _ = loss_for("matryoshka_mnrl", columns)
    ref_loss, ref_grads = reference(model, embed, columns, loss_fn, 3, None, seed=14)
    loss, grads = cached(model, embed, columns, loss_fn, 3, None, seed=14)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert_grads_close(grads, ref_grads, rtol=1e-5 if dtype == torch.float32 else 1e-3)


# ----------------------------------------------------------------------------- the RNG replay matters


class NoRestore:
    """An RNG state that restores nothing: the replay then draws fresh dropout masks."""

    def restored(self):
        return contextlib.nullcontext()


def test_replay_without_restoring_rng_gives_different_grads():
    model = TinyEncoder(p=0.1)
    columns = make_columns(3)
    loss_fn, _ = loss_for("mnrl", columns)
    ref_loss, ref_grads = reference(model, model, columns, loss_fn, 3, None, seed=10, balanced=False)

    model.zero_grad(set_to_none=True)
    torch.manual_seed(10)
    ranges = chunk_ranges(B, 3)
    embeddings, states = embed_without_graph(model, columns, ranges)
    loss, grads = loss_and_cached_grads(embeddings, loss_fn)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)  # stages 1 and 2 alone are right
    wrong = [[NoRestore() for _ in column_states] for column_states in states]
    replay_with_cached_grads(model, columns, ranges, wrong, grads)
    bad_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert max_rel_diff(bad_grads, ref_grads) > 100 * 1e-5  # far outside the tolerance used above

    model.zero_grad(set_to_none=True)
    replay_with_cached_grads(model, columns, ranges, states, grads)  # the saved states fix it
    assert_grads_close({n: p.grad.clone() for n, p in model.named_parameters()}, ref_grads, rtol=1e-5)


def test_rng_state_restores_and_leaves_outer_rng_alone():
    torch.manual_seed(0)
    state = RngState.capture({"x": torch.zeros(1)})
    first = torch.rand(3)
    after = torch.get_rng_state()
    with state.restored():
        assert torch.equal(torch.rand(3), first)
    assert torch.equal(torch.get_rng_state(), after)


class _OnXpu(torch.Tensor):
    """A CPU tensor that says it lives on xpu:0, to follow the RNG calls made for a non-CUDA accelerator."""

    @property
    def device(self):
        return torch.device("xpu", 0)


def test_rng_state_of_another_accelerator_is_saved_and_restored_for_its_device_type(monkeypatch):
    from minisbert import gradcache

    calls = []
    monkeypatch.setattr(gradcache, "get_device_states", lambda *tensors: ([0], ["xpu state"]))
    monkeypatch.setattr(gradcache, "set_device_states",
                        lambda devices, states, *, device_type=None: calls.append(("set", devices, states, device_type)))

    @contextlib.contextmanager
    def fork_rng(devices=None, enabled=True, device_type="cuda"):
        calls.append(("fork", devices, device_type))
        yield

    monkeypatch.setattr(torch.random, "fork_rng", fork_rng)
    monkeypatch.setattr(torch, "xpu", type("xpu", (), {"device": None, "get_rng_state": None}), raising=False)
    state = RngState.capture({"x": torch.zeros(1).as_subclass(_OnXpu)})
    with state.restored():
        pass
    assert calls == [("fork", [0], "xpu"), ("set", [0], ["xpu state"], "xpu")]  # not CUDA's defaults


def test_rng_state_of_an_accelerator_torch_cannot_replay_is_refused(monkeypatch):
    from minisbert import gradcache

    chunk = {"x": torch.zeros(1).as_subclass(_OnXpu)}
    monkeypatch.setattr(torch, "xpu", type("mps_like", (), {"get_rng_state": None}), raising=False)  # no .device
    with pytest.raises(RuntimeError, match="cannot replay the random state of xpu tensors"):
        RngState.capture(chunk)
    monkeypatch.setattr(torch, "xpu", type("xpu", (), {"device": None, "get_rng_state": None}), raising=False)
    monkeypatch.setattr(gradcache, "set_device_states", lambda devices, states: None)  # torch 2.4's signature
    with pytest.raises(RuntimeError, match="cannot replay the random state of xpu tensors"):
        RngState.capture(chunk)


# ----------------------------------------------------------------------------- evaluation, scaling, inputs


def test_no_grad_returns_the_uncached_loss_without_backward():
    model = TinyEncoder(p=0.1)
    columns = make_columns(3)
    loss_fn, _ = loss_for("mnrl", columns)
    ref_loss, _ = reference(model, model, columns, loss_fn, 4, None, seed=11)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    with torch.no_grad():
        loss = cached_step(model, columns, loss_fn, 4)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_loss_scale_scales_gradients_not_the_returned_loss():
    model = TinyEncoder(p=0.1)
    columns = make_columns(2)
    loss_fn, labels = loss_for("cosent", columns)
    loss1, grads1 = cached(model, model, columns, loss_fn, 4, labels, seed=12)
    loss2, grads2 = cached(model, model, columns, loss_fn, 4, labels, seed=12, loss_scale=0.25)
    assert loss1 == loss2
    assert_grads_close(grads2, {n: 0.25 * g for n, g in grads1.items()}, rtol=1e-6)


def test_embed_that_edits_its_chunk_in_place_does_not_change_the_replay():
    """An embed that shifts input_ids in place (not idempotent) and pops a key: stage 3 must still see what
    stage 1 saw, and the caller's columns stay untouched (ST #3862)."""
    model = TinyEncoder(p=0.1)

    def embed(c):
        c["input_ids"].add_(1).clamp_(max=VOCAB - 1)
        c.pop("unused")
        return model(c)

    columns = make_columns(3)
    for column in columns:
        column["unused"] = "x"
    before = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in c.items()} for c in columns]
    loss_fn, _ = loss_for("mnrl", columns)
    ref_loss, ref_grads = reference(model, embed, columns, loss_fn, 3, None, seed=13)
    loss, grads = cached(model, embed, columns, loss_fn, 3, None, seed=13)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert_grads_close(grads, ref_grads, rtol=1e-5)
    for c, b in zip(columns, before):
        assert c.keys() == b.keys() and all(torch.equal(c[k], b[k]) for k in ("input_ids", "attention_mask"))


def test_model_only_ever_sees_one_chunk_and_stage_one_has_no_graph():
    model = TinyEncoder(p=0.1)
    calls = []

    def embed(c):
        calls.append((c["input_ids"].shape[0], torch.is_grad_enabled()))
        return model(c)

    columns = make_columns(3)
    loss_fn, _ = loss_for("mnrl", columns)
    cached_step(embed, columns, loss_fn, 4)
    chunks = [4, 4, 2] * 3
    assert calls == [(b, False) for b in chunks] + [(b, True) for b in chunks]


def test_peak_saved_activations_are_one_chunk():
    """Bytes held for backward (autograd saved tensors) at their peak: the cached step with chunks of 2 keeps
    a fraction of what uncached training keeps for the whole batch."""

    class Counted:
        live = peak = 0

        def __init__(self, t):
            self.t, self.n = t, (0 if isinstance(t, nn.Parameter) else t.numel() * t.element_size())
            Counted.live += self.n
            Counted.peak = max(Counted.peak, Counted.live)

        def __del__(self):
            Counted.live -= self.n

    def peak(run):
        Counted.live = Counted.peak = 0
        with torch.autograd.graph.saved_tensors_hooks(Counted, lambda c: c.t):
            run()
        return Counted.peak

    model = TinyEncoder(p=0.1)
    columns = make_columns(3)
    loss_fn, _ = loss_for("mnrl", columns)
    uncached = peak(lambda: reference(model, model, columns, loss_fn, B, None, seed=0))
    cached_peak = peak(lambda: cached(model, model, columns, loss_fn, 2, None, seed=0))
    assert cached_peak < uncached / 5, (cached_peak, uncached)


def test_bad_input_raises_value_errors():
    model = TinyEncoder(p=0.1)
    columns = make_columns(2)
    fn = lambda e, y: L.mnrl(e[0], e[1])  # noqa: E731
    with pytest.raises(ValueError, match="mini_batch_size"):
        cached_step(model, columns, fn, 0)
    short = dict(columns[1], input_ids=columns[1]["input_ids"][:-1])
    with pytest.raises(ValueError, match="column 1 'input_ids' has 9 rows"):
        cached_step(model, [columns[0], short], fn, 4)
    with pytest.raises(ValueError, match="at least one column"):
        cached_step(model, [], fn, 4)
    with pytest.raises(ValueError, match="does not use column 2"):
        cached_step(model, make_columns(3), fn, 4)


def test_balanced_chunks_keep_their_row_counts_and_spread_long_rows():
    lengths = [100, 90, 5, 4, 3, 80, 2, 1, 1, 70]  # the long rows would fill chunks 0 and 2 in batch order
    mask = (torch.arange(100)[None, :] < torch.tensor(lengths)[:, None]).long()
    ranges = chunk_ranges(len(lengths), 4)  # [(0, 4), (4, 8), (8, 10)]
    order = balanced_order({"input_ids": mask, "attention_mask": mask}, ranges)
    assert sorted(order.tolist()) == list(range(len(lengths)))  # a permutation
    tokens = [sum(lengths[r] for r in order[i:j].tolist()) for i, j in ranges]
    naive = [sum(lengths[i:j]) for i, j in ranges]
    assert max(naive) == 100 + 90 + 5 + 4
    # 4 long rows in 3 chunks: two must share one, at best the two shortest (80 + 70), as the deal does
    assert max(tokens) == 80 + 70
    for i, j in ranges:  # batch order within a chunk
        assert order[i:j].tolist() == sorted(order[i:j].tolist())
    assert balanced_order({"input_ids": mask}, ranges) is None  # no mask: nothing to balance
    assert balanced_order({"input_ids": mask, "attention_mask": mask}, [(0, 10)]) is None  # one chunk


def test_cached_step_on_balanced_chunks_equals_batch_order_embeddings():
    """The loss sees each column in batch order whatever the chunking: with dropout off the cached loss
    and gradients equal one uncached pass over the batch as it is."""
    model = TinyEncoder(p=0.0)
    columns = make_columns(3)
    fn, _ = loss_for("mnrl", columns)
    model.zero_grad(set_to_none=True)
    expected = fn([model(c) for c in columns], None)
    expected.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    loss, got = cached(model, model, columns, fn, 3, None, seed=0)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    assert_grads_close(got, ref, 1e-5)


def test_plan_splits_a_column_of_long_rows_into_smaller_chunks():
    def column(lengths):
        mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
        return {"input_ids": mask, "attention_mask": mask}

    long, short = column([30] * 16), column([10] * 16)  # mean row: 20 tokens, so a chunk of 4 rows holds ~80
    plans = plan([long, short], 4)
    assert plans[1] == chunk_ranges(16, 4)  # short rows: ST's chunks of mini_batch_size rows
    assert len(plans[0]) == 6 and max(j - i for i, j in plans[0]) <= 4  # 480 tokens / 80 -> 6 chunks of <= 4 rows
    assert [r for ranges in plans for r in ranges][0] == (0, 3) and sum(j - i for i, j in plans[0]) == 16
    for ranges in plans:
        assert [i for i, _ in ranges[1:]] == [j for _, j in ranges[:-1]]  # contiguous cover of the rows
    assert plan([{"input_ids": long["input_ids"]}] * 2, 4) == [chunk_ranges(16, 4)] * 2  # no mask: rows only
