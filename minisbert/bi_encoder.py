"""BiEncoder: a transformers backbone -> pooling -> optional Dense layers -> optional L2 normalize.

One forward, from token ids to (B, D) sentence embeddings, serves training (with grad) and
`encode` (no grad, length-sorted batches, results in input order). Folders of every
sentence-transformers generation load; `save_pretrained` writes the layout ST 2.4-6.2 all load.

Shapes: B batch, L tokens, H backbone width, D embedding width.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import fast
from . import tokenizer as tokenization
from .backbone import (
    backbone_input_names, logger, check_texts, default_device, in_batches, load_backbone, max_length_for,
    quiet_transformers, set_checkpointing,
)
from .checkpoint import activation_from_path
from .pooling import MODES, pool
from .similarity import SIMILARITY_FUNCTIONS, pairwise_similarity, similarity
from .tokenizer import Truncation, load_tokenizer

DEFAULT_ACTIVATION = "torch.nn.modules.activation.Tanh"


class Dense(nn.Module):
    """ST's Dense module: y = activation(x W^T + b), (B, in_features) -> (B, out_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation_function: str | None = DEFAULT_ACTIVATION):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation_function = activation_function or "torch.nn.modules.linear.Identity"
        self.activation = activation_from_path(self.activation_function)

    def forward(self, x):
        return self.activation(self.linear(x))

    def config(self) -> dict:
        return {
            "in_features": self.linear.in_features, "out_features": self.linear.out_features,
            "bias": self.linear.bias is not None, "activation_function": self.activation_function,
        }


def trim_padding(features: dict) -> dict:
    """Drop the trailing columns where no row has a token: {"attention_mask" (b, L), ...} -> (b, L') with L'
    the end of the longest row. Rows cut from a batch (GradCache's chunks) keep the whole batch's width,
    and a forward would carry those pad columns through pooling and its backward. Every (b, L) tensor is
    cut alike; real tokens and their positions (also under left padding, whose trailing columns are all
    real) are unchanged, so the embeddings are too."""
    mask = features["attention_mask"]
    used = mask.any(0).nonzero()  # (L' or fewer, 1)
    width = int(used.max()) + 1 if used.numel() else mask.shape[1]
    if width == mask.shape[1]:
        return features
    return {k: v[:, :width] if isinstance(v, torch.Tensor) and v.shape == mask.shape else v for k, v in features.items()}


class BiEncoder(nn.Module):
    """Embeds texts into vectors: sentence-transformers' SentenceTransformer, in one class."""

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer,
        *,
        pooling=("mean",),
        include_prompt: bool = True,
        dense=(),
        normalize: bool = False,
        max_length: int = 512,
        do_lower_case: bool = False,
        prompts: dict | None = None,
        default_prompt_name: str | None = None,
        similarity_fn_name: str = "cosine",
        truncate_dim: int | None = None,
    ):
        super().__init__()
        pooling = [pooling] if isinstance(pooling, str) else list(pooling)
        if not pooling or any(m not in MODES for m in pooling):
            raise ValueError(f"unknown pooling mode {pooling!r}; expected one or more of {list(MODES)}")
        if similarity_fn_name not in SIMILARITY_FUNCTIONS:
            raise ValueError(f"unknown similarity_fn_name {similarity_fn_name!r}; expected one of {list(SIMILARITY_FUNCTIONS)}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        # Concatenation order: as given (a 5.4+ folder lists it); a set of modes is better sorted by the
        # caller into MODES order, the only order ST's legacy pooling config can express.
        self.pooling = list(dict.fromkeys(pooling))
        self.include_prompt = include_prompt
        self.dense = nn.ModuleList(dense)
        self.normalize = normalize
        self.max_length = int(max_length)
        self.do_lower_case = do_lower_case
        # ST refuses to load a folder whose default prompt is not among its prompts: refuse it before it is saved.
        self.prompts = ckpt.check_prompts(dict(prompts or {}), default_prompt_name, "BiEncoder", ValueError)
        self.default_prompt_name = default_prompt_name
        self.similarity_fn_name = similarity_fn_name
        self.truncate_dim = truncate_dim
        self.input_names = backbone_input_names(backbone)  # the features its forward reads (collate keeps these)
        self._prompt_lengths: dict[str, int] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls, name_or_path, *, pooling=None, normalize=None, max_length=None, device=None, dtype=None,
        allow_pickle: bool = False, native: bool = True,
    ) -> "BiEncoder":
        """Load an ST folder of any generation, a plain transformers checkpoint, or a hub name.

        A plain checkpoint becomes a new bi-encoder with `pooling` (default "mean"; "lasttoken" for
        causal LMs, as ST does) and `normalize` (default False). Arguments given here override
        what the folder says. A BERT-family backbone is built by minisbert.bert (the same network and
        parameter names as transformers' BertModel, loaded without its modeling code), and a BERT
        WordPiece tokenizer by minisbert.tokenizer (tokenizer.json read by `tokenizers`, where it equals
        what transformers builds); `native=False` loads every backbone with transformers' AutoModel and
        every tokenizer with AutoTokenizer.
        """
        folder = ckpt.resolve_model_dir(name_or_path)
        if (folder / "modules.json").exists():
            spec = ckpt.read_sentence_transformer(folder, allow_pickle)
            if spec.get("transformer_task") == "sequence-classification":
                raise ckpt.ModelLoadError(f"{folder} is a cross-encoder folder; load it with minisbert.CrossEncoder")
        else:
            spec = {"transformer_path": folder, "max_length": None, "do_lower_case": False, "pooling": None,
                    "dense": [], "normalize": False, "prompts": {}, "default_prompt_name": None,
                    "similarity_fn_name": "cosine", "truncate_dim": None}
        sub = spec["transformer_path"]
        backbone = load_backbone(sub, "AutoModel", allow_pickle=allow_pickle, dtype=dtype, native=native)
        tokenizer = load_tokenizer(sub, do_lower_case=spec["do_lower_case"], native=native)
        saved_pool = spec["pooling"] or {}
        if pooling is not None:  # the user's set of modes, concatenated in ST's canonical order
            pooling = [pooling] if isinstance(pooling, str) else list(pooling)
            pooling = [m for m in MODES if m in pooling] + [m for m in pooling if m not in MODES]
        else:
            causal = any(a.endswith("ForCausalLM") for a in (backbone.config.architectures or []))
            pooling = saved_pool.get("modes") or (["lasttoken"] if causal else ["mean"])
        hidden = backbone.config.hidden_size
        if saved_pool.get("dim") not in (None, hidden):
            raise ckpt.ModelLoadError(
                f"{folder}: the pooling config says embedding dimension {saved_pool['dim']}, but the backbone "
                f"(config.json) has hidden_size {hidden}"
            )
        dense = []
        for d in spec["dense"]:
            c = d["config"]
            layer = Dense(c["in_features"], c["out_features"], c.get("bias", True), c.get("activation_function"))
            expected = layer.state_dict()
            wrong = [f"{k} {tuple(v.shape)} (config.json: {tuple(expected[k].shape)})"
                     for k, v in d["state"].items() if k in expected and v.shape != expected[k].shape]
            missing = [k for k in expected if k not in d["state"]]
            unused = [k for k in d["state"] if k not in expected]
            if missing or unused or wrong:
                raise ckpt.ModelLoadError(
                    f"{d['path']}: the weights do not match config.json: "
                    + "; ".join(f"{what} {keys}" for what, keys in (("missing", missing), ("unused", unused),
                                                                     ("wrong shape", wrong)) if keys)
                )
            layer.load_state_dict(d["state"])
            # ST casts every module after the backbone to the backbone's dtype (base/model.py), so a model saved
            # in fp16 or fp64 encodes in that dtype throughout.
            dense.append(layer.to(next(backbone.parameters()).dtype))
        model = cls(
            backbone, tokenizer,
            pooling=pooling,
            include_prompt=saved_pool.get("include_prompt", True),
            dense=dense,
            normalize=spec["normalize"] if normalize is None else normalize,
            max_length=max_length_for(tokenizer, backbone.config, spec["max_length"], max_length, where=str(sub)),
            do_lower_case=spec["do_lower_case"],
            prompts=spec["prompts"],
            default_prompt_name=spec["default_prompt_name"],
            similarity_fn_name=spec["similarity_fn_name"],
            truncate_dim=spec["truncate_dim"],
        )
        if dtype is not None:
            model.to(dtype)
        model.name_or_path = str(name_or_path)
        return model.to(default_device(device)).eval()

    # ------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def embedding_dim(self) -> int:
        """Width of the embeddings (after Dense layers, before any truncation)."""
        if len(self.dense):
            return self.dense[-1].linear.out_features
        return len(self.pooling) * self.backbone.config.hidden_size

    # ------------------------------------------------------------------ tokenize + forward (training path)

    def prompt_length(self, prompt: str | None) -> int:
        """Tokens of `prompt` incl. the leading special token, excl. a trailing one (ST's count)."""
        if prompt not in self._prompt_lengths:
            self._prompt_lengths[prompt] = tokenization.prompt_length(self.tokenizer, prompt)
        return self._prompt_lengths[prompt]

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each backbone layer's activations in backward instead of keeping them: less memory for
        long inputs and big models, one more forward per step. The padding-free path (minisbert.fast) and the
        cached step keep working with it. `gradient_checkpointing_kwargs` go to torch.utils.checkpoint
        (default: use_reentrant=False). sentence-transformers' and transformers' name; ST 6 and
        transformers 5 also call it activation_checkpointing_enable."""
        set_checkpointing(self.backbone, True, gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        set_checkpointing(self.backbone, False)

    activation_checkpointing_enable = gradient_checkpointing_enable
    activation_checkpointing_disable = gradient_checkpointing_disable

    def tokenize(self, texts, prompt: str | None = None, truncation: Truncation | None = None) -> dict:
        """Texts -> {"input_ids" (B, L), "attention_mask" (B, L), ..., "prompt_length": int}, padded to the longest."""
        if prompt:
            texts = [prompt + t for t in texts]
        batch = tokenization.tokenize(self.tokenizer, list(texts), padding=True, max_length=self.max_length,
                                      return_tensors=True, truncation=truncation)
        features = {k: batch[k] for k in self.input_names if k in batch}
        features["prompt_length"] = self.prompt_length(prompt)
        return features

    def forward(self, features: dict | list[dict]) -> torch.Tensor | list[torch.Tensor]:
        """Token ids + mask -> (B, D) embeddings, with grad when grad is enabled. A list of K feature dicts
        (the text columns of a training batch) -> K x (B_k, D), from one padding-free pass over all of
        them where the backbone allows it: fewer, larger matmuls than K passes."""
        columns = list(features) if isinstance(features, (list, tuple)) else [features]
        inputs = [self.backbone_inputs(c) for c in columns]
        # The fast path (padding-free, minisbert.fast) where it applies: the same result, no compute on pad
        # tokens; else the backbone's own padded forward.
        hidden = fast.hidden_states(self.backbone, inputs)
        if hidden is None:
            hidden = [self.backbone(**x).last_hidden_state for x in inputs]  # K x (B_k, L_k, H)
        out = [self.head(h, x["attention_mask"], c.get("prompt_length", 0)) for h, x, c in zip(hidden, inputs, columns)]
        return out if isinstance(features, (list, tuple)) else out[0]

    def backbone_inputs(self, features: dict) -> dict:
        """The tensors of `features` the backbone reads, on its device, without all-padding trailing columns."""
        device = self.device
        return trim_padding({k: features[k].to(device) for k in self.input_names if k in features})

    def head(self, hidden: torch.Tensor, mask: torch.Tensor, prompt_length: int = 0) -> torch.Tensor:
        """Token states (B, L, H) + mask (B, L) -> (B, D): pooling, Dense layers, normalization."""
        emb = pool(hidden, mask, self.pooling, prompt_length=prompt_length,
                   include_prompt=self.include_prompt)  # (B, len(pooling)*H)
        for layer in self.dense:
            emb = layer(emb)  # (B, D)
        return F.normalize(emb, p=2, dim=-1) if self.normalize else emb

    # ------------------------------------------------------------------ inference

    def resolve_prompt(self, prompt: str | None = None, prompt_name: str | None = None) -> str | None:
        """Explicit `prompt` > prompts[prompt_name] > prompts[default_prompt_name] (ST's order)."""
        if prompt is not None:
            return prompt
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        if name is None:
            return None
        if name not in self.prompts:
            raise ValueError(f"prompt_name {name!r} is not one of this model's prompts {list(self.prompts)}")
        return self.prompts[name]

    @torch.inference_mode()
    def encode(
        self, texts, batch_size: int = 32, *, prompt: str | None = None, prompt_name: str | None = None,
        normalize_embeddings: bool | None = None, truncate_dim: int | None = None, convert_to_tensor: bool = False,
        show_progress_bar: bool | None = None,
    ):
        """Texts -> float32 numpy (N, D) (or a tensor); a single string gives (D,).

        Each distinct text is encoded once, in length-sorted batches, and results are returned in input
        order (repeats included). `truncate_dim` keeps the
        first d dimensions; `normalize_embeddings=None` re-normalizes after truncation exactly when
        the model itself normalizes, so truncated outputs of a normalized model stay unit vectors.
        """
        single = isinstance(texts, str)
        texts = check_texts([texts] if single else texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        truncate_dim = truncate_dim if truncate_dim is not None else self.truncate_dim
        if truncate_dim is not None and truncate_dim < 1:
            raise ValueError(f"truncate_dim must be >= 1, got {truncate_dim}")
        if truncate_dim is not None and truncate_dim >= self.embedding_dim:
            truncate_dim = None  # wider than the model: nothing to cut (ST's slice does the same)
        if not texts:  # ST returns an empty result too; (0, D) float32 so that it stacks with other batches
            out = torch.zeros(0, truncate_dim or self.embedding_dim, device=self.device)
            return out if convert_to_tensor else out.cpu().numpy()
        if normalize_embeddings is None:
            normalize_embeddings = self.normalize and truncate_dim is not None and truncate_dim < self.embedding_dim
        prompt = self.resolve_prompt(prompt, prompt_name)

        def run(batch, truncation):
            emb = self.forward(self.tokenize(batch, prompt, truncation))  # (b, D)
            if truncate_dim is not None:
                emb = emb[:, :truncate_dim]
            if normalize_embeddings:
                emb = F.normalize(emb, p=2, dim=-1)
            return emb.float()

        out = in_batches(self, texts, batch_size, run, "encode", show_progress_bar, fast.inference(self))  # (N, D)
        out = out[0] if single else out
        return out.clone() if convert_to_tensor else out.cpu().numpy()

    def similarity(self, a, b) -> torch.Tensor:
        """(N, D) x (M, D) -> (N, M) with the model's similarity function."""
        return similarity(self.similarity_fn_name)(torch.as_tensor(a), torch.as_tensor(b))

    def similarity_pairwise(self, a, b) -> torch.Tensor:
        return pairwise_similarity(self.similarity_fn_name)(torch.as_tensor(a), torch.as_tensor(b))

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, path, *, model_card: str | None = None) -> Path:
        """Write the ST 2.4-5.3 folder layout atomically (see checkpoint.py); returns the folder."""
        from .model_card import bi_encoder_card

        with ckpt.atomic_dir(path) as tmp:
            with quiet_transformers():
                self.backbone.save_pretrained(tmp)
            tokenization.save(self.tokenizer, tmp, model_max_length=self.max_length)
            ckpt.write_json(tmp / "sentence_bert_config.json", {"max_seq_length": self.max_length, "do_lower_case": self.do_lower_case})
            modules = [{"idx": 0, "name": "0", "path": "", "type": ckpt.LEGACY_TYPE["Transformer"]}]
            pool_dir = tmp / "1_Pooling"
            pool_dir.mkdir()
            if self.pooling == [m for m in MODES if m in self.pooling]:
                pool_cfg = {"word_embedding_dimension": self.backbone.config.hidden_size}
                pool_cfg.update({key: mode in self.pooling for key, mode in ckpt.LEGACY_POOLING_KEYS.items()})
                pool_cfg["include_prompt"] = self.include_prompt
            else:  # only ST >= 5.4 can express a non-canonical concatenation order
                logger.warning("pooling order %s is not ST's canonical order %s: writing the ST 5.4+ pooling config, "
                               "which ST < 5.4 cannot read", self.pooling, [m for m in MODES if m in self.pooling])
                pool_cfg = {"embedding_dimension": self.backbone.config.hidden_size, "pooling_mode": self.pooling,
                            "include_prompt": self.include_prompt}
            ckpt.write_json(pool_dir / "config.json", pool_cfg, indent=4)
            modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": ckpt.LEGACY_TYPE["Pooling"]})
            for layer in self.dense:
                idx = len(modules)
                sub = tmp / f"{idx}_Dense"
                sub.mkdir()
                ckpt.write_json(sub / "config.json", layer.config(), indent=4)
                from safetensors.torch import save_file

                save_file({k: v.detach().contiguous().cpu() for k, v in layer.state_dict().items()}, sub / "model.safetensors")
                modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_Dense", "type": ckpt.LEGACY_TYPE["Dense"]})
            if self.normalize:
                idx = len(modules)
                (tmp / f"{idx}_Normalize").mkdir()
                modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_Normalize", "type": ckpt.LEGACY_TYPE["Normalize"]})
            ckpt.write_json(tmp / "modules.json", modules)
            st_cfg = {
                "__version__": ckpt.versions(),
                "prompts": self.prompts,
                "default_prompt_name": self.default_prompt_name,
                "similarity_fn_name": self.similarity_fn_name,
                "model_type": "SentenceTransformer",
            }
            ckpt.write_json(tmp / "config_sentence_transformers.json", st_cfg, sort_keys=True)
            (tmp / "README.md").write_text(model_card or bi_encoder_card(self), encoding="utf-8")
        return Path(path)
