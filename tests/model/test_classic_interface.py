"""The classic `HookedTransformerConfig` / `HookedTransformer` / KV-cache names and their meaning:
classic field spellings, the classic construction paths, the forward's pieces
(`input_to_embed`, `get_residual`, `get_pos_offset`), state-dict helpers and init modes."""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from anatomist import HookedTransformer, TransformerConfig
from anatomist.config import ConfigError
from anatomist.hooks import HookDisabledError
from anatomist.model.kv_cache import KVCache, KVCacheEntry
from anatomist.model.tokens import NoTokenizerError, TokenizerLoadError
from tests.helpers import randomize_small_params, tiny_tokenizer

BASE = dict(n_layers=2, d_model=16, n_ctx=12, d_head=4, d_vocab=30, act_fn="relu")


def make(**overrides: object) -> HookedTransformer:
    model = HookedTransformer(TransformerConfig(**{**BASE, **overrides}))  # type: ignore[arg-type]
    randomize_small_params(model)
    return model


def ids(batch: int = 2, pos: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 30, (batch, pos), generator=torch.Generator().manual_seed(seed))


# --- config -------------------------------------------------------------------------------------
def test_classic_field_names_set_our_fields() -> None:
    cfg = TransformerConfig(
        **BASE,  # type: ignore[arg-type]
        attention_dir="bidirectional",
        initializer_range=0.25,
        use_qk_norm=True,
        post_embedding_ln=True,
        use_normalization_before_and_after=True,
        normalization_type="RMS",
        use_local_attn=True,
        window_size=3,
        attn_types=["local", "global"],
        attn_scores_soft_cap=-1.0,
        output_logits_soft_cap=-1.0,
        n_params=123,  # derived: ignored, as the classic recomputed it
    )
    assert cfg.causal is False and cfg.attention_dir == "bidirectional"
    assert cfg.init_range == 0.25 and cfg.initializer_range == 0.25
    assert cfg.qk_norm and cfg.use_qk_norm
    assert cfg.post_embedding_norm and cfg.post_embedding_ln
    assert cfg.post_norm_type == "RMS" and cfg.use_normalization_before_and_after
    assert cfg.sliding_window == 3 and cfg.window_size == 3 and cfg.use_local_attn
    assert cfg.layer_types == ["sliding_attention", "full_attention"]
    assert cfg.attn_types == ["local", "global"]
    assert cfg.window_for_layer(0) == 3 and cfg.window_for_layer(1) is None
    assert cfg.attn_scores_soft_cap is None and cfg.output_logits_soft_cap is None
    attn = 2 * 4 * (16 * 4 * 4)  # 2 layers of W_Q, W_K, W_V, W_O ([heads, d_model, d_head])
    mlp = 2 * (2 * 16 * 64)  # 2 layers of W_in, W_out
    assert cfg.n_params == attn + mlp
    cfg.attention_dir = "causal"
    assert cfg.causal is True
    cfg.initializer_range = 0.5
    assert cfg.init_range == 0.5


def test_classic_rope_fields_become_rope_scaling() -> None:
    rotary = dict(BASE, positional_embedding_type="rotary")
    ntk = TransformerConfig(**rotary, use_NTK_by_parts_rope=True, NTK_by_parts_factor=4.0)  # type: ignore[arg-type]
    assert ntk.rope_scaling == {
        "rope_type": "llama3",
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert ntk.use_NTK_by_parts_rope and ntk.NTK_by_parts_factor == 4.0 and not ntk.use_yarn_rope
    yarn = TransformerConfig(**rotary, use_yarn_rope=True, yarn_factor=2.0)  # type: ignore[arg-type]
    assert yarn.rope_scaling is not None and yarn.rope_scaling["rope_type"] == "yarn"
    assert yarn.yarn_factor == 2.0 and yarn.yarn_attention_factor == 1.0
    linear = TransformerConfig(**rotary, rotary_scaling_factor=8.0)  # type: ignore[arg-type]
    assert linear.rope_scaling == {"rope_type": "linear", "factor": 8.0}
    assert linear.rotary_scaling_factor == 8.0
    plain = TransformerConfig(**rotary)  # type: ignore[arg-type]
    assert plain.rope_scaling is None and plain.rotary_scaling_factor == 1.0
    assert plain.NTK_by_parts_factor == 8.0  # the classic default when unused
    with pytest.raises(ConfigError, match="one kind of rope scaling"):
        TransformerConfig(**rotary, use_yarn_rope=True, rotary_scaling_factor=2.0)  # type: ignore[arg-type]


def test_classic_names_are_checked() -> None:
    with pytest.raises(ConfigError, match="attention_dir"):
        TransformerConfig(**BASE, attention_dir="sideways")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="window_size"):
        TransformerConfig(**BASE, use_local_attn=True, attn_types=["local", "local"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not both"):
        TransformerConfig(**BASE, init_range=0.1, initializer_range=0.2)  # type: ignore[arg-type]
    with pytest.raises(AssertionError):  # the classic error type still catches it
        TransformerConfig(**{**BASE, "act_fn": "nope"})  # type: ignore[arg-type]


def test_dict_round_trip_and_unwrap() -> None:
    cfg = TransformerConfig(**BASE, attention_dir="bidirectional")  # type: ignore[arg-type]
    again = TransformerConfig.from_dict(cfg.to_dict())
    assert again == cfg and again is not cfg
    classic = {**BASE, "attention_dir": "bidirectional", "n_params": 1, "unknown_key": 3}
    assert TransformerConfig.from_dict(classic).causal is False
    assert TransformerConfig.unwrap(cfg) is cfg
    assert TransformerConfig.unwrap(classic) == cfg

    class Other:
        def to_dict(self) -> dict[str, object]:
            return dict(BASE)

    assert TransformerConfig.unwrap(Other()).d_model == 16
    with pytest.raises(TypeError, match="config must be"):
        TransformerConfig.unwrap(42)


def test_is_layer_norm_activation() -> None:
    assert TransformerConfig(**{**BASE, "act_fn": "solu_ln"}).is_layer_norm_activation()  # type: ignore[arg-type]
    assert not TransformerConfig(**BASE).is_layer_norm_activation()  # type: ignore[arg-type]


def test_seed_seeds_torch_random_and_numpy() -> None:
    TransformerConfig(**BASE, seed=7)  # type: ignore[arg-type]
    drawn = (torch.rand(1).item(), random.random(), float(np.random.rand()))
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    assert drawn == (torch.rand(1).item(), random.random(), float(np.random.rand()))


def test_d_vocab_out_follows_d_vocab() -> None:
    assert TransformerConfig(**BASE).d_vocab_out == 30  # type: ignore[arg-type]
    assert TransformerConfig(**BASE, d_vocab_out=9).d_vocab_out == 9  # type: ignore[arg-type]


def test_classic_options_without_an_implementation_are_refused() -> None:
    with pytest.raises(NotImplementedError, match="load_in_4bit"):
        HookedTransformer(TransformerConfig(**BASE, load_in_4bit=True))  # type: ignore[arg-type]
    gqa = make(n_heads=4, n_key_value_heads=2)
    with pytest.raises(NotImplementedError, match="ungroup_grouped_query_attention"):
        gqa.set_ungroup_grouped_query_attention(True)
    with pytest.raises(TypeError, match="from_pretrained"):
        HookedTransformer("gpt2")  # type: ignore[arg-type]


# --- construction -------------------------------------------------------------------------------
def test_tokenizer_name_loads_a_local_tokenizer(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path)
    cfg = TransformerConfig(**{**BASE, "d_vocab": -1, "tokenizer_name": str(tmp_path)})  # type: ignore[arg-type]
    model = HookedTransformer(cfg)
    assert model.tokenizer is not None
    assert model.cfg.d_vocab == len(tok.get_vocab()) == model.cfg.d_vocab_out
    assert model.to_tokens("the cat", prepend_bos=False).tolist() == [tok("the cat")["input_ids"]]
    out = TransformerConfig(
        **{**BASE, "d_vocab": -1, "d_vocab_out": 9, "tokenizer_name": str(tmp_path)}  # type: ignore[arg-type]
    )
    assert HookedTransformer(out).cfg.d_vocab_out == 9


def test_tokenizer_name_that_cannot_load_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_tokenizer_here"
    cfg = TransformerConfig(**{**BASE, "tokenizer_name": str(missing)})  # type: ignore[arg-type]
    with pytest.raises(TokenizerLoadError, match="no_tokenizer_here") as error:
        HookedTransformer(cfg)
    assert isinstance(error.value, OSError)


def test_tokenizer_without_pad_gets_eos_as_pad() -> None:
    tok = tiny_tokenizer()
    tok.pad_token = None
    model = make()
    model.set_tokenizer(tok)
    assert tok.pad_token == "<eos>" and tok.pad_token_id == 1


def test_no_tokenizer_errors_are_also_assertion_errors() -> None:
    model = make()
    with pytest.raises(NoTokenizerError) as error:
        model.generate("hello", max_new_tokens=2, verbose=False)
    assert isinstance(error.value, AssertionError) and isinstance(error.value, ValueError)
    with pytest.raises(AssertionError, match="eos_token_id"):
        model.generate(ids(1, 3), max_new_tokens=2, stop_at_eos=True, verbose=False)


def test_cfg_init_weights_false_skips_the_random_init() -> None:
    torch.manual_seed(0)
    a = HookedTransformer(TransformerConfig(**BASE, init_weights=False))  # type: ignore[arg-type]
    b = HookedTransformer(TransformerConfig(**BASE))  # type: ignore[arg-type]
    assert torch.all(a.blocks[0].ln1.w == 1)  # norms start at 1 either way
    assert a.cfg.init_weights is False and b.W_Q.std() > 0


def test_cfg_device_says_where_the_model_is() -> None:
    assert make().cfg.device == "cpu"


# --- init modes ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "expected_std"),
    [
        ("gpt2", 0.8 / math.sqrt(64)),
        ("xavier_normal", math.sqrt(2 / (64 + 256))),
        ("xavier_uniform", math.sqrt(2 / (64 + 256))),
        ("kaiming_normal", math.sqrt(2) / math.sqrt(64)),
        ("kaiming_uniform", math.sqrt(2) / math.sqrt(64)),
        ("muP", 1 / math.sqrt(64)),
    ],
)
def test_init_modes_scale_w_in_by_its_fans(mode: str, expected_std: float) -> None:
    cfg = TransformerConfig(
        n_layers=2, d_model=64, n_ctx=8, d_head=8, d_vocab=40, act_fn="relu", init_mode=mode
    )
    model = HookedTransformer(cfg)
    w_in = model.W_in  # [n_layers, d_model=64, d_mlp=256]: fan_in 64, fan_out 256
    assert w_in.std().item() == pytest.approx(expected_std, rel=0.05)
    if mode.endswith("uniform"):
        bound = expected_std * math.sqrt(3)
        assert w_in.abs().max().item() <= bound and w_in.abs().max().item() > 0.95 * bound


def test_mup_scales_the_unembedding_by_one_over_fan_in() -> None:
    cfg = TransformerConfig(
        n_layers=1, d_model=64, n_ctx=8, d_head=8, d_vocab=400, act_fn="relu", init_mode="muP"
    )
    model = HookedTransformer(cfg)
    assert model.W_U.std().item() == pytest.approx(1 / 64, rel=0.05)
    assert model.W_E.std().item() == pytest.approx(1.0, rel=0.05)


def test_init_mode_is_checked() -> None:
    with pytest.raises(ConfigError, match="init_mode"):
        TransformerConfig(**BASE, init_mode="orthogonal")  # type: ignore[arg-type]
    assert TransformerConfig(**BASE, init_mode="xavier_normal").init_range == 1.0  # type: ignore[arg-type]


# --- forward pieces -----------------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["standard", "rotary", "shortformer"])
def test_input_to_embed_then_start_at_layer_zero_is_the_forward(positions: str) -> None:
    model = make(positional_embedding_type=positions)
    tokens = ids()
    residual, out_tokens, shortformer, mask = model.input_to_embed(tokens)
    assert torch.equal(out_tokens, tokens) and mask is None
    assert (shortformer is not None) == (positions == "shortformer")
    logits = model(residual, start_at_layer=0, shortformer_pos_embed=shortformer)
    torch.testing.assert_close(logits, model(tokens))
    # standard positions: the embedding plus W_pos, computed here by hand
    if positions == "standard":
        torch.testing.assert_close(residual, model.W_E[tokens] + model.W_pos[:7])


def test_input_to_embed_with_text_returns_the_padding_mask() -> None:
    model = make(d_vocab=101)
    model.set_tokenizer(tiny_tokenizer(), default_padding_side="left")
    residual, tokens, _, mask = model.input_to_embed(["the cat sat", "a dog"])
    assert mask is not None and mask.tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    assert tokens[1, 0].item() == 2  # <pad>
    # The left-padded row's first real token is at position 0.
    torch.testing.assert_close(residual[1, 1], model.W_E[tokens[1, 1]] + model.W_pos[0])


def test_input_to_embed_with_a_cache_continues_the_positions() -> None:
    model = make()
    tokens = ids()
    full, _, _, _ = model.input_to_embed(tokens)
    cache = KVCache.init_cache(model.cfg, "cpu", batch_size=2)
    assert model.get_pos_offset(cache, 2) == 0
    model(tokens[:, :4], past_kv_cache=cache)
    assert model.get_pos_offset(cache, 2) == 4
    residual, _, _, mask = model.input_to_embed(tokens[:, 4:], past_kv_cache=cache)
    torch.testing.assert_close(residual, full[:, 4:])
    assert mask is not None and mask.shape == (2, 7) and bool(mask.all())
    assert cache.length == 7  # appended, as the classic did
    with pytest.raises(ValueError, match="batch_size=3"):
        model.get_pos_offset(cache, 3)
    assert model.get_pos_offset(None, 5) == 0


def test_get_residual_adds_the_positions_from_the_offset() -> None:
    model = make()
    embed = torch.randn(2, 3, 16)
    residual, shortformer = model.get_residual(embed, pos_offset=4)
    torch.testing.assert_close(residual, embed + model.W_pos[4:7])
    assert shortformer is None
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    only = model.get_residual(embed, 0, attention_mask=mask, return_shortformer_pos_embed=False)
    torch.testing.assert_close(only[0, 1:], embed[0, 1:] + model.W_pos[:2])
    torch.testing.assert_close(only[1], embed[1] + model.W_pos[:3])
    rotary = make(positional_embedding_type="rotary")
    torch.testing.assert_close(rotary.get_residual(embed, 2)[0], embed)
    with pytest.raises(ValueError, match="n_ctx"):
        model.get_residual(embed, pos_offset=10)


def test_check_hooks_to_add_refuses_hooks_that_never_fire() -> None:
    model = make()
    hook_point = model.blocks[0].attn.hook_result
    with pytest.raises(HookDisabledError, match="set_use_attn_result"):
        model.check_hooks_to_add(hook_point, "blocks.0.attn.hook_result", lambda x, hook: x)
    model.set_use_attn_result(True)
    model.check_hooks_to_add(hook_point, "blocks.0.attn.hook_result", lambda x, hook: x)


# --- parameters and state dicts -----------------------------------------------------------------
def test_n_params_total_counts_every_parameter_by_hand() -> None:
    model = make(attn_only=True)
    d, v, ctx, h, dh = 16, 30, 12, 4, 4
    block = 2 * d + 4 * h * d * dh + 3 * h * dh + d  # ln1, W_QKVO, b_QKV, b_O
    expected = v * d + ctx * d + 2 * block + 2 * d + d * v + v
    assert model.n_params_total == expected


def test_fill_missing_keys_takes_the_models_values(caplog: pytest.LogCaptureFixture) -> None:
    model = make()
    partial = {k: v.clone() + 1 for k, v in model.state_dict().items() if "blocks.1" not in k}
    with caplog.at_level(logging.WARNING):
        filled = model.fill_missing_keys(partial)
    assert set(filled) == set(model.state_dict())
    assert torch.equal(filled["blocks.1.attn.W_Q"], model.blocks[1].attn.W_Q)
    assert torch.equal(filled["embed.W_E"], model.W_E + 1)
    assert "blocks.1.attn.W_Q" in caplog.text and "blocks.1.attn.b_Q" not in caplog.text


def test_load_and_process_state_dict_loads_then_processes() -> None:
    source, target = make(), make()
    tokens = ids()
    expected = source(tokens).log_softmax(-1)
    assert not target.cfg.layer_norm_folding and not target.cfg.uses_rms_norm
    target.load_and_process_state_dict(source.state_dict())  # fold_ln etc. by default
    assert target.cfg.normalization_type == "LNPre" and target.cfg.layer_norm_folding
    torch.testing.assert_close(target(tokens).log_softmax(-1), expected, atol=1e-4, rtol=0)
    plain = make()
    plain.load_and_process_state_dict(
        source.state_dict(),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    assert torch.equal(plain.W_Q, source.W_Q)


def test_device_moves_accept_the_classic_arguments() -> None:
    model = make()
    assert model.to("cpu", print_details=False) is model
    model.move_model_modules_to_device()
    assert model.cfg.device == "cpu"


# --- KV cache -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_init_cache_entry_is_empty_in_the_config_dtype(dtype: torch.dtype) -> None:
    cfg = TransformerConfig(**BASE, n_heads=4, n_key_value_heads=2, dtype=dtype)  # type: ignore[arg-type]
    entry = KVCacheEntry.init_cache_entry(cfg, "cpu", batch_size=3)
    assert entry.past_keys.shape == entry.past_values.shape == (3, 0, 2, 4)
    assert entry.past_keys.dtype == dtype and entry.length == 0


def test_entry_append_takes_and_gives_the_classic_layout() -> None:
    cfg = TransformerConfig(**BASE)  # type: ignore[arg-type]
    entry = KVCacheEntry.init_cache_entry(cfg, "cpu", batch_size=2)
    first_k, first_v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    keys, values = entry.append(first_k, first_v)
    assert torch.equal(keys, first_k) and torch.equal(values, first_v)
    more_k, more_v = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    keys, _ = entry.append(more_k, more_v)
    assert torch.equal(keys, torch.cat([first_k, more_k], dim=1))
    assert torch.equal(entry.past_keys, keys)
    entry.frozen = True
    keys, _ = entry.append(more_k, more_v)
    assert keys.shape[1] == 5 and entry.past_keys.shape[1] == 4  # frozen: not stored


def test_cache_constructor_and_mask_are_classic() -> None:
    cfg = TransformerConfig(**BASE)  # type: ignore[arg-type]
    entries = [KVCacheEntry.init_cache_entry(cfg, "cpu", 1) for _ in range(2)]
    cache = KVCache(entries, torch.zeros(1, 0, dtype=torch.long), frozen=True)
    assert cache.frozen and cache[1] is entries[1]
    full = cache.append_attention_mask(torch.ones(1, 2, dtype=torch.long))
    assert full.shape == (1, 2) and cache.previous_attention_mask.shape == (1, 0)
    cache.unfreeze()
    cache.append_attention_mask(torch.ones(1, 2, dtype=torch.long))
    assert cache.previous_attention_mask.shape == (1, 2)


def test_processing_a_given_state_dict_leaves_the_model() -> None:
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = model.fold_layer_norm(model.state_dict())
    assert folded is not None and "blocks.0.ln1.w" not in folded
    # ln1's weight is folded into W_Q: compare with the product computed here.
    expected = before["blocks.0.ln1.w"][None, :, None] * before["blocks.0.attn.W_Q"]
    expected = expected - expected.mean(1, keepdim=True)  # center_weights
    torch.testing.assert_close(folded["blocks.0.attn.W_Q"], expected)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    centered = model.center_unembed(model.state_dict())
    assert centered is not None
    torch.testing.assert_close(
        centered["unembed.W_U"], before["unembed.W_U"] - before["unembed.W_U"].mean(-1, True)
    )
    assert model.center_unembed() is None  # in place without a state dict
    torch.testing.assert_close(model.W_U, centered["unembed.W_U"])


# --- sample data --------------------------------------------------------------------------------
def test_sample_datapoint_draws_from_model_dataset() -> None:
    model = make(d_vocab=101)
    model.set_tokenizer(tiny_tokenizer())
    with pytest.raises(ValueError, match="model.dataset"):
        model.sample_datapoint()
    model.dataset = [{"text": "the cat"}, {"text": "a dog"}]
    np.random.seed(0)
    index = np.random.randint(0, 2)
    np.random.seed(0)
    assert model.sample_datapoint() == ["the cat", "a dog"][index]
    model.dataset = ["the cat sat"]
    tokens = model.sample_datapoint(tokenize=True, prepend_bos=True)
    assert isinstance(tokens, torch.Tensor) and tokens[0].tolist()[0] == 0  # <bos>
    assert tokens.shape == (1, 4)


def test_transformer_lens_config_path_names_our_config() -> None:
    import importlib

    compat = importlib.import_module("anatomist.compat")
    compat.install()  # idempotent; another test may have uninstalled it after importing it
    module = importlib.import_module("transformer_lens.config.transformer_lens_config")
    assert module.TransformerLensConfig is TransformerConfig
