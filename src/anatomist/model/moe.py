"""Sparse mixture-of-experts MLP (Mixtral, OLMoE, Qwen2-MoE, Qwen3-MoE, GPT-OSS).

A router scores every expert for every token; each token runs through its top
``experts_per_token`` experts and the layer returns their outputs weighted by the routing weights::

    probs = softmax(x @ W_router)                     # float32, [tokens, num_experts]
    weights, indices = topk(probs, experts_per_token)
    weights /= weights.sum(-1)                        # only with cfg.norm_topk_prob (Mixtral)
    out[t] = sum_j weights[t, j] * experts[indices[t, j]](x[t])
    out += sigmoid(x @ W_shared_gate) * shared_expert(x)   # only with cfg.d_mlp_shared (Qwen2-MoE)

This is transformers' routing (softmax over all experts, then top-k, in float32). GPT-OSS
(``cfg.router_bias``, ``cfg.router_softmax_over_topk``) routes on biased logits and takes the
softmax over the chosen experts' logits only::

    logits = x @ W_router + b_router
    top, indices = topk(logits, experts_per_token)
    weights = softmax(top)                            # float32

which is the same as the normalised top-k of the full softmax up to rounding, in the reference's
order. Its experts are gated MLPs with biases and GPT-OSS's clamped SwiGLU (``cfg.swiglu_limit``,
see `anatomist.model.mlp.GatedMLP`).

Weights (classic orientation, ``[in, out]``)::

    blocks.{i}.mlp.W_router                [d_model, num_experts]   the router
    blocks.{i}.mlp.b_router                [num_experts]            its bias (cfg.router_bias)
    blocks.{i}.mlp.experts.{e}.W_in        [d_model, d_mlp]         each expert is an `MLP`
    blocks.{i}.mlp.experts.{e}.W_gate      [d_model, d_mlp]         (gated experts), or
    blocks.{i}.mlp.experts.{e}.W_out       [d_mlp, d_model]         `GatedMLP` with cfg.gated_mlp;
    blocks.{i}.mlp.experts.{e}.b_in/b_out  [d_mlp] / [d_model]      zero where a checkpoint has none
    blocks.{i}.mlp.shared_expert.*         as an expert, with d_mlp_shared     (cfg.d_mlp_shared)
    blocks.{i}.mlp.W_shared_gate           [d_model, 1]                        (cfg.d_mlp_shared)

Hook points::

    blocks.{i}.mlp.hook_expert_weights     [b, p, experts_per_token]  routing weights used
    blocks.{i}.mlp.hook_expert_indices     [b, p, experts_per_token]  chosen experts (long)
    blocks.{i}.mlp.experts.{e}.hook_pre / hook_pre_linear (gated) / hook_post
                                           [n_routed, d_mlp]: only the tokens routed to expert e
    blocks.{i}.mlp.shared_expert.hook_pre / hook_pre_linear / hook_post   [b, p, d_mlp_shared]
    blocks.{i}.mlp.hook_shared_gate        [b, p, 1]  sigmoid gate of the shared expert

An expert's rows are the tokens routed to it in (batch, position) order, i.e. the positions
``(indices == e).any(-1).nonzero()`` of ``hook_expert_indices``; the expert's routing weight is
applied after ``W_out``, so its hooks see the unweighted computation. Every expert's hooks fire
exactly once per forward, with ``[0, d_mlp]`` tensors for an expert that received no tokens.
Replacing the routing weights or indices in a hook changes the routing that follows.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from anatomist.config import TransformerConfig
from anatomist.hooks import HookPoint
from anatomist.model.mlp import CanBeUsedAsMLP, dense_config, make_mlp, matmul_bias

# The dense-MLP weights a reader might look for on this module, and where they live instead.
_DENSE_WEIGHTS = ("W_in", "W_gate", "W_out", "b_in", "b_gate", "b_out")


class MoE(CanBeUsedAsMLP):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        n_experts, top_k = cfg.num_experts, cfg.experts_per_token
        if n_experts is None or n_experts < 1:
            raise ValueError(f"A mixture of experts needs num_experts >= 1, got {n_experts}.")
        if top_k is None or not 1 <= top_k <= n_experts:
            raise ValueError(
                f"experts_per_token must be in 1..num_experts ({n_experts}), got {top_k}."
            )
        self.cfg = cfg
        self.num_experts, self.experts_per_token = n_experts, top_k
        d, dtype = cfg.d_model, cfg.dtype
        expert_cfg = dense_config(cfg)
        self.W_router = nn.Parameter(torch.empty(d, n_experts, dtype=dtype))
        if cfg.router_bias:
            self.b_router = nn.Parameter(torch.zeros(n_experts, dtype=dtype))
        self.experts = nn.ModuleList(make_mlp(expert_cfg) for _ in range(n_experts))
        self.shared_expert: nn.Module | None = None
        if cfg.d_mlp_shared is not None:
            self.shared_expert = make_mlp(dataclasses.replace(expert_cfg, d_mlp=cfg.d_mlp_shared))
            self.W_shared_gate = nn.Parameter(torch.empty(d, 1, dtype=dtype))
            self.hook_shared_gate = HookPoint()  # [b, p, 1]
        self.hook_expert_weights = HookPoint()  # [b, p, experts_per_token]
        self.hook_expert_indices = HookPoint()  # [b, p, experts_per_token], long

    def forward(self, x: Tensor) -> Tensor:
        b, p, d = x.shape
        flat = x.reshape(b * p, d)  # [n, d]
        if self.cfg.router_bias:
            logits = matmul_bias(flat, self.W_router, self.b_router)  # [n, num_experts]
        else:
            logits = flat @ self.W_router  # [n, num_experts]
        if self.cfg.router_softmax_over_topk:
            top, indices = logits.topk(self.experts_per_token, dim=-1)  # [n, k]
            weights = top.float().softmax(dim=-1)
        else:
            probs = logits.float().softmax(dim=-1)
            weights, indices = probs.topk(self.experts_per_token, dim=-1)  # [n, k]
            if self.cfg.norm_topk_prob:
                weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = self.hook_expert_weights(weights.to(x.dtype).view(b, p, -1))
        indices = self.hook_expert_indices(indices.view(b, p, -1))
        out = self._experts_out(flat, weights.reshape(b * p, -1), indices.reshape(b * p, -1))
        out = out.view(b, p, d)
        if self.shared_expert is not None:
            gate = self.hook_shared_gate(torch.sigmoid(x @ self.W_shared_gate))  # [b, p, 1]
            out = out + gate * self.shared_expert(x)
        return out

    def _experts_out(self, x: Tensor, weights: Tensor, indices: Tensor) -> Tensor:
        """``sum_j weights[t, j] * experts[indices[t, j]](x[t])`` for every token t.

        The (token, choice) slots are sorted by expert once, so each expert runs once on a
        contiguous block of rows; the weighted rows go back to their slots and each token sums
        its own (in choice order, deterministic, as transformers does).
        """
        n, k = indices.shape
        slots = indices.reshape(-1)  # [n * k], token-major
        order = torch.argsort(slots, stable=True)  # grouped by expert, tokens in order
        counts = torch.bincount(slots, minlength=self.num_experts).tolist()  # one device sync
        if len(counts) > self.num_experts:  # (negative ids already failed in bincount)
            raise ValueError(
                f"hook_expert_indices holds expert ids outside 0..{self.num_experts - 1}."
            )
        grouped = x.index_select(0, order // k)  # [n * k, d]
        outputs, start = [], 0
        for expert, count in zip(self.experts, counts):
            if count or _hooked(expert):  # an idle expert still fires its hooks (0 rows)
                outputs.append(expert(grouped[start : start + count]))  # [count, d]
            start += count
        weighted = torch.cat(outputs) * weights.reshape(-1)[order, None]  # [n * k, d]
        unsorted = torch.empty_like(weighted).index_copy_(0, order, weighted)
        return unsorted.view(n, k, -1).sum(dim=1)  # [n, d]

    def __getattr__(self, name: str) -> Tensor | nn.Module:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _DENSE_WEIGHTS:
                raise AttributeError(
                    f"This MLP is a mixture of {self.num_experts} experts: it has no single "
                    f"{name}. Each expert has its own (mlp.experts[e].{name}); the router is "
                    "mlp.W_router."
                ) from None
            raise


def _hooked(module: nn.Module) -> bool:
    return any(isinstance(m, HookPoint) and m.has_hooks for m in module.modules())
