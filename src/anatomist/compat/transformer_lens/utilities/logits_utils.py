"""Classic `transformer_lens.utilities.logits_utils` (3.x path), as names for anatomist's objects."""

from anatomist.model.generate import apply_repetition_penalty as _apply_repetition_penalty
from anatomist.utils import (
    logits_to_df,
    sample_logits,
)

__all__ = [
    "_apply_repetition_penalty",
    "logits_to_df",
    "sample_logits",
]
