"""Normalization layers with hook points for the scale and the normalized output.

``LN``/``RMS`` carry learned weights; ``LNPre``/``RMSPre`` are what remains after weight
processing folded those weights into the next layer (`loading.processing.fold_layer_norm`).
Hook semantics follow the classic library: for LayerNorm ``hook_normalized`` sees the output
after the weight and bias; for RMSNorm it sees ``x / scale`` before the weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anatomist.config import TransformerConfig
from anatomist.hooks import HookPoint, is_hooked


class _Norm(nn.Module):
    """Normalizes the last `length` features. With `heads`, the input is ``[..., heads, length]``
    and every head has its own weights (``w [heads, length]``: the QK norms of Cohere, StableLM)."""

    def __init__(
        self, cfg: TransformerConfig, length: int | None = None, heads: int | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.eps = cfg.eps
        self.length = length or cfg.d_model
        self.weight_shape = (self.length,) if heads is None else (heads, self.length)
        self.hook_scale = HookPoint()  # [..., 1]
        self.hook_normalized = HookPoint()  # [..., length]

    def _hooked(self) -> bool:
        return is_hooked(self.hook_scale) or is_hooked(self.hook_normalized)


class LayerNorm(_Norm):
    def __init__(
        self, cfg: TransformerConfig, length: int | None = None, heads: int | None = None
    ) -> None:
        super().__init__(cfg, length, heads)
        self.w = nn.Parameter(torch.ones(self.weight_shape, dtype=cfg.dtype))
        self.b = nn.Parameter(torch.zeros(self.weight_shape, dtype=cfg.dtype))

    @property
    def multiplier(self) -> Tensor:
        """What the normalized input is multiplied by (before the bias): ``w``."""
        return self.w

    def forward(self, x: Tensor) -> Tensor:
        if not self._hooked():
            if self.w.dim() > 1:  # per-head weights: F.layer_norm takes [length] weights only
                return F.layer_norm(x, (self.length,), None, None, self.eps) * self.w + self.b
            return F.layer_norm(x, (self.length,), self.w, self.b, self.eps)
        # In float32 and rounded once, like F.layer_norm (and Hugging Face) in half precision.
        xf = x.float()
        xf = xf - xf.mean(-1, keepdim=True)
        scale = self.hook_scale((xf.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized((xf / scale * self.w.float() + self.b.float()).to(x.dtype))


class LayerNormPre(_Norm):
    """LayerNorm whose weight and bias were folded into the layer that reads it."""

    def forward(self, x: Tensor) -> Tensor:
        if not self._hooked():
            return F.layer_norm(x, (self.length,), None, None, self.eps)
        xf = x.float()
        xf = xf - xf.mean(-1, keepdim=True)
        scale = self.hook_scale((xf.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized((xf / scale).to(x.dtype))


class RMSNorm(_Norm):
    def __init__(
        self, cfg: TransformerConfig, length: int | None = None, heads: int | None = None
    ) -> None:
        super().__init__(cfg, length, heads)
        self.w = nn.Parameter(torch.ones(self.weight_shape, dtype=cfg.dtype))

    def forward(self, x: Tensor) -> Tensor:
        in_float32 = self.cfg.norm_weight_in_float32
        if not self._hooked():
            if in_float32:  # (x * w).to(dtype): rounded once, after the weight
                return (_rms_normalized_float32(x, self.eps) * self.multiplier).to(x.dtype)
            return rms_normalize(x, self.eps) * self.multiplier
        scale = self.hook_scale((x.float().pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        exact = x.float() / scale
        normalized = self.hook_normalized(exact.to(x.dtype))
        if not in_float32:
            return normalized * self.multiplier
        # Rounded once, as without hooks: where the hook left an entry as it was, its rounding
        # error is added back (a constant, so gradients still flow through the hook point).
        kept = normalized == exact.to(x.dtype)
        error = torch.where(kept, exact - exact.to(x.dtype).float(), 0.0).detach()
        return ((normalized.float() + error) * self.multiplier).to(x.dtype)

    @property
    def multiplier(self) -> Tensor:
        """What the normalized input is multiplied by: ``w``, or ``offset + w`` with
        ``cfg.norm_weight_offset`` (Gemma stores w and multiplies by 1 + w); in float32 with
        ``cfg.norm_weight_in_float32``, where Hugging Face adds the offset in float32 too."""
        w = self.w.float() if self.cfg.norm_weight_in_float32 else self.w
        offset = self.cfg.norm_weight_offset
        return w + offset if offset else w


class RMSNormPre(_Norm):
    """RMSNorm whose weight was folded into the layer that reads it."""

    def forward(self, x: Tensor) -> Tensor:
        if not self._hooked():
            return rms_normalize(x, self.eps)
        scale = self.hook_scale((x.float().pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized((x.float() / scale).to(x.dtype))


def rms_normalize(x: Tensor, eps: float) -> Tensor:
    # Computed in float32 like Hugging Face's Llama RMSNorm, then cast back.
    return _rms_normalized_float32(x, eps).to(x.dtype)


def _rms_normalized_float32(x: Tensor, eps: float) -> Tensor:
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


NORMS: dict[str | None, type[nn.Module] | None] = {
    "LN": LayerNorm,
    "LNPre": LayerNormPre,
    "RMS": RMSNorm,
    "RMSPre": RMSNormPre,
    None: None,
}


def make_norm(
    cfg: TransformerConfig, length: int | None = None, kind: str | None = "cfg"
) -> nn.Module:
    """The normalization layer `kind` names (default: `cfg.normalization_type`), or an identity."""
    cls = NORMS[cfg.normalization_type if kind == "cfg" else kind]
    if cls is None:
        return nn.Identity()
    return cls(cfg, length)  # type: ignore[call-arg]
