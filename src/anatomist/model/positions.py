"""Position schemes: learned absolute embeddings and rotary embeddings (RoPE).

Positions are per row, ``[batch, pos]``: with left padding a row's first real token is position 0,
so a padded batch computes what each row computes alone. The exception, as in Hugging Face, is
rope scaling whose frequencies depend on the length (dynamic NTK, LongRoPE): the batch's longest
row sets it for every row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
    """Learned absolute position embeddings (GPT-2; shortformer models add them to the
    attention's query and key inputs instead of the residual stream)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model, dtype=cfg.dtype))

    def forward(self, positions: Tensor) -> Tensor:  # [b, p] -> [b, p, d_model]
        return self.W_pos[positions]


def rotary_scaling(cfg: TransformerConfig, local: bool = False) -> dict[str, Any]:
    """The rope scaling that applies to a layer: none on `local` layers that have their own base."""
    return {} if local and cfg.rotary_base_local else (cfg.rope_scaling or {})


def rope_type(scaling: dict[str, Any]) -> str:
    """The scaling's type as transformers names it (older configs say ``type``)."""
    return str(scaling.get("rope_type", scaling.get("type", "default")))


def rotary_inverse_frequencies(
    cfg: TransformerConfig, local: bool = False, seq_len: int | None = None
) -> Tensor:
    """Inverse frequencies ``[rotary_dim / 2]`` for RoPE, with the checkpoint's rope scaling.

    `local` layers (sliding-window layers of models with `rotary_base_local`) use that base and
    no scaling. `seq_len` (the batch's largest position + 1) matters only to the types in
    `LENGTH_DEPENDENT_ROPE`; None means a sequence within the pretraining length."""
    dim = cfg.rotary_dim or cfg.d_head
    base = cfg.rotary_base_local if local and cfg.rotary_base_local else cfg.rotary_base
    scaling = rotary_scaling(cfg, local)
    kind = rope_type(scaling)
    if kind not in _INVERSE_FREQUENCIES:
        raise NotImplementedError(
            f"rope_scaling type {kind!r} is not supported yet "
            f"(supported: {', '.join(_INVERSE_FREQUENCIES)})."
        )
    return _INVERSE_FREQUENCIES[kind](base, dim, scaling, seq_len)


def rotary_attention_factor(cfg: TransformerConfig, local: bool = False) -> float:
    """The factor HF multiplies cos and sin by (its ``attention_scaling``): YaRN's and LongRoPE's
    temperature correction, 1.0 for every other type."""
    scaling = rotary_scaling(cfg, local)
    kind = rope_type(scaling)
    if kind == "yarn":
        return _yarn_attention_factor(scaling)
    if kind == "longrope":
        return _longrope_attention_factor(scaling)
    return 1.0


# Types whose frequencies depend on the sequence length (HF recomputes them in the forward pass,
# `dynamic_rope_update`).
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def _default_inverse_frequencies(base: float, dim: int) -> Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _unscaled(base: float, dim: int, scaling: dict[str, Any], seq_len: int | None) -> Tensor:
    return _default_inverse_frequencies(base, dim)


def _linear(base: float, dim: int, scaling: dict[str, Any], seq_len: int | None) -> Tensor:
    # Position interpolation (kaiokendev; Chen et al. 2023): positions divided by `factor`.
    return _default_inverse_frequencies(base, dim) / float(scaling["factor"])


def _llama3(base: float, dim: int, scaling: dict[str, Any], seq_len: int | None) -> Tensor:
    # Llama 3.1's frequency-dependent scaling: long wavelengths are divided by `factor`, short
    # ones kept, and the band between is interpolated smoothly (Meta's reference code).
    inv_freq = _default_inverse_frequencies(base, dim)
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


def _dynamic(base: float, dim: int, scaling: dict[str, Any], seq_len: int | None) -> Tensor:
    # Dynamic NTK (u/bloc97, u/emozilla): past `max_position_embeddings` the base grows with the
    # sequence so the slowest frequency still spans it. HF builds the within-length frequencies
    # from Python floats at init and recomputes longer ones from the position tensor, in float32.
    factor = float(scaling["factor"])
    max_len = int(scaling["max_position_embeddings"])
    exponent = dim / (dim - 2)
    if seq_len is None or seq_len <= max_len:
        grown: float | Tensor = base * ((factor * max_len / max_len) - (factor - 1)) ** exponent
    else:
        length = torch.tensor(seq_len)
        grown = base * ((factor * length / max_len) - (factor - 1)) ** exponent
    return 1.0 / (grown ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _yarn(base: float, dim: int, scaling: dict[str, Any], seq_len: int | None) -> Tensor:
    # YaRN (Peng et al. 2023), "NTK-by-parts": frequencies that turn more than `beta_fast` times
    # over the pretraining length are kept, those turning fewer than `beta_slow` times are
    # interpolated (divided by `factor`), with a linear ramp between.
    factor = float(scaling["factor"])
    original = float(scaling["original_max_position_embeddings"])
    low = _yarn_correction_dim(scaling.get("beta_fast") or 32, dim, base, original)
    high = _yarn_correction_dim(scaling.get("beta_slow") or 1, dim, base, original)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # HF's guard against a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # [dim / 2]: 1 = extrapolate (unchanged), 0 = interpolate
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    return 1.0 / (factor * pos_freqs) * (1 - keep) + 1.0 / pos_freqs * keep


def _yarn_correction_dim(rotations: float, dim: int, base: float, original: float) -> float:
    """The (fractional) dimension whose frequency turns `rotations` times over `original`."""
    return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_attention_factor(scaling: dict[str, Any]) -> float:
    # YaRN's attention temperature, 0.1 ln(factor) + 1; DeepSeek's `mscale`/`mscale_all_dim`
    # variant is the ratio of two such terms (HF applies it only when both are set and non-zero).
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor = float(scaling["factor"])
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
    return _yarn_mscale(factor)


def _longrope(base: float, dim: int, scaling: dict[str, Any], seq_len: int | None) -> Tensor:
    # LongRoPE (Phi-3 long context): one rescale factor per frequency, the `long_factor` set once
    # the batch's length passes the pretraining length, the `short_factor` set otherwise.
    is_long = seq_len is not None and seq_len > scaling["original_max_position_embeddings"]
    key = "long_factor" if is_long else "short_factor"
    if len(scaling[key]) != dim // 2:
        raise ValueError(
            f"longrope {key} has {len(scaling[key])} entries; the rotary width {dim} needs "
            f"{dim // 2} (one per frequency)."
        )
    rescale = torch.tensor(scaling[key], dtype=torch.float32)
    return 1.0 / (rescale * base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _longrope_attention_factor(scaling: dict[str, Any]) -> float:
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor = float(scaling["factor"])
    if factor <= 1.0:
        return 1.0
    original = scaling["original_max_position_embeddings"]
    return math.sqrt(1 + math.log(factor) / math.log(original))


_INVERSE_FREQUENCIES: dict[str, Callable[[float, int, dict[str, Any], int | None], Tensor]] = {
    "default": _unscaled,
    "linear": _linear,
    "llama3": _llama3,
    "dynamic": _dynamic,
    "yarn": _yarn,
    "longrope": _longrope,
}


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
        self.attention_factor = rotary_attention_factor(cfg, local)  # scales cos and sin
        self.length_dependent = rope_type(rotary_scaling(cfg, local)) in LENGTH_DEPENDENT_ROPE
        self._by_length: tuple[int, Tensor] | None = None  # last (seq_len, inv_freq) computed
        self.register_buffer("inv_freq", rotary_inverse_frequencies(cfg, local), persistent=False)

    def reset_buffers(self) -> None:
        """Recompute the frequencies (after building the model on the meta device)."""
        self.inv_freq = rotary_inverse_frequencies(self.cfg, self.local)
        self._by_length = None

    def inverse_frequencies_for(self, positions: Tensor) -> Tensor:
        """The frequencies for this batch. For dynamic and longrope scaling they depend on the
        batch's largest position + 1, as in HF's `dynamic_rope_update`: every row of a padded
        batch uses its longest row's frequencies."""
        if not self.length_dependent or positions.numel() == 0:
            return self.inv_freq
        seq_len = int(positions.max()) + 1
        cached = self._by_length
        if cached is None or cached[0] != seq_len or cached[1].device != self.inv_freq.device:
            inv_freq = rotary_inverse_frequencies(self.cfg, self.local, seq_len)
            cached = self._by_length = (seq_len, inv_freq.to(self.inv_freq.device))
        return cached[1]

    def cos_sin(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and sin for positions ``[b, p]``, each ``[b, p, 1, rotary_dim]``."""
        inv_freq = self.inverse_frequencies_for(positions)
        freqs = positions.to(inv_freq.device).float()[..., None] * inv_freq.float()
        if self.adjacent:
            emb = freqs.repeat_interleave(2, dim=-1)[:, :, None, :]  # [b, p, 1, rotary_dim]
        else:
            emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]
        cos, sin = emb.cos(), emb.sin()
        if self.attention_factor != 1.0:  # YaRN / LongRoPE temperature, applied in float32 as HF
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return cos.to(dtype), sin.to(dtype)

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
