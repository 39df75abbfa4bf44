"""Classic `transformer_lens.utilities.typed_module_list` (3.x path), as names for anatomist's objects."""

from anatomist.utils import TypedModuleList

__all__ = ["TypedModuleList"]
