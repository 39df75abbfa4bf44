"""GPT-2 cases."""

from transformers import GPT2Config, GPT2LMHeadModel

from tests.families.parity import Case


def _config(**overrides: object) -> GPT2Config:
    return GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=101, **overrides)


CASES = {
    "plain": Case(GPT2LMHeadModel, _config()),
    "inverse-layer-scale": Case(GPT2LMHeadModel, _config(scale_attn_by_inverse_layer_idx=True)),
}
