"""`ActivationCache`: the activations one forward pass stored, by hook name.

Index by full name (``cache["blocks.0.attn.hook_pattern"]``) or by the classic shorthands
(``cache["pattern", 0]``, ``cache["scale", 4, "ln1"]``, ``cache["resid_post", -1]``); negative
layers count from the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from anatomist.utils import Slice, get_act_name


class MissingActivationError(KeyError):
    """A cache lookup named an activation this cache does not hold."""

    def __str__(self) -> str:  # KeyError repr-quotes its message; show it plainly.
        return str(self.args[0])


class ActivationCache:
    def __init__(
        self, cache_dict: dict[str, Tensor], model: Any, has_batch_dim: bool = True
    ) -> None:
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim
        self.has_embed = "hook_embed" in cache_dict
        self.has_pos_embed = "hook_pos_embed" in cache_dict

    # --- mapping ---------------------------------------------------------------------------------
    def _key(self, key: str | tuple[Any, ...]) -> str:
        if isinstance(key, str):
            if key in self.cache_dict:
                return key
            return get_act_name(key)
        if isinstance(key, tuple):
            name, *rest = key
            layer = rest[0] if rest else None
            layer_type = rest[1] if len(rest) > 1 else None
            if isinstance(layer, int) and layer < 0:
                layer += self.model.cfg.n_layers
            return get_act_name(name, layer, layer_type)
        raise TypeError(f"Cache keys are names or (name, layer[, layer_type]) tuples, not {key!r}.")

    def __getitem__(self, key: str | tuple[Any, ...]) -> Tensor:
        name = self._key(key)
        if name not in self.cache_dict:
            import difflib

            close = difflib.get_close_matches(name, list(self.cache_dict), n=5, cutoff=0.5)
            hint = f" Closest cached names: {', '.join(close)}." if close else ""
            raise MissingActivationError(
                f"{name!r} is not in this cache.{hint} (Was it excluded by names_filter, or is it "
                "an opt-in hook that was off?)"
            )
        return self.cache_dict[name]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str | tuple):
            return False
        try:
            return self._key(key) in self.cache_dict
        except (TypeError, ValueError):
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def keys(self) -> Any:
        return self.cache_dict.keys()

    def values(self) -> Any:
        return self.cache_dict.values()

    def items(self) -> Any:
        return self.cache_dict.items()

    def __repr__(self) -> str:
        return f"ActivationCache with keys {list(self.cache_dict)}"

    # --- transforms ------------------------------------------------------------------------------
    def to(self, device: str | torch.device, move_model: bool = False) -> ActivationCache:
        """Move every activation (and optionally the model) to `device`; returns self."""
        self.cache_dict = {k: v.to(device) for k, v in self.cache_dict.items()}
        if move_model:
            self.model.to(device)
        return self

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch axis (the batch must have size 1); returns self."""
        if not self.has_batch_dim:
            return self
        for name, value in self.cache_dict.items():
            if value.shape[0] != 1:
                raise ValueError(
                    f"Cannot remove the batch dim: {name} has batch size {value.shape[0]}."
                )
        self.cache_dict = {k: v[0] for k, v in self.cache_dict.items()}
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice: Any) -> ActivationCache:
        """A new cache holding only the selected batch rows (an int drops the batch axis)."""
        if not self.has_batch_dim:
            raise ValueError("This cache has no batch dim to slice.")
        sl = Slice(batch_slice)
        sliced = {k: sl.apply(v, dim=0) for k, v in self.cache_dict.items()}
        return ActivationCache(sliced, self.model, has_batch_dim=not isinstance(sl.slice, int))

    def toggle_autodiff(self, mode: bool = False) -> None:
        torch.set_grad_enabled(mode)

    def stack_activation(
        self, activation_name: str, layer: int = -1, sublayer_type: str | None = None
    ) -> Tensor:
        """One activation from every layer below `layer`, stacked on a new leading axis."""
        n = self.model.cfg.n_layers if layer == -1 else layer
        return torch.stack([self[(activation_name, i, sublayer_type)] for i in range(n)], dim=0)
