"""The transformers side shared by BiEncoder and CrossEncoder: loading a backbone with clear errors,
its max length, batched inference, and choosing device and dtype. (Tokenizers: tokenizer.py.)
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import sys
from pathlib import Path

import torch

from .checkpoint import ModelLoadError, check_safetensors, json_object, weight_files
from .tokenizer import Truncation

logger = logging.getLogger("minisbert")


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


INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")  # the features a backbone's forward may take


def backbone_input_names(backbone) -> tuple[str, ...]:
    """The features of INPUT_NAMES that `backbone.forward` takes, in that order: a model's `input_names`."""
    accepted = inspect.signature(backbone.forward).parameters
    return tuple(k for k in INPUT_NAMES if k in accepted)


def load_backbone(folder: Path, auto_class: str, *, allow_pickle: bool, dtype=None, native: bool = False, **kwargs):
    """transformers' `auto_class` ("AutoModel", ...) `.from_pretrained(folder)` with the weights checked first
    and errors made readable. `native`: a BERT-family encoder comes from bert.py instead (the same network
    and parameters, without importing transformers' modeling code), where bert.load reproduces it, and a
    ModernBERT encoder or classifier from modernbert.py (the same network, run on real tokens only)."""
    check_config(folder)
    sharded = sorted(folder.glob("*.safetensors.index.json"))
    if sharded:
        for shard in sorted(folder.glob("*.safetensors")):
            check_safetensors(shard)
    else:
        files = weight_files(folder, allow_pickle)  # refuses pickle-only folders unless allowed
        allow_pickle = allow_pickle and files[0].suffix == ".bin"
    if native:
        from . import bert, modernbert

        model = bert.load(folder) if auto_class == "AutoModel" else None
        if model is None:
            model = modernbert.load(folder, auto_class, kwargs.get("config_kwargs"))
        if model is not None:
            return model.to(dtype) if dtype is not None else model
    import transformers

    try:
        with quiet_transformers():
            config = transformers.AutoConfig.from_pretrained(folder, **kwargs.pop("config_kwargs", {}))
            model, info = getattr(transformers, auto_class).from_pretrained(
                folder, config=config, use_safetensors=not allow_pickle, output_loading_info=True, **kwargs)
        check_loaded_weights(folder, model, info)
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


# config.json sizes every transformers encoder reads as positive integers (0 divides by zero, "384" breaks later).
CONFIG_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings")


def check_config(folder: Path) -> dict:
    """config.json as a dict, or one ModelLoadError naming the file and the field that cannot work."""
    path = folder / "config.json"
    values = json_object(path)
    if values is None:
        raise ModelLoadError(f"{folder} has no config.json: it is not a transformers model folder")
    for key in CONFIG_SIZES:
        value = values.get(key)
        if key in values and not (type(value) is int and value > 0) and not (value is None and key == "max_position_embeddings"):
            raise ModelLoadError(f"{path}: {key!r} must be a positive integer, got {value!r}")
    return values


def check_loaded_weights(folder: Path, model, info: dict) -> None:
    """transformers initializes missing weights at random and drops unused ones with a log line; a config.json
    that does not match the weights (num_hidden_layers 3 over 6 layers of weights) would then train a different
    model. Allowed: a new head on a backbone (weights outside the base model) and the pooler, as transformers
    initializes it; anything else missing or unused inside the base model is an error naming it."""
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, "base_model", model)
    children = {name for name, _ in base.named_children()}

    def in_base(key: str, of_loaded_model: bool) -> str | None:
        """`key` relative to the base model when it belongs there, else None."""
        if key.startswith(prefix + "."):
            key = key[len(prefix) + 1:]
        elif of_loaded_model and base is not model:
            return None  # a head weight of the loaded model (classifier.*): a new head is initialized
        return key if key.split(".")[0] in children else None

    missing = sorted(k for k in info.get("missing_keys", ()) if (b := in_base(k, True)) and not b.startswith("pooler."))
    unused = sorted(k for k in info.get("unexpected_keys", ()) if (b := in_base(k, False)) and not b.endswith("_ids"))
    if missing or unused:
        found = [f"{what} {keys[:6]}" + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
                 for what, keys in (("missing weights", missing), ("unused weights", unused)) if keys]
        layers = getattr(model.config, "num_hidden_layers", None)
        raise ModelLoadError(
            f"{folder / 'config.json'} does not match the weights in {folder}: {'; '.join(found)}"
            + (f" (config.json says num_hidden_layers {layers})" if layers else "")
        )


def set_checkpointing(model, enable: bool, kwargs: dict | None = None) -> None:
    """Gradient (activation) checkpointing on or off for a backbone: bert.py's and modernbert.py's flag, or
    transformers' own (under its 5.x name, activation_checkpointing_*, where it has it; non-reentrant by
    default). The fast path reads the same flags and recomputes its layers on the packed tokens."""
    kwargs = {"use_reentrant": False} if kwargs is None else kwargs
    if enable:
        on = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        on(kwargs)
    else:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()


def max_length_for(tokenizer, config, saved, override: int | None, *, pairs: bool = False, where: str = "the model") -> int:
    """The maximum tokens per input: the user's, else the saved one, else min(tokenizer, positions).

    A length beyond the model's position embeddings is capped at them with a warning (a longer input
    would index past them); one that leaves no room for text beside the special tokens is refused (below
    them the tokenizer would not truncate at all). `where` names the folder in messages."""
    positions = getattr(config, "max_position_embeddings", None)
    limit = None
    if isinstance(positions, int) and positions > 0:
        # RoBERTa-style models reserve padding_idx + 1 positions (514 positions -> 512 tokens).
        roberta = getattr(config, "model_type", None) in ("roberta", "xlm-roberta", "camembert")
        limit = positions - ((getattr(config, "pad_token_id", 0) or 0) + 1 if roberta else 0)
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, int) or override <= 0:
            raise ValueError(f"max_length must be a positive integer, got {override!r}")
        length, what = int(override), "max_length"
    elif saved is not None:
        integral = isinstance(saved, int) or (isinstance(saved, float) and saved.is_integer())
        if isinstance(saved, bool) or not integral or saved <= 0:
            raise ModelLoadError(f"{where}: the saved max_seq_length (sentence_bert_config.json) must be a positive "
                                 f"integer, got {saved!r}")
        length, what = int(saved), "the saved max_seq_length"
    else:
        length = tokenizer.model_max_length
        return int(min(length, limit) if limit else length)
    if limit and length > limit:
        logger.warning("%s %d exceeds the %d positions of %s: using max_length %d", what, length, limit, where, limit)
        length = limit
    specials = tokenizer.num_special_tokens_to_add(pair=pairs)
    if length <= specials:
        raise ValueError(f"{what} {length} leaves no room for text: every {'pair' if pairs else 'input'} of {where} "
                         f"carries {specials} special tokens; use a max_length of at least {specials + 1}")
    return length


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


def in_batches(model, items: list, batch_size: int, run, what: str, show_progress_bar: bool | None,
               scope=contextlib.nullcontext()) -> torch.Tensor:
    """Inference over `items` (texts or pairs): `run(batch, truncation) -> (b, ...)` on each batch of the
    distinct items, longest first (see `distinct_by_length`), in eval mode, inside `scope` (the fast
    path's, minisbert.fast.inference(model), where the model uses it) -> the rows in input order, (N, ...).
    Truncation is counted per input, reported once, and kept as `model.last_truncation`."""
    distinct, index = distinct_by_length(items)
    truncation = Truncation(rows=[])
    out = []
    starts = range(0, len(distinct), batch_size)
    was_training = model.training
    model.eval()
    try:
        with scope:
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
