"""Classic `transformer_lens.utilities.exploratory_utils` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    test_prompt,
)

__all__ = [
    "test_prompt",
]
