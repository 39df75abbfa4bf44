"""HookedHFModel: hook points on Hugging Face models we do not port (CodeGen, MPT, Mamba), checked
against transformers computing the same thing, and against the native model on GPT-2 and Llama."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as hf

import anatomist
from anatomist import patching
from anatomist.analysis.logit_lens import logit_lens
from anatomist.families.registry import UnsupportedArchitectureError
from anatomist.hf_model import (
    ATTENTION_NAMES,
    OUT_PROJECTION_NAMES,
    HookedHFModel,
    NeedsNativeFamilyError,
)
from anatomist.hooks import UnknownHookError
from anatomist.loading.errors import UnknownModelError

VOCAB = 100


def tiny(kind: str) -> Any:
    configs: dict[str, Callable[[], Any]] = {
        "gpt2": lambda: hf.GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=4,
            vocab_size=VOCAB,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        ),
        "llama": lambda: hf.LlamaConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=VOCAB,
            max_position_embeddings=64,
        ),
        "codegen": lambda: hf.CodeGenConfig(
            n_layer=2,
            n_embd=32,
            n_head=4,
            vocab_size=VOCAB,
            n_positions=64,
            rotary_dim=4,
            bos_token_id=0,
            eos_token_id=0,
        ),
        "mpt": lambda: hf.MptConfig(
            n_layers=2, d_model=32, n_heads=4, vocab_size=VOCAB, max_seq_len=64
        ),
        "mamba": lambda: hf.MambaConfig(
            num_hidden_layers=2, hidden_size=32, vocab_size=VOCAB, state_size=4
        ),
    }
    torch.manual_seed(0)
    return hf.AutoModelForCausalLM.from_config(configs[kind]()).eval()


def tokens(batch: int = 2, pos: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


NOT_PORTED = ["codegen", "mpt", "mamba"]
ATTENTION = ["gpt2", "llama", "codegen", "mpt"]


@pytest.mark.parametrize("kind", ["gpt2", "llama", *NOT_PORTED])
def test_logits_are_the_hf_models_and_hook_points_see_its_hidden_states(kind: str) -> None:
    model = tiny(kind)
    wrapped = HookedHFModel(model)
    x = tokens()
    with torch.no_grad():
        ref = model(x, output_hidden_states=True, use_cache=False)
        assert torch.equal(wrapped(x), ref.logits)  # no hooks: it is that model
        logits, cache = wrapped.run_with_cache(x, names_filter=lambda n: "pattern" not in n)
    assert torch.equal(logits, ref.logits)
    states = ref.hidden_states
    n = wrapped.cfg.n_layers
    assert n == 2
    if kind == "mamba":  # transformers records Mamba's states after each layer
        assert torch.equal(cache["blocks.1.hook_resid_pre"], states[0])
        layer_outputs = states[:n]
    else:
        for i in range(n):
            assert torch.equal(cache[f"blocks.{i}.hook_resid_pre"], states[i]), i
        assert torch.equal(cache["hook_embed"], states[0]) or kind in ("gpt2", "codegen", "mpt")
        layer_outputs = states[1:]
    for i in range(n - 1):
        assert torch.equal(cache[f"blocks.{i}.hook_resid_post"], layer_outputs[i]), i
    # The last state transformers reports is the final norm's output.
    assert torch.equal(cache["ln_final.hook_normalized"], states[-1])
    assert torch.equal(cache["hook_logits"], ref.logits)
    # Every submodule by its Hugging Face path.
    path = next(p for p, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    assert path in wrapped.hook_dict and cache[path].shape[:2] == x.shape


@pytest.mark.parametrize("kind", ATTENTION)
def test_attention_and_mlp_outputs_are_found_and_editing_them_edits_the_run(kind: str) -> None:
    model = tiny(kind)
    wrapped = HookedHFModel(model)
    x = tokens()
    layer_list = wrapped._layers
    mlp = next(getattr(layer_list[0], n) for n in ("mlp", "ffn") if hasattr(layer_list[0], n))
    # The same ablation by hand on the transformers model.
    handle = mlp.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    with torch.no_grad():
        expected = model(x, use_cache=False).logits
    handle.remove()
    with torch.no_grad():
        ablated = wrapped.run_with_hooks(
            x, fwd_hooks=[("blocks.0.hook_mlp_out", lambda t, hook: torch.zeros_like(t))]
        )
        clean = wrapped(x)
    assert torch.equal(ablated, expected) and not torch.equal(ablated, clean)
    assert not wrapped.hook_dict["blocks.0.hook_mlp_out"].hooked_here()  # removed after the run
    wrapped.add_hook("blocks.0.hook_mlp_out", lambda t, hook: torch.zeros_like(t))
    with torch.no_grad():
        assert torch.equal(wrapped(x), expected)  # a permanent-until-reset hook
    wrapped.reset_hooks()
    with torch.no_grad():
        assert torch.equal(wrapped(x), clean)
    _, cache = wrapped.run_with_cache(
        x, names_filter=["blocks.1.hook_attn_out", "blocks.1.attn.hook_z"]
    )
    assert cache["blocks.1.hook_attn_out"].shape == (2, 7, 32)
    # hook_z: each head's output, which the output projection turns into the attention output.
    z = cache["blocks.1.attn.hook_z"]
    assert z.shape == (2, 7, 4, 8)
    attention = next(
        getattr(layer_list[1], n) for n in ATTENTION_NAMES if hasattr(layer_list[1], n)
    )
    projection = next(getattr(attention, n) for n in OUT_PROJECTION_NAMES if hasattr(attention, n))
    with torch.no_grad():
        torch.testing.assert_close(projection(z.flatten(-2)), cache["blocks.1.hook_attn_out"])
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert wrapped.unwrap() is model
    hooks_after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert hooks_after < hooks_before and hooks_before - hooks_after == len(wrapped.hook_dict)


@pytest.mark.parametrize("kind", ATTENTION)
def test_patterns_switch_to_eager_attention_and_equal_hf_attentions(kind: str) -> None:
    model = tiny(kind)
    wrapped = HookedHFModel(model)
    x = tokens()
    before = model.config._attn_implementation  # MPT has only eager attention: no warning
    said = pytest.warns(UserWarning, match="eager attention")
    with said if before != "eager" else contextlib.nullcontext():
        _, cache = wrapped.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern"))
    assert model.config._attn_implementation == before  # switched back
    model.set_attn_implementation("eager")
    with torch.no_grad():
        ref = model(x, output_attentions=True, use_cache=False).attentions
    for i in range(2):
        assert torch.equal(cache["pattern", i], ref[i])
        assert torch.allclose(cache["pattern", i].sum(-1), torch.ones(2, 4, 7))
    with pytest.raises(NeedsNativeFamilyError, match="read-only"):
        wrapped.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda t, hook: t * 0)])


def test_gradients_through_the_wrapper() -> None:
    wrapped = HookedHFModel(tiny("mpt"))
    _, cache = wrapped.run_with_cache(
        tokens(), names_filter="blocks.0.hook_resid_post", incl_bwd=True, return_type="loss"
    )
    grad = cache["blocks.0.hook_resid_post_grad"]
    assert grad.shape == (2, 7, 32) and grad.abs().sum() > 0


def native_and_wrapped(kind: str, tmp_path: Path) -> tuple[Any, HookedHFModel]:
    model = tiny(kind)
    model.save_pretrained(tmp_path)
    native = anatomist.HookedTransformer.from_pretrained_no_processing(tmp_path, progress=False)
    return native, HookedHFModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_patching_through_the_wrapper_equals_the_native_model(kind: str, tmp_path: Path) -> None:
    native, wrapped = native_and_wrapped(kind, tmp_path)
    clean, corrupted = tokens(1, 6, seed=2), tokens(1, 6, seed=3)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[0, -1, 5] - logits[0, -1, 7]

    _, clean_cache = wrapped.run_with_cache(
        clean, names_filter=lambda n: n.endswith(("_out", "hook_z")) or "resid" in n
    )
    _, native_cache = native.run_with_cache(clean)
    assert not wrapped.hooked_modules()  # its own watchers do not count: the fast path runs
    torch.testing.assert_close(
        clean_cache["blocks.1.attn.hook_z"], native_cache["z", 1], atol=1e-5, rtol=1e-5
    )
    heads = patching.get_act_patch_attn_head_out_all_pos
    ours, theirs = (
        heads(wrapped, corrupted, clean_cache, metric),
        heads(native, corrupted, native_cache, metric),
    )
    assert ours.shape == (2, 4) and ours.abs().max() > 1e-3
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    for preset in (patching.get_act_patch_resid_pre, patching.get_act_patch_mlp_out):
        ours = preset(wrapped, corrupted, clean_cache, metric)
        theirs = preset(native, corrupted, native_cache, metric)
        assert ours.shape == (2, 6)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        assert ours.abs().max() > 1e-3  # the sweep measured something
    lens = wrapped.logit_lens(clean)
    assert lens.shape == (3, 1, VOCAB)
    torch.testing.assert_close(lens[-1], wrapped(clean)[:, -1], atol=1e-5, rtol=1e-5)
    native_lens, native_labels = logit_lens(native, clean, [5, 7], None, return_labels=True)
    ours, labels = logit_lens(wrapped, clean, [5, 7], None, return_labels=True)
    assert labels == native_labels == ["0_pre", "1_pre", "final_post"]
    assert ours.shape == (3, 1, 6, 2)
    torch.testing.assert_close(ours, native_lens, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lens, logit_lens(native, clean), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="incl_mid needs"):
        logit_lens(wrapped, clean, incl_mid=True)


def test_generate_goes_through_transformers_with_hooks_firing(tmp_path: Path) -> None:
    model = tiny("codegen")
    wrapped = HookedHFModel(model)
    x = tokens(1, 4)
    out = wrapped.generate(x, max_new_tokens=5, do_sample=False, stop_at_eos=False)
    expected = model.generate(
        x, max_new_tokens=5, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(x)
    )
    assert torch.equal(out, expected) and out.shape == (1, 9)
    # Past EOS when asked: greedy decoding made EOS the only next token, then 4 more.
    eos_first = wrapped.generate(
        x, max_new_tokens=5, do_sample=False, stop_at_eos=False, eos_token_id=int(out[0, 4])
    )
    assert eos_first.shape == (1, 9) and torch.equal(eos_first, out)
    stopped = wrapped.generate(x, max_new_tokens=5, do_sample=False, eos_token_id=int(out[0, 4]))
    assert torch.equal(stopped, out[:, :5])
    with pytest.raises(ValueError, match="return_type must be one of"):
        wrapped.generate(x, return_type="logits")
    seen: list[int] = []
    with wrapped.hooks(fwd_hooks=[("hook_embed", lambda t, hook: seen.append(t.shape[1]))]):
        wrapped.generate(x, max_new_tokens=3, do_sample=False, stop_at_eos=False)
    assert seen == [4, 1, 1]  # the prompt, then one token per step (KV cache)
    patterns: list[tuple[int, ...]] = []
    hook = ("blocks.1.attn.hook_pattern", lambda t, hook: patterns.append(tuple(t.shape)))
    with wrapped.hooks(fwd_hooks=[hook]), pytest.warns(UserWarning, match="eager"):
        again = wrapped.generate(x, max_new_tokens=3, do_sample=False, stop_at_eos=False)
    assert torch.equal(again, out[:, :7])
    assert patterns == [(1, 4, 4, 4), (1, 4, 1, 5), (1, 4, 1, 6)]


def test_what_needs_a_native_family_says_so() -> None:
    wrapped = HookedHFModel(tiny("codegen"))
    for name in ("W_Q", "OV", "process_weights_", "blocks"):
        with pytest.raises(NeedsNativeFamilyError, match="native family"):
            getattr(wrapped, name)
    assert not hasattr(wrapped, "W_U")
    with pytest.raises(UnknownHookError, match="native family"):
        wrapped.run_with_cache(tokens(), names_filter=["blocks.0.attn.hook_q"])
    mamba = HookedHFModel(tiny("mamba"))  # no attention: no heads
    with pytest.raises(UnknownHookError, match="native family"):
        mamba.run_with_cache(tokens(), names_filter=["blocks.0.attn.hook_z"])
    with pytest.raises(UnknownHookError, match="Closest hook names: blocks.0.hook_resid_pre"):
        wrapped.run_with_cache(tokens(), names_filter=["blocks.0.hook_resid_pr"])
    with pytest.raises(ValueError, match=r"outside \[0, d_vocab=100\)"):
        wrapped(torch.tensor([[1, VOCAB]]))
    _, cache = wrapped.run_with_cache(
        tokens(), names_filter=lambda n: n.startswith(("blocks", "hook"))
    )
    with pytest.raises(NeedsNativeFamilyError, match="ln_final needs"):
        cache.accumulated_resid(apply_ln=True)
    # The boundaries decompose: embedding + every attention and MLP output = the last stream
    # (CodeGen's attention and MLP read the same input in parallel and both add to it).
    parts = cache.decompose_resid()
    assert parts.shape[0] == 5
    torch.testing.assert_close(parts.sum(0), cache["blocks.1.hook_resid_post"])


def test_loading_offline_and_the_native_loader_names_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny("mpt")
    model.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="HookedHFModel"):
        anatomist.HookedTransformer.from_pretrained(tmp_path, progress=False)
    wrapped = HookedHFModel.from_pretrained(tmp_path)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(wrapped(x), model(x, use_cache=False).logits)
    loss = wrapped(x, return_type="loss")
    per_token = wrapped(x, return_type="loss", loss_per_token=True)
    assert per_token.shape == (2, 6) and torch.allclose(per_token.mean(), loss)
    both = wrapped(x, return_type="both")
    assert torch.equal(both.loss, loss) and both.logits.shape == (2, 7, VOCAB)
    # A repo id in a Hugging Face cache folder (the hub's layout), found offline.
    snapshot = tmp_path / "cache" / "models--tiny--mpt" / "snapshots" / "0123abc"
    model.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    cached = HookedHFModel.from_pretrained("tiny/mpt")
    with torch.no_grad():
        assert torch.equal(cached(x), model(x, use_cache=False).logits)
    with pytest.raises(ValueError, match="trust_remote_code=True is refused"):
        HookedHFModel.from_pretrained(tmp_path, trust_remote_code=True)
    with pytest.raises(ValueError, match="local_files_only=False is refused"):
        HookedHFModel.from_pretrained(tmp_path, local_files_only=False)
    with pytest.raises(ValueError, match="'float33' is not a torch dtype"):
        HookedHFModel.from_pretrained(tmp_path, dtype="float33")
    half = HookedHFModel.from_pretrained(tmp_path, dtype="bfloat16", local_files_only=True)
    assert half.cfg.dtype == torch.bfloat16 and half(x).dtype == torch.bfloat16
    with pytest.raises(UnknownModelError, match="does not exist"):
        HookedHFModel.from_pretrained(tmp_path / "missing")
    with pytest.raises(UnknownModelError, match="smollm2-135m-instruct"):
        HookedHFModel.from_pretrained("smollm2-135m-instrct")  # the nearest names are listed


def word_tokenizer() -> Any:
    """A word-level tokenizer over VOCAB words (ids 0 and 1 are BOS and EOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<s>", "</s>", "Hello", "world", *(f"w{i}" for i in range(VOCAB - 4))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return hf.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def test_text_in_and_out_with_a_tokenizer() -> None:
    model = tiny("llama")
    wrapped = HookedHFModel(model, word_tokenizer())
    ids = wrapped.to_tokens("Hello world")
    assert ids.tolist() == [[0, 2, 3]]  # BOS prepended, as the classic default
    assert wrapped.to_string(ids[0, 1:]) == "Hello world"
    with torch.no_grad():
        assert torch.equal(wrapped("Hello world"), model(ids, use_cache=False).logits)
        batch = wrapped(["Hello", "Hello world world"], return_type="loss", loss_per_token=True)
    assert batch.shape == (2, 3)
    # A left-padded row computes what it computes alone (positions count from its first token).
    with torch.no_grad():
        padded = wrapped(["Hello world", "Hello world world"], padding_side="left")
        alone = wrapped("Hello world")
    torch.testing.assert_close(padded[0, 1:], alone[0], atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = wrapped.generate("Hello", max_new_tokens=2, do_sample=False, verbose=False)
    assert isinstance(text, str) and text.startswith("Hello") and len(text.split()) == 3


@pytest.mark.slow
def test_a_packaged_gguf_model_loads_with_its_tokenizer(hf_smollm2: Any) -> None:
    from tests.conftest import smollm2_gguf

    assert smollm2_gguf() is not None
    # By its packaged name, as HookedTransformer.from_pretrained takes it (the GGUF file inside).
    wrapped = HookedHFModel.from_pretrained("smollm2-135m-instruct", dtype=torch.float32)
    assert wrapped.tokenizer is not None and wrapped.cfg.n_layers == 30
    ids = wrapped.to_tokens("The capital of France is")
    with torch.no_grad():
        ref = hf_smollm2(ids, output_hidden_states=True, use_cache=False)
        logits, cache = wrapped.run_with_cache(ids, names_filter=lambda n: "resid_pre" in n)
    assert torch.equal(logits, ref.logits)
    for i in (0, 15, 29):
        assert torch.equal(cache[f"blocks.{i}.hook_resid_pre"], ref.hidden_states[i])
    assert wrapped.to_string(logits[0, -1].argmax()) == " Paris"
