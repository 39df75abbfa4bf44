"""Parity against Hugging Face for the GPT-2 and Llama families (tiny random-init models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import hf_logits, load, random_tokens, tiny_gpt2, tiny_llama

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

CASES: dict[str, tuple[Any, dict[str, Any]]] = {
    "gpt2": (tiny_gpt2, {}),
    "gpt2-inverse-layer-scale": (tiny_gpt2, {"scale_attn_by_inverse_layer_idx": True}),
    "llama-mha-untied": (tiny_llama, {}),
    "llama-gqa": (tiny_llama, {"num_key_value_heads": 2}),
    "llama-mqa-tied": (tiny_llama, {"num_key_value_heads": 1, "tie_word_embeddings": True}),
    "llama3-rope-scaling": (
        tiny_llama,
        {"num_key_value_heads": 2, "rope_scaling": LLAMA3_SCALING, "rope_theta": 500000.0},
    ),
    "llama-linear-rope": (tiny_llama, {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "llama-biases": (tiny_llama, {"attention_bias": True, "num_key_value_heads": 2}),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Path]:
    builder, overrides = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    hf = builder(folder, **overrides)
    return hf, folder


def test_logits_match_unprocessed(case: tuple[Any, Path]) -> None:
    hf, folder = case
    model = load(folder)
    tokens = random_tokens(hf.config.vocab_size)
    ours = model(tokens)
    assert (ours - hf_logits(hf, tokens)).abs().max() <= 1e-5


def test_log_probs_match_processed(case: tuple[Any, Path]) -> None:
    hf, folder = case
    model = load(folder, processing=True)
    tokens = random_tokens(hf.config.vocab_size)
    ours = model(tokens).log_softmax(-1)
    theirs = hf_logits(hf, tokens).log_softmax(-1)
    assert (ours - theirs).abs().max() <= 1e-4
    assert model.cfg.normalization_type in ("LNPre", "RMSPre")


def test_resid_post_matches_hidden_states(case: tuple[Any, Path]) -> None:
    hf, folder = case
    model = load(folder)
    tokens = random_tokens(hf.config.vocab_size)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
    with torch.no_grad():
        hidden = hf(tokens, output_hidden_states=True).hidden_states
    n = model.cfg.n_layers
    # HF's hidden_states[i + 1] is block i's output, except the last, which is after the final norm.
    for layer in range(n - 1):
        assert (cache["resid_post", layer] - hidden[layer + 1]).abs().max() <= 1e-5
    final = model.ln_final(cache["resid_post", n - 1])
    assert (final - hidden[n]).abs().max() <= 1e-5


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_rows_alone(case: tuple[Any, Path], side: str) -> None:
    hf, folder = case
    model = load(folder)
    lengths = [5, 9, 12]
    rows = [random_tokens(hf.config.vocab_size, 1, n, seed=n)[0] for n in lengths]
    width = max(lengths)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        tokens[i, span], mask[i, span] = row, 1
    batched = model(tokens, attention_mask=mask)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    theirs = hf_logits(hf, tokens, attention_mask=mask, position_ids=positions)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        alone = model(row[None])[0]
        assert (batched[i, span] - alone).abs().max() <= 1e-5
        assert (theirs[i, span] - alone).abs().max() <= 1e-5
