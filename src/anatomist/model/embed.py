"""Token embedding and unembedding.

Both speak d_model on the residual side. A model whose token embeddings are narrower or wider
than the residual stream (``cfg.d_embed``, OPT-350m's ``word_embed_proj_dim``) projects them in and
out with bias-free matrices, inside these modules::

    embed:   W_E[tokens] [b, p, d_embed] -> embed.hook_proj_in -> @ W_proj_in [d_embed, d_model]
    unembed: x [b, p, d_model] -> hook_in -> @ W_proj_out [d_model, d_embed]
             -> unembed.hook_proj_out [b, p, d_embed] -> @ W_U [d_embed, d_vocab_out] + b_U
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from anatomist.config import TransformerConfig
from anatomist.hooks import HookPoint
from anatomist.model.mlp import empty_weight, matmul_bias


class Embed(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.d_embed or cfg.d_model
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, width, dtype=cfg.dtype))
        if cfg.d_embed is not None:
            self.W_proj_in = nn.Parameter(torch.empty(width, cfg.d_model, dtype=cfg.dtype))
            self.hook_proj_in = HookPoint()  # [b, p, d_embed], W_E[tokens] before W_proj_in

    def forward(self, tokens: Tensor) -> Tensor:  # [b, p] -> [b, p, d_model]
        embedded = self.W_E[tokens]
        if self.cfg.embed_scale != 1.0:
            scale = self.cfg.embed_scale
            if self.cfg.embed_scale_in_dtype:  # Gemma: HF rounds sqrt(d_model) to the dtype first
                scale = float(torch.tensor(scale, dtype=embedded.dtype))
            embedded = embedded * scale
        if self.cfg.d_embed is not None:
            embedded = self.hook_proj_in(embedded) @ self.W_proj_in
        return embedded

    @property
    def W_E_residual(self) -> Tensor:
        """What each token writes to the residual stream, [d_vocab, d_model] (before any scale)."""
        return self.W_E @ self.W_proj_in if self.cfg.d_embed is not None else self.W_E


class Unembed(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.d_embed or cfg.d_model
        if cfg.d_embed is not None:
            self.W_proj_out = nn.Parameter(torch.empty(cfg.d_model, width, dtype=cfg.dtype))
            self.hook_proj_out = HookPoint()  # [b, p, d_embed], x @ W_proj_out, what W_U reads
        # Laid out [d_vocab_out, width] in memory, as transformers' lm_head (see empty_weight).
        self.W_U = nn.Parameter(empty_weight((width, cfg.d_vocab_out), (1, 0), cfg.dtype))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out, dtype=cfg.dtype))
        self.hook_in = HookPoint()  # [b, p, d_model], the normalized final residual
        self.hook_out = HookPoint()  # [b, p, d_vocab_out], the logits

    def forward(self, x: Tensor) -> Tensor:
        x = self.hook_in(x)
        if self.cfg.d_embed is not None:
            x = self.hook_proj_out(x @ self.W_proj_out)
        logits = matmul_bias(x.reshape(-1, x.shape[-1]), self.W_U, self.b_U)
        logits = logits.view(*x.shape[:-1], -1)
        cap = self.cfg.output_logits_soft_cap
        if cap is not None:  # Gemma 2: bound the logits smoothly to (-cap, cap)
            logits = cap * torch.tanh(logits / cap)
        return self.hook_out(logits)

    @property
    def W_U_residual(self) -> Tensor:
        """The unembedding as read from the residual stream, [d_model, d_vocab_out]."""
        return self.W_proj_out @ self.W_U if self.cfg.d_embed is not None else self.W_U
