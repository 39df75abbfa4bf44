"""Tests for anatomist.loading.safetensors: finding weight files and reading them tensor by tensor."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from anatomist.loading.errors import CheckpointError
from anatomist.loading.safetensors import (
    checkpoint_files,
    iter_checkpoint_tensors,
    validate_safetensors_header,
)


class _NotATensor:
    """An arbitrary class: pickling it into a .bin file must make the file unloadable."""

    def __init__(self) -> None:
        self.payload = "anything"


def _tiny_model() -> Any:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


@pytest.fixture(scope="module")
def tiny_model() -> Any:
    return _tiny_model()


@pytest.fixture(scope="module")
def tiny_dir(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    tiny_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sharded_dir(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sharded")
    tiny_model.save_pretrained(folder, max_shard_size="1KB")
    return folder


def _copy_config(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_bytes((src / "config.json").read_bytes())


def _as_dict(folder: Path, **kwargs: object) -> dict[str, torch.Tensor]:
    result: dict[str, torch.Tensor] = {}
    for name, tensor in iter_checkpoint_tensors(folder, **kwargs):  # type: ignore[arg-type]
        assert name not in result, f"{name} yielded twice"
        result[name] = tensor
    return result


# --- checkpoint_files ------------------------------------------------------------------------


def test_single_safetensors_file(tiny_dir: Path) -> None:
    assert checkpoint_files(tiny_dir) == [tiny_dir / "model.safetensors"]


def test_sharded_files_come_from_the_index(sharded_dir: Path) -> None:
    files = checkpoint_files(sharded_dir)
    index = json.loads((sharded_dir / "model.safetensors.index.json").read_text())
    assert len(files) > 1
    assert {f.name for f in files} == set(index["weight_map"].values())


def test_no_weights_names_folder_and_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError) as info:
        checkpoint_files(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    for looked_for in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        assert looked_for in message


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint_files(tmp_path / "absent")


def test_safetensors_preferred_over_bin(tmp_path: Path) -> None:
    save_file({"w": torch.ones(3)}, str(tmp_path / "model.safetensors"))
    torch.save({"w": torch.zeros(3)}, tmp_path / "pytorch_model.bin")
    assert checkpoint_files(tmp_path) == [tmp_path / "model.safetensors"]
    assert torch.equal(_as_dict(tmp_path)["w"], torch.ones(3))


def test_index_naming_missing_shard(sharded_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    _copy_config(sharded_dir, folder)
    index_text = (sharded_dir / "model.safetensors.index.json").read_text()
    (folder / "model.safetensors.index.json").write_text(index_text)
    shards = sorted(set(json.loads(index_text)["weight_map"].values()))
    for shard in shards[1:]:
        (folder / shard).write_bytes((sharded_dir / shard).read_bytes())
    with pytest.raises(CheckpointError) as info:
        checkpoint_files(folder)
    assert shards[0] in str(info.value)


def test_damaged_index(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="damaged"):
        checkpoint_files(tmp_path)


def test_index_shard_outside_folder_refused(tmp_path: Path) -> None:
    index = {"weight_map": {"w": "../elsewhere.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside"):
        checkpoint_files(tmp_path)


def test_sharded_bin_index(tmp_path: Path) -> None:
    torch.save({"a": torch.ones(2)}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": torch.zeros(2)}, tmp_path / "pytorch_model-00002-of-00002.bin")
    index = {
        "metadata": {},
        "weight_map": {
            "a": "pytorch_model-00001-of-00002.bin",
            "b": "pytorch_model-00002-of-00002.bin",
        },
    }
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert len(checkpoint_files(tmp_path)) == 2
    tensors = _as_dict(tmp_path)
    assert set(tensors) == {"a", "b"}


# --- reading safetensors ---------------------------------------------------------------------


def test_tensors_match_load_file(tiny_dir: Path) -> None:
    expected = load_file(str(tiny_dir / "model.safetensors"))
    got = _as_dict(tiny_dir)
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype
        assert torch.equal(got[name], tensor), name


def test_iterates_lazily(tiny_dir: Path) -> None:
    iterator = iter_checkpoint_tensors(tiny_dir)
    name, tensor = next(iterator)
    assert isinstance(name, str) and isinstance(tensor, torch.Tensor)
    iterator.close()  # type: ignore[attr-defined]


def test_dtype_cast(tiny_dir: Path, tmp_path: Path) -> None:
    got = _as_dict(tiny_dir, dtype=torch.float16)
    assert got and all(t.dtype == torch.float16 for t in got.values())

    save_file({"f": torch.ones(2), "i": torch.arange(3)}, str(tmp_path / "model.safetensors"))
    mixed = _as_dict(tmp_path, dtype=torch.bfloat16)
    assert mixed["f"].dtype == torch.bfloat16
    assert mixed["i"].dtype == torch.int64  # integer buffers keep their dtype


def test_sharded_checkpoint_yields_all_tensors(tiny_dir: Path, sharded_dir: Path) -> None:
    expected = load_file(str(tiny_dir / "model.safetensors"))
    got = _as_dict(sharded_dir)
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_truncated_safetensors(tiny_dir: Path, tmp_path: Path) -> None:
    _copy_config(tiny_dir, tmp_path)
    data = (tiny_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError) as info:
        _as_dict(tmp_path)
    message = str(info.value)
    assert "truncated" in message or "damaged" in message
    assert str(tmp_path / "model.safetensors") in message


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x01\x02\x03",
        b"\xff" * 8 + b"garbage" * 10,
        struct.pack("<Q", 12) + b"not json!!!!" + b"\x00" * 16,
        struct.pack("<Q", 2) + b"[]",
        b"this is not a safetensors file at all" * 4,
    ],
    ids=["empty", "short", "huge-length", "bad-json", "not-object", "text"],
)
def test_garbage_header(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        _as_dict(tmp_path)


def test_header_offsets_inconsistent_with_shape(tmp_path: Path) -> None:
    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}
    raw = json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x00" * 8)
    with pytest.raises(CheckpointError, match="should take 16 bytes"):
        validate_safetensors_header(path)


def test_validate_header_returns_header(tiny_dir: Path) -> None:
    header = validate_safetensors_header(tiny_dir / "model.safetensors")
    assert "transformer.wte.weight" in header


# --- reading .bin ----------------------------------------------------------------------------


def test_bin_loads_with_weights_only(tiny_model: Any, tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    got = _as_dict(tmp_path)
    assert set(got) == set(state)
    for name, tensor in state.items():
        assert torch.equal(got[name], tensor), name


def test_legacy_bin_format(tmp_path: Path) -> None:
    torch.save(
        {"w": torch.arange(4.0)},
        tmp_path / "pytorch_model.bin",
        _use_new_zipfile_serialization=False,
    )
    assert torch.equal(_as_dict(tmp_path)["w"], torch.arange(4.0))


def test_bin_with_arbitrary_object_refused(tmp_path: Path) -> None:
    torch.save({"x": _NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused"):
        _as_dict(tmp_path)


def test_bin_with_non_tensor_values_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(1), "step": 3}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="not a tensor"):
        _as_dict(tmp_path)


def test_truncated_bin(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError) as info:
        _as_dict(tmp_path)
    assert "truncated" in str(info.value) or "damaged" in str(info.value)
    assert str(path) in str(info.value)


def test_garbage_bin(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"hello world garbage" * 10)
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        _as_dict(tmp_path)
