"""Classic `transformer_lens.utilities.attribute_utils` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    get_nested_attr,
    set_nested_attr,
)

__all__ = [
    "get_nested_attr",
    "set_nested_attr",
]
