"""HookedEncoderDecoder generation with the decoder key-value cache (``use_past_kv_cache``).

The cached run must choose the tokens the full re-run chooses and Hugging Face's
``T5ForConditionalGeneration.generate`` chooses on the same weights, compute the same logits at
every step, and show hooks the new position only. Models: the tiny random-init T5s of
test_encoder_decoder.py (original T5, T5 v1.1 with gated GELU and a separate head, and an
asymmetric one with few position buckets, so that long generations reach the logarithmic and
the clipped buckets).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import torch

import anatomist
from tests.model.test_encoder_decoder import VARIANTS, VOCAB, assert_close, save_t5

Pair = tuple[Any, anatomist.HookedEncoderDecoder]
STEPS = 24


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    folder = tmp_path_factory.mktemp(f"t5-cache-{request.param}")
    hf = save_t5(folder, **VARIANTS[request.param])
    return hf, anatomist.HookedEncoderDecoder.from_pretrained(folder, progress=False)


def padded_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of 12, 7 and 3 real tokens, right-padded with 0 ([3, 12] and its mask)."""
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(3, VOCAB, (3, 12), generator=gen)
    mask = torch.ones_like(tokens)
    for row, length in ((1, 7), (2, 3)):
        mask[row, length:] = 0
        tokens[row, length:] = 0
    return tokens, mask


def hf_generate(hf: Any, tokens: torch.Tensor, mask: torch.Tensor, eos: int | None) -> Any:
    """Hugging Face's greedy generation, with its own key-value cache where it can: transformers
    5.25 sizes T5's DynamicCache by the encoder's layer count, so a decoder with more layers
    fails there (IndexError) and runs without the cache."""
    symmetric = hf.config.num_decoder_layers == hf.config.num_layers
    return hf.generate(
        tokens,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=STEPS,
        eos_token_id=eos,
        use_cache=symmetric,
    )


def generate(model: anatomist.HookedEncoderDecoder, cached: bool, **kwargs: Any) -> torch.Tensor:
    settings: dict[str, Any] = dict(
        do_sample=False, max_new_tokens=STEPS, stop_at_eos=False, verbose=False
    )
    settings.update(kwargs)
    out = model.generate(use_past_kv_cache=cached, **settings)
    assert isinstance(out, torch.Tensor)
    return out


def test_greedy_generation_with_cache_matches_full_runs_and_hugging_face(pair: Pair) -> None:
    hf, model = pair
    tokens, mask = padded_prompts()
    cached = generate(model, True, input=tokens, one_zero_attention_mask=mask)
    full = generate(model, False, input=tokens, one_zero_attention_mask=mask)
    expected = hf_generate(hf, tokens, mask, eos=None)
    assert cached.shape == (3, 1 + STEPS)
    assert len(set(cached[:, 1:].flatten().tolist())) > 2  # not one token repeated
    assert torch.equal(cached, full)
    assert torch.equal(cached, expected)
    # Each padded row generates what it generates alone, unpadded.
    for row, length in ((1, 7), (2, 3)):
        alone = generate(model, True, input=tokens[row : row + 1, :length])
        assert torch.equal(alone[0], cached[row])


def step_logits(
    model: anatomist.HookedEncoderDecoder, cached: bool, tokens: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The generated tokens and what ``unembed.hook_out`` saw at each step."""
    seen: list[torch.Tensor] = []

    def keep(logits: torch.Tensor, hook: Any) -> None:
        seen.append(logits.clone())

    with model.hooks(fwd_hooks=[("unembed.hook_out", keep)]):
        out = generate(model, cached, input=tokens, one_zero_attention_mask=mask)
    return out, seen


def test_cached_step_logits_equal_the_full_run(pair: Pair) -> None:
    _, model = pair
    tokens, mask = padded_prompts()
    out, seen = step_logits(model, True, tokens, mask)
    assert len(seen) == STEPS
    assert all(logits.shape == (3, 1, VOCAB) for logits in seen)
    with torch.no_grad():  # `out` is an inference tensor
        full = model(tokens, out[:, :-1], one_zero_attention_mask=mask)  # [3, STEPS, vocab]
    assert_close(torch.cat(seen, dim=1), full)
    # Without the cache each step's hook sees every position so far.
    out_full, seen_full = step_logits(model, False, tokens, mask)
    assert torch.equal(out_full, out)
    assert [logits.shape[1] for logits in seen_full] == list(range(1, STEPS + 1))
    assert_close(seen_full[-1], full)


def test_sampled_generation_is_the_same_with_and_without_cache(pair: Pair) -> None:
    _, model = pair
    tokens, mask = padded_prompts()
    runs = []
    for cached in (True, False):
        torch.manual_seed(7)
        runs.append(
            generate(
                model,
                cached,
                input=tokens,
                one_zero_attention_mask=mask,
                do_sample=True,
                temperature=1.5,
                top_k=40,
            )
        )
    assert torch.equal(runs[0], runs[1])
    greedy = generate(model, True, input=tokens, one_zero_attention_mask=mask)
    assert not torch.equal(runs[0], greedy)  # it did sample


def test_stopping_at_eos_is_unchanged(pair: Pair) -> None:
    hf, model = pair
    tokens, mask = padded_prompts()
    greedy = generate(model, True, input=tokens, one_zero_attention_mask=mask)
    eos = int(greedy[0, 4])  # row 0 meets it by its fourth new token
    settings = dict(input=tokens, one_zero_attention_mask=mask, stop_at_eos=True, eos_token_id=eos)
    cached = generate(model, True, **settings)
    full = generate(model, False, **settings)
    expected = hf_generate(hf, tokens, mask, eos=eos)
    assert torch.equal(cached, full)
    assert torch.equal(cached, expected)
    first = (cached[0, 1:] == eos).nonzero()[0, 0] + 1
    assert (cached[0, first + 1 :] == model.decoder_start_token_id).all()  # padded after it


def test_hooks_see_one_new_position_per_step(pair: Pair) -> None:
    _, model = pair
    tokens, mask = padded_prompts()
    cfg = model.cfg
    last = len(model.decoder) - 1
    names = [
        "hook_embed",
        "hook_decoder_embed",
        "decoder.0.hook_resid_pre",
        f"decoder.{last}.attn.hook_pattern",
        "decoder.0.attn.hook_rel_pos_bias",
        "decoder.0.attn.hook_k",
        "decoder.0.cross_attn.hook_k",
        f"decoder.{last}.cross_attn.hook_pattern",
        "decoder.0.hook_mlp_out",
    ]
    shapes: dict[str, list[tuple[int, ...]]] = defaultdict(list)

    def record(x: torch.Tensor, hook: Any) -> None:
        shapes[hook.name].append(tuple(x.shape))

    steps = 6
    with model.hooks(fwd_hooks=[(name, record) for name in names]):
        hooked = generate(
            model, True, input=tokens, one_zero_attention_mask=mask, max_new_tokens=steps
        )
    b, h, d, dh, p = 3, cfg.n_heads, cfg.d_model, cfg.d_head, tokens.shape[1]
    assert shapes["hook_embed"] == [(b, p, d)]  # the encoder runs once
    assert shapes["decoder.0.cross_attn.hook_k"] == [(b, p, h, dh)]  # projected once, reused
    assert shapes["hook_decoder_embed"] == [(b, 1, d)] * steps
    assert shapes["decoder.0.hook_resid_pre"] == [(b, 1, d)] * steps
    assert shapes["decoder.0.hook_mlp_out"] == [(b, 1, d)] * steps
    assert shapes["decoder.0.attn.hook_k"] == [(b, 1, h, dh)] * steps
    assert shapes[f"decoder.{last}.attn.hook_pattern"] == [(b, h, 1, t) for t in range(1, 7)]
    assert shapes["decoder.0.attn.hook_rel_pos_bias"] == [(1, h, 1, t) for t in range(1, 7)]
    assert shapes[f"decoder.{last}.cross_attn.hook_pattern"] == [(b, h, 1, p)] * steps
    # The explicit attention path (a pattern hook) chooses the same tokens as the fused one.
    plain = generate(model, True, input=tokens, one_zero_attention_mask=mask, max_new_tokens=steps)
    assert torch.equal(hooked, plain)


def test_editing_hooks_act_the_same_with_and_without_cache(pair: Pair) -> None:
    """A per-position edit of decoder activations changes the output identically: the cached
    run edits each position at its own step and keeps the edited keys and values."""
    _, model = pair
    tokens, mask = padded_prompts()
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(5))

    def steer(resid: torch.Tensor, hook: Any) -> torch.Tensor:
        return resid + 3.0 * direction

    def scale_cross_keys(keys: torch.Tensor, hook: Any) -> torch.Tensor:
        return keys * 0.5

    hooks = [("decoder.0.hook_resid_mid", steer), ("decoder.0.cross_attn.hook_k", scale_cross_keys)]
    runs = []
    for cached in (True, False):
        with model.hooks(fwd_hooks=hooks):
            runs.append(generate(model, cached, input=tokens, one_zero_attention_mask=mask))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(
        runs[0], generate(model, True, input=tokens, one_zero_attention_mask=mask)
    )


def test_position_bias_rows_of_a_cached_step(pair: Pair) -> None:
    _, model = pair
    attn = model.decoder[0].attn
    full = attn.compute_relative_attention_bias(40, 40)  # [1, h, 40, 40]
    for cached in (0, 1, 11, 39):
        row = attn.compute_relative_attention_bias(1, cached + 1, query_offset=cached)
        assert torch.equal(row, full[:, :, cached : cached + 1, : cached + 1])
    rows = attn.compute_relative_attention_bias(3, 20, query_offset=17)
    assert torch.equal(rows, full[:, :, 17:20, :20])


def test_text_generation_with_and_without_cache(pair: Pair) -> None:
    _, model = pair
    texts = ["the cat sat on the mat", "a dog"]
    cached = model.generate(texts, max_new_tokens=8, do_sample=False, verbose=False)
    full = model.generate(
        texts, max_new_tokens=8, do_sample=False, verbose=False, use_past_kv_cache=False
    )
    assert isinstance(cached, list) and cached == full
