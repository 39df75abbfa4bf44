"""The field's toy models as published: their training script's config.json (``normalization``,
``shortformer_pos``, ``final_rms``, ...), shortformer positions, a final RMSNorm after LayerNorm
blocks, and the old Pile SoLU weight layout (``NeelNanda/SoLU_{n}L_v*_old``).

Each fake repo holds a config.json in the repo's own key style and a state dict saved from a
native random-init model (rewritten into the old layout for the ``_old`` case); the loaded model
must compute what that native model computes. The shortformer forward is also checked against a
reference written here from the definition.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import anatomist
from anatomist.families.registry import family_for_config
from anatomist.loading.errors import CheckpointError
from tests.helpers import randomize_small_params

VOCAB, CTX = 40, 12


def _native(
    n_layers: int = 2,
    attn_only: bool = False,
    act_fn: str = "gelu",
    shortformer: bool = False,
    final_rms: bool = False,
    d_model: int = 16,
    n_ctx: int = CTX,
    seed: int = 0,
) -> anatomist.HookedTransformer:
    cfg = anatomist.TransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        d_head=4,
        n_heads=4,
        d_mlp=None if attn_only else 24,
        d_vocab=VOCAB,
        n_ctx=n_ctx,
        act_fn=act_fn,
        attn_only=attn_only,
        normalization_type="LN",
        positional_embedding_type="shortformer" if shortformer else "standard",
        final_rms=final_rms,
        seed=seed,
    )
    model = anatomist.HookedTransformer(cfg)
    randomize_small_params(model, seed=seed + 1)
    return model.eval()


def _training_config(model: anatomist.HookedTransformer, **extra: Any) -> dict[str, Any]:
    """What the toy models' training script saved as config.json: its own key names, and
    training settings that do not describe the model."""
    cfg = model.cfg
    return {
        "n_layers": cfg.n_layers, "d_model": cfg.d_model, "d_mlp": cfg.d_mlp or 4 * cfg.d_model,
        "d_head": cfg.d_head, "n_heads": cfg.n_heads, "n_ctx": cfg.n_ctx, "d_vocab": cfg.d_vocab,
        "act_fn": cfg.act_fn if not cfg.attn_only else "solu_ln", "attn_only": cfg.attn_only,
        "normalization": "LN", "shortformer_pos": cfg.positional_embedding_type == "shortformer",
        "tokenizer_name": "NeelNanda/gpt-neox-tokenizer-digits", "lr_hidden": 2e-3,
        "batch_size_per_device": 32, "ln_eps": 1e-5, "n_devices": 8, "seed": 12345,
        "betas": [0.9, 0.99], "dataset_name": "c4_code", "version": 22, "neuron_scale": 1.0,
        "use_bfloat16_matmul": True, **extra,
    }  # fmt: skip


def _write(folder: Path, config: dict[str, Any], state: dict[str, Tensor]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(state, folder / f"{folder.name}_final.pth")
    return folder


def _tokens(batch: int = 2, length: int = 10) -> Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(0))


def _load(folder: Path, processed: bool = False) -> anatomist.HookedTransformer:
    load = anatomist.HookedTransformer.from_pretrained
    if not processed:
        load = anatomist.HookedTransformer.from_pretrained_no_processing
    return load(folder, progress=False)


def _assert_log_probs_close(a: Tensor, b: Tensor) -> None:
    assert (a.log_softmax(-1) - b.log_softmax(-1)).abs().max() <= 1e-4


# --- a reference forward, written from the definition ------------------------------------------
def _layer_norm(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * w + b


def _reference_shortformer(model: anatomist.HookedTransformer, tokens: Tensor) -> Tensor:
    """Logits of a Pre-LN GELU (or attention-only) shortformer transformer: position embeddings
    reach only the queries and keys, added to each layer's normalized input."""
    p = {name: t.detach() for name, t in model.named_parameters()}
    cfg = model.cfg
    length = tokens.shape[1]
    x = p["embed.W_E"][tokens]  # [b, p, d]: no positions in the residual stream
    pos = p["pos_embed.W_pos"][:length]  # [p, d]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    for i in range(cfg.n_layers):
        a = f"blocks.{i}.attn."
        normed = _layer_norm(x, p[f"blocks.{i}.ln1.w"], p[f"blocks.{i}.ln1.b"])
        q = torch.einsum("bpd,hde->bphe", normed + pos, p[a + "W_Q"]) + p[a + "b_Q"]
        k = torch.einsum("bpd,hde->bphe", normed + pos, p[a + "W_K"]) + p[a + "b_K"]
        v = torch.einsum("bpd,hde->bphe", normed, p[a + "W_V"]) + p[a + "b_V"]
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(cfg.d_head)
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        x = x + torch.einsum("bqhe,hed->bqd", z, p[a + "W_O"]) + p[a + "b_O"]
        if not cfg.attn_only:
            m = f"blocks.{i}.mlp."
            normed = _layer_norm(x, p[f"blocks.{i}.ln2.w"], p[f"blocks.{i}.ln2.b"])
            hidden = F.gelu(normed @ p[m + "W_in"] + p[m + "b_in"])
            x = x + hidden @ p[m + "W_out"] + p[m + "b_out"]
    final = _layer_norm(x, p["ln_final.w"], p["ln_final.b"])
    return final @ p["unembed.W_U"] + p["unembed.b_U"]


# --- shortformer positions ---------------------------------------------------------------------
@pytest.mark.parametrize("attn_only", [True, False], ids=["attn-only", "gelu"])
def test_shortformer_matches_reference(attn_only: bool) -> None:
    model = _native(attn_only=attn_only, shortformer=True)
    tokens = _tokens()
    expected = _reference_shortformer(model, tokens)
    assert (model(tokens) - expected).abs().max() <= 1e-5
    with torch.no_grad():  # the positions matter: without them the logits differ
        model.pos_embed.W_pos.zero_()
    assert (model(tokens) - expected).abs().max() > 1e-3


def test_shortformer_hooks() -> None:
    model = _native(shortformer=True)
    tokens = _tokens()
    _, cache = model.run_with_cache(tokens)
    pos = cache["hook_pos_embed"]
    assert pos.shape == (2, 10, 16)
    assert torch.equal(pos[0], model.W_pos[:10])
    # Not in the residual stream ...
    assert torch.equal(cache["blocks.0.hook_resid_pre"], cache["hook_embed"])
    # ... but in the queries and keys, after ln1's weight and bias; not in the values.
    attn = model.blocks[1].attn
    normalized = cache["blocks.1.ln1.hook_normalized"]
    q = torch.einsum("bpd,hde->bphe", normalized + pos, attn.W_Q) + attn.b_Q
    v = torch.einsum("bpd,hde->bphe", normalized, attn.W_V) + attn.b_V
    assert torch.allclose(cache["blocks.1.attn.hook_q"], q, atol=1e-6)
    assert torch.allclose(cache["blocks.1.attn.hook_v"], v, atol=1e-6)


def test_shortformer_per_head_inputs() -> None:
    model = _native(shortformer=True)
    tokens = _tokens()
    expected = model(tokens)
    model.set_use_split_qkv_input(True)
    assert torch.allclose(model(tokens), expected, atol=1e-5)
    model.set_use_split_qkv_input(False)
    model.set_use_attn_in(True)
    assert torch.allclose(model(tokens), expected, atol=1e-5)


def test_shortformer_start_at_layer() -> None:
    model = _native(n_layers=3, shortformer=True)
    tokens = _tokens()
    expected, cache = model.run_with_cache(tokens)
    resid = cache["blocks.1.hook_resid_pre"]
    # Positions computed from the residual stream's length ...
    assert torch.allclose(model(resid, start_at_layer=1), expected, atol=1e-5)
    # ... or given, as in the classic forward.
    given = cache["hook_pos_embed"]
    out = model(resid, start_at_layer=1, shortformer_pos_embed=given)
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(model(resid, start_at_layer=1, shortformer_pos_embed=given * 0), out)
    with pytest.raises(ValueError, match="d_model"):
        model(resid, start_at_layer=1, shortformer_pos_embed=given[:, :3])
    with pytest.raises(ValueError, match="start_at_layer"):
        model(tokens, shortformer_pos_embed=given)
    with pytest.raises(ValueError, match="standard positions"):
        _native()(resid, start_at_layer=1, shortformer_pos_embed=given)


def test_shortformer_padded_batch_equals_single_rows() -> None:
    model = _native(shortformer=True)
    short, long = _tokens(1, 6), _tokens(1, 9)
    padded = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(padded)
    mask[0, :3] = 0
    logits = model(padded, attention_mask=mask)
    assert torch.allclose(logits[0, 3:], model(short)[0], atol=1e-5)
    assert torch.allclose(logits[1], model(long)[0], atol=1e-5)


# --- the repos' own config.json ------------------------------------------------------------------
LAYOUTS = {
    "attn-only": dict(attn_only=True),
    "gelu": dict(act_fn="gelu"),
    "solu": dict(act_fn="solu_ln"),
    "shortformer": dict(attn_only=True, shortformer=True),
    "final-rms": dict(act_fn="solu_ln", final_rms=True),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_training_config_repo_loads_and_computes_the_same(tmp_path: Path, layout: str) -> None:
    native = _native(**LAYOUTS[layout])
    extra = {"final_rms": True} if native.cfg.final_rms else {}
    config = _training_config(native, **extra)
    assert family_for_config(config).name == "lens"
    folder = _write(tmp_path / "toy", config, dict(native.state_dict()))
    tokens = _tokens()
    expected = native(tokens)

    loaded = _load(folder)
    assert torch.equal(loaded(tokens), expected)
    cfg = loaded.cfg
    assert cfg.normalization_type == "LN" and cfg.final_rms == native.cfg.final_rms
    assert cfg.positional_embedding_type == native.cfg.positional_embedding_type
    assert cfg.original_architecture == "neel"
    assert cfg.tokenizer_name == "NeelNanda/gpt-neox-tokenizer-digits"

    processed = _load(folder, processed=True)
    _assert_log_probs_close(processed(tokens), expected)
    steps = processed.cfg.processing
    assert steps["fold_ln"] is (layout != "shortformer")
    assert steps["center_writing_weights"] is (layout != "final-rms")


def test_final_rms_is_an_rms_norm() -> None:
    model = _native(act_fn="solu_ln", final_rms=True)
    logits, cache = model.run_with_cache(_tokens())
    x = cache["blocks.1.hook_resid_post"]
    final = x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * model.ln_final.w
    assert torch.allclose(logits, final @ model.W_U + model.b_U, atol=1e-5)
    assert type(model.ln_final).__name__ == "RMSNorm"
    assert type(model.blocks[0].ln1).__name__ == "LayerNorm"


def test_shortformer_cannot_fold_layer_norm() -> None:
    model = _native(shortformer=True)
    with pytest.raises(ValueError, match="shortformer"):
        model.fold_layer_norm()


def test_training_config_lacking_a_key_is_named(tmp_path: Path) -> None:
    config = _training_config(_native())
    del config["n_heads"]
    folder = _write(tmp_path / "toy", config, {})
    with pytest.raises(ValueError, match="n_heads"):
        _load(folder)


def test_unknown_training_architecture_is_refused(tmp_path: Path) -> None:
    folder = _write(tmp_path / "toy", _training_config(_native(), architecture="mingpt"), {})
    with pytest.raises(NotImplementedError, match="mingpt"):
        _load(folder)


# --- the old Pile SoLU layout ------------------------------------------------------------------
def _old_solu_state(model: anatomist.HookedTransformer) -> dict[str, Tensor]:
    """The native weights as the old SoLU training code stored them: `norm` for `ln`, `norm.`
    for `ln_final.`, and (a bug of that code) matrices as [out, in] in shallow models."""
    n = model.cfg.n_layers
    state = {}
    for name, tensor in model.state_dict().items():
        old = name.replace("ln_final.", "ln.").replace("ln", "norm")
        leaf = name.rsplit(".", 1)[-1]
        if (leaf == "W_pos" and n <= 8) or (leaf.startswith("W_") and leaf != "W_pos" and n <= 6):
            tensor = tensor.T if tensor.dim() == 2 else tensor.transpose(-2, -1)
        state[old] = tensor.contiguous()
    return state


OLD_DEPTHS = {
    "2L-everything-transposed": dict(n_layers=2),
    "8L-only-W_pos-transposed": dict(n_layers=8, n_ctx=16),  # W_pos square: only the rule tells
    "10L-nothing-transposed": dict(n_layers=10),
}


@pytest.mark.parametrize("depth", list(OLD_DEPTHS))
def test_old_solu_repo_loads_and_computes_the_same(tmp_path: Path, depth: str) -> None:
    native = _native(act_fn="solu_ln", final_rms=True, **OLD_DEPTHS[depth])
    n = native.cfg.n_layers
    state = _old_solu_state(native)
    assert "norm.w" in state and "blocks.0.mlp.norm.b" in state
    folder = _write(tmp_path / f"SoLU_{n}L_v9_old", _training_config(native, final_rms=True), state)
    tokens = _tokens()
    expected = native(tokens)

    loaded = _load(folder)
    assert loaded.cfg.original_architecture == "neel-solu-old"
    assert torch.equal(loaded(tokens), expected)
    _assert_log_probs_close(_load(folder, processed=True)(tokens), expected)


def test_old_solu_recognised_by_architecture_key(tmp_path: Path) -> None:
    native = _native(act_fn="solu_ln", final_rms=True)
    config = _training_config(native, final_rms=True, architecture="neel-solu-old")
    folder = _write(tmp_path / "solu-2l-pile", config, _old_solu_state(native))
    tokens = _tokens()
    assert torch.equal(_load(folder)(tokens), native(tokens))


def test_old_layout_only_for_old_models(tmp_path: Path) -> None:
    # The same old-layout weights in a repo that is not an old SoLU model do not fit.
    native = _native(act_fn="solu_ln", final_rms=True)
    folder = _write(tmp_path / "SoLU_2L512W_C4_Code", _training_config(native, final_rms=True),
                    _old_solu_state(native))  # fmt: skip
    with pytest.raises(CheckpointError):
        _load(folder)


def test_old_solu_refuses_first_n_layers(tmp_path: Path) -> None:
    native = _native(act_fn="solu_ln", final_rms=True)
    state = _old_solu_state(native)
    folder = _write(tmp_path / "SoLU_2L_v10_old", _training_config(native, final_rms=True), state)
    with pytest.raises(NotImplementedError, match="first_n_layers"):
        anatomist.HookedTransformer.from_pretrained(folder, first_n_layers=1, progress=False)


def test_classic_dump_of_a_converted_old_model_is_not_converted_again(tmp_path: Path) -> None:
    # A HookedTransformerConfig saved by the classic library after it converted the weights.
    native = _native(act_fn="solu_ln", final_rms=True)
    dump = {
        key: value
        for key, value in native.cfg.to_dict().items()
        if key not in ("dtype", "processing")
    }
    dump.update(original_architecture="neel-solu-old", model_name="SoLU_2L_v10_old")
    folder = _write(tmp_path / "SoLU_2L_v10_old", dump, dict(native.state_dict()))
    tokens = _tokens()
    assert torch.equal(_load(folder)(tokens), native(tokens))
