"""The transformers side shared by BiEncoder and CrossEncoder: loading a backbone and its tokenizer
with clear errors, tokenizing with a truncation count, and choosing device and dtype.

Truncation is never silent (ST #4060): `tokenize` counts the inputs that were cut, and callers
report the count once per call or run.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import packing
from .checkpoint import ModelLoadError, check_safetensors, weight_files

logger = logging.getLogger("minisbert")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model")


def transformers_version() -> tuple[int, int]:
    """(major, minor) of the installed transformers, read without importing it (that import takes ~1 s)."""
    from importlib.metadata import version

    major, minor = (int(part) for part in version("transformers").split(".")[:2])
    return major, minor


def default_device(device=None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' per-tensor progress bars ("Loading weights", "Writing model shards"); nothing
    to silence (and nothing imported) while transformers is not loaded."""
    if "transformers" not in sys.modules:
        yield
        return
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def load_backbone(folder: Path, auto_class: str, *, allow_pickle: bool, dtype=None, native: bool = False, **kwargs):
    """transformers' `auto_class` ("AutoModel", ...) `.from_pretrained(folder)` with the weights checked first
    and errors made readable. `native`: a BERT-family encoder comes from bert.py instead (the same network
    and parameters, without importing transformers' modeling code), where bert.load reproduces it."""
    if not (folder / "config.json").exists():
        raise ModelLoadError(f"{folder} has no config.json: it is not a transformers model folder")
    sharded = sorted(folder.glob("*.safetensors.index.json"))
    if sharded:
        for shard in sorted(folder.glob("*.safetensors")):
            check_safetensors(shard)
    else:
        files = weight_files(folder, allow_pickle)  # refuses pickle-only folders unless allowed
        allow_pickle = allow_pickle and files[0].suffix == ".bin"
    if native:
        from . import bert

        model = bert.load(folder)
        if model is not None:
            return model.to(dtype) if dtype is not None else model
    import transformers

    try:
        with quiet_transformers():
            config = transformers.AutoConfig.from_pretrained(folder, **kwargs.pop("config_kwargs", {}))
            model = getattr(transformers, auto_class).from_pretrained(folder, config=config, use_safetensors=not allow_pickle, **kwargs)
    except ModelLoadError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()
        raise ModelLoadError(
            f"could not load the transformers model in {folder}: {type(e).__name__}: "
            f"{first[0] if first else ''}{' ...' if len(first) > 1 else ''} "
            f"(check that config.json matches the weights)"
        ) from e
    return model.to(dtype) if dtype is not None else model


def load_tokenizer(folder: Path, *, do_lower_case: bool = False, native: bool = False):
    """The folder's tokenizer. `native`: tokenizer.Tokenizer where it equals transformers' (a BERT
    WordPiece tokenizer, read without importing transformers), else AutoTokenizer's."""
    if native:
        from . import tokenizer

        tok = tokenizer.load(folder, do_lower_case=do_lower_case)
        if tok is not None:
            return tok
    return load_transformers_tokenizer(folder, do_lower_case=do_lower_case)


def load_transformers_tokenizer(folder: Path, *, do_lower_case: bool = False):
    from transformers import AutoTokenizer

    # transformers 5 silently builds an empty vocabulary when these are missing: refuse instead.
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
        from .tokenizer import prepend_lowercase

        prepend_lowercase(tok.backend_tokenizer)
    return tok


def max_length_for(tokenizer, config, saved: int | None, override: int | None) -> int:
    """The maximum tokens per input: the user's, else the saved one, else min(tokenizer, positions)."""
    if override is not None:
        if override <= 0:
            raise ValueError(f"max_length must be positive, got {override}")
        return int(override)
    if saved:
        return int(saved)
    length = tokenizer.model_max_length
    positions = getattr(config, "max_position_embeddings", None)
    if positions and positions > 0:
        # RoBERTa-style models reserve padding_idx + 1 positions (514 positions -> 512 tokens).
        roberta = config.model_type in ("roberta", "xlm-roberta", "camembert")
        length = min(length, positions - ((getattr(config, "pad_token_id", 0) or 0) + 1 if roberta else 0))
    return int(length)


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


def check_texts(texts, what: str = "texts") -> list:
    """A list of strings (or pairs of strings), or one clear error naming the bad item."""
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings; got one string (wrap it in a list)")
    texts = list(texts)
    for i, t in enumerate(texts):
        items = t if isinstance(t, (tuple, list)) else (t,)
        if not all(isinstance(x, str) for x in items):
            raise TypeError(f"{what}[{i}] is {type(t).__name__} {t!r:.60}; expected a string")
    return texts


def length_order(texts) -> list[int]:
    """Indices by descending character length (ST's encode order), so batches pad little."""
    return sorted(range(len(texts)), key=lambda i: -sum(len(x) for x in (texts[i] if isinstance(texts[i], (tuple, list)) else (texts[i],))))


def distinct_by_length(items) -> tuple[list, list[int]]:
    """The distinct items (strings or pairs) of `items`, longest first as `length_order` sorts them, and
    for each input the position of its item among them: a result computed row by row on the distinct
    items is `result[index]` in input order. Equal inputs are computed once (STS-style data repeats
    sentences: 5,000 sentences of STS-B train hold 4,273 distinct ones); an inference model gives equal
    inputs equal outputs, so this changes nothing but the work."""
    first: dict = {}
    of_input = [first.setdefault(tuple(x) if isinstance(x, list) else x, len(first)) for x in items]  # (N,) into first
    distinct = list(first)
    order = length_order(distinct)
    rank = [0] * len(order)
    for position, j in enumerate(order):
        rank[j] = position
    return [distinct[j] for j in order], [rank[j] for j in of_input]


def in_batches(model, items: list, batch_size: int, run, what: str, show_progress_bar: bool | None) -> torch.Tensor:
    """Inference over `items` (texts or pairs): `run(batch, truncation) -> (b, ...)` on each batch of the
    distinct items, longest first (see `distinct_by_length`), in eval mode, with each linear's inference
    weights made once for the call (`packing.reusing_weights`) -> the rows in input order, (N, ...).
    Truncation is counted per input, reported once, and kept as `model.last_truncation`."""
    distinct, index = distinct_by_length(items)
    truncation = Truncation(rows=[])
    out = []
    starts = range(0, len(distinct), batch_size)
    was_training = model.training
    model.eval()
    try:
        with packing.reusing_weights():
            for start in progress(starts, len(starts), show_progress_bar, what):
                out.append(run(distinct[start:start + batch_size], truncation))
    finally:
        model.train(was_training)
    truncation.count_inputs(index)
    truncation.report(what)
    model.last_truncation = truncation
    return torch.cat(out)[torch.as_tensor(index)]


def progress(iterable, total: int, show: bool | None, desc: str):
    if show is None:
        show = logger.getEffectiveLevel() <= logging.INFO
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc)
