"""Logit lens: read the residual stream after each layer through the final norm and unembedding.

(nostalgebraist, "interpreting GPT: the logit lens", 2020.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def top_predictions(model: Any, prompt: str, k: int = 5) -> list[tuple[str, float]]:
    """The `k` most likely next tokens after `prompt`, with their probabilities."""
    logits = model(prompt)[0, -1]
    probs = logits.float().softmax(-1)
    top = probs.topk(k)
    return [
        (model.to_single_str_token(t), float(p))
        for p, t in zip(top.values.tolist(), top.indices.tolist())
    ]


def layer_logits(model: Any, prompt: str | Tensor, position: int = -1) -> tuple[list[str], Tensor]:
    """Logits ``[n_layers + 1, d_vocab]`` at `position` from the residual stream before each
    block and after the last one, each passed through ``ln_final`` and the unembedding."""
    n = model.cfg.n_layers
    # A post-LayerNorm block's output (what the next block and ln_final read) is its
    # normalized residual, not hook_resid_post.
    last = "hook_normalized_resid_post" if model.cfg.post_layer_norm else "hook_resid_post"
    names = [f"blocks.{i}.hook_resid_pre" for i in range(n)] + [f"blocks.{n - 1}.{last}"]
    _, cache = model.run_with_cache(prompt, names_filter=names, return_type=None)
    stack = torch.stack([cache[name][:, position] for name in names], dim=0)  # [L + 1, b, d]
    logits = model.unembed(model.ln_final(stack))[:, 0]
    labels = ["embeddings"] + [f"after L{i}" for i in range(n)]
    return labels, logits


def logit_lens_ranks(model: Any, prompt: str, answer: str) -> list[tuple[str, int]]:
    """Rank of `answer`'s first token among all tokens at the last position, per layer."""
    token = int(model.to_tokens(answer, prepend_bos=False)[0, 0])
    labels, logits = layer_logits(model, prompt)
    ranks = (logits > logits[:, token : token + 1]).sum(-1).tolist()
    return list(zip(labels, (int(r) for r in ranks)))
