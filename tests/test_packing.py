"""The fast path (minisbert/fast: padding-free execution, minisbert/fast/packing.py) pinned to the
reference path (minisbert.fast switched off: the backbone's own padded forward).

Every comparison runs both paths on the same model and inputs: `fast_path` (asserting the fast path ran)
against `reference` (`minisbert.fast.disabled()`). Embeddings and parameter gradients of the packed pass
equal the padded pass (dropout off) for BERT and XLM-R, every pooling mode, prompts, left padding, token
types; the packed path steps aside for backbones it does not reproduce; with dropout on it keeps dropping
at the same rate; MINISBERT_FAST=0 runs everything on the reference path.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from capabilities import needs_fast, needs_onednn
from minisbert import BiEncoder, fast
from minisbert.fast import linears, packing
from minisbert.pooling import MODES

pytestmark = needs_fast  # every test here pins the fast path against the reference

TEXTS = [
    "A man is playing a guitar.", "Two dogs run across the field while the children watch them from far away.",
    "Hi", "The cat sleeps on the warm windowsill.", "Scientists discovered a new species of frog in the rain forest.",
    "Paris.", "Der Hund läuft über die Wiese.", "numbers 0 1 2 3 4 5 6 7 8 9 and symbols , . ! ? ; :",
]


def reference(model, features):
    """The reference path: the backbone's own forward on the padded batch, then the same head."""
    with fast.disabled():
        return model(features)


def fast_path(model, features):
    """The model's forward, asserting that it took the fast path (not the fallback to the reference)."""
    calls, real = [], packing.encode_packed
    packing.encode_packed = lambda *args: calls.append(1) or real(*args)
    try:
        out = model(features)
    finally:
        packing.encode_packed = real
    assert calls, "the fast path fell back to the reference"
    return out


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model.train()


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs):
    return {kind: BiEncoder.from_pretrained(tiny_model_dirs[kind]) for kind in ("bert", "xlmr")}


@pytest.mark.parametrize("kind", ["bert", "xlmr"])
def test_packed_embeddings_equal_padded(tiny, kind):
    model = tiny[kind].eval()
    assert packing.supports(model.backbone)
    columns = [model.tokenize(TEXTS), model.tokenize(TEXTS[::-1][:5]), model.tokenize(["one", "two words"])]
    with torch.no_grad():
        ours = fast_path(model, columns)
        for c, emb in zip(columns, ours):
            torch.testing.assert_close(emb, reference(model, c), atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(model(c), emb, atol=1e-6, rtol=1e-5)  # forward packs one column alone


@pytest.mark.parametrize("mode", MODES)
def test_every_pooling_mode_and_prompt(tiny_model_dirs, mode):
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"], pooling=mode)
    for include_prompt in (True, False):
        model.include_prompt = include_prompt
        features = model.tokenize(TEXTS, prompt="query: ")
        with torch.no_grad():
            torch.testing.assert_close(fast_path(model, features), reference(model, features), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "xlmr"])
def test_left_padding_and_token_types(tiny, kind):
    model = tiny[kind].eval()
    features = model.tokenize(TEXTS)
    features.setdefault("token_type_ids", torch.zeros_like(features["input_ids"]))
    mask = features["attention_mask"]
    lengths = mask.sum(1)
    left = {k: torch.zeros_like(v) for k, v in features.items() if isinstance(v, torch.Tensor)}
    left["input_ids"].fill_(model.tokenizer.pad_token_id)
    for i, n in enumerate(lengths.tolist()):  # the same rows, padded on the left
        for k in left:
            left[k][i, mask.shape[1] - n:] = features[k][i, :n]
    if kind == "bert":
        left["token_type_ids"][:, -2:] = 1  # the second segment of a pair, as a cross-encoder would have
    left["prompt_length"] = 0
    with torch.no_grad():
        torch.testing.assert_close(fast_path(model, left), reference(model, left), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "xlmr"])
def test_packed_gradients_equal_padded(tiny_model_dirs, kind):
    model = no_dropout(BiEncoder.from_pretrained(tiny_model_dirs[kind]))
    columns = [model.tokenize(TEXTS), model.tokenize(TEXTS[3:] + TEXTS[:3])]
    torch.manual_seed(0)
    targets = [torch.randn(len(TEXTS), model.embedding_dim) for _ in columns]

    def grads(embed):
        model.zero_grad()
        sum((e * t).sum() for e, t in zip(embed(), targets)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ours = grads(lambda: fast_path(model, columns))  # a list of columns: one packed pass
    ref = grads(lambda: [reference(model, c) for c in columns])
    # The pooler head is not run by the packed path; the padded path runs it without using it.
    assert set(ours) == {n for n in ref if ".pooler." not in n}
    scale = max(g.abs().max() for g in ref.values())
    for name in ours:
        torch.testing.assert_close(ours[name], ref[name], atol=1e-5 * scale, rtol=1e-4, msg=name)


def test_a_list_of_columns_through_a_backbone_packing_cannot_run(tiny_model_dirs):
    model = BiEncoder.from_pretrained(tiny_model_dirs["modernbert"]).eval()
    columns = [model.tokenize(TEXTS), model.tokenize(TEXTS[:3])]
    with torch.no_grad():
        for ours, ref in zip(model(columns), [model(c) for c in columns]):
            torch.testing.assert_close(ours, ref)


def test_real_minilm_packed_equals_padded(minilm_path, stsb_sentences):
    model = BiEncoder.from_pretrained(minilm_path)
    features = model.tokenize(stsb_sentences[:64])
    with torch.no_grad():
        torch.testing.assert_close(fast_path(model, features), reference(model, features), atol=1e-5, rtol=0)


def test_bf16_autocast_close_to_fp32(tiny):
    model = tiny["bert"].eval()
    features = model.tokenize(TEXTS)
    with torch.no_grad():
        ref = reference(model, features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = model(features).float()
    assert torch.nn.functional.cosine_similarity(ours, ref).min() > 0.99


def test_dropout_still_applies(tiny_model_dirs):
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"]).train()
    features = model.tokenize(TEXTS)
    with torch.no_grad():
        a, b = model(features), model(features)
    assert not torch.allclose(a, b)  # two dropout draws differ
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(features), model(features))


def test_backbones_it_does_not_reproduce_use_their_own_forward(tiny_model_dirs):
    modern = BiEncoder.from_pretrained(tiny_model_dirs["modernbert"])
    assert not packing.supports(modern.backbone)
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"])
    assert packing.supports(model.backbone)
    query = model.backbone.encoder.layer[0].attention.self.query
    handle = query.register_forward_hook(lambda mod, args, out: out * 2)  # e.g. an adapter
    try:
        assert not packing.supports(model.backbone)
        features = model.tokenize(TEXTS)
        with torch.no_grad():
            torch.testing.assert_close(model(features), reference(model, features))  # the hook is honoured
    finally:
        handle.remove()
    inputs = [model.backbone_inputs(model.tokenize(TEXTS))]
    assert fast.hidden_states(model.backbone, inputs) is not None
    with fast.disabled():
        assert fast.hidden_states(model.backbone, inputs) is None


def test_pack_layout():
    columns = [
        {"input_ids": torch.tensor([[1, 2, 0], [3, 4, 5]]), "attention_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])},
        {"input_ids": torch.tensor([[0, 6], [7, 8]]), "attention_mask": torch.tensor([[0, 1], [1, 1]])},
    ]
    p = packing.pack(columns)
    fill = [0] * (packing.ROWS_MULTIPLE - 8)  # 8 real tokens, then filler tokens up to the row grid
    assert p.fillers == len(fill) and len(p.input_ids) == packing.ROWS_MULTIPLE
    assert p.input_ids.tolist() == [3, 4, 5, 1, 2, 7, 8, 6] + fill  # longest row first, stable among equals
    assert p.position_ids.tolist() == [0, 1, 2, 0, 1, 0, 1, 1] + fill  # BERT numbers the padded columns
    assert p.token_type_ids is None
    assert sum(index.shape[0] for _, _, index, _ in p.buckets) == 8  # fillers are in no attention bucket
    hidden = p.input_ids[:, None].float()  # (T', 1): each token's own id
    back = packing.unpack(hidden, p)
    assert back[0][..., 0].tolist() == [[1, 2, 0], [3, 4, 5]]
    assert back[1][..., 0].tolist() == [[0, 6], [7, 8]]
    assert packing.pack([{"input_ids": torch.tensor([[0]]), "attention_mask": torch.tensor([[0]])}]) is None


@pytest.mark.parametrize("kind", ["bert", "xlmr"])
def test_cross_encoder_logits_equal_padded(tiny_classifier_dirs, kind):
    from minisbert import CrossEncoder

    model = CrossEncoder.from_pretrained(tiny_classifier_dirs[kind]).eval()
    pairs = list(zip(TEXTS, TEXTS[::-1]))
    features = model.tokenize(pairs)
    assert packing.classifier_logits(model.backbone, features) is not None
    with torch.no_grad():
        ours = model(features)
        with fast.disabled():
            ref = model(features)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    no_dropout(model)
    model.zero_grad()
    model(features).sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    with fast.disabled():
        model(features).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(ours) == set(ref)
    # Against the padded forward in float64: the packed gradients are as close to it as float32's padded ones
    # are. (A fixed tolerance fits one transformers' random init and not another's: with transformers 4's,
    # the last layer's attention gradients cancel, and float32 keeps ~1 digit of them on either path.)
    exact = copy.deepcopy(model).double()
    with fast.disabled():
        exact(features).sum().backward()
    exact = {n: p.grad for n, p in exact.named_parameters() if p.grad is not None}
    scale = max(g.abs().max() for g in exact.values())  # a floor for gradients that are 0 in exact arithmetic
    for name, want in exact.items():
        ours_err, ref_err = ((g[name].double() - want).norm() for g in (ours, ref))
        assert ours_err <= 2 * ref_err + 1e-6 * scale, (name, float(ours_err), float(ref_err))


def test_cross_encoder_left_padded_batch_uses_the_padded_path(tiny_classifier_dirs):
    from minisbert import CrossEncoder

    model = CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"])
    features = model.tokenize([("a", "b"), ("a longer query", "and a longer document")])
    features["attention_mask"] = features["attention_mask"].flip(1)  # left padding
    assert packing.classifier_logits(model.backbone, features) is None


def test_bf16_autocast_gradients_close_to_padded(tiny_model_dirs):
    """Training under bf16 autocast (the feed-forward recomputes GELU in backward under the same autocast)."""
    model = no_dropout(BiEncoder.from_pretrained(tiny_model_dirs["bert"]))
    features = model.tokenize(TEXTS)
    torch.manual_seed(0)
    target = torch.randn(len(TEXTS), model.embedding_dim)

    def grads(packed):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb = model(features) if packed else reference(model, features)
        (emb.float() * target).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ours, ref = grads(True), grads(False)
    scale = max(g.abs().max() for g in ref.values())
    for name in ours:
        assert ours[name].dtype == torch.float32
        if ref[name].abs().max() < 1e-3 * scale:  # e.g. the key biases: zero in exact arithmetic, bf16 noise here
            continue
        cos = torch.nn.functional.cosine_similarity(ours[name].flatten(), ref[name].flatten(), dim=0)
        assert cos > 0.99, name


def test_dropout_noise_matches_the_padded_forward(tiny_model_dirs):
    """Same dropout places and rates: the mean squared deviation from the eval-mode embedding over many
    draws is the same for the packed and the padded forward (a missing or extra dropout would show).
    The packed forward's attention dropout is `_DropoutAttention`'s own draw, the padded one SDPA's."""
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"])
    features = model.tokenize(TEXTS)
    with torch.no_grad():
        clean = model.eval()(features)
        model.train()
        torch.manual_seed(0)
        ours = torch.stack([((model(features) - clean) ** 2).sum(-1).mean() for _ in range(200)]).mean()
        ref = torch.stack([((reference(model, features) - clean) ** 2).sum(-1).mean() for _ in range(200)]).mean()
    assert 0.9 < float(ours / ref) < 1.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_attention_equals_autograd_with_the_same_mask(dtype):
    """`_DropoutAttention` (probabilities recomputed in backward, dropout mask redrawn from its seed) gives
    the output and gradients of autograd through softmax(q k^T s + mask) * keep / (1 - p) @ v."""
    n, h, L, d, p, scale = 3, 4, 7, 8, 0.3, 0.35
    g = torch.Generator().manual_seed(0)
    q, k, v = [torch.randn(n, h, L, d, generator=g).to(dtype).requires_grad_() for _ in range(3)]
    key_mask = (torch.arange(L)[None, :] < torch.tensor([7, 5, 2])[:, None])[:, None, None, :]  # (n, 1, 1, L)
    torch.manual_seed(5)
    out = packing._DropoutAttention.apply(q, k, v, key_mask, p, scale)
    grad_out = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), grad_out.to(dtype))
    torch.manual_seed(5)
    keep = packing._dropout_keep((n, h, L, L), p, packing._dropout_seed())  # the same draw
    assert 0 < keep.float().mean() < 1
    qf, kf, vf = [x.detach().float().requires_grad_() for x in (q, k, v)]
    scores = (qf @ kf.transpose(-1, -2) * scale).masked_fill(~key_mask, float("-inf"))
    ref = torch.softmax(scores, -1) * keep / (1 - p) @ vf
    ref_grads = torch.autograd.grad(ref, (qf, kf, vf), grad_out)
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(out.float(), ref, **tol)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.float(), b, **tol)


def test_training_attention_keeps_no_probabilities(tiny_model_dirs, monkeypatch):
    """With attention dropout, the training forward saves no (n, h, L, L) tensor for backward (SDPA's math
    path, the reference, saves several)."""
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"]).train()
    features = model.tokenize(TEXTS)
    h = model.backbone.config.num_attention_heads
    p = packing.pack([features], attention_multiple=1)
    square = {(n, h, L, L) for n, L, *_ in p.buckets}

    def saved_squares():
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
            model(features)
        return [s for s in shapes if s in square]

    assert saved_squares() == []
    monkeypatch.setattr(packing._DropoutAttention, "apply", lambda q, k, v, m, p, s: F.scaled_dot_product_attention(
        q, k, v, attn_mask=m, dropout_p=p, scale=s))
    assert saved_squares() != []


def test_inference_with_rows_on_the_row_grid_equals_padded(tiny):
    """A full bucket (every row exactly L = ATTENTION_MULTIPLE tokens) is its own padded layout, with no
    copy, on the row grid or off it; rows shorter than L get masked key slots. Each equals the padded
    forward."""
    model = tiny["bert"].eval()
    words = next(w for n in range(1, 40) if len(model.tokenize([w := " ".join(["guitar"] * n)])["input_ids"][0])
                 == packing.ATTENTION_MULTIPLE)
    for texts in ([words] * packing.ROWS_MULTIPLE, [words] * 3, ["a man plays a guitar"] * 3):
        features = model.tokenize(texts)
        assert features["attention_mask"].all()  # one bucket
        with torch.inference_mode():
            torch.testing.assert_close(model(features), reference(model, features), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("multiple", [packing.ATTENTION_MULTIPLE, 1])
def test_attention_buckets_are_padded_to_the_attention_multiple(multiple):
    lengths = [40, 33, 17, 16, 15, 9, 3, 1]
    buckets = packing._buckets(lengths, "cpu", multiple)
    assert sum(n for n, *_ in buckets) == len(lengths)
    row = 0
    for n, L, index, mask in buckets:
        assert L == -(-lengths[row] // multiple) * multiple  # the bucket's longest row, rounded up
        assert mask.shape == (n, L) and mask.sum(1).tolist() == lengths[row:row + n]  # the extra keys are masked
        assert index.tolist() == mask.reshape(-1).nonzero().squeeze(1).tolist()
        row += n


def test_training_with_attention_dropout_keeps_buckets_unpadded(tiny_model_dirs, monkeypatch):
    """SDPA's math path (attention dropout) gains nothing from padded keys, only pays for them. Buckets
    are capped at INFERENCE_TILE slots only without autograd."""
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"])
    seen = []
    real_pack = packing.pack
    monkeypatch.setattr(packing, "pack", lambda cols, attention_multiple, bucket_slots:
                        seen.append((attention_multiple, bucket_slots)) or real_pack(cols, attention_multiple, bucket_slots))
    features = model.tokenize(TEXTS)
    assert model.backbone.encoder.layer[0].attention.self.dropout.p > 0
    model.train()(features)
    model.eval()(features)
    with torch.inference_mode():
        model(features)
    assert seen == [(1, None), (packing.ATTENTION_MULTIPLE, None), (packing.ATTENTION_MULTIPLE, packing.INFERENCE_TILE)]


def test_buckets_hold_at_most_max_slots():
    """With `max_slots`, a bucket of more than one row never has more than max_slots (row x key) slots;
    the buckets still cover every row in order."""
    lengths = sorted(torch.randint(1, 90, (200,), generator=torch.Generator().manual_seed(0)).tolist(), reverse=True)
    for max_slots in (16, 64, 1024):
        buckets = packing._buckets(lengths, "cpu", 16, max_slots)
        row = 0
        for n, L, index, mask in buckets:
            assert n == 1 or n * L <= max_slots
            assert mask.sum(1).tolist() == lengths[row:row + n]
            row += n
        assert row == len(lengths)
    assert len(packing._buckets(lengths, "cpu", 16, 64)) > len(packing._buckets(lengths, "cpu", 16))


@pytest.mark.parametrize("dtype", [pytest.param(d, marks=needs_onednn(d)) for d in (torch.float32, torch.bfloat16)])
def test_inference_tiles_bound_matmul_shapes_and_equal_one_pass(tiny, monkeypatch, dtype):
    """Inference runs its matmuls on at most INFERENCE_TILE rows (or one row's tokens, when longer), on the
    row grid, so batches of any size meet at most INFERENCE_TILE / ROWS_MULTIPLE row counts; results
    equal one pass over the whole batch (float32: to rounding; bf16: to bf16 noise)."""
    model = tiny["bert"].eval()
    rows_seen = set()
    real_linear = linears.linear
    monkeypatch.setattr(linears, "linear", lambda x, *a, **k: rows_seen.add(x.shape[0]) or real_linear(x, *a, **k))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=0)
    tile = 2 * packing.ROWS_MULTIPLE
    longest = 0
    for n in (3, 8, 20, 37):
        texts = (TEXTS * 5)[:n]
        features = model.tokenize(texts)
        longest = max(longest, int(features["attention_mask"].sum(1).max()))
        with torch.inference_mode(), autocast:
            monkeypatch.setattr(packing, "INFERENCE_TILE", 10**9)
            whole = model(features)
            monkeypatch.setattr(packing, "INFERENCE_TILE", tile)
            rows_seen.clear()
            tiled = model(features)
            assert max(rows_seen) <= max(tile, packing._round_up(longest))
            assert all(r % packing.ROWS_MULTIPLE == 0 for r in rows_seen)
        torch.testing.assert_close(tiled.float(), whole.float(), **tol)
        with torch.inference_mode():
            torch.testing.assert_close(model(features), reference(model, features), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reused_inference_weights_equal_per_batch_copies(tiny, dtype):
    """encode() makes each linear's inference weights (fused QKV, bf16 casts, oneDNN layout) once per call
    (`linears.reusing_weights`); batches see the same results as with copies made per batch, and a later
    call sees weights changed in between."""
    model = tiny["bert"].eval()
    features = model.tokenize(TEXTS)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    with torch.inference_mode(), autocast:
        fresh = model(features)
        with linears.reusing_weights():
            reused = [model(features) for _ in range(2)]
            att = model.backbone.encoder.layer[0].attention.self
            assert linears.prepared(dtype, att.query, att.key, att.value)[0] is \
                linears.prepared(dtype, att.query, att.key, att.value)[0]  # made once in the block
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=0)
    for r in reused:
        torch.testing.assert_close(r.float(), fresh.float(), **tol)
    before = model.encode(TEXTS, convert_to_tensor=True)
    with torch.no_grad():
        model.backbone.encoder.layer[0].output.dense.weight.mul_(1.5)
    try:
        after = model.encode(TEXTS, convert_to_tensor=True)
        assert not torch.allclose(before, after)  # no copy survives the call
        torch.testing.assert_close(after, reference(model, model.tokenize(TEXTS)), atol=1e-5, rtol=1e-5)
    finally:
        with torch.no_grad():
            model.backbone.encoder.layer[0].output.dense.weight.div_(1.5)


@pytest.mark.parametrize("bias", [True, False])
def test_float32_training_linear_equals_autograd(bias):
    """`linears.Linear` (oneDNN in both directions) gives F.linear's output and gradients, for a non-contiguous
    input too; its matmuls `linears.mm` equal torch.mm for every layout backward hands them."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 37, generator=g).t().requires_grad_()  # (37, 24), a transposed view
    w = torch.randn(16, 24, generator=g).requires_grad_()
    b = torch.randn(16, generator=g).requires_grad_() if bias else None
    dy = torch.randn(37, 16, generator=g)
    out = linears.Linear.apply(x, w, b)
    grads = torch.autograd.grad(out, [t for t in (x, w, b) if t is not None], dy)
    ref = F.linear(x, w, b)
    ref_grads = torch.autograd.grad(ref, [t for t in (x, w, b) if t is not None], dy)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)
    for a, m in [(dy, w), (dy.t(), x.detach()), (x.detach(), w.detach().t())]:
        torch.testing.assert_close(linears.mm(a, m), a.mm(m), atol=1e-5, rtol=1e-5)


@needs_onednn(torch.float32)
@pytest.mark.parametrize("vendor", ["AuthenticAMD", "GenuineIntel"])
def test_training_matmuls_take_onednn_in_float32_only(tiny_model_dirs, monkeypatch, vendor):
    """A float32 training step runs its linears through oneDNN (`linears.mm`), except on Intel CPUs where MKL's
    F.linear is the faster one (kernels.mkl_float32); under bf16 autocast they stay on autocast's F.linear
    (bf16 matmuls), as before."""
    from minisbert.fast import kernels

    monkeypatch.setattr(kernels, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(kernels, "_PROBED", {})
    kernels.onednn_linear(torch.float32), kernels.mkl_float32()  # the probes' own calls are not counted below
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(a[0].dtype) or real(*a))
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"]).train()
    features = model.tokenize(TEXTS)
    model(features).sum().backward()
    if vendor == "GenuineIntel" and kernels.mkl_float32():
        assert calls == []
    else:
        assert calls and set(calls) == {torch.float32}
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(features)
    out.float().sum().backward()
    assert calls == []


def _step_grads(model, columns, step):
    """Parameter gradients of one training step, from torch seed 0 (so dropout draws the same masks)."""
    model.zero_grad()
    torch.manual_seed(0)
    step(model, columns)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _mnrl_step(model, columns):
    from minisbert import losses

    losses.mnrl(*model(columns)).backward()


def _cached_step(model, columns):
    from minisbert import gradcache, losses

    gradcache.cached_step(model, columns, lambda embeddings, labels: losses.mnrl(*embeddings), 3)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("step", [_mnrl_step, _cached_step])
def test_gradient_checkpointing_on_packed_tokens_same_gradients(tiny_model_dirs, monkeypatch, native, step):
    """With checkpointing on, the packed path still runs (no fall back to the padded forward) and recomputes
    every layer in backward; the gradients equal the step without it, dropout on (the recompute replays the
    RNG state), for bert.py's BERT and transformers' BertModel (its per-layer flags), plain and cached step."""
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"], native=native).train()
    columns = [model.tokenize(TEXTS[:6]), model.tokenize(TEXTS[2:8])]
    layers = len(model.backbone.encoder.layer)
    calls = []
    real = packing._layer
    monkeypatch.setattr(packing, "_layer", lambda *a: calls.append(torch.is_grad_enabled()) or real(*a))
    plain = _step_grads(model, columns, step)
    without = list(calls)  # grad enabled or not at each layer call: the cached step's first pass runs without
    calls.clear()
    model.gradient_checkpointing_enable()
    assert packing.supports(model.backbone)
    recomputed = _step_grads(model, columns, step)
    # every layer call with grad happens twice (forward, recompute in backward); the no-grad ones once
    assert calls.count(False) == without.count(False) and calls.count(True) == 2 * without.count(True) > 0
    assert plain.keys() == recomputed.keys()
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], atol=1e-7, rtol=1e-6, msg=name)
    model.gradient_checkpointing_disable()
    calls.clear()
    _step_grads(model, columns, step)
    assert calls == without


def test_minisbert_fast_0_runs_everything_on_the_reference_path(tiny_model_dirs):
    """MINISBERT_FAST=0: a fresh process never enters the fast path, and its embeddings equal the reference."""
    import subprocess
    import sys

    code = ("import sys, torch; from minisbert import BiEncoder, fast; from minisbert.fast import packing\n"
            "packing.encode_packed = None  # any use of the fast path would fail\n"
            f"m = BiEncoder.from_pretrained({str(tiny_model_dirs['bert'])!r})\n"
            "assert not fast.ENABLED\n"
            "with torch.no_grad(): print(m(m.tokenize(['a b c', 'd'])).sum().item())\n")
    env = dict(__import__("os").environ, MINISBERT_FAST="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"])
    features = model.tokenize(["a b c", "d"])
    with torch.no_grad():
        assert abs(float(out.stdout) - reference(model, features).sum().item()) < 1e-4
