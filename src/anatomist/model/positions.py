"""Position schemes: learned absolute embeddings and rotary embeddings (RoPE).

Positions are per row, ``[batch, pos]``: with left padding a row's first real token is position 0,
so a padded batch computes what each row computes alone.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from anatomist.config import TransformerConfig


def positions_from_mask(attention_mask: Tensor | None, length: int, offset: int = 0) -> Tensor:
    """Position ids ``[batch, pos]`` (or ``[1, pos]`` without a mask) counting real tokens only."""
    if attention_mask is None:
        return torch.arange(offset, offset + length).unsqueeze(0)
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)[:, -length:]


class PosEmbed(nn.Module):
    """Learned absolute position embeddings (GPT-2)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model, dtype=cfg.dtype))

    def forward(self, positions: Tensor) -> Tensor:  # [b, p] -> [b, p, d_model]
        return self.W_pos[positions]


def rotary_inverse_frequencies(cfg: TransformerConfig, local: bool = False) -> Tensor:
    """Inverse frequencies for RoPE, with the checkpoint's rope scaling applied.

    `local` layers (sliding-window layers of models with `rotary_base_local`) use that base and
    no scaling."""
    dim = cfg.rotary_dim or cfg.d_head
    base = cfg.rotary_base_local if local and cfg.rotary_base_local else cfg.rotary_base
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = {} if local and cfg.rotary_base_local else (cfg.rope_scaling or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        return _llama3_inverse_frequencies(inv_freq, scaling)
    raise NotImplementedError(
        f"rope_scaling type {kind!r} is not supported yet (supported: default, linear, llama3)."
    )


def _llama3_inverse_frequencies(inv_freq: Tensor, scaling: dict[str, Any]) -> Tensor:
    # Llama 3.1's frequency-dependent scaling: long wavelengths are divided by `factor`, short
    # ones kept, and the band between is interpolated smoothly (Meta's reference code).
    factor = float(scaling["factor"])
    low = float(scaling["low_freq_factor"])
    high = float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


class Rotary(nn.Module):
    """Rotates the first `rotary_dim` features of each head.

    Features are paired as halves (``i`` with ``i + rotary_dim / 2``, HF Llama and NeoX) or, with
    ``cfg.rotary_adjacent_pairs``, as neighbours (``2i`` with ``2i + 1``, GPT-J).
    """

    def __init__(self, cfg: TransformerConfig, local: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.local = local
        self.rotary_dim = cfg.rotary_dim or cfg.d_head
        self.adjacent = cfg.rotary_adjacent_pairs
        self.register_buffer("inv_freq", rotary_inverse_frequencies(cfg, local), persistent=False)

    def reset_buffers(self) -> None:
        """Recompute the frequencies (after building the model on the meta device)."""
        self.inv_freq = rotary_inverse_frequencies(self.cfg, self.local)

    def cos_sin(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and sin for positions ``[b, p]``, each ``[b, p, 1, rotary_dim]``."""
        freqs = positions.to(self.inv_freq.device).float()[..., None] * self.inv_freq.float()
        if self.adjacent:
            emb = freqs.repeat_interleave(2, dim=-1)[:, :, None, :]  # [b, p, 1, rotary_dim]
        else:
            emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:  # x: [b, p, h, d_head]
        rot, rest = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        if self.adjacent:  # (x0, x1) -> (-x1, x0) for each neighbouring pair
            rotated = torch.stack((-rot[..., 1::2], rot[..., 0::2]), dim=-1).flatten(-2)
        else:  # (first half, second half) -> (-second half, first half)
            half = self.rotary_dim // 2
            rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
        rot = rot * cos + rotated * sin
        return torch.cat((rot, rest), dim=-1) if rest.shape[-1] else rot


def alibi_slopes(n_heads: int) -> Tensor:
    """ALiBi's per-head slopes (Press et al. 2022): a geometric sequence from 2^(-8/n); head
    counts that are not a power of two take every other slope of the next power of two."""
    closest = 2 ** math.floor(math.log2(n_heads))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = base ** torch.arange(1, 1 + closest, dtype=torch.float32)
    if closest != n_heads:
        extra_base = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        remaining = min(closest, n_heads - closest)
        extra = extra_base ** torch.arange(1, 1 + 2 * remaining, 2, dtype=torch.float32)
        slopes = torch.cat([slopes, extra])
    return slopes


def alibi_bias(slopes: Tensor, key_positions: Tensor) -> Tensor:
    """``[b, h, 1, k]``: slope_h * position of key k. (ALiBi penalises distance, -slope * (q - k);
    the query term is constant along each row, which softmax ignores.)"""
    return slopes[None, :, None, None] * key_positions[:, None, None, :].float()


def relative_position_bucket(
    relative_position: Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> Tensor:
    """T5's bucket of each query-key distance (``key_pos - query_pos``), as a long tensor.

    Bidirectional buckets spend half the buckets on keys after the query. Within a direction,
    the first half of the buckets hold one distance each (0, 1, 2, ...); the rest cover
    distances up to `max_distance` on a log scale, and farther keys share the last bucket. Causal
    (one-directional) buckets treat keys after the query as distance 0.
    """
    offset = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        offset = (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    exact = num_buckets // 2
    ratio = distance.float().clamp(min=1) / exact  # clamp: log(0) is never selected below
    log_bucket = exact + (ratio.log() / math.log(max_distance / exact) * (num_buckets - exact))
    log_bucket = log_bucket.long().clamp(max=num_buckets - 1)
    return offset + torch.where(distance < exact, distance, log_bucket)
