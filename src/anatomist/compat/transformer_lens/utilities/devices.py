"""Classic `transformer_lens.utilities.devices` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    ModelWithCfg,
    get_device,
    get_device_for_block_index,
    move_to_and_update_config,
    warn_if_mps,
)

__all__ = [
    "ModelWithCfg",
    "get_device",
    "get_device_for_block_index",
    "move_to_and_update_config",
    "warn_if_mps",
]
