"""Mixtral (MixtralForCausalLM): Mistral with a sparse mixture-of-experts MLP in every layer.

Differences from Mistral: each MLP is `num_local_experts` SwiGLU experts behind a linear router;
every token goes through its top `num_experts_per_tok` experts, weighted by the router's softmax
probabilities renormalised over those experts (`norm_topk_prob`, always on for Mixtral).
`sliding_window` (default None: full attention) applies to every layer. The router's jitter noise
only acts in training and is ignored.

Also the shared expert-weight names of the MoE families (OLMoE, Qwen2-MoE, Qwen3-MoE): checkpoints
store one tensor per expert, either as Mixtral's ``block_sparse_moe.experts.{e}.w1/w3/w2`` or as
``mlp.experts.{e}.gate_proj/up_proj/down_proj``; a transformers 5 model in memory (``hf_model=``)
holds them fused over experts, ``mlp.experts.gate_up_proj [E, 2 * m, d]`` (gate rows first) and
``mlp.experts.down_proj [E, d, m]``. `MoEFamily` lets a rule capture the expert index, or return a
tensor stacked over experts for targets containing ``{e}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from anatomist.config import TransformerConfig
from anatomist.families.base import Family, WeightRule, check_stored_shape, transpose
from anatomist.families.llama import _L, IGNORE, RULES, llama_rope, llama_style_config


@dataclass(frozen=True)
class MoEFamily(Family):
    """A family whose rules may name expert weights: a target with ``{e}`` is filled from the
    pattern's ``(?P<e>\\d+)`` group, or, when the pattern has none, the transform's value is
    stacked over experts (``[num_experts, ...]``) and split into one tensor per expert."""

    def convert(self, name: str, tensor: Tensor, cfg: TransformerConfig) -> dict[str, Tensor]:
        found = self.rule_for(name)
        if found is None:
            return super().convert(name, tensor, cfg)  # ignored tensors, or the KeyError
        rule, match = found
        groups = match.groupdict()
        fill = {"i": groups.get("i", ""), "kv": "_" if cfg.is_grouped_query else ""}
        native: dict[str, Tensor] = {}
        values = rule.transform(tensor, cfg)
        check_stored_shape(rule.transform, name, tensor, values, cfg)
        for target, value in zip(rule.targets, values):
            if "{e}" not in target:
                native[target.format(**fill)] = value
            elif "e" in groups:
                native[target.format(e=groups["e"], **fill)] = value
            else:
                for e, per_expert in enumerate(value.unbind(0)):
                    native[target.format(e=e, **fill)] = per_expert
        return native


def fused_gate_up(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    """experts.gate_up_proj [E, 2 * m, d] -> W_gate, W_in, each [E, d, m]."""
    gate, up = t.chunk(2, dim=1)
    return gate.transpose(1, 2), up.transpose(1, 2)


def fused_down(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    """experts.down_proj [E, d, m] -> W_out [E, m, d]."""
    return (t.transpose(1, 2),)


_M = _L + r"(?:mlp|block_sparse_moe)\."
_E = _M + r"experts\.(?P<e>\d+)\."
_X = "blocks.{i}.mlp.experts.{e}."

EXPERT_RULES = (
    WeightRule(_M + r"gate\.weight", ("blocks.{i}.mlp.W_router",), transpose),
    WeightRule(_E + r"(?:w1|gate_proj)\.weight", (_X + "W_gate",), transpose),
    WeightRule(_E + r"(?:w3|up_proj)\.weight", (_X + "W_in",), transpose),
    WeightRule(_E + r"(?:w2|down_proj)\.weight", (_X + "W_out",), transpose),
    WeightRule(_M + r"experts\.gate_up_proj", (_X + "W_gate", _X + "W_in"), fused_gate_up),
    WeightRule(_M + r"experts\.down_proj", (_X + "W_out",), fused_down),
)


def expert_count(hf: dict[str, Any], default: int | None = None) -> int:
    """Experts per layer; configs name it `num_experts` or `num_local_experts` (attribute maps
    alias the two, and each class saves its own)."""
    count = hf.get("num_local_experts", hf.get("num_experts", default))
    if count is None:
        raise ValueError("The config names no expert count (num_experts / num_local_experts).")
    return int(count)


def moe_settings(hf: dict[str, Any], norm_topk_prob: bool, n_experts: int) -> dict[str, Any]:
    """The TransformerConfig fields of a top-k routed mixture of experts."""
    top_k = hf["num_experts_per_tok"]
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"num_experts_per_tok={top_k} must be in 1..{n_experts} (the experts).")
    return dict(num_experts=n_experts, experts_per_token=top_k, norm_topk_prob=norm_topk_prob)


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    return llama_style_config(
        hf,
        "MixtralForCausalLM",
        rope=llama_rope,
        n_ctx=hf.get("max_position_embeddings", 4096 * 32),
        **moe_settings(hf, norm_topk_prob=True, n_experts=expert_count(hf, default=8)),
        eps=hf.get("rms_norm_eps", 1e-5),
        sliding_window=hf.get("sliding_window"),
    )


FAMILY = MoEFamily(
    name="mixtral",
    architectures=("MixtralForCausalLM", "MixtralModel"),
    model_types=("mixtral",),
    build_config=build_config,
    rules=(*RULES, *EXPERT_RULES),
    ignore=IGNORE,
)
