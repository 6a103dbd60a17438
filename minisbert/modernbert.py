"""ModernBERT (and mmBERT, the same architecture) in plain torch, loaded from its folder, run on real tokens only.

It is the same network as transformers' ModernBertModel and ModernBertForSequenceClassification: the
module tree and parameter names are transformers' own (embeddings.tok_embeddings, layers.N.attn.Wqkv,
layers.N.mlp.Wi, final_norm; model.*, head.dense, head.norm, classifier for the classifier), so the
state dict, `save_pretrained`'s files and config.json load in transformers and sentence-transformers
unchanged. tests/test_modernbert.py pins the hidden states, the logits and the gradients against
transformers, in float32 and bfloat16.

What differs is the execution. transformers 5 runs ModernBERT padded, with a (B, 1, L, L) mask per
layer type. ModernBERT was designed to run unpadded: here every forward packs the real tokens of the
batch (packing.pack: rows by decreasing length, concatenated), runs the embeddings, the projections,
the rotary embeddings, GeGLU and the norms on those T tokens, and attention per bucket of
similar-length rows with SDPA and a boolean mask: key padding for the global layers, key padding and
|i - j| <= local_attention / 2 for the sliding-window ones. The last hidden states are put back in the
padded (B, L, H) layout with zeros at pads, which pooling never reads.

`load` returns None where it cannot promise transformers' result (another rope type, activation,
pooling or attention layout than it implements, weights it does not recognise, pickle files); the
caller then loads the folder with transformers.

    ModernBertEncoder      the encoder: forward(input_ids, attention_mask) -> last_hidden_state (B, L, H)
    ModernBertClassifier   encoder -> pooling (cls | mean) -> head -> classifier: forward(...).logits (B, C)
    load(folder, auto_class, config_kwargs)  either one with the folder's weights, or None

Shapes: B rows, L tokens (of a padded batch or of an attention bucket), T' packed tokens (fillers
included, see packing.Packed), H hidden width, h heads, d head width (H = h d), I GeGLU width, C labels.
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

from . import checkpoint, packing
from .bert import ACTIVATIONS, _dtype

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


def _dense(x: Tensor, lin: nn.Linear, fast: torch.dtype | None) -> Tensor:
    """lin(x) through packing's linear kernels (oneDNN on CPU, see packing._linear), (t, in) -> (t, out);
    a wrapped or hooked linear (LoRA, ...) runs its own forward, whose weights packing must not bypass."""
    if type(lin) is not nn.Linear or lin._forward_hooks or lin._forward_pre_hooks:
        return lin(x)
    return packing._linear(x, *((lin.weight, lin.bias) if fast is None else packing._prepared(fast, lin)), fast)


class Embeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id,
                                           _weight=torch.empty(c.vocab_size, c.hidden_size))
        self.norm = _norm(c)
        self.drop = nn.Dropout(c.embedding_dropout)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.drop(self.norm(self.tok_embeddings(input_ids)))  # (T', H)


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

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], p: packing.Packed, masks: list[Tensor | None],
                fast: torch.dtype | None) -> Tensor:
        """Packed tokens x (T', H) -> attention output (T', H); `masks` one per bucket of p, (n, 1, L, L) or
        (n, 1, 1, L) True where a query may attend a key, None for a bucket without padding or window."""
        h, d = self.num_heads, self.head_dim
        qkv = _dense(x, self.Wqkv, fast).view(-1, 3, h, d)  # (T', 3, h, d)
        # transformers' apply_rotary_pos_emb, q cos + rotate_half(q) sin in float32, written per half:
        # [x1 c - x2 s, x2 c + x1 s] (the same floats: cos and sin repeat over the two halves).
        cos, sin = (t[:, None, None] for t in rope)  # (T', 1, 1, d/2)
        qk = qkv[:, :2].float()  # (T', 2, h, d)
        x1, x2 = qk[..., :d // 2], qk[..., d // 2:]
        qk = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(qkv.dtype)  # (T', 2, h, d)
        del x1, x2
        v = qkv[:, 2]  # (T', h, d)
        dropout = self.attention_dropout if self.training else 0.0
        outs, token = [], 0
        for (n, L, index, _), mask in zip(p.buckets, masks):
            t = index.shape[0]
            part_qk, part_v = qk[token:token + t], v[token:token + t]  # (T_g, 2, h, d), (T_g, h, d)
            token += t
            full = t == n * L
            if not full:  # the bucket's rows padded to L
                part_qk = part_qk.new_zeros(n * L, 2, h, d).index_copy_(0, index, part_qk)  # (n L, 2, h, d)
                part_v = part_v.new_zeros(n * L, h, d).index_copy_(0, index, part_v)  # (n L, h, d)
            q, k = part_qk.view(n, L, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (n, h, L, d)
            ctx = F.scaled_dot_product_attention(q, k, part_v.view(n, L, h, d).transpose(1, 2), attn_mask=mask,
                                                 dropout_p=dropout, scale=self.scaling)  # (n, h, L, d)
            ctx = ctx.transpose(1, 2).reshape(n * L, h * d)  # (n L, H)
            outs.append(ctx if full else ctx.index_select(0, index))  # (T_g, H)
        if p.fillers:
            outs.append(outs[0].new_zeros(p.fillers, outs[0].shape[1]))  # filler tokens attend to nothing
        ctx = torch.cat(outs) if len(outs) > 1 else outs[0]  # (T', H)
        return self.out_drop(_dense(ctx, self.Wo, fast))


class MLP(nn.Module):
    """GeGLU: Wo(act(u) * g), [u, g] = Wi x."""

    def __init__(self, c):
        super().__init__()
        self.Wi = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=c.mlp_bias)
        self.act = ACTIVATIONS[c.hidden_activation]
        self.drop = nn.Dropout(c.mlp_dropout)
        self.Wo = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x: Tensor, fast: torch.dtype | None) -> Tensor:
        u, g = _dense(x, self.Wi, fast).chunk(2, dim=-1)  # 2 x (T', I)
        return _dense(self.drop(self.act(u) * g), self.Wo, fast)  # (T', H)


class Layer(nn.Module):
    """Pre-LayerNorm: x + attn(attn_norm(x)), then x + mlp(mlp_norm(x)); layer 0 has no attn_norm (the
    embeddings' norm precedes it)."""

    def __init__(self, c, index: int):
        super().__init__()
        self.attn_norm = nn.Identity() if index == 0 else _norm(c)
        self.attn = Attention(c, c.layer_types[index])
        self.mlp_norm = _norm(c)
        self.mlp = MLP(c)

    def forward(self, x: Tensor, rope, p, masks, fast) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rope, p, masks, fast)
        return x + self.mlp(self.mlp_norm(x), fast)  # (T', H)


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
        """cos and sin of each token's angles, (T', d/2) each in float32, rounded to `dtype` first as
        transformers casts them to the hidden states' dtype (its (T', d) tables repeat these twice)."""
        inv_freq = getattr(self, f"{layer_type}_inv_freq")
        freqs = positions[:, None].float() * inv_freq.to(positions.device)[None, :]  # (T', d/2)
        return freqs.cos().to(dtype).float(), freqs.sin().to(dtype).float()


class ModernBertEncoder(nn.Module):
    """transformers' ModernBertModel, executed on the real tokens of the batch only (module docstring).
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
        """Recompute each layer's activations (on the packed tokens) in backward instead of keeping them."""
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.tok_embeddings

    def _masks(self, p: packing.Packed, layer_type: str) -> list[Tensor | None]:
        """Per attention bucket, the boolean mask SDPA takes (see Attention.forward)."""
        half = self.config.local_attention // 2  # transformers' sliding_window: |i - j| <= half
        out = []
        for n, L, index, real in p.buckets:  # real (n, L) True at real tokens
            if layer_type == "full_attention" or L <= half + 1:
                out.append(None if index.shape[0] == n * L else real[:, None, None, :])  # (n, 1, 1, L)
                continue
            pos = torch.arange(L, device=real.device)
            window = (pos[:, None] - pos[None, :]).abs() <= half  # (L, L)
            # Pad queries (discarded) attend to every real key: a query with no key would give NaN in backward.
            out.append(((window[None] | ~real[:, :, None]) & real[:, None, :])[:, None])  # (n, 1, L, L)
        return out

    def encode_packed(self, p: packing.Packed) -> Tensor:
        """The last hidden states of the packed tokens, (T', H)."""
        x = self.embeddings(p.input_ids)  # (T', H)
        fast = packing._inference_dtype(x)
        types = sorted(set(self.config.layer_types))
        ropes = {t: self.rotary_emb(p.position_ids, t, x.dtype) for t in types}
        masks = {t: self._masks(p, t) for t in types}
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if recompute:
            from torch.utils.checkpoint import checkpoint
        for layer in self.layers:
            t = layer.attn.layer_type
            if recompute:
                x = checkpoint(layer, x, ropes[t], p, masks[t], fast, use_reentrant=False)
            else:
                x = layer(x, ropes[t], p, masks[t], fast)
        return self.final_norm(x)

    def pack(self, input_ids: Tensor, attention_mask: Tensor | None) -> packing.Packed:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        dropout = self.training and self.config.attention_dropout > 0
        p = packing.pack([{"input_ids": input_ids, "attention_mask": attention_mask}],
                         attention_multiple=1 if dropout else packing.ATTENTION_MULTIPLE)  # see packing.ATTENTION_MULTIPLE
        if p is None:
            raise ValueError("a row of attention_mask has no token: every input needs at least one token")
        return p

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> EncoderOutput:
        """input_ids, attention_mask (B, L) -> last_hidden_state (B, L, H), zeros at pads. Positions are the
        padded column index, as transformers numbers them."""
        p = self.pack(input_ids, attention_mask)
        return EncoderOutput(last_hidden_state=packing.unpack(self.encode_packed(p), p)[0])

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
        hidden = self.model(input_ids, attention_mask).last_hidden_state  # (B, L, H)
        if self.config.classifier_pooling == "cls":
            pooled = hidden[:, 0]  # (B, H)
        else:
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, H)
        return ClassifierOutput(logits=self.classifier(self.drop(self.head(pooled))))  # (B, C)

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
