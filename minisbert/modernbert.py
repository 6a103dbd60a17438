"""ModernBERT (and mmBERT, the same architecture) in plain torch, loaded from its folder.

It is the same network as transformers' ModernBertModel and ModernBertForSequenceClassification: the
module tree and parameter names are transformers' own (embeddings.tok_embeddings, layers.N.attn.Wqkv,
layers.N.mlp.Wi, final_norm; model.*, head.dense, head.norm, classifier for the classifier), so the
state dict, `save_pretrained`'s files and config.json load in transformers and sentence-transformers
unchanged. tests/test_modernbert.py pins the hidden states, the logits and the gradients against
transformers, in float32 and bfloat16.

The forward here is the padded one, as transformers runs it: SDPA with a boolean mask per layer type,
key padding for the global layers, key padding and |i - j| <= local_attention / 2 for the sliding-window
ones; the last hidden states are zeros at pads, which pooling never reads. ModernBERT was designed to run
unpadded: the fast path (minisbert/fast/modernbert.py) runs the same modules on the real tokens only,
and the models call it first.

`load` returns None where it cannot promise transformers' result (another rope type, activation,
pooling or attention layout than it implements, weights it does not recognise, pickle files); the
caller then loads the folder with transformers.

    ModernBertEncoder      the encoder: forward(input_ids, attention_mask) -> last_hidden_state (B, L, H)
    ModernBertClassifier   encoder -> pooling (cls | mean) -> head -> classifier: forward(...).logits (B, C)
    load(folder, auto_class, config_kwargs)  either one with the folder's weights, or None

Shapes: B rows, L tokens, H hidden width, h heads, d head width (H = h d), I GeGLU width, C labels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import checkpoint
from .bert import ACTIVATIONS, _dtype, lookup

# transformers' class names for the two heads this module builds (auto class -> architecture).
ARCHITECTURES = {"AutoModel": "ModernBertModel", "AutoModelForSequenceClassification": "ModernBertForSequenceClassification"}
LAYER_TYPES = ("full_attention", "sliding_attention")


def config_from(folder: Path, **kwargs):
    """transformers' ModernBertConfig of the folder (its configuration module only, not the modeling code):
    it owns the translation of old config.json keys (global_attn_every_n_layers, global_rope_theta, ...)."""
    from transformers import ModernBertConfig

    return ModernBertConfig.from_pretrained(folder, **kwargs)


def unsupported(config) -> str | None:
    """Why this module does not reproduce transformers on this config, or None when it does."""
    if getattr(config, "model_type", None) != "modernbert":
        return f"model_type {getattr(config, 'model_type', None)!r}"
    if config.hidden_size % config.num_attention_heads:
        return "hidden_size not divisible by num_attention_heads"
    head_dim = getattr(config, "head_dim", None)
    if head_dim and head_dim != config.hidden_size // config.num_attention_heads:
        return f"head_dim {head_dim}"
    if any(t not in LAYER_TYPES for t in config.layer_types) or len(config.layer_types) != config.num_hidden_layers:
        return f"layer_types {config.layer_types!r}"
    for t in set(config.layer_types):
        rope = (config.rope_parameters or {}).get(t) or {}
        if rope.get("rope_type", "default") != "default" or "rope_theta" not in rope:
            return f"rope_parameters[{t!r}] {rope!r}"
    for key in ("hidden_activation", "classifier_activation"):
        if getattr(config, key) not in ACTIVATIONS:
            return f"{key} {getattr(config, key)!r}"
    if config.classifier_pooling not in ("cls", "mean"):
        return f"classifier_pooling {config.classifier_pooling!r}"
    if getattr(config, "quantization_config", None):
        return "quantization"
    return None


@dataclass
class EncoderOutput:
    last_hidden_state: Tensor  # (B, L, H), zeros at pads


@dataclass
class ClassifierOutput:
    logits: Tensor  # (B, C)


def _norm(c) -> nn.LayerNorm:
    return nn.LayerNorm(c.hidden_size, eps=c.norm_eps, bias=c.norm_bias)


def rotate(qk: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """transformers' apply_rotary_pos_emb, q cos + rotate_half(q) sin in float32, written per half:
    [x1 c - x2 s, x2 c + x1 s] (the same floats: cos and sin repeat over the two halves). qk (..., d);
    cos, sin broadcastable to (..., d/2)."""
    d = qk.shape[-1]
    x = qk.float()
    x1, x2 = x[..., :d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(qk.dtype)


class Embeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id,
                                           _weight=torch.empty(c.vocab_size, c.hidden_size))
        self.norm = _norm(c)
        self.drop = nn.Dropout(c.embedding_dropout)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.drop(self.norm(lookup(self.tok_embeddings, input_ids)))  # (B, L, H)


class Attention(nn.Module):
    def __init__(self, c, layer_type: str):
        super().__init__()
        self.num_heads = c.num_attention_heads
        self.head_dim = c.hidden_size // c.num_attention_heads
        self.scaling = self.head_dim ** -0.5
        self.attention_dropout = c.attention_dropout
        self.Wqkv = nn.Linear(c.hidden_size, 3 * c.hidden_size, bias=c.attention_bias)
        self.Wo = nn.Linear(c.hidden_size, c.hidden_size, bias=c.attention_bias)
        self.out_drop = nn.Dropout(c.attention_dropout) if c.attention_dropout > 0.0 else nn.Identity()
        self.layer_type = layer_type

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None) -> Tensor:
        """x (B, L, H) -> attention output (B, L, H); rope: cos, sin (L, d/2); mask (B, 1, L, L) or
        (B, 1, 1, L) True where a query may attend a key, None without padding or window."""
        B, L, _ = x.shape
        h, d = self.num_heads, self.head_dim
        qkv = self.Wqkv(x).view(B, L, 3, h, d)  # (B, L, 3, h, d)
        cos, sin = (t[:, None, None] for t in rope)  # (L, 1, 1, d/2)
        q, k = rotate(qkv[:, :, :2], cos, sin).permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, h, L, d)
        v = qkv[:, :, 2].transpose(1, 2)  # (B, h, L, d)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.attention_dropout if self.training else 0.0,
                                             scale=self.scaling)  # (B, h, L, d)
        return self.out_drop(self.Wo(ctx.transpose(1, 2).reshape(B, L, h * d)))  # (B, L, H)


class MLP(nn.Module):
    """GeGLU: Wo(act(u) * g), [u, g] = Wi x."""

    def __init__(self, c):
        super().__init__()
        self.Wi = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=c.mlp_bias)
        self.act = ACTIVATIONS[c.hidden_activation]
        self.drop = nn.Dropout(c.mlp_dropout)
        self.Wo = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        u, g = self.Wi(x).chunk(2, dim=-1)  # 2 x (B, L, I)
        return self.Wo(self.drop(self.act(u) * g))  # (B, L, H)


class Layer(nn.Module):
    """Pre-LayerNorm: x + attn(attn_norm(x)), then x + mlp(mlp_norm(x)); layer 0 has no attn_norm (the
    embeddings' norm precedes it)."""

    def __init__(self, c, index: int):
        super().__init__()
        self.attn_norm = nn.Identity() if index == 0 else _norm(c)
        self.attn = Attention(c, c.layer_types[index])
        self.mlp_norm = _norm(c)
        self.mlp = MLP(c)

    def forward(self, x: Tensor, rope, mask) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rope, mask)
        return x + self.mlp(self.mlp_norm(x))  # (B, L, H)


class Rotary(nn.Module):
    """The rotary tables of each layer type: inv_freq = 1 / theta^(2i / d), as transformers' default rope."""

    def __init__(self, c):
        super().__init__()
        d = c.hidden_size // c.num_attention_heads
        for t in sorted(set(c.layer_types)):
            theta = c.rope_parameters[t]["rope_theta"]
            inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float, device="cpu") / d))  # (d/2,)
            self.register_buffer(f"{t}_inv_freq", inv_freq, persistent=False)

    def forward(self, positions: Tensor, layer_type: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """positions (L,) -> cos and sin of each position's angles, (L, d/2) each in float32, rounded to `dtype`
        first as transformers casts them to the hidden states' dtype (its (L, d) tables repeat these twice)."""
        inv_freq = getattr(self, f"{layer_type}_inv_freq")
        freqs = positions[:, None].float() * inv_freq.to(positions.device)[None, :]  # (L, d/2)
        return freqs.cos().to(dtype).float(), freqs.sin().to(dtype).float()


class ModernBertEncoder(nn.Module):
    """transformers' ModernBertModel, padded as transformers runs it (module docstring).
    Built to receive weights: `load` constructs it on the meta device and assigns the checkpoint's tensors."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = _norm(config)
        self.rotary_emb = Rotary(config)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        """Recompute each layer's activations in backward instead of keeping them (the fast path too)."""
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.tok_embeddings

    def mask(self, real: Tensor, layer_type: str) -> Tensor | None:
        """The boolean mask SDPA takes for rows whose real tokens are `real` (n, L): (n, 1, 1, L) key padding
        for a global layer (None without padding), (n, 1, L, L) with the window for a sliding one."""
        n, L = real.shape
        half = self.config.local_attention // 2  # transformers' sliding_window: |i - j| <= half
        if layer_type == "full_attention" or L <= half + 1:
            return None if bool(real.all()) else real[:, None, None, :]  # (n, 1, 1, L)
        pos = torch.arange(L, device=real.device)
        window = (pos[:, None] - pos[None, :]).abs() <= half  # (L, L)
        # Pad queries (discarded) attend to every real key: a query with no key would give NaN in backward.
        return ((window[None] | ~real[:, :, None]) & real[:, None, :])[:, None]  # (n, 1, L, L)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> EncoderOutput:
        """input_ids, attention_mask (B, L) -> last_hidden_state (B, L, H), zeros at pads. Positions are the
        padded column index, as transformers numbers them."""
        real = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).bool()  # (B, L)
        if not bool(real.any(1).all()):
            raise ValueError("a row of attention_mask has no token: every input needs at least one token")
        x = self.embeddings(input_ids)  # (B, L, H)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (L,)
        types = sorted(set(self.config.layer_types))
        ropes = {t: self.rotary_emb(positions, t, x.dtype) for t in types}
        masks = {t: self.mask(real, t) for t in types}
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if recompute:
            from torch.utils.checkpoint import checkpoint
        for layer in self.layers:
            t = layer.attn.layer_type
            if recompute:
                x = checkpoint(layer, x, ropes[t], masks[t], use_reentrant=False)
            else:
                x = layer(x, ropes[t], masks[t])
        return EncoderOutput(last_hidden_state=self.final_norm(x).masked_fill(~real[..., None], 0.0))

    def save_pretrained(self, folder) -> None:
        _save(self, folder, "AutoModel")


class Head(nn.Module):
    """transformers' ModernBertPredictionHead: norm(act(dense(x)))."""

    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size, bias=c.classifier_bias)
        self.act = ACTIVATIONS[c.classifier_activation]
        self.norm = _norm(c)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.act(self.dense(x)))


class ModernBertClassifier(nn.Module):
    """transformers' ModernBertForSequenceClassification: the encoder, then the first token's state
    (classifier_pooling "cls") or the mean of the real tokens' ("mean"), head, dropout, classifier."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = ModernBertEncoder(config)
        self.head = Head(config)
        self.drop = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        self.model.gradient_checkpointing_enable()

    def gradient_checkpointing_disable(self) -> None:
        self.model.gradient_checkpointing_disable()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> ClassifierOutput:
        return ClassifierOutput(logits=self.classify(self.model(input_ids, attention_mask).last_hidden_state,
                                                     attention_mask if attention_mask is not None else torch.ones_like(input_ids)))

    def classify(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """The encoder's last hidden states (B, L, H), zeros at pads, and the mask (B, L) -> logits (B, C)."""
        if self.config.classifier_pooling == "cls":
            pooled = hidden[:, 0]  # (B, H)
        else:
            pooled = (hidden * attention_mask[..., None]).sum(1) / attention_mask.sum(1, keepdim=True)  # (B, H)
        return self.classifier(self.drop(self.head(pooled)))  # (B, C)

    def save_pretrained(self, folder) -> None:
        _save(self, folder, "AutoModelForSequenceClassification")


def _save(model: nn.Module, folder, auto_class: str) -> None:
    """config.json (written by transformers' config class) and model.safetensors, as transformers'
    save_pretrained writes them for ModernBertModel / ModernBertForSequenceClassification."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    config.architectures = [ARCHITECTURES[auto_class]]
    config.dtype = next(model.parameters()).dtype
    config.save_pretrained(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def _rename(key: str, classifier: bool) -> str:
    """A checkpoint key -> this module's: the base model's keys without "model." (a MaskedLM or classifier
    checkpoint loaded as AutoModel), the classifier's with it (a base checkpoint loaded as a classifier)."""
    if not classifier:
        return key.removeprefix("model.")
    if key.startswith(("model.", "head.", "classifier.", "decoder.")):
        return key
    return "model." + key


def _trunc_normal(shape, std: float, cutoff: float, dtype) -> Tensor:
    return torch.nn.init.trunc_normal_(torch.empty(shape, dtype=torch.float32), 0.0, std, -cutoff * std, cutoff * std).to(dtype)


def load(folder: Path, auto_class: str = "AutoModel", config_kwargs: dict | None = None):
    """A ModernBertEncoder ("AutoModel") or ModernBertClassifier ("AutoModelForSequenceClassification") with
    the weights of a transformers folder, or None where it would not equal transformers' model of the
    same folder (see `unsupported`, and: another auto class, no safetensors weights, a weight missing
    (other than a new classifier head, which is initialized as transformers does), a shape that differs)."""
    folder = Path(folder)
    if auto_class not in ARCHITECTURES:
        return None
    try:
        values = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(values, dict) or values.get("model_type") != "modernbert" or not any(folder.glob("*.safetensors")):
        return None
    try:
        config = config_from(folder, **(config_kwargs or {}))
    except Exception:
        return None  # transformers gives its own error
    if unsupported(config) is not None:
        return None
    classifier = auto_class != "AutoModel"
    state = checkpoint.load_state_dict(folder, allow_pickle=False)
    dtype = _dtype(values, state)
    with torch.device("meta"):
        model = (ModernBertClassifier if classifier else ModernBertEncoder)(config)
    expected = model.state_dict()
    renamed = {}
    for key, tensor in state.items():
        name = _rename(key, classifier)
        if name in expected:
            if tensor.shape != expected[name].shape:
                return None
            renamed[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        elif name.removeprefix("model.").split(".")[0] in ("embeddings", "layers", "final_norm"):
            return None  # an encoder weight this config has no place for (fewer layers): transformers names it
    missing = [k for k in expected if k not in renamed]
    if any(not k.startswith(("head.", "classifier.")) for k in missing):
        return None
    # transformers' _init_weights for a new head: truncated normal weights, zero biases, unit norm weights.
    cutoff = config.initializer_cutoff_factor if config.initializer_cutoff_factor is not None else 3
    stds = {"head.dense.weight": config.initializer_range / math.sqrt(2.0 * config.num_hidden_layers),
            "classifier.weight": config.hidden_size ** -0.5}
    for k in missing:
        shape = expected[k].shape
        if k in stds:
            renamed[k] = _trunc_normal(shape, stds[k], cutoff, dtype)
        else:
            renamed[k] = torch.ones(shape, dtype=dtype) if k == "head.norm.weight" else torch.zeros(shape, dtype=dtype)
    model.load_state_dict(renamed, assign=True)
    # The rotary tables are not in the checkpoint: made on CPU in float32, as transformers keeps them.
    model_rotary = model.model.rotary_emb if classifier else model.rotary_emb
    for name, buf in Rotary(config).named_buffers():
        setattr(model_rotary, name, buf)
    return model.eval()
