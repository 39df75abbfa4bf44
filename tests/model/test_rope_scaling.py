"""Rope scaling types against transformers' own rotary embeddings (cos and sin, attention factor
included), through the family config mapping, at lengths within and past the pretraining length."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import LlamaConfig, Phi3Config
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

from anatomist.families import llama, phi3
from anatomist.model.positions import Rotary, rotary_attention_factor

SIZES: dict[str, Any] = dict(hidden_size=64, num_attention_heads=4, max_position_embeddings=32)
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}
LONG = [1.0 + 0.5 * i for i in range(8)]  # one per frequency of a 16-wide head
SHORT = [1.0 + 0.05 * i for i in range(8)]
LONGROPE = {"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG}

CONFIGS: dict[str, Any] = {
    "yarn": LlamaConfig(**SIZES, rope_parameters=YARN),
    "yarn-betas-untruncated": LlamaConfig(
        **SIZES, rope_parameters={**YARN, "beta_fast": 8, "beta_slow": 2, "truncate": False}
    ),
    "yarn-mscale": LlamaConfig(
        **SIZES, rope_parameters={**YARN, "mscale": 1.0, "mscale_all_dim": 0.5}
    ),
    "yarn-mscale-without-all-dim": LlamaConfig(**SIZES, rope_parameters={**YARN, "mscale": 0.7}),
    "yarn-attention-factor": LlamaConfig(
        **SIZES, rope_parameters={**YARN, "attention_factor": 0.8}
    ),
    "yarn-factor-from-lengths": LlamaConfig(**SIZES, rope_parameters={**YARN, "factor": None}),
    "yarn-original-from-max-positions": LlamaConfig(
        **SIZES, rope_parameters={"rope_type": "yarn", "factor": 2.0}
    ),
    "dynamic": LlamaConfig(**SIZES, rope_parameters={"rope_type": "dynamic", "factor": 3.7}),
    "dynamic-legacy-keys": LlamaConfig(
        **SIZES, rope_theta=500000.0, rope_scaling={"type": "dynamic", "factor": 2.0}
    ),
    "longrope": Phi3Config(**SIZES, original_max_position_embeddings=8, rope_parameters=LONGROPE),
    "longrope-legacy-su": Phi3Config(
        **SIZES, original_max_position_embeddings=8, rope_scaling={**LONGROPE, "type": "su"}
    ),
    "longrope-attention-factor": Phi3Config(
        **SIZES,
        original_max_position_embeddings=8,
        rope_parameters={**LONGROPE, "attention_factor": 1.3},
    ),
    "longrope-partial-rotary": Phi3Config(
        **SIZES,
        original_max_position_embeddings=8,
        rope_parameters={
            **LONGROPE,
            "short_factor": SHORT[:4],
            "long_factor": LONG[:4],
            "partial_rotary_factor": 0.5,
        },
    ),
}


def ours_and_theirs(name: str) -> tuple[Any, Any]:
    hf_config = CONFIGS[name]
    if isinstance(hf_config, Phi3Config):
        return phi3.build_config(hf_config.to_dict()), Phi3RotaryEmbedding
    return llama.build_config(hf_config.to_dict()), LlamaRotaryEmbedding


@pytest.mark.parametrize("length", [5, 8, 9, 32, 33, 50])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cos_sin_match_transformers(name: str, length: int) -> None:
    cfg, hf_rotary = ours_and_theirs(name)
    positions = torch.arange(length)[None]  # [1, p]
    # A fresh HF module per length: its dynamic rope keeps state between calls (docs/differences.md).
    cos, sin = hf_rotary(CONFIGS[name])(torch.zeros(1, dtype=torch.float32), positions)
    ours_cos, ours_sin = Rotary(cfg).cos_sin(positions, torch.float32)  # [1, p, 1, rotary_dim]
    assert ours_cos.shape[-1] == cos.shape[-1]
    assert (ours_cos[:, :, 0] - cos).abs().max() <= 1e-6
    assert (ours_sin[:, :, 0] - sin).abs().max() <= 1e-6


def test_attention_factor_scales_cos_and_sin() -> None:
    cfg, _ = ours_and_theirs("yarn-mscale")
    factor = rotary_attention_factor(cfg)
    assert factor != 1.0
    positions = torch.zeros(1, 3, dtype=torch.long)
    cos, sin = Rotary(cfg).cos_sin(positions, torch.float32)
    assert torch.allclose(cos, torch.full_like(cos, factor)) and sin.abs().max() == 0


def test_longest_row_picks_the_longrope_factors() -> None:
    """As in HF, a short row padded next to a long one gets the long factors."""
    cfg, _ = ours_and_theirs("longrope")
    rotary = Rotary(cfg)
    short_alone, _ = rotary.cos_sin(torch.arange(5)[None], torch.float32)
    batch = torch.stack([torch.arange(12).clamp(max=4), torch.arange(12)])  # row 0: 5 real tokens
    batched, _ = rotary.cos_sin(batch, torch.float32)
    long_alone, _ = rotary.cos_sin(torch.arange(12)[None], torch.float32)
    assert torch.equal(batched[0, :5], long_alone[0, :5])
    assert not torch.allclose(batched[0, :5], short_alone[0])


def test_longrope_factor_count_is_checked() -> None:
    hf = CONFIGS["longrope"].to_dict()
    hf["rope_parameters"] = {**hf["rope_parameters"], "long_factor": LONG[:3]}
    rotary = Rotary(phi3.build_config(hf))
    with pytest.raises(ValueError, match="long_factor has 3 entries"):
        rotary.cos_sin(torch.arange(20)[None], torch.float32)


def test_unknown_rope_type_names_the_supported_ones() -> None:
    hf = LlamaConfig(**SIZES).to_dict()
    hf["rope_parameters"] = {"rope_type": "proportional", "rope_theta": 10000.0}
    with pytest.raises(NotImplementedError, match="supported: default, linear, dynamic, yarn"):
        llama.build_config(hf)
