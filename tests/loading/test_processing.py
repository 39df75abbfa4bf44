"""Weight processing changes the weights, never what the model computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import anatomist
from anatomist.loading import processing
from tests.helpers import gpt2_like, llama_like, load, random_tokens, tiny_gpt2, tiny_llama

BUILDERS: dict[str, Any] = {
    "gpt2": (tiny_gpt2, {}),
    "llama-gqa-biases": (tiny_llama, {"num_key_value_heads": 2, "attention_bias": True}),
}
STEPS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


@pytest.fixture(scope="module", params=list(BUILDERS))
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    builder, overrides = BUILDERS[request.param]
    path = tmp_path_factory.mktemp(request.param)
    builder(path, **overrides)
    return path


@pytest.mark.parametrize("step", STEPS)
def test_each_step_keeps_log_probs(folder: Path, step: str) -> None:
    reference = load(folder)
    model = load(folder, processing=True, **{s: s == step for s in STEPS})
    tokens = random_tokens(model.cfg.d_vocab)
    expected = reference(tokens).log_softmax(-1)
    assert (model(tokens).log_softmax(-1) - expected).abs().max() <= 1e-4
    _, ref_cache = reference.run_with_cache(tokens)
    _, cache = model.run_with_cache(tokens)
    # Every step except centering the writing weights leaves the residual stream alone.
    if step != "center_writing_weights":
        assert (cache["resid_post", 1] - ref_cache["resid_post", 1]).abs().max() <= 1e-4


def test_processed_weights_have_the_promised_form(folder: Path) -> None:
    model = load(folder, processing=True)
    assert model.cfg.normalization_type in ("LNPre", "RMSPre")
    assert not any(name.endswith((".w", ".b")) for name, _ in model.named_parameters())
    assert model.W_U.mean(-1).abs().max() <= 1e-5  # center_unembed
    assert model.b_V.abs().max() == 0  # fold_value_biases
    if model.cfg.normalization_type == "LNPre":  # writing weights centered, reading weights too
        assert model.W_E.mean(-1).abs().max() <= 1e-5
        assert model.W_O.mean(-1).abs().max() <= 1e-5
        assert model.W_out.mean(-1).abs().max() <= 1e-5
        assert model.W_Q.mean(-2).abs().max() <= 1e-5
        assert model.W_in.mean(-2).abs().max() <= 1e-5


def test_center_writing_weights_refuses_rmsnorm(tmp_path: Path) -> None:
    tiny_llama(tmp_path)
    model = load(tmp_path)
    with pytest.raises(ValueError, match="LayerNorm"):
        model.center_writing_weights()


def test_half_precision_load_processes_in_float32(tmp_path: Path) -> None:
    tiny_gpt2(tmp_path)
    full = load(tmp_path, processing=True)
    half = load(tmp_path, processing=True, dtype="bfloat16")
    assert half.W_Q.dtype == torch.bfloat16 and half.cfg.dtype == torch.bfloat16
    assert torch.allclose(half.W_Q.float(), full.W_Q, atol=1e-2)


def test_hf_model_object_is_not_modified(tmp_path: Path) -> None:
    hf = tiny_gpt2(tmp_path)
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    model = anatomist.HookedTransformer.from_pretrained(str(tmp_path), hf_model=hf, progress=False)
    assert model.cfg.normalization_type == "LNPre"
    for key, value in hf.state_dict().items():
        assert torch.equal(value, before[key]), key


# --- half precision, group by group -----------------------------------------------------------

HALF_BUILDERS: dict[str, Any] = {
    "gpt2": (tiny_gpt2, {}),  # LayerNorm, biases everywhere
    "llama-gqa-biases": (  # RMSNorm, gated MLP, rotary, value biases to fold
        tiny_llama,
        {"num_key_value_heads": 2, "attention_bias": True},
    ),
}


def _half_checkpoint(folder: Path, family: str, dtype: torch.dtype) -> Path:
    builder, overrides = HALF_BUILDERS[family]
    builder(folder, **overrides).to(dtype).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", list(HALF_BUILDERS))
def test_half_checkpoint_processes_as_float32_then_cast(
    tmp_path: Path, family: str, dtype: torch.dtype
) -> None:
    # A half checkpoint is exact in float32, so processing one block at a time in float32 gives
    # the bits that processing the whole model in float32 and casting afterwards gave.
    _half_checkpoint(tmp_path, family, dtype)
    half = load(tmp_path, processing=True, dtype=dtype)
    full = load(tmp_path, processing=True).to(dtype)
    assert half.cfg.processing == full.cfg.processing
    assert half.cfg.processing["fold_value_biases"] and half.cfg.processing["fold_ln"]
    expected = full.state_dict()
    for name, value in half.state_dict().items():
        assert value.dtype == dtype, name
        assert torch.equal(value, expected[name]), name
    # Buffers are not rounded: the rotary frequencies stay float32, as without processing.
    unprocessed = load(tmp_path, dtype=dtype)
    buffers = dict(unprocessed.named_buffers())
    for name, buffer in half.named_buffers():
        assert buffer.dtype == buffers[name].dtype and torch.equal(buffer, buffers[name]), name
    if family != "gpt2":
        assert half.blocks[0].attn.rotary.inv_freq.dtype == torch.float32


@pytest.mark.parametrize("build", [gpt2_like, llama_like], ids=["gpt2", "llama"])
def test_group_by_group_equals_step_after_step(build: Any) -> None:
    grouped, stepwise = build(), build()
    grouped.process_weights_(refactor_factored_attn_matrices=True)
    layer_norm = stepwise.cfg.normalization_type == "LN"
    processing.fold_layer_norm(stepwise, center_weights=layer_norm)
    if layer_norm:
        processing.center_writing_weights(stepwise)
    processing.center_unembed(stepwise)
    processing.fold_value_biases(stepwise)
    processing.refactor_factored_attn_matrices(stepwise)
    for step in ("fold_ln", "center_unembed", "fold_value_biases"):
        assert grouped.cfg.processing[step] and stepwise.cfg.processing[step]
    assert grouped.cfg.normalization_type == stepwise.cfg.normalization_type
    expected = stepwise.state_dict()
    assert grouped.state_dict().keys() == expected.keys()
    for name, value in grouped.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_half_model_has_one_group_in_float32_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spy runs before every part of every step: the float32 parameters are then exactly those
    # of the group being processed, never the whole model (the load is in bfloat16 too).
    _half_checkpoint(tmp_path, "llama-gqa-biases", torch.bfloat16)
    process_weights, run_group = processing.process_weights, processing._run_group
    models: list[anatomist.HookedTransformer] = []
    float32_counts: list[int] = []

    def spy_process(model: anatomist.HookedTransformer, **kwargs: Any) -> None:
        models.append(model)
        process_weights(model, **kwargs)

    def spy_group(modules: list[torch.nn.Module], parts: list[Any], in_float32: bool) -> None:
        group = {id(p) for m in modules for p in m.parameters()}

        def check() -> None:
            in_float32 = {id(p) for p in models[0].parameters() if p.dtype == torch.float32}
            assert in_float32 == group, "parameters outside the group are float32"
            float32_counts.append(len(in_float32))

        run_group(modules, [_after(check, part) for part in parts], in_float32)

    monkeypatch.setattr(processing, "process_weights", spy_process)
    monkeypatch.setattr(processing, "_run_group", spy_group)
    model = load(tmp_path, processing=True, dtype="bfloat16")
    assert len(float32_counts) >= model.cfg.n_layers and min(float32_counts) > 0
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def _after(first: Any, second: Any) -> Any:
    def both() -> None:
        first()
        second()

    return both


@pytest.mark.parametrize("build", [gpt2_like, llama_like], ids=["gpt2", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_group_is_processed_on_its_own_device(build: Any, dtype: torch.dtype) -> None:
    # Block 1 on the meta device and the rest on the CPU: any arithmetic that moved a block's
    # tensors to another device (cfg.device) would fail on mixing meta and CPU tensors.
    model = build().to(dtype)
    model.blocks[1].to("meta")
    model.process_weights_()
    assert model.cfg.processing["fold_ln"]
    assert {(p.device.type, p.dtype) for p in model.blocks[1].parameters()} == {("meta", dtype)}
    assert {(p.device.type, p.dtype) for p in model.blocks[0].parameters()} == {("cpu", dtype)}
