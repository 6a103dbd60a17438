"""minisbert.bert pinned to transformers: the same hidden states, pooler output and gradients as
transformers' BertModel / XLMRobertaModel on the same folder, files that transformers loads back
unchanged, and a fallback to transformers for every folder it does not reproduce.
"""

from __future__ import annotations

import contextlib
import json
import shutil

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file, save_file

from capabilities import needs_fast
from minisbert import BiEncoder, bert, fast
from minisbert.fast import packing

TEXTS = [
    "A man is playing a guitar.", "Two dogs run across the field while the children watch them from far away.",
    "Hi", "Der Hund läuft über die Wiese.", "numbers 0 1 2 3 4 5 6 7 8 9 and symbols , . ! ? ; :",
]


def reference(folder):
    return tf.AutoModel.from_pretrained(folder).eval()


def batch(folder, pairs=False, side="right"):
    tok = tf.AutoTokenizer.from_pretrained(folder)
    tok.padding_side = side
    if pairs:
        return dict(tok(TEXTS, TEXTS[::-1], padding=True, return_tensors="pt"))
    return dict(tok(TEXTS, padding=True, return_tensors="pt"))


def assert_same_states(ours, theirs, inputs):
    real = inputs["attention_mask"].bool()  # pads are never read (pooling masks them)
    a, b = ours(**inputs), theirs(**inputs)
    torch.testing.assert_close(a.last_hidden_state[real], b.last_hidden_state[real], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=2e-5, rtol=1e-4)


def variant(src, dst, **config_changes):
    """A copy of folder `src` with config.json values changed."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(config_changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("kind", ["bert", "xlmr"])
@pytest.mark.parametrize("pairs,side", [(False, "right"), (True, "right"), (False, "left")])
def test_hidden_states_equal_transformers(tiny_model_dirs, kind, pairs, side):
    folder = tiny_model_dirs[kind]
    ours = bert.load(folder)
    assert isinstance(ours, bert.BertEncoder)
    inputs = batch(folder, pairs, side)
    with torch.no_grad():
        assert_same_states(ours, reference(folder), inputs)


def test_minilm_equals_transformers(minilm_path):
    ours = bert.load(minilm_path)
    inputs = batch(minilm_path, pairs=True)
    with torch.no_grad():
        assert_same_states(ours, reference(minilm_path), inputs)


@pytest.mark.parametrize("kind", ["bert", "xlmr"])
def test_gradients_equal_transformers(tiny_model_dirs, kind):
    folder = tiny_model_dirs[kind]
    ours, theirs = bert.load(folder), reference(folder)
    inputs = batch(folder)
    real = inputs["attention_mask"].bool()
    for model in (ours, theirs):
        (model(**inputs).last_hidden_state[real].square().sum() + model(**inputs).pooler_output.sum()).backward()
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.requires_grad
        torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize("act", ["gelu_new", "relu", "silu"])
def test_other_activations(tiny_model_dirs, tmp_path, act):
    folder = variant(tiny_model_dirs["bert"], tmp_path / act, hidden_act=act)
    with torch.no_grad():
        assert_same_states(bert.load(folder), reference(folder), batch(folder))


def test_saved_files_load_in_transformers(tiny_model_dirs, tmp_path):
    ours = bert.load(tiny_model_dirs["xlmr"])
    ours.save_pretrained(tmp_path / "saved")
    theirs, info = tf.AutoModel.from_pretrained(tmp_path / "saved", output_loading_info=True)
    assert type(theirs).__name__ == "XLMRobertaModel"
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    state = theirs.state_dict()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert set(load_file(tmp_path / "saved" / "model.safetensors")) == set(ours.state_dict())
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    original = json.loads((tiny_model_dirs["xlmr"] / "config.json").read_text())
    assert saved["architectures"] == ["XLMRobertaModel"] and saved["dtype"] == "float32"
    assert {k: saved[k] for k in bert.REQUIRED} == {k: original[k] for k in bert.REQUIRED}


def test_head_checkpoints_and_legacy_names(tiny_model_dirs, tmp_path):
    """A BertForMaskedLM-style folder (keys under "bert.", a head to ignore, TF-era LayerNorm gamma/beta
    names, no pooler): loaded as transformers' AutoModel loads it."""
    src = tiny_model_dirs["bert"]
    folder = tmp_path / "mlm"
    shutil.copytree(src, folder)
    state = load_file(src / "model.safetensors")
    renamed = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in state.items() if not k.startswith("pooler.")}
    renamed["cls.predictions.bias"] = torch.zeros(3)
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    ours, theirs = bert.load(folder), reference(folder)
    for name, tensor in state.items():
        if not name.startswith("pooler."):
            assert torch.equal(ours.state_dict()[name], theirs.state_dict()[name]), name
    assert ours.pooler.dense.weight.shape == theirs.pooler.dense.weight.shape
    assert float(ours.pooler.dense.weight.detach().std()) == pytest.approx(0.02, rel=0.3)  # initialized as transformers does
    inputs = batch(folder)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).last_hidden_state[real], theirs(**inputs).last_hidden_state[real],
                                   atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype_follows_the_installed_transformers(tiny_model_dirs, tmp_path, dtype):
    folder = variant(tiny_model_dirs["bert"], tmp_path / dtype, dtype=dtype)
    expected = getattr(torch, dtype) if int(tf.__version__.split(".")[0]) >= 5 else torch.float32  # "auto" from 5.0
    assert next(bert.load(folder).parameters()).dtype == next(reference(folder).parameters()).dtype == expected


@pytest.mark.parametrize("version, expected", [("4.57.6", torch.float32), ("5.0.0", torch.float16)])
def test_dtype_on_load_follows_transformers_4_and_5(tiny_model_dirs, tmp_path, monkeypatch, version, expected):
    """The branch the installed transformers does not take: its version read as the other generation's."""
    import importlib.metadata

    folder = variant(tiny_model_dirs["bert"], tmp_path / "half", dtype="float16")
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version if name == "transformers" else real(name))
    assert next(bert.load(folder).parameters()).dtype == expected


def test_unreproduced_folders_go_to_transformers(tiny_model_dirs, tmp_path):
    src = tiny_model_dirs["bert"]
    assert bert.load(tiny_model_dirs["modernbert"]) is None
    for name, change in {"act": {"hidden_act": "gelu_fast"}, "decoder": {"is_decoder": True},
                         "relative": {"position_embedding_type": "relative_key"}, "act_list": {"hidden_act": ["gelu"]},
                         "pad_out_of_vocab": {"pad_token_id": 10**6}}.items():
        assert bert.load(variant(src, tmp_path / name, **change)) is None, name
    no_pad = variant(tiny_model_dirs["xlmr"], tmp_path / "no_pad", pad_token_id=None)  # RoBERTa positions need it
    assert bert.load(no_pad) is None
    no_vocab = variant(src, tmp_path / "no_vocab")
    config = json.loads((no_vocab / "config.json").read_text())
    del config["vocab_size"]
    (no_vocab / "config.json").write_text(json.dumps(config))
    assert bert.load(no_vocab) is None
    shape = variant(src, tmp_path / "shape", max_position_embeddings=64)  # the weights hold 128 positions
    assert bert.load(shape) is None
    missing = variant(src, tmp_path / "missing")
    state = load_file(src / "model.safetensors")
    save_file({k: v for k, v in state.items() if "layer.1." not in k}, missing / "model.safetensors", metadata={"format": "pt"})
    assert bert.load(missing) is None
    pickle_only = variant(src, tmp_path / "bin")
    (pickle_only / "model.safetensors").unlink()
    torch.save(state, pickle_only / "pytorch_model.bin")
    assert bert.load(pickle_only) is None
    # the bi-encoder then loads the folder with transformers
    model = BiEncoder.from_pretrained(variant(src, tmp_path / "act2", hidden_act="gelu_fast"))
    assert type(model.backbone).__name__ == "BertModel"


def test_config_defaults_are_transformers_defaults():
    for cls in (tf.BertConfig, tf.RobertaConfig, tf.XLMRobertaConfig, tf.CamembertConfig):
        theirs = cls()
        ours = bert.EncoderConfig({"model_type": theirs.model_type})
        for key in bert.DEFAULTS:
            assert getattr(ours, key) == getattr(theirs, key, None), (cls.__name__, key)
        assert ours.pad_token_id == theirs.pad_token_id


@pytest.mark.parametrize("kind", ["bert", "xlmr"])
def test_bi_encoder_native_equals_transformers_backbone(tiny_model_dirs, minilm_path, kind):
    folder = minilm_path if kind == "bert" else tiny_model_dirs[kind]
    native, hf = BiEncoder.from_pretrained(folder), BiEncoder.from_pretrained(folder, native=False)
    assert isinstance(native.backbone, bert.BertEncoder) and not isinstance(hf.backbone, bert.BertEncoder)
    features = native.tokenize(TEXTS)
    with torch.no_grad(), fast.disabled():
        reference_embeddings = hf(features)  # transformers' own padded forward
    with torch.no_grad():
        torch.testing.assert_close(native(features), reference_embeddings, atol=1e-5, rtol=1e-4)  # packed, on ours
        torch.testing.assert_close(native.encode(TEXTS, convert_to_tensor=True), hf.encode(TEXTS, convert_to_tensor=True),
                                   atol=1e-5, rtol=1e-4)


@needs_fast
def test_packed_transformers_backbone_without_a_scaling_attribute(minilm_path):
    """transformers 4's BERT attention has no `.scaling` (5.x's does): the packed path scales by 1/sqrt(d) then,
    in inference and in training with dropout, and still equals transformers' own padded forward."""
    hf = BiEncoder.from_pretrained(minilm_path, native=False)
    features = hf.tokenize(TEXTS)
    with torch.no_grad(), fast.disabled():
        reference_embeddings = hf(features)  # transformers' own padded forward, whichever version
    for module in hf.backbone.modules():
        if "scaling" in vars(module):
            del module.scaling  # as transformers 4 builds the attention
    assert not any(hasattr(layer.attention.self, "scaling") for layer in hf.backbone.encoder.layer)
    with torch.no_grad():
        torch.testing.assert_close(hf(features), reference_embeddings, atol=1e-5, rtol=1e-4)  # packed
    hf.train()
    hf(features).sum().backward()  # the dropout branch reads the scale too
    assert all(p.grad is None or p.grad.isfinite().all() for p in hf.parameters())


def test_bi_encoder_save_is_loaded_by_transformers_model(tiny_model_dirs, tmp_path):
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"])
    model.save_pretrained(tmp_path / "st")
    theirs, info = tf.AutoModel.from_pretrained(tmp_path / "st", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    reloaded = BiEncoder.from_pretrained(tmp_path / "st")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode(TEXTS, convert_to_tensor=True), model.encode(TEXTS, convert_to_tensor=True))


def test_gradient_checkpointing_same_gradients(tiny_model_dirs):
    ours = bert.load(tiny_model_dirs["bert"])
    for m in ours.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ours.train()
    inputs = batch(tiny_model_dirs["bert"])
    out = ours(**inputs)
    (out.last_hidden_state.sum() + out.pooler_output.sum()).backward()
    plain = {n: p.grad.clone() for n, p in ours.named_parameters()}
    ours.zero_grad()
    ours.gradient_checkpointing_enable()
    assert packing.supports(ours)  # the packed path recomputes its layers too (tests/test_packing.py)
    out = ours(**inputs)
    (out.last_hidden_state.sum() + out.pooler_output.sum()).backward()
    for n, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], msg=n)


def test_sharded_checkpoint(tiny_model_dirs, tmp_path):
    theirs = reference(tiny_model_dirs["bert"])
    theirs.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    shutil.copy(tiny_model_dirs["bert"] / "tokenizer.json", tmp_path / "sharded")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    ours = bert.load(tmp_path / "sharded")
    state = theirs.state_dict()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def _table_sized_allocations(fn, table_bytes: int) -> int:
    """How many allocations of at least `table_bytes` fn() makes (the profiler's CPU memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(e.self_cpu_memory_usage >= table_bytes for e in prof.events())  # self: not counted again in callers


def test_lookup_adds_into_the_existing_gradient_without_a_table_sized_temporary():
    torch.manual_seed(0)
    ours, plain = (torch.nn.Embedding(5000, 64, padding_idx=0) for _ in range(2))
    plain.load_state_dict(ours.state_dict())
    ids = [torch.randint(0, 5000, (4, 10)) for _ in range(3)]
    ids[1][0, :3] = 0  # padding rows get no gradient either way
    table_bytes = 5000 * 64 * 4
    for k, x in enumerate(ids):
        plain(x).mul(k + 1).sum().backward()
        n = _table_sized_allocations(lambda x=x, k=k: bert.lookup(ours, x).mul(k + 1).sum().backward(), table_bytes)
        assert n == (1 if k == 0 else 0)  # the first backward's dense gradient becomes .grad; later ones add in place
        assert ours.weight.grad.layout == torch.strided
        torch.testing.assert_close(ours.weight.grad, plain.weight.grad, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(bert.lookup(ours, ids[0]), plain(ids[0]))


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_cached_step_builds_the_vocabulary_gradient_once(tiny_model_dirs, path):
    """The cached step's chunks after the first add a sparse vocabulary gradient into .grad in place
    (bert.lookup): one table-sized allocation per step, not one per chunk, and the uncached gradients."""
    from minisbert import distributed, training

    texts = [TEXTS * 2, TEXTS[::-1] * 2]
    grads = {}
    for mini in (None, 2):
        model = BiEncoder.from_pretrained(tiny_model_dirs["bert"], device="cpu")
        model.eval()  # dropout off: cached and uncached see the same network
        loss = "cached_mnrl" if mini else "mnrl"
        task = training.build_task(model, "t", texts, training.column_loss(loss), loss=loss, mini_batch_size=mini)
        table = model.backbone.get_input_embeddings().weight
        step = lambda: training.train_step(model, task, list(range(10)), world=distributed.World())  # noqa: E731
        with contextlib.nullcontext() if path == "fast" else fast.disabled():
            n = _table_sized_allocations(step, table.numel() * table.element_size())
        if mini:  # (the uncached step on the reference path embeds each column with its own lookup: 2)
            assert n == 1
        grads[mini] = {k: p.grad for k, p in model.named_parameters()}
    for k, g in grads[None].items():
        torch.testing.assert_close(grads[2][k], g, rtol=1e-5, atol=1e-6, msg=k)
