"""Classic `transformer_lens.components`: the component names downstream code uses as types."""

from anatomist.compat.transformer_lens.components import mlps
from anatomist.model.mlp import MLP, CanBeUsedAsMLP, GatedMLP
from anatomist.model.moe import MoE

__all__ = ["MLP", "CanBeUsedAsMLP", "GatedMLP", "MoE", "mlps"]
