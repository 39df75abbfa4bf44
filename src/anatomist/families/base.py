"""What a family is: a config mapping and a weight-name table for one Hugging Face architecture.

A family turns a checkpoint's own config.json into a `TransformerConfig`, and each checkpoint
tensor (by its Hugging Face name) into native tensors (by classic HookedTransformer name). Rules
are regular expressions over tensor names with a small transform each; ``{i}`` in a native name is
the layer index captured from the Hugging Face name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from anatomist.config import TransformerConfig

# A transform receives the tensor and the config and returns native-shaped tensors, in order,
# for the native names of its rule.
Transform = Callable[[Tensor, TransformerConfig], tuple[Tensor, ...]]


@dataclass(frozen=True)
class WeightRule:
    pattern: str  # regex over the HF tensor name; (?P<i>\d+) captures the layer
    targets: tuple[str, ...]  # native names; "{i}" is the layer, "{kv}" is "" or "_" (GQA)
    transform: Transform

    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.pattern)


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]  # HF architecture class names this family loads
    model_types: tuple[str, ...]  # HF config model_type values
    build_config: Callable[[dict[str, Any]], TransformerConfig]
    rules: tuple[WeightRule, ...]
    ignore: tuple[str, ...] = ()  # regexes of HF tensors that carry no weights we need
    _compiled: list[tuple[re.Pattern[str], WeightRule]] = field(default_factory=list, repr=False)

    def convert(self, name: str, tensor: Tensor, cfg: TransformerConfig) -> dict[str, Tensor]:
        """Native tensors for one checkpoint tensor ({} for ignored ones)."""
        if not self._compiled:
            self._compiled.extend((rule.compiled(), rule) for rule in self.rules)
        for regex, rule in self._compiled:
            match = regex.fullmatch(name)
            if match is None:
                continue
            values = rule.transform(tensor, cfg)
            fill = {"i": "", **match.groupdict(), "kv": "_" if cfg.is_grouped_query else ""}
            return {target.format(**fill): v for target, v in zip(rule.targets, values)}
        if any(re.fullmatch(p, name) for p in self.ignore):
            return {}
        raise KeyError(name)


# --- transforms shared by families --------------------------------------------------------------
def same(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return (t,)


def transpose(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    """nn.Linear weight [out, in] -> classic [in, out]."""
    return (t.T,)


def _heads_in(t: Tensor, heads: int) -> Tensor:
    """nn.Linear weight [heads * d_head, d_model] -> [heads, d_model, d_head]."""
    return t.view(heads, -1, t.shape[-1]).transpose(1, 2)


def query_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return (_heads_in(t, cfg.n_heads),)


def kv_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return (_heads_in(t, cfg.n_kv_heads),)


def query_bias(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return (t.view(cfg.n_heads, -1),)


def kv_bias(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return (t.view(cfg.n_kv_heads, -1),)


def output_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    """nn.Linear o_proj weight [d_model, heads * d_head] -> W_O [heads, d_head, d_model]."""
    return (t.T.reshape(cfg.n_heads, -1, t.shape[0]),)


# The rope scaling types the native rotary computes (anatomist.model.positions), as transformers
# names them.
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")


def rope_settings(
    hf: dict[str, Any], original_max_positions: int | None = None
) -> tuple[float, dict[str, Any] | None]:
    """rope theta and scaling from either config style (transformers 5 `rope_parameters`, or
    the older `rope_theta` + `rope_scaling`), the scaling completed with the defaults transformers
    fills in. `original_max_positions` is a config-level pretraining length that overrides the
    scaling's own, as in transformers for config classes that declare one (Phi-3)."""
    params = hf.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = hf.get("rope_scaling") or {k: v for k, v in params.items() if k != "rope_theta"}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind == "default":
        return theta, None
    if kind not in ROPE_TYPES:
        raise NotImplementedError(
            f"rope scaling type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})."
        )
    return theta, _completed_scaling(dict(scaling, rope_type=kind), hf, original_max_positions)


def _completed_scaling(
    scaling: dict[str, Any], hf: dict[str, Any], original_max_positions: int | None
) -> dict[str, Any]:
    """Fill in what transformers' `standardize_rope_params` and rope init functions default:
    the pretraining length, YaRN's and LongRoPE's factor, and dynamic NTK's threshold."""
    kind = scaling["rope_type"]

    def max_positions() -> int:
        if "max_position_embeddings" not in hf:
            raise ValueError(f"rope scaling {kind!r} needs max_position_embeddings in config.json.")
        return int(hf["max_position_embeddings"])

    if kind in ("llama3", "yarn", "longrope"):
        if original_max_positions is not None:
            scaling["original_max_position_embeddings"] = original_max_positions
        elif "original_max_position_embeddings" not in scaling:
            scaling["original_max_position_embeddings"] = max_positions()
    if kind in ("yarn", "longrope") and scaling.get("factor") is None:
        # DeepSeek-V3 and Phi-3 give the extended and the pretraining length, not their ratio.
        scaling["factor"] = max_positions() / scaling["original_max_position_embeddings"]
    if kind == "dynamic":  # HF grows the base past max_position_embeddings, not an original one
        scaling["max_position_embeddings"] = max_positions()
    return scaling
