"""Classic `transformer_lens.utilities.lm_utils` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    lm_accuracy,
    lm_cross_entropy_loss,
)

__all__ = [
    "lm_accuracy",
    "lm_cross_entropy_loss",
]
