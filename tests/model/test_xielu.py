"""xIELU (the Apertus MLP activation) against transformers' `XIELUActivation`: the function in
each dtype, the random init of its learned alphas, and what loading and processing do to them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import ApertusConfig, ApertusForCausalLM
from transformers.activations import XIELUActivation

import anatomist
from anatomist.model.mlp import xielu
from tests.helpers import load, save_tiny


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_xielu_matches_transformers_bit_for_bit(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    hf = XIELUActivation(dtype=dtype)
    with torch.no_grad():
        hf.alpha_p.add_(0.3)
        hf.alpha_n.sub_(0.2)
    x = torch.cat([torch.randn(4000) * 3, torch.tensor([0.0, -0.0, -1e-6, -1e-7, 1e-7, -30.0])])
    x = x.to(dtype)
    ours = xielu(x, hf.alpha_p.detach(), hf.alpha_n.detach())
    assert ours.dtype == dtype
    assert torch.equal(ours, hf._xielu_python(x).detach())


def _xielu_cfg(dtype: torch.dtype) -> anatomist.TransformerConfig:
    return anatomist.TransformerConfig(
        n_layers=2, d_model=16, n_ctx=16, d_head=4, d_vocab=20, d_mlp=24, act_fn="xielu",
        normalization_type="RMS", positional_embedding_type="rotary", seed=0, dtype=dtype,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_init_starts_the_alphas_where_transformers_does(dtype: torch.dtype) -> None:
    model = anatomist.HookedTransformer(_xielu_cfg(dtype))  # runs init_weights
    hf = XIELUActivation(dtype=dtype)
    for block in model.blocks:
        assert torch.equal(block.mlp.xielu_alpha_p.detach(), hf.alpha_p.detach())
        assert torch.equal(block.mlp.xielu_alpha_n.detach(), hf.alpha_n.detach())
    assert block.mlp.W_in.std() > 0  # the generic init still ran


def _tiny_apertus(folder: Path, beta: float | None = None) -> ApertusForCausalLM:
    torch.manual_seed(0)
    config = ApertusConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
        vocab_size=30, max_position_embeddings=32,
    )  # fmt: skip
    hf = ApertusForCausalLM(config)
    if beta is not None:
        hf.model.layers[1].mlp.act_fn.beta.fill_(beta)
    save_tiny(hf, folder)
    return hf


def test_alphas_load_per_layer_and_processing_leaves_them_alone(tmp_path: Path) -> None:
    hf = _tiny_apertus(tmp_path)
    plain, processed = load(tmp_path), load(tmp_path, processing=True)
    for i, layer in enumerate(hf.model.layers):
        for name in ("alpha_p", "alpha_n"):
            stored = getattr(layer.mlp.act_fn, name).detach()
            assert torch.equal(getattr(plain.blocks[i].mlp, f"xielu_{name}").detach(), stored)
            assert torch.equal(getattr(processed.blocks[i].mlp, f"xielu_{name}").detach(), stored)


def test_a_checkpoint_with_another_beta_is_refused(tmp_path: Path) -> None:
    _tiny_apertus(tmp_path, beta=0.7)
    with pytest.raises(NotImplementedError, match="beta is 0.7"):
        load(tmp_path)
