"""The classic HookedTransformer checkpoint format loads (how the field's toy models ship)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import anatomist
from tests.helpers import randomize_small_params

# Field names and values as the classic library wrote them into config.json.
CLASSIC_CONFIGS: dict[str, dict[str, Any]] = {
    "attn-only-2l": {
        "n_layers": 2, "d_model": 32, "d_head": 8, "n_heads": 4, "d_mlp": -1, "d_vocab": 50,
        "n_ctx": 16, "act_fn": None, "attn_only": True, "normalization_type": "LNPre",
        "positional_embedding_type": "standard", "device": "cuda", "n_devices": 1,
        "tokenizer_name": "NeelNanda/gpt-neox-tokenizer-digits", "model_name": "attn-only-2l",
        "dtype": "torch.float32", "seed": 0,
    },
    "solu-1l": {
        "n_layers": 1, "d_model": 32, "d_head": 8, "n_heads": 4, "d_mlp": 128, "d_vocab": 50,
        "n_ctx": 16, "act_fn": "solu_ln", "normalization_type": "LN",
        "positional_embedding_type": "standard", "dtype": "torch.float32",
    },
    "gelu-2l": {
        "n_layers": 2, "d_model": 32, "d_head": 8, "n_heads": 4, "d_mlp": 128, "d_vocab": 50,
        "n_ctx": 16, "act_fn": "gelu", "normalization_type": "LN", "some_future_field": 3,
    },
}  # fmt: skip


def _write(folder: Path, classic: dict[str, Any]) -> anatomist.HookedTransformer:
    from anatomist.families.lens import build_config

    values = dict(classic)

    # (tokenizer_name left out: HookedTransformer(cfg) would load it, as the classic did)
    reference = anatomist.HookedTransformer(build_config({**values, "tokenizer_name": None}))
    randomize_small_params(reference)
    state = dict(reference.state_dict())
    state["blocks.0.attn.IGNORE"] = torch.tensor(-1e5)  # buffers the classic model saved
    state["blocks.0.attn.mask"] = torch.ones(16, 16).tril().bool()
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(values))
    torch.save(state, folder / "model_final.pth")
    return reference


@pytest.mark.parametrize("name", list(CLASSIC_CONFIGS))
def test_classic_checkpoint_loads_and_computes_the_same(tmp_path: Path, name: str) -> None:
    reference = _write(tmp_path / name, CLASSIC_CONFIGS[name])
    tokens = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(0))
    expected = reference(tokens)
    loaded = anatomist.HookedTransformer.from_pretrained_no_processing(
        tmp_path / name, progress=False
    )
    assert torch.equal(loaded(tokens), expected)
    processed = anatomist.HookedTransformer.from_pretrained(tmp_path / name, progress=False)
    assert (processed(tokens).log_softmax(-1) - expected.log_softmax(-1)).abs().max() <= 1e-4


def test_solu_hooks(tmp_path: Path) -> None:
    _write(tmp_path / "solu", CLASSIC_CONFIGS["solu-1l"])
    model = anatomist.HookedTransformer.from_pretrained(tmp_path / "solu", progress=False)
    _, cache = model.run_with_cache(torch.arange(8)[None])
    mid = cache["blocks.0.mlp.hook_mid"]
    pre = cache["blocks.0.mlp.hook_pre"]
    assert torch.allclose(mid, pre * pre.softmax(-1))
    # the call below takes the fused norm, the cached run the explicit one (its hooks are cached)
    torch.testing.assert_close(
        cache["blocks.0.mlp.hook_post"], model.blocks[0].mlp.ln(mid), rtol=1e-5, atol=1e-5
    )


def test_unsupported_classic_option_is_named(tmp_path: Path) -> None:
    values = dict(CLASSIC_CONFIGS["gelu-2l"], use_local_attn=True)
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(values))
    torch.save({}, folder / "model.pth")
    with pytest.raises(NotImplementedError, match="use_local_attn"):
        anatomist.HookedTransformer.from_pretrained(folder, progress=False)
