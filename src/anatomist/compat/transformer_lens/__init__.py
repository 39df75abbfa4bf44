"""The classic `transformer_lens` package, as names for anatomist's objects (see anatomist.compat)."""

from anatomist import utils
from anatomist.analysis import evals, head_detector, patching
from anatomist.analysis.factored_matrix import FactoredMatrix
from anatomist.analysis.svd import SVDInterpreter
from anatomist.cache import ActivationCache
from anatomist.compat.transformer_lens import cache, components, config
from anatomist.config import HookedTransformerConfig
from anatomist.hooks import HookedRootModule
from anatomist.loading import names as loading
from anatomist.model import kv_cache as past_key_value_caching
from anatomist.model.encoder import BertNextSentencePrediction, HookedEncoder
from anatomist.model.encoder_decoder import HookedEncoderDecoder
from anatomist.model.kv_cache import (
    HookedTransformerKeyValueCache,
    HookedTransformerKeyValueCacheEntry,
    TransformerLensKeyValueCache,
    TransformerLensKeyValueCacheEntry,
)
from anatomist.model.transformer import HookedTransformer

from anatomist import hooks as hook_points  # isort: skip

loading_from_pretrained = loading

__all__ = [
    "ActivationCache",
    "BertNextSentencePrediction",
    "FactoredMatrix",
    "HookedEncoder",
    "HookedEncoderDecoder",
    "HookedRootModule",
    "HookedTransformer",
    "HookedTransformerConfig",
    "HookedTransformerKeyValueCache",
    "HookedTransformerKeyValueCacheEntry",
    "SVDInterpreter",
    "TransformerLensKeyValueCache",
    "TransformerLensKeyValueCacheEntry",
    "cache",
    "components",
    "config",
    "evals",
    "head_detector",
    "hook_points",
    "loading",
    "loading_from_pretrained",
    "past_key_value_caching",
    "patching",
    "utils",
]
