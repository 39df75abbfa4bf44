"""refactor_factored_attn_matrices: new factors of W_Q W_K^T and W_V W_O, the same model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import anatomist
from anatomist.loading import processing
from tests.helpers import (
    gpt2_like,
    hf_logits,
    llama_like,
    load,
    random_tokens,
    randomize_small_params,
    tiny_gpt2,
    tiny_llama,
)


def _native(**overrides: Any) -> anatomist.HookedTransformer:
    settings: dict[str, Any] = dict(
        n_layers=2, d_model=32, n_ctx=32, d_head=8, n_heads=4, d_vocab=50, seed=0
    )
    settings.update(overrides)
    model = anatomist.HookedTransformer(anatomist.TransformerConfig(**settings))
    randomize_small_params(model)
    return model


def _processed(build: Callable[[], anatomist.HookedTransformer]) -> anatomist.HookedTransformer:
    model = build()
    model.process_weights_()
    return model


MODELS: dict[str, Callable[[], anatomist.HookedTransformer]] = {
    "gpt2": lambda: _processed(gpt2_like),
    "gpt2-unfolded": gpt2_like,
    "llama-rotary-gqa": lambda: _processed(llama_like),
    "gqa": lambda: _native(n_key_value_heads=2),
    "multi-query-partial-rotary-adjacent": lambda: _native(
        n_key_value_heads=1,
        positional_embedding_type="rotary",
        rotary_dim=4,
        rotary_adjacent_pairs=True,
    ),
    "nope-layer": lambda: _native(positional_embedding_type="rotary", nope_layers=[1]),
    "sinks": lambda: _native(attn_sinks=True, n_key_value_heads=2),
    "alibi": lambda: _native(positional_embedding_type="alibi"),
}


def _log_probs(model: anatomist.HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).log_softmax(-1)


@pytest.mark.parametrize("name", list(MODELS))
def test_refactor_keeps_log_probs(name: str) -> None:
    model = MODELS[name]()
    tokens = random_tokens(model.cfg.d_vocab)
    expected = _log_probs(model, tokens)
    W_Q, W_O = model.blocks[0].attn.W_Q.clone(), model.blocks[0].attn.W_O.clone()
    assert model.W_O.shape[0] == 2  # stacks the parameters' storage; the refactor writes there
    model.refactor_factored_attn_matrices()
    assert (_log_probs(model, tokens) - expected).abs().max() <= 1e-4
    assert torch.equal(model.W_O[1], model.blocks[1].attn.W_O)
    assert not torch.allclose(model.blocks[0].attn.W_Q, W_Q, atol=1e-3)  # it did refactor
    assert not torch.allclose(model.blocks[0].attn.W_O, W_O, atol=1e-3)
    assert model.cfg.processing["refactor_factored_attn_matrices"] is True


def _augmented(W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cat([W, b[:, None]], dim=1).double()  # [heads, d_model + 1, d_head]


def _eye_like(M: torch.Tensor) -> torch.Tensor:
    return torch.eye(M.shape[-1], dtype=M.dtype).expand_as(M)


def test_mha_factors_have_the_classic_form() -> None:
    model = _processed(gpt2_like)
    attn = model.blocks[1].attn
    Q, K = _augmented(attn.W_Q, attn.b_Q), _augmented(attn.W_K, attn.b_K)
    QK = Q @ K.mT  # the scores' full bilinear form, biases included
    OV = attn.W_V.double() @ attn.W_O.double()
    out_bias = attn.b_O.double() + torch.einsum("he,hed->d", attn.b_V.double(), attn.W_O.double())
    model.refactor_factored_attn_matrices()

    Q, K = _augmented(attn.W_Q, attn.b_Q), _augmented(attn.W_K, attn.b_K)
    W_V, W_O = attn.W_V.double(), attn.W_O.double()
    assert (Q @ K.mT - QK).abs().max() <= 1e-5
    assert (W_V @ W_O - OV).abs().max() <= 1e-5
    assert (attn.b_O.double() - out_bias).abs().max() <= 1e-5 and attn.b_V.abs().max() == 0
    # W_Q = U S^1/2, W_K = V S^1/2: orthogonal columns, column n of each with the same norm,
    # norms descending; W_V = U S with orthogonal columns, W_O = V^T with orthonormal rows.
    gram_q, gram_k = Q.mT @ Q, K.mT @ K
    S = torch.linalg.svdvals(QK)[:, : Q.shape[-1]]
    assert (gram_q - torch.diag_embed(S)).abs().max() <= 1e-5
    assert (gram_k - torch.diag_embed(S)).abs().max() <= 1e-5
    assert (W_O @ W_O.mT - _eye_like(W_O @ W_O.mT)).abs().max() <= 1e-5
    S_ov = torch.linalg.svdvals(OV)[:, : W_V.shape[-1]]
    assert (W_V.mT @ W_V - torch.diag_embed(S_ov**2)).abs().max() <= 1e-5
    # Centering survives: the new factors are the old ones times a change of basis.
    assert attn.W_O.mean(-1).abs().max() <= 1e-6 and attn.W_Q.mean(-2).abs().max() <= 1e-6


def test_gqa_refactors_each_group_jointly() -> None:
    model = _native(n_key_value_heads=2)  # 4 query heads, 2 per key/value head
    model.refactor_factored_attn_matrices()
    attn = model.blocks[0].attn
    W_K, b_K, W_V, _ = attn.kv_weights
    Q = _augmented(attn.W_Q, attn.b_Q).reshape(2, 2 * 33, 8)  # each group's queries stacked
    K = torch.cat([W_K, b_K[:, None]], dim=1).double()
    assert (Q.mT @ Q - K.mT @ K).abs().max() <= 1e-5  # the same diagonal S on both sides
    assert (
        K.mT @ K - torch.diag_embed(torch.diagonal(K.mT @ K, dim1=-2, dim2=-1))
    ).abs().max() <= 1e-5
    # The group's output maps side by side, [W_O[h1], W_O[h2]], have orthonormal rows.
    W_O = attn.W_O.double().reshape(2, 2, 8, 32).transpose(1, 2).reshape(2, 8, 64)
    assert (W_O @ W_O.mT - _eye_like(W_O @ W_O.mT)).abs().max() <= 1e-5
    gram_v = W_V.double().mT @ W_V.double()
    assert (gram_v - torch.diag_embed(torch.diagonal(gram_v, dim1=-2, dim2=-1))).abs().max() <= 1e-5


def test_rotary_planes_are_balanced_and_rest_is_svd() -> None:
    model = _native(n_key_value_heads=2, positional_embedding_type="rotary", rotary_dim=4)
    model.refactor_factored_attn_matrices()
    attn = model.blocks[0].attn
    W_K, b_K, _, _ = attn.kv_weights
    Q = _augmented(attn.W_Q, attn.b_Q).reshape(2, 2 * 33, 8)
    K = torch.cat([W_K, b_K[:, None]], dim=1).double()
    for first, second in ((0, 2), (1, 3)):  # halves layout: plane (i, i + rotary_dim / 2)
        q_norm = Q[..., [first, second]].square().sum((-1, -2))
        k_norm = K[..., [first, second]].square().sum((-1, -2))
        assert torch.allclose(q_norm, k_norm, rtol=1e-6)
    rest_q, rest_k = Q[..., 4:], K[..., 4:]  # not rotated: the classic even SVD factors
    assert (rest_q.mT @ rest_q - rest_k.mT @ rest_k).abs().max() <= 1e-5
    gram = rest_k.mT @ rest_k
    assert (gram - torch.diag_embed(torch.diagonal(gram, dim1=-2, dim2=-1))).abs().max() <= 1e-5


def test_a_refactor_blind_to_rotary_would_change_the_model() -> None:
    """The check above is strict enough to catch the wrong transformation: an SVD across the
    rotated features (what the classic step would do if it ran) changes the log-probs."""
    model = _processed(llama_like)
    tokens = random_tokens(model.cfg.d_vocab)
    expected = _log_probs(model, tokens)
    attn = model.blocks[0].attn
    rotary, attn.rotary = attn.rotary, None
    with torch.no_grad():
        processing._refactor_qk(attn)
    attn.rotary = rotary
    assert (_log_probs(model, tokens) - expected).abs().max() > 1e-3


def test_sinks_keep_the_value_bias() -> None:
    model = _native(attn_sinks=True)
    b_V = model.blocks[0].attn.b_V.clone()
    model.refactor_factored_attn_matrices()
    assert model.blocks[0].attn.b_V.abs().max() > 1e-3 and not torch.allclose(
        model.blocks[0].attn.b_V, b_V
    )
    assert model.cfg.processing.get("fold_value_biases") is not True


def test_qk_norm_refactors_only_ov() -> None:
    model = _native(qk_norm=True, positional_embedding_type="rotary")
    tokens = random_tokens(model.cfg.d_vocab)
    expected = _log_probs(model, tokens)
    W_Q = model.blocks[0].attn.W_Q.clone()
    with pytest.warns(UserWarning, match="only OV"):
        model.refactor_factored_attn_matrices()
    assert torch.equal(model.blocks[0].attn.W_Q, W_Q)
    assert (_log_probs(model, tokens) - expected).abs().max() <= 1e-4


HF_BUILDERS: dict[str, Any] = {
    "gpt2": (tiny_gpt2, {}),
    "llama-gqa-biases": (tiny_llama, {"num_key_value_heads": 2, "attention_bias": True}),
}


@pytest.mark.parametrize("name", list(HF_BUILDERS))
def test_from_pretrained_refactored_matches_transformers(name: str, tmp_path: Path) -> None:
    builder, overrides = HF_BUILDERS[name]
    hf = builder(tmp_path, **overrides)
    model = load(tmp_path, processing=True, refactor_factored_attn_matrices=True)
    assert model.cfg.processing["refactor_factored_attn_matrices"] is True
    tokens = random_tokens(model.cfg.d_vocab)
    expected = hf_logits(hf, tokens).log_softmax(-1)
    assert (_log_probs(model, tokens) - expected).abs().max() <= 1e-4
