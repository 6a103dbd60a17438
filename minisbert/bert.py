"""BERT-family encoders (BERT, RoBERTa, XLM-RoBERTa, CamemBERT) in plain torch, loaded from their folder.

Why it exists: importing transformers' modeling code for BERT (`transformers.modeling_utils`, which pulls
in torch._dynamo, torch.distributed.tensor, sympy and scipy) takes seconds, more than torch itself, and a
bi-encoder needs none of it (benchmarks/README.md, decision table: BERT-family encoders in plain torch). `load(folder)` builds the encoder from config.json and the safetensors
weights with torch alone.

It is the same network as transformers' BertModel / RobertaModel / XLMRobertaModel / CamembertModel:
the module tree and parameter names are transformers' own (embeddings.word_embeddings,
encoder.layer.N.attention.self.query, ..., pooler.dense), so the state dict, `save_pretrained`'s
model.safetensors and config.json load in transformers and sentence-transformers unchanged, and
the fast path's padding-free forward (minisbert/fast/packing.py) runs on it as on theirs. tests/test_bert.py
pins the hidden states, the gradients and the saved files against transformers.

`load` returns None where it cannot promise that (an architecture or option it does not reproduce,
weights it does not recognise or that do not match config.json, pickle files); the caller then loads the
folder with transformers (and refuses weights that do not match, naming them: backbone.load_backbone).

    EncoderConfig        config.json's values as attributes, with transformers' defaults
    BertEncoder          the encoder: forward(input_ids, attention_mask, token_type_ids, position_ids)
    load(folder)         a BertEncoder with the folder's weights, or None

Shapes: B rows, L tokens, H hidden width, h heads, d head width (H = h d), I feed-forward width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import checkpoint
from .versions import transformers_version

# model_type -> (transformers' base class, its base_model_prefix: the head models' key prefix).
ARCHITECTURES = {
    "bert": ("BertModel", "bert"),
    "roberta": ("RobertaModel", "roberta"),
    "xlm-roberta": ("XLMRobertaModel", "roberta"),
    "camembert": ("CamembertModel", "roberta"),
}
# transformers' config defaults for these model types (BertConfig(), RobertaConfig(), ...); tests compare.
DEFAULTS = {
    "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512,
    "type_vocab_size": 2, "layer_norm_eps": 1e-12, "initializer_range": 0.02, "is_decoder": False,
    "add_cross_attention": False, "architectures": None,
}
# How transformers numbers each model type's positions: "index" = the column index in the padded batch
# (BERT, also under left padding), "non_pad" = padding_idx + 1 + the count of non-pad ids so far
# (RoBERTa's create_position_ids_from_input_ids).
POSITIONS = {"bert": "index", "roberta": "non_pad", "xlm-roberta": "non_pad", "camembert": "non_pad"}
PAD_TOKEN_ID = {"bert": 0, "roberta": 1, "xlm-roberta": 1, "camembert": 1}
# Keys config.json must give: transformers' defaults for them differ by model type and version.
REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
# transformers' ACT2FN names this module reproduces; "gelu" is the exact (erf) GELU.
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def position_ids_for(backbone, input_ids: Tensor) -> Tensor:
    """(B, L) the position ids a BERT-family backbone (this module's or transformers') gives a padded batch."""
    if POSITIONS[backbone.config.model_type] == "non_pad":
        pad = backbone.embeddings.padding_idx
        real = input_ids.ne(pad).long()
        return torch.cumsum(real, 1) * real + pad  # (B, L)
    return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)  # (B, L)


class EncoderConfig:
    """config.json's values as attributes (what the rest of minisbert reads of a backbone's config), with
    transformers' defaults for the keys it leaves out; `to_dict()` is what `save_pretrained` writes."""

    def __init__(self, values: dict):
        self.__dict__.update(values)

    def __getattr__(self, name):  # only for names config.json did not give
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "pad_token_id":
            return PAD_TOKEN_ID.get(self.__dict__.get("model_type"), 0)
        if name in DEFAULTS:
            return DEFAULTS[name]
        raise AttributeError(f"EncoderConfig has no {name!r}")

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"EncoderConfig({self.__dict__})"


def unsupported(values: dict) -> str | None:
    """Why `BertEncoder` does not reproduce transformers on this config.json, or None when it does."""
    model_type = values.get("model_type")
    if model_type not in ARCHITECTURES:
        return f"model_type {model_type!r}"
    missing = [k for k in REQUIRED if k not in values]
    if missing:
        return f"config.json lacks {missing}"
    config = EncoderConfig(values)
    if config.is_decoder or config.add_cross_attention:
        return "a decoder configuration"
    if values.get("position_embedding_type", "absolute") not in ("absolute", None):
        return f"position_embedding_type {values['position_embedding_type']!r}"
    if not isinstance(config.hidden_act, str) or config.hidden_act not in ACTIVATIONS:
        return f"hidden_act {config.hidden_act!r}"
    pad = config.pad_token_id
    if pad is None and POSITIONS[model_type] == "non_pad":
        return "no pad_token_id (RoBERTa-family positions count from it)"
    if pad is not None and not 0 <= pad < config.vocab_size:
        return f"pad_token_id {pad} outside the vocabulary"
    if config.hidden_size % config.num_attention_heads:
        return "hidden_size not divisible by num_attention_heads"
    if values.get("pruned_heads") or values.get("quantization_config"):
        return "pruned heads or quantization"
    return None


@dataclass
class EncoderOutput:
    last_hidden_state: Tensor  # (B, L, H)
    pooler_output: Tensor  # (B, H) tanh(dense(first token)), as transformers' pooler


def _embedding(rows: int, width: int, padding_idx: int | None = None) -> nn.Embedding:
    """An nn.Embedding whose table is left uninitialized (`load` assigns it): nn.Embedding's own init
    (normal_) on the meta device imports torch._dynamo (decision table: BERT-family encoders in plain torch)."""
    return nn.Embedding(rows, width, padding_idx=padding_idx, _weight=torch.empty(rows, width))


def lookup(table: nn.Embedding, ids: Tensor) -> Tensor:
    """table(ids), (..., H), with a sparse gradient when the table already holds a dense one to add it to.

    A dense lookup's backward builds a gradient for the whole (V, H) table; when .grad already exists
    (the cached step's later chunks, gradient accumulation's later micro-batches) autograd adds that
    into .grad, so the table's gradient is held twice for a moment and the whole table is written three
    times (XLM-R large: 250,002 x 1,024, 977 MiB, about a second on 2 cores). A sparse gradient holds
    one (H,) row per token, and autograd adds it into the dense .grad in place: .grad stays dense (any
    optimizer takes it), and its values are the same sums. The first backward of a step (.grad None)
    keeps the dense lookup, whose table-sized gradient becomes .grad itself."""
    w = table.weight
    sparse = table.sparse or (torch.is_grad_enabled() and w.requires_grad and w.grad is not None and not w.grad.is_sparse)
    return F.embedding(ids, w, table.padding_idx, table.max_norm, table.norm_type, table.scale_grad_by_freq, sparse)


class Embeddings(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.word_embeddings = _embedding(c.vocab_size, c.hidden_size, c.pad_token_id)
        roberta = POSITIONS[c.model_type] == "non_pad"  # RoBERTa's numbering, from padding_idx + 1
        # RoBERTa's position table has a padding row too (transformers' RobertaEmbeddings).
        self.position_embeddings = _embedding(c.max_position_embeddings, c.hidden_size, c.pad_token_id if roberta else None)
        self.token_type_embeddings = _embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        if roberta:
            self.padding_idx = c.pad_token_id

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None, position_ids: Tensor) -> Tensor:
        types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        x = lookup(self.word_embeddings, input_ids) + self.token_type_embeddings(types) + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))  # (B, L, H)


class SelfAttention(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.num_attention_heads = c.num_attention_heads
        self.attention_head_size = c.hidden_size // c.num_attention_heads
        self.scaling = self.attention_head_size ** -0.5
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)
        self.dropout = nn.Dropout(c.attention_probs_dropout_prob)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:  # x (B, L, H), key_mask (B, 1, 1, L) bool
        B, L, _ = x.shape
        h, d = self.num_attention_heads, self.attention_head_size
        q, k, v = (lin(x).view(B, L, h, d).transpose(1, 2) for lin in (self.query, self.key, self.value))  # 3 x (B, h, L, d)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=self.dropout.p if self.training else 0.0,
                                             scale=self.scaling)  # (B, h, L, d)
        return ctx.transpose(1, 2).reshape(B, L, h * d)  # (B, L, H)


class Residual(nn.Module):
    """dense -> dropout -> LayerNorm(. + input): transformers' BertSelfOutput and BertOutput."""

    def __init__(self, inner: int, c: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(inner, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.self = SelfAttention(c)
        self.output = Residual(c.hidden_size, c)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        return self.output(self.self(x, key_mask), x)


class Intermediate(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.intermediate_act_fn = ACTIVATIONS[c.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.intermediate_act_fn(self.dense(x))  # (B, L, I)


class Layer(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Intermediate(c)
        self.output = Residual(c.intermediate_size, c)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        x = self.attention(x, key_mask)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))


class Pooler(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: Tensor) -> Tensor:
        return self.activation(self.dense(hidden[:, 0]))  # (B, H)


class BertEncoder(nn.Module):
    """transformers' BertModel (and its RoBERTa-family twins) for encoding: post-LayerNorm layers, absolute
    positions, SDPA attention with a key-padding mask, and the pooler. Built to receive weights: `load`
    constructs it on the meta device and assigns the checkpoint's tensors."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        """Recompute each layer's activations in backward (the fast path does it on the packed tokens too)."""
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None) -> EncoderOutput:
        if position_ids is None:  # transformers' numbering for this model type (POSITIONS)
            position_ids = position_ids_for(self, input_ids)
        x = self.embeddings(input_ids, token_type_ids, position_ids)
        # Rows without padding need no mask (SDPA then takes its unmasked kernel, as transformers does).
        key_mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.bool()[:, None, None, :]
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if recompute:
            from torch.utils.checkpoint import checkpoint
        for layer in self.encoder.layer:
            if recompute:
                x = checkpoint(layer, x, key_mask, use_reentrant=False)
            else:
                x = layer(x, key_mask)
        return EncoderOutput(last_hidden_state=x, pooler_output=self.pooler(x))

    def save_pretrained(self, folder) -> None:
        """config.json and model.safetensors as transformers' save_pretrained writes them for this class."""
        from importlib import metadata

        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        values = self.config.to_dict()
        values["architectures"] = [ARCHITECTURES[self.config.model_type][0]]
        values["dtype"] = str(next(self.parameters()).dtype).removeprefix("torch.")
        values.pop("torch_dtype", None)
        try:
            values["transformers_version"] = metadata.version("transformers")
        except metadata.PackageNotFoundError:
            pass
        (folder / "config.json").write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def _rename(key: str, prefix: str) -> str:
    """A checkpoint key -> the base model's: without the head model's prefix ("bert.", "roberta."), with
    old TF-converted LayerNorm names (gamma, beta) as transformers' "legacy" renaming maps them."""
    if key.startswith(prefix + "."):
        key = key[len(prefix) + 1:]
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def _dtype(values: dict, state: dict[str, Tensor]) -> torch.dtype:
    """The dtype the installed transformers' from_pretrained gives by default: 5.x's dtype="auto" (the config's
    dtype or torch_dtype, else the weights' first float dtype); 4.x's torch default dtype (float32)."""
    if transformers_version() < (5, 0):
        return torch.get_default_dtype()
    name = values.get("dtype") or values.get("torch_dtype")
    if isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return next((t.dtype for t in state.values() if t.is_floating_point()), torch.get_default_dtype())


def load(folder: Path) -> BertEncoder | None:
    """A BertEncoder with the weights of a transformers folder, or None where it would not equal
    transformers' AutoModel of the same folder (see `unsupported`, and: no safetensors weights, a weight
    missing (other than the pooler, which transformers initializes), a shape that differs)."""
    folder = Path(folder)
    try:
        values = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(values, dict) or unsupported(values) is not None:
        return None
    if not any(folder.glob("*.safetensors")):  # pickle-only folders go to transformers
        return None
    state = checkpoint.load_state_dict(folder, allow_pickle=False)  # every safetensors file, shards too
    config = EncoderConfig(values)
    prefix = ARCHITECTURES[config.model_type][1]
    dtype = _dtype(values, state)
    with torch.device("meta"):
        model = BertEncoder(config)
    expected = model.state_dict()
    renamed = {}
    for key, tensor in state.items():
        name = _rename(key, prefix)
        if name in expected:
            if tensor.shape != expected[name].shape:
                return None
            renamed[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        elif name.split(".")[0] in ("embeddings", "encoder", "pooler") and not name.endswith("_ids"):
            return None  # an encoder weight this config has no place for (fewer layers): transformers reports it
    missing = [k for k in expected if k not in renamed]
    if any(not k.startswith("pooler.") for k in missing):
        return None
    if missing:  # transformers' _init_weights for the pooler: normal(0, initializer_range) weight, zero bias
        pooler = torch.empty_like(expected["pooler.dense.weight"], device="cpu", dtype=dtype)
        renamed["pooler.dense.weight"] = pooler.normal_(0.0, config.initializer_range)
        renamed["pooler.dense.bias"] = torch.zeros(config.hidden_size, dtype=dtype)
    model.load_state_dict(renamed, assign=True)
    return model.eval()
