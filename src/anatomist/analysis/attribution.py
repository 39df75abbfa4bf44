"""Attribution patching: activation patching of every component at once, to first order.

Patching one clean activation ``a_clean`` into the corrupted run changes the metric by about

    metric(patched) - metric(corrupted) ~= (a_clean - a_corrupted) . d metric / d a   (at corrupted)

(Nanda 2023, "Attribution Patching: Activation Patching At Industrial Scale"; Syed et al. 2023,
"Attribution Patching Outperforms Automated Circuit Discovery"). One clean forward pass, one
corrupted forward pass and one backward pass give this estimate for every layer, position and head
of every component type, where activation patching needs a forward pass per cell.

The estimate is exact for a patch whose effect on the metric is linear, and degrades where the
model is far from linear between the two runs (attention patterns that saturate, large LayerNorm
scale changes): compare with `anatomist.analysis.patching` on the cells that matter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from anatomist.analysis.patching import PatchingMetric, _as_tokens
from anatomist.utils import get_act_name

DEFAULT_COMPONENTS = ("resid_pre", "attn_out", "mlp_out", "z", "q", "k", "v")

# Hooks shaped [batch, head, query_pos, key_pos]: no feature axis to sum over.
_HEAD_FIRST = ("hook_attn_scores", "hook_pattern")


def attribution_patch(
    model: Any,
    corrupted_tokens: Tensor | str | list[str],
    clean_cache: Mapping[str, Tensor] | Any,
    patching_metric: PatchingMetric,
    components: Sequence[str] = DEFAULT_COMPONENTS,
) -> dict[str, Tensor]:
    """First-order estimate of patching each clean activation into the corrupted run.

    For every component, layer and cell: ``sum((clean_act - corrupted_act) * grad)`` over the
    batch and the component's feature axis, where ``grad`` is the gradient of
    ``patching_metric`` at the corrupted run. A score approximates
    ``metric(patched) - metric(corrupted)`` for the matching activation-patching cell (the clean
    value patched into every prompt of the batch, as the ``get_act_patch_*`` presets do).

    Args:
        model: a `HookedTransformer`.
        corrupted_tokens: ``[batch, pos]`` tokens of the corrupted run (strings are tokenized).
        clean_cache: the clean run's activations (an `ActivationCache` or a dict by hook name)
            holding every component asked for; or the clean tokens, in which case the clean
            forward pass runs here and caches only what is needed.
        patching_metric: ``metric(logits [batch, pos, d_vocab]) -> 0-d tensor``, differentiable.
        components: activation shorthands, each hooked in every layer, e.g. ``resid_pre``,
            ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``, ``z`` (head outputs; the
            same scores as ``result`` since ``result = z @ W_O`` is linear), ``result`` (needs
            ``model.set_use_attn_result(True)``), ``q``, ``k``, ``v``, ``pattern``, ``post``.

    Returns:
        ``{component: scores}`` with, per hook shape:
        ``[b, pos, d]`` -> ``[n_layers, pos]`` (resid, attn_out, mlp_out, post, ...);
        ``[b, pos, heads, d]`` -> ``[n_layers, pos, heads]`` (z, result, q; k/v have
        ``n_key_value_heads``); ``[b, heads, dest, src]`` -> ``[n_layers, heads, dest, src]``
        (pattern, attn_scores). Sum over ``pos`` for the all-positions estimate.
    """
    tokens = _as_tokens(model, corrupted_tokens)
    n_layers = model.cfg.n_layers
    names = {c: [get_act_name(c, layer=layer) for layer in range(n_layers)] for c in components}
    all_names = [n for layer_names in names.values() for n in layer_names]
    model.resolve_hook_names(all_names)  # unknown or switched-off hooks: a clear error now

    if not isinstance(clean_cache, Mapping) and not hasattr(clean_cache, "cache_dict"):
        with torch.no_grad():
            _, clean_cache = model.run_with_cache(
                _as_tokens(model, clean_cache), names_filter=all_names, return_cache_object=False
            )

    corrupted: dict[str, Tensor] = {}

    def keep(activation: Tensor, hook: Any) -> Tensor | None:
        if activation.requires_grad:
            corrupted[hook.name] = activation
            return None
        # Nothing upstream needs a gradient (frozen weights and no earlier component): start
        # the graph here. The gradient at this tensor is still the full downstream one.
        leaf = activation.detach().requires_grad_(True)
        corrupted[hook.name] = leaf
        return leaf

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(n, keep) for n in all_names])
        value = patching_metric(logits)
        if not isinstance(value, Tensor) or value.numel() != 1 or not value.requires_grad:
            raise ValueError(
                "attribution_patch needs patching_metric to return a differentiable scalar "
                "tensor of the logits (no .item(), no torch.no_grad())."
            )
        unique = list(dict.fromkeys(all_names))
        grads = torch.autograd.grad(
            value.reshape(()), [corrupted[n] for n in unique], allow_unused=True
        )
    grad_of = dict(zip(unique, grads))

    scores: dict[str, Tensor] = {}
    for component, layer_names in names.items():
        per_layer = []
        for name in layer_names:
            act = corrupted[name].detach()
            grad = grad_of[name]
            clean = clean_cache[name]
            # Compared before subtracting: a clean batch of 1 would broadcast over a corrupted
            # batch of several and give a plausible estimate for the wrong prompts.
            if clean.shape != act.shape:
                raise ValueError(
                    f"Clean {name} has shape {tuple(clean.shape)} but the corrupted run's is "
                    f"{tuple(act.shape)}: the two runs need the same batch size and positions."
                )
            delta = clean.to(act.device, act.dtype) - act
            contribution = delta * grad if grad is not None else torch.zeros_like(delta)
            feature_dims = () if name.endswith(_HEAD_FIRST) else (-1,)
            per_layer.append(contribution.sum(dim=(0, *feature_dims)))
        scores[component] = torch.stack(per_layer)
    return scores


__all__ = ["DEFAULT_COMPONENTS", "attribution_patch"]
