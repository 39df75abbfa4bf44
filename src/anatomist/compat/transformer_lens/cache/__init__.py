"""Classic `transformer_lens.cache` (3.x path), as names for anatomist's objects."""

from anatomist.model import kv_cache as key_value_cache
from anatomist.model import kv_cache as key_value_cache_entry
from anatomist.model.kv_cache import (
    TransformerLensKeyValueCache,
    TransformerLensKeyValueCacheEntry,
)

__all__ = [
    "TransformerLensKeyValueCache",
    "TransformerLensKeyValueCacheEntry",
    "key_value_cache",
    "key_value_cache_entry",
]
