"""Block layouts families switch on: Post-LN blocks (hooks placed as in the BERT encoder),
embeddings projected in and out of the residual stream, and dense MLPs among expert layers."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import anatomist
from anatomist.model.mlp import GatedMLP
from anatomist.model.moe import MoE
from tests.helpers import randomize_small_params

POST_LN: dict[str, Any] = dict(post_layer_norm=True, pre_norm=False, final_norm=False)


def make(**options: Any) -> anatomist.HookedTransformer:
    settings: dict[str, Any] = dict(
        n_layers=2, d_model=32, n_ctx=32, d_head=8, d_mlp=48, d_vocab=50, seed=0, act_fn="relu"
    )
    settings.update(options)
    model = anatomist.HookedTransformer(anatomist.TransformerConfig(**settings))
    randomize_small_params(model)
    return model


def tokens(pos: int = 10) -> torch.Tensor:
    return torch.randint(0, 50, (2, pos), generator=torch.Generator().manual_seed(3))


def layer_norm(x: torch.Tensor, norm: Any) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), norm.w, norm.b, norm.eps)


def test_post_ln_block_hooks_follow_the_encoder_layout() -> None:
    model = make(**POST_LN)
    _, cache = model.run_with_cache(tokens())
    for i, block in enumerate(model.blocks):
        pre = cache["resid_pre", i]
        # Attention reads the residual stream as it is: no norm in front of it.
        q = torch.einsum("bpd,hde->bphe", pre, block.attn.W_Q) + block.attn.b_Q
        assert (cache["q", i] - q).abs().max() <= 1e-5
        mid = cache["resid_mid", i]
        assert (mid - (pre + cache["attn_out", i])).abs().max() <= 1e-5
        normalized_mid = cache["normalized", i, "ln1"]
        assert (normalized_mid - layer_norm(mid, block.ln1)).abs().max() <= 1e-5
        assert (cache["mlp_out", i] - block.mlp(normalized_mid)).abs().max() <= 1e-5
        post = cache["resid_post", i]
        assert (post - (normalized_mid + cache["mlp_out", i])).abs().max() <= 1e-5
        out = cache[f"blocks.{i}.hook_normalized_resid_post"]
        assert (out - layer_norm(post, block.ln2)).abs().max() <= 1e-5
        assert (cache["normalized", i, "ln2"] - out).abs().max() == 0
        if i + 1 < model.cfg.n_layers:  # the normalized output is the next block's input
            assert torch.equal(cache["resid_pre", i + 1], out)
    # No final norm: the unembedding reads the last block's normalized output.
    last = cache[f"blocks.{model.cfg.n_layers - 1}.hook_normalized_resid_post"]
    assert torch.equal(cache["unembed.hook_in"], last)
    assert not any(name.startswith("ln_final") for name in model.hook_dict)


def test_post_ln_mlp_in_is_resid_mid_before_ln1() -> None:
    model = make(**POST_LN)
    model.set_use_hook_mlp_in(True)
    _, cache = model.run_with_cache(tokens())
    assert torch.equal(cache["mlp_in", 0], cache["resid_mid", 0])
    # Editing it changes what ln1 (and so the MLP and the residual) sees.
    shift = torch.linspace(-1, 1, 32)
    edited = model.run_with_hooks(
        tokens(), fwd_hooks=[("blocks.0.hook_mlp_in", lambda x, hook: x + shift)]
    )
    assert (edited - model(tokens())).abs().max() > 1e-2


def test_post_ln_needs_pre_norm_off() -> None:
    with pytest.raises(ValueError, match="pre_norm=False"):
        anatomist.TransformerConfig(
            n_layers=1, d_model=32, n_ctx=8, d_head=8, d_vocab=10, post_layer_norm=True
        )


def test_post_ln_processing_skips_the_folds_that_do_not_apply() -> None:
    model = make(**POST_LN)
    expected = model(tokens()).log_softmax(-1)
    model.process_weights_()
    assert model.cfg.processing == {
        "fold_ln": False,
        "center_writing_weights": False,
        "center_unembed": True,
        "fold_value_biases": True,
    }
    assert model.cfg.normalization_type == "LN" and model.blocks[0].ln1.w.shape == (32,)
    assert (model(tokens()).log_softmax(-1) - expected).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="Post-LN"):
        model.fold_layer_norm()
    with pytest.raises(ValueError, match="Post-LN"):
        model.center_writing_weights()


def test_center_writing_weights_refuses_a_model_without_final_norm() -> None:
    model = make(final_norm=False)
    with pytest.raises(ValueError, match="without a final norm"):
        model.center_writing_weights()
    expected = model(tokens()).log_softmax(-1)
    model.process_weights_()
    assert model.cfg.processing["center_writing_weights"] is False
    assert model.cfg.processing["fold_ln"] is True
    assert (model(tokens()).log_softmax(-1) - expected).abs().max() <= 1e-5


def test_embedding_projections_and_their_hooks() -> None:
    model = make(d_embed=16)
    assert model.W_E.shape == (50, 16) and model.W_U.shape == (16, 50)
    assert model.embed.W_proj_in.shape == (16, 32) and model.unembed.W_proj_out.shape == (32, 16)
    logits, cache = model.run_with_cache(tokens())
    embedded = cache["embed.hook_proj_in"]
    assert embedded.shape == (2, 10, 16) and torch.equal(embedded, model.W_E[tokens()])
    assert (cache["hook_embed"] - embedded @ model.embed.W_proj_in).abs().max() <= 1e-6
    resid0 = cache["hook_embed"] + cache["hook_pos_embed"]
    assert (cache["resid_pre", 0] - resid0).abs().max() <= 1e-6
    projected = cache["unembed.hook_proj_out"]
    assert (
        projected - cache["ln_final.hook_normalized"] @ model.unembed.W_proj_out
    ).abs().max() <= 1e-5
    assert (logits - (projected @ model.W_U + model.b_U)).abs().max() <= 1e-5
    # Residual-stream directions go through the projection.
    direction = model.tokens_to_residual_directions(7)
    assert direction.shape == (32,)
    assert (direction - model.unembed.W_proj_out @ model.W_U[:, 7]).abs().max() <= 1e-6
    assert model.tokens_to_residual_directions(torch.tensor([[1, 2]])).shape == (1, 2, 32)
    assert model.W_E_pos.shape == (50 + 32, 32)


def test_processing_folds_through_the_projections() -> None:
    model = make(d_embed=16)
    expected = model(tokens()).log_softmax(-1)
    model.process_weights_()
    assert model.cfg.processing == {
        "fold_ln": True,
        "center_writing_weights": True,
        "center_unembed": True,
        "fold_value_biases": True,
    }
    assert (model(tokens()).log_softmax(-1) - expected).abs().max() <= 1e-5
    assert model.embed.W_proj_in.mean(-1).abs().max() <= 1e-5  # what writes the tokens
    assert model.unembed.W_proj_out.mean(0).abs().max() <= 1e-5  # reads the centered stream


def test_dense_layers_among_expert_layers() -> None:
    moe: dict[str, Any] = dict(
        n_layers=3,
        act_fn="silu",
        gated_mlp=True,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        d_mlp=24,
        num_experts=4,
        experts_per_token=2,
        d_mlp_shared=16,
        moe_layers=[1],
        d_mlp_dense=40,
    )
    model = make(**moe)
    kinds = [type(block.mlp) for block in model.blocks]
    assert kinds == [GatedMLP, MoE, GatedMLP]
    assert model.blocks[0].mlp.W_in.shape == (32, 40)
    assert model.blocks[1].mlp.experts[0].W_in.shape == (32, 24)
    assert not hasattr(model.blocks[0].mlp, "shared_expert")
    names = set(model.hook_dict)
    assert "blocks.1.mlp.hook_expert_indices" in names
    assert "blocks.0.mlp.hook_expert_indices" not in names
    assert "blocks.0.mlp.hook_pre" in names
    attn = 3 * (4 * 8 * 32 * 4)
    dense = 2 * (3 * 32 * 40)
    experts = (3 * 32 * 24 + 32) * 4 + 3 * 32 * 16
    assert model.cfg.n_params == attn + dense + experts
    for view in ("W_in", "W_gate", "W_out", "b_in", "b_out"):
        with pytest.raises(AttributeError, match=r"mixes dense MLPs \(layers \[0, 2\]\)"):
            getattr(model, view)
    expected = model(tokens()).log_softmax(-1)
    model.process_weights_()
    assert (model(tokens()).log_softmax(-1) - expected).abs().max() <= 1e-5


def test_moe_layers_need_experts() -> None:
    with pytest.raises(ValueError, match="moe_layers"):
        anatomist.TransformerConfig(
            n_layers=2, d_model=32, n_ctx=8, d_head=8, d_vocab=10, moe_layers=[0]
        )
