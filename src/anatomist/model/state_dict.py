"""``load_state_dict`` that loads everything or nothing.

torch's ``nn.Module.load_state_dict`` copies tensor by tensor and collects the problems it meets
(a wrong shape, a missing key) to raise at the end: when it raises, the tensors before and after
the bad one are already loaded, and the model is half old, half new, computing something nobody
asked for. `AtomicLoadMixin` checks the whole state dict first (keys under torch's ``strict``
rules, each value a tensor of the parameter's shape, a dtype that casts to the parameter's without
changing kind, data that is not on the meta device), and only then lets torch copy. A failing
call leaves the model exactly as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["AtomicLoadMixin", "StateDictError", "state_dict_problems"]


class StateDictError(RuntimeError):
    """A state dict cannot be loaded into a model: missing or unexpected keys (strict), a value
    that is not a tensor, a shape or dtype that does not fit. Nothing was loaded.

    A RuntimeError, as torch's own ``load_state_dict`` raises, so code that catches that keeps
    working; `problems` lists each problem, one line per tensor.
    """

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


def state_dict_problems(
    module: nn.Module, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
) -> list[str]:
    """Everything that would stop `module.load_state_dict(state_dict, strict, assign)` part-way,
    one line per tensor (empty when it can load in full)."""
    own = module.state_dict(keep_vars=True)
    problems: list[str] = []
    if strict:
        missing = [key for key in own if key not in state_dict]
        unexpected = [key for key in state_dict if key not in own]
        if missing:
            problems.append(
                f"missing keys (the model has them, the state dict not): {_few(missing)}"
            )
        if unexpected:
            problems.append(f"unexpected keys (the model has no such tensor): {_few(unexpected)}")
    for key, target in own.items():
        if key not in state_dict or not isinstance(target, Tensor):
            continue
        value = state_dict[key]
        if not isinstance(value, Tensor):
            problems.append(f"{key}: expected a tensor, got {type(value).__name__}")
            continue
        if value.shape != target.shape:
            problems.append(
                f"{key}: expected shape {tuple(target.shape)}, got {tuple(value.shape)}"
            )
        elif not assign and not torch.can_cast(value.dtype, target.dtype):
            # copy_ would cast anyway, dropping fractions or imaginary parts without a word
            problems.append(
                f"{key}: a {value.dtype} tensor does not cast to the model's {target.dtype} "
                "without losing its kind of value"
            )
        elif not assign and value.device.type == "meta":
            problems.append(f"{key}: on the meta device, so it holds no values to copy")
    return problems


def _few(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


class AtomicLoadMixin:
    """`load_state_dict` for an ``nn.Module``: all-or-nothing (see the module docstring)."""

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """torch's ``load_state_dict``, checked in full before anything is copied.

        Raises:
            StateDictError: Missing or unexpected keys (with ``strict``), a value that is not a
                tensor, a shape other than the parameter's (naming the tensor, the expected and
                the given shape), or a dtype that does not cast. The model is unchanged.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"load_state_dict expects a mapping of names to tensors, got "
                f"{type(state_dict).__name__}."
            )
        module: nn.Module = self  # type: ignore[assignment]
        problems = state_dict_problems(module, state_dict, strict, assign)
        if problems:
            lines = "\n  ".join(problems)
            raise StateDictError(
                f"Cannot load the state dict into {type(self).__name__}; nothing was loaded. "
                f"Problems:\n  {lines}",
                problems,
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)  # type: ignore[misc]
