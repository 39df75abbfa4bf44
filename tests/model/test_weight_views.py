"""Stacked weight views share storage with the parameters they describe; QK/OV circuits;
accumulated_bias from its definition."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import anatomist
from tests.helpers import BUILDERS, randomize_small_params

# view name -> (submodule of each block, parameter name there)
ATTN_VIEWS = {"W_Q": "W_Q", "W_O": "W_O", "b_Q": "b_Q", "b_O": "b_O"}
MLP_VIEWS = {"W_in": "W_in", "W_out": "W_out", "b_in": "b_in", "b_out": "b_out"}


def stored_views(model: anatomist.HookedTransformer) -> dict[str, tuple[str, str]]:
    """Every view that shares storage, with the per-block parameter it stacks."""
    views = {name: ("attn", attr) for name, attr in ATTN_VIEWS.items()}
    views.update({name: ("mlp", attr) for name, attr in MLP_VIEWS.items()})
    if model.cfg.gated_mlp:
        views["W_gate"] = ("mlp", "W_gate")
    gqa = model.cfg.is_grouped_query
    for kv in ("W_K", "W_V", "b_K", "b_V"):
        views[f"_{kv}"] = ("attn", f"_{kv}" if gqa else kv)
        if not gqa:
            views[kv] = ("attn", kv)
    return views


def params_of(model: anatomist.HookedTransformer, module: str, attr: str) -> list[torch.Tensor]:
    return [getattr(getattr(block, module), attr) for block in model.blocks]


@pytest.mark.parametrize("arch", BUILDERS)
def test_views_are_the_parameters_and_share_their_storage(arch: str) -> None:
    model = BUILDERS[arch]()
    for name, (module, attr) in stored_views(model).items():
        params = params_of(model, module, attr)
        with torch.no_grad():
            view = getattr(model, name)
        assert view.shape == (model.cfg.n_layers, *params[0].shape), name
        for layer, param in enumerate(params):
            assert torch.equal(view[layer], param), name
            assert view[layer].data_ptr() == param.data_ptr(), name
        with torch.no_grad():
            view[-1].fill_(0.25)  # an in-place edit of the view is an edit of the model
        assert bool((params[-1] == 0.25).all()), name


def test_an_edit_through_a_view_changes_the_forward_pass() -> None:
    model = BUILDERS["gpt2"]()
    tokens = torch.randint(0, 50, (1, 6), generator=torch.Generator().manual_seed(0))
    before = model(tokens)
    with torch.no_grad():
        model.W_O[1, 2] = 0.0
    assert model.blocks[1].attn.W_O[2].abs().max() == 0
    assert not torch.allclose(model(tokens), before)


@pytest.mark.parametrize("arch", BUILDERS)
def test_laying_out_keeps_parameters_names_and_outputs(arch: str) -> None:
    model = BUILDERS[arch]()
    tokens = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    before = model(tokens)
    names = list(model.state_dict())
    objects = {name: id(p) for name, p in model.named_parameters()}
    for name in stored_views(model):
        getattr(model, name)
    assert list(model.state_dict()) == names
    assert {name: id(p) for name, p in model.named_parameters()} == objects
    assert torch.equal(model(tokens), before)
    # One storage per kind of weight: the layers' W_Q are slices of one tensor.
    storages = {p.untyped_storage().data_ptr() for p in params_of(model, "attn", "W_Q")}
    assert len(storages) == 1
    # A second access finds the layout made and returns the same memory.
    with torch.no_grad():
        assert model.W_Q.data_ptr() == model.W_Q.data_ptr()


def test_gqa_keys_and_values_are_repeated_per_query_head() -> None:
    model = BUILDERS["llama"]()
    cfg = model.cfg
    group = cfg.n_heads // cfg.n_kv_heads
    assert group > 1
    for name in ("W_K", "W_V", "b_K", "b_V"):
        with torch.no_grad():
            view = getattr(model, name)
        assert view.shape[:2] == (cfg.n_layers, cfg.n_heads), name
        for layer, block in enumerate(model.blocks):
            stored = getattr(block.attn, f"_{name}")  # [n_kv_heads, ...]
            for head in range(cfg.n_heads):
                assert torch.equal(view[layer, head], stored[head // group]), (name, head)


def test_a_device_or_dtype_move_is_laid_out_again() -> None:
    model = BUILDERS["gpt2"]()
    with torch.no_grad():
        model.W_in  # noqa: B018 (lays the MLP input weights out)
    model.to(torch.float64)
    with torch.no_grad():
        view = model.W_in
    assert view.dtype == torch.float64
    for layer, param in enumerate(params_of(model, "mlp", "W_in")):
        assert param.dtype == torch.float64
        assert view[layer].data_ptr() == param.data_ptr()


def test_assigned_parameters_are_laid_out_again() -> None:
    model = BUILDERS["gpt2"]()
    with torch.no_grad():
        model.W_Q  # noqa: B018
    state = {name: t.clone() + 1.0 for name, t in model.state_dict().items()}
    model.load_state_dict(state, assign=True)
    with torch.no_grad():
        view = model.W_Q
    for layer, param in enumerate(params_of(model, "attn", "W_Q")):
        assert torch.equal(view[layer], param)
        assert view[layer].data_ptr() == param.data_ptr()


def test_views_carry_gradients_to_the_parameters() -> None:
    model = BUILDERS["llama"]()
    weights = torch.arange(model.cfg.n_layers, dtype=torch.float32) + 1.0
    W_Q = model.W_Q
    assert W_Q.requires_grad
    (W_Q.sum(dim=(1, 2, 3)) * weights).sum().backward()
    for layer, param in enumerate(params_of(model, "attn", "W_Q")):
        assert param.grad is not None
        assert torch.equal(param.grad, torch.full_like(param, float(weights[layer])))
    # Through the repeat of grouped keys, each stored key head gets the sum of its group's.
    model.zero_grad()
    model.W_K.sum().backward()
    group = model.cfg.n_heads // model.cfg.n_kv_heads
    grad = model.blocks[0].attn._W_K.grad
    assert grad is not None and torch.equal(grad, torch.full_like(grad, float(group)))
    # As with a parameter, an in-place edit needs torch.no_grad().
    with pytest.raises(RuntimeError):
        model.W_Q[0, 0] = 0.0
    with torch.no_grad():
        assert not model.W_Q.requires_grad


def test_an_optimizer_built_before_the_layout_still_trains_the_model() -> None:
    model = BUILDERS["gpt2"]()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.no_grad():
        old = model.W_Q.clone()  # lays W_Q out after the optimizer took the parameters
    tokens = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(2))
    model(tokens, return_type="loss").backward()
    optimizer.step()
    with torch.no_grad():
        W_Q = model.W_Q
    assert not torch.equal(W_Q, old)
    assert torch.equal(W_Q[0], model.blocks[0].attn.W_Q)


def test_embedding_views_are_the_parameters() -> None:
    model = BUILDERS["gpt2"]()
    assert model.W_E is model.embed.W_E
    assert model.W_pos is model.pos_embed.W_pos
    assert model.W_U is model.unembed.W_U
    assert model.b_U is model.unembed.b_U
    assert torch.equal(model.W_E_pos, torch.cat([model.W_E, model.W_pos]))


def test_missing_weights_say_why() -> None:
    cfg = anatomist.TransformerConfig(
        n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=20, attn_only=True
    )
    model = anatomist.HookedTransformer(cfg)
    with pytest.raises(AttributeError, match="attention-only"):
        model.W_in  # noqa: B018
    with pytest.raises(AttributeError, match="not gated"):
        BUILDERS["gpt2"]().W_gate  # noqa: B018
    llama = BUILDERS["llama"]()
    with pytest.raises(AttributeError, match="rotary"):
        llama.W_pos  # noqa: B018


# --- QK and OV circuits ---------------------------------------------------------------------


@pytest.mark.parametrize("arch", BUILDERS)
def test_qk_and_ov_are_the_per_head_products(arch: str) -> None:
    model = BUILDERS[arch]()
    cfg = model.cfg
    group = cfg.n_heads // cfg.n_kv_heads
    with torch.no_grad():
        QK, OV = model.QK, model.OV
    assert tuple(QK.shape) == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_model)
    assert tuple(OV.shape) == tuple(QK.shape)
    for layer, block in enumerate(model.blocks):
        W_K, _, W_V, _ = block.attn.kv_weights  # the stored key/value heads
        for head in range(cfg.n_heads):
            W_Q, W_O = block.attn.W_Q[head], block.attn.W_O[head]
            qk = W_Q @ W_K[head // group].T
            ov = W_V[head // group] @ W_O
            torch.testing.assert_close(QK[layer, head].AB, qk, rtol=0, atol=1e-6)
            torch.testing.assert_close(OV[layer, head].AB, ov, rtol=0, atol=1e-6)


# --- accumulated_bias -----------------------------------------------------------------------


def make(**options: Any) -> anatomist.HookedTransformer:
    settings: dict[str, Any] = dict(
        n_layers=3, d_model=16, n_ctx=16, d_head=4, d_vocab=30, act_fn="gelu", seed=0
    )
    settings.update(options)
    model = anatomist.HookedTransformer(anatomist.TransformerConfig(**settings))
    randomize_small_params(model)
    return model


def bias_by_definition(
    model: anatomist.HookedTransformer, layer: int, mlp_input: bool, include_mlp: bool
) -> torch.Tensor:
    total = torch.zeros(model.cfg.d_model)
    for block in model.blocks[:layer]:
        total += block.attn.b_O.detach()
        if include_mlp:
            total += block.mlp.b_out.detach()
    if mlp_input:
        total += model.blocks[layer].attn.b_O.detach()
    return total


@pytest.mark.parametrize("mlp_input", [False, True])
@pytest.mark.parametrize("include_mlp", [True, False])
def test_accumulated_bias_is_the_sum_of_the_biases(mlp_input: bool, include_mlp: bool) -> None:
    model = make()
    for layer in range(model.cfg.n_layers + (0 if mlp_input else 1)):
        got = model.accumulated_bias(layer, mlp_input=mlp_input, include_mlp_biases=include_mlp)
        want = bias_by_definition(model, layer, mlp_input, include_mlp)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="n_layers"):
        model.accumulated_bias(model.cfg.n_layers + 1)


def constant_stream(model: anatomist.HookedTransformer) -> dict[str, torch.Tensor]:
    """Zero every matrix that reads or writes the stream except through biases, so the residual
    stream holds exactly the biases the layers add; return its cached values."""
    with torch.no_grad():
        model.embed.W_E.zero_()
        model.pos_embed.W_pos.zero_()
        for block in model.blocks:
            block.attn.W_O.zero_()
            block.mlp.W_out.zero_()
    tokens = torch.randint(0, 30, (1, 5), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    return dict(cache.items())


@pytest.mark.parametrize("parallel", [False, True])
def test_accumulated_bias_is_what_the_stream_holds_without_inputs(parallel: bool) -> None:
    model = make(parallel_attn_mlp=parallel)
    cache = constant_stream(model)
    for layer in range(model.cfg.n_layers):
        resid_pre = cache[f"blocks.{layer}.hook_resid_pre"][0]  # [p, d_model], every row alike
        torch.testing.assert_close(
            resid_pre, model.accumulated_bias(layer).expand_as(resid_pre), rtol=0, atol=1e-6
        )
        # What the MLP of this layer reads: resid_mid, or resid_pre in a parallel block.
        mlp_reads = resid_pre if parallel else cache[f"blocks.{layer}.hook_resid_mid"][0]
        torch.testing.assert_close(
            mlp_reads,
            model.accumulated_bias(layer, mlp_input=True).expand_as(mlp_reads),
            rtol=0,
            atol=1e-6,
        )


def test_accumulated_bias_after_output_norms_is_their_bias() -> None:
    model = make(post_norm_type="LN")
    want = sum(
        (block.ln1_post.b.detach() + block.ln2_post.b.detach() for block in model.blocks[:2]),
        torch.zeros(model.cfg.d_model),
    )
    torch.testing.assert_close(model.accumulated_bias(2), want, rtol=0, atol=1e-6)
    rms = make(post_norm_type="RMS")
    assert rms.accumulated_bias(3).abs().max() == 0


def test_accumulated_bias_of_experts() -> None:
    options: dict[str, Any] = dict(num_experts=3, experts_per_token=2, d_mlp=8)
    model = make(**options)
    with pytest.raises(ValueError, match="mixture of experts"):
        model.accumulated_bias(1)
    want = sum(
        (block.attn.b_O.detach() for block in model.blocks[:2]), torch.zeros(model.cfg.d_model)
    )
    torch.testing.assert_close(
        model.accumulated_bias(2, include_mlp_biases=False), want, rtol=0, atol=1e-6
    )
    with torch.no_grad():
        for block in model.blocks:
            for expert in block.mlp.experts:
                expert.b_out.zero_()
    torch.testing.assert_close(model.accumulated_bias(2), want, rtol=0, atol=1e-6)


def test_accumulated_bias_refuses_post_ln() -> None:
    model = make(post_layer_norm=True, pre_norm=False)
    with pytest.raises(ValueError, match="Post-LN"):
        model.accumulated_bias(1)


def test_head_labels_follow_the_stacked_order() -> None:
    labels = BUILDERS["gpt2"]().all_head_labels()
    assert labels[:5] == ["L0H0", "L0H1", "L0H2", "L0H3", "L1H0"]
    assert len(labels) == 8


# What each weight's projection multiplies by (see model/mlp.py:empty_weight): a view, never a
# copy made at each forward, in transformers' memory order (output features outermost).
PROJECTIONS = {
    "W_Q": lambda W: W.permute(1, 0, 2).reshape(W.shape[1], -1),
    "W_O": lambda W: W.reshape(-1, W.shape[-1]),
    "W_in": lambda W: W,
    "W_out": lambda W: W,
}


@pytest.mark.parametrize("loaded", [False, True], ids=["built", "loaded"])
def test_weights_multiply_as_views_in_transformers_order(loaded: bool, tmp_path: Any) -> None:
    from tests.helpers import load, tiny_llama

    if loaded:
        tiny_llama(tmp_path)  # saves the checkpoint there
    model = load(tmp_path) if loaded else BUILDERS["llama"]()
    with torch.no_grad():
        model.W_Q, model.W_O, model.W_in, model.W_out  # noqa: B018 - lay out the stacks first
    for name, project in PROJECTIONS.items():
        for param in params_of(model, "mlp" if name in ("W_in", "W_out") else "attn", name):
            matrix = project(param)
            assert matrix.data_ptr() == param.data_ptr(), name  # a view of the parameter
            assert matrix.stride()[0] == 1, name  # [in, out] stored out-major, as nn.Linear
    assert model.unembed.W_U.stride() == (1, model.cfg.d_model)
