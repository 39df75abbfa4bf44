"""`sample_logits` with `top_k` draws among the k best only (top-p and the draw over k logits,
not the whole vocabulary): the distribution must be the one the settings define."""

from __future__ import annotations

import torch

from anatomist.model.generate import sample_logits


def _expected(
    logits: torch.Tensor, top_k: int, top_p: float | None, temperature: float
) -> torch.Tensor:
    """The distribution by definition: temperature, keep the k best, then the smallest prefix
    whose probability reaches top_p, renormalized."""
    scaled = logits / temperature
    order = scaled.argsort(descending=True)
    probs = torch.zeros_like(scaled)
    best = order[:top_k]
    p = scaled[best].softmax(-1)
    if top_p is not None:
        before = p.cumsum(-1) - p
        p = torch.where(before < top_p, p, torch.zeros_like(p))
        p = p / p.sum()
    probs[best] = p
    return probs


def test_top_k_with_and_without_top_p_samples_the_distribution_it_defines() -> None:
    torch.manual_seed(0)
    logits = torch.randn(40) * 2
    draws = 40_000
    for top_k, top_p in ((5, None), (8, 0.7), (40, 0.9), (1, 0.5)):
        expected = _expected(logits, top_k, top_p, temperature=0.8)
        rows = logits.expand(draws, -1)
        got = sample_logits(rows, top_k=top_k, top_p=top_p, temperature=0.8)
        freq = torch.bincount(got, minlength=40).float() / draws
        assert (freq[expected == 0] == 0).all()  # nothing outside top-k / top-p is ever drawn
        torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)


def test_top_k_draws_are_reproducible_and_top_k_1_is_greedy() -> None:
    logits = torch.randn(6, 100, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)
    a = sample_logits(logits, top_k=10, top_p=0.9, temperature=0.7)
    torch.manual_seed(3)
    b = sample_logits(logits, top_k=10, top_p=0.9, temperature=0.7)
    assert torch.equal(a, b) and a.shape == (6,)
    assert torch.equal(sample_logits(logits, top_k=1), logits.argmax(-1))
