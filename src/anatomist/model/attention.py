"""Multi-head attention with the classic hook points.

Weights use the classic per-head layout: ``W_Q [n_heads, d_model, d_head]``,
``W_O [n_heads, d_head, d_model]``. Under grouped-query attention the key/value weights have
``n_key_value_heads`` heads and are stored as ``_W_K``/``_W_V``; ``W_K``/``W_V`` then repeat them
per query head, as the classic library did.

Attention runs through ``scaled_dot_product_attention`` unless a hook needs the scores or the
pattern (``hook_attn_scores`` / ``hook_pattern``); then the explicit path runs for this layer.

Attention sinks (``cfg.attn_sinks``, GPT-OSS): each head has a learned logit ``sinks[h]`` that
joins every query's softmax as one more key with no value, so a query can attend to nothing::

    pattern = softmax([scores, sinks[h]])[..., :-1]        # rows sum to 1 - p(sink)

The scores and the pattern keep their ``[b, h, q, k]`` shape over the real keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anatomist.config import TransformerConfig
from anatomist.hooks import HookPoint, is_hooked
from anatomist.model.kv_cache import KVCacheEntry
from anatomist.model.mlp import empty_weight, matmul_bias
from anatomist.model.norm import LayerNorm, RMSNorm
from anatomist.model.positions import Rotary, alibi_bias, alibi_slopes


class Attention(nn.Module):
    alibi_slopes: Tensor  # [n_heads], ALiBi models only

    def __init__(self, cfg: TransformerConfig, layer_idx: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        h, kv, d, dh = cfg.n_heads, cfg.n_kv_heads, cfg.d_model, cfg.d_head
        dtype = cfg.dtype
        self.W_Q = nn.Parameter(empty_weight((h, d, dh), (0, 2, 1), dtype))
        self.b_Q = nn.Parameter(torch.zeros(h, dh, dtype=dtype))
        self._register_kv(kv, d, dh, dtype)
        self.W_O = nn.Parameter(empty_weight((h, dh, d), (2, 0, 1), dtype))
        self.b_O = nn.Parameter(torch.zeros(d, dtype=dtype))
        if cfg.attn_sinks:  # each head's learned sink logit (GPT-OSS)
            self.sinks = nn.Parameter(torch.zeros(h, dtype=dtype))

        self.scale = cfg.attn_scale if cfg.use_attn_scale else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            self.scale *= layer_idx + 1
        self.window = cfg.window_for_layer(layer_idx)
        # NoPE layers (cfg.nope_layers) of a rotary model attend without positions (SmolLM3).
        rotary = cfg.positional_embedding_type == "rotary"
        rotary = rotary and layer_idx not in (cfg.nope_layers or ())
        self.rotary = Rotary(cfg, local=self.window is not None) if rotary else None
        if cfg.positional_embedding_type == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(h), persistent=False)
        if cfg.qk_norm:  # a norm of each head's queries and keys (or of all heads' at once)
            self.q_norm = _make_qk_norm(cfg, h)
            self.k_norm = _make_qk_norm(cfg, kv)

        self.hook_q = HookPoint()  # [b, p, n_heads, d_head]
        self.hook_k = HookPoint()  # [b, p, n_kv_heads, d_head]
        self.hook_v = HookPoint()  # [b, p, n_kv_heads, d_head]
        if self.rotary is not None:
            self.hook_rot_q = HookPoint()  # [b, p, n_heads, d_head], after rotary
            self.hook_rot_k = HookPoint()  # [b, p, n_kv_heads, d_head]
        self.hook_attn_scores = HookPoint()  # [b, n_heads, q_pos, k_pos], scaled and masked
        self.hook_pattern = HookPoint()  # [b, n_heads, q_pos, k_pos], softmax of the scores
        self.hook_z = HookPoint()  # [b, p, n_heads, d_head], pattern-weighted values
        self.hook_result = HookPoint("use_attn_result")  # [b, p, n_heads, d_model]

    def _register_kv(self, kv: int, d: int, dh: int, dtype: torch.dtype) -> None:
        self.W_K = nn.Parameter(empty_weight((kv, d, dh), (0, 2, 1), dtype))
        self.W_V = nn.Parameter(empty_weight((kv, d, dh), (0, 2, 1), dtype))
        self.b_K = nn.Parameter(torch.zeros(kv, dh, dtype=dtype))
        self.b_V = nn.Parameter(torch.zeros(kv, dh, dtype=dtype))

    # Key/value weights with one slice per key/value head (equal to W_K/W_V without GQA).
    @property
    def kv_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.W_K, self.b_K, self.W_V, self.b_V

    @property
    def needs_pattern(self) -> bool:
        """Whether to compute the pattern explicitly: a hook wants it, or soft-capped scores,
        which the fused kernel cannot compute."""
        return (
            is_hooked(self.hook_attn_scores)
            or is_hooked(self.hook_pattern)
            or self.cfg.attn_scores_soft_cap is not None
        )

    def forward(
        self,
        query_input: Tensor,
        key_input: Tensor,
        value_input: Tensor,
        positions: Tensor,
        mask: Tensor | None,
        past_kv: KVCacheEntry | None = None,
        key_positions: Tensor | None = None,
    ) -> Tensor:
        """Inputs are ``[b, p, d_model]``, or ``[b, p, heads, d_model]`` (one input per head).

        `mask` is a boolean ``[b, 1, q, k]`` (True = may attend, broadcastable), or None: plain
        causal attention (or full attention when ``cfg.causal`` is False). With `past_kv` the
        new keys and values (after rotary) join the cached ones, the queries being the last q of
        the k positions; `key_positions` ``[b, k]`` are then the positions of all keys (ALiBi).
        A sliding-window entry holds only the last keys (see `anatomist.model.kv_cache`); the
        mask and `key_positions` may cover all positions and are then cut to those keys.
        """
        W_K, b_K, W_V, b_V = self.kv_weights
        q = self.hook_q(_project(query_input, self.W_Q, self.b_Q))  # [b, p, h, dh]
        k = self.hook_k(_project(key_input, W_K, b_K))  # [b, p, kv, dh]
        v = self.hook_v(_project(value_input, W_V, b_V))  # [b, p, kv, dh]
        if self.cfg.qk_norm:
            q, k = _norm_heads(self.q_norm, q, self.cfg), _norm_heads(self.k_norm, k, self.cfg)
        if self.rotary is not None:
            cos, sin = self.rotary.cos_sin(positions, q.dtype)
            q = self.hook_rot_q(self.rotary(q, cos, sin))
            k = self.hook_rot_k(self.rotary(k, cos, sin))

        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, heads, p, dh]
        if past_kv is not None:  # cached keys first: [b, kv, cached + p, dh]
            kh, vh = past_kv.extend(kh, vh)
            # A sliding-window entry holds only the last keys: the mask's and the positions'
            # last columns are theirs.
            k_len = kh.shape[-2]
            if mask is not None and mask.shape[-1] != k_len:
                mask = mask[..., -k_len:]
            if key_positions is not None and key_positions.shape[-1] != k_len:
                key_positions = key_positions[..., -k_len:]
        if self.window is not None and kh.shape[-2] > self.window:
            if not self.cfg.causal:
                raise NotImplementedError("Sliding windows are only supported in causal models.")
            mask = _within_window(mask, qh.shape[-2], kh.shape[-2], self.window, q.device)
        bias = None
        if self.cfg.positional_embedding_type == "alibi":
            keys_at = positions if key_positions is None else key_positions
            bias = self._alibi(keys_at).to(qh.dtype)  # [b, h, 1, k]
        if self.needs_pattern:
            z = self._explicit_attention(qh, kh, vh, mask, bias)
        elif self.cfg.attn_sinks:
            z = self._fused_attention_with_sinks(qh, kh, vh, mask, bias)
        else:
            attn_mask: Tensor | None = mask
            if bias is not None:  # SDPA takes the bias as a float mask, -inf where masked
                allowed = mask
                if allowed is None and self.cfg.causal:
                    allowed = causal_mask(qh.shape[-2], kh.shape[-2], q.device)
                attn_mask = bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))
            z = F.scaled_dot_product_attention(
                qh,
                kh,
                vh,
                attn_mask=attn_mask,
                is_causal=self.cfg.causal and attn_mask is None and qh.shape[-2] > 1,
                scale=1.0 / self.scale,
                enable_gqa=self.cfg.is_grouped_query,
            )
        z = self.hook_z(z.transpose(1, 2))  # [b, p, h, dh]

        if self.cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bphe,hed->bphd", z, self.W_O))
            return result.sum(-2) + self.b_O
        b, p, h, dh = z.shape
        out = matmul_bias(z.reshape(b * p, h * dh), self.W_O.reshape(h * dh, -1), self.b_O)
        return out.view(b, p, -1)

    def _alibi(self, positions: Tensor) -> Tensor:
        """The ALiBi bias ``[b, h, 1, k]`` added to the scaled scores.

        BLOOM adds ``slope * position`` after scaling, ``q.k / sqrt(d_head) + bias``; Falcon-RW
        adds it before, ``(q.k + bias) / sqrt(d_head)``, so its bias is scaled too, and its
        reference code computes ``slope * position`` in bfloat16 (exact up to position 256, then
        rounded to 8 significant bits).
        """
        if self.cfg.alibi_bias_bfloat16:
            bias = self.alibi_slopes.bfloat16()[None, :, None, None] * positions[:, None, None, :]
            bias = bias.float()
        else:
            bias = alibi_bias(self.alibi_slopes, positions)
        return bias / self.scale if self.cfg.alibi_scaled_with_scores else bias

    def _explicit_attention(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None = None
    ) -> Tensor:
        # At least float32 (scores, pattern, pattern @ v), rounded once at the end like the fused
        # kernel: hooking the pattern of a half-precision model does not add rounding error.
        dtype, wide = q.dtype, torch.promote_types(q.dtype, torch.float32)
        q, k, v = q.to(wide), k.to(wide), v.to(wide)
        # `scores` is a fresh tensor: scaled, biased and masked in place (the same numbers as
        # out-of-place ops, without three more [b, h, q, k] tensors).
        scores = _grouped_scores(q, k).div_(self.scale)  # [b, h, q, k]
        if bias is not None:  # ALiBi
            scores = scores.add_(bias)
        cap = self.cfg.attn_scores_soft_cap
        if cap is not None:  # Gemma 2: bound the scores smoothly to (-cap, cap) before masking
            scores = cap * torch.tanh(scores / cap)
        blocked = _blocked_scores(mask, self.cfg.causal, q.shape[-2], k.shape[-2], scores)
        if blocked is not None:  # the same numbers as masked_fill, at a third of its cost
            scores = scores.add_(blocked)
        scores = self.hook_attn_scores(scores)
        if self.cfg.attn_sinks:  # the sink joins the softmax; the pattern keeps the real keys
            sink = self.sinks.to(scores.dtype)[None, :, None, None].expand(*scores.shape[:-1], 1)
            probs = F.softmax(torch.cat([scores, sink], dim=-1), dim=-1)
            pattern = self.hook_pattern(probs[..., :-1])
        else:
            pattern = self.hook_pattern(F.softmax(scores, dim=-1))
        return _grouped_mix(pattern.to(wide), v).to(dtype)  # [b, h, q, dh]

    def _fused_attention_with_sinks(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None
    ) -> Tensor:
        """Attention with sinks through ``scaled_dot_product_attention``: the sink is one more key.

        Queries get `pad` extra features, the first holding ``sinks[h]`` over the softmax scale;
        the real keys get zeros there, the sink key is zero except a one in that feature, and its
        value is zero. So ``q.k`` is unchanged for the real keys (plus exact zeros), the sink's
        score is ``sinks[h]`` (to rounding), and the sink adds nothing to the output. The extra
        features keep the head size a multiple of 8, which the fused kernels want; the mask gets
        a column that always lets the sink in. Per query head, so it works under GQA.
        """
        b, h, q_len, dh = q.shape
        kv, k_len = k.shape[1], k.shape[-2]
        pad = 8 - dh % 8
        sink_feature = (self.sinks * self.scale).to(q.dtype)  # SDPA multiplies by 1 / scale
        q_extra = q.new_zeros(b, h, q_len, pad)
        q_extra[..., 0] = sink_feature[None, :, None]
        sink_key = k.new_zeros(b, kv, 1, dh + pad)
        sink_key[..., dh] = 1.0
        k = torch.cat([F.pad(k, (0, pad)), sink_key], dim=-2)  # [b, kv, k + 1, dh + pad]
        v = F.pad(v, (0, 0, 0, 1))  # [b, kv, k + 1, dh], the sink's value is zero
        q = torch.cat([q, q_extra], dim=-1)  # [b, h, q, dh + pad]

        allowed = mask
        if allowed is None and self.cfg.causal:
            allowed = causal_mask(q_len, k_len, q.device)
        attn_mask: Tensor | None = allowed
        if bias is not None:  # ALiBi: a float mask, -inf where masked
            attn_mask = bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))
        if attn_mask is None:
            attn_mask = torch.ones(1, 1, q_len, k_len + 1, dtype=torch.bool, device=q.device)
        else:  # the sink's column: always allowed (True, or a zero bias)
            sink_allowed = 1.0 if attn_mask.dtype == torch.bool else 0.0
            attn_mask = F.pad(attn_mask, (0, 1), value=sink_allowed)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            scale=1.0 / self.scale,
            enable_gqa=self.cfg.is_grouped_query,
        )


class GroupedQueryAttention(Attention):
    """Attention whose keys and values have fewer heads than its queries."""

    def _register_kv(self, kv: int, d: int, dh: int, dtype: torch.dtype) -> None:
        self._W_K = nn.Parameter(empty_weight((kv, d, dh), (0, 2, 1), dtype))
        self._W_V = nn.Parameter(empty_weight((kv, d, dh), (0, 2, 1), dtype))
        self._b_K = nn.Parameter(torch.zeros(kv, dh, dtype=dtype))
        self._b_V = nn.Parameter(torch.zeros(kv, dh, dtype=dtype))

    @property
    def kv_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self._W_K, self._b_K, self._W_V, self._b_V

    def _repeat(self, t: Tensor) -> Tensor:
        return t.repeat_interleave(self.cfg.n_heads // self.cfg.n_kv_heads, dim=0)

    @property
    def W_K(self) -> Tensor:  # type: ignore[override]
        return self._repeat(self._W_K)

    @property
    def W_V(self) -> Tensor:  # type: ignore[override]
        return self._repeat(self._W_V)

    @property
    def b_K(self) -> Tensor:  # type: ignore[override]
        return self._repeat(self._b_K)

    @property
    def b_V(self) -> Tensor:  # type: ignore[override]
        return self._repeat(self._b_V)


def make_attention(cfg: TransformerConfig, layer_idx: int) -> Attention:
    cls = GroupedQueryAttention if cfg.is_grouped_query else Attention
    return cls(cfg, layer_idx)


def _project(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """Per-head projection: ``[b, p, d] or [b, p, heads, d]`` with ``W [heads, d, e]`` -> ``[b, p, heads, e]``."""
    if x.dim() == 4:
        return torch.einsum("bphd,hde->bphe", x, W) + b
    heads, d, e = W.shape
    flat = W.permute(1, 0, 2).reshape(d, heads * e)
    out = matmul_bias(x.reshape(-1, d), flat, b)
    return out.view(*x.shape[:-1], heads, e)


QK_NORMS: dict[str, type[LayerNorm] | type[RMSNorm]] = {"RMS": RMSNorm, "LN": LayerNorm}


def _make_qk_norm(cfg: TransformerConfig, heads: int) -> nn.Module:
    """The norm of `heads` heads' queries (or keys): over each head's d_head features with weights
    shared by the heads (Qwen3, Phi) or per head (Cohere, StableLM), or over all heads at once
    (OLMo 2)."""
    norm = QK_NORMS.get(cfg.qk_norm_type)
    if norm is None:
        raise ValueError(
            f"qk_norm_type must be one of {', '.join(QK_NORMS)}, got {cfg.qk_norm_type!r}."
        )
    if cfg.qk_norm_over_heads:
        if cfg.qk_norm_per_head_weights:
            raise ValueError(
                "qk_norm_over_heads (one norm over all heads) and qk_norm_per_head_weights "
                "(one norm per head) exclude each other; set one of them."
            )
        return norm(cfg, length=cfg.d_head * heads)
    return norm(cfg, length=cfg.d_head, heads=heads if cfg.qk_norm_per_head_weights else None)


def _norm_heads(norm: nn.Module, x: Tensor, cfg: TransformerConfig) -> Tensor:
    """Apply a QK norm to ``[b, p, heads, d_head]``: per head, or over all heads at once."""
    if not cfg.qk_norm_over_heads:
        return norm(x)
    return norm(x.flatten(-2)).view(x.shape)


def _within_window(
    mask: Tensor | None, q_len: int, k_len: int, window: int, device: torch.device
) -> Tensor:
    """`mask` (or plain causal) narrowed so query i sees only keys j with i - j < window."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    band = (q_pos - k_pos < window)[None, None]
    base = causal_mask(q_len, k_len, device) if mask is None else mask
    return base & band


def _grouped_scores(q: Tensor, k: Tensor) -> Tensor:
    """``q @ k^T`` ``[b, h, q, k]`` for queries ``[b, h, q, dh]`` and keys ``[b, kv, k, dh]``,
    query head i reading key head ``i // (h // kv)``: each key head's query heads are stacked
    into one matrix, so the keys are not repeated per query head."""
    b, h, q_len, dh = q.shape
    kv, k_len = k.shape[1], k.shape[-2]
    if kv == h:
        return q @ k.transpose(-1, -2)
    stacked = q.reshape(b, kv, (h // kv) * q_len, dh)
    return (stacked @ k.transpose(-1, -2)).view(b, h, q_len, k_len)


def _grouped_mix(pattern: Tensor, v: Tensor) -> Tensor:
    """``pattern @ v`` ``[b, h, q, dh]`` for values ``[b, kv, k, dh]`` (as `_grouped_scores`)."""
    b, h, q_len, k_len = pattern.shape
    kv = v.shape[1]
    if kv == h:
        return pattern @ v
    stacked = pattern.reshape(b, kv, (h // kv) * q_len, k_len)
    return (stacked @ v).view(b, h, q_len, v.shape[-1])


def _blocked_scores(
    mask: Tensor | None, causal: bool, q_len: int, k_len: int, scores: Tensor
) -> Tensor | None:
    """What masking adds to the scores: 0 where a query may attend, the dtype's lowest value
    where not (None: nothing masked). Adding it gives exactly ``masked_fill(~mask, lowest)``
    for finite scores (``x + 0 == x``; ``x + lowest`` rounds to lowest for any score below
    ~1e31); it is built at ``[q, k]`` (or the mask's shape), not at the scores' ``[b, h, q, k]``.
    """
    lowest = torch.finfo(scores.dtype).min
    if mask is None:
        if not causal:
            return None
        full = torch.full((q_len, k_len), lowest, dtype=scores.dtype, device=scores.device)
        return full.triu_(diagonal=k_len - q_len + 1)
    zeros = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
    return zeros.masked_fill_(~mask, lowest)


def causal_mask(q_len: int, k_len: int, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``[1, 1, q, k]``: query i (the last q_len of k_len positions) sees keys <= i."""
    full = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    return full.tril(diagonal=k_len - q_len)[None, None]
