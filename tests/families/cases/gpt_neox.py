"""GPT-NeoX (Pythia) cases: parallel and sequential blocks, partial and full rotary, tied
embeddings, no attention biases, linear rope scaling, and the older config keys."""

from typing import Any

from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> GPTNeoXConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        rotary_pct=0.5,
    )
    settings.update(overrides)
    return GPTNeoXConfig(**settings)


CASES = {
    "parallel": Case(GPTNeoXForCausalLM, _config()),
    "pythia-quarter-rotary": Case(GPTNeoXForCausalLM, _config(hidden_size=64, rotary_pct=0.25)),
    "sequential": Case(GPTNeoXForCausalLM, _config(use_parallel_residual=False)),
    "full-rotary-tied": Case(GPTNeoXForCausalLM, _config(rotary_pct=1.0, tie_word_embeddings=True)),
    "no-bias-relu": Case(GPTNeoXForCausalLM, _config(attention_bias=False, hidden_act="relu")),
    "rope-base-linear-scaling": Case(
        GPTNeoXForCausalLM,
        _config(
            rotary_emb_base=500.0,
            rope_scaling={"rope_type": "linear", "factor": 2.0},
        ),
    ),
}
