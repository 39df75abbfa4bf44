"""Classic `transformer_lens.utilities.components_utils` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    get_act_name,
)

__all__ = [
    "get_act_name",
]
