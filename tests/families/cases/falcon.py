"""Falcon cases: the 7B layout (parallel, one shared norm, multi-query), the new decoder
architecture with two norms and grouped-query attention (and with one norm, as Falcon2-11B),
multi-head attention with biases, the sequential block, untied embeddings, linear rope scaling;
and ALiBi (Falcon-RW: sequential, multi-head, biases) with 4 and 6 heads (a head count that is
not a power of two takes the interleaved slopes), and ALiBi in the parallel multi-query layout.
The ALiBi cases run 300 positions, past 256, where Falcon's bfloat16 ``slope * position``
starts rounding."""

from typing import Any

from transformers import FalconConfig, FalconForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> FalconConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_hidden_size=48,
        vocab_size=101,
        max_position_embeddings=64,
    )
    settings.update(overrides)
    return FalconConfig(**settings)


CASES = {
    "7b-multi-query": Case(FalconForCausalLM, _config()),
    "new-arch-gqa-two-norms": Case(
        FalconForCausalLM, _config(new_decoder_architecture=True, num_kv_heads=2, bias=True)
    ),
    "new-arch-one-norm-untied": Case(
        FalconForCausalLM,
        _config(
            new_decoder_architecture=True,
            num_kv_heads=1,
            num_ln_in_parallel_attn=1,
            tie_word_embeddings=False,
        ),
    ),
    "new-arch-mha": Case(FalconForCausalLM, _config(new_decoder_architecture=True)),
    "mha-bias-linear-rope": Case(
        FalconForCausalLM,
        _config(
            multi_query=False,
            bias=True,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0},
        ),
    ),
    "sequential-relu": Case(
        FalconForCausalLM, _config(parallel_attn=False, bias=True, activation="relu")
    ),
    "sequential-multi-query": Case(FalconForCausalLM, _config(parallel_attn=False)),
    "rw-alibi": Case(
        FalconForCausalLM,
        _config(
            alibi=True,
            multi_query=False,
            parallel_attn=False,
            bias=True,
            max_position_embeddings=512,
        ),
        seq_len=300,
    ),
    "rw-alibi-six-heads": Case(
        FalconForCausalLM,
        _config(
            alibi=True,
            hidden_size=48,
            num_attention_heads=6,
            multi_query=False,
            parallel_attn=False,
            max_position_embeddings=512,
        ),
        seq_len=300,
    ),
    "alibi-parallel-multi-query": Case(FalconForCausalLM, _config(alibi=True)),
}
