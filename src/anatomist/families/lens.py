"""The classic HookedTransformer checkpoint format: a state dict in the classic naming, and a
config.json holding HookedTransformerConfig fields (the field's toy models are published so).

Weight names and shapes are already native, so tensors pass through unchanged; buffers the
classic model saved (``IGNORE``, ``mask``) are skipped. Config fields this version does not know
are ignored, except those that change the computation, which must be supported or raise.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import Family, WeightRule, same

# Classic config fields that change what the model computes, which we cannot honour (yet).
_UNSUPPORTED = {
    "use_local_attn": False,
    "shortformer_pos_embed": False,
    "final_rms": None,
    "num_experts": None,
    "use_normalization_before_and_after": False,
    "trust_remote_code": False,
}


def is_lens_config(hf: dict[str, Any]) -> bool:
    """A classic HookedTransformer config (not a Hugging Face one)."""
    return "d_model" in hf and "n_layers" in hf and "model_type" not in hf


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    for key, harmless in _UNSUPPORTED.items():
        value = hf.get(key, harmless)
        if value not in (harmless, None, False):
            raise NotImplementedError(
                f"Classic checkpoint option {key}={value!r} is not supported."
            )
    values = dict(hf)
    if values.get("positional_embedding_type") == "shortformer":
        raise NotImplementedError("Shortformer position embeddings are not supported.")
    if isinstance(values.get("dtype"), str):
        values["dtype"] = values["dtype"].removeprefix("torch.")
    if values.get("d_mlp") in (-1, None) and values.get("attn_only"):
        values["d_mlp"] = None
    for key in ("device", "n_devices"):
        values.pop(key, None)
    cfg = TransformerConfig.from_dict(values)
    cfg.original_architecture = hf.get("original_architecture") or "legacy-lens-checkpoint"
    return cfg


FAMILY = Family(
    name="lens",
    architectures=("legacy-lens-checkpoint",),
    model_types=(),
    build_config=build_config,
    rules=(WeightRule(r"(?P<name>.+\.(?:W_\w+|b_\w+|w|b|_W_\w+|_b_\w+))", ("{name}",), same),),
    ignore=(r".*\.IGNORE", r".*\.mask", r".*\.inv_freq", r".*rotary_(?:sin|cos)"),
)
