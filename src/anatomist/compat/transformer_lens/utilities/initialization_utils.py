"""Classic `transformer_lens.utilities.initialization_utils` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    NonlinearityType,
    calc_fan_in_and_fan_out,
    init_kaiming_normal_,
    init_kaiming_uniform_,
    init_xavier_normal_,
    init_xavier_uniform_,
)

__all__ = [
    "NonlinearityType",
    "calc_fan_in_and_fan_out",
    "init_kaiming_normal_",
    "init_kaiming_uniform_",
    "init_xavier_normal_",
    "init_xavier_uniform_",
]
