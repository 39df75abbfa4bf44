"""ActivationCache analysis: residual decompositions, head and neuron results, norms applied to
stacks, direct logit attribution, and the one-call logit lens.

Every check compares against activations the model cached itself (or its own modules applied to
them), on random-init native models covering the architecture differences the methods handle.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from anatomist import ActivationCache, HookedTransformer, TransformerConfig
from anatomist.analysis.logit_lens import layer_logits, logit_lens
from tests.helpers import gpt2_like, llama_like, randomize_small_params, tiny_tokenizer

TOL = 1e-4

# --- models ---------------------------------------------------------------------------------------


def native(**overrides: object) -> HookedTransformer:
    settings: dict[str, object] = dict(
        n_layers=2, d_model=32, n_ctx=32, d_head=8, d_vocab=50, act_fn="gelu", seed=0
    )
    settings.update(overrides)
    model = HookedTransformer(TransformerConfig(**settings))  # type: ignore[arg-type]
    randomize_small_params(model)
    return model


def folded(build: Callable[[], HookedTransformer]) -> Callable[[], HookedTransformer]:
    def build_folded() -> HookedTransformer:
        model = build()
        model.process_weights_()
        return model

    return build_folded


MODELS: dict[str, Callable[[], HookedTransformer]] = {
    "gpt2": gpt2_like,  # LayerNorm, learned positions
    "gpt2_folded": folded(gpt2_like),  # LNPre
    "llama_gqa": llama_like,  # RMSNorm, rotary, grouped-query attention, gated MLP
    "llama_gqa_folded": folded(llama_like),  # RMSPre
    "parallel": lambda: native(
        parallel_attn_mlp=True, positional_embedding_type="rotary", rotary_dim=4
    ),
    "gemma_post_norms": lambda: native(  # RMS post norms inside attn_out / mlp_out
        act_fn="gelu_pytorch_tanh",
        normalization_type="RMS",
        post_norm_type="RMS",
        gated_mlp=True,
        positional_embedding_type="rotary",
        n_heads=4,
        n_key_value_heads=2,
    ),
    "ln_post_norms": lambda: native(post_norm_type="LN"),  # post norms with a bias
    "gemma_offset": lambda: native(  # RMSNorm multiplying by 1 + w (stored w), in float32
        normalization_type="RMS", norm_weight_offset=1.0, norm_weight_in_float32=True
    ),
    "moe": lambda: native(
        act_fn="silu",
        normalization_type="RMS",
        gated_mlp=True,
        positional_embedding_type="rotary",
        num_experts=4,
        experts_per_token=2,
        d_mlp=16,
    ),
    "attn_only": lambda: native(attn_only=True, act_fn=None),
    "shortformer": lambda: native(positional_embedding_type="shortformer"),
    "bloom": lambda: native(post_embedding_norm=True, positional_embedding_type="alibi"),
}
NEURONS = [name for name in MODELS if name not in ("moe", "attn_only")]


def tokens(batch: int = 2, pos: int = 7, seed: int = 1) -> Tensor:
    return torch.randint(0, 50, (batch, pos), generator=torch.Generator().manual_seed(seed))


def run(name: str) -> tuple[HookedTransformer, Tensor, ActivationCache]:
    model = MODELS[name]()
    logits, cache = model.run_with_cache(tokens())
    return model, logits, cache


def stream_into(model: HookedTransformer, cache: ActivationCache, layer: int, mlp: bool) -> Tensor:
    """The stream block `layer`'s attention (or MLP) reads, straight from the hooks."""
    if layer == model.cfg.n_layers:
        return cache[f"blocks.{layer - 1}.hook_resid_post"]
    if mlp and not model.cfg.parallel_attn_mlp:
        return cache[f"blocks.{layer}.hook_resid_mid"]
    return cache[f"blocks.{layer}.hook_resid_pre"]


def points(model: HookedTransformer) -> list[tuple[int, bool]]:
    """Every (layer, mlp_input) a decomposition can target."""
    n = model.cfg.n_layers
    mlp = [] if model.cfg.attn_only else [(layer, True) for layer in range(n)]
    return [(layer, False) for layer in range(n + 1)] + mlp


def max_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max().detach())


def written_bias(model: HookedTransformer, cache: ActivationCache, layer: int, part: str) -> Tensor:
    """What a sublayer's output bias (b_O, b_out) adds to the stream: itself, or, through a post
    norm at the cached scale, ``(b - mean(b)) / scale * w + b_norm`` (LN) or ``b / scale * w``."""
    block = model.blocks[layer]
    bias = block.attn.b_O if part == "attn" else block.mlp.b_out
    if model.cfg.post_norm_type is None:
        return bias
    which = "ln1_post" if part == "attn" else "ln2_post"
    norm, scale = getattr(block, which), cache[f"blocks.{layer}.{which}.hook_scale"]
    if model.cfg.post_norm_type == "LN":
        return (bias - bias.mean()) / scale * norm.w + norm.b
    return bias / scale * norm.w


# --- sums -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_decompose_resid_sums_to_the_stream(name: str) -> None:
    model, _, cache = run(name)
    for layer, mlp in points(model):
        stack = cache.decompose_resid(layer, mlp_input=mlp)
        assert isinstance(stack, Tensor)
        assert max_diff(stack.sum(0), stream_into(model, cache, layer, mlp)) <= TOL, (layer, mlp)
    # mode="attn" plus mode="mlp" plus the embeddings is the whole stream again.
    attn = cache.decompose_resid(mode="attn", incl_embeds=False)
    mlp_part = cache.decompose_resid(mode="mlp", incl_embeds=False)
    embeds = cache.decompose_resid(0)
    assert isinstance(attn, Tensor) and isinstance(mlp_part, Tensor) and isinstance(embeds, Tensor)
    total = attn.sum(0) + mlp_part.sum(0) + embeds.sum(0)
    assert max_diff(total, stream_into(model, cache, model.cfg.n_layers, False)) <= TOL


@pytest.mark.parametrize("name", list(MODELS))
def test_full_resid_decomposition_sums_to_the_stream(name: str) -> None:
    model, _, cache = run(name)
    for expand in (True, False) if name in NEURONS else (False,):
        for layer, mlp in points(model):
            stack = cache.get_full_resid_decomposition(layer, mlp_input=mlp, expand_neurons=expand)
            assert isinstance(stack, Tensor)
            target = stream_into(model, cache, layer, mlp)
            assert max_diff(stack.sum(0), target) <= TOL, (expand, layer, mlp)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "gemma_post_norms", "ln_post_norms"])
def test_head_results_sum_to_attn_out(name: str) -> None:
    """A layer's heads plus its output bias (through the post norm, if any) are attn_out; with the
    remainder the stack sums to the stream."""
    model, _, cache = run(name)
    n_heads = model.cfg.n_heads
    heads = cache.stack_head_results()
    assert isinstance(heads, Tensor) and heads.shape == (2 * n_heads, 2, 7, 32)
    for layer in range(model.cfg.n_layers):
        bias = written_bias(model, cache, layer, "attn")
        layer_sum = heads[layer * n_heads : (layer + 1) * n_heads].sum(0) + bias
        assert max_diff(layer_sum, cache["attn_out", layer]) <= TOL
    for layer in range(model.cfg.n_layers + 1):
        stack = cache.stack_head_results(layer, incl_remainder=True)
        assert isinstance(stack, Tensor) and stack.shape[0] == layer * n_heads + 1
        assert max_diff(stack.sum(0), stream_into(model, cache, layer, False)) <= TOL


def test_head_results_by_hand_without_post_norms() -> None:
    """Without post norms, a layer's heads plus b_O are attn_out with nothing in between."""
    model, _, cache = run("llama_gqa")
    heads = cache.stack_head_results(pos_slice=-1)
    assert isinstance(heads, Tensor) and heads.shape == (8, 2, 32)
    for layer in range(2):
        total = heads[4 * layer : 4 * layer + 4].sum(0) + model.blocks[layer].attn.b_O
        assert max_diff(total, cache["attn_out", layer][:, -1]) <= TOL


def test_compute_head_results_matches_the_result_hook_under_gqa() -> None:
    model = llama_like()
    assert model.cfg.is_grouped_query
    model.set_use_attn_result(True)
    _, hooked = model.run_with_cache(tokens())
    model.set_use_attn_result(False)
    _, cache = model.run_with_cache(tokens())
    assert "blocks.0.attn.hook_result" not in cache
    cache.compute_head_results()
    for layer in range(2):
        name = f"blocks.{layer}.attn.hook_result"
        assert cache[name].shape == (2, 7, 4, 32)
        assert max_diff(cache[name], hooked[name]) <= 1e-5
    # stack_head_results computes them on demand when only hook_z was cached.
    _, z_only = model.run_with_cache(
        tokens(), names_filter=lambda n: n.endswith(("hook_z", "hook_embed", "resid_pre"))
    )
    stack = z_only.stack_head_results(pos_slice=(1, 4))
    assert isinstance(stack, Tensor) and stack.shape == (8, 2, 3, 32)
    assert max_diff(stack[4 + 2], hooked["blocks.1.attn.hook_result"][:, 1:4, 2]) <= 1e-5


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "gemma_post_norms", "ln_post_norms"])
def test_neuron_results_sum_to_mlp_out(name: str) -> None:
    model, _, cache = run(name)
    for layer in range(2):
        results = cache.get_neuron_results(layer)
        assert results.shape == (2, 7, model.cfg.d_mlp, 32)
        bias = written_bias(model, cache, layer, "mlp")
        assert max_diff(results.sum(-2) + bias, cache["mlp_out", layer]) <= TOL
    # Slicing neurons and positions; an int neuron drops the axis.
    some = cache.get_neuron_results(1, neuron_slice=[3, 5], pos_slice=-1)
    assert max_diff(some, cache.get_neuron_results(1)[:, -1, [3, 5]]) <= 1e-6
    one = cache.get_neuron_results(1, neuron_slice=5)
    assert one.shape == (2, 7, 32)
    assert max_diff(one, cache.get_neuron_results(1)[:, :, 5]) <= 1e-6


def test_neuron_results_by_hand() -> None:
    model, _, cache = run("gpt2")
    post, W_out = cache["post", 0], model.blocks[0].mlp.W_out
    expected = torch.einsum("bpn,nd->bpnd", post, W_out)
    assert max_diff(cache.get_neuron_results(0), expected) <= 1e-6
    stack, labels = cache.stack_neuron_results(2, neuron_slice=(0, 3), return_labels=True)
    assert labels == ["L0N0", "L0N1", "L0N2", "L1N0", "L1N1", "L1N2"]
    assert max_diff(stack[1], expected[:, :, 1]) <= 1e-6
    stack, labels = cache.stack_neuron_results(1, incl_remainder=True, return_labels=True)
    assert len(labels) == 129 and labels[-1] == "remainder"
    assert max_diff(stack.sum(0), cache["resid_pre", 1]) <= TOL


# --- norms applied to stacks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["gpt2", "gpt2_folded", "llama_gqa", "llama_gqa_folded", "gemma_offset"]
)
def test_apply_ln_to_stack_matches_the_models_norms(name: str) -> None:
    model, _, cache = run(name)
    final = cache["resid_post", 1]
    unfolded_ln_bias = model.ln_final.b if name == "gpt2" else 0.0
    # The cached scale, one stream: the norm's output less an unfolded LayerNorm's bias.
    normed = cache.apply_ln_to_stack(final[None])[0]
    assert max_diff(normed + unfolded_ln_bias, model.ln_final(final)) <= TOL
    # Recomputed statistics: exactly the norm.
    recomputed = cache.apply_ln_to_stack(final[None], recompute_ln=True)[0]
    assert max_diff(recomputed, model.ln_final(final)) <= TOL
    # Inside the model: ln1 and ln2 of block 1, one position.
    block = model.blocks[1]
    for mlp, norm, stream in ((False, block.ln1, "resid_pre"), (True, block.ln2, "resid_mid")):
        x = cache[stream, 1][:, -1]
        out = cache.apply_ln_to_stack(x[None], 1, mlp_input=mlp, pos_slice=-1)[0]
        bias = norm.b if name == "gpt2" else 0.0
        assert max_diff(out + bias, norm(x)) <= TOL
    # A decomposition through the final norm sums to the norm's output (its bias in "bias").
    stack, labels = cache.get_full_resid_decomposition(apply_ln=True, return_labels=True)
    assert labels[-1] == "bias"
    assert max_diff(stack.sum(0), model.ln_final(final)) <= TOL
    stack = cache.decompose_resid(apply_ln=True)
    assert isinstance(stack, Tensor)
    assert max_diff(stack.sum(0) + unfolded_ln_bias, model.ln_final(final)) <= TOL


def test_apply_ln_to_stack_batch_slice_and_no_batch_dim() -> None:
    model, _, cache = run("gpt2_folded")
    final = cache["resid_post", 1]
    stack = cache.decompose_resid()
    assert isinstance(stack, Tensor)
    row = cache.apply_ln_to_stack(stack, batch_slice=1)
    assert max_diff(row.sum(0), model.ln_final(final)[1]) <= TOL
    single = cache.apply_slice_to_batch_dim(0)
    assert not single.has_batch_dim
    stack = single.get_full_resid_decomposition(apply_ln=True, pos_slice=-1)
    assert isinstance(stack, Tensor) and stack.shape[1:] == (32,)
    assert max_diff(stack.sum(0), model.ln_final(final)[0, -1]) <= TOL


def test_apply_ln_to_stack_refuses_per_head_norm_inputs() -> None:
    model = gpt2_like()
    model.set_use_split_qkv_input(True)
    _, cache = model.run_with_cache(tokens())
    assert cache["scale", 1, "ln1"].shape == (2, 7, 12, 1)
    with pytest.raises(ValueError, match="per-head inputs"):
        cache.decompose_resid(1, apply_ln=True)
    stack = cache.decompose_resid(1, mlp_input=True, apply_ln=True)  # ln2 is not per head
    assert isinstance(stack, Tensor)
    assert (
        max_diff(stack.sum(0) + model.blocks[1].ln2.b, model.blocks[1].ln2(cache["resid_mid", 1]))
        <= TOL
    )


# --- direct logit attribution -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2_folded", "llama_gqa_folded"])
def test_logit_attrs_of_the_final_stream_is_the_logit_difference(name: str) -> None:
    model, logits, cache = run(name)
    right, wrong = torch.tensor([3, 17]), torch.tensor([9, 4])  # one pair per batch row
    final = cache.accumulated_resid(pos_slice=-1)[-1:]  # [1, batch, d_model]
    attrs = cache.logit_attrs(final, right, wrong, pos_slice=-1)
    rows = torch.arange(2)
    last = logits[:, -1]
    b_U = model.b_U
    expected = last[rows, right] - last[rows, wrong] - (b_U[right] - b_U[wrong])
    assert b_U.abs().max() > 0.01  # the folded norm bias lives in b_U: the test sees it
    assert attrs.shape == (1, 2)
    assert max_diff(attrs[0], expected) <= TOL
    # A full decomposition attributes the same difference, component by component.
    stack, labels = cache.get_full_resid_decomposition(pos_slice=-1, return_labels=True)
    per_part = cache.logit_attrs(stack, right, wrong, pos_slice=-1)
    assert per_part.shape == (len(labels), 2)
    assert max_diff(per_part.sum(0), expected) <= TOL
    # Single tokens (ids or strings) broadcast over the batch and positions.
    parts = cache.decompose_resid()
    assert isinstance(parts, Tensor)
    one = cache.logit_attrs(parts, 3)
    assert one.shape == (parts.shape[0], 2, 7)
    direct = logits[..., 3] - b_U[3]
    assert max_diff(one.sum(0), direct) <= TOL
    with pytest.raises(ValueError, match="same shape"):
        cache.logit_attrs(final, right, torch.tensor(4), pos_slice=-1)


def test_logit_attrs_accepts_strings() -> None:
    model = HookedTransformer(gpt2_like().cfg, tokenizer=tiny_tokenizer(50))
    randomize_small_params(model)
    model.process_weights_()
    logits, cache = model.run_with_cache("the cat sat on the")
    final = cache.accumulated_resid(pos_slice=-1)[-1:]
    attrs = cache.logit_attrs(final, "mat", "dog", pos_slice=-1)
    mat, dog = model.to_single_token("mat"), model.to_single_token("dog")
    expected = logits[0, -1, mat] - logits[0, -1, dog] - (model.b_U[mat] - model.b_U[dog])
    assert max_diff(attrs[0, 0], expected) <= TOL


# --- labels and shapes ----------------------------------------------------------------------------


def test_labels_match_the_classic_formats() -> None:
    model, _, cache = run("gpt2")
    _, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "pos_embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    _, labels = cache.decompose_resid(1, mlp_input=True, mode="attn", return_labels=True)
    assert labels == ["embed", "pos_embed", "0_attn_out", "1_attn_out"]
    _, labels = cache.accumulated_resid(incl_mid=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    _, labels = cache.accumulated_resid(1, mlp_input=True, return_labels=True)
    assert labels == ["0_pre", "1_pre", "1_mid"]
    _, labels = cache.stack_head_results(return_labels=True, incl_remainder=True)
    assert labels == [f"L{i}H{h}" for i in range(2) for h in range(4)] + ["remainder"]
    _, labels = cache.get_full_resid_decomposition(return_labels=True)
    heads = [f"L{i}H{h}" for i in range(2) for h in range(4)]
    neurons = [f"L{i}N{n}" for i in range(2) for n in range(128)]
    assert labels == heads + neurons + ["embed", "pos_embed", "bias"]
    _, labels = cache.get_full_resid_decomposition(1, expand_neurons=False, return_labels=True)
    assert labels == ["L0H0", "L0H1", "L0H2", "L0H3", "0_mlp_out", "embed", "pos_embed", "bias"]
    # Rotary models write no position embedding; shortformer positions skip the stream.
    for name in ("llama_gqa", "shortformer"):
        _, other = run(name)[1:]
        _, labels = other.decompose_resid(1, return_labels=True)
        assert labels == ["embed", "0_attn_out", "0_mlp_out"]


def test_shapes_with_pos_slice_and_empty_stacks() -> None:
    _, _, cache = run("gpt2")
    assert cache.accumulated_resid(pos_slice=-1).shape == (3, 2, 32)
    assert cache.decompose_resid(pos_slice=(2, 5)).shape == (6, 2, 3, 32)
    assert cache.stack_head_results(0).shape == (0, 2, 7, 32)
    assert cache.stack_head_results(0, pos_slice=-1).shape == (0, 2, 32)
    assert cache.stack_neuron_results(0).shape == (0, 2, 7, 32)
    assert cache.decompose_resid(0, incl_embeds=False).shape == (0, 2, 7, 32)
    assert cache.stack_activation("pattern", layer=None).shape == (2, 2, 4, 7, 7)
    with pytest.raises(ValueError, match="layer must be in 0..2"):
        cache.decompose_resid(3)
    with pytest.raises(ValueError, match="mode"):
        cache.decompose_resid(mode="heads")


# --- what cannot be decomposed --------------------------------------------------------------------


def test_architectures_without_a_decomposition_say_why() -> None:
    _, _, moe = run("moe")
    with pytest.raises(ValueError, match="mixture of experts"):
        moe.get_neuron_results(0)
    with pytest.raises(ValueError, match="expand_neurons=False"):
        moe.get_full_resid_decomposition()
    _, _, parallel = run("parallel")
    with pytest.raises(ValueError, match="no resid_mid"):
        parallel.accumulated_resid(incl_mid=True)
    _, _, attn_only = run("attn_only")
    with pytest.raises(ValueError, match="attention-only"):
        attn_only.decompose_resid(0, mlp_input=True)
    post_ln = native(post_layer_norm=True, pre_norm=False, final_norm=False, act_fn="relu")
    logits, cache = post_ln.run_with_cache(tokens())
    for method in (cache.decompose_resid, cache.get_full_resid_decomposition):
        with pytest.raises(ValueError, match="Post-LN"):
            method()
    with pytest.raises(ValueError, match="Post-LN"):
        cache.stack_head_results()
    # The stream itself is still there for the logit lens: the last row is the output.
    stack = cache.accumulated_resid(apply_ln=True)
    assert isinstance(stack, Tensor)
    assert max_diff(stack[-1] @ post_ln.W_U + post_ln.b_U, logits) <= TOL


# --- logit lens -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "gemma_post_norms", "parallel"])
def test_accumulated_resid_apply_ln_is_the_logit_lens(name: str) -> None:
    """Each row normalized with its own statistics: the last row's logits are the model's, and
    earlier rows are what ln_final makes of that stream."""
    model, logits, cache = run(name)
    stack = cache.accumulated_resid(apply_ln=True)
    assert isinstance(stack, Tensor) and stack.shape == (3, 2, 7, 32)
    assert max_diff(model.unembed(stack[-1]), logits) <= TOL
    assert max_diff(stack[0], model.ln_final(cache["resid_pre", 0])) <= TOL


def test_logit_lens_one_call() -> None:
    model = gpt2_like()
    toks = tokens()
    logits = model(toks)
    lens, labels = logit_lens(model, toks, return_labels=True)
    assert labels == ["0_pre", "1_pre", "final_post"]
    assert lens.shape == (3, 2, 50)
    assert max_diff(lens[-1], logits[:, -1]) <= TOL
    # Earlier rows: ln_final and the unembedding applied to that stream.
    _, cache = model.run_with_cache(toks)
    assert max_diff(lens[1], model.unembed(model.ln_final(cache["resid_pre", 1]))[:, -1]) <= TOL
    # Probabilities of chosen answers, shared or per batch row.
    probs = logit_lens(model, toks, answer_tokens=[3, 7], return_type="probs")
    assert probs.shape == (3, 2, 2)
    assert max_diff(probs[-1], logits[:, -1].softmax(-1)[:, [3, 7]]) <= 1e-6
    per_row = logit_lens(model, toks, answer_tokens=torch.tensor([[3], [7]]), pos_slice=None)
    assert per_row.shape == (3, 2, 7, 1)
    assert max_diff(per_row[-1, 0, :, 0], logits[0, :, 3]) <= TOL
    assert max_diff(per_row[-1, 1, :, 0], logits[1, :, 7]) <= TOL
    single = logit_lens(model, toks, answer_tokens=3, return_type="log_probs", incl_mid=True)
    assert single.shape == (5, 2)
    assert max_diff(single[-1], logits[:, -1].log_softmax(-1)[:, 3]) <= 1e-5
    with pytest.raises(ValueError, match="return_type"):
        logit_lens(model, toks, return_type="ranks")
    with pytest.raises(ValueError, match="rows"):
        logit_lens(model, toks, answer_tokens=torch.tensor([[1], [2], [3]]))


def test_logit_lens_of_a_batch_of_texts_reads_each_last_token() -> None:
    model = HookedTransformer(gpt2_like().cfg, tokenizer=tiny_tokenizer(50))
    randomize_small_params(model)
    texts = ["the cat sat on the", "a dog ran"]
    batch = logit_lens(model, texts, answer_tokens="mat")
    assert batch.shape == (3, 2)
    for row, text in enumerate(texts):
        alone = logit_lens(model, text, answer_tokens="mat")
        assert max_diff(batch[:, row], alone[:, 0]) <= TOL
    # The demo's helper gives the same rows.
    labels, rows = layer_logits(model, texts[0])
    assert labels == ["embeddings", "after L0", "after L1"]
    assert max_diff(rows[:, model.to_single_token("mat")], batch[:, 0]) <= TOL
