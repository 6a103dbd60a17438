"""minisbert.modernbert pinned to transformers: the same hidden states, logits and gradients as
transformers' ModernBertModel / ModernBertForSequenceClassification (SDPA) on the same folder, in float32
and bfloat16, padded (right and left) and unpadded batches, on a ModernBERT-like and an mmBERT-like tiny
config; files that transformers loads back unchanged; a fallback to transformers for every folder it does
not reproduce; and the bi-encoder / cross-encoder built on it equal to the ones built on transformers.
Hidden states, gradients and logits are checked on both paths: the reference forward (padded, as
transformers runs it) and the fast path (minisbert/fast/modernbert.py: unpadded), `PATHS`.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers as tf

from capabilities import needs_fast
from minisbert import BiEncoder, CrossEncoder, fast, modernbert
from minisbert.backbone import load_backbone

PATHS = ["reference", pytest.param("fast", marks=needs_fast)]


def hidden(model, inputs, path):
    """last_hidden_state (B, L, H) of a ModernBertEncoder on `path`."""
    if path == "reference":
        return model(**inputs).last_hidden_state
    out = fast.hidden_states(model, [inputs])
    assert out is not None, "the fast path fell back to the reference"
    return out[0]


def logits(model, inputs, path):
    """logits (B, C) of a ModernBertClassifier on `path`."""
    if path == "reference":
        return model(**inputs).logits
    out = fast.classifier_logits(model, inputs)
    assert out is not None, "the fast path fell back to the reference"
    return out

# Tiny configs with the real models' shape of attention: ModernBERT-base (global every 3rd layer, rope
# theta 160k global / 10k local, window 128) and mmBERT-base (a 256k vocabulary, global theta = local
# theta = 160k), with windows far below the row lengths so that the sliding layers mask.
SMALL = dict(hidden_size=32, num_attention_heads=2, intermediate_size=48, max_position_embeddings=256,
             attn_implementation="sdpa")
CONFIGS = {
    "modernbert": dict(vocab_size=400, num_hidden_layers=4, global_attn_every_n_layers=3, local_attention=16,
                       pad_token_id=1, bos_token_id=0, eos_token_id=2, cls_token_id=0, sep_token_id=2,
                       global_rope_theta=160000.0, local_rope_theta=10000.0),
    "mmbert": dict(vocab_size=256000, num_hidden_layers=5, global_attn_every_n_layers=3, local_attention=10,
                   pad_token_id=0, bos_token_id=2, eos_token_id=1, cls_token_id=2, sep_token_id=1,
                   global_rope_theta=160000.0, local_rope_theta=160000.0, norm_bias=False),
}


def build(folder, kind="modernbert", classifier=False, seed=0, **changes):
    torch.manual_seed(seed)
    config = tf.ModernBertConfig(**(SMALL | CONFIGS[kind] | changes))
    if classifier:
        config.num_labels = changes.get("num_labels", 1)
    cls = tf.ModernBertForSequenceClassification if classifier else tf.ModernBertModel
    model = cls(config).eval()
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("modernbert")
    return {kind: build(root / kind, kind) for kind in CONFIGS} | {
        "classifier": build(root / "classifier", classifier=True),
        "classifier_mean": build(root / "classifier_mean", classifier=True, classifier_pooling="mean"),
    }


def reference(folder, classifier=False):
    cls = tf.ModernBertForSequenceClassification if classifier else tf.ModernBertModel
    return cls.from_pretrained(folder, attn_implementation="sdpa").eval()


def batch(config, side="right", lengths=(70, 5, 33, 1, 17, 70, 2), seed=0):
    """Random ids with rows of `lengths` real tokens (longer than the windows), padded on `side`."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.randint(3, config.vocab_size, (len(lengths), L), generator=g)
    pos = torch.arange(L)[None, :]
    lens = torch.tensor(lengths)[:, None]
    mask = pos < lens if side == "right" else pos >= L - lens
    ids[~mask] = config.pad_token_id
    return {"input_ids": ids, "attention_mask": mask.long()}


def variant(src, dst, **config_changes):
    """A copy of folder `src` with config.json values changed (None removes a key)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(config_changes)
    config = {k: v for k, v in config.items() if v is not None}
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("side,lengths", [("right", (70, 5, 33, 1, 17, 70, 2)), ("left", (70, 5, 33, 1, 17, 70, 2)),
                                          ("right", (40, 40, 40))])
def test_hidden_states_equal_transformers(folders, kind, side, lengths, path):
    ours, theirs = modernbert.load(folders[kind]), reference(folders[kind])
    assert isinstance(ours, modernbert.ModernBertEncoder)
    inputs = batch(theirs.config, side, lengths)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        a, b = hidden(ours, inputs, path), theirs(**inputs).last_hidden_state
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)
    assert not a[~real].any()  # zeros at pads


def test_the_sliding_window_is_applied(folders, tmp_path):
    """The same weights with a window wider than every row give other states (so the test above tests the
    window), and ours follow transformers there too."""
    wide = variant(folders["modernbert"], tmp_path / "wide", local_attention=512)
    inputs = batch(reference(wide).config)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        narrow_states = modernbert.load(folders["modernbert"])(**inputs).last_hidden_state[real]
        ours = modernbert.load(wide)(**inputs).last_hidden_state[real]
        theirs = reference(wide)(**inputs).last_hidden_state[real]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert (narrow_states - ours).abs().max() > 1e-3  # 100x the tolerance (random weights: near-uniform attention)


def test_hub_style_config_keys(folders, tmp_path):
    """config.json as the hub's ModernBERT-base has it (global_attn_every_n_layers and *_rope_theta, no
    layer_types / rope_parameters): the same layers and rope tables as transformers reads."""
    old = variant(folders["modernbert"], tmp_path / "old", layer_types=None, rope_parameters=None,
                  global_attn_every_n_layers=2, global_rope_theta=50000.0, local_rope_theta=5000.0)
    ours, theirs = modernbert.load(old), reference(old)
    assert [layer.attn.layer_type for layer in ours.layers] == theirs.config.layer_types == [
        "full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    inputs = batch(theirs.config)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).last_hidden_state[real], theirs(**inputs).last_hidden_state[real],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_gradients_equal_transformers(folders, kind, path):
    ours, theirs = modernbert.load(folders[kind]).train(), reference(folders[kind]).train()
    inputs = batch(theirs.config)
    real = inputs["attention_mask"].bool()
    weight = torch.randn(real.shape + (32,), generator=torch.Generator().manual_seed(1))  # a loss that reads every state
    (hidden(ours, inputs, path)[real] * weight[real]).sum().backward()
    (theirs(**inputs).last_hidden_state[real] * weight[real]).sum().backward()
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        if name == "embeddings.tok_embeddings.weight":  # compare the rows the batch touched (the rest are zero in both)
            rows = inputs["input_ids"].unique()
            torch.testing.assert_close(p.grad[rows], grads[name].grad[rows], atol=1e-5, rtol=1e-4)
        else:
            torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("path", PATHS)
def test_bfloat16_close_to_transformers(folders, path):
    """bf16 weights on both sides: the same computation in another rounding order, so within bf16's
    resolution (~0.4% of the value at 8 bits of mantissa), summed over 4 layers."""
    ours = modernbert.load(folders["modernbert"]).to(torch.bfloat16)
    theirs = reference(folders["modernbert"]).to(torch.bfloat16)
    inputs = batch(theirs.config)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        a, b = hidden(ours, inputs, path)[real], theirs(**inputs).last_hidden_state[real]
        exact = modernbert.load(folders["modernbert"])(**inputs).last_hidden_state[real]
    assert a.dtype == b.dtype == torch.bfloat16
    assert (a.float() - b.float()).abs().max() < 0.1
    # ours is no further from the float32 result than transformers' bf16 run is
    assert (a.float() - exact).abs().mean() <= 1.5 * (b.float() - exact).abs().mean()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("which", ["classifier", "classifier_mean"])
def test_classifier_logits_and_gradients_equal_transformers(folders, which, path):
    ours = modernbert.load(folders[which], "AutoModelForSequenceClassification").train()
    theirs = reference(folders[which], classifier=True).train()
    assert isinstance(ours, modernbert.ModernBertClassifier)
    assert ours.config.classifier_pooling == ("mean" if which.endswith("mean") else "cls")
    inputs = batch(theirs.config)
    a, b = logits(ours, inputs, path), theirs(**inputs).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    a.sum().backward()
    b.sum().backward()
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        if p.grad is not None and name != "model.embeddings.tok_embeddings.weight":
            torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-5, rtol=1e-4, msg=name)


def test_base_folder_as_classifier_gets_a_new_head_that_transformers_reads(folders, tmp_path):
    ours = modernbert.load(folders["modernbert"], "AutoModelForSequenceClassification", {"num_labels": 3})
    assert ours.classifier.weight.shape == (3, 32) and not ours.classifier.bias.any()
    assert torch.equal(ours.head.norm.weight, torch.ones(32))
    std = ours.classifier.weight.std()
    assert 0.3 * 32 ** -0.5 < std < 1.5 * 32 ** -0.5  # transformers' init: truncated normal, std H^-0.5
    ours.save_pretrained(tmp_path / "ce")
    theirs = reference(tmp_path / "ce", classifier=True)
    assert theirs.config.architectures == ["ModernBertForSequenceClassification"] and theirs.config.num_labels == 3
    inputs = batch(theirs.config)
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits, theirs(**inputs).logits, atol=1e-5, rtol=1e-5)


def test_saved_files_load_in_transformers(folders, tmp_path):
    ours = modernbert.load(folders["mmbert"])
    ours.save_pretrained(tmp_path / "saved")
    theirs = reference(tmp_path / "saved")
    assert theirs.config.architectures == ["ModernBertModel"]
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "saved" / "model.safetensors")) == set(load_file(folders["mmbert"] / "model.safetensors"))
    inputs = batch(theirs.config)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).last_hidden_state[real], theirs(**inputs).last_hidden_state[real],
                                   atol=1e-5, rtol=1e-5)


def test_unreproduced_folders_go_to_transformers(folders, tmp_path):
    assert modernbert.load(variant(folders["modernbert"], tmp_path / "act", hidden_activation="quick_gelu")) is None
    scaled = variant(folders["modernbert"], tmp_path / "rope", rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 160000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
    assert modernbert.load(scaled) is None
    assert type(load_backbone(scaled, "AutoModel", allow_pickle=False, native=True)).__name__ == "ModernBertModel"  # transformers'
    ce = load_backbone(scaled, "AutoModelForSequenceClassification", allow_pickle=False, native=True)
    assert type(ce).__name__ == "ModernBertForSequenceClassification"
    pickled = tmp_path / "pickled"
    shutil.copytree(folders["modernbert"], pickled)
    (pickled / "model.safetensors").unlink()
    assert modernbert.load(pickled) is None
    assert modernbert.load(folders["modernbert"], "AutoModelForMaskedLM") is None


@pytest.mark.parametrize("cached", [False, True])
def test_gradient_checkpointing_same_gradients(tiny_model_dirs, tmp_path, cached):
    """Checkpointing recomputes each layer on the packed tokens in backward; with every dropout on (the
    recompute replays the RNG state) the gradients of a plain and of a cached MNRL step equal the step
    without it."""
    from minisbert import gradcache, losses

    folder = variant(tiny_model_dirs["modernbert"], tmp_path / "dropout", embedding_dropout=0.1, attention_dropout=0.1,
                     mlp_dropout=0.1)
    model = BiEncoder.from_pretrained(folder).train()
    texts = ["A man is playing a guitar.", "Two dogs run across the field while the children watch them from far "
             "away, and the sun sets slowly behind the hills.", "Hi", "The cat sleeps.", "A chef prepares a meal."]
    columns = [model.tokenize(texts), model.tokenize(texts[::-1])]
    grads, calls = [], []
    for recompute in (False, True):
        if recompute:
            model.gradient_checkpointing_enable()
        model.zero_grad()
        torch.manual_seed(0)
        # on a norm, which both paths call as a module (the fast path runs the layer's parts, not Layer.forward)
        hook = model.backbone.layers[1].mlp_norm.register_forward_pre_hook(lambda *_: calls.append(recompute))
        if cached:
            gradcache.cached_step(model, columns, lambda e, labels: losses.mnrl(*e), 2)
        else:
            losses.mnrl(*model(columns)).backward()
        hook.remove()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert calls.count(True) > calls.count(False)  # layers ran again in backward
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-7, rtol=1e-6, msg=name)


def test_bi_and_cross_encoder_equal_the_transformers_backbone(tiny_model_dirs, tiny_classifier_dirs):
    texts = ["A man is playing a guitar.", "Two dogs run across the field while the children watch them from far "
             "away, and the sun sets slowly behind the hills of the valley.", "Hi"]
    ours = BiEncoder.from_pretrained(tiny_model_dirs["modernbert"])
    theirs = BiEncoder.from_pretrained(tiny_model_dirs["modernbert"], native=False)
    assert isinstance(ours.backbone, modernbert.ModernBertEncoder) and type(theirs.backbone).__name__ == "ModernBertModel"
    assert abs(ours.encode(texts) - theirs.encode(texts)).max() < 1e-5
    pairs = [(texts[0], texts[1]), (texts[2], texts[0])]
    ce = CrossEncoder.from_pretrained(tiny_classifier_dirs["modernbert"])
    ref = CrossEncoder.from_pretrained(tiny_classifier_dirs["modernbert"], native=False)
    assert isinstance(ce.backbone, modernbert.ModernBertClassifier) and type(ref.backbone).__name__ == "ModernBertForSequenceClassification"
    assert abs(ce.predict(pairs) - ref.predict(pairs)).max() < 1e-5


def test_trained_by_train_py_loads_in_sentence_transformers(tiny_model_dirs, tiny_classifier_dirs, tmp_path):
    """A few MNRL steps (bi-encoder) and BCE steps (cross-encoder) of train.py on the native ModernBERT: the
    saved folders give sentence-transformers the same embeddings and scores."""
    st = pytest.importorskip("sentence_transformers")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from train import TrainConfig, main

    texts = ["A man is playing a guitar.", "A woman is slicing an onion.", "Two dogs run across the field.",
             "The cat sleeps on the warm windowsill.", "Children are playing football in the park.",
             "A chef prepares a meal in a busy kitchen.", "The train arrives at the station at noon.", "Hi"]
    triplets = tmp_path / "triplets.jsonl"
    triplets.write_text("".join(json.dumps({"anchor": a, "positive": b, "negative": c}) + "\n"
                                for a, b, c in zip(texts, texts[1:] + texts[:1], texts[2:] + texts[:2])))
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"query": a, "document": b, "label": float(i % 2)}) + "\n"
                                for i, (a, b) in enumerate(zip(texts, texts[::-1]))))
    common = dict(eval_data=[], batch_size=4, learning_rate=1e-3, max_steps=3, logging_steps=1, save_steps=0, disable_tqdm=True)
    main(TrainConfig(model=str(tiny_model_dirs["modernbert"]), data=str(triplets), output_dir=str(tmp_path / "bi"),
                     loss="mnrl", **common))
    folder = tmp_path / "bi" / "final"
    ours = BiEncoder.from_pretrained(folder)
    assert isinstance(ours.backbone, modernbert.ModernBertEncoder)
    before = BiEncoder.from_pretrained(tiny_model_dirs["modernbert"]).encode(texts)
    embeddings = ours.encode(texts)
    assert abs(embeddings - before).max() > 1e-4  # it trained
    assert abs(embeddings - st.SentenceTransformer(str(folder), device="cpu").encode(texts)).max() <= 1e-5

    main(TrainConfig(model=str(tiny_classifier_dirs["modernbert"]), data=str(labelled), output_dir=str(tmp_path / "ce"),
                     loss="bce", **common))
    folder = tmp_path / "ce" / "final"
    pairs = [(a, b) for a, b in zip(texts, texts[::-1])]
    ce = CrossEncoder.from_pretrained(folder)
    assert isinstance(ce.backbone, modernbert.ModernBertClassifier)
    assert abs(ce.predict(pairs) - st.CrossEncoder(str(folder), device="cpu").predict(pairs)).max() <= 1e-5
