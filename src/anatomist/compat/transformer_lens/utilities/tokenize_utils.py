"""Classic `transformer_lens.utilities.tokenize_utils` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    get_attention_mask,
    get_input_with_manually_prepended_bos,
    get_tokenizer_with_bos,
    get_tokens_with_bos_removed,
    keep_single_column,
    tokenize_and_concatenate,
)

__all__ = [
    "get_attention_mask",
    "get_input_with_manually_prepended_bos",
    "get_tokenizer_with_bos",
    "get_tokens_with_bos_removed",
    "keep_single_column",
    "tokenize_and_concatenate",
]
