"""Classic `transformer_lens.utilities.defaults_utils` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    USE_DEFAULT_VALUE,
    LocallyOverridenDefaults,
    override_or_use_default_value,
)

__all__ = [
    "USE_DEFAULT_VALUE",
    "LocallyOverridenDefaults",
    "override_or_use_default_value",
]
