"""XLM-RoBERTa models trained for a few steps by train.py (MNRL bi-encoder, BCE cross-encoder, with and
without --gradient_checkpointing) load in sentence-transformers with the same embeddings and scores.
tests/test_modernbert.py does the same for ModernBERT."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from minisbert import BiEncoder, CrossEncoder, bert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train import TrainConfig, main  # noqa: E402

TEXTS = ["A man is playing a guitar.", "A woman is slicing an onion.", "Two dogs run across the field.",
         "The cat sleeps on the warm windowsill.", "Children are playing football in the park.",
         "A chef prepares a meal in a busy kitchen.", "The train arrives at the station at noon.", "Hi"]


def _train(tmp_path, model, rows, loss, name, checkpointing) -> Path:
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(TrainConfig(model=str(model), data=str(data), output_dir=str(tmp_path / name), loss=loss, eval_data=[],
                     batch_size=4, learning_rate=1e-3, max_steps=3, logging_steps=1, save_steps=0, disable_tqdm=True,
                     gradient_checkpointing=checkpointing))
    return tmp_path / name / "final"


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient_checkpointing"])
def test_xlmr_bi_encoder_trained_by_train_py_loads_in_sentence_transformers(tiny_model_dirs, tmp_path, checkpointing):
    st = pytest.importorskip("sentence_transformers")
    rows = [{"anchor": a, "positive": b, "negative": c}
            for a, b, c in zip(TEXTS, TEXTS[1:] + TEXTS[:1], TEXTS[2:] + TEXTS[:2])]
    folder = _train(tmp_path, tiny_model_dirs["xlmr"], rows, "mnrl", "bi", checkpointing)
    ours = BiEncoder.from_pretrained(folder)
    assert isinstance(ours.backbone, bert.BertEncoder)  # minisbert's own XLM-R, not transformers'
    embeddings = ours.encode(TEXTS)
    assert abs(embeddings - BiEncoder.from_pretrained(tiny_model_dirs["xlmr"]).encode(TEXTS)).max() > 1e-4  # it trained
    assert abs(embeddings - st.SentenceTransformer(str(folder), device="cpu").encode(TEXTS)).max() <= 1e-5


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient_checkpointing"])
def test_xlmr_cross_encoder_trained_by_train_py_loads_in_sentence_transformers(tiny_classifier_dirs, tmp_path, checkpointing):
    st = pytest.importorskip("sentence_transformers")
    pairs = list(zip(TEXTS, TEXTS[::-1]))
    rows = [{"query": a, "document": b, "label": float(i % 2)} for i, (a, b) in enumerate(pairs)]
    folder = _train(tmp_path, tiny_classifier_dirs["xlmr"], rows, "bce", "ce", checkpointing)
    scores = CrossEncoder.from_pretrained(folder).predict(pairs)
    assert abs(scores - CrossEncoder.from_pretrained(tiny_classifier_dirs["xlmr"]).predict(pairs)).max() > 1e-5  # it trained
    assert abs(scores - st.CrossEncoder(str(folder), device="cpu").predict(pairs)).max() <= 1e-5
