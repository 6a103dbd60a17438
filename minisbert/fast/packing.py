"""Padding-free execution of BERT-family encoders: only real tokens go through the matmuls.

A batch padded to its longest row wastes compute on pad tokens (59% of the token slots of NLI triplets
padded per column), and every linear layer pays for them. Packing removes them:

    pack(columns)           K padded feature dicts -> one Packed batch of all N = sum_k B_k rows, with the
                            T real tokens concatenated in order of decreasing row length
    encode_packed(bb, p)    the backbone on the T tokens: embeddings, then per layer a fused QKV
                            linear, attention on length-bucketed padded groups, the output and
                            feed-forward linears on (T, H) again -> (T, H) hidden states
    unpack(hidden, p)       (T, H) -> K x (B_k, L_k, H), each column in its own padded layout (zeros
                            at pads), for `pooling.pool` (so pooling is written once, in pooling.py)
    hidden_states(bb, cols) the three above, or None where the packed path does not apply
    classifier_logits(model, features)
                            a sequence classifier's logits (cross-encoders) from one packed pass

Only attention needs rows to stay apart; it runs per bucket of similar-length rows, padded to the
bucket's longest row, with a key-padding mask (SDPA). Everything else is token-wise, so the result
equals the padded forward up to float summation order (tests/test_packing.py pins both the
embeddings and the gradients with dropout off). With dropout on, the same dropout probabilities are
applied at the same places (embeddings, attention probabilities, both residual branches), only the
random draws differ from a padded run.

The packed path reads the parameters of the module in place (same nn.Parameters, so the optimizer,
saving and loading are unchanged) and is used only for architectures whose forward it reproduces
exactly: `supports(backbone)` says which. Other backbones go through their own forward.

Kernels: the linears are linears.py's (oneDNN's with bias and GELU fused in for inference, on row tiles;
oneDNN's matmuls in both directions for float32 training); training's feed-forward recomputes GELU in
backward (`_GeluFeedForward`) and attention with dropout on CPU recomputes its probabilities in backward
(`_DropoutAttention`). Whether oneDNN's kernels run at all is
kernels.py's call (a probe per kernel); where they do not, the same functions run F.linear (the portable
path), with the same results to float rounding. Each choice is a row of benchmarks/README.md's decision
table.

Shapes: K columns, B_k rows of column k, N rows in all, T real tokens (T' with fillers, see Packed),
L a bucket's longest row (rounded up to ATTENTION_MULTIPLE),
H hidden width, h heads, d head width (H = h d), D embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..bert import POSITIONS, lookup, position_ids_for
import minisbert.fast.kernels as kernels  # the modules themselves, not the package (fast/__init__.py imports us)
import minisbert.fast.linears as linears

# A bucket for attention is closed when padding its rows to its longest row would waste more than this
# share of its (row x key) slots: attention is a small part of the cost, a few buckets per batch suffice.
ATTENTION_WASTE = 0.25
# Every matmul's row count is rounded up to a multiple of this (filler rows, discarded), so that oneDNN,
# which compiles a kernel per new shape, meets a few dozen shapes per run instead of one per batch
# (benchmarks/README.md, decision table: matmul rows rounded up to a multiple of 32).
ROWS_MULTIPLE = 32
# Attention buckets are padded to a multiple of this many keys (masked out) when attention runs without
# dropout: torch's fused CPU SDPA kernel is 2-3x faster per row at multiples of 16; with attention dropout
# the padding only costs, so buckets keep their longest row's length (decision table: attention buckets
# padded to a multiple of 16 keys).
ATTENTION_MULTIPLE = 16
# Inference works on at most this many tokens at a time (the token-wise part of a layer in row tiles,
# attention buckets of at most this many slots), so a run meets a bounded set of matmul shapes and oneDNN's
# kernel cache stays bounded; training keeps whole-batch matmuls (decision table: inference matmuls on row
# tiles of at most 1024 tokens).
INFERENCE_TILE = 1024


def _round_up(n: int) -> int:
    return -(-n // ROWS_MULTIPLE) * ROWS_MULTIPLE


def supports(backbone) -> bool:
    """True when `encode_packed` computes exactly what `backbone.forward` does (dropout draws aside).

    Besides the architecture, every linear layer of the encoder must be a plain nn.Linear without hooks
    (the packed path reads their weights directly, which would bypass e.g. a LoRA wrapper); anything else
    goes through the backbone's own forward. Gradient checkpointing is done here too (`encode_packed`).
    """
    config = getattr(backbone, "config", None)
    if config is None or getattr(config, "model_type", None) not in POSITIONS:
        return False
    if getattr(config, "is_decoder", False) or getattr(config, "position_embedding_type", "absolute") != "absolute":
        return False
    if not (hasattr(backbone, "embeddings") and hasattr(backbone, "encoder")):
        return False
    for layer in backbone.encoder.layer:
        att = layer.attention.self
        for lin in (att.query, att.key, att.value, layer.attention.output.dense, layer.intermediate.dense, layer.output.dense):
            if type(lin) is not nn.Linear or lin._forward_hooks or lin._forward_pre_hooks:
                return False
    return True


@dataclass
class Packed:
    """The real tokens of N rows (K columns stacked), concatenated row after row by decreasing length,
    then filler tokens up to T' = T rounded up to ROWS_MULTIPLE (token id 0 at position 0: computed, in
    no attention bucket, never read back, so they receive no gradient)."""

    input_ids: Tensor  # (T',)
    token_type_ids: Tensor | None  # (T',)
    position_ids: Tensor  # (T',) each token's position id, as the backbone numbers it in the padded batch
    buckets: list[tuple[int, int, Tensor, Tensor]]  # attention buckets: (rows n, L, index (T_g,), key mask (n, L))
    unsort: Tensor  # (T,) packed position of each real token in the columns' own row-major order
    masks: list[Tensor]  # K x (B_k, L_k) the columns' attention masks, to put hidden states back in place
    fillers: int = 0  # T' - T


def _buckets(lengths: list[int], device, multiple: int = ATTENTION_MULTIPLE,
             max_slots: int | None = None) -> list[tuple[int, int, Tensor, Tensor]]:
    """Split rows sorted by decreasing length into attention buckets (n rows, L, index, mask).

    A bucket is closed when padding its rows to its longest would waste more than ATTENTION_WASTE of
    its (query x key) slots, or when it would hold more than `max_slots` (n L) slots; its L is that longest
    row rounded up to `multiple`. index (T_g,) places the bucket's tokens (packed order) in its (n L)
    padded layout; mask (n, L) is True at real tokens.
    """
    buckets, start, n_rows = [], 0, len(lengths)
    while start < n_rows:
        longest = lengths[start]
        L = -(-longest // multiple) * multiple  # the bucket's key length
        rows_cap = n_rows if max_slots is None else max(1, max_slots // L)
        end, real = start, 0
        while end < n_rows and (end == start or (end - start < rows_cap and
                                                 1 - (real + lengths[end] ** 2) / ((end + 1 - start) * longest ** 2) <= ATTENTION_WASTE)):
            real += lengths[end] ** 2
            end += 1
        lens = torch.tensor(lengths[start:end], device=device)
        mask = torch.arange(L, device=device)[None, :] < lens[:, None]  # (n, L)
        buckets.append((end - start, L, mask.reshape(-1).nonzero().squeeze(1), mask))
        start = end
    return buckets


def pack(columns: list[dict], attention_multiple: int = ATTENTION_MULTIPLE, bucket_slots: int | None = None) -> Packed | None:
    """K padded feature dicts {"input_ids" (B_k, L_k), "attention_mask" (B_k, L_k)[, "token_type_ids",
    "position_ids"]} -> one Packed batch, or None when a row has no token (nothing to attend to; use the
    padded path). Any padding side works: a row's real tokens are read in order. Without "position_ids",
    positions are the padded column index (BERT's numbering). Attention buckets are padded to
    `attention_multiple` keys (1: not at all; see ATTENTION_MULTIPLE) and hold at most `bucket_slots`
    (row x key) slots (None: no limit; see INFERENCE_TILE)."""
    masks = [c["attention_mask"].bool() for c in columns]
    lengths = torch.cat([m.sum(1) for m in masks])  # (N,) in column order
    if lengths.numel() == 0 or int(lengths.min()) == 0:
        return None
    device = lengths.device
    ids = torch.cat([c["input_ids"][m] for c, m in zip(columns, masks)])  # (T,) column order
    with_types = all("token_type_ids" in c for c in columns)
    types = torch.cat([c["token_type_ids"][m] for c, m in zip(columns, masks)]) if with_types else None
    # Rows by decreasing length (stable), so attention buckets are runs of similar rows.
    order = torch.sort(lengths, descending=True, stable=True).indices  # (N,) packed row -> column-order row
    sorted_lengths = lengths[order]
    starts = torch.cumsum(lengths, 0) - lengths  # (N,) first token of each row, column order
    row_of_token = torch.repeat_interleave(order, sorted_lengths)  # (T,) column-order row of each packed token
    packed_starts = torch.cumsum(sorted_lengths, 0) - sorted_lengths  # (N,) first token of each packed row
    within_row = torch.arange(ids.shape[0], device=device) - torch.repeat_interleave(packed_starts, sorted_lengths)
    gather = starts[row_of_token] + within_row  # (T,) column-order token of each packed token
    positions = torch.cat([
        (c["position_ids"] if "position_ids" in c else torch.arange(m.shape[1], device=device).expand_as(m))[m]
        for c, m in zip(columns, masks)
    ])  # (T,) column order
    unsort = torch.empty_like(gather)
    unsort[gather] = torch.arange(gather.shape[0], device=device)
    fillers = _round_up(gather.shape[0]) - gather.shape[0]

    def tail(x):  # (T,) -> (T',)
        return torch.cat([x, x.new_zeros(fillers)]) if fillers else x

    return Packed(
        input_ids=tail(ids[gather]), token_type_ids=tail(types[gather]) if types is not None else None,
        position_ids=tail(positions[gather]), buckets=_buckets(sorted_lengths.tolist(), device, attention_multiple, bucket_slots), unsort=unsort,
        masks=masks, fillers=fillers,
    )


def _attention(layer, x: Tensor, p: Packed, dropout: float, fast: torch.dtype | None) -> Tensor:
    """Self-attention of one BERT layer on packed tokens x (T, H) -> context (T, H), before the output dense.

    Per bucket, the rows are laid out padded (n rows x L) for SDPA. Training projects the T real tokens
    (one (T, H) x (H, 3H) matmul) and pads q, k, v; inference projects each bucket's tokens on their own,
    so that the (T, 3H) projection of a whole batch never sits in memory next to a padded copy (the peak
    memory of long-document encoding is this layer).
    """
    att = layer.attention.self
    h, d = att.num_attention_heads, att.attention_head_size
    scale = getattr(att, "scaling", d ** -0.5)  # transformers < 5 has no .scaling: 1 / sqrt(d), SDPA's default
    # One (., H) x (H, 3H) matmul instead of three; the weight concat is 3 H^2 floats, small next to T H.
    if fast is None:
        weight = torch.cat([att.query.weight, att.key.weight, att.value.weight])  # (3H, H)
        bias = torch.cat([att.query.bias, att.key.bias, att.value.bias])  # (3H,)
        qkv = linears.linear(x, weight, bias, None)  # (T', 3H)
    else:
        weight, bias = linears.prepared(fast, att.query, att.key, att.value)
        qkv = None
    outs, token = [], 0
    for n, L, index, mask in p.buckets:
        t = index.shape[0]
        full = t == n * L  # every row of the bucket has L tokens: no padding at all
        if qkv is not None:
            part = qkv[token:token + t]  # (T_g, 3H)
            # In place into fresh zeros: one (n L, 3H) buffer, not two.
            padded = part if full else part.new_zeros(n * L, part.shape[1]).index_copy_(0, index, part)  # (n L, 3H)
        else:  # the bucket's T_g tokens and the rows after them up to the row grid (see ROWS_MULTIPLE)
            rows = _round_up(t)
            part = x[token:token + rows]  # (~T_g, H), a view
            if part.shape[0] < rows:  # the last bucket: fillers of its own
                part = torch.cat([part, part.new_zeros(rows - part.shape[0], part.shape[1])])
            part = linears.linear(part, weight, bias, fast)  # (~T_g, 3H)
            # A full bucket is its own padded layout: no copy.
            padded = part[:t] if full else part.new_zeros(n * L, part.shape[1]).index_copy_(0, index, part[:t])  # (n L, 3H)
        token += t
        q, k, v = padded.view(n, L, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (n, h, L, d)
        key_mask = None if full else mask[:, None, None, :]  # (n, 1, 1, L)
        # Also without grad, so that GradCache's no-grad pass draws the same dropout masks as its replay.
        if dropout > 0 and q.device.type == "cpu":
            ctx = _DropoutAttention.apply(q, k, v, key_mask, dropout, scale)  # (n, h, L, d)
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout, scale=scale)  # (n, h, L, d)
        del q, k, v, padded
        ctx = ctx.transpose(1, 2).reshape(n * L, h * d)  # (n L, H)
        outs.append(ctx if full else ctx.index_select(0, index))  # (T_g, H)
    if p.fillers:
        outs.append(outs[0].new_zeros(p.fillers, outs[0].shape[1]))  # the filler tokens attend to nothing
    return torch.cat(outs) if len(outs) > 1 else outs[0]  # (T', H)


def _dropout_seed() -> int:
    """A seed for one attention call's dropout mask, drawn from torch's default CPU generator (so runs
    are reproducible under torch.manual_seed, and resuming with the saved RNG state redraws the same)."""
    return int(torch.randint(0, 2**62, (1,)))


def _dropout_keep(shape, p: float, seed: int) -> Tensor:
    """The keep mask (bool) of dropout with probability p, the same for the same seed. Uniform draws
    compared with p, faster than bernoulli_ into a bool tensor (decision table: attention with dropout that
    recomputes its probabilities)."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) >= p


def _attention_probabilities(q: Tensor, k: Tensor, key_mask: Tensor | None, scale: float) -> Tensor:
    """softmax(q k^T scale) over unmasked keys, in float32: (n, h, L, d) x 2 -> (n, h, L, L)."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)).mul_(scale)  # (n, h, L, L)
    if key_mask is not None:
        scores.masked_fill_(~key_mask, float("-inf"))
    return torch.softmax(scores, -1)


class _DropoutAttention(torch.autograd.Function):
    """softmax(q k^T scale + key mask), dropped out with probability p, times v: attention for training on
    CPU. SDPA with dropout takes torch's math path there, which keeps the (n, h, L, L) probabilities, the
    dropout mask and the dropped probabilities for backward: quadratic in the row length, the largest
    activation of long rows. This keeps q, k, v and a seed; backward recomputes the probabilities (one
    more q k^T and softmax) and redraws the same dropout mask. Computes in float32, as the math path does
    for bf16 inputs; gradients equal autograd's through the same operations (tests/test_packing.py)."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask, p, scale):  # q, k, v (n, h, L, d); key_mask (n, 1, 1, L) or None
        seed = _dropout_seed()
        with torch.autocast("cpu", enabled=False):
            probs = _attention_probabilities(q, k, key_mask, scale)  # (n, h, L, L)
            probs.mul_(_dropout_keep(probs.shape, p, seed)).mul_(1 / (1 - p))
            out = torch.matmul(probs, v.float()).to(v.dtype)  # (n, h, L, d)
        ctx.save_for_backward(q, k, v, key_mask)
        ctx.seed, ctx.p, ctx.scale = seed, p, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, key_mask = ctx.saved_tensors
        p, scale = ctx.p, ctx.scale
        with torch.autocast("cpu", enabled=False):
            dout = dout.float()
            probs = _attention_probabilities(q, k, key_mask, scale)  # (n, h, L, L), recomputed
            keep = _dropout_keep(probs.shape, p, ctx.seed)  # the forward's mask
            dv = torch.matmul((probs * keep).mul_(1 / (1 - p)).transpose(-1, -2), dout)  # (n, h, L, d)
            dprobs = torch.matmul(dout, v.float().transpose(-1, -2)).mul_(keep).mul_(1 / (1 - p))  # (n, h, L, L)
            del keep
            # softmax backward: ds = probs * (dprobs - sum(dprobs * probs))
            dprobs.sub_((dprobs * probs).sum(-1, keepdim=True))
            ds = probs.mul_(dprobs).mul_(scale)  # (n, h, L, L); zero at masked keys
            del dprobs
            dq = torch.matmul(ds, k.float())  # (n, h, L, d)
            dk = torch.matmul(ds.transpose(-1, -2), q.float())  # (n, h, L, d)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


class _GeluFeedForward(torch.autograd.Function):
    """W2 gelu(W1 x + b1) + b2 for training, keeping x and the pre-activation u = W1 x + b1 for backward
    but not gelu(u): that (T, I) tensor, the largest activation of a layer, is recomputed in backward from
    u (one GELU, cheap next to the matmuls). Gradients equal autograd's through F.linear and F.gelu.
    Runs under the caller's autocast state in both directions, as autograd would."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        device = x.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        u = linears.mm(x, w1.t(), b1)  # (T, I)
        y = linears.mm(F.gelu(u), w2.t(), b2)  # (T, H)
        ctx.save_for_backward(x, w1, w2, u)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w1, w2, u = ctx.saved_tensors
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            h = F.gelu(u)  # (T, I), recomputed
            dw2 = linears.mm(dy.t(), h.to(dy.dtype))  # (H, I)
            dh = linears.mm(dy, w2.to(dy.dtype))  # (T, I)
            du = kernels.gelu_backward(dh.to(u.dtype), u)  # (T, I)
            dw1 = linears.mm(du.t(), x.to(du.dtype))  # (I, H)
            dx = linears.mm(du, w1.to(du.dtype))  # (T, H)
        return dx, dw1, du.sum(0), dw2, dy.sum(0)


def encode_packed(backbone, p: Packed) -> Tensor:
    """The backbone's last hidden states of the packed tokens, (T', H); the pooler head is not run."""
    emb = backbone.embeddings
    x = lookup(emb.word_embeddings, p.input_ids)  # (T', H)
    types = p.token_type_ids if p.token_type_ids is not None else torch.zeros_like(p.input_ids)
    x = x + emb.token_type_embeddings(types)
    x = x + emb.position_embeddings(p.position_ids)
    x = emb.dropout(emb.LayerNorm(x))
    fast = linears.inference_dtype(x)
    exact_gelu = backbone.config.hidden_act == "gelu"  # transformers' "gelu" is the exact (erf) GELU
    training = backbone.training and torch.is_grad_enabled()
    for layer in backbone.encoder.layer:
        args = (layer, x, p, layer.attention.self.dropout.p if backbone.training else 0.0, fast, exact_gelu)
        # Gradient checkpointing (a transformers layer's own flag, else bert.py's model-wide one): keep only the
        # layer's input and recompute the layer on the packed tokens in backward (the RNG state is replayed,
        # so dropout draws the same masks).
        if training and getattr(layer, "gradient_checkpointing", getattr(backbone, "gradient_checkpointing", False)):
            from torch.utils.checkpoint import checkpoint

            x = checkpoint(_layer, *args, use_reentrant=False)
        else:
            x = _layer(*args)
    return x


def _layer(layer, x: Tensor, p: Packed, dropout: float, fast: torch.dtype | None, exact_gelu: bool) -> Tensor:
    """One BERT layer on packed tokens, (T', H) -> (T', H). A function of its own so that in inference each
    intermediate is freed when the layer returns, not kept alive by a loop variable through the next
    layer's attention. Inference runs the token-wise part in row tiles (see INFERENCE_TILE)."""
    ctx = _attention(layer, x, p, dropout, fast)  # (T', H)
    if fast is None:
        return _token_wise(layer, ctx, x, fast, exact_gelu)
    out = torch.empty_like(x)  # (T', H)
    for start in range(0, x.shape[0], INFERENCE_TILE):  # T' is on the ROWS_MULTIPLE grid, so is every tile
        tile = slice(start, start + INFERENCE_TILE)
        out[tile] = _token_wise(layer, ctx[tile], x[tile], fast, exact_gelu)
    return out


def _token_wise(layer, ctx: Tensor, x: Tensor, fast: torch.dtype | None, exact_gelu: bool) -> Tensor:
    """The rest of a BERT layer after attention, token by token: attention context (t, H) and the
    layer's input (t, H) -> the layer's output (t, H)."""
    out = layer.attention.output
    x = out.LayerNorm(out.dropout(linears.dense(ctx, out.dense, fast)) + x)  # (t, H)
    up, out = layer.intermediate.dense, layer.output
    if exact_gelu and fast is None and torch.is_grad_enabled():
        ffn = _GeluFeedForward.apply(x, up.weight, up.bias, out.dense.weight, out.dense.bias)  # (t, H)
    else:
        inner = linears.dense(x, up, fast, gelu=True) if exact_gelu else layer.intermediate.intermediate_act_fn(linears.dense(x, up, fast))  # (t, I)
        ffn = linears.dense(inner, out.dense, fast)  # (t, H)
        del inner
    return out.LayerNorm(out.dropout(ffn) + x)


def unpack(hidden: Tensor, p: Packed) -> list[Tensor]:
    """(T', H) packed hidden states -> K x (B_k, L_k, H) in each column's own padded layout, zeros at pads."""
    tokens = hidden.index_select(0, p.unsort)  # (T, H) real tokens, column order, row-major within each column
    outs, start = [], 0
    for mask in p.masks:
        B, L = mask.shape
        index = mask.reshape(-1).nonzero().squeeze(1)  # (T_k,)
        part = tokens[start:start + index.shape[0]]
        start += index.shape[0]
        outs.append(part.new_zeros(B * L, part.shape[1]).index_copy_(0, index, part).view(B, L, -1))  # (B_k, L_k, H)
    return outs


def hidden_states(backbone, columns: list[dict]) -> list[Tensor] | None:
    """K columns of padded features -> K x (B_k, L_k, H) last hidden states in one packed pass, or None
    when the backbone (see `supports`) or the batch (an empty row) needs the backbone's own forward."""
    if not supports(backbone):
        return None
    dropout = backbone.training and any(layer.attention.self.dropout.p > 0 for layer in backbone.encoder.layer)
    p = pack([c | {"position_ids": position_ids_for(backbone, c["input_ids"])} for c in columns],
             attention_multiple=1 if dropout else ATTENTION_MULTIPLE,  # see ATTENTION_MULTIPLE
             bucket_slots=None if torch.is_grad_enabled() else INFERENCE_TILE)  # see INFERENCE_TILE
    return None if p is None else unpack(encode_packed(backbone, p), p)


# Sequence-classification heads that read the first token's state: (attribute of the encoder, head kind).
CLASSIFIERS = {
    "BertForSequenceClassification": ("bert", "pooler"),
    "RobertaForSequenceClassification": ("roberta", "first_token"),
    "XLMRobertaForSequenceClassification": ("roberta", "first_token"),
    "CamembertForSequenceClassification": ("roberta", "first_token"),
}


def classifier_logits(model, features: dict) -> Tensor | None:
    """A transformers sequence classifier's logits (B, C) from one packed pass, or None where the packed
    path does not apply (another head or backbone, or a batch whose first column is padding: the head
    reads position 0 of the padded batch, which only right padding keeps a real token)."""
    kind = CLASSIFIERS.get(type(model).__name__)
    if kind is None or not bool(features["attention_mask"][:, 0].all()):
        return None
    encoder = getattr(model, kind[0], None)
    if encoder is None or not supports(encoder):
        return None
    hidden = hidden_states(encoder, [features])
    if hidden is None:
        return None
    if kind[1] == "pooler":  # BERT: tanh(dense(h[:, 0])) -> dropout -> linear
        return model.classifier(model.dropout(encoder.pooler(hidden[0])))
    return model.classifier(hidden[0])  # RoBERTa's head takes h[:, 0] itself
