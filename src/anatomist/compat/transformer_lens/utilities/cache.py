"""Classic `transformer_lens.utilities.cache` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    get_pos_offset,
)

__all__ = [
    "get_pos_offset",
]
