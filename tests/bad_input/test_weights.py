"""Damaged checkpoints: loading is complete or refused, never partial.

Each test writes a damaged copy of a tiny checkpoint (a missing or extra tensor, layers beyond
the config, a header that lies about a shape or a dtype, flipped header bytes, a duplicate) and
checks that loading raises a `CheckpointError` naming the tensor and the folder, and that the
original files are byte-for-byte as they were.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import anatomist
from anatomist import CheckpointError, ConfigError
from tests.families.cases.qwen2 import CASES as QWEN2_CASES
from tests.helpers import load, random_tokens, save_tiny, tiny_gpt2, tiny_llama

WEIGHTS = "model.safetensors"


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@contextmanager
def originals_kept(*folders: Path) -> Iterator[None]:
    """Assert that the block leaves every file of `folders` byte-for-byte as it was."""
    before = [_hashes(folder) for folder in folders]
    yield
    assert [_hashes(folder) for folder in folders] == before, "an original file was changed"


def _copy(source: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    return target


def _header(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _write(path: Path, header: dict[str, Any], data: bytes) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _edit_config(folder: Path, **changes: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _stored_name(hf_name: str) -> str:
    """The part of a checkpoint name every error message shows (prefixes are optional)."""
    for prefix in ("transformer.", "model.", "bert."):
        hf_name = hf_name.removeprefix(prefix)
    return hf_name


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpt2")
    tiny_gpt2(folder)
    return folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama with every optional bias (attention_bias, mlp_bias), so each one can go missing."""
    folder = tmp_path_factory.mktemp("llama")
    tiny_llama(folder, num_key_value_heads=2, attention_bias=True, mlp_bias=True)
    return folder


@pytest.fixture(scope="module")
def reference(gpt2: Path) -> torch.Tensor:
    return load(gpt2)(random_tokens(101))


# --- a tensor missing ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_each_missing_tensor_is_named(which: str, gpt2: Path, llama: Path, tmp_path: Path) -> None:
    """Every tensor is needed: without any one of them (a bias included, which used to become
    zeros), loading fails naming it and the folder."""
    source = gpt2 if which == "gpt2" else llama
    tensors = load_file(source / WEIGHTS)
    with originals_kept(source):
        for name in tensors:
            folder = _copy(source, tmp_path / "lacking")
            save_file({k: v for k, v in tensors.items() if k != name}, folder / WEIGHTS)
            with pytest.raises(CheckpointError, match="lacks") as info:
                load(folder)
            message = str(info.value)
            assert _stored_name(name) in message, (name, message)
            assert str(folder) in message


def test_an_optional_bias_missing_in_one_layer_only(llama: Path, tmp_path: Path) -> None:
    """Llama's biases are optional (attention_bias=False has none), but a checkpoint that has
    them in layer 0 and not in layer 1 is damaged, not a config without biases."""
    tensors = load_file(llama / WEIGHTS)
    lacking = {
        k: v for k, v in tensors.items() if not k.startswith("model.layers.1.") or "bias" not in k
    }
    folder = _copy(llama, tmp_path / "lacking")
    save_file(lacking, folder / WEIGHTS)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn\.b_Q"):
        load(folder)
    # Without any of them, it is a Llama without biases: zeros, as transformers computes.
    none = {k: v for k, v in tensors.items() if "bias" not in k}
    save_file(none, folder / WEIGHTS)
    _edit_config(folder, attention_bias=False, mlp_bias=False)
    model = load(folder)
    hf = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    tokens = random_tokens(101)
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max() <= 1e-5


def test_qwen2_query_key_value_biases_are_required(tmp_path: Path) -> None:
    """Qwen2 always has q/k/v biases (Llama's rules, where they are optional, used to load a
    checkpoint without any of them as zeros)."""
    case = QWEN2_CASES["gqa-tied"]
    source = save_tiny(case.model_class(case.config), tmp_path / "qwen2")
    assert load(source) is not None
    tensors = load_file(source / WEIGHTS)
    folder = _copy(source, tmp_path / "lacking")
    with originals_kept(source):
        save_file({k: v for k, v in tensors.items() if "bias" not in k}, folder / WEIGHTS)
        with pytest.raises(CheckpointError, match=r"lacks .*b_Q"):
            load(folder)


def test_untied_output_embedding_missing(gpt2: Path, tmp_path: Path) -> None:
    """GPT-2 stores no lm_head when it ties it to the input embedding; a config that says the
    two are separate needs one (it used to be tied silently)."""
    folder = _copy(gpt2, tmp_path / "untied")
    _edit_config(folder, tie_word_embeddings=False)
    with pytest.raises(CheckpointError, match="unembed.W_U.*tie_word_embeddings"):
        load(folder)


def test_encoder_missing_bias(tmp_path: Path) -> None:
    """HookedEncoder loads through the same rules."""
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32,
    )  # fmt: skip
    source = save_tiny(transformers.BertForMaskedLM(config), tmp_path / "bert")
    tensors = load_file(source / WEIGHTS)
    name = next(k for k in tensors if k.endswith("layer.1.attention.self.query.bias"))
    folder = _copy(source, tmp_path / "lacking")
    save_file({k: v for k, v in tensors.items() if k != name}, folder / WEIGHTS)
    with originals_kept(source), pytest.raises(CheckpointError, match=r"blocks\.1\.attn\.b_Q"):
        anatomist.HookedEncoder.from_pretrained(folder, progress=False)


# --- tensors the config does not have room for -------------------------------------------------


@pytest.mark.parametrize(("which", "key"), [("gpt2", "n_layer"), ("llama", "num_hidden_layers")])
def test_layers_beyond_the_config(
    which: str, key: str, gpt2: Path, llama: Path, tmp_path: Path
) -> None:
    """A config with fewer layers than the weights used to load the first layers and drop the
    rest without a word; only first_n_layers asks for that."""
    source = gpt2 if which == "gpt2" else llama
    folder = _copy(source, tmp_path / "shallow")
    _edit_config(folder, **{key: 1})
    with originals_kept(source), pytest.raises(CheckpointError, match="layer 1.*first_n_layers"):
        load(folder)
    assert load(source, first_n_layers=1).cfg.n_layers == 1


def test_unknown_tensor(gpt2: Path, tmp_path: Path) -> None:
    tensors = load_file(gpt2 / WEIGHTS)
    tensors["transformer.h.0.attn.c_attn.scale"] = torch.ones(3)
    folder = _copy(gpt2, tmp_path / "extra")
    save_file(tensors, folder / WEIGHTS)
    with originals_kept(gpt2), pytest.raises(CheckpointError, match="c_attn.scale"):
        load(folder)


def test_a_tensor_stored_twice(gpt2: Path, tmp_path: Path) -> None:
    """Two shards that both hold a tensor: the later one used to win silently."""
    tensors = load_file(gpt2 / WEIGHTS)
    folder = _copy(gpt2, tmp_path / "sharded")
    (folder / WEIGHTS).unlink()
    name = "transformer.wte.weight"
    save_file(tensors, folder / "model-00001-of-00002.safetensors")
    save_file({name: tensors[name] * 2}, folder / "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in tensors}
    weight_map[name] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="stored twice.*wte"):
        load(folder)


# --- headers that lie --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "lie"),
    [
        ("transformer.h.0.attn.c_proj.weight", [16, 64]),  # [32, 32]: reshaped silently before
        ("transformer.h.0.attn.c_proj.weight", [1024]),
        ("transformer.h.1.attn.c_attn.weight", [96, 32]),  # [32, 96]: a RuntimeError before
        ("transformer.h.1.attn.c_attn.bias", [2, 48]),
        ("transformer.h.0.mlp.c_fc.weight", [128, 32]),
    ],
)
def test_header_shape_lie_with_the_same_byte_count(
    name: str, lie: list[int], gpt2: Path, tmp_path: Path
) -> None:
    header, data = _header(gpt2 / WEIGHTS)
    truth = tuple(header[name]["shape"])
    header[name]["shape"] = lie
    folder = _copy(gpt2, tmp_path / "lying")
    _write(folder / WEIGHTS, header, data)
    with originals_kept(gpt2), pytest.raises(CheckpointError) as info:
        load(folder)
    message = str(info.value)
    assert name in message and str(tuple(lie)) in message, message
    if name.endswith("c_proj.weight"):  # the shape the config implies is named too
        assert str(truth) in message


def _other_shapes(numel: int) -> st.SearchStrategy[list[int]]:
    """Shapes of 1 to 3 dimensions with `numel` elements."""
    divisors = [d for d in range(1, numel + 1) if numel % d == 0]

    @st.composite
    def shapes(draw: st.DrawFn) -> list[int]:
        first = draw(st.sampled_from(divisors))
        rest = numel // first
        if rest == 1 or draw(st.booleans()):
            return [first] if rest == 1 else [first, rest]
        second = draw(st.sampled_from([d for d in divisors if rest % d == 0]))
        return [first, second, rest // second]

    return shapes()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_shape_lie_is_refused(
    data: st.DataObject, gpt2: Path, llama: Path, tmp_path: Path
) -> None:
    """Whatever tensor the header lies about, and however (same element count, so the byte
    count checks pass), loading refuses it with a CheckpointError: never loads, never fails
    with a raw reshape error."""
    source = data.draw(st.sampled_from([gpt2, llama]), label="checkpoint")
    header, payload = _header(source / WEIGHTS)
    name = data.draw(
        st.sampled_from(sorted(k for k in header if k != "__metadata__")), label="tensor"
    )
    truth = header[name]["shape"]
    lie = data.draw(_other_shapes(math.prod(truth)).filter(lambda s: s != truth), label="lie")
    header[name]["shape"] = lie
    folder = _copy(source, tmp_path / "lying")
    _write(folder / WEIGHTS, header, payload)
    with pytest.raises(CheckpointError, match=name.rsplit(".", 2)[-2]):
        load(folder)


@pytest.mark.parametrize(
    ("dtype", "match"),
    [("F16", "damaged"), ("I32", "not floats"), ("F64", "damaged"), ("Q4", "unknown dtype")],
)
def test_header_dtype_lie(dtype: str, match: str, gpt2: Path, tmp_path: Path) -> None:
    header, data = _header(gpt2 / WEIGHTS)
    header["transformer.h.0.mlp.c_fc.weight"]["dtype"] = dtype
    folder = _copy(gpt2, tmp_path / "lying")
    _write(folder / WEIGHTS, header, data)
    with originals_kept(gpt2), pytest.raises(CheckpointError, match=match):
        load(folder)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_flipped_header_byte_is_refused_or_harmless(
    data: st.DataObject, gpt2: Path, reference: torch.Tensor, tmp_path: Path
) -> None:
    """A byte of the header flipped: the load is refused with a clear error, or the flip did not
    change what the model computes (a byte of padding or metadata). Never a silent difference."""
    raw = (gpt2 / WEIGHTS).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    at = data.draw(st.integers(8, 8 + length - 1), label="byte")
    flipped = bytearray(raw)
    flipped[at] ^= data.draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]), label="bit")
    folder = _copy(gpt2, tmp_path / "flipped")
    (folder / WEIGHTS).write_bytes(bytes(flipped))
    try:
        model = load(folder)
    except (CheckpointError, ConfigError):
        return
    assert torch.equal(model(random_tokens(101)), reference)


def test_truncated_file_leaves_the_original(gpt2: Path, tmp_path: Path) -> None:
    folder = _copy(gpt2, tmp_path / "cut")
    data = (gpt2 / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) - 100])
    with originals_kept(gpt2), pytest.raises(CheckpointError, match="damaged|truncated"):
        load(folder)
