"""Quantized checkpoints: GPT-OSS's MXFP4 experts load (dequantized exactly as transformers
does), any other quantization_config is refused clearly, and tensors stored in parts (MXFP4
pairs, StableLM's per-head norms) that arrive incomplete are named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GptOssConfig, GptOssForCausalLM, StableLmConfig, StableLmForCausalLM
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

import anatomist
from anatomist.families.gpt_oss import dequantize_mxfp4
from tests.helpers import hf_logits, load, random_tokens, save_tiny, tiny_llama

# config.json of openai/gpt-oss-20b.
MXFP4_CONFIG = {
    "quant_method": "mxfp4",
    "modules_to_not_convert": [
        "model.layers.*.self_attn",
        "model.layers.*.mlp.router",
        "model.embed_tokens",
        "lm_head",
    ],
}
# E2M1 magnitudes by code 0..7 (OCP Microscaling Formats v1.0, table 5); bit 3 is the sign.
E2M1_MAGNITUDES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def quantize_mxfp4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A float expert weight [E, in, out] (transformers' layout) -> the checkpoint's MXFP4
    blocks [E, out, in/32, 16] and scales [E, out, in/32]: blocks of 32 consecutive inputs share
    the scale 2**(byte - 127), the smallest power of two that brings the block within +-6; each
    value is rounded to the nearest E2M1 number and two are packed per byte, low nibble first."""
    rows = weight.transpose(1, 2).float()  # [E, out, in]
    n_experts, n_out, n_in = rows.shape
    groups = rows.reshape(n_experts, n_out, n_in // 32, 32)
    exponent = torch.ceil(torch.log2(groups.abs().amax(-1) / 6.0)).clamp(-127, 127)
    scaled = groups / torch.exp2(exponent)[..., None]
    magnitude = (scaled.abs()[..., None] - E2M1_MAGNITUDES).abs().argmin(-1)
    codes = (magnitude | ((scaled < 0).long() << 3)).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks, (exponent + 127).to(torch.uint8)


def tiny_gpt_oss_mxfp4(folder: Path) -> GptOssForCausalLM:
    """A tiny GPT-OSS saved as the released checkpoints are: expert matrices as MXFP4 pairs,
    everything else float, and the quantization_config. Returns the float model it came from."""
    config = GptOssConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=96,
        vocab_size=101,
        max_position_embeddings=64,
        sliding_window=4,
        num_local_experts=4,
        num_experts_per_tok=2,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 1000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = GptOssForCausalLM(config)
    save_tiny(model, folder)
    tensors = load_file(folder / "model.safetensors")
    for name in list(tensors):
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            blocks, scales = quantize_mxfp4(tensors.pop(name))
            tensors[name + "_blocks"], tensors[name + "_scales"] = blocks, scales
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    _edit_config(folder, quantization_config=MXFP4_CONFIG)
    return model


def _edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _drop_tensor(folder: Path, name: str) -> None:
    tensors = load_file(folder / "model.safetensors")
    del tensors[name]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="module")
def mxfp4_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpt_oss_mxfp4")
    tiny_gpt_oss_mxfp4(folder)
    return folder


def test_dequantization_matches_transformers_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 40, 4, 16), dtype=torch.uint8, generator=gen)
    scales = torch.randint(0, 256, (3, 40, 4), dtype=torch.uint8, generator=gen)
    scales[0, 0] = torch.tensor([0, 1, 254, 255])  # 2**-127 (subnormal), 2**-126, 2**127, NaN
    ours = dequantize_mxfp4(blocks, scales)
    theirs = convert_moe_packed_tensors(blocks, scales)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert ours.shape == theirs.shape == (3, 128, 40)
    assert torch.equal(ours.view(torch.int16), theirs.view(torch.int16))  # NaNs and -0.0 too


def test_test_side_quantizer_round_trips_representable_weights() -> None:
    """The packing above follows the format: values already on the MXFP4 grid survive."""
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (2, 64, 8), generator=gen)
    grid = torch.tensor([0.0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])
    weight = grid[codes] * 2.0**-3  # [E, in=64, out=8]
    weight[:, 0, :] = 6.0 * 2.0**-3  # each block reaches +-6 at the block's scale
    assert torch.equal(dequantize_mxfp4(*quantize_mxfp4(weight)).float(), weight)


def test_loaded_experts_are_transformers_dequantization(mxfp4_folder: Path) -> None:
    model = load(mxfp4_folder)
    packed = load_file(mxfp4_folder / "model.safetensors")
    for layer in range(model.cfg.n_layers):
        p = f"model.layers.{layer}.mlp.experts."
        gate_up = convert_moe_packed_tensors(
            packed[p + "gate_up_proj_blocks"], packed[p + "gate_up_proj_scales"]
        )  # [E, d, 2m], bfloat16
        down = convert_moe_packed_tensors(
            packed[p + "down_proj_blocks"], packed[p + "down_proj_scales"]
        )  # [E, m, d]
        for e, expert in enumerate(model.blocks[layer].mlp.experts):
            assert torch.equal(expert.W_gate, gate_up[e, :, 0::2].float())
            assert torch.equal(expert.W_in, gate_up[e, :, 1::2].float())
            assert torch.equal(expert.W_out, down[e].float())


def test_mxfp4_logits_match_transformers(mxfp4_folder: Path) -> None:
    # transformers itself dequantizes the packed checkpoint on CPU (no Triton kernels).
    hf = GptOssForCausalLM.from_pretrained(mxfp4_folder, dtype=torch.float32).eval()
    experts = hf.model.layers[0].mlp.experts
    assert experts.gate_up_proj.dtype == torch.float32 and experts.gate_up_proj.dim() == 3
    tokens = random_tokens(hf.config.vocab_size)
    expected = hf_logits(hf, tokens)
    assert (load(mxfp4_folder)(tokens) - expected).abs().max() <= 1e-5
    processed = load(mxfp4_folder, processing=True)(tokens).log_softmax(-1)
    assert (processed - expected.log_softmax(-1)).abs().max() <= 1e-4


def test_mxfp4_logits_match_the_float_model_given_the_dequantized_weights(
    tmp_path: Path,
) -> None:
    float_model = tiny_gpt_oss_mxfp4(tmp_path)
    packed = load_file(tmp_path / "model.safetensors")
    with torch.no_grad():
        for layer, block in enumerate(float_model.model.layers):
            for proj in ("gate_up_proj", "down_proj"):
                p = f"model.layers.{layer}.mlp.experts.{proj}"
                weight = convert_moe_packed_tensors(packed[p + "_blocks"], packed[p + "_scales"])
                getattr(block.mlp.experts, proj).copy_(weight.float())
    tokens = random_tokens(float_model.config.vocab_size, seed=3)
    diff = (load(tmp_path)(tokens) - hf_logits(float_model.eval(), tokens)).abs().max()
    assert diff <= 1e-5


def test_mxfp4_loads_in_bfloat16_and_first_layers(mxfp4_folder: Path) -> None:
    model = load(mxfp4_folder, dtype="bfloat16", first_n_layers=1)
    packed = load_file(mxfp4_folder / "model.safetensors")
    p = "model.layers.0.mlp.experts.down_proj"
    down = convert_moe_packed_tensors(packed[p + "_blocks"], packed[p + "_scales"])
    assert model.blocks[0].mlp.experts[1].W_out.dtype == torch.bfloat16
    assert torch.equal(model.blocks[0].mlp.experts[1].W_out, down[1])


@pytest.mark.parametrize("kept", ["_blocks", "_scales"])
def test_mxfp4_pair_missing_a_half_is_named(mxfp4_folder: Path, tmp_path: Path, kept: str) -> None:
    for f in mxfp4_folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    missing = "_scales" if kept == "_blocks" else "_blocks"
    _drop_tensor(tmp_path, "model.layers.1.mlp.experts.gate_up_proj" + missing)
    with pytest.raises(anatomist.CheckpointError, match=r"lacks 1: .*gate_up_proj" + missing):
        load(tmp_path)


def test_mxfp4_pair_of_mismatched_shapes_is_refused(mxfp4_folder: Path, tmp_path: Path) -> None:
    for f in mxfp4_folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    tensors = load_file(tmp_path / "model.safetensors")
    name = "model.layers.0.mlp.experts.down_proj_scales"
    tensors[name] = tensors[name][:, :, :1].contiguous()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(anatomist.CheckpointError, match=r"down_proj: MXFP4 blocks .* need scales"):
        load(tmp_path)


@pytest.mark.parametrize(
    "quantization",
    [
        {"quant_method": "gptq", "bits": 4, "group_size": 128},
        {"quant_method": "awq", "bits": 4, "version": "gemm"},
        {"quant_method": "bitsandbytes", "load_in_4bit": True},
        {"quant_method": "fp8", "weight_block_size": [128, 128]},
        MXFP4_CONFIG,  # GPT-OSS's format, which the Llama family does not read
        {"bits": 4},  # no quant_method at all
    ],
)
def test_other_quantizations_are_refused(tmp_path: Path, quantization: dict[str, Any]) -> None:
    tiny_llama(tmp_path)
    _edit_config(tmp_path, quantization_config=quantization)
    method = quantization.get("quant_method")
    with pytest.raises(anatomist.CheckpointError, match=f"quant_method {method!r}.*llama family"):
        load(tmp_path)


def test_integer_tensors_are_not_read_as_floats(tmp_path: Path) -> None:
    """A quantized checkpoint without a quantization_config: packed integers are refused."""
    tiny_llama(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    tensors[name] = (tensors[name] * 100).to(torch.int8)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(anatomist.CheckpointError, match=r"up_proj.weight' is stored as torch.int8"):
        load(tmp_path)


def test_stablelm_per_head_norm_missing_a_head_is_named(tmp_path: Path) -> None:
    config = StableLmConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        qk_layernorm=True,
    )
    torch.manual_seed(0)
    save_tiny(StableLmForCausalLM(config), tmp_path)
    assert load(tmp_path).blocks[0].attn.k_norm.w.shape == (2, 8)
    _drop_tensor(tmp_path, "model.layers.0.self_attn.k_layernorm.norms.1.weight")
    with pytest.raises(anatomist.CheckpointError, match=r"k_layernorm\.norms\.1\.weight"):
        load(tmp_path)
