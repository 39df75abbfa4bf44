"""OLMo 3 cases: OLMo 2 with sliding-window layers and per-layer-type rope."""

from typing import Any

from transformers import Olmo3Config, Olmo3ForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> Olmo3Config:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        sliding_window=4,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    settings.update(overrides)
    return Olmo3Config(**settings)


CASES = {
    "three-local-one-global": Case(Olmo3ForCausalLM, _config()),
    "global-linear-rope": Case(
        Olmo3ForCausalLM,
        _config(
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 500000.0},
            }
        ),
    ),
}
