"""Classic `transformer_lens.utilities.gpu_utils` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    print_gpu_mem,
)

__all__ = [
    "print_gpu_mem",
]
