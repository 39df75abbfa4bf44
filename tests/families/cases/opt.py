"""OPT cases: tied ReLU (the common checkpoints), untied GELU, no biases, and LayerNorms without
weights. Learned positions are offset by two rows in the checkpoint."""

from typing import Any

from transformers import OPTConfig, OPTForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> OPTConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=48,
        vocab_size=101,
        max_position_embeddings=64,
    )
    settings.update(overrides)
    return OPTConfig(**settings)


CASES = {
    "tied-relu": Case(OPTForCausalLM, _config()),
    "untied-gelu": Case(
        OPTForCausalLM, _config(tie_word_embeddings=False, activation_function="gelu")
    ),
    "no-bias": Case(OPTForCausalLM, _config(enable_bias=False)),
    "no-affine-layer-norm": Case(OPTForCausalLM, _config(layer_norm_elementwise_affine=False)),
}
