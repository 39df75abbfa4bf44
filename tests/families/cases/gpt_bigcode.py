"""GPTBigCode cases: multi-query (tied and untied), per-head fused qkv, no attention scaling."""

from typing import Any

from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> GPTBigCodeConfig:
    settings: dict[str, Any] = dict(
        n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=101, n_inner=48
    )
    settings.update(overrides)
    return GPTBigCodeConfig(**settings)


CASES = {
    "mqa-tied": Case(GPTBigCodeForCausalLM, _config()),
    "mqa-untied": Case(GPTBigCodeForCausalLM, _config(tie_word_embeddings=False)),
    "mha": Case(GPTBigCodeForCausalLM, _config(multi_query=False)),
    "mha-unscaled-gelu": Case(
        GPTBigCodeForCausalLM,
        _config(multi_query=False, scale_attn_weights=False, activation_function="gelu"),
    ),
}
