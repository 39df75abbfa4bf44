"""Nonsense configs are refused with a `ConfigError` naming the field, the value and what is
allowed: hand-built `TransformerConfig`s, and config.json files read through a family (where the
error also names the file). Before, they loaded, or failed later with a ZeroDivisionError, a math
domain error, a reshape error or a bare KeyError."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anatomist
from anatomist import ConfigError
from tests.helpers import load, random_tokens, tiny_gpt2, tiny_llama

SHAPE: dict[str, Any] = dict(n_layers=2, d_model=16, n_ctx=8, d_head=8, d_vocab=11)

# (field, a value no model can have)
BAD_FIELDS: list[tuple[str, Any]] = [
    ("n_layers", 0),
    ("n_layers", -2),
    ("n_layers", 2.0),
    ("n_layers", True),
    ("d_model", 0),
    ("d_model", "16"),
    ("n_ctx", 0),
    ("d_head", -8),
    ("n_heads", 0),
    ("n_heads", -3),
    ("d_vocab", 0),
    ("d_mlp", 0),
    ("d_mlp", -4),
    ("n_key_value_heads", 0),
    ("n_key_value_heads", 3),  # does not divide the 2 heads
    ("eps", -1e-5),
    ("eps", math.nan),
    ("eps", "1e-5"),
    ("attn_scale", 0.0),
    ("init_range", math.inf),
    ("rotary_base", 0.0),
    ("act_fn", "tanhh"),
    ("normalization_type", "layernorm"),
    ("positional_embedding_type", "learned"),
    ("num_experts", 0),
    ("sliding_window", 0),
    ("default_padding_side", "middle"),
    ("dtype", "float33"),
    ("dtype", torch.int64),
    ("attn_scores_soft_cap", -2.0),  # (-1 is the classic "unset")
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=lambda v: repr(v))
def test_bad_field_is_a_config_error_naming_it(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        anatomist.TransformerConfig(**{**SHAPE, field: value})
    assert info.value.field == field
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working


def test_rotary_dim_must_fit_the_head() -> None:
    with pytest.raises(ConfigError, match="rotary_dim"):
        anatomist.TransformerConfig(**SHAPE, positional_embedding_type="rotary", rotary_dim=9)
    with pytest.raises(ConfigError, match="rotary_dim"):
        anatomist.TransformerConfig(**SHAPE, positional_embedding_type="rotary", rotary_dim=16)


def test_more_experts_per_token_than_experts() -> None:
    with pytest.raises(ConfigError, match="experts_per_token"):
        anatomist.TransformerConfig(
            **SHAPE, gated_mlp=True, act_fn="silu", num_experts=2, experts_per_token=3
        )


@settings(max_examples=30, deadline=None)
@given(
    n_layers=st.integers(1, 3),
    heads_and_kv=st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2), (4, 1)]),
    d_head=st.sampled_from([2, 4, 6]),
    d_mlp=st.integers(1, 24),
    eps=st.floats(0.0, 1e-3),
    normalization=st.sampled_from(["LN", "RMS", "LNPre", "RMSPre", None]),
    positions=st.sampled_from(["standard", "rotary", "alibi", "none"]),
)
def test_every_valid_config_builds_a_model_that_runs(
    n_layers: int,
    heads_and_kv: tuple[int, int],
    d_head: int,
    d_mlp: int,
    eps: float,
    normalization: str | None,
    positions: str,
) -> None:
    """Validation refuses nothing a model can be built from (the other half of the contract)."""
    heads, kv = heads_and_kv
    cfg = anatomist.TransformerConfig(
        n_layers=n_layers,
        d_model=heads * d_head,
        n_ctx=8,
        d_head=d_head,
        n_heads=heads,
        n_key_value_heads=kv,
        d_mlp=d_mlp,
        d_vocab=13,
        eps=eps,
        normalization_type=normalization,
        positional_embedding_type=positions,
        act_fn="gelu",
    )
    model = anatomist.HookedTransformer(cfg)
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 13)
    # Rebuilding a config from its own fields (dataclasses.replace, to_dict) validates again.
    assert anatomist.TransformerConfig.from_dict(cfg.to_dict()) == cfg


# --- config.json read through a family --------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpt2")
    tiny_gpt2(folder)
    return folder


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("llama")
    tiny_llama(folder, num_key_value_heads=2)
    return folder


def _edited(source: Path, target: Path, **changes: Any) -> Path:
    """A copy of `source` whose config.json has `changes` (a value of ... removes the key)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    for key, value in changes.items():
        if value is ...:
            config.pop(key)
        else:
            config[key] = value
    (target / "config.json").write_text(json.dumps(config))
    return target


FOLDER_CASES: list[tuple[str, dict[str, Any], str]] = [
    # (which checkpoint, config.json changes, what the message must name)
    ("gpt2", {"n_head": 0}, "n_head"),  # was ZeroDivisionError
    ("gpt2", {"n_head": -4}, "n_head"),
    ("gpt2", {"n_head": 3}, "n_head"),  # does not divide n_embd 32: was a reshape error
    ("gpt2", {"layer_norm_epsilon": -1e-5}, "layer_norm_epsilon"),  # loaded and computed NaN
    ("gpt2", {"n_positions": 0}, "n_positions"),
    ("gpt2", {"n_layer": 0}, "n_layer"),  # loaded a model without blocks
    ("gpt2", {"n_embd": "32"}, "n_embd"),
    ("gpt2", {"vocab_size": 101.0}, "vocab_size"),
    ("gpt2", {"n_embd": ...}, "n_embd"),  # was a bare KeyError
    ("gpt2", {"activation_function": "swishh"}, "act_fn"),
    ("gpt2", {"architectures": "GPT2LMHeadModel"}, "architectures"),  # a string, not a list
    ("llama", {"num_attention_heads": 0}, "num_attention_heads"),
    ("llama", {"num_key_value_heads": 3}, "num_key_value_heads"),
    ("llama", {"rms_norm_eps": -1e-6}, "rms_norm_eps"),
    ("llama", {"intermediate_size": -48}, "intermediate_size"),
    ("llama", {"vocab_size": -1}, "vocab_size"),
    ("llama", {"hidden_size": ...}, "hidden_size"),
]


@pytest.mark.parametrize(("which", "changes", "named"), FOLDER_CASES, ids=lambda v: repr(v))
def test_bad_config_json_is_a_config_error_naming_file_and_field(
    which: str,
    changes: dict[str, Any],
    named: str,
    gpt2_folder: Path,
    llama_folder: Path,
    tmp_path: Path,
) -> None:
    source = gpt2_folder if which == "gpt2" else llama_folder
    folder = _edited(source, tmp_path / "edited", **changes)
    with pytest.raises(ConfigError, match=named) as info:
        load(folder)
    if named != "architectures":  # refused before any family reads it
        assert str(folder / "config.json") in str(info.value)
        assert info.value.source == str(folder / "config.json")


@pytest.mark.parametrize("content", ["[1, 2, 3]", '"gpt2"', "null", "42"])
def test_config_json_that_is_not_an_object(content: str, gpt2_folder: Path, tmp_path: Path) -> None:
    folder = _edited(gpt2_folder, tmp_path / "edited")
    (folder / "config.json").write_text(content)
    with pytest.raises(ConfigError, match="not an object") as info:
        load(folder)
    assert str(folder / "config.json") in str(info.value)


# Values a config.json might carry for each GPT-2 key that no model can have.
_NOT_A_COUNT = st.one_of(
    st.integers(max_value=0),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
_NOT_AN_EPSILON = st.one_of(
    st.floats(max_value=-1e-12),
    st.just(math.nan),
    st.just(math.inf),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
)
_GPT2_KEYS = {
    "n_embd": _NOT_A_COUNT,
    "n_head": _NOT_A_COUNT,
    "n_layer": _NOT_A_COUNT,
    "n_positions": _NOT_A_COUNT,
    "vocab_size": _NOT_A_COUNT,
    "layer_norm_epsilon": _NOT_AN_EPSILON,
}


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_nonsense_value_in_config_json_is_a_config_error(
    data: st.DataObject, gpt2_folder: Path, tmp_path: Path
) -> None:
    key = data.draw(st.sampled_from(sorted(_GPT2_KEYS)), label="key")
    value = data.draw(_GPT2_KEYS[key], label="value")
    folder = _edited(gpt2_folder, tmp_path / "edited", **{key: value})
    with pytest.raises(ConfigError) as info:
        load(folder)
    assert str(folder / "config.json") in str(info.value)


def test_a_good_config_still_loads_and_matches(gpt2_folder: Path) -> None:
    """The validation is not in the way of a real checkpoint."""
    import transformers

    model = load(gpt2_folder)
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_folder).eval()
    tokens = random_tokens(model.cfg.d_vocab)
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("n_ctx", [0, -8, 2.5, True])
def test_bad_n_ctx_override(n_ctx: Any, gpt2_folder: Path) -> None:
    with pytest.raises(ConfigError, match="n_ctx"):
        load(gpt2_folder, n_ctx=n_ctx)


def test_unset_vocabulary_size_comes_from_the_tokenizer_or_is_refused() -> None:
    """d_vocab=-1 (the classic default) used to build a model from a negative size."""
    from tests.helpers import tiny_tokenizer

    fields: dict[str, Any] = dict(
        n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=16, act_fn="gelu"
    )
    with pytest.raises(anatomist.ConfigError, match="d_vocab is -1"):
        anatomist.HookedTransformer(anatomist.TransformerConfig(**fields))
    tok = tiny_tokenizer()
    model = anatomist.HookedTransformer(anatomist.TransformerConfig(**fields), tokenizer=tok)
    assert model.cfg.d_vocab == model.cfg.d_vocab_out == max(tok.get_vocab().values()) + 1
    assert model.W_E.shape[0] == model.W_U.shape[1] == model.cfg.d_vocab
