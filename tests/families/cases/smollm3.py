"""SmolLM3 cases: NoPE every 4th layer by default (tied, GQA, default theta 2e6), explicit
`no_rope_layers`, biases on attention and the MLP, and sliding windows on the NoPE layers
(derived from `use_sliding_window`) or on the layers `layer_types` names."""

from typing import Any

from transformers import SmolLM3Config, SmolLM3ForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> SmolLM3Config:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    settings.update(overrides)
    return SmolLM3Config(**settings)


CASES = {
    "default-interval-tied-gqa": Case(SmolLM3ForCausalLM, _config()),
    "explicit-nope-layers-biases-untied": Case(
        SmolLM3ForCausalLM,
        _config(
            no_rope_layers=[0, 1, 0, 1],
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=False,
            num_key_value_heads=4,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
    ),
    "sliding-nope-layers": Case(
        SmolLM3ForCausalLM,
        _config(no_rope_layer_interval=2, use_sliding_window=True, sliding_window=4),
    ),
    "sliding-layer-types-mqa": Case(
        SmolLM3ForCausalLM,
        _config(
            num_hidden_layers=3,
            num_key_value_heads=1,
            sliding_window=3,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            no_rope_layers=[1, 1, 0],
        ),
    ),
}
