"""minisbert.tokenizer against transformers' AutoTokenizer on the same folders: the same ids, type ids and
masks (texts, pairs, truncation, padding either side, ST's do_lower_case), folders saved by transformers
admitted, folders whose tokenizer.json and config disagree refused (and shown to matter), everything
beyond tokenizing in `.transformers`, and no transformers import on the encode path (the reason it exists)."""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minisbert import BiEncoder, tokenizer
from minisbert.tokenizer import load_transformers_tokenizer

TEXTS = [
    "A man is playing a guitar.", "Héllo wörld, naïve café", "中文分词 and 日本語 text", "emoji 😀 and symbols ™ © ½",
    "literal [MASK] and [SEP] tokens [CLS]", "", "   leading\tand\ntrailing   ", "UPPER lower MiXeD",
    "control\x00chars\x1f here", "unbelievably-hyphenated_words/and.slashes", "x" * 150, "word " * 80,
]
PAIRS = list(reversed(TEXTS))


def _same(ours, theirs, keys=("input_ids", "token_type_ids", "attention_mask")):
    for k in keys:
        a, b = ours[k], theirs[k]
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b), k
        else:
            assert a == b, k


def _compare(folder: Path, do_lower_case=False):
    ours = tokenizer.load(folder, do_lower_case=do_lower_case)
    assert ours is not None, f"{folder} should load natively"
    theirs = load_transformers_tokenizer(folder, do_lower_case=do_lower_case)
    for kwargs in ({}, {"max_length": 9}, {"max_length": 64, "padding": True, "return_tensors": True},
                   {"padding": True}, {"max_length": 7, "padding": True, "return_tensors": True}):
        _same(tokenizer.tokenize(ours, TEXTS, **kwargs), tokenizer.tokenize(theirs, TEXTS, **kwargs))
        _same(tokenizer.tokenize(ours, TEXTS, PAIRS, **kwargs), tokenizer.tokenize(theirs, TEXTS, PAIRS, **kwargs))
    _same(tokenizer.tokenize(ours, "one string"), tokenizer.tokenize(theirs, "one string"))  # flat lists
    overflow = lambda enc: [e.overflowing != [] for e in enc.encodings]  # noqa: E731  Truncation's count
    assert overflow(tokenizer.tokenize(ours, TEXTS, max_length=9)) == overflow(tokenizer.tokenize(theirs, TEXTS, max_length=9))
    assert (ours.pad_token_id, ours.pad_token_type_id, ours.padding_side, ours.model_max_length) == (
        theirs.pad_token_id, theirs.pad_token_type_id, theirs.padding_side, theirs.model_max_length)
    assert sorted(ours.all_special_ids) == sorted(theirs.all_special_ids)
    assert ours._transformers is None  # nothing above needed transformers
    return ours, theirs


def _saved_bert(tmp_path, name="tok", **settings) -> Path:
    """A BertTokenizer folder written by transformers itself, with `settings` (do_lower_case, ...)."""
    import inspect

    from transformers import BertTokenizer, BertTokenizerFast

    from tiny_models import minilm_dir

    vocab = json.loads((minilm_dir() / "tokenizer.json").read_text())["model"]["vocab"]
    if "vocab" in inspect.signature(BertTokenizer.__init__).parameters:  # transformers 5: a dict
        tok = BertTokenizer(vocab=vocab, **settings)
    else:  # transformers 4: a vocab.txt, and the fast class, which also writes tokenizer.json
        vocab_file = tmp_path / f"{name}-vocab.txt"
        vocab_file.write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.get)), encoding="utf-8")
        tok = BertTokenizerFast(vocab_file=str(vocab_file), **settings)
    folder = tmp_path / name
    tok.save_pretrained(folder)
    return folder


def test_minilm_folder_tokenizes_as_transformers(minilm_path):
    _compare(minilm_path)


@pytest.mark.parametrize("settings", [
    {}, {"do_lower_case": False}, {"strip_accents": True}, {"do_lower_case": False, "strip_accents": False},
    {"tokenize_chinese_chars": False}, {"padding_side": "left"}, {"model_max_length": 77},
])
def test_folders_saved_by_transformers_tokenize_as_transformers(tmp_path, settings):
    _compare(_saved_bert(tmp_path, **settings))


def test_st_do_lower_case_prepends_lowercase_as_the_transformers_path(tmp_path):
    _compare(_saved_bert(tmp_path, do_lower_case=False), do_lower_case=True)


def _edit(folder: Path, name: str, change) -> None:
    data = json.loads((folder / name).read_text())
    change(data)
    (folder / name).write_text(json.dumps(data))


def test_config_listing_its_added_tokens_as_transformers_4_saves_them(tmp_path):
    """transformers 4 writes added_tokens_decoder into tokenizer_config.json; with the same tokens as
    tokenizer.json the folder loads natively and tokenizes as transformers does."""
    folder = _saved_bert(tmp_path)
    added = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
    _edit(folder, "tokenizer_config.json", lambda d: d.update(added_tokens_decoder={
        str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added}))
    _compare(folder)


def test_sides_missing_from_the_config_come_from_tokenizer_json_as_in_transformers(tmp_path):
    folder = _saved_bert(tmp_path)
    _edit(folder, "tokenizer.json", lambda d: d.update(
        padding={"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": None, "pad_id": 0,
                 "pad_type_id": 0, "pad_token": "[PAD]"},
        truncation={"direction": "Left", "max_length": 128, "strategy": "LongestFirst", "stride": 0}))
    ours, theirs = _compare(folder)
    assert (ours.padding_side, ours.truncation_side) == (theirs.padding_side, theirs.truncation_side) == ("left", "left")


@pytest.mark.parametrize("version, native", [("5.0.0", False), ("5.2.1", False), ("5.3.0", True), ("4.41.2", True)])
def test_sides_only_tokenizer_json_sets_load_natively_only_where_transformers_reads_them(tmp_path, monkeypatch,
                                                                                       version, native):
    """transformers 5.0-5.2 rebuild the tokenizer without tokenizer.json's padding / truncation sections, so
    there a side only the file sets would give other ids than load()'s: AutoTokenizer decides instead."""
    import importlib.metadata

    plain, sided, configured = (_saved_bert(tmp_path, name) for name in ("plain", "sided", "configured"))
    sides = lambda d: d.update(truncation={"direction": "Left", "max_length": 128, "strategy": "LongestFirst",  # noqa: E731
                                           "stride": 0})
    _edit(sided, "tokenizer.json", sides)
    _edit(configured, "tokenizer.json", sides)
    _edit(configured, "tokenizer_config.json", lambda d: d.update(truncation_side="left"))
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version if name == "transformers" else real(name))
    assert tokenizer.load(plain) is not None and tokenizer.load(configured) is not None  # the rule does not matter
    assert (tokenizer.load(sided) is not None) == native


def test_tokenizer_json_that_disagrees_with_the_config_is_refused(tmp_path):
    """transformers 5 rebuilds a BertTokenizer from the config: a tokenizer.json that says otherwise must not
    be used as saved (here it would change the ids), so load() gives None and AutoTokenizer decides."""
    from tokenizers import Tokenizer as Backend

    folder = _saved_bert(tmp_path, do_lower_case=False)
    _edit(folder, "tokenizer.json", lambda d: d["normalizer"].update(lowercase=True))
    assert tokenizer.load(folder) is None
    as_saved = Backend.from_file(str(folder / "tokenizer.json")).encode("UPPER Case").ids
    assert as_saved != load_transformers_tokenizer(folder)("UPPER Case")["input_ids"]


@pytest.mark.parametrize("edit", [
    ("tokenizer_config.json", lambda d: d.update(tokenizer_class="RobertaTokenizer")),
    ("tokenizer_config.json", lambda d: d.update(split_special_tokens=True)),
    ("tokenizer_config.json", lambda d: d.update(additional_special_tokens=["[X]"])),
    ("tokenizer_config.json", lambda d: d.setdefault("added_tokens_decoder", {}).update({"5": {
        "content": "[NEW]", "special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}})),
    ("tokenizer_config.json", lambda d: d.update(cls_token="[NOT_IN_VOCAB]")),
    ("tokenizer.json", lambda d: d["added_tokens"][0].update(lstrip=True)),
    ("tokenizer.json", lambda d: d["model"].update(max_input_chars_per_word=5)),
    ("tokenizer.json", lambda d: d.update(pre_tokenizer={"type": "Whitespace"})),
    ("tokenizer.json", lambda d: d["post_processor"]["special_tokens"]["[CLS]"].update(ids=[7])),
], ids=["class", "split_special", "extra_specials", "added_token", "special_not_in_vocab", "flags", "model",
        "pre_tokenizer", "template_id"])
def test_anything_not_reproduced_falls_back_to_transformers(tmp_path, edit):
    folder = _saved_bert(tmp_path)
    assert tokenizer.load(folder) is not None
    _edit(folder, *edit)
    assert tokenizer.load(folder) is None


def test_other_tokenizers_and_missing_files_are_not_loaded_natively(tiny_model_dirs, tmp_path):
    assert tokenizer.load(tiny_model_dirs["xlmr"]) is None
    assert tokenizer.load(tiny_model_dirs["modernbert"]) is None
    folder = _saved_bert(tmp_path)
    (folder / "tokenizer.json").unlink()
    assert tokenizer.load(folder) is None  # vocab.txt only: transformers converts it


def test_everything_beyond_tokenizing_is_the_transformers_tokenizer(tmp_path):
    """`.transformers` is AutoTokenizer's tokenizer of the same files, for everything minisbert does not do;
    settings set on the Tokenizer reach it, before it is loaded and after; tokenizing never switches to it."""
    folder = _saved_bert(tmp_path)
    ours = tokenizer.load(folder)
    twin = copy.deepcopy(ours)  # copying does not load transformers
    assert twin._transformers is None and tokenizer.tokenize(twin, TEXTS) == tokenizer.tokenize(ours, TEXTS)
    ours.model_max_length = 33  # set before transformers is loaded: carried over
    reference = load_transformers_tokenizer(folder)
    ids = tokenizer.tokenize(ours, "hello there")["input_ids"]
    assert ours.transformers.decode(ids) == reference.decode(ids)
    assert ours.transformers.model_max_length == 33
    assert type(ours.transformers("a b", return_tensors="pt")).__name__ == "BatchEncoding"
    ours.padding_side = "left"  # set after it is loaded: handed to it too
    assert (ours.padding_side, ours.transformers.padding_side) == ("left", "left")
    padded = tokenizer.tokenize(ours, ["a", "a b c"], padding=True)["input_ids"]
    assert padded == reference(["a", "a b c"], padding=True, padding_side="left")["input_ids"] and padded[0][0] == 0
    with pytest.warns(DeprecationWarning):  # the names that were delegated, kept one release
        assert ours.decode(ids) == reference.decode(ids)
    with pytest.warns(DeprecationWarning):
        assert ours("a b")["input_ids"] == reference("a b")["input_ids"]
    assert not hasattr(ours, "add_tokens")  # no delegation: a vocabulary change is made on `.transformers` itself


def test_special_token_counts_equal_transformers(tmp_path):
    ours = tokenizer.load(_saved_bert(tmp_path))
    for pair in (False, True):
        assert ours.num_special_tokens_to_add(pair=pair) == ours.transformers.num_special_tokens_to_add(pair=pair)


def test_settings_before_transformers_is_loaded_are_handed_to_it(tmp_path):
    ours = tokenizer.load(_saved_bert(tmp_path))
    ours.padding_side, ours.truncation_side, ours.model_max_length = "left", "left", 21
    texts = ["one two three four five six seven", "eight"]
    before = tokenizer.tokenize(ours, texts, max_length=5, padding=True)
    assert ours._transformers is None
    tail = tokenizer.tokenize(ours, "five six seven", add_special_tokens=False)["input_ids"]
    assert before["input_ids"][1][0] == ours.pad_token_id and before["input_ids"][0][1:4] == tail  # left pad, left cut
    ours.transformers  # noqa: B018  load it
    assert (ours.transformers.padding_side, ours.transformers.truncation_side, ours.transformers.model_max_length) == (
        "left", "left", 21)
    assert tokenizer.tokenize(ours, texts, max_length=5, padding=True) == before


def test_saved_tokenizer_files_equal_the_transformers_path(minilm_path, tmp_path):
    native, plain = BiEncoder.from_pretrained(minilm_path), BiEncoder.from_pretrained(minilm_path, native=False)
    assert isinstance(native.tokenizer, tokenizer.Tokenizer) and not isinstance(plain.tokenizer, tokenizer.Tokenizer)
    native.save_pretrained(tmp_path / "a")
    plain.save_pretrained(tmp_path / "b")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (native.encode(TEXTS) == plain.encode(TEXTS)).all()


def test_loading_and_encoding_do_not_import_transformers(minilm_path):
    code = (
        "import sys\n"
        "from minisbert import BiEncoder\n"
        f"m = BiEncoder.from_pretrained({str(minilm_path)!r})\n"
        "m.encode(['a sentence', 'another one'], prompt='query: ')\n"
        "print(sorted(k for k in ('transformers', 'torch._dynamo') if k in sys.modules))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
