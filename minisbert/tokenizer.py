"""Every tokenizer minisbert uses: loading it (natively or with AutoTokenizer), tokenizing with a truncation
count, and saving it.

    Tokenizer         a BERT WordPiece tokenizer over a `tokenizers.Tokenizer`, read without transformers
                      (launch time: benchmarks/README.md, decision table: native BERT tokenizer);
                      `.transformers` is the full AutoTokenizer of the same files, loaded on first use
    load_tokenizer    a folder -> a Tokenizer where it equals transformers', else AutoTokenizer's tokenizer
    tokenize          texts [and pairs] -> ids, type ids and mask, for either kind; counts truncated inputs
    Truncation        that count, reported once per call or run (truncation is never silent, ST #4060)
    save              the tokenizer files with the model's max length, for either kind

`load(folder)` gives a Tokenizer only where the result is provably the one transformers builds, and None
otherwise. transformers 4 used tokenizer.json as saved; transformers 5 rebuilds a BertTokenizer from the
vocabulary and tokenizer_config.json (models/bert/tokenization_bert.py). So the gate is: tokenizer_config.json
names BertTokenizer(Fast), and every part of tokenizer.json (model, normalizer, pre-tokenizer, post-processor,
special tokens) equals what that rebuild makes from the config. Then both generations of transformers tokenize
as this does; padding / truncation sides that only tokenizer.json sets count only where the installed
transformers reads them there (4.x, 5.3+; `_sides_from_tokenizer_json`).

A Tokenizer does what minisbert asks of a tokenizer and nothing else: `tokenize` (texts or (a, b) pairs,
optional longest_first truncation, padding to the longest, lists or (B, L) int64 tensors, the Rust encodings
for truncation counts), the settings collate reads, the special-token count, and `save_pretrained`. Everything
else (`decode`, `add_tokens`, the vocabulary, ...) is `tokenizer.transformers`, a separate AutoTokenizer built
from the tokenizer files as they were when the model was loaded (kept in memory, as sentence-transformers keeps
its tokenizer, so a model still saves after its source folder was moved or deleted). What `tokenize` does never
depends on whether `.transformers` was loaded; a change to the vocabulary or special tokens made through it is
not seen by `tokenize` (load with `native=False` to work on a transformers tokenizer throughout).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import ModelLoadError

logger = logging.getLogger("minisbert")

BERT_CLASSES = ("BertTokenizer", "BertTokenizerFast")
BERT_DEFAULTS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                 "mask_token": "[MASK]"}  # BertTokenizer's named special tokens and their defaults
NAMED_SPECIAL = tuple(BERT_DEFAULTS)
# The files AutoTokenizer reads for a BERT tokenizer, kept in memory at load (see the module docstring).
SNAPSHOT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
                  "chat_template.jinja")
# Settings that change what transformers' tokenizer does in ways this class does not reproduce.
UNSUPPORTED_SETTINGS = ("split_special_tokens", "additional_special_tokens", "extra_special_tokens", "add_bos_token",
                        "add_eos_token", "bos_token", "eos_token")
# The files one of which AutoTokenizer needs (transformers 5 silently builds an empty vocabulary without them).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model")
VERY_LARGE_INTEGER = int(1e30)  # transformers' model_max_length when the config has none


class Encoded(dict):
    """{"input_ids", "token_type_ids", "attention_mask"} as lists (or tensors), plus the Rust `encodings`."""

    def __init__(self, data: dict, encodings: list):
        super().__init__(data)
        self.encodings = encodings


def _setting(name: str, settable: bool = False) -> property:
    """A Tokenizer setting read from its settings; a settable one is also handed to `.transformers` when set."""
    def get(self):
        return self._settings[name]

    def put(self, value):
        self._set(name, value)

    return property(get, put if settable else None, doc=f"transformers' `{name}` of this tokenizer")


class Tokenizer:
    """A BERT WordPiece tokenizer read by `tokenizers` alone; see the module docstring for what it covers.

    Its settings answer as transformers' tokenizer of the same folder does. `padding_side`, `truncation_side`
    and `model_max_length` can be set; they are handed to `.transformers` (when it is loaded, and as it is),
    so a saved folder carries them.
    """

    SETTABLE = ("model_max_length", "padding_side", "truncation_side")  # handed to `.transformers` when it loads

    def __init__(self, backend, settings: dict, folder: Path, do_lower_case: bool = False, files: dict | None = None):
        """`backend`: the tokenizers.Tokenizer; `settings`: what transformers' tokenizer of `folder` would answer
        for the names in it (`load`); `files`: {name: bytes} of the folder's tokenizer files (default: read now)."""
        if files is None:
            files = {n: (folder / n).read_bytes() for n in SNAPSHOT_FILES if (folder / n).is_file()}
        self.backend = backend
        self.folder = folder
        self._files = files
        self._do_lower_case = do_lower_case
        self._settings = dict(settings)
        self._transformers = None  # the AutoTokenizer, once `.transformers` was asked for

    # ------------------------------------------------------------------ settings (as transformers' names)

    name_or_path = _setting("name_or_path")
    pad_token = _setting("pad_token")
    pad_token_id = _setting("pad_token_id")
    pad_token_type_id = _setting("pad_token_type_id")
    all_special_ids = _setting("all_special_ids")
    padding_side = _setting("padding_side", settable=True)
    truncation_side = _setting("truncation_side", settable=True)
    model_max_length = _setting("model_max_length", settable=True)

    def _set(self, name: str, value) -> None:
        self._settings[name] = value
        if self._transformers is not None:
            setattr(self._transformers, name, value)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """Special tokens added to one input (one pair when `pair`): the post-processor's count, as transformers'."""
        return self.backend.num_special_tokens_to_add(pair)

    # ------------------------------------------------------------------ tokenizing

    def _tokenize(self, texts, pairs, max_length, padding, return_tensors, add_special_tokens) -> Encoded:
        """`tokenize` for this kind (see there)."""
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if pairs is not None:
            batch = list(zip(batch, [pairs] if single else list(pairs)))
        backend, settings = self.backend, self._settings
        if max_length is None:
            backend.no_truncation()
        else:
            backend.enable_truncation(max_length, stride=0, strategy="longest_first", direction=settings["truncation_side"])
        if padding:
            backend.enable_padding(direction=settings["padding_side"], pad_id=settings["pad_token_id"],
                                   pad_type_id=settings["pad_token_type_id"], pad_token=settings["pad_token"])
        else:
            backend.no_padding()
        encodings = backend.encode_batch(batch, add_special_tokens=add_special_tokens)
        data = {"input_ids": [e.ids for e in encodings], "token_type_ids": [e.type_ids for e in encodings],
                "attention_mask": [e.attention_mask for e in encodings]}
        if return_tensors:
            import torch

            data = {k: torch.tensor(v, dtype=torch.long) for k, v in data.items()}
        elif single:
            data = {k: v[0] for k, v in data.items()}
        return Encoded(data, encodings)

    # ------------------------------------------------------------------ the transformers tokenizer

    @property
    def transformers(self):
        """The transformers tokenizer of this folder (AutoTokenizer), loaded on first use from the files as they
        were at load: written to a temporary folder, which transformers no longer needs once it has loaded."""
        if self._transformers is None:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="minisbert-tokenizer-") as tmp:
                for name, data in self._files.items():
                    (Path(tmp) / name).write_bytes(data)
                tok = load_transformers_tokenizer(Path(tmp), do_lower_case=self._do_lower_case)
            tok.name_or_path = str(self.folder)
            for name in self.SETTABLE:
                setattr(tok, name, self._settings[name])
            self._transformers = tok
        return self._transformers

    def save_pretrained(self, folder) -> None:
        """Write the tokenizer files as transformers does (through `.transformers`, with this one's settings)."""
        self.transformers.save_pretrained(folder)

    def __call__(self, text, text_pair=None, **kwargs):
        """Deprecated: `tokenize(tokenizer, ...)`, or `tokenizer.transformers(...)` for transformers' options."""
        warnings.warn("calling a minisbert Tokenizer is deprecated: use minisbert.tokenizer.tokenize(tokenizer, ...) "
                      "or tokenizer.transformers(...)", DeprecationWarning, stacklevel=2)
        return self.transformers(text, text_pair, **kwargs)

    def decode(self, ids, **kwargs) -> str:
        """Deprecated: `tokenizer.transformers.decode(...)`."""
        warnings.warn("minisbert Tokenizer.decode is deprecated: use tokenizer.transformers.decode(...)",
                      DeprecationWarning, stacklevel=2)
        return self.transformers.decode(ids, **kwargs)

    def __repr__(self) -> str:
        return f"minisbert.Tokenizer({str(self.folder)!r}, BERT WordPiece, transformers loaded: {self._transformers is not None})"


# ---------------------------------------------------------------------- tokenizing, for either kind


@dataclass
class Truncation:
    """How many inputs of a call were cut to `max_length` tokens.

    `rows`, when a list, also keeps each tokenized row's flag (cut or not), so that a call which
    tokenizes each distinct text once (encode, predict) can count per input with `count_inputs`.
    """

    count: int = 0
    total: int = 0
    max_length: int = 0
    rows: list[bool] | None = None

    def add(self, batch) -> None:
        cut = [bool(e.overflowing) for e in getattr(batch, "encodings", None) or []]
        self.count += sum(cut)
        self.total += len(cut)
        if self.rows is not None:
            self.rows += cut

    def count_inputs(self, index) -> None:
        """Count per input, input i having been tokenized as row index[i] of `rows`."""
        self.count = sum(self.rows[i] for i in index)
        self.total = len(index)

    def report(self, what: str) -> None:
        if self.count:
            logger.warning(
                "%s: %d of %d inputs were longer than max_length=%d tokens and were truncated to it",
                what, self.count, self.total, self.max_length,
            )


def tokenize(tokenizer, texts, pairs=None, *, max_length: int | None = None, padding: bool = False,
             return_tensors: bool = False, add_special_tokens: bool = True, truncation: Truncation | None = None):
    """What every minisbert caller tokenizes through, for a Tokenizer and a transformers tokenizer alike:
    {"input_ids", "attention_mask", ...} as lists (flat for one str) or (B, L) tensors, with `.encodings`;
    truncated to `max_length` (longest_first) when given, padded to the longest when `padding`. The inputs
    cut to `max_length` are added to `truncation` when given."""
    if isinstance(tokenizer, Tokenizer):
        batch = tokenizer._tokenize(texts, pairs, max_length, padding, return_tensors, add_special_tokens)
    else:
        batch = tokenizer(texts, pairs, add_special_tokens=add_special_tokens, padding=padding,
                          truncation="longest_first" if max_length is not None else False, max_length=max_length,
                          return_tensors="pt" if return_tensors else None)
    if truncation is not None:
        truncation.max_length = max_length
        truncation.add(batch)
    return batch


def prompt_length(tokenizer, prompt: str | None) -> int:
    """Tokens of `prompt` incl. the leading special token, excl. a trailing one (ST's count)."""
    if not prompt:
        return 0
    ids = tokenize(tokenizer, prompt)["input_ids"]
    return len(ids) - (1 if ids and ids[-1] in set(tokenizer.all_special_ids) else 0)


def save(tokenizer, folder: Path, *, model_max_length: int) -> None:
    """Write the tokenizer files with model_max_length set to the model's max length (as ST saves them),
    leaving the tokenizer's own setting as it was."""
    old = tokenizer.model_max_length
    tokenizer.model_max_length = model_max_length
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.model_max_length = old


# ---------------------------------------------------------------------- loading


def load_tokenizer(folder: Path, *, do_lower_case: bool = False, native: bool = False):
    """The folder's tokenizer. `native`: a Tokenizer where it equals transformers' (a BERT WordPiece tokenizer,
    read without importing transformers), else AutoTokenizer's."""
    if native:
        tok = load(folder, do_lower_case=do_lower_case)
        if tok is not None:
            return tok
    return load_transformers_tokenizer(folder, do_lower_case=do_lower_case)


def load_transformers_tokenizer(folder: Path, *, do_lower_case: bool = False):
    """AutoTokenizer's tokenizer of `folder` (a fast one), or a ModelLoadError that says what is missing."""
    from transformers import AutoTokenizer

    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{folder} has no tokenizer files: expected one of {', '.join(TOKENIZER_FILES)} "
            f"(save the tokenizer with the model)"
        )
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        raise ModelLoadError(
            f"could not load a tokenizer from {folder}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            f" (a model folder needs tokenizer.json or the tokenizer's vocabulary files)"
        ) from e
    if not getattr(tok, "is_fast", False):
        raise ModelLoadError(f"{folder}: minisbert needs a fast (tokenizers) tokenizer; found {type(tok).__name__}")
    if do_lower_case:
        prepend_lowercase(tok.backend_tokenizer)
    return tok


def load(folder: Path, do_lower_case: bool = False) -> Tokenizer | None:
    """The folder's BERT tokenizer without transformers, or None where this would not equal transformers'."""
    config_file, json_file = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if not (config_file.is_file() and json_file.is_file()):
        return None
    try:
        files = {n: (folder / n).read_bytes() for n in SNAPSHOT_FILES if (folder / n).is_file()}
        config = json.loads(files["tokenizer_config.json"].decode("utf-8"))
        text = files["tokenizer.json"].decode("utf-8")
        saved = json.loads(text)
    except (OSError, KeyError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # transformers reports it
    if not isinstance(config, dict) or config.get("tokenizer_class") not in BERT_CLASSES:
        return None
    if any(config.get(k) for k in UNSUPPORTED_SETTINGS):
        return None
    tokens = {k: config.get(k, BERT_DEFAULTS[k]) for k in NAMED_SPECIAL}
    if not all(isinstance(t, str) for t in tokens.values()):
        return None  # AddedToken dicts with their own flags
    model = saved.get("model") if isinstance(saved, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if not isinstance(vocab, dict):
        return None
    expected = _expected_parts(config, tokens, vocab)
    if {k: v for k, v in model.items() if k != "vocab"} != expected.pop("model") or any(
            saved.get(k) != v for k, v in expected.items()):
        return None
    if any(t not in vocab for t in tokens.values()) or not _added_tokens_match(config, tokens, vocab, saved.get("added_tokens")):
        return None
    from tokenizers import Tokenizer as Backend

    backend = Backend.from_str(text)
    if do_lower_case:
        prepend_lowercase(backend)
    # transformers: the config's setting, else tokenizer.json's padding / truncation section, else its default
    padding, truncation = saved.get("padding") or {}, saved.get("truncation") or {}
    from_json = (padding and not config.get("padding_side")) or (truncation and not config.get("truncation_side"))
    if from_json and not _sides_from_tokenizer_json():
        return None
    settings = {
        "name_or_path": str(folder),
        "pad_token": tokens["pad_token"],
        "pad_token_id": vocab[tokens["pad_token"]],
        "pad_token_type_id": padding.get("pad_type_id", 0),
        "padding_side": config.get("padding_side") or str(padding.get("direction", "right")).lower(),
        "truncation_side": config.get("truncation_side") or str(truncation.get("direction", "right")).lower(),
        "model_max_length": int(config.get("model_max_length", VERY_LARGE_INTEGER)),
        "all_special_ids": [vocab[tokens[k]] for k in NAMED_SPECIAL],
    }
    if settings["padding_side"] not in ("right", "left") or settings["truncation_side"] not in ("right", "left"):
        return None
    return Tokenizer(backend, settings, folder, do_lower_case, files)


def _sides_from_tokenizer_json() -> bool:
    """Whether the installed transformers takes a padding / truncation side (and pad type id) that the config
    does not set from tokenizer.json's sections, as load() does: 4.x uses the file as saved, 5.3+ carries its
    sections through the rebuild (tokenization_utils_tokenizers.py, `_json_padding`); 5.0-5.2 drop them."""
    from .versions import transformers_version

    major, minor = transformers_version()
    return major < 5 or (major, minor) >= (5, 3)


def prepend_lowercase(backend) -> None:
    """ST's legacy do_lower_case: a Lowercase normalizer before the tokenizer's own
    (st/base/modules/transformer.py:886-904), on a tokenizers.Tokenizer of either kind of tokenizer."""
    from tokenizers import normalizers

    current = backend.normalizer
    backend.normalizer = normalizers.Sequence([normalizers.Lowercase()] + ([current] if current else []))


def _expected_parts(config: dict, tokens: dict, vocab: dict) -> dict:
    """tokenizer.json's sections as transformers 5's BertTokenizer builds them from `config` (its model
    section without the vocabulary, which is the file's own)."""
    ids = {k: vocab.get(tokens[k]) for k in ("cls_token", "sep_token")}
    cls, sep = tokens["cls_token"], tokens["sep_token"]
    special = lambda token, type_id: {"SpecialToken": {"id": token, "type_id": type_id}}  # noqa: E731
    sequence = lambda name, type_id: {"Sequence": {"id": name, "type_id": type_id}}  # noqa: E731
    return {
        "model": {"type": "WordPiece", "unk_token": tokens["unk_token"], "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100},
        "normalizer": {"type": "BertNormalizer", "clean_text": True,
                       "handle_chinese_chars": config.get("tokenize_chinese_chars", True),
                       "strip_accents": config.get("strip_accents"), "lowercase": config.get("do_lower_case", True)},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special(cls, 0), sequence("A", 0), special(sep, 0)],
            "pair": [special(cls, 0), sequence("A", 0), special(sep, 0), sequence("B", 1), special(sep, 1)],
            "special_tokens": {cls: {"id": cls, "ids": [ids["cls_token"]], "tokens": [cls]},
                               sep: {"id": sep, "ids": [ids["sep_token"]], "tokens": [sep]}},
        },
    }


def _added_tokens_match(config: dict, tokens: dict, vocab: dict, added) -> bool:
    """tokenizer.json's added tokens are those transformers adds: the config's added_tokens_decoder, and each
    named special token (special, not normalized, no strip) not already among them, at its vocabulary id."""
    if not isinstance(added, list):
        return False
    flags = ("content", "special", "single_word", "lstrip", "rstrip", "normalized")
    saved = {(t.get("id"),) + tuple(t.get(f) for f in flags) for t in added if isinstance(t, dict)}
    if len(saved) != len(added):
        return False
    declared = config.get("added_tokens_decoder") or {}
    if not isinstance(declared, dict):
        return False
    try:
        expected = {(int(i),) + tuple(d[f] for f in flags) for i, d in declared.items()}
    except (KeyError, TypeError, ValueError):
        return False
    have = {t[1] for t in expected}
    for token in tokens.values():
        if token not in have:
            expected.add((vocab[token], token, True, False, False, False, False))
            have.add(token)
    return expected == saved
