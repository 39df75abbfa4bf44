"""Classic `transformer_lens.utilities.hf_utils` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    CACHE_DIR,
    call_hf_with_retry,
    clear_huggingface_cache,
    download_file_from_hf,
    enable_hf_retry,
    get_dataset,
    get_rotary_pct_from_config,
    keep_single_column,
    select_compatible_kwargs,
)

__all__ = [
    "CACHE_DIR",
    "call_hf_with_retry",
    "clear_huggingface_cache",
    "download_file_from_hf",
    "enable_hf_retry",
    "get_dataset",
    "get_rotary_pct_from_config",
    "keep_single_column",
    "select_compatible_kwargs",
]
