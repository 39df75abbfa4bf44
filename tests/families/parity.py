"""The parity checks every family passes, against Hugging Face computing the same thing.

A family contributes cases in ``tests/families/cases/<family>.py``: a dict ``CASES`` mapping a
case name to a `Case` (the HF model class and a tiny config). test_parity.py runs every check
below on every case.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import anatomist
from tests.helpers import hf_logits, load, random_tokens, save_tiny


@dataclass(frozen=True)
class Case:
    model_class: Callable[[Any], Any]  # e.g. transformers.GPTNeoXForCausalLM
    config: Any  # a tiny transformers config instance
    processing: bool = True  # whether default weight processing applies
    seq_len: int = 12
    # Extra keyword arguments the HF forward needs for padded batches (besides the mask).
    hf_pads_with_position_ids: bool = True
    # Dynamic-NTK and LongRoPE frequencies follow the batch's longest row (as in HF), so a padded
    # row shorter than that matches HF's batch, not itself alone.
    rope_follows_longest_row: bool = False
    notes: dict[str, Any] = field(default_factory=dict)


def build(case: Case, folder: Path) -> Any:
    torch.manual_seed(0)
    hf = case.model_class(case.config)
    save_tiny(hf, folder)
    return hf


def generation_pair(case: Case, folder: Path) -> tuple[Any, anatomist.HookedTransformer]:
    """The HF model of `case` (saved to `folder`) set to generate every step (a random tiny model
    would stop at a random EOS), and anatomist's unprocessed load of the same folder."""
    hf = build(case, folder)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf, load(folder)


@functools.lru_cache(maxsize=2)
def _unprocessed(folder: Path) -> anatomist.HookedTransformer:
    """One unprocessed load per case, shared by the read-only checks (hooks are always removed)."""
    return load(folder)


def check_logits(hf: Any, folder: Path, case: Case) -> None:
    model = _unprocessed(folder)
    tokens = random_tokens(model.cfg.d_vocab, pos=case.seq_len)
    assert (model(tokens) - hf_logits(hf, tokens)).abs().max() <= 1e-5


def check_processed_log_probs(hf: Any, folder: Path, case: Case) -> None:
    model = load(folder, processing=case.processing)
    tokens = random_tokens(model.cfg.d_vocab, pos=case.seq_len)
    ours = model(tokens).log_softmax(-1)
    assert (ours - hf_logits(hf, tokens).log_softmax(-1)).abs().max() <= 1e-4


def check_hidden_states(hf: Any, folder: Path, case: Case) -> None:
    model = _unprocessed(folder)
    tokens = random_tokens(model.cfg.d_vocab, pos=case.seq_len)
    # A block's output: resid_post, or its normalization in Post-LN blocks.
    output = "normalized_resid_post" if model.cfg.post_layer_norm else "resid_post"
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(f"hook_{output}"))
    with torch.no_grad():
        hidden = hf(tokens, output_hidden_states=True).hidden_states
    n = model.cfg.n_layers
    assert len(hidden) == n + 1
    for layer in range(n - 1):
        assert (cache[output, layer] - hidden[layer + 1]).abs().max() <= 1e-5, layer
    # HF's last hidden state is taken after the final norm in most models, before it in some,
    # and after the projection out of the residual stream where there is one (OPT-350m).
    last = cache[output, n - 1]
    candidates = [last, model.ln_final(last)]
    if model.cfg.d_embed is not None:
        candidates = [c @ model.unembed.W_proj_out for c in candidates]
    diff = min((c - hidden[n]).abs().max() for c in candidates if c.shape == hidden[n].shape)
    assert diff <= 1e-5


def check_padded_batch(hf: Any, folder: Path, case: Case, side: str) -> None:
    model = _unprocessed(folder)
    lengths = [5, 9, case.seq_len]
    rows = [random_tokens(model.cfg.d_vocab, 1, n, seed=n)[0] for n in lengths]
    width = max(lengths)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(tokens)
    spans = []
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        tokens[i, span], mask[i, span] = row, 1
        spans.append(span)
    batched = model(tokens, attention_mask=mask)
    kwargs: dict[str, Any] = {"attention_mask": mask}
    if case.hf_pads_with_position_ids:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    theirs = hf_logits(hf, tokens, **kwargs)
    for i, row in enumerate(rows):
        # The same padded batch through both: the usual bound.
        assert (batched[i, spans[i]] - theirs[i, spans[i]]).abs().max() <= 1e-5
        if case.rope_follows_longest_row and len(row) < width:
            continue
        alone = model(row[None])[0]
        # A row alone against a padded batch: the same numbers through GEMMs of other shapes,
        # whose blocking rounds differently. One Gemma 3 case (logits up to 7.8) differs by
        # 1.05e-5, about 11 float32 ulps, from both our batch and transformers' batch; so 2e-5
        # here, while the batch against transformers' batch stays within 1e-5.
        assert (batched[i, spans[i]] - alone).abs().max() <= 2e-5
        assert (theirs[i, spans[i]] - alone).abs().max() <= 2e-5


def check_kv_cache(hf: Any, folder: Path, case: Case) -> None:
    """A prefix with a fresh cache, then a two-token and a one-token step, give the full forward's logits at
    those positions; a left-padded batch too. Dynamic-NTK/LongRoPE cases whose steps cross the
    pretraining length compare with HF's own incremental run instead (the cached keys keep the
    frequencies they were rotated with, in HF as here)."""
    from anatomist.model.kv_cache import KVCache

    model = _unprocessed(folder)
    tokens = random_tokens(model.cfg.d_vocab, pos=min(case.seq_len, 8))
    prefix = tokens.shape[1] - 3
    steps = [(prefix, prefix + 2), (prefix + 2, prefix + 3)]  # two tokens, then one

    def incremental(
        tokens: torch.Tensor, mask: torch.Tensor | None, shift: int = 0
    ) -> torch.Tensor:
        """The same steps; `shift` tokens cut from the front shorten the prefix."""
        cache = KVCache.init_cache(model.cfg, tokens.device, batch_size=tokens.shape[0])
        prefix_mask = None if mask is None else mask[:, : prefix - shift]
        out = [model(tokens[:, : prefix - shift], attention_mask=prefix_mask, past_kv_cache=cache)]
        for start, stop in steps:
            out.append(model(tokens[:, start - shift : stop - shift], past_kv_cache=cache))
        assert cache.length == tokens.shape[1]
        return torch.cat(out, dim=1)

    if case.rope_follows_longest_row:
        from transformers import DynamicCache

        hf_cache = DynamicCache(config=hf.config)
        with torch.no_grad():
            theirs = [hf(tokens[:, :prefix], cache=hf_cache).logits]
            for start, stop in steps:
                theirs.append(hf(tokens[:, start:stop], cache=hf_cache).logits)
        expected = torch.cat(theirs, dim=1)
    else:
        expected = model(tokens)
    assert (incremental(tokens, None) - expected).abs().max() <= 1e-4

    # Left padding: row 0 loses its first 3 tokens; each row's real positions match it alone.
    # Dynamic-NTK/LongRoPE frequencies follow the batch's longest row (row 1), as in HF, so the
    # shorter row then matches the batch's frequencies, not its own: only row 1 is compared.
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0
    padded = incremental(tokens, mask)
    length_dependent = any(
        getattr(block.attn.rotary, "length_dependent", False) for block in model.blocks
    )
    for row, start in ((1, 0),) if length_dependent else ((0, 3), (1, 0)):
        alone = incremental(tokens[row : row + 1, start:], None, shift=start)
        assert (padded[row, start:] - alone[0]).abs().max() <= 1e-4


def check_invariants(folder: Path, case: Case) -> None:
    """DESIGN.md's invariants, and every hook firing exactly once."""
    model = load(folder)
    model.set_use_attn_result(True)
    tokens = random_tokens(model.cfg.d_vocab, pos=case.seq_len)
    calls: dict[str, int] = {}

    def count(tensor: torch.Tensor, hook: anatomist.HookPoint) -> None:
        calls[hook.name or ""] = calls.get(hook.name or "", 0) + 1

    with model.hooks(fwd_hooks=[(lambda name: True, count)]):
        _, cache = model.run_with_cache(tokens)
    enabled = model.resolve_hook_names(None)
    assert sorted(calls) == sorted(enabled) and set(calls.values()) == {1}
    cfg = model.cfg
    for i in range(cfg.n_layers):
        pre, attn_out = cache["resid_pre", i], cache["attn_out", i]
        post = cache["resid_post", i]
        result, b_O = cache["result", i], model.blocks[i].attn.b_O
        if cfg.post_norm_type is None:  # a post-norm sits between the heads and attn_out
            assert (attn_out - (result.sum(-2) + b_O)).abs().max() <= 1e-5
        else:
            ln1_post = model.blocks[i].ln1_post
            assert (attn_out - ln1_post(result.sum(-2) + b_O)).abs().max() <= 1e-5
        pattern, scores = cache["pattern", i], cache["attn_scores", i]
        if cfg.attn_sinks:  # each head's sink logit joins the softmax; the pattern drops it
            sinks = model.blocks[i].attn.sinks[None, :, None, None].expand(*scores.shape[:-1], 1)
            expected = torch.cat([scores, sinks], dim=-1).softmax(-1)[..., :-1]
            assert (pattern.sum(-1) < 1).all()
        else:
            expected = scores.softmax(-1)
        assert (pattern - expected).abs().max() <= 1e-6
        if cfg.attn_only:
            assert (post - (pre + attn_out)).abs().max() <= 1e-5
        elif cfg.parallel_attn_mlp:
            assert (post - (pre + attn_out + cache["mlp_out", i])).abs().max() <= 1e-5
        else:
            mid = cache["resid_mid", i]
            assert (mid - (pre + attn_out)).abs().max() <= 1e-5
            if cfg.post_layer_norm:  # the MLP and the residual read ln1(resid_mid)
                mid = cache["normalized", i, "ln1"]
            assert (post - (mid + cache["mlp_out", i])).abs().max() <= 1e-5
