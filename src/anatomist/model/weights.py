"""Weight views stacked over layers, and device moves that keep ``cfg`` in step.

Shared by `HookedTransformer`, `HookedEncoder` and `HookedEncoderDecoder`: each keeps a
``blocks`` list whose blocks have ``attn`` and ``mlp`` submodules with the classic weight names.
Also their common random init (`init_weights`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class StackedWeightsMixin:
    """``W_Q`` ... ``b_out`` as ``[n_layers, ...]`` tensors (views stacked into new tensors)."""

    blocks: Any
    cfg: Any

    def _stack(self, module: str, attr: str) -> Tensor:
        return torch.stack([getattr(getattr(b, module), attr) for b in self.blocks], dim=0)

    @property
    def W_Q(self) -> Tensor:  # [n_layers, n_heads, d_model, d_head]
        return self._stack("attn", "W_Q")

    @property
    def W_K(self) -> Tensor:  # [n_layers, n_heads, d_model, d_head] (repeated under GQA)
        return self._stack("attn", "W_K")

    @property
    def W_V(self) -> Tensor:
        return self._stack("attn", "W_V")

    @property
    def W_O(self) -> Tensor:  # [n_layers, n_heads, d_head, d_model]
        return self._stack("attn", "W_O")

    @property
    def b_Q(self) -> Tensor:
        return self._stack("attn", "b_Q")

    @property
    def b_K(self) -> Tensor:
        return self._stack("attn", "b_K")

    @property
    def b_V(self) -> Tensor:
        return self._stack("attn", "b_V")

    @property
    def b_O(self) -> Tensor:
        return self._stack("attn", "b_O")

    def _require_mlp(self) -> None:
        if self.cfg.attn_only:
            raise AttributeError("This model is attention-only: it has no MLP weights.")

    def _stack_mlp(self, attr: str) -> Tensor:
        """A dense-MLP weight stacked over layers; only defined when every layer has it alike."""
        self._require_mlp()
        cfg = self.cfg
        moe = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
        if moe and len(moe) < cfg.n_layers:
            dense = [i for i in range(cfg.n_layers) if i not in moe]
            raise AttributeError(
                f"This model mixes dense MLPs (layers {dense}) and mixtures of experts (layers "
                f"{moe}), so there is no stacked {attr}. Read one layer's weights instead: "
                f"model.blocks[i].mlp.{attr} for a dense layer, "
                f"model.blocks[i].mlp.experts[e].{attr} for an expert."
            )
        return self._stack("mlp", attr)

    @property
    def W_in(self) -> Tensor:  # [n_layers, d_model, d_mlp]
        return self._stack_mlp("W_in")

    @property
    def W_gate(self) -> Tensor:
        self._require_mlp()
        if not self.cfg.gated_mlp:
            raise AttributeError("This model's MLPs are not gated: it has no W_gate.")
        return self._stack_mlp("W_gate")

    @property
    def W_out(self) -> Tensor:  # [n_layers, d_mlp, d_model]
        return self._stack_mlp("W_out")

    @property
    def b_in(self) -> Tensor:
        return self._stack_mlp("b_in")

    @property
    def b_out(self) -> Tensor:
        return self._stack_mlp("b_out")

    def init_weights(self) -> None:
        """Random init for training from scratch: N(0, init_range) weight matrices and
        embedding tables, norm weights 1, biases 0; a module with other parameters sets them in
        its `init_own_parameters()`."""
        if self.cfg.seed is not None:
            torch.manual_seed(self.cfg.seed)
        for name, param in self.named_parameters():  # type: ignore[attr-defined]
            leaf = name.rsplit(".", 1)[-1]
            if leaf.lstrip("_").startswith("W") or leaf == "weight":
                nn.init.normal_(param, std=self.cfg.init_range)
            elif leaf == "w":
                nn.init.ones_(param)
            else:
                nn.init.zeros_(param)
        for module in self.modules():  # type: ignore[attr-defined]
            # Parameters that start elsewhere (xIELU's alphas) are set by their module.
            init_own = getattr(module, "init_own_parameters", None)
            if callable(init_own):
                init_own()

    def all_head_labels(self) -> list[str]:
        return [
            f"L{layer}H{head}"
            for layer in range(self.cfg.n_layers)
            for head in range(self.cfg.n_heads)
        ]

    # --- device moves ------------------------------------------------------------------------
    def to(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        result = super().to(*args, **kwargs)  # type: ignore[misc]
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None:
            self.cfg.device = str(device)
        if dtype is not None:
            self.cfg.dtype = dtype
        return result  # type: ignore[return-value]

    def cuda(self, device: int | torch.device | None = None) -> Any:
        return self.to(
            torch.device("cuda", device) if isinstance(device, int) else device or "cuda"
        )

    def cpu(self) -> Any:
        return self.to("cpu")
