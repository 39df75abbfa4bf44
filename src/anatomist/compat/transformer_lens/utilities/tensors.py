"""Classic `transformer_lens.utilities.tensors` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    check_structure,
    filter_dict_by_prefix,
    get_corner,
    get_cumsum_along_dim,
    get_offset_position_ids,
    is_lower_triangular,
    is_square,
    remove_batch_dim,
    repeat_along_head_dimension,
    to_numpy,
    transpose,
)

__all__ = [
    "check_structure",
    "filter_dict_by_prefix",
    "get_corner",
    "get_cumsum_along_dim",
    "get_offset_position_ids",
    "is_lower_triangular",
    "is_square",
    "remove_batch_dim",
    "repeat_along_head_dimension",
    "to_numpy",
    "transpose",
]
