"""Half precision: our bfloat16/float16 error against Hugging Face's own.

For a representative tiny case of each family, Hugging Face in float32 is the reference. HF's
error is what HF loses in half precision (``from_pretrained(folder, dtype=...)``, its default SDPA
attention); ours is what we lose, against the same float32 reference. Ours may not be larger than
HF's by more than 10%, on the mean and on the max (the max with a floor of half a unit in the last
place of the largest logit: the final cast to the half dtype alone can move a logit by that).

Where we round exactly where HF does (Llama, Mistral, Qwen2 in bfloat16) the two errors are equal;
elsewhere the two round in different places (a fused GEMM + bias, a fused GELU, the query scaled
before or inside the kernel) and the errors differ at random, within the slack. Where HF computes
a step in float32 or rounds a constant to the half dtype, a config option makes us do the same
(Gemma, OLMo 2: `ROUNDING_OPTIONS`); `test_rounding_options_are_needed` shows that without each
of them the bound fails.

Weights: matrices of gain 0.5 (std 0.5/sqrt(fan_in)), random biases and norm weights, so the
activations have realistic magnitudes (O(1)) and half-precision rounding matters at d_model 32.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

import anatomist
from anatomist.config import TransformerConfig
from anatomist.model.norm import RMSNorm
from tests.families.parity import Case
from tests.helpers import load, random_tokens

HALF = (torch.bfloat16, torch.float16)

# family -> the case of tests/families/cases/<family>.py it is represented by.
PICKS = {
    "gpt2": "plain",
    "llama": "gqa",  # grouped-query attention
    "mistral": "window-gqa",  # sliding window
    "gemma2": "soft-capped-windowed",  # soft caps, post norms, (1 + w) norms, scaled embedding
    "gpt_neox": "pythia-quarter-rotary",  # parallel block, partial rotary
    "qwen2": "mha-untied",  # q/k/v biases
    "phi": "phi2-like",
    "olmo2": "mha",  # qk norm over all heads, post norms only
    "bloom": "four-heads",  # ALiBi
    "falcon": "rw-alibi",  # ALiBi added before scaling
    "mixtral": "top2-of-4-gqa",  # mixture of experts
    "gemma3": "local-global",
    "opt": "tied-relu",
    "helium": "mha-untied",  # RMSNorm weight in float32, adjacent rotary pairs
}

SLACK = 1.1  # ours may lose 10% more than HF

# The config options by which we round where HF does, not where Llama does (set by the families:
# docs/differences.md, "Half precision"), and for each the cases (family, dtype, left-padded) of
# test_half_logits_error_within_hf that fail without it.
ROUNDING_OPTIONS = {
    # RMSNorm: (x * w).to(half) instead of x.to(half) * w
    "norm_weight_in_float32": [("gemma2", torch.bfloat16, True), ("olmo2", torch.bfloat16, True)],
    # Gemma's 1 + w added in float32 at run time instead of rounded to half at loading
    "norm_weight_offset": [("gemma2", torch.bfloat16, True), ("gemma2", torch.float16, True)],
    # Gemma's sqrt(d_model) rounded to half before scaling the embeddings
    "embed_scale_in_dtype": [("gemma2", torch.float16, False)],
}

# Where run_with_cache (the explicit attention path, every hook on) still rounds elsewhere than HF,
# for reasons outside the norms and embeddings (docs/differences.md, "Half precision"): these get
# twice HF's error at most, a guard against the gap growing.
RUN_WITH_CACHE_GAPS = {
    ("olmo2", torch.bfloat16): "HF's OLMo 2 rotary runs in float32 and rounds once; ours in half",
    ("gemma3", torch.float16): (
        "the explicit path divides float32 scores by sqrt(query_pre_attn_scalar); HF's fused "
        "kernel rounds elsewhere, and Gemma's scale is not a power of two"
    ),
}
GAP_SLACK = 2.0

# Matrices' gain (std * sqrt(fan_in)): a gain of 1 makes these tiny random models chaotic, so
# one different rounding (an ulp) grows into a different max error every seed.
GAIN = 0.5
SEQ = 24
PAD = 7  # left padding of row 0 in the padded runs


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Matrices of gain GAIN, biases ~ 0.1 N(0, 1), norm weights ~ 1 + 0.1 N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                base = 1.0 if "norm" in name or "ln" in name else 0.0
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + base)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * GAIN / math.sqrt(p.shape[-1]))


def case_of(family: str) -> Case:
    case: Case = importlib.import_module(f"tests.families.cases.{family}").CASES[PICKS[family]]
    return case


@functools.cache
def checkpoint(family: str, root: Path) -> tuple[Any, Path]:
    """The float32 HF model of `family`'s case and the folder it was saved to."""
    case = case_of(family)
    torch.manual_seed(0)
    hf = case.model_class(case.config)
    randomize(hf)
    hf.eval()
    folder = root / family
    hf.save_pretrained(folder)
    return hf, folder


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dtypes")


def hf_half(hf: Any, folder: Path, dtype: torch.dtype, **kwargs: Any) -> Any:
    return type(hf).from_pretrained(folder, dtype=dtype, **kwargs).eval()


def inputs(vocab: int, padded: bool, case: Case) -> tuple[torch.Tensor, dict[str, Any]]:
    """Tokens ``[2, SEQ]`` and the HF keyword arguments; row 0 left-padded when `padded`."""
    tokens = random_tokens(vocab, 2, SEQ, seed=3)
    if not padded:
        return tokens, {}
    mask = torch.ones_like(tokens)
    mask[0, :PAD] = 0
    kwargs: dict[str, Any] = {"attention_mask": mask}
    if case.hf_pads_with_position_ids:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    return tokens, kwargs


def real(t: torch.Tensor, padded: bool) -> torch.Tensor:
    """The real (unpadded) positions of ``[2, SEQ, ...]``, flattened."""
    if not padded:
        return t.float().flatten()
    return torch.cat([t[0, PAD:].float().flatten(), t[1].float().flatten()])


def half_ulp(reference: torch.Tensor, dtype: torch.dtype) -> float:
    """Half a unit in the last place, in `dtype`, of the largest value of `reference`."""
    top = float(reference.abs().max())
    return torch.finfo(dtype).eps * 2.0 ** math.floor(math.log2(top)) / 2 if top else 0.0


def assert_within_hf(
    ours: torch.Tensor,
    theirs: torch.Tensor,
    reference: torch.Tensor,
    dtype: torch.dtype,
    slack: float = SLACK,
) -> tuple[float, float]:
    """Our error vs the float32 reference is at most `slack` x HF's (the max up to half an ulp)."""
    ours_err, hf_err = (ours - reference).abs(), (theirs - reference).abs()
    floor = half_ulp(reference, dtype)
    assert ours_err.max() <= slack * hf_err.max() + floor, (
        f"max error: ours {ours_err.max():.4g}, HF {hf_err.max():.4g} (floor {floor:.3g})"
    )
    assert ours_err.mean() <= slack * hf_err.mean(), (
        f"mean error: ours {ours_err.mean():.4g}, HF {hf_err.mean():.4g}"
    )
    return float(hf_err.max()), float(ours_err.max())


def params() -> list[Any]:
    return [
        pytest.param(family, dtype, id=f"{family}-{str(dtype)[6:]}")
        for family in PICKS
        for dtype in HALF
    ]


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@pytest.mark.parametrize(("family", "dtype"), params())
def test_half_logits_error_within_hf(
    family: str, dtype: torch.dtype, padded: bool, root: Path
) -> None:
    hf, folder = checkpoint(family, root)
    tokens, kwargs = inputs(hf.config.vocab_size, padded, case_of(family))
    with torch.no_grad():
        reference = real(hf(tokens, **kwargs).logits, padded)
        theirs = real(hf_half(hf, folder, dtype)(tokens, **kwargs).logits, padded)
    model = load(folder, dtype=dtype)
    assert model.W_E.dtype == dtype
    ours = real(model(tokens, attention_mask=kwargs.get("attention_mask")), padded)
    assert_within_hf(ours, theirs, reference, dtype)


def without_option(folder: Path, option: str, dtype: torch.dtype) -> anatomist.HookedTransformer:
    """The model as loaded before `option` existed: in float32, with `option` at its default (an
    offset folded into the norms' weights, as the weight rules did), then cast to `dtype`."""
    model = load(folder)
    assert getattr(model.cfg, option), f"the family does not set {option}"
    if option == "norm_weight_offset":
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, RMSNorm):
                    module.w += model.cfg.norm_weight_offset
    default = {f.name: f.default for f in dataclasses.fields(TransformerConfig)}[option]
    setattr(model.cfg, option, default)
    return model.to(dtype)


@pytest.mark.parametrize(
    ("option", "family", "dtype", "padded"),
    [
        pytest.param(option, *case, id=f"{option}-{case[0]}-{str(case[1])[6:]}-{case[2]}")
        for option, cases in ROUNDING_OPTIONS.items()
        for case in cases
    ],
)
def test_rounding_options_are_needed(
    option: str, family: str, dtype: torch.dtype, padded: bool, root: Path
) -> None:
    """The bound of test_half_logits_error_within_hf tells the options apart: each case of
    ROUNDING_OPTIONS meets it with the option and fails it without (so reverting the option, or
    the family no longer setting it, fails that test)."""
    hf, folder = checkpoint(family, root)
    tokens, kwargs = inputs(hf.config.vocab_size, padded, case_of(family))
    with torch.no_grad():
        reference = real(hf(tokens, **kwargs).logits, padded)
        theirs = real(hf_half(hf, folder, dtype)(tokens, **kwargs).logits, padded)
    mask = kwargs.get("attention_mask")
    assert_within_hf(
        real(load(folder, dtype=dtype)(tokens, attention_mask=mask), padded),
        theirs,
        reference,
        dtype,
    )
    reverted = without_option(folder, option, dtype)
    with pytest.raises(AssertionError, match="error: ours"):
        assert_within_hf(
            real(reverted(tokens, attention_mask=mask), padded), theirs, reference, dtype
        )


@pytest.mark.parametrize(("family", "dtype"), params())
def test_half_run_with_cache(family: str, dtype: torch.dtype, root: Path) -> None:
    """`run_with_cache` in half precision (the explicit attention path, every hook on): cached
    activations in the half dtype, residuals and logits within HF's own half-precision error."""
    hf, folder = checkpoint(family, root)
    tokens, _ = inputs(hf.config.vocab_size, False, case_of(family))
    slack = GAP_SLACK if (family, dtype) in RUN_WITH_CACHE_GAPS else SLACK
    model = anatomist.HookedTransformer.from_pretrained_no_processing(
        folder, dtype=dtype, progress=False
    )
    logits, cache = model.run_with_cache(tokens)
    for name, activation in cache.items():
        if not activation.is_floating_point():
            continue  # token ids, expert indices
        # The norms' scales and the explicit attention path are computed, and kept, in float32
        # (docs/differences.md, "Half precision").
        in_float32 = name.endswith(("hook_scale", "hook_attn_scores", "hook_pattern"))
        expected = torch.float32 if in_float32 else dtype
        assert activation.dtype == expected, name

    with torch.no_grad():
        reference = hf(tokens, output_hidden_states=True)
        theirs = hf_half(hf, folder, dtype)(tokens, output_hidden_states=True)
    output = "normalized_resid_post" if model.cfg.post_layer_norm else "resid_post"
    # HF's last hidden state is taken after the final norm; the logits cover the last layer.
    for layer in range(model.cfg.n_layers - 1):
        assert_within_hf(
            real(cache[output, layer], False),
            real(theirs.hidden_states[layer + 1], False),
            real(reference.hidden_states[layer + 1], False),
            dtype,
            slack,
        )
    assert_within_hf(
        real(logits, False), real(theirs.logits, False), real(reference.logits, False), dtype, slack
    )


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_processed_half_precision(family: str, root: Path) -> None:
    """Weight processing (fold_ln, centering, ...) runs on the weights as loaded in bfloat16,
    one block at a time in float32: the weights are those of the checkpoint rounded to
    bfloat16, processed in float32 and rounded again, and the log-probs stay within 1.5x HF's
    bfloat16 error (log-probs: centering the unembedding shifts logits by a constant)."""
    hf, folder = checkpoint(family, root)
    processed = load(folder).to(torch.bfloat16).to(torch.float32)
    processed.process_weights_()
    half = load(folder, processing=True, dtype=torch.bfloat16)
    assert half.cfg.dtype == torch.bfloat16
    full_weights = processed.state_dict()
    for name, weight in half.state_dict().items():
        if weight.is_floating_point():
            assert weight.dtype == torch.bfloat16, name
            assert torch.equal(weight, full_weights[name].to(torch.bfloat16)), name

    tokens, _ = inputs(hf.config.vocab_size, False, case_of(family))
    with torch.no_grad():
        reference = hf(tokens).logits.log_softmax(-1)
        theirs = hf_half(hf, folder, torch.bfloat16)(tokens).logits.float().log_softmax(-1)
    ours = half(tokens).float().log_softmax(-1)
    hf_err, ours_err = (theirs - reference).abs().max(), (ours - reference).abs().max()
    assert ours_err <= 1.5 * hf_err, (ours_err, hf_err)


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: str(d)[6:])
def test_half_error_within_hf_eager(dtype: torch.dtype, root: Path) -> None:
    """Against HF's eager attention too (scores, softmax in float32, pattern @ v), for both of
    our paths: the fused forward and the explicit one (a hook on every pattern)."""
    hf, folder = checkpoint("llama", root)
    tokens, kwargs = inputs(hf.config.vocab_size, True, case_of("llama"))
    eager = hf_half(hf, folder, dtype, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    with torch.no_grad():
        reference = real(hf(tokens, **kwargs).logits, True)
        theirs = real(eager(tokens, **kwargs).logits, True)
    model = load(folder, dtype=dtype)
    fused = real(model(tokens, attention_mask=kwargs["attention_mask"]), True)
    assert_within_hf(fused, theirs, reference, dtype)
    explicit = model.run_with_hooks(
        tokens,
        attention_mask=kwargs["attention_mask"],
        fwd_hooks=[(lambda name: name.endswith("hook_pattern"), lambda t, hook: None)],
    )
    assert_within_hf(real(explicit, True), theirs, reference, dtype)


def test_hf_keeps_float32_rotary_frequencies(root: Path) -> None:
    """Why the reference is HF's from_pretrained(dtype=...) and not `.to(dtype)`: the latter
    rounds HF's rotary frequencies to the half dtype, which no loaded HF model does."""
    hf, folder = checkpoint("llama", root)
    loaded = hf_half(hf, folder, torch.bfloat16)
    assert isinstance(loaded, transformers.LlamaForCausalLM)
    assert loaded.model.rotary_emb.inv_freq.dtype == torch.float32
