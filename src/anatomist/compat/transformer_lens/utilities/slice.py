"""Classic `transformer_lens.utilities.slice` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    Slice,
    SliceInput,
)

__all__ = [
    "Slice",
    "SliceInput",
]
