"""OPT cases: tied ReLU (the common checkpoints), untied GELU, no biases, and LayerNorms without
weights. Learned positions are offset by two rows in the checkpoint. opt-350m's layout: Post-LN
blocks without a final LayerNorm, and token embeddings narrower than the residual stream
(project_in/project_out); each alone too, the projections in a pre-LN model (so weight processing
folds the final LayerNorm through project_out), and a pre-LN model without its final LayerNorm."""

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
    "opt-350m-like": Case(
        OPTForCausalLM, _config(do_layer_norm_before=False, word_embed_proj_dim=16)
    ),
    "post-ln": Case(OPTForCausalLM, _config(do_layer_norm_before=False)),
    "project-in-out-untied": Case(
        OPTForCausalLM, _config(word_embed_proj_dim=24, tie_word_embeddings=False)
    ),
    "no-final-layer-norm": Case(OPTForCausalLM, _config(_remove_final_layer_norm=True)),
}
