"""Classic `transformer_lens.utilities.logits_utils` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    logits_to_df,
    sample_logits,
)

__all__ = [
    "logits_to_df",
    "sample_logits",
]
