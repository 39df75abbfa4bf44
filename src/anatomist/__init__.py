"""anatomist: mechanistic interpretability with the classic HookedTransformer interface.

>>> import anatomist
>>> model = anatomist.HookedTransformer.from_pretrained("smollm2-135m-instruct")
>>> logits, cache = model.run_with_cache("Hello World")
"""

import sys as _sys

from anatomist import utils
from anatomist.analysis import evals, head_detector, patching
from anatomist.analysis.factored_matrix import FactoredMatrix
from anatomist.analysis.svd import SVDInterpreter
from anatomist.cache import ActivationCache
from anatomist.config import ConfigError, HookedTransformerConfig, TransformerConfig
from anatomist.hf_model import HookedHFModel, NeedsNativeFamilyError
from anatomist.hooks import (
    HookDeviceError,
    HookDisabledError,
    HookDtypeError,
    HookedRootModule,
    HookHandle,
    HookPoint,
    HookShapeError,
    LensHandle,
    UnknownHookError,
)
from anatomist.loading.errors import CheckpointError, UnknownModelError
from anatomist.model.encoder import HookedEncoder
from anatomist.model.encoder_decoder import HookedEncoderDecoder
from anatomist.model.kv_cache import HookedTransformerKeyValueCache, KVCache
from anatomist.model.state_dict import StateDictError
from anatomist.model.tokens import TokenIdError
from anatomist.model.transformer import HookedTransformer, Output

__version__ = "0.1.0"

# The classic library's module paths: `import anatomist.patching` (and evals, head_detector)
# works like `from anatomist import patching`.
for _module in (evals, head_detector, patching):
    _sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[-1]}"] = _module

__all__ = [
    "ActivationCache",
    "CheckpointError",
    "ConfigError",
    "FactoredMatrix",
    "HookDeviceError",
    "HookDisabledError",
    "HookDtypeError",
    "HookHandle",
    "HookPoint",
    "HookShapeError",
    "HookedEncoder",
    "HookedHFModel",
    "NeedsNativeFamilyError",
    "HookedEncoderDecoder",
    "HookedRootModule",
    "HookedTransformer",
    "HookedTransformerConfig",
    "HookedTransformerKeyValueCache",
    "KVCache",
    "LensHandle",
    "Output",
    "SVDInterpreter",
    "StateDictError",
    "TokenIdError",
    "TransformerConfig",
    "UnknownHookError",
    "UnknownModelError",
    "evals",
    "head_detector",
    "patching",
    "utils",
]
