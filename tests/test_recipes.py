"""The five recipes of examples/ run end to end in smoke mode, so they never rot.

Each recipe runs in-process on a tiny random BERT (tests/tiny_models.py) and the data slices committed
under examples/data/smoke (same layout as the shared data, so no ../shared/data is needed), for two or
three optimizer steps. Each test then checks what the recipe promises: the results table, a model
that changed, and a saved folder that sentence-transformers loads with the same embeddings / scores
as minisbert (1e-5).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import tiny_models

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SMOKE = EXAMPLES / "data" / "smoke"
sys.path.insert(0, str(EXAMPLES))

import recipe_common as common  # noqa: E402  (examples/recipe_common.py; puts the repo root on sys.path for train.py / evaluate.py)

TEXTS = ["A man is playing a guitar.", "Scientists discovered a new species of frog.", "query: what is the capital?"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return tiny_models.build("bert", tmp_path_factory.mktemp("recipes") / "bert")


def smoke_args(model, out, *extra) -> list[str]:
    return ["--model", str(model), "--data_dir", str(SMOKE), "--output_dir", str(out), "--max_steps", "2", *map(str, extra)]


def assert_st_bi_encoder_matches(folder, texts=TEXTS, **encode_kwargs) -> np.ndarray:
    """sentence-transformers loads `folder` and embeds like minisbert does; returns minisbert's embeddings."""
    st = pytest.importorskip("sentence_transformers")
    from minisbert import BiEncoder

    ours = np.asarray(BiEncoder.from_pretrained(folder, device="cpu").encode(texts, **encode_kwargs))
    theirs = st.SentenceTransformer(str(folder), device="cpu").encode(texts, **encode_kwargs)
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)
    return ours


def embeddings(folder, texts=TEXTS) -> np.ndarray:
    from minisbert import BiEncoder

    return np.asarray(BiEncoder.from_pretrained(folder, device="cpu").encode(texts))


def assert_trained(run_dir: Path) -> None:
    """The run logged finite losses for the steps it was asked to take."""
    losses = [r["loss"] for r in common.read_jsonl(run_dir / "log.jsonl") if "loss" in r]
    assert losses and all(np.isfinite(losses)), losses


# ----------------------------------------------------------------------------------------------


def test_two_stage_embedder(tiny_bert, tmp_path):
    import two_stage_embedder

    out = tmp_path / "run"
    table = two_stage_embedder.main(smoke_args(tiny_bert, out, "--simcse_batch_size", 8, "--nli_batch_size", 8))
    assert list(table) == ["base", "stage1", "stage2"]
    for metrics in table.values():
        assert {"nli-dev_cosine_accuracy", "probe_accuracy", "probe_f1_macro", "probe_v_measure"} <= set(metrics)
    assert json.loads((out / "results.json").read_text()) == table
    # stage 1 trained on one text column (SimCSE), stage 2 started from stage 1's model
    assert json.loads((out / "stage1-simcse" / "train_config.json").read_text())["columns"] is None
    assert json.loads((out / "stage2-nli" / "train_config.json").read_text())["model"] == str(out / "stage1-simcse" / "final")
    for stage in ("stage1-simcse", "stage2-nli"):
        assert_trained(out / stage)
    final = assert_st_bi_encoder_matches(out / "stage2-nli" / "final")
    assert not np.allclose(final, embeddings(tiny_bert), atol=1e-6)


def test_matryoshka_retrieval(tiny_bert, tmp_path):
    import matryoshka_retrieval

    out = tmp_path / "run"
    table = matryoshka_retrieval.main(smoke_args(
        tiny_bert, out, "--batch_size", 4, "--gradient_accumulation_steps", 2, "--dev_queries", 4, "--eval_steps", 1,
        "--corpus_size", 30, "--max_length", 64, "--matryoshka_dims", 32, 16, 8,
        "--warmup_ratio", 0))  # with warmup, 2 steps make step 1 a zero-lr step, which may be the best one
    config = json.loads((out / "train" / "train_config.json").read_text())
    assert (config["loss"], config["matryoshka_dims"], config["lr_scheduler_type"], config["dtype"], config["tf32"]) == \
        ("matryoshka", [32, 16, 8], "cosine", "bf16", True)
    assert config["metric_for_best_model"] == "scifact-dev_dim_8_cosine_ndcg@10"
    for when in ("before", "after"):  # every retrieval metric the recipe promises, per dimension, on test
        for dim in (32, 16, 8):
            for metric in ("accuracy@1", "accuracy@3", "accuracy@5", "accuracy@10", "precision@1", "recall@10",
                           "ndcg@10", "mrr@10", "map@100"):
                assert f"scifact-test_dim_{dim}_cosine_{metric}" in table[when]
    assert len((out / "data" / "scifact-test" / "corpus.jsonl").read_text().splitlines()) <= 30
    assert_trained(out / "train")
    # the base model got CLS pooling + normalize, and the trained model keeps them
    pooling = json.loads((out / "train" / "final" / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_cls_token"] and not pooling["pooling_mode_mean_tokens"]
    assert "sentence_transformers.models.Normalize" in (out / "train" / "final" / "modules.json").read_text()
    final = assert_st_bi_encoder_matches(out / "train" / "final")
    np.testing.assert_allclose(np.linalg.norm(final, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(final, embeddings(out / "base-cls"), atol=1e-6)
    if (out / "ndcg_vs_dim.png").exists():  # matplotlib is optional
        assert (out / "ndcg_vs_dim.png").stat().st_size > 1000


def test_cached_mnrl_nli_config(tiny_bert, tmp_path):
    import train

    cfg = train.parse_args([
        "--config", str(EXAMPLES / "cached_mnrl_nli.json"), "--model", str(tiny_bert),
        "--data", str(SMOKE / "nli-triplets" / "train.jsonl"), "--eval_data", f"nli-dev={SMOKE / 'nli-triplets' / 'dev.jsonl'}",
        "--batch_size", "16", "--mini_batch_size", "4", "--max_steps", "2", "--output_dir", str(tmp_path / "run"),
    ])
    assert (cfg.loss, cfg.scale, cfg.dtype, cfg.lr_scheduler_type) == ("cached_mnrl", 20.0, "bf16", "linear")
    final = train.main(cfg)
    assert "eval_nli-dev_cosine_accuracy" in final
    assert_trained(tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert (saved["batch_size"], saved["mini_batch_size"]) == (16, 4)  # the cached step ran in 4 chunks per column
    pooling = json.loads((tmp_path / "run" / "final" / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"]
    assert_st_bi_encoder_matches(tmp_path / "run" / "final")


def test_cached_mnrl_nli_config_points_at_the_shared_data(shared_data):
    config = json.loads((EXAMPLES / "cached_mnrl_nli.json").read_text())
    paths = [config["data"]] + [entry.split("=", 1)[1] for entry in config["eval_data"]]
    for path in paths:  # relative to the repository root, where train.py runs
        assert (ROOT / path).resolve().is_file(), path


def test_reranker(tiny_bert, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    import reranker
    from minisbert import CrossEncoder

    out = tmp_path / "run"
    table = reranker.main(smoke_args(tiny_bert, out, "--mining_model", tiny_bert, "--batch_size", 8, "--max_steps", 3))
    assert list(table) == ["bi-encoder", "untrained CE", "trained CE"]
    for metrics in table.values():
        assert {"trecqa-test_map", "trecqa-test_mrr@10", "trecqa-test_ndcg@10"} <= set(metrics)
    mined = common.read_jsonl(out / "data" / "trecqa-train-mined.jsonl")
    assert {r["label"] for r in mined} == {0.0, 1.0}
    assert len({(r["query"], r["passage"]) for r in mined}) == len(mined)
    train_samples = {s["query"]: s for s in common.read_jsonl(SMOKE / "trecqa-rerank" / "train.jsonl")}
    for r in mined:  # a mined negative is never one of its question's positives
        assert (r["passage"] in train_samples[r["query"]]["positive"]) == (r["label"] == 1.0)
    config = json.loads((out / "train" / "train_config.json").read_text())
    assert (config["loss"], config["pos_weight"]) == ("bce", 5.0)
    assert_trained(out / "train")
    pairs = [(r["query"], r["passage"]) for r in mined[:6]]
    ours = CrossEncoder.from_pretrained(out / "train" / "final", device="cpu").predict(pairs)
    theirs = st.CrossEncoder(str(out / "train" / "final"), device="cpu").predict(pairs)
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tiny_modernbert(tmp_path_factory) -> Path:
    return tiny_models.build("modernbert", tmp_path_factory.mktemp("recipes") / "modernbert")


def test_reranker_on_modernbert(tiny_bert, tiny_modernbert, tmp_path):
    """Recipe 4 with the backbone it was designed for (ModernBERT; tiny here), built by minisbert.modernbert,
    with --gradient_checkpointing: the trained reranker scores in sentence-transformers as in minisbert."""
    st = pytest.importorskip("sentence_transformers")
    import reranker
    from minisbert import CrossEncoder
    from minisbert.modernbert import ModernBertClassifier

    out = tmp_path / "run"
    table = reranker.main(smoke_args(tiny_modernbert, out, "--mining_model", tiny_bert, "--batch_size", 8, "--max_steps", 3,
                                     "--gradient_checkpointing"))
    assert set(table["trained CE"]) >= {"trecqa-test_map", "trecqa-test_ndcg@10"}
    assert json.loads((out / "train" / "train_config.json").read_text())["gradient_checkpointing"] is True
    assert_trained(out / "train")
    ours = CrossEncoder.from_pretrained(out / "train" / "final", device="cpu")
    assert isinstance(ours.backbone, ModernBertClassifier)
    pairs = [(r["query"], r["passage"]) for r in common.read_jsonl(out / "data" / "trecqa-train-mined.jsonl")[:6]]
    theirs = st.CrossEncoder(str(out / "train" / "final"), device="cpu").predict(pairs)
    np.testing.assert_allclose(theirs, ours.predict(pairs), atol=1e-5, rtol=0)


def test_two_stage_embedder_on_modernbert(tiny_modernbert, tmp_path):
    """Recipe 1 as the mmBERT embedder runs it (SimCSE, then NLI MNRL) on a tiny ModernBERT, built by
    minisbert.modernbert: the final model embeds in sentence-transformers as in minisbert."""
    import two_stage_embedder
    from minisbert import BiEncoder
    from minisbert.modernbert import ModernBertEncoder

    out = tmp_path / "run"
    two_stage_embedder.main(smoke_args(tiny_modernbert, out, "--simcse_batch_size", 8, "--nli_batch_size", 8))
    for stage in ("stage1-simcse", "stage2-nli"):
        assert_trained(out / stage)
    assert isinstance(BiEncoder.from_pretrained(out / "stage2-nli" / "final").backbone, ModernBertEncoder)
    final = assert_st_bi_encoder_matches(out / "stage2-nli" / "final")
    assert not np.allclose(final, embeddings(tiny_modernbert), atol=1e-6)


def test_multitask(tiny_bert, tmp_path):
    import multitask

    out = tmp_path / "run"
    table = multitask.main(smoke_args(tiny_bert, out, "--batch_size", 4, "--max_steps", 3))
    for when in ("before", "after"):
        assert {"nli-dev_cosine_accuracy", "stsb-test_spearman_cosine"} <= set(table[when])
    config = json.loads((out / "train" / "train_config.json").read_text())
    assert config["multi_dataset_schedule"] == "round_robin"
    assert [d["loss"] for d in config["datasets"]] == ["triplet", "mnrl", "cosent"]
    assert (config["distance"], config["margin"], config["scale"]) == ("euclidean", 5.0, 20.0)
    assert_trained(out / "train")
    st = pytest.importorskip("sentence_transformers")
    final = out / "train" / "final"
    assert st.SentenceTransformer(str(final), device="cpu").prompts == {"query": "query: ", "document": "passage: "}
    assert_st_bi_encoder_matches(final, prompt_name="query")
    assert_st_bi_encoder_matches(final)


def test_readme_commands_name_existing_files():
    """Every `examples/...` file the README names (scripts, configs, data, the plot) exists."""
    readme = (EXAMPLES / "README.md").read_text()
    named = set(re.findall(r"examples/[\w./-]+\.(?:py|jsonl|json|png|md)\b", readme))
    assert {f"examples/{n}" for n in ("two_stage_embedder.py", "matryoshka_retrieval.py", "cached_mnrl_nli.json",
                                      "reranker.py", "multitask.py")} <= named
    for path in named:
        assert (ROOT / path).is_file(), path
