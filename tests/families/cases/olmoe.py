"""OLMoE cases: top-2 of 4 experts with GQA (raw top-k probabilities), top-3 of 6 renormalised
(`norm_topk_prob`) with MHA, attention biases and tied embeddings, top-1 of 8 (idle experts)."""

from typing import Any

from transformers import OlmoeConfig, OlmoeForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> OlmoeConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=False,
        tie_word_embeddings=False,
        pad_token_id=None,
        eos_token_id=None,
    )
    settings.update(overrides)
    return OlmoeConfig(**settings)


CASES = {
    "top2-of-4-gqa": Case(OlmoeForCausalLM, _config()),
    "top3-of-6-normalized-mha-biases-tied": Case(
        OlmoeForCausalLM,
        _config(
            num_experts=6,
            num_experts_per_tok=3,
            norm_topk_prob=True,
            num_key_value_heads=4,
            attention_bias=True,
            tie_word_embeddings=True,
        ),
    ),
    "top1-of-8": Case(OlmoeForCausalLM, _config(num_experts=8, num_experts_per_tok=1)),
}
