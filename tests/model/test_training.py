"""A randomly initialised HookedTransformer trains (the toy-model use case)."""

from __future__ import annotations

import torch

import anatomist


def test_toy_model_learns_to_copy() -> None:
    cfg = anatomist.TransformerConfig(
        n_layers=2, d_model=32, d_head=8, n_ctx=24, d_vocab=16, attn_only=True, seed=0
    )
    model = anatomist.HookedTransformer(cfg)
    assert all(p.requires_grad for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)

    def batch() -> torch.Tensor:
        half = torch.randint(0, 16, (32, 10), generator=gen)
        return torch.cat([half, half], dim=1)  # the second half repeats the first

    losses = []
    for _ in range(150):
        tokens = batch()
        loss = model(tokens, return_type="loss", loss_per_token=True)[:, 10:].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Random guessing costs log(16) = 2.77 nats; copying from context costs far less.
    assert sum(losses[:10]) / 10 > 2.5
    assert sum(losses[-10:]) / 10 < 1.0
