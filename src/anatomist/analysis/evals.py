"""Quick behavioural evaluations: induction on repeated random tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class InductionResult:
    scores: Tensor  # [n_layers, n_heads]: mean attention from a repeated token to the token
    # that followed its previous occurrence
    loss_first: float  # mean next-token loss over the first (unpredictable) repeat
    loss_second: float  # ... and over the second, which induction can predict

    def top_heads(self, k: int = 10) -> list[tuple[int, int, float]]:
        flat = self.scores.flatten()
        top = flat.topk(min(k, flat.numel()))
        n_heads = self.scores.shape[1]
        return [
            (i // n_heads, i % n_heads, float(s)) for s, i in zip(top.values, top.indices.tolist())
        ]


def repeated_random_tokens(model: Any, seq_len: int, batch: int = 1, seed: int = 0) -> Tensor:
    """``[batch, 1 + 2 * seq_len]``: BOS (when the model uses one), then random tokens twice."""
    gen = torch.Generator().manual_seed(seed)
    low = 100 if model.cfg.d_vocab > 1000 else 0  # skip special and byte tokens of real vocabs
    half = torch.randint(low, model.cfg.d_vocab, (batch, seq_len), generator=gen)
    tokens = torch.cat([half, half], dim=1)
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else None
    if bos is not None and model.cfg.default_prepend_bos:
        tokens = torch.cat([torch.full((batch, 1), bos), tokens], dim=1)
    return tokens


def induction_scores(
    model: Any, seq_len: int = 40, batch: int = 1, seed: int = 0
) -> InductionResult:
    """Score every head for induction and measure the per-token loss on each repeat."""
    tokens = repeated_random_tokens(model, seq_len, batch, seed)
    offset = tokens.shape[1] - 2 * seq_len  # 1 with BOS, else 0
    loss, cache = model.run_with_cache(
        tokens,
        return_type="loss",
        loss_per_token=True,
        names_filter=lambda name: name.endswith("hook_pattern"),
    )
    # A token at position t in the second repeat attends to t - seq_len + 1 under induction.
    dest = torch.arange(offset + seq_len, offset + 2 * seq_len)
    src = dest - seq_len + 1
    scores = torch.stack(
        [
            cache["pattern", layer][:, :, dest, src].mean(dim=(0, -1))
            for layer in range(model.cfg.n_layers)
        ]
    )
    # loss[:, t] is the loss of predicting token t + 1.
    first = loss[:, offset : offset + seq_len - 1].mean()
    second = loss[:, offset + seq_len : offset + 2 * seq_len - 1].mean()
    return InductionResult(scores.float(), float(first), float(second))
