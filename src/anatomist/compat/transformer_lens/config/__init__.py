"""Classic `transformer_lens.config` (3.x path), as names for anatomist's objects."""

from anatomist import config as hooked_transformer_config
from anatomist.config import HookedTransformerConfig

__all__ = ["HookedTransformerConfig", "hooked_transformer_config"]
