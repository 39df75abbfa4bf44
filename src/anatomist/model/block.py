"""One transformer block: attention then MLP (or both in parallel), with residual hooks.

Pre-LN (the default)::

    resid_mid  = resid_pre + attn(ln1(resid_pre))
    resid_post = resid_mid + mlp(ln2(resid_mid))

Post-LN (``cfg.post_layer_norm``, OPT-350m), with the hooks placed as in the BERT encoder::

    resid_mid             = resid_pre + attn(resid_pre)         (no norm before attention)
    ln1.hook_normalized   = ln1(resid_mid)                      what the MLP reads
    resid_post            = ln1.hook_normalized + mlp(ln1.hook_normalized)
    normalized_resid_post = ln2(resid_post)                     the block's output

Shortformer positions (``positional_embedding_type="shortformer"``, Press et al. 2021) are added
to the normalized query and key inputs, after ln1's weight and bias, and not to the values or
the residual stream::

    resid_mid  = resid_pre + attn(q=ln1(resid_pre) + pos, k=ln1(resid_pre) + pos, v=ln1(resid_pre))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from anatomist.config import TransformerConfig
from anatomist.hooks import HookPoint
from anatomist.model.attention import make_attention
from anatomist.model.devices import to_device
from anatomist.model.kv_cache import KVCacheEntry
from anatomist.model.mlp import make_mlp
from anatomist.model.norm import make_norm


class TransformerBlock(nn.Module):
    # The block's device when the model is split over several (`anatomist.model.devices`):
    # what the block reads moves there first. None: one device, nothing moves.
    placed_on: torch.device | None = None

    def __init__(self, cfg: TransformerConfig, layer_idx: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        has_norms = cfg.pre_norm or cfg.post_layer_norm
        self.ln1 = make_norm(cfg) if has_norms else nn.Identity()
        self.attn = make_attention(cfg, layer_idx)
        if cfg.post_norm_type is not None:  # norms on the outputs too (Gemma 2/3, OLMo2)
            self.ln1_post = make_norm(cfg, kind=cfg.post_norm_type)
        if not cfg.attn_only:
            self.ln2 = make_norm(cfg) if has_norms else nn.Identity()
            self.mlp = make_mlp(cfg, layer_idx)
            if cfg.post_norm_type is not None:
                self.ln2_post = make_norm(cfg, kind=cfg.post_norm_type)

        self.hook_resid_pre = HookPoint()  # [b, p, d_model]
        self.hook_attn_in = HookPoint("use_attn_in")  # [b, p, n_heads, d_model]
        self.hook_q_input = HookPoint("use_split_qkv_input")  # [b, p, n_heads, d_model]
        self.hook_k_input = HookPoint("use_split_qkv_input")  # [b, p, n_kv_heads, d_model]
        self.hook_v_input = HookPoint("use_split_qkv_input")  # [b, p, n_kv_heads, d_model]
        self.hook_attn_out = HookPoint()  # [b, p, d_model]
        if not cfg.attn_only:
            self.hook_mlp_in = HookPoint("use_hook_mlp_in")  # [b, p, d_model]
            self.hook_mlp_out = HookPoint()  # [b, p, d_model]
        if not (cfg.parallel_attn_mlp or cfg.attn_only):
            self.hook_resid_mid = HookPoint()  # [b, p, d_model]
        self.hook_resid_post = HookPoint()  # [b, p, d_model]
        if cfg.post_layer_norm:
            self.hook_normalized_resid_post = HookPoint()  # [b, p, d_model], ln2(resid_post)

    def forward(
        self,
        resid_pre: Tensor,
        positions: Tensor,
        mask: Tensor | None,
        shortformer_pos_embed: Tensor | None = None,
        past_kv: KVCacheEntry | None = None,
        key_positions: Tensor | None = None,
    ) -> Tensor:
        """`shortformer_pos_embed` ``[b, p, d_model]``: shortformer models' position embeddings,
        added to the normalized query and key inputs. `past_kv`: this layer's cached keys and
        values (incremental runs), `key_positions` the positions of all keys then."""
        cfg = self.cfg
        if self.placed_on is not None:
            resid_pre, positions, mask, shortformer_pos_embed, key_positions = to_device(
                self.placed_on, resid_pre, positions, mask, shortformer_pos_embed, key_positions
            )
        resid_pre = self.hook_resid_pre(resid_pre)
        q_in, k_in, v_in = self._attention_inputs(resid_pre)
        if shortformer_pos_embed is not None:
            if q_in.dim() == 4:  # per-head inputs [b, p, heads, d_model]
                shortformer_pos_embed = shortformer_pos_embed.unsqueeze(2)
            q_in, k_in = q_in + shortformer_pos_embed, k_in + shortformer_pos_embed
        attn_out = self.attn(q_in, k_in, v_in, positions, mask, past_kv, key_positions)
        if cfg.post_layer_norm:
            return self._post_layer_norm(resid_pre, self.hook_attn_out(attn_out))
        if cfg.post_norm_type is not None:
            attn_out = self.ln1_post(attn_out)
        attn_out = self.hook_attn_out(attn_out)
        if cfg.attn_only:
            return self.hook_resid_post(resid_pre + attn_out)
        if cfg.parallel_attn_mlp:
            mlp_in = self.hook_mlp_in(resid_pre) if cfg.use_hook_mlp_in else resid_pre
            mlp_out = self.hook_mlp_out(self._mlp(mlp_in))
            return self.hook_resid_post(resid_pre + attn_out + mlp_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid) if cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self._mlp(mlp_in))
        return self.hook_resid_post(resid_mid + mlp_out)

    def _post_layer_norm(self, resid_pre: Tensor, attn_out: Tensor) -> Tensor:
        """The rest of a Post-LN block: each sum is normalized before anything reads it."""
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid) if self.cfg.use_hook_mlp_in else resid_mid
        normalized_mid = self.ln1(mlp_in)
        mlp_out = self.hook_mlp_out(self.mlp(normalized_mid))
        resid_post = self.hook_resid_post(normalized_mid + mlp_out)
        return self.hook_normalized_resid_post(self.ln2(resid_post))

    def _mlp(self, mlp_in: Tensor) -> Tensor:
        out = self.mlp(self.ln2(mlp_in))
        return self.ln2_post(out) if self.cfg.post_norm_type is not None else out

    def _attention_inputs(self, resid_pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalized query, key and value inputs, per head when an opt-in hook asks for it.

        With per-head inputs, ln1 runs once over all of them (concatenated along the head axis),
        so its hooks fire once, with shape ``[b, p, n_heads + 2 * n_kv_heads, ...]`` under
        use_split_qkv_input.
        """
        cfg = self.cfg
        # Post-LN blocks (and pre_norm=False) read resid_pre as it is; their ln1 follows attention.
        norm: Callable[[Tensor], Tensor] = self.ln1 if cfg.pre_norm else _unchanged
        if not (cfg.use_split_qkv_input or cfg.use_attn_in):
            normalized = norm(resid_pre)
            return normalized, normalized, normalized
        source = resid_pre
        if cfg.use_attn_in:
            if cfg.is_grouped_query:
                raise ValueError(
                    "use_attn_in gives one input per query head, which is undefined for the "
                    "shared key/value heads of grouped-query attention; use "
                    "model.set_use_split_qkv_input(True) instead."
                )
            attn_in = self.hook_attn_in(_per_head(resid_pre, cfg.n_heads))
            if not cfg.use_split_qkv_input:
                normalized = norm(attn_in)
                return normalized, normalized, normalized
            source = attn_in
        q_in = self.hook_q_input(_per_head(source, cfg.n_heads))
        k_in = self.hook_k_input(_per_head(source, cfg.n_kv_heads))
        v_in = self.hook_v_input(_per_head(source, cfg.n_kv_heads))
        normalized = norm(torch.cat([q_in, k_in, v_in], dim=2))
        q, k, v = normalized.split([cfg.n_heads, cfg.n_kv_heads, cfg.n_kv_heads], dim=2)
        return q, k, v


def _unchanged(x: Tensor) -> Tensor:
    return x


def _per_head(x: Tensor, n_heads: int) -> Tensor:
    """A separate copy per head, so hooks can edit one: ``[b, p, d]`` -> ``[b, p, n_heads, d]``.

    Already per-head input (``hook_attn_in``, MHA only) is copied head for head."""
    if x.dim() == 4:
        return x.clone()
    return x.unsqueeze(2).expand(-1, -1, n_heads, -1).clone()
