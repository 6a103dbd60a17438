"""CrossEncoder: a sequence-classification backbone that scores (query, document) pairs jointly.

Reads the three ST cross-encoder generations (spec 1.10): a plain `*ForSequenceClassification`
folder with the activation in config.json (`sbert_ce_default_activation_function` before ST 4,
`sentence_transformers.activation_fn` in 4.0-5.3) and the 5.4+ folder with modules.json and
config_sentence_transformers.json. Writes the 4.0-5.3 form, which every version loads.
A plain backbone (or a bi-encoder folder) gets a new, randomly initialised head.

Shapes: B pairs, L tokens, C labels.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint as ckpt
from . import fast
from . import tokenizer as tokenization
from .backbone import (
    backbone_input_names, check_config, check_texts, default_device, in_batches, load_backbone, max_length_for,
    quiet_transformers, set_checkpointing,
)
from .checkpoint import activation_from_path
from .tokenizer import Truncation, load_tokenizer

SIGMOID = "torch.nn.modules.activation.Sigmoid"
IDENTITY = "torch.nn.modules.linear.Identity"


def _saved_activation(folder: Path, config) -> str | None:
    """The activation a folder asks for, newest ST convention first (st/cross_encoder/model.py:358-380)."""
    st_cfg = ckpt.json_object(folder / "config_sentence_transformers.json", {})
    if st_cfg.get("activation_fn"):
        return st_cfg["activation_fn"]
    nested = getattr(config, "sentence_transformers", None) or {}
    if isinstance(nested, dict) and nested.get("activation_fn"):
        return nested["activation_fn"]
    return getattr(config, "sbert_ce_default_activation_function", None)


class CrossEncoder(nn.Module):
    """Scores text pairs: sentence-transformers' CrossEncoder, in one class."""

    def __init__(self, backbone: nn.Module, tokenizer, *, max_length: int = 512, activation_fn: str | None = None):
        super().__init__()
        self.backbone = backbone  # a *ForSequenceClassification: (B, L) ids -> (B, C) logits
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.activation_fn_name = activation_fn or (SIGMOID if self.num_labels == 1 else IDENTITY)
        self.activation = activation_from_path(self.activation_fn_name)
        self.input_names = backbone_input_names(backbone)  # the features its forward reads (collate keeps these)

    @property
    def model(self) -> nn.Module:
        """Deprecated name of `backbone` (BiEncoder's name for the same thing)."""
        warnings.warn("CrossEncoder.model is deprecated: use CrossEncoder.backbone", DeprecationWarning, stacklevel=2)
        return self.backbone

    @classmethod
    def from_pretrained(
        cls, name_or_path, *, num_labels: int | None = None, max_length: int | None = None,
        activation_fn: str | None = None, device=None, dtype=None, allow_pickle: bool = False, native: bool = True,
    ) -> "CrossEncoder":
        """Load an ST cross-encoder folder of any generation, or a backbone with a new head (num_labels=1).
        A ModernBERT classifier is built by minisbert.modernbert (the same network and parameter names, run
        on real tokens only); `native=False` loads every model with transformers."""
        from transformers import AutoConfig

        folder = ckpt.resolve_model_dir(name_or_path)
        root = folder
        if (folder / "modules.json").exists():  # a 5.4+ CE folder, or a bi-encoder whose backbone we reuse
            root = ckpt.read_modules(folder)[0][1]
        check_config(root)  # a config.json that is not JSON, or holds impossible sizes, named before transformers reads it
        config = AutoConfig.from_pretrained(root)
        is_classifier = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
        kwargs = {}
        if not is_classifier or num_labels is not None:
            kwargs["num_labels"] = num_labels or 1
        backbone = load_backbone(root, "AutoModelForSequenceClassification", allow_pickle=allow_pickle, dtype=dtype,
                                 native=native, config_kwargs=kwargs)
        tokenizer = load_tokenizer(root)
        saved_len = (ckpt.read_json(root / "sentence_bert_config.json", {}) or {}).get("max_seq_length") if not is_classifier else None
        ce = cls(
            backbone, tokenizer,
            max_length=max_length_for(tokenizer, backbone.config, saved_len, max_length, pairs=True, where=str(root)),
            activation_fn=activation_fn or (_saved_activation(folder, backbone.config) if is_classifier else None),
        )
        ce.name_or_path = str(name_or_path)
        return ce.to(default_device(device)).eval()

    @property
    def num_labels(self) -> int:
        return self.backbone.config.num_labels

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ training path

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each backbone layer's activations in backward instead of keeping them (as
        BiEncoder.gradient_checkpointing_enable)."""
        set_checkpointing(self.backbone, True, gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        set_checkpointing(self.backbone, False)

    activation_checkpointing_enable = gradient_checkpointing_enable
    activation_checkpointing_disable = gradient_checkpointing_disable

    def tokenize(self, pairs, truncation: Truncation | None = None) -> dict:
        """(query, document) pairs -> {"input_ids" (B, L), "attention_mask" (B, L), ...}."""
        a = [p[0] for p in pairs]
        b = [p[1] for p in pairs]
        batch = tokenization.tokenize(self.tokenizer, a, b, padding=True, max_length=self.max_length,
                                      return_tensors=True, truncation=truncation)
        return {k: batch[k] for k in self.input_names if k in batch}

    def forward(self, features: dict) -> torch.Tensor:
        """Raw logits (B, C); no activation (losses such as bce take logits)."""
        inputs = {k: features[k].to(self.device) for k in self.input_names if k in features}
        logits = fast.classifier_logits(self.backbone, inputs)  # the fast path (minisbert.fast) where it applies
        return logits if logits is not None else self.backbone(**inputs).logits

    # ------------------------------------------------------------------ inference

    @torch.inference_mode()
    def predict(
        self, pairs, batch_size: int = 32, *, activation_fn=None, apply_softmax: bool = False,
        convert_to_tensor: bool = False, show_progress_bar: bool | None = None,
    ):
        """Pairs -> scores with the activation applied: (N,) for one label, (N, C) otherwise.

        A single pair (a tuple of two strings) gives a scalar. Each distinct pair is scored once, in
        length-sorted batches, and scores (float32) are returned in input order.
        """
        # One pair, as a tuple or a list of two strings (ST: a first item that is a string makes one pair).
        single = isinstance(pairs, (tuple, list)) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs)
        pairs = check_texts([pairs] if single else pairs, "pairs")
        if not pairs:  # ST returns an empty result too: (0,) for one label, (0, C) otherwise
            empty = torch.zeros((0,) if self.num_labels == 1 else (0, self.num_labels), device=self.device)
            return empty if convert_to_tensor else empty.cpu().numpy()
        for i, p in enumerate(pairs):
            if not isinstance(p, (tuple, list)) or len(p) != 2:
                raise TypeError(f"pairs[{i}] must be a (query, document) pair of strings, got {p!r:.60}")
        act = activation_fn if activation_fn is not None else self.activation

        def run(batch, truncation):
            scores = act(self.forward(self.tokenize(batch, truncation)).float())  # (b, C)
            return torch.softmax(scores, dim=1) if apply_softmax and scores.shape[1] > 1 else scores

        scores = in_batches(self, pairs, batch_size, run, "predict", show_progress_bar, fast.inference(self))  # (N, C)
        if self.num_labels == 1:
            scores = scores[:, 0]
        if single:
            scores = scores[0]
        if convert_to_tensor:
            return scores.clone()
        return scores.cpu().numpy()[()]  # [()]: one pair with one label is an np.float32, as in ST

    def rank(self, query: str, documents, top_k: int | None = None, return_documents: bool = False, batch_size: int = 32,
             show_progress_bar: bool | None = None) -> list[dict]:
        """Documents sorted by activated score: [{"corpus_id", "score"[, "text"]}], best first."""
        if self.num_labels != 1:
            raise ValueError(f"rank() needs a model with one label, this one has {self.num_labels}")
        documents = check_texts(documents, "documents")
        scores = self.predict([(query, d) for d in documents], batch_size, show_progress_bar=show_progress_bar)
        order = sorted(range(len(documents)), key=lambda i: -float(scores[i]))
        ranked = [{"corpus_id": i, "score": float(scores[i])} | ({"text": documents[i]} if return_documents else {}) for i in order]
        return ranked[:top_k] if top_k is not None else ranked

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, path, *, model_card: str | None = None) -> Path:
        """A plain transformers folder + the activation where ST 2.x-6.x all look for it; atomic."""
        from .model_card import cross_encoder_card

        with ckpt.atomic_dir(path) as tmp:
            with quiet_transformers():
                self.backbone.save_pretrained(tmp)
            config = json.loads((tmp / "config.json").read_text())
            config["sentence_transformers"] = {"activation_fn": self.activation_fn_name, "version": "4.1.0"}
            config["sbert_ce_default_activation_function"] = self.activation_fn_name
            ckpt.write_json(tmp / "config.json", config)
            tokenization.save(self.tokenizer, tmp, model_max_length=self.max_length)
            (tmp / "README.md").write_text(model_card or cross_encoder_card(self), encoding="utf-8")
        return Path(path)
