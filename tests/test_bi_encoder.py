"""BiEncoder against sentence-transformers: same embeddings, folders that load both ways, clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from minisbert import BiEncoder, ModelLoadError
from minisbert.pooling import MODES

TEXTS = ["hello world", "A man is playing a guitar.", "", "Der Hund läuft über die Wiese. " * 4, "x"]


def st():
    return pytest.importorskip("sentence_transformers")


# ---------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return BiEncoder.from_pretrained(minilm_path, device="cpu")


def test_minilm_matches_st_on_1000_stsb_sentences(minilm, minilm_path, stsb_sentences):
    reference = st().SentenceTransformer(str(minilm_path), device="cpu").encode(stsb_sentences, batch_size=32)
    ours = minilm.encode(stsb_sentences, batch_size=32)
    assert ours.dtype == np.float32 and ours.shape == (1000, 384)
    assert np.abs(ours - reference).max() <= 1e-5


def test_batch_size_and_input_order_do_not_change_results(minilm, stsb_sentences):
    texts = stsb_sentences[:200]
    base = minilm.encode(texts, batch_size=32)
    assert np.abs(minilm.encode(texts, batch_size=7) - base).max() <= 1e-5
    perm = np.random.default_rng(0).permutation(len(texts))
    shuffled = minilm.encode([texts[i] for i in perm], batch_size=32)
    assert np.abs(shuffled - base[perm]).max() <= 1e-5


def test_single_string_gives_a_vector_and_tensor_output(minilm):
    v = minilm.encode("A man is playing a guitar.")
    assert v.shape == (384,)
    t = minilm.encode(["A man is playing a guitar."], convert_to_tensor=True)
    assert isinstance(t, torch.Tensor) and torch.allclose(t[0], torch.from_numpy(v))


def test_normalized_outputs_and_truncate_dim(minilm):
    full = minilm.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    cut = minilm.encode(TEXTS, truncate_dim=128)
    expected = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    assert np.abs(cut - expected).max() <= 1e-5
    raw = minilm.encode(TEXTS, truncate_dim=128, normalize_embeddings=False)
    assert np.abs(raw - full[:, :128]).max() <= 1e-6


def test_similarity_functions_match_st(minilm, minilm_path):
    model = st().SentenceTransformer(str(minilm_path), device="cpu")
    a, b = minilm.encode(TEXTS[:3]), minilm.encode(TEXTS[2:])
    for name in ("cosine", "dot", "euclidean", "manhattan"):
        minilm.similarity_fn_name = model.similarity_fn_name = name
        assert torch.allclose(minilm.similarity(a, b), model.similarity(a, b), atol=1e-5), name
    minilm.similarity_fn_name = "cosine"


def test_empty_string_has_the_embedding_st_gives(minilm, minilm_path):
    reference = st().SentenceTransformer(str(minilm_path), device="cpu").encode([""])
    assert np.abs(minilm.encode([""]) - reference).max() <= 1e-5


def test_truncation_is_reported_once_per_call(minilm, caplog):
    with caplog.at_level("WARNING", logger="minisbert"):
        minilm.encode(["word " * 600, "short", "word " * 300])
    messages = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert messages == ["encode: 2 of 3 inputs were longer than max_length=256 tokens and were truncated to it"]


def test_repeated_texts_are_encoded_once_and_returned_in_place(minilm, monkeypatch, caplog):
    texts = ["a cat", "word " * 600, "a cat", "", "a dog", "word " * 600, "", "a cat"]
    one_by_one = np.stack([minilm.encode([t])[0] for t in texts])  # the naive reference: no repeats in a call
    rows = []
    tokenize = minilm.tokenize
    monkeypatch.setattr(minilm, "tokenize", lambda batch, *a, **k: rows.extend(batch) or tokenize(batch, *a, **k))
    caplog.clear()
    with caplog.at_level("WARNING", logger="minisbert"):
        out = minilm.encode(texts, batch_size=2)
    assert np.abs(out - one_by_one).max() <= 1e-5
    assert sorted(rows) == sorted(set(texts))  # each distinct text tokenized (and run) once
    assert [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()] == [
        "encode: 2 of 8 inputs were longer than max_length=256 tokens and were truncated to it"]  # counted per input
    assert (minilm.last_truncation.count, minilm.last_truncation.total) == (2, 8)


def test_a_failing_batch_leaves_the_training_mode_as_it_was(minilm, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("batch failed")

    monkeypatch.setattr(minilm, "tokenize", broken)
    minilm.train()
    try:
        with pytest.raises(RuntimeError, match="batch failed"):
            minilm.encode(["a", "b"])
        assert minilm.training
    finally:
        minilm.eval()


def test_distinct_by_length_orders_and_indexes_by_hand():
    from minisbert.backbone import distinct_by_length

    items, index = distinct_by_length(["bb", "a", "ccc", "a", "bb", ("x", "yy"), ["x", "yy"]])
    # Longest first by characters (a pair counts both texts), ties in order of first appearance.
    assert items == ["ccc", ("x", "yy"), "bb", "a"]
    assert index == [2, 3, 0, 3, 2, 1, 1]


def test_bf16_encode_is_close_to_fp32(minilm_path, minilm, stsb_sentences):
    bf16 = BiEncoder.from_pretrained(minilm_path, device="cpu", dtype=torch.bfloat16)
    a, b = bf16.encode(stsb_sentences[:64]), minilm.encode(stsb_sentences[:64])
    assert a.dtype == np.float32
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99


# ---------------------------------------------------------------------------- folders, every architecture and pooling


@pytest.mark.parametrize("kind", ["bert", "xlmr", "modernbert"])
@pytest.mark.parametrize("mode", MODES)
def test_save_load_round_trips_with_st(kind, mode, tiny_model_dirs, tmp_path):
    STm = st()
    from sentence_transformers import models as stm

    model = BiEncoder.from_pretrained(tiny_model_dirs[kind], pooling=mode, normalize=True, device="cpu")
    ours = model.encode(TEXTS)
    # minisbert save -> ST load, and -> minisbert load
    model.save_pretrained(tmp_path / "ours")
    assert np.abs(STm.SentenceTransformer(str(tmp_path / "ours"), device="cpu").encode(TEXTS) - ours).max() <= 1e-5
    assert np.abs(BiEncoder.from_pretrained(tmp_path / "ours").encode(TEXTS) - ours).max() <= 1e-5
    # ST build + save (ST 6.x layout) -> minisbert load
    transformer = stm.Transformer(str(tiny_model_dirs[kind]))
    reference = STm.SentenceTransformer(
        modules=[transformer, stm.Pooling(transformer.get_embedding_dimension(), mode), stm.Normalize()], device="cpu"
    )
    reference.save(str(tmp_path / "st"))
    expected = reference.encode(TEXTS)
    assert np.abs(BiEncoder.from_pretrained(tmp_path / "st").encode(TEXTS) - expected).max() <= 1e-5
    assert np.abs(ours - expected).max() <= 1e-5


@pytest.mark.parametrize("kind", ["bert", "xlmr"])
def test_prompt_excluded_from_pooling_and_dense_layer_round_trip(kind, tiny_model_dirs, tmp_path):
    STm = st()
    from sentence_transformers import models as stm

    transformer = stm.Transformer(str(tiny_model_dirs[kind]))
    dim = transformer.get_embedding_dimension()
    reference = STm.SentenceTransformer(
        modules=[transformer, stm.Pooling(dim, ["mean", "max"], include_prompt=False), stm.Dense(2 * dim, 16)],
        prompts={"query": "query: ", "document": "passage: "}, default_prompt_name="query", device="cpu",
    )
    reference.save(str(tmp_path / "st"))
    model = BiEncoder.from_pretrained(tmp_path / "st")
    assert model.include_prompt is False and model.default_prompt_name == "query" and model.embedding_dim == 16
    for kwargs in ({}, {"prompt_name": "document"}, {"prompt": "custom: "}):
        assert np.abs(model.encode(TEXTS, **kwargs) - reference.encode(TEXTS, **kwargs)).max() <= 1e-5, kwargs
    model.save_pretrained(tmp_path / "ours")
    again = STm.SentenceTransformer(str(tmp_path / "ours"), device="cpu")
    assert np.abs(again.encode(TEXTS) - reference.encode(TEXTS)).max() <= 1e-5


def test_legacy_and_v54_pooling_configs(tiny_model_dirs, tmp_path):
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"], pooling="cls", device="cpu")
    model.save_pretrained(tmp_path / "m")
    expected = model.encode(TEXTS)
    cfg = tmp_path / "m" / "1_Pooling" / "config.json"
    for written in (
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False,
         "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False},  # ST 2.2
        {"embedding_dimension": 32, "pooling_mode": "cls", "include_prompt": True},  # ST 5.4+
        {"embedding_dimension": 32, "pooling_mode": ["cls"], "include_prompt": True},
    ):
        cfg.write_text(json.dumps(written))
        assert np.abs(BiEncoder.from_pretrained(tmp_path / "m").encode(TEXTS) - expected).max() <= 1e-6


def test_plain_transformers_checkpoint_defaults_to_mean_without_normalize(tiny_model_dirs):
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"])
    assert model.pooling == ["mean"] and model.normalize is False and model.max_length == 128


def test_saved_folder_layout_and_loaders_without_minisbert(tiny_model_dirs, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModel

    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"], normalize=True)
    model.save_pretrained(tmp_path / "m")
    files = sorted(p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*"))
    for required in ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json",
                     "1_Pooling/config.json", "2_Normalize", "config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "README.md"):
        assert required in files, required
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    assert [m["type"] for m in modules] == [f"sentence_transformers.models.{n}" for n in ("Transformer", "Pooling", "Normalize")]
    from packaging.version import Version

    Version(json.loads((tmp_path / "m" / "config_sentence_transformers.json").read_text())["__version__"]["sentence_transformers"])
    hf = AutoModel.from_pretrained(tmp_path / "m")
    state = load_file(tmp_path / "m" / "model.safetensors")
    assert torch.equal(state["embeddings.word_embeddings.weight"], hf.embeddings.word_embeddings.weight)
    # The example reproduces the embeddings with safetensors + json + tokenizers alone.
    out = subprocess.run([sys.executable, "examples/load_without_minisbert.py", str(tmp_path / "m"), "hello world"],
                         capture_output=True, text=True, check=True, cwd=str(_root()),
                         env={**_env(), "OMP_NUM_THREADS": "1"})
    vec = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
    assert np.abs(vec - model.encode("hello world")).max() <= 1e-5


def test_padding_invariance(tiny_model_dirs):
    for kind in ("bert", "xlmr", "modernbert"):
        model = BiEncoder.from_pretrained(tiny_model_dirs[kind], pooling=list(MODES))
        alone = np.stack([model.encode([t])[0] for t in TEXTS])
        assert np.abs(model.encode(TEXTS) - alone).max() <= 1e-5, kind


def test_forward_has_gradients(tiny_model_dirs):
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"]).train()
    emb = model(model.tokenize(["a b", "c"]))
    emb.sum().backward()
    assert emb.shape == (2, 32) and model.backbone.embeddings.word_embeddings.weight.grad is not None


# ---------------------------------------------------------------------------- bad input


def _root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


def _env():
    import os

    return {k: v for k, v in os.environ.items()}


def test_bad_texts_get_clear_errors(tiny_model_dirs):
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"])
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        model.encode(["ok", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] is NoneType"):
        model.encode([None])
    with pytest.raises(ValueError, match="truncate_dim"):
        model.encode(["a"], truncate_dim=0)
    with pytest.raises(ValueError, match="prompt_name 'query'"):
        model.encode(["a"], prompt_name="query")


def test_missing_folder_and_unknown_hub_name(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        BiEncoder.from_pretrained(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match=r"'someone/no-such-model' not found.*no local folder"):
        BiEncoder.from_pretrained("someone/no-such-model")


def test_truncated_corrupted_missing_and_pickle_weights(tiny_model_dirs, tmp_path):
    src = tiny_model_dirs["bert"]
    model = BiEncoder.from_pretrained(src)
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()

    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="not a complete safetensors file"):
        BiEncoder.from_pretrained(tmp_path / "m")
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="not a complete safetensors file"):
        BiEncoder.from_pretrained(tmp_path / "m")
    weights.unlink()
    with pytest.raises(ModelLoadError, match="has no weights"):
        BiEncoder.from_pretrained(tmp_path / "m")

    from safetensors.torch import load_file

    torch.save(load_file(src / "model.safetensors"), tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        BiEncoder.from_pretrained(tmp_path / "m")
    from transformers.utils import import_utils

    torch_before_2_6 = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < (2, 6)
    if torch_before_2_6 and hasattr(import_utils, "check_torch_load_is_safe"):  # transformers' CVE-2025-32434 rule
        with pytest.raises(ModelLoadError, match="upgrade torch to at least v2.6"):
            BiEncoder.from_pretrained(tmp_path / "m", allow_pickle=True)
        return
    allowed = BiEncoder.from_pretrained(tmp_path / "m", allow_pickle=True)
    assert np.abs(allowed.encode(TEXTS) - model.encode(TEXTS)).max() <= 1e-6


def test_config_with_wrong_hidden_size_and_missing_tokenizer(tiny_model_dirs, tmp_path):
    shutil.copytree(tiny_model_dirs["bert"], tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "hidden_size": 48}))
    with pytest.raises(ModelLoadError, match="could not load the transformers model"):
        BiEncoder.from_pretrained(tmp_path / "m")
    shutil.copytree(tiny_model_dirs["bert"], tmp_path / "n")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (tmp_path / "n" / name).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="tokenizer"):
        BiEncoder.from_pretrained(tmp_path / "n")


def test_unknown_module_type_is_refused_not_imported(tiny_model_dirs, tmp_path):
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"])
    model.save_pretrained(tmp_path / "m")
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Evil", "type": "evil_package.Backdoor"})
    (tmp_path / "m" / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match=r"'evil_package.Backdoor'.*Supported.*Transformer.*Pooling.*Dense.*Normalize"):
        BiEncoder.from_pretrained(tmp_path / "m")
    assert "evil_package" not in sys.modules


def test_unknown_pooling_mode(tiny_model_dirs):
    with pytest.raises(ValueError, match="unknown pooling mode"):
        BiEncoder.from_pretrained(tiny_model_dirs["bert"], pooling="median")


def test_import_does_not_import_sentence_transformers():
    code = "import minisbert, sys; from minisbert import BiEncoder, CrossEncoder; print('sentence_transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=str(_root()),
                         env={**_env(), "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip() == "False"
