"""Choosing the next token from logits: greedy, temperature, top-k, top-p, frequency penalty.

`sample_logits` is the classic ``utils.sample_logits``; the models' ``generate`` methods use it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_logits(
    final_logits: Tensor,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    tokens: Tensor | None = None,
) -> Tensor:
    """One sampled token id per row of `final_logits` ``[b, d_vocab]`` -> ``[b]``.

    ``temperature == 0`` is greedy. Otherwise the logits are divided by `temperature`, each
    token already in `tokens` ``[b, p]`` loses ``freq_penalty`` per occurrence, and sampling is
    restricted to the `top_k` most likely tokens and/or the smallest set whose probability
    reaches `top_p` (the most likely token is always kept).
    """
    if temperature == 0.0:
        return final_logits.argmax(-1)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}.")
    logits = final_logits.float() / temperature
    if freq_penalty and tokens is not None:
        counts = torch.zeros_like(logits)
        counts.scatter_add_(
            -1, tokens.to(logits.device), torch.ones_like(tokens, dtype=counts.dtype)
        )
        logits = logits - freq_penalty * counts
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        ordered, order = logits.sort(dim=-1, descending=True)
        before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # mass of better tokens
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.distributions.Categorical(logits=logits).sample()
