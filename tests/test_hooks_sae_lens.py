"""SAELens's HookedSAETransformer on a random-init anatomist model (no download): it swaps hook
points for SAE wrappers and calls setup(); every HookedRootModule method it uses must behave as
classic. Expected values come from plain anatomist hooks with the SAE written out by hand."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
import torch

import anatomist

TOKENS = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def model(sae_lens: ModuleType) -> Any:
    cfg = anatomist.TransformerConfig(
        n_layers=2, d_model=32, n_ctx=32, d_head=8, d_vocab=50, act_fn="gelu_new", seed=0
    )
    return sae_lens.HookedSAETransformer(cfg)


def random_sae(sae_lens: ModuleType, hook: str, d_in: int = 32, out: str | None = None) -> Any:
    sae = sae_lens.StandardSAE(
        sae_lens.StandardSAEConfig(d_in=d_in, d_sae=64, dtype="float32", device="cpu")
    )
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.hook_name_out = out
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.normal_(0, 0.1)
    return sae


def encode(sae: Any, x: torch.Tensor) -> torch.Tensor:
    return torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)


def decode(sae: Any, acts: torch.Tensor) -> torch.Tensor:
    return acts @ sae.W_dec + sae.b_dec


# Hook points whose activation the model computes only when someone reads it (fused paths).
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.ln1.hook_normalized", "blocks.0.attn.hook_pattern"]


@pytest.mark.parametrize("hook", HOOKS)
def test_sae_replaces_the_activation_and_caches_its_hook_points(
    sae_lens: ModuleType, model: Any, hook: str
) -> None:
    sae = random_sae(sae_lens, hook, d_in=7 if hook.endswith("pattern") else 32)
    with torch.no_grad():
        expected = model.run_with_hooks(
            TOKENS, fwd_hooks=[(hook, lambda x, hook: decode(sae, encode(sae, x)))]
        )
        _, clean = model.run_with_cache(TOKENS, names_filter=hook)
        out, cache = model.run_with_cache_with_saes(TOKENS, saes=[sae])
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cache[f"{hook}.hook_sae_acts_post"], encode(sae, clean[hook]))
    assert hook in model.hook_dict and not model.acts_to_saes  # restored by setup()


def test_hooks_on_sae_features_and_the_error_term(sae_lens: ModuleType, model: Any) -> None:
    hook = "blocks.0.hook_resid_post"
    sae = random_sae(sae_lens, hook)
    with torch.no_grad():
        clean = model(TOKENS)
        # With the error term the model's output is unchanged; zeroing every feature leaves
        # b_dec plus the error: x - decode(encode(x)) + b_dec.
        kept = model.run_with_saes(TOKENS, saes=[sae], use_error_term=True)
        ablated = model.run_with_hooks_with_saes(
            TOKENS,
            saes=[sae],
            fwd_hooks=[(f"{hook}.hook_sae_acts_post", lambda a, hook: torch.zeros_like(a))],
        )
        expected = model.run_with_hooks(
            TOKENS,
            fwd_hooks=[(hook, lambda x, hook: decode(sae, torch.zeros(*x.shape[:-1], 64)))],
        )
    torch.testing.assert_close(kept, clean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ablated, expected, rtol=1e-4, atol=1e-5)
    assert not any(hp.fwd_hooks for hp in model.hook_points())


def test_transcoder_reads_one_hook_and_writes_another(sae_lens: ModuleType, model: Any) -> None:
    source, target = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
    transcoder = random_sae(sae_lens, source, out=target)
    with torch.no_grad():
        _, clean = model.run_with_cache(TOKENS, names_filter=source)
        expected = model.run_with_hooks(
            TOKENS,
            fwd_hooks=[
                (target, lambda x, hook: decode(transcoder, encode(transcoder, clean[source])))
            ],
        )
        model.add_sae(transcoder)
        assert model.hook_dict[source].has_hooks(including_permanent=True)
        out = model(TOKENS)
        model.reset_saes()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert not model.hook_dict[source].has_hooks() and target in model.hook_dict
