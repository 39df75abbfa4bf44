"""Classic `transformer_lens.utilities.matrix` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    composition_scores,
    get_matrix_corner,
)

__all__ = [
    "composition_scores",
    "get_matrix_corner",
]
