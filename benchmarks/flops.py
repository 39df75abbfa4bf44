"""FLOPs of a forward pass, counted from the config, and this machine's matrix-multiply rate.

A forward's FLOPs are 2 x the multiply-adds of its matrix products (norms, activations, softmax,
rotary and residual additions are left out: elementwise work, a few percent at most):

- per layer, attention: the Q and O projections (``d_model x n_heads * d_head`` each), the K and
  V projections (``d_model x n_key_value_heads * d_head`` each: grouped-query attention has fewer
  key/value heads), the scores ``q @ k^T`` and the mixing ``pattern @ v``. Causal attention is
  counted as the **full square** (``seq x seq`` per head), the work a kernel that multiplies the
  masked half too does (the usual convention, as in the PaLM paper's model FLOPs); a kernel that
  skips the masked half does a little under half of it;
- per layer, the MLP: ``d_model x d_mlp`` twice, three times when gated (SwiGLU: gate, in, out);
- once, the unembedding ``d_model x d_vocab_out``.

The achieved rate of a forward is these FLOPs over its time; its fraction of the rate a large
square matrix product reaches on the same device and dtype says how much of the machine the
forward uses (1.0 would be a forward as efficient as one big GEMM).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch


def forward_flops(cfg: Any, batch: int, seq: int) -> float:
    """FLOPs of one forward over ``[batch, seq]`` tokens of a decoder-only model with the
    classic config fields (n_layers, d_model, n_heads, d_head, n_key_value_heads, d_mlp,
    gated_mlp, attn_only, d_vocab_out or d_vocab)."""
    if getattr(cfg, "num_experts", None):
        raise ValueError("forward_flops counts dense models only (cfg.num_experts is set).")
    tokens = batch * seq
    d_model, d_head = cfg.d_model, cfg.d_head
    q_width = cfg.n_heads * d_head
    kv_width = (cfg.n_key_value_heads or cfg.n_heads) * d_head
    projections = tokens * d_model * (2 * q_width + 2 * kv_width)  # Q, O; K, V
    attention = 2 * batch * cfg.n_heads * seq * seq * d_head  # scores and mixing, full square
    mlp = 0
    if not getattr(cfg, "attn_only", False):
        d_mlp = cfg.d_mlp if cfg.d_mlp is not None else 4 * d_model
        mlp = tokens * d_model * d_mlp * (3 if cfg.gated_mlp else 2)
    vocab = getattr(cfg, "d_vocab_out", -1)
    vocab = vocab if vocab and vocab > 0 else cfg.d_vocab
    unembed = tokens * d_model * vocab
    multiply_adds = cfg.n_layers * (projections + attention + mlp) + unembed
    return 2.0 * multiply_adds


def gemm_rate(
    device: str, dtype: torch.dtype, size: int | None = None, repeats: int = 5
) -> dict[str, float]:
    """FLOP/s of a ``size x size`` matrix product (2048 on a CPU, 8192 on a GPU) in `dtype` on
    `device`: ``{"best": ..., "median": ..., "size": ...}`` over `repeats` after a warm-up."""
    if size is None:
        size = 8192 if device.startswith("cuda") else 2048
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            sync()
            start = time.perf_counter()
            torch.matmul(a, b)
            sync()
            if i > 0:  # the first call is the warm-up
                times.append(time.perf_counter() - start)
    flops = 2.0 * size**3
    return {"best": flops / min(times), "median": flops / statistics.median(times), "size": size}
