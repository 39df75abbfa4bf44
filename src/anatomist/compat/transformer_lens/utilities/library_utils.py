"""Classic `transformer_lens.utilities.library_utils` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    is_library_available,
)

__all__ = [
    "is_library_available",
]
