"""ModernBERT unpadded, as it was designed to run: the modules and parameters of minisbert/modernbert.py,
run on the real tokens of the batch only.

`hidden_states` packs the real tokens (packing.pack: rows by decreasing length, concatenated), runs the
embeddings, the projections, the rotary embeddings, GeGLU and the norms on those T' tokens, and attention
per bucket of similar-length rows with SDPA and the reference's boolean masks (modernbert
ModernBertEncoder.mask); the last hidden states go back to the padded (B, L, H) layout with zeros at pads.
The linears run linears.py's kernels (oneDNN on CPU where the probe says so). Equal to the reference forward
up to float summation order (tests/test_modernbert.py runs both against transformers).

Shapes: L a bucket's longest row, T' packed tokens (fillers included, see packing.Packed), H hidden width,
h heads, d head width (H = h d), I GeGLU width, C labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..modernbert import ModernBertClassifier, ModernBertEncoder, rotate
import minisbert.fast.linears as linears  # the modules themselves, not the package (fast/__init__.py imports us)
import minisbert.fast.packing as packing


def _rotate_(qk: Tensor, cos: Tensor, sin: Tensor) -> None:
    """modernbert.rotate in place, for inference: [x1 c - x2 s, x2 c + x1 s] with the same roundings, without
    the reference's temporaries and concatenation. qk (..., d); cos, sin broadcastable to (..., d/2)."""
    d = qk.shape[-1]
    x1, x2 = qk[..., :d // 2], qk[..., d // 2:]
    x1_sin = x1 * sin
    x1.mul_(cos).addcmul_(x2, sin, value=-1)
    x2.mul_(cos).add_(x1_sin)


def _slots(index: Tensor, size: int) -> Tensor:
    """For each of a bucket's n L padded slots, the bucket's token that fills it: its own at a real slot
    (`index` lists the real slots, in token order), the bucket's first token at a pad. (n L,)"""
    return torch.zeros(size, dtype=torch.long, device=index.device).index_copy_(
        0, index, torch.arange(index.shape[0], device=index.device))


def _attention(attn, x: Tensor, rope: tuple[Tensor, Tensor], p: packing.Packed, masks: list[Tensor | None],
               fast: torch.dtype | None, slots: list[Tensor | None]) -> Tensor:
    """modernbert.Attention on packed tokens x (T', H) -> (T', H); `masks` and `slots` (_slots) one per bucket of p.

    Each bucket runs SDPA on its rows padded to L. In training the pads are zeros written into a zero
    buffer; in inference (no autograd) q and k are rotated in place and one gather fills every slot, a pad
    with a real token's values: pads are masked keys (weight exactly 0) and discarded queries, so the real
    tokens' outputs are the same floats either way, one pass instead of a fill and two copies."""
    h, d = attn.num_heads, attn.head_dim
    qkv = linears.dense(x, attn.Wqkv, fast).view(-1, 3, h, d)  # (T', 3, h, d)
    cos, sin = (t[:, None, None] for t in rope)  # (T', 1, 1, d/2)
    inference = not torch.is_grad_enabled()
    if inference:
        _rotate_(qkv[:, :2], cos, sin)
    else:
        qk = rotate(qkv[:, :2], cos, sin)  # (T', 2, h, d)
        v = qkv[:, 2]  # (T', h, d)
    dropout = attn.attention_dropout if attn.training else 0.0
    outs, token = [], 0
    for (n, L, index, _), mask, slot in zip(p.buckets, masks, slots):
        t = index.shape[0]
        full = t == n * L
        if inference:
            part = qkv[token:token + t] if full else qkv[token:token + t].index_select(0, slot)  # (n L, 3, h, d)
            q, k, part_v = part.view(n, L, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (n, h, L, d)
        else:
            part_qk, part_v = qk[token:token + t], v[token:token + t]  # (T_g, 2, h, d), (T_g, h, d)
            if not full:  # the bucket's rows padded to L
                part_qk = part_qk.new_zeros(n * L, 2, h, d).index_copy_(0, index, part_qk)  # (n L, 2, h, d)
                part_v = part_v.new_zeros(n * L, h, d).index_copy_(0, index, part_v)  # (n L, h, d)
            q, k = part_qk.view(n, L, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (n, h, L, d)
            part_v = part_v.view(n, L, h, d).transpose(1, 2)  # (n, h, L, d)
        token += t
        ctx = F.scaled_dot_product_attention(q, k, part_v, attn_mask=mask, dropout_p=dropout,
                                             scale=attn.scaling)  # (n, h, L, d)
        ctx = ctx.transpose(1, 2).reshape(n * L, h * d)  # (n L, H)
        outs.append(ctx if full else ctx.index_select(0, index))  # (T_g, H)
    if p.fillers:
        outs.append(outs[0].new_zeros(p.fillers, outs[0].shape[1]))  # filler tokens attend to nothing
    ctx = torch.cat(outs) if len(outs) > 1 else outs[0]  # (T', H)
    return attn.out_drop(linears.dense(ctx, attn.Wo, fast))


def _layer(layer, x: Tensor, rope, p: packing.Packed, masks, fast: torch.dtype | None, slots) -> Tensor:
    """modernbert.Layer on packed tokens, (T', H) -> (T', H)."""
    x = x + _attention(layer.attn, layer.attn_norm(x), rope, p, masks, fast, slots)
    mlp = layer.mlp
    u, g = linears.dense(layer.mlp_norm(x), mlp.Wi, fast).chunk(2, dim=-1)  # 2 x (T', I)
    return x + linears.dense(mlp.drop(mlp.act(u) * g), mlp.Wo, fast)  # (T', H)


def encode_packed(encoder: ModernBertEncoder, p: packing.Packed) -> Tensor:
    """The encoder's last hidden states of the packed tokens, (T', H)."""
    x = encoder.embeddings(p.input_ids)  # (T', H)
    fast = linears.inference_dtype(x)
    types = sorted(set(encoder.config.layer_types))
    ropes = {t: encoder.rotary_emb(p.position_ids, t, x.dtype) for t in types}
    masks = {t: [encoder.mask(real, t) for _, _, _, real in p.buckets] for t in types}
    # the inference gather's slots (see _attention); training pads into zero buffers and needs none
    slots = [None if torch.is_grad_enabled() else _slots(index, n * L) for n, L, index, _ in p.buckets]
    recompute = encoder.gradient_checkpointing and encoder.training and torch.is_grad_enabled()
    if recompute:
        from torch.utils.checkpoint import checkpoint
    for layer in encoder.layers:
        t = layer.attn.layer_type
        if recompute:
            x = checkpoint(_layer, layer, x, ropes[t], p, masks[t], fast, slots, use_reentrant=False)
        else:
            x = _layer(layer, x, ropes[t], p, masks[t], fast, slots)
    return encoder.final_norm(x)


def hidden_states(encoder: ModernBertEncoder, columns: list[dict]) -> list[Tensor] | None:
    """K columns {"input_ids", "attention_mask"} -> K x (B_k, L_k, H) in one unpadded pass, or None where
    a row has no token (the reference forward then says so)."""
    dropout = encoder.training and encoder.config.attention_dropout > 0
    p = packing.pack([{"input_ids": c["input_ids"], "attention_mask": c["attention_mask"]} for c in columns],
                     attention_multiple=1 if dropout else packing.ATTENTION_MULTIPLE)  # see packing.ATTENTION_MULTIPLE
    return None if p is None else packing.unpack(encode_packed(encoder, p), p)


def classifier_logits(model: ModernBertClassifier, features: dict) -> Tensor | None:
    """A ModernBertClassifier's logits (B, C) from one unpadded pass, or None where it does not apply."""
    hidden = hidden_states(model.model, [features])
    return None if hidden is None else model.classify(hidden[0], features["attention_mask"])
