"""MLPs: standard (``act(x W_in + b_in) W_out``) and gated (SwiGLU: ``act(x W_gate) * x W_in``).

Most activations are fixed functions (`ACTIVATIONS`); xIELU has two learned scalars per MLP
(``xielu_alpha_p``, ``xielu_alpha_n``), which live on the MLP module beside its weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anatomist.config import TransformerConfig
from anatomist.hooks import HookPoint
from anatomist.model.norm import LayerNorm

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    # SoLU (Elhage et al. 2022): x * softmax(x), followed by a LayerNorm inside the MLP.
    "solu_ln": lambda x: x * F.softmax(x, dim=-1),
    # QuickGELU, x * sigmoid(1.702 x): transformers' "quick_gelu", and GPT-OSS's gate (alpha=1.702).
    "quick_gelu": lambda x: x * torch.sigmoid(x * 1.702),
}

# xIELU (Huang et al. 2024, arXiv:2411.13010) as transformers' `XIELUActivation` runs it: beta and
# eps are fixed (transformers keeps them as buffers), the alphas are learned and start at 0.8.
XIELU_BETA = 0.5
XIELU_EPS = -1e-6
XIELU_ALPHA_INIT = 0.8


def xielu(x: Tensor, alpha_p_raw: Tensor, alpha_n_raw: Tensor) -> Tensor:
    """``alpha_p x^2 + beta x`` for x > 0, ``alpha_n (expm1(min(x, eps)) - x) + beta x`` otherwise,
    with ``alpha_p = softplus(alpha_p_raw)`` and ``alpha_n = beta + softplus(alpha_n_raw)``.

    Op for op transformers' Python path (`XIELUActivation._xielu_python`), in the input's dtype.
    """
    alpha_p = F.softplus(alpha_p_raw)
    alpha_n = XIELU_BETA + F.softplus(alpha_n_raw)
    return torch.where(
        x > 0,
        alpha_p * x * x + XIELU_BETA * x,
        (torch.expm1(torch.clamp(x, max=XIELU_EPS)) - x) * alpha_n + XIELU_BETA * x,
    )


class CanBeUsedAsMLP(nn.Module):
    """The type every MLP-like block component shares (dense, gated, mixture of experts): what
    sits at `blocks.{i}.mlp`, takes the normalized residual [b, p, d_model] and returns the MLP
    output; the classic library's name for that type, which downstream code uses in checks."""


class MLP(CanBeUsedAsMLP):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        assert cfg.d_mlp is not None and cfg.act_fn is not None
        self.cfg = cfg
        d, m, dtype = cfg.d_model, cfg.d_mlp, cfg.dtype
        self.W_in = nn.Parameter(empty_weight((d, m), (1, 0), dtype))
        self.b_in = nn.Parameter(torch.zeros(m, dtype=dtype))
        self.W_out = nn.Parameter(empty_weight((m, d), (1, 0), dtype))
        self.b_out = nn.Parameter(torch.zeros(d, dtype=dtype))
        self.act: Callable[[Tensor], Tensor]
        if cfg.act_fn == "xielu":
            # xIELU's learned scalars, stored as transformers stores them (before softplus, [1]).
            self.xielu_alpha_p = nn.Parameter(torch.empty(1, dtype=dtype))
            self.xielu_alpha_n = nn.Parameter(torch.empty(1, dtype=dtype))
            self.init_own_parameters()
            self.act = self._xielu  # a bound method, so copies of the module use their own alphas
        else:
            self.act = ACTIVATIONS[cfg.act_fn]
        self.hook_pre = HookPoint()  # [b, p, d_mlp], before the nonlinearity
        self.hook_post = HookPoint()  # [b, p, d_mlp], after it
        self.solu_ln = cfg.act_fn.endswith("_ln")
        if self.solu_ln:  # SoLU: the activation, then a LayerNorm over d_mlp
            self.hook_mid = HookPoint()  # [b, p, d_mlp], between the activation and the norm
            self.ln = LayerNorm(cfg, cfg.d_mlp)

    def init_own_parameters(self) -> None:
        """xIELU's alphas at transformers' initial values (alpha_p = alpha_n = 0.8, stored as
        inverse softplus, computed in the model's dtype as there); `init_weights` calls this
        after its generic init, which would leave them 0."""
        if self.cfg.act_fn != "xielu":
            return
        dtype = self.xielu_alpha_p.dtype
        with torch.no_grad():
            for raw, alpha in (
                (self.xielu_alpha_p, XIELU_ALPHA_INIT),
                (self.xielu_alpha_n, XIELU_ALPHA_INIT - XIELU_BETA),
            ):
                raw.copy_(torch.log(torch.expm1(torch.tensor(alpha, dtype=dtype))))

    def _xielu(self, x: Tensor) -> Tensor:
        return xielu(x, self.xielu_alpha_p, self.xielu_alpha_n)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.hook_pre(_linear(x, self.W_in, self.b_in))
        if self.solu_ln:
            post = self.hook_post(self.ln(self.hook_mid(self.act(pre))))
        else:
            post = self.hook_post(self.act(pre))
        return _linear(post, self.W_out, self.b_out)


class GatedMLP(MLP):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__(cfg)
        assert cfg.d_mlp is not None
        self.W_gate = nn.Parameter(empty_weight((cfg.d_model, cfg.d_mlp), (1, 0), cfg.dtype))
        # Zero in every released gated model; it receives a LayerNorm bias folded into the gate.
        self.b_gate = nn.Parameter(torch.zeros(cfg.d_mlp, dtype=cfg.dtype))
        self.hook_pre_linear = HookPoint()  # [b, p, d_mlp], the ungated branch x W_in + b_in

    def forward(self, x: Tensor) -> Tensor:
        pre = self.hook_pre(_linear(x, self.W_gate, self.b_gate))  # gate pre-activation
        pre_linear = self.hook_pre_linear(_linear(x, self.W_in, self.b_in))
        limit = self.cfg.swiglu_limit
        if limit is None:
            post = self.act(pre) * pre_linear
        else:  # GPT-OSS's clamped SwiGLU: the hooks above see both branches before the clamps
            post = self.act(pre.clamp(max=limit)) * (pre_linear.clamp(-limit, limit) + 1)
        post = self.hook_post(post)
        return _linear(post, self.W_out, self.b_out)


def _linear(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    # One GEMM on the flattened batch, no copy of W.
    out = matmul_bias(x.reshape(-1, x.shape[-1]), W, b)
    return out.view(*x.shape[:-1], W.shape[-1])


def empty_weight(
    shape: tuple[int, ...],
    memory: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device | str | None = None,
) -> Tensor:
    """An uninitialised weight of the classic `shape`, its memory laid out in the dim order
    `memory` (outermost first).

    Weights are laid out as transformers stores them, output features outermost (``W_in
    [d_model, d_mlp]`` as ``[d_mlp, d_model]``; ``W_Q [heads, d_model, d_head]`` as ``[heads,
    d_head, d_model]``): a checkpoint's tensor is then the weight itself, not a copy; the
    projection matrices the forward multiplies by are views (no copy per forward); and the
    GEMMs run as transformers' do (for a wide unembedding, this order is ~30% faster on CPU).
    Loading and stacking over layers keep the layout (`loading.pretrained._assign`,
    `model.weights`); a weight of any other layout computes the same, only slower.
    """
    base = torch.empty([shape[i] for i in memory], dtype=dtype, device=device)
    return base.permute(*(memory.index(i) for i in range(len(shape))))


def matmul_bias(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """``x @ W + b`` for a 2-D `x`, `b` of ``W.shape[-1]`` elements in any shape.

    Models without biases carry biases of zeros (the classic layout has a ``b_*`` everywhere);
    adding one costs a copy into the output and a second pass of the GEMM, about 3% of a
    forward. When no gradient is wanted, a bias known to be zero is skipped. Whether it is zero
    is checked once per version of the tensor, so an in-place edit is seen at the next call.
    """
    if not (torch.is_grad_enabled() and b.requires_grad) and _all_zero(b):
        return x @ W
    return torch.addmm(b.reshape(-1), x, W)


def _all_zero(b: Tensor) -> bool:
    if b.is_inference():  # no version counter to key a cached answer on
        return not bool(b.any())
    try:
        key = (b.data_ptr(), b._version)
    except RuntimeError:  # tensors without storage (tracing, fake tensors): always add
        return False
    cached = getattr(b, "_anatomist_zero", None)
    if cached is not None and cached[0] == key:
        return bool(cached[1])
    zero = not bool(b.any())
    b._anatomist_zero = (key, zero)  # type: ignore[attr-defined]
    return zero


def dense_config(cfg: TransformerConfig) -> TransformerConfig:
    """`cfg` without its mixture-of-experts fields: what one expert (a dense MLP) is built from."""
    return dataclasses.replace(
        cfg, num_experts=None, d_mlp_shared=None, moe_layers=None, d_mlp_dense=None
    )


def make_mlp(cfg: TransformerConfig, layer_idx: int | None = None) -> nn.Module:
    """The MLP `cfg` describes for `layer_idx`: a mixture of experts (cfg.num_experts, in the
    layers cfg.moe_layers names), gated, or standard. Without a layer index, every layer alike.

    The dense layers of a mixed model (Qwen-MoE's ``mlp_only_layers``) are cfg.d_mlp_dense wide.
    """
    if cfg.num_experts is not None and (layer_idx is None or cfg.is_moe_layer(layer_idx)):
        from anatomist.model.moe import MoE  # deferred: moe.py imports this module

        return MoE(cfg)
    if cfg.num_experts is not None:  # a dense layer among expert layers
        cfg = dataclasses.replace(dense_config(cfg), d_mlp=cfg.d_mlp_of_dense_layers)
    return GatedMLP(cfg) if cfg.gated_mlp else MLP(cfg)
