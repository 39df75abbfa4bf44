"""Classic `transformer_lens.utilities.activation_functions` (3.x path), as names for anatomist's objects."""

from anatomist.utils import (
    SUPPORTED_ACTIVATIONS,
    ActivationFunction,
    gelu_fast,
    gelu_new,
    gelu_pytorch_tanh,
    solu,
    xielu,
)

__all__ = [
    "ActivationFunction",
    "SUPPORTED_ACTIVATIONS",
    "gelu_fast",
    "gelu_new",
    "gelu_pytorch_tanh",
    "solu",
    "xielu",
]
