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


def rope_settings(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """rope theta and scaling from either config style (transformers 5 `rope_parameters`, or
    the older `rope_theta` + `rope_scaling`)."""
    params = hf.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = hf.get("rope_scaling") or {k: v for k, v in params.items() if k != "rope_theta"}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    return theta, (None if kind == "default" else dict(scaling))
