"""Weight initialisation in this library's layouts, which multiply from the right (``x @ W``):
Xavier (Glorot & Bengio 2010) and Kaiming (He et al. 2015) with the fan in and fan out read
accordingly (torch's own helpers read ``[d_out, d_in]``)."""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn

# What `torch.nn.init.calculate_gain` accepts as `nonlinearity`.
NonlinearityType = Literal[
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
]


def calc_fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` in this library's weight layouts, which multiply from the right.

    ``[d_out]`` (a bias): ``(1, d_out)``; ``[d_in, d_out]``: ``(d_in, d_out)``;
    ``[n_heads, d_model, d_head]`` (an attention weight): ``(d_model, n_heads * d_head)``. torch's
    own helper reads ``[d_out, d_in]`` and would swap them.
    """
    shape = tuple(tensor.shape)
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        return shape[1], shape[0] * shape[2]
    raise ValueError(
        f"fan in and fan out are defined for 1-D, 2-D and 3-D weights [n_heads, d_model, d_head], "
        f"got shape {shape}."
    )


def init_xavier_uniform_(param: Tensor, gain: float = 1.0) -> Tensor:
    """Fill `param` in place from U(-a, a), ``a = gain * sqrt(6 / (fan_in + fan_out))``
    (Glorot & Bengio 2010); std ``gain * sqrt(2 / (fan_in + fan_out))``."""
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return nn.init.uniform_(param, -bound, bound)


def init_xavier_normal_(param: Tensor, gain: float = 1.0) -> Tensor:
    """Fill `param` in place from N(0, std^2), ``std = gain * sqrt(2 / (fan_in + fan_out))``."""
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    return nn.init.normal_(param, mean=0.0, std=gain * math.sqrt(2.0 / (fan_in + fan_out)))


def _kaiming_std(
    param: Tensor, a: float, nonlinearity: NonlinearityType, gain: float, mode: str
) -> float:
    """``gain * calculate_gain(nonlinearity, a) / sqrt(fan)`` (He et al. 2015)."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}.")
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    fan = fan_in if mode == "fan_in" else fan_out
    return gain * nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan)


def init_kaiming_uniform_(
    param: Tensor,
    a: float = 0,
    nonlinearity: NonlinearityType = "relu",
    gain: float = 1.0,
    mode: str = "fan_in",
) -> Tensor:
    """Fill `param` in place uniformly with std ``gain * calculate_gain(nonlinearity, a) /
    sqrt(fan)``, `fan` being the fan in (or out, with ``mode="fan_out"``) of this library's
    layouts (`calc_fan_in_and_fan_out`)."""
    bound = math.sqrt(3.0) * _kaiming_std(param, a, nonlinearity, gain, mode)
    return nn.init.uniform_(param, -bound, bound)


def init_kaiming_normal_(
    param: Tensor,
    a: float = 0,
    nonlinearity: NonlinearityType = "relu",
    gain: float = 1.0,
    mode: str = "fan_in",
) -> Tensor:
    """Fill `param` in place from N(0, std^2), std as in `init_kaiming_uniform_`."""
    return nn.init.normal_(param, mean=0.0, std=_kaiming_std(param, a, nonlinearity, gain, mode))
