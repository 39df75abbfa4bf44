"""The classic `loading_from_pretrained` lookups (anatomist.loading.names), offline over local
folders, a fake Hugging Face cache and the registry."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import transformers

import anatomist
from anatomist.loading import names
from anatomist.loading.errors import UnknownModelError
from tests.helpers import tiny_gpt2, tiny_llama


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpt2")
    tiny_gpt2(folder)
    return folder


def test_config_of_a_local_folder_is_read_from_its_config_json(gpt2_folder: Path) -> None:
    hf = json.loads((gpt2_folder / "config.json").read_text())
    cfg = names.get_pretrained_model_config(str(gpt2_folder))
    assert isinstance(cfg, anatomist.HookedTransformerConfig)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_vocab, cfg.n_ctx) == (
        hf["n_layer"],
        hf["n_embd"],
        hf["n_head"],
        hf["vocab_size"],
        hf["n_positions"],
    )
    assert cfg.original_architecture == "GPT2LMHeadModel"
    assert cfg.model_name == gpt2_folder.name
    assert cfg.normalization_type == "LN"
    as_dict = names.convert_hf_model_config(str(gpt2_folder))
    assert as_dict["d_mlp"] == 4 * hf["n_embd"] and as_dict["act_fn"] == hf["activation_function"]


def test_config_options(gpt2_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = names.get_pretrained_model_config(
        str(gpt2_folder),
        fold_ln=True,
        device="cpu",
        dtype=torch.float16,
        default_prepend_bos=False,
        first_n_layers=1,
        n_ctx=16,
    )
    assert cfg.normalization_type == "LNPre"
    assert (cfg.device, cfg.dtype, cfg.default_prepend_bos) == ("cpu", torch.float16, False)
    assert (cfg.n_layers, cfg.n_ctx) == (1, 16)
    with caplog.at_level(logging.WARNING):
        longer = names.get_pretrained_model_config(str(gpt2_folder), n_ctx=128)
    assert longer.n_ctx == 128 and "n_ctx=128 is longer than the 64 positions" in caplog.text
    with pytest.raises(ValueError, match="first_n_layers"):
        names.get_pretrained_model_config(str(gpt2_folder), first_n_layers=3)


def test_hf_cfg_replaces_the_models_config(tmp_path: Path) -> None:
    hf = transformers.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        vocab_size=77,
        max_position_embeddings=40,
    ).to_dict()
    hf["architectures"] = ["LlamaForCausalLM"]
    cfg = names.get_pretrained_model_config("my-llama", hf_cfg=hf)
    assert (cfg.n_layers, cfg.n_key_value_heads, cfg.d_vocab, cfg.d_mlp) == (3, 2, 77, 48)
    assert cfg.normalization_type == "RMS" and cfg.positional_embedding_type == "rotary"


def test_config_of_a_cached_repo_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repo id whose config.json alone is in the Hugging Face cache: no weights needed."""
    repo, commit = "someone/tiny-llama", "0" * 40
    snapshot = tmp_path / "models--someone--tiny-llama" / "snapshots" / commit
    tiny_llama(snapshot)
    for weights in snapshot.glob("*.safetensors"):
        weights.unlink()
    (tmp_path / "models--someone--tiny-llama" / "refs").mkdir()
    (tmp_path / "models--someone--tiny-llama" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = names.get_pretrained_model_config(repo)
    assert (cfg.n_layers, cfg.d_model, cfg.d_vocab) == (2, 32, 101)
    assert cfg.model_name == "tiny-llama"
    assert names.get_basic_config(repo) == names.Config(
        d_model=32,
        layer_norm_eps=cfg.eps,
        d_vocab=101,
        init_range=0.8 / 32**0.5,
        n_ctx=64,
        d_head=8,
        d_mlp=48,
        n_heads=4,
        n_layers=2,
    )
    assert names.get_num_params_of_pretrained(repo) == 2 * (4 * 32 * 32 + 3 * 32 * 48)
    with pytest.raises(UnknownModelError, match="hf download someone/absent config.json"):
        names.get_pretrained_model_config("someone/absent")


def test_unknown_names_list_the_closest() -> None:
    with pytest.raises(UnknownModelError, match="gpt2"):
        names.get_pretrained_model_config("gtp2-smal")


def test_encoder_configs_come_from_their_own_mapping(tmp_path: Path) -> None:
    bert = transformers.BertForMaskedLM(
        transformers.BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=40,
            vocab_size=60,
            max_position_embeddings=24,
        )
    )
    bert.save_pretrained(tmp_path)
    cfg = names.get_pretrained_model_config(str(tmp_path))
    assert (cfg.causal, cfg.d_mlp, cfg.n_ctx, cfg.eps) == (False, 40, 24, 1e-12)
    state = names.get_pretrained_state_dict(str(tmp_path), cfg)
    assert torch.equal(state["embed.embed.W_E"], bert.bert.embeddings.word_embeddings.weight)
    assert torch.equal(
        state["blocks.1.mlp.W_in"], bert.bert.encoder.layer[1].intermediate.dense.weight.T
    )


def test_pretrained_state_dict_is_the_unprocessed_checkpoint(gpt2_folder: Path) -> None:
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_folder)
    cfg = names.get_pretrained_model_config(str(gpt2_folder))
    state = names.get_pretrained_state_dict(str(gpt2_folder), cfg)
    assert torch.equal(state["embed.W_E"], hf.transformer.wte.weight)
    assert torch.equal(state["blocks.1.ln1.w"], hf.transformer.h[1].ln_1.weight)
    w_q = hf.transformer.h[0].attn.c_attn.weight[:, :32].reshape(32, 4, 8).transpose(0, 1)
    assert torch.equal(state["blocks.0.attn.W_Q"], w_q)
    from_model = names.get_pretrained_state_dict("ignored-name", cfg, hf_model=hf)
    assert torch.equal(from_model["unembed.W_U"], hf.lm_head.weight.T)
    cfg.n_layers = 1
    assert not any(
        k.startswith("blocks.1.") for k in names.get_pretrained_state_dict(str(gpt2_folder), cfg)
    )


def test_fill_missing_keys(caplog: pytest.LogCaptureFixture) -> None:
    cfg = anatomist.HookedTransformerConfig(
        n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=11, attn_only=True
    )
    model = anatomist.HookedTransformer(cfg)
    full = model.state_dict()
    partial = {k: torch.zeros_like(v) for k, v in full.items() if "W_" not in k}
    with caplog.at_level(logging.WARNING):
        filled = names.fill_missing_keys(model, partial)
    assert filled.keys() == full.keys()
    for key in full:
        if "W_" in key:
            assert torch.equal(filled[key], full[key])
            assert key in caplog.text
        else:
            assert not filled[key].any()  # what was given is kept
    assert names.fill_missing_keys(model, dict(full)) == full


def test_checkpoint_labels() -> None:
    labels, kind = names.get_checkpoint_labels("pythia-70m")
    assert (
        kind == "step" and labels[:3] == [0, 1, 2] and labels[-1] == 143000 and len(labels) == 154
    )
    v0, _ = names.get_checkpoint_labels("pythia-70m-v0")
    assert v0[0] == 1000 and len(v0) == 143
    crfm, _ = names.get_checkpoint_labels("stanford-crfm/alias-gpt2-small-x21")
    assert crfm == names.STANFORD_CRFM_CHECKPOINTS and len(crfm) == 609
    with pytest.raises(ValueError, match="no training checkpoints"):
        names.get_checkpoint_labels("gpt2")


def test_checkpoint_labels_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoints").mkdir()
    for label in (2_000_000_000, 300, 10):
        (tmp_path / "checkpoints" / f"model_{label}.pth").write_bytes(b"")
    assert names.get_checkpoint_labels(str(tmp_path)) == ([10, 300, 2_000_000_000], "token")


def test_alias_tables() -> None:
    assert "gpt2" in names.OFFICIAL_MODEL_NAMES
    alias_map = names.make_model_alias_map()
    for official, aliases in names.MODEL_ALIASES.items():
        assert all(alias_map[a.lower()] == official for a in aliases)
    assert len(names.DEFAULT_MODEL_ALIASES) == len(names.OFFICIAL_MODEL_NAMES)
    assert names.get_official_model_name("GPT2-small") == "gpt2"
