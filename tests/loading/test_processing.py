"""Weight processing changes the weights, never what the model computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import anatomist
from tests.helpers import load, random_tokens, tiny_gpt2, tiny_llama

BUILDERS: dict[str, Any] = {
    "gpt2": (tiny_gpt2, {}),
    "llama-gqa-biases": (tiny_llama, {"num_key_value_heads": 2, "attention_bias": True}),
}
STEPS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


@pytest.fixture(scope="module", params=list(BUILDERS))
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    builder, overrides = BUILDERS[request.param]
    path = tmp_path_factory.mktemp(request.param)
    builder(path, **overrides)
    return path


@pytest.mark.parametrize("step", STEPS)
def test_each_step_keeps_log_probs(folder: Path, step: str) -> None:
    reference = load(folder)
    model = load(folder, processing=True, **{s: s == step for s in STEPS})
    tokens = random_tokens(model.cfg.d_vocab)
    expected = reference(tokens).log_softmax(-1)
    assert (model(tokens).log_softmax(-1) - expected).abs().max() <= 1e-4
    _, ref_cache = reference.run_with_cache(tokens)
    _, cache = model.run_with_cache(tokens)
    # Every step except centering the writing weights leaves the residual stream alone.
    if step != "center_writing_weights":
        assert (cache["resid_post", 1] - ref_cache["resid_post", 1]).abs().max() <= 1e-4


def test_processed_weights_have_the_promised_form(folder: Path) -> None:
    model = load(folder, processing=True)
    assert model.cfg.normalization_type in ("LNPre", "RMSPre")
    assert not any(name.endswith((".w", ".b")) for name, _ in model.named_parameters())
    assert model.W_U.mean(-1).abs().max() <= 1e-5  # center_unembed
    assert model.b_V.abs().max() == 0  # fold_value_biases
    if model.cfg.normalization_type == "LNPre":  # writing weights centered, reading weights too
        assert model.W_E.mean(-1).abs().max() <= 1e-5
        assert model.W_O.mean(-1).abs().max() <= 1e-5
        assert model.W_out.mean(-1).abs().max() <= 1e-5
        assert model.W_Q.mean(-2).abs().max() <= 1e-5
        assert model.W_in.mean(-2).abs().max() <= 1e-5


def test_center_writing_weights_refuses_rmsnorm(tmp_path: Path) -> None:
    tiny_llama(tmp_path)
    model = load(tmp_path)
    with pytest.raises(ValueError, match="LayerNorm"):
        model.center_writing_weights()


def test_half_precision_load_processes_in_float32(tmp_path: Path) -> None:
    tiny_gpt2(tmp_path)
    full = load(tmp_path, processing=True)
    half = load(tmp_path, processing=True, dtype="bfloat16")
    assert half.W_Q.dtype == torch.bfloat16 and half.cfg.dtype == torch.bfloat16
    assert torch.allclose(half.W_Q.float(), full.W_Q, atol=1e-2)


def test_hf_model_object_is_not_modified(tmp_path: Path) -> None:
    hf = tiny_gpt2(tmp_path)
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    model = anatomist.HookedTransformer.from_pretrained(str(tmp_path), hf_model=hf, progress=False)
    assert model.cfg.normalization_type == "LNPre"
    for key, value in hf.state_dict().items():
        assert torch.equal(value, before[key]), key
