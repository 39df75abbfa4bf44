"""Classic `transformer_lens.components.mlps`, as names for anatomist's MLP classes."""

from anatomist.model import mlp as can_be_used_as_mlp
from anatomist.model.mlp import MLP, CanBeUsedAsMLP, GatedMLP
from anatomist.model.moe import MoE

__all__ = ["MLP", "CanBeUsedAsMLP", "GatedMLP", "MoE", "can_be_used_as_mlp"]
