"""Token embedding and unembedding."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from anatomist.config import TransformerConfig
from anatomist.hooks import HookPoint


class Embed(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype))

    def forward(self, tokens: Tensor) -> Tensor:  # [b, p] -> [b, p, d_model]
        embedded = self.W_E[tokens]
        return embedded if self.cfg.embed_scale == 1.0 else embedded * self.cfg.embed_scale


class Unembed(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab_out, dtype=cfg.dtype))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out, dtype=cfg.dtype))
        self.hook_in = HookPoint()  # [b, p, d_model], the normalized final residual
        self.hook_out = HookPoint()  # [b, p, d_vocab_out], the logits

    def forward(self, x: Tensor) -> Tensor:
        x = self.hook_in(x)
        logits = torch.addmm(self.b_U, x.reshape(-1, x.shape[-1]), self.W_U)
        logits = logits.view(*x.shape[:-1], -1)
        cap = self.cfg.output_logits_soft_cap
        if cap is not None:  # Gemma 2: bound the logits smoothly to (-cap, cap)
            logits = cap * torch.tanh(logits / cap)
        return self.hook_out(logits)
