"""Weight views stacked over layers, and device moves that keep ``cfg`` in step.

Shared by `HookedTransformer`, `HookedEncoder` and `HookedEncoderDecoder`: each keeps a
``blocks`` list whose blocks have ``attn`` and ``mlp`` submodules with the classic weight names.
Also their common random init (`init_weights`).

Stacked views share storage with the parameters. The parameters stay per block (so
``state_dict`` names are the classic ones), but the blocks' parameters of one kind live as
consecutive slices of one ``[n_layers, ...]`` tensor, and ``model.W_Q`` is that tensor: an
in-place edit of ``model.W_Q[l, h]`` (under ``torch.no_grad()``, as for any parameter) edits
``model.blocks[l].attn.W_Q[h]``. The layout is made on the first access: the parameters are
copied once into one stacked tensor and each Parameter is pointed at its slice
(``param.data = stacked[l]``), so the Parameter objects, and optimizers and hooks holding them,
are unchanged. Whatever gives a parameter new memory (``.to(device or dtype)``,
``load_state_dict(assign=True)``) undoes the layout; the next access makes it again. Memory stays
one copy of the weights, two for one kind of weight while it is laid out.

With gradients enabled and parameters that require them, a view is also a differentiable
function of the parameters (the gradient of ``W_Q[l]`` reaches ``blocks[l].attn.W_Q``), as the
classic ``torch.stack`` was; editing it in place then fails, as editing a parameter does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from anatomist.config import NORMAL_INIT
from anatomist.model.devices import check_splittable, forget_placement, place, plan_devices
from anatomist.model.mlp import empty_weight


def stacked_parameters(params: Sequence[Tensor]) -> Tensor:
    """`params` (one per layer, same shape) as one ``[n_layers, ...]`` tensor sharing their
    storage; laid out first if they are not consecutive slices of one tensor yet.

    A parameter used by two layers (or a computed tensor) cannot be a slice of its own layer:
    those are stacked into a copy, as are tensors on the meta device.
    """
    if not params:
        raise ValueError("This model has no layers, so there is nothing to stack.")
    shared = len({id(p) for p in params}) < len(params)
    if shared or not all(p.is_leaf for p in params) or params[0].device.type == "meta":
        return torch.stack(list(params))  # (meta tensors have no storage to share)
    first = params[0].device
    if any(p.device != first for p in params):  # a model split over devices: gathered, a copy
        return torch.stack([p.to(first) for p in params])
    if _storage_stack(params) is None:
        _lay_out(params)
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return _StackedParameters.apply(*params)  # type: ignore[no-any-return]
    view = _storage_stack(params)
    assert view is not None
    return view


def _storage_stack(params: Sequence[Tensor]) -> Tensor | None:
    """The ``[n, ...]`` view over the parameters' common storage, or None when they are not
    consecutive contiguous slices of one storage."""
    first = params[0]
    step, offset = first.numel(), first.storage_offset()
    storage = first.untyped_storage().data_ptr()
    for i, p in enumerate(params):
        if (
            p.shape != first.shape
            or p.dtype != first.dtype
            or p.device != first.device
            or p.stride() != first.stride()
            or not _dense(p)
            or p.untyped_storage().data_ptr() != storage
            or p.storage_offset() != offset + i * step
        ):
            return None
    data = first.detach()
    return data.as_strided((len(params), *first.shape), (step, *first.stride()), offset)


def _lay_out(params: Sequence[Tensor]) -> None:
    """Copy the parameters into one stacked tensor and point each at its slice."""
    shapes = {tuple(p.shape) for p in params}
    if len(shapes) > 1:
        raise ValueError(
            f"The layers' weights differ in shape ({sorted(shapes)}), so they cannot be stacked; "
            "read them per layer (model.blocks[i]...)."
        )
    # Each layer's slice keeps the memory layout of the parameters (`mlp.empty_weight`).
    first = params[0]
    order = _memory_order(first) if _dense(first) else list(range(first.dim()))
    # Outside inference mode, so the parameters do not become inference tensors.
    with torch.inference_mode(False), torch.no_grad():
        memory = (0, *(1 + i for i in order))
        shape = (len(params), *first.shape)
        stacked = empty_weight(shape, memory, first.dtype, first.device)
        for p, layer in zip(params, stacked):
            layer.copy_(p.detach())
            p.data = layer


def _memory_order(t: Tensor) -> list[int]:
    """`t`'s dims from outermost to innermost in memory."""
    return sorted(range(t.dim()), key=lambda i: -t.stride()[i])


def _dense(t: Tensor) -> bool:
    """Whether `t` fills its memory without gaps or overlaps, in some order of its dims."""
    return t.permute(*_memory_order(t)).is_contiguous()


class _StackedParameters(torch.autograd.Function):
    """The shared-storage stack as a function of the parameters: the gradient of slice ``l``
    goes to parameter ``l`` (the gradient of ``torch.stack``, without its copy)."""

    @staticmethod
    def forward(ctx: Any, *params: Tensor) -> Tensor:  # type: ignore[override]
        view = _storage_stack(params)
        assert view is not None, "the parameters were laid out just before"
        return view

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        return grad.unbind(0)


class StackedWeightsMixin:
    """``W_Q`` ... ``b_out`` as ``[n_layers, ...]`` tensors that share the parameters' storage
    (see the module docstring); ``QK`` and ``OV`` as `FactoredMatrix` objects.

    Under grouped-query attention ``W_K``, ``W_V``, ``b_K`` and ``b_V`` have one slice per query
    head, as the classic shapes require: each key/value head is repeated for the query heads
    that share it, which is a copy (an edit of it does not reach the model). ``_W_K``, ``_W_V``,
    ``_b_K`` and ``_b_V`` are the stored weights, one slice per key/value head, sharing storage
    (without GQA they equal ``W_K`` ...).
    """

    blocks: Any
    cfg: Any

    def _stack(self, module: str, attr: str) -> Tensor:
        return stacked_parameters([getattr(getattr(b, module), attr) for b in self.blocks])

    @property
    def W_Q(self) -> Tensor:  # [n_layers, n_heads, d_model, d_head]
        return self._stack("attn", "W_Q")

    @property
    def W_O(self) -> Tensor:  # [n_layers, n_heads, d_head, d_model]
        return self._stack("attn", "W_O")

    @property
    def b_Q(self) -> Tensor:  # [n_layers, n_heads, d_head]
        return self._stack("attn", "b_Q")

    @property
    def b_O(self) -> Tensor:  # [n_layers, d_model]
        return self._stack("attn", "b_O")

    # Keys and values as stored: [n_layers, n_key_value_heads, ...], sharing storage.
    def _stack_kv(self, attr: str) -> Tensor:
        return self._stack("attn", f"_{attr}" if self.cfg.is_grouped_query else attr)

    @property
    def _W_K(self) -> Tensor:  # [n_layers, n_key_value_heads, d_model, d_head]
        return self._stack_kv("W_K")

    @property
    def _W_V(self) -> Tensor:  # [n_layers, n_key_value_heads, d_model, d_head]
        return self._stack_kv("W_V")

    @property
    def _b_K(self) -> Tensor:  # [n_layers, n_key_value_heads, d_head]
        return self._stack_kv("b_K")

    @property
    def _b_V(self) -> Tensor:  # [n_layers, n_key_value_heads, d_head]
        return self._stack_kv("b_V")

    def _per_query_head(self, kv: Tensor) -> Tensor:
        """``[n_layers, n_key_value_heads, ...]`` -> ``[n_layers, n_heads, ...]`` (a copy under
        GQA, the same tensor without)."""
        if not self.cfg.is_grouped_query:
            return kv
        return kv.repeat_interleave(self.cfg.n_heads // self.cfg.n_kv_heads, dim=1)

    @property
    def W_K(self) -> Tensor:  # [n_layers, n_heads, d_model, d_head]; repeated (a copy) under GQA
        return self._per_query_head(self._W_K)

    @property
    def W_V(self) -> Tensor:  # [n_layers, n_heads, d_model, d_head]; repeated (a copy) under GQA
        return self._per_query_head(self._W_V)

    @property
    def b_K(self) -> Tensor:  # [n_layers, n_heads, d_head]; repeated (a copy) under GQA
        return self._per_query_head(self._b_K)

    @property
    def b_V(self) -> Tensor:  # [n_layers, n_heads, d_head]; repeated (a copy) under GQA
        return self._per_query_head(self._b_V)

    @property
    def QK(self) -> Any:
        """``W_Q @ W_K^T`` per head, a `FactoredMatrix` ``[n_layers, n_heads, d_model, d_model]``
        (query side on the left; keys repeated per query head under GQA)."""
        from anatomist.analysis.factored_matrix import FactoredMatrix

        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> Any:
        """``W_V @ W_O`` per head, a `FactoredMatrix` ``[n_layers, n_heads, d_model, d_model]``
        (values repeated per query head under GQA)."""
        from anatomist.analysis.factored_matrix import FactoredMatrix

        return FactoredMatrix(self.W_V, self.W_O)

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
    def W_gate(self) -> Tensor:  # [n_layers, d_model, d_mlp]
        self._require_mlp()
        if not self.cfg.gated_mlp:
            raise AttributeError("This model's MLPs are not gated: it has no W_gate.")
        return self._stack_mlp("W_gate")

    @property
    def W_out(self) -> Tensor:  # [n_layers, d_mlp, d_model]
        return self._stack_mlp("W_out")

    @property
    def b_in(self) -> Tensor:  # [n_layers, d_mlp]
        return self._stack_mlp("b_in")

    @property
    def b_out(self) -> Tensor:  # [n_layers, d_model]
        return self._stack_mlp("b_out")

    splittable = False  # whether the model runs split over devices (`model.devices`)

    def _finish_construction(self, init_weights: bool, move_to_device: bool) -> None:
        """The end of every model's ``__init__``: random init when asked, the move to
        ``cfg.device``, and naming the hook points."""
        if init_weights:
            self.init_weights()
        if move_to_device and (self.cfg.device is not None or self.cfg.n_devices > 1):
            self.move_model_modules_to_device()
        if self.cfg.device is None:  # classic code reads cfg.device: say where the model is
            first = next(self.parameters(), None)  # type: ignore[attr-defined]
            self.cfg.device = str(first.device) if first is not None else "cpu"
        self.setup()  # type: ignore[attr-defined]

    def init_weights(self) -> None:
        """Random init for training from scratch, by ``cfg.init_mode``: weight matrices and
        embedding tables from the mode's distribution (the classic gpt2 mode: N(0, init_range); the
        Xavier, Kaiming and muP modes scale by the fans of each matrix, ``init_range`` being
        the gain), norm weights 1, biases 0; a module with other parameters sets them in its
        `init_own_parameters()`. Fans follow the classic convention for ``[d_in, d_out]``
        matrices: fan-in is the next-to-last dim (d_model for W_Q ``[heads, d_model, d_head]``),
        fan-out the rest."""
        if self.cfg.seed is not None:
            torch.manual_seed(self.cfg.seed)
        for name, param in self.named_parameters():  # type: ignore[attr-defined]
            leaf = name.rsplit(".", 1)[-1]
            if leaf.lstrip("_").startswith("W") or leaf == "weight":
                _init_matrix(param, name, self.cfg.init_mode, self.cfg.init_range)
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
        """``L{layer}H{head}`` for every head, layer-major (the order of ``W_Q.flatten(0, 1)``)."""
        return [
            f"L{layer}H{head}"
            for layer in range(self.cfg.n_layers)
            for head in range(self.cfg.n_heads)
        ]

    @property
    def n_params_total(self) -> int:
        """Every parameter, embeddings, norms and biases included (`n_params` counts only the
        attention and MLP matrices). Tied embeddings are stored twice here, so count twice."""
        return sum(p.numel() for p in self.parameters())  # type: ignore[attr-defined]

    def fill_missing_keys(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """`state_dict` with every key it lacks taken from the model's current state (logging
        a warning for each weight matrix; biases and norm weights are expected to be absent
        from some checkpoints). Changes and returns `state_dict`."""
        for key, value in self.state_dict().items():  # type: ignore[attr-defined]
            if key in state_dict:
                continue
            if ".W_" in f".{key.rsplit('.', 1)[-1]}":
                logging.warning("Weight %s is missing; using the model's current value.", key)
            state_dict[key] = value
        return state_dict

    def load_and_process_state_dict(
        self,
        state_dict: dict[str, Tensor],
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        fold_value_biases: bool = True,
        refactor_factored_attn_matrices: bool = False,
    ) -> None:
        """Load `state_dict` (this model's own key names; missing keys keep the model's current
        values, see `fill_missing_keys`), then apply the weight processing steps asked for."""
        self.load_state_dict(self.fill_missing_keys(dict(state_dict)))  # type: ignore[attr-defined]
        self.process_weights_(  # type: ignore[attr-defined]
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
        )

    # --- device moves ------------------------------------------------------------------------
    def to(self, *args: Any, print_details: bool = True, **kwargs: Any) -> Any:  # type: ignore[override]
        """`nn.Module.to`, keeping ``cfg.device`` and ``cfg.dtype`` in step (`print_details`
        is accepted for the classic signature; nothing is printed)."""
        result = super().to(*args, **kwargs)  # type: ignore[misc]
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None:
            forget_placement(self)  # type: ignore[arg-type]
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

    def mps(self) -> Any:
        return self.to("mps")

    def move_model_modules_to_device(self) -> None:
        """Move every module to ``cfg.device``, or with ``cfg.n_devices > 1`` split the blocks
        evenly over that many accelerators from ``cfg.device`` on (the classic split;
        `anatomist.model.devices`)."""
        if self.cfg.n_devices > 1:
            check_splittable(type(self))
            place(self, plan_devices(self, n_devices=self.cfg.n_devices, device=self.cfg.device))  # type: ignore[arg-type]
        else:
            self.to(self.cfg.device)


def _init_matrix(param: Tensor, name: str, mode: str, init_range: float) -> None:
    """Draw a weight matrix (or embedding table) for `init_weights` by the classic init modes."""
    if mode == NORMAL_INIT:
        nn.init.normal_(param, std=init_range)
        return
    fan_in = param.shape[-2] if param.dim() >= 2 else 1
    fan_out = param.numel() // max(fan_in, 1)
    uniform = mode.endswith("uniform")
    if mode.startswith("xavier"):
        std = init_range * (2.0 / (fan_in + fan_out)) ** 0.5
    elif mode.startswith("kaiming"):  # fan-in mode, the gain of a ReLU (the classic choice)
        std = init_range * nn.init.calculate_gain("relu") / fan_in**0.5
    else:  # muP (Yang et al. 2022): embeddings 1, the unembedding 1/fan_in, others 1/sqrt(fan_in)
        if "unembed" in name:
            std = 1.0 / fan_in
        elif "embed" in name:
            std = 1.0
        else:
            std = 1.0 / fan_in**0.5
    if uniform:  # a uniform distribution of the same standard deviation
        bound = std * 3**0.5
        nn.init.uniform_(param, -bound, bound)
    else:
        nn.init.normal_(param, std=std)
