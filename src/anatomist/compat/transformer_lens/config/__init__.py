"""Classic `transformer_lens.config` (3.x path), as names for anatomist's objects."""

from anatomist import config as hooked_transformer_config
from anatomist import config as transformer_lens_config
from anatomist.config import HookedTransformerConfig, TransformerLensConfig

__all__ = [
    "HookedTransformerConfig",
    "TransformerLensConfig",
    "hooked_transformer_config",
    "transformer_lens_config",
]
