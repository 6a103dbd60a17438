"""A BERT WordPiece tokenizer read from tokenizer.json with the `tokenizers` library alone.

Why: every `import transformers` scans its model folders to build its lazy import table (about 1 s on the
2-core CPU), and AutoTokenizer adds 0.5-0.8 s more; train.py's launch and `encode()` from a cold start
need only the Rust tokenizer, which loads in ~50 ms.

`load(folder)` returns a Tokenizer only where the result is provably the one transformers builds, and
None otherwise (the caller then uses AutoTokenizer). transformers 4 used tokenizer.json as saved;
transformers 5 rebuilds a BertTokenizer from the vocabulary and tokenizer_config.json
(models/bert/tokenization_bert.py). So the gate is: tokenizer_config.json names BertTokenizer(Fast), and
every part of tokenizer.json (model, normalizer, pre-tokenizer, post-processor, special tokens) equals
what that rebuild makes from the config. Then both generations of transformers tokenize as this does;
padding / truncation sides that only tokenizer.json sets count only where the installed transformers
reads them there (4.x, 5.3+; `_sides_from_tokenizer_json`).

The encoding path (`encode`, which also takes a transformers tokenizer) covers what minisbert asks of a
tokenizer: texts or (a, b) pairs, optional truncation to max_length (longest_first) and padding to the
longest, lists or (B, L) int64 tensors, and the Rust encodings (for truncation counts). Any other attribute (`decode`, `save_pretrained`,
`add_tokens`, `vocab`, ...) loads the transformers tokenizer once, and from then on every call, `encode`
included, goes to it, so changes made through it are never bypassed. It is built from the tokenizer files as
they were when the model was loaded, kept in memory (as sentence-transformers keeps its tokenizer), so a model
still saves after its source folder was moved or deleted (a `--model` folder removed during training).
"""

from __future__ import annotations

import json
from pathlib import Path

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


class Encoded(dict):
    """{"input_ids", "token_type_ids", "attention_mask"} as lists (or tensors), plus the Rust `encodings`."""

    def __init__(self, data: dict, encodings: list):
        super().__init__(data)
        self.encodings = encodings


class Tokenizer:
    """The fast encoding path of a BERT tokenizer; see the module docstring for what it covers.

    The settings the encoding path reads (pad token and id, padding and truncation side, model_max_length,
    the special ids) are answered from tokenizer_config.json until the transformers tokenizer is loaded,
    and from it afterwards, so a change made through it (a new pad token, say) is what minisbert uses.
    Of them, model_max_length, padding_side and truncation_side can be set before it is loaded (and are
    handed to it then); setting anything else loads it and sets it there.
    """

    is_fast = True
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    SETTABLE = ("model_max_length", "padding_side", "truncation_side")
    _OWN = ("_backend", "_folder", "_files", "_do_lower_case", "_transformers", "_native")

    def __init__(self, backend, settings: dict, folder: Path, do_lower_case: bool = False, files: dict | None = None):
        """`settings`: what transformers' tokenizer of `folder` would answer for the names in it (`load`);
        `files`: {name: bytes} of the folder's tokenizer files (default: read now)."""
        if files is None:
            files = {n: (folder / n).read_bytes() for n in SNAPSHOT_FILES if (folder / n).is_file()}
        self.__dict__.update({
            "_backend": backend,  # tokenizers.Tokenizer
            "_folder": folder,
            "_files": files,
            "_do_lower_case": do_lower_case,
            "_transformers": None,  # the transformers tokenizer, once anything beyond `encode` was asked for
            "_native": dict(settings),
        })

    # ------------------------------------------------------------------ encoding

    def encode_texts(self, texts, pairs=None, *, max_length: int | None = None, padding: bool = False,
                     return_tensors: bool = False, add_special_tokens: bool = True) -> Encoded:
        """`texts` (a str or a list) [with `pairs`] -> ids, type ids and mask; truncated to `max_length`
        (longest_first) when given, padded to the longest when `padding`. A str gives flat lists."""
        if self._transformers is not None:
            return _transformers_encode(self._transformers, texts, pairs, max_length, padding, return_tensors,
                                        add_special_tokens)
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if pairs is not None:
            batch = list(zip(batch, [pairs] if single else list(pairs)))
        backend, native = self._backend, self._native
        if max_length is None:
            backend.no_truncation()
        else:
            backend.enable_truncation(max_length, stride=0, strategy="longest_first", direction=native["truncation_side"])
        if padding:
            backend.enable_padding(direction=native["padding_side"], pad_id=native["pad_token_id"],
                                   pad_type_id=native["pad_token_type_id"], pad_token=native["pad_token"])
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

    def __call__(self, text, text_pair=None, **kwargs):
        """The transformers tokenizer's own __call__ (all its options, a BatchEncoding back)."""
        return self.transformers(text, text_pair, **kwargs)

    # ------------------------------------------------------------------ everything else: transformers

    @property
    def transformers(self):
        """The transformers tokenizer of this folder (AutoTokenizer), loaded on first use from the files as they
        were at load: written to a temporary folder, which transformers no longer needs once it has loaded."""
        if self._transformers is None:
            import tempfile

            from .backbone import load_transformers_tokenizer

            with tempfile.TemporaryDirectory(prefix="minisbert-tokenizer-") as tmp:
                for name, data in self._files.items():
                    (Path(tmp) / name).write_bytes(data)
                tok = load_transformers_tokenizer(Path(tmp), do_lower_case=self._do_lower_case)
            tok.name_or_path = str(self._folder)
            for name in self.SETTABLE:
                setattr(tok, name, self._native[name])
            self.__dict__["_transformers"] = tok
        return self._transformers

    def __getattr__(self, name):  # only for names not found on the object or its class
        if name.startswith("__") or name in self._OWN:  # copy/pickle protocol; fields not yet restored
            raise AttributeError(name)
        if self._transformers is None and name in self._native:
            return self._native[name]
        return getattr(self.transformers, name)

    def __setattr__(self, name, value):
        if self._transformers is None and name in self.SETTABLE:
            self._native[name] = value
        else:
            setattr(self.transformers, name, value)

    def __repr__(self) -> str:
        return f"minisbert.Tokenizer({str(self._folder)!r}, BERT WordPiece, transformers loaded: {self._transformers is not None})"


VERY_LARGE_INTEGER = int(1e30)  # transformers' model_max_length when the config has none


def encode(tokenizer, texts, pairs=None, *, max_length: int | None = None, padding: bool = False,
           return_tensors: bool = False, add_special_tokens: bool = True):
    """What every minisbert caller tokenizes through, for a Tokenizer and a transformers tokenizer alike:
    {"input_ids", "attention_mask", ...} as lists (flat for one str) or (B, L) tensors, with `.encodings`."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.encode_texts(texts, pairs, max_length=max_length, padding=padding,
                                      return_tensors=return_tensors, add_special_tokens=add_special_tokens)
    return _transformers_encode(tokenizer, texts, pairs, max_length, padding, return_tensors, add_special_tokens)


def _transformers_encode(tokenizer, texts, pairs, max_length, padding, return_tensors, add_special_tokens):
    return tokenizer(texts, pairs, add_special_tokens=add_special_tokens, padding=padding,
                     truncation="longest_first" if max_length is not None else False, max_length=max_length,
                     return_tensors="pt" if return_tensors else None)


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
