"""run_with_cache (names filters, devices, batch/position slicing, gradients) and ActivationCache."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import anatomist
from anatomist import ActivationCache, HookDisabledError, UnknownHookError
from tests.helpers import BUILDERS, gpt2_like

# --- builders -----------------------------------------------------------------------------------


def tokens(batch: int = 2, pos: int = 7, seed: int = 1) -> Tensor:
    return torch.randint(0, 50, (batch, pos), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def model() -> anatomist.HookedTransformer:
    return gpt2_like()


@pytest.fixture(params=list(BUILDERS))
def any_model(request: pytest.FixtureRequest) -> anatomist.HookedTransformer:
    return BUILDERS[request.param]()


def no_hooks_left(model: anatomist.HookedTransformer) -> bool:
    return all(
        not hp._forward_hooks and not hp.fwd_hooks and not hp.bwd_hooks and not hp._savers
        for hp in model.hook_dict.values()
    )


def enabled_names(model: anatomist.HookedTransformer) -> set[str]:
    return {n for n, hp in model.hook_dict.items() if hp.opt_in is None}


# --- names_filter ----------------------------------------------------------------------------------


def test_names_filter_none_caches_every_enabled_hook(
    any_model: anatomist.HookedTransformer,
) -> None:
    toks = tokens()
    logits, cache = any_model.run_with_cache(toks)
    assert isinstance(cache, ActivationCache)
    assert set(cache.keys()) == enabled_names(any_model)
    assert not any(
        k.endswith(("hook_result", "_input", "hook_attn_in", "hook_mlp_in", "hook_tokens"))
        for k in cache
    )
    assert torch.equal(cache["unembed.hook_out"], logits)
    assert no_hooks_left(any_model)
    for value in cache.values():
        assert not value.requires_grad
    # The output itself is unchanged by caching (up to the explicit-attention float error).
    assert (logits - any_model(toks)).abs().max() <= 1e-5


def test_names_filter_str_list_predicate(model: anatomist.HookedTransformer) -> None:
    toks = tokens()
    _, one = model.run_with_cache(toks, names_filter="blocks.1.hook_resid_post")
    assert list(one.keys()) == ["blocks.1.hook_resid_post"]
    names = ["hook_embed", "blocks.0.attn.hook_pattern", "ln_final.hook_scale"]
    _, some = model.run_with_cache(toks, names_filter=names)
    assert set(some.keys()) == set(names)
    _, pred = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_q"))
    assert set(pred.keys()) == {"blocks.0.attn.hook_q", "blocks.1.attn.hook_q"}
    # A tuple works like a list; the values agree between filters.
    _, tup = model.run_with_cache(toks, names_filter=("blocks.1.hook_resid_post",))
    assert torch.equal(tup["blocks.1.hook_resid_post"], one["blocks.1.hook_resid_post"])
    _, full = model.run_with_cache(toks)
    # (Caching the norms switches them to the explicit kernels: float error only.)
    assert torch.allclose(
        full["blocks.0.attn.hook_pattern"], some["blocks.0.attn.hook_pattern"], atol=1e-6
    )
    assert no_hooks_left(model)


def test_names_filter_unknown_name_lists_close_names(model: anatomist.HookedTransformer) -> None:
    with pytest.raises(UnknownHookError) as info:
        model.run_with_cache(tokens(), names_filter="blocks.0.attn.hook_patern")
    assert "blocks.0.attn.hook_pattern" in str(info.value)
    with pytest.raises(KeyError, match="blocks.1.hook_resid_post"):
        model.run_with_cache(tokens(), names_filter=["hook_embed", "blocks.1.hook_resid_pots"])
    with pytest.raises(TypeError):
        model.run_with_cache(tokens(), names_filter=["hook_embed", 3])
    # A shorthand is not a hook name, but the error points at the full name it stands for.
    with pytest.raises(UnknownHookError, match=r"Closest hook names: blocks\.1\.attn\.hook_k\b"):
        model.run_with_cache(tokens(), names_filter="k1")
    assert no_hooks_left(model)


def test_opt_in_hooks_cached_once_enabled(model: anatomist.HookedTransformer) -> None:
    model.set_use_attn_result(True)
    model.set_use_hook_tokens(True)
    model.set_use_hook_mlp_in(True)
    toks = tokens(batch=2, pos=5)
    _, cache = model.run_with_cache(toks)
    assert set(cache.keys()) == {
        n for n, hp in model.hook_dict.items() if model._opt_in_enabled(hp)
    }
    assert cache["blocks.1.attn.hook_result"].shape == (2, 5, 4, 32)
    assert torch.equal(cache["hook_tokens"], toks)
    assert "blocks.0.hook_q_input" not in cache


def test_return_cache_object_false_gives_dict(model: anatomist.HookedTransformer) -> None:
    out, store = model.run_with_cache(
        tokens(), names_filter="hook_embed", return_cache_object=False
    )
    assert type(store) is dict and list(store) == ["hook_embed"]
    assert out.shape == (2, 7, 50)


# --- device, batch and position slicing -----------------------------------------------------------


def test_device_moves_cached_tensors(model: anatomist.HookedTransformer) -> None:
    # The meta device exists everywhere, so this checks the move without an accelerator.
    logits, cache = model.run_with_cache(
        tokens(), device="meta", names_filter=lambda n: "resid" in n
    )
    assert logits.device.type == "cpu"
    assert len(cache) == 6 and all(v.device.type == "meta" for v in cache.values())
    _, cache_cpu = model.run_with_cache(
        tokens(), device=torch.device("cpu"), names_filter="hook_embed"
    )
    assert cache_cpu["hook_embed"].device.type == "cpu"


def test_remove_batch_dim_in_run_with_cache(any_model: anatomist.HookedTransformer) -> None:
    toks = tokens(batch=1, pos=6)
    _, batched = any_model.run_with_cache(toks)
    _, cache = any_model.run_with_cache(toks, remove_batch_dim=True)
    assert not cache.has_batch_dim
    h = any_model.cfg.n_heads
    assert cache["blocks.0.hook_resid_pre"].shape == (6, 32)
    assert cache["blocks.0.attn.hook_pattern"].shape == (h, 6, 6)
    assert cache["blocks.1.attn.hook_z"].shape == (6, h, 8)
    for name, value in batched.items():
        assert torch.equal(cache[name], value[0]), name


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_pos_slice(kind: str) -> None:
    model = BUILDERS[kind]()
    toks = tokens(batch=2, pos=7)
    h = model.cfg.n_heads
    _, full = model.run_with_cache(toks)

    _, last = model.run_with_cache(toks, pos_slice=-1)
    assert last["blocks.0.hook_resid_pre"].shape == (2, 32)
    assert torch.equal(last["blocks.0.hook_resid_pre"], full["blocks.0.hook_resid_pre"][:, -1])
    assert last["blocks.1.attn.hook_pattern"].shape == (2, h, 7)  # query axis dropped
    assert torch.equal(
        last["blocks.1.attn.hook_pattern"], full["blocks.1.attn.hook_pattern"][:, :, -1]
    )
    assert torch.equal(
        last["blocks.1.attn.hook_attn_scores"], full["blocks.1.attn.hook_attn_scores"][:, :, -1]
    )
    assert torch.equal(last["blocks.0.attn.hook_q"], full["blocks.0.attn.hook_q"][:, -1])
    assert last["ln_final.hook_scale"].shape == (2, 1)

    _, mid = model.run_with_cache(toks, pos_slice=(1, 4))
    assert mid["blocks.0.hook_mlp_out"].shape == (2, 3, 32)
    assert torch.equal(mid["blocks.0.hook_mlp_out"], full["blocks.0.hook_mlp_out"][:, 1:4])
    assert mid["blocks.0.attn.hook_pattern"].shape == (2, h, 3, 7)
    assert torch.equal(
        mid["blocks.0.attn.hook_pattern"], full["blocks.0.attn.hook_pattern"][:, :, 1:4]
    )
    assert torch.equal(mid["blocks.0.attn.hook_k"], full["blocks.0.attn.hook_k"][:, 1:4])

    _, picked = model.run_with_cache(toks, pos_slice=[0, 5])
    assert torch.equal(picked["unembed.hook_out"], full["unembed.hook_out"][:, [0, 5]])

    _, both = model.run_with_cache(toks[:1], pos_slice=2, remove_batch_dim=True)
    assert both["blocks.1.hook_resid_post"].shape == (32,)
    assert both["blocks.1.attn.hook_pattern"].shape == (h, 7)


# --- gradients ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_incl_bwd_caches_gradients(kind: str) -> None:
    model = BUILDERS[kind]()
    toks = tokens(batch=2, pos=6)
    loss, cache = model.run_with_cache(toks, return_type="loss", incl_bwd=True)
    assert loss.shape == ()
    forward_names = [k for k in cache if not k.endswith("_grad")]
    assert set(forward_names) == enabled_names(model)
    for name in forward_names:
        assert name + "_grad" in cache, name
        assert cache[name + "_grad"].shape == cache[name].shape, name
    assert len(cache) == 2 * len(forward_names)
    assert no_hooks_left(model)

    # d loss / d logits by hand: (softmax - onehot) / n_predictions, zero at the last position.
    logits = cache["unembed.hook_out"]
    n = toks.shape[0] * (toks.shape[1] - 1)
    expected = logits.softmax(-1)
    expected[:, :-1] -= F.one_hot(toks[:, 1:], 50).float()
    expected[:, :-1] /= n
    expected[:, -1] = 0
    assert (cache["unembed.hook_out_grad"] - expected).abs().max() <= 1e-7

    # The embedding gradient scatters back onto W_E's rows.
    scattered = torch.zeros_like(model.W_E).index_add_(
        0, toks.flatten(), cache["hook_embed_grad"].reshape(-1, 32)
    )
    assert model.W_E.grad is not None
    assert (scattered - model.W_E.grad).abs().max() <= 1e-6

    # Residual identities: the grad at resid_post of block 0 is the grad at resid_pre of block 1.
    assert torch.equal(
        cache["blocks.0.hook_resid_post_grad"], cache["blocks.1.hook_resid_pre_grad"]
    )


def test_incl_bwd_with_filter_and_both(model: anatomist.HookedTransformer) -> None:
    out, cache = model.run_with_cache(
        tokens(), return_type="both", incl_bwd=True, names_filter=["blocks.0.hook_attn_out"]
    )
    assert out.loss.shape == () and out.logits.shape == (2, 7, 50)
    assert set(cache.keys()) == {"blocks.0.hook_attn_out", "blocks.0.hook_attn_out_grad"}


def test_incl_bwd_sees_backward_hooks_of_outer_context(model: anatomist.HookedTransformer) -> None:
    """A gradient replaced downstream (blocks.1) is what the cache records upstream (blocks.0)."""
    with model.hooks(bwd_hooks=[("blocks.1.hook_resid_pre", lambda g, hook: g * 0)]):
        _, cache = model.run_with_cache(
            tokens(), return_type="loss", incl_bwd=True, names_filter=lambda n: "resid" in n
        )
    assert cache["blocks.1.hook_resid_post_grad"].abs().max() > 0
    assert torch.count_nonzero(cache["blocks.0.hook_resid_post_grad"]) == 0
    assert torch.count_nonzero(cache["blocks.0.hook_resid_pre_grad"]) == 0


def test_incl_bwd_with_logits_output_raises(model: anatomist.HookedTransformer) -> None:
    with pytest.raises(ValueError, match="return_type='loss'"):
        model.run_with_cache(tokens(), incl_bwd=True)
    with pytest.raises(ValueError, match="return_type='loss'"):
        model.run_with_cache(tokens(), incl_bwd=True, return_type="loss", loss_per_token=True)
    assert no_hooks_left(model)


# --- how the activations are taken ---------------------------------------------------------------
# run_with_cache stores through HookPoint savers, not torch hooks; these pin what the classic
# caching hooks did: the same tensors, after every hook attached before, nothing left behind.


def test_cache_equals_what_classic_caching_hooks_record(
    any_model: anatomist.HookedTransformer,
) -> None:
    store, fwd, _ = any_model.get_caching_hooks()
    logits_hooked = any_model.run_with_hooks(tokens(), fwd_hooks=fwd)
    logits, cache = any_model.run_with_cache(tokens())
    assert set(cache.keys()) == set(store) and len(store) > 10
    assert torch.equal(logits, logits_hooked)
    for name, value in store.items():
        assert torch.equal(cache[name], value), name
    assert no_hooks_left(any_model)


def test_cache_records_the_value_after_outer_hooks(model: anatomist.HookedTransformer) -> None:
    """An edit by a hook of an enclosing context, or one added with add_hook, is what the cache
    holds, and what flows on (the classic cache hooks ran last)."""
    name, other = "blocks.0.hook_resid_mid", "blocks.1.hook_mlp_out"
    model.add_hook(other, lambda x, hook: x * 0)
    with model.hooks(fwd_hooks=[(name, lambda x, hook: x + 1.0)]):
        _, cache = model.run_with_cache(tokens())
        _, plain = model.run_with_cache(tokens(), names_filter=[name])  # the edit, once
    model.reset_hooks()
    _, clean = model.run_with_cache(tokens())
    torch.testing.assert_close(cache[name], clean[name] + 1.0)
    torch.testing.assert_close(plain[name], cache[name])
    assert torch.count_nonzero(cache[other]) == 0 and torch.count_nonzero(clean[other]) > 0
    assert not torch.equal(cache["blocks.1.hook_resid_pre"], clean["blocks.1.hook_resid_pre"])
    assert no_hooks_left(model)


def test_cached_points_count_as_hooked_during_the_run(model: anatomist.HookedTransformer) -> None:
    """Inside the run a cached point reports has_hooks (models compute the attention pattern
    explicitly only then); before and after it does not."""
    seen: dict[str, bool] = {}

    def look(x: Tensor, hook: anatomist.HookPoint) -> None:
        seen["pattern"] = bool(model.hook_dict["blocks.0.attn.hook_pattern"].has_hooks)
        seen["other"] = bool(model.hook_dict["blocks.1.attn.hook_pattern"].has_hooks)

    assert not model.hook_dict["blocks.0.attn.hook_pattern"].has_hooks
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", look)]):
        _, cache = model.run_with_cache(tokens(), names_filter="blocks.0.attn.hook_pattern")
    assert seen == {"pattern": True, "other": False}
    assert torch.allclose(cache["blocks.0.attn.hook_pattern"].sum(-1), torch.ones(2, 4, 7))
    assert not model.hook_dict["blocks.0.attn.hook_pattern"].has_hooks


def test_cache_savers_leave_when_the_forward_raises(model: anatomist.HookedTransformer) -> None:
    def boom(x: Tensor, hook: anatomist.HookPoint) -> None:
        raise RuntimeError("boom")

    with (
        model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", boom)]),
        pytest.raises(RuntimeError, match="boom"),
    ):
        model.run_with_cache(tokens())
    assert no_hooks_left(model)


def test_check_hooks_to_add_sees_every_cached_point() -> None:
    """A subclass that refuses hooks (check_hooks_to_add) is asked about each cached point
    before the forward runs, as it was when caching went through hooks()."""

    class Refusing(anatomist.HookedTransformer):
        asked: list[str] = []

        def check_hooks_to_add(
            self, hook_point: Any, hook_point_name: str, *args: Any, **kw: Any
        ) -> None:
            self.asked.append(hook_point_name)
            if hook_point_name == "blocks.1.hook_mlp_out":
                raise ValueError("no hooks on blocks.1.hook_mlp_out")

    model = Refusing(gpt2_like().cfg)
    calls: list[int] = []
    model.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="no hooks on blocks.1.hook_mlp_out"):
        model.run_with_cache(tokens())
    assert calls == [] and "blocks.0.hook_resid_pre" in Refusing.asked
    assert all(not hp._savers for hp in model.hook_dict.values())


def test_reset_hooks_end_false_keeps_caching_hooks(model: anatomist.HookedTransformer) -> None:
    """As in the classic library: the caching hooks stay and record later forward passes."""
    names = ["blocks.0.hook_resid_post"]
    _, store = model.run_with_cache(
        tokens(seed=1), names_filter=names, reset_hooks_end=False, return_cache_object=False
    )
    first = store[names[0]]
    model(tokens(seed=2))
    assert not torch.equal(store[names[0]], first)
    _, again = model.run_with_cache(tokens(seed=2), names_filter=names)
    torch.testing.assert_close(store[names[0]], again[names[0]])
    model.reset_hooks()
    assert no_hooks_left(model)


# --- ActivationCache ------------------------------------------------------------------------------


def test_cache_shorthand_keys(any_model: anatomist.HookedTransformer) -> None:
    _, cache = any_model.run_with_cache(tokens())
    assert cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
    assert cache["attn", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["attn_scores", 1] is cache["blocks.1.attn.hook_attn_scores"]
    assert cache["scale", 1, "ln1"] is cache["blocks.1.ln1.hook_scale"]
    assert cache["normalized", 0, "ln2"] is cache["blocks.0.ln2.hook_normalized"]
    assert cache["resid_post", -1] is cache["blocks.1.hook_resid_post"]
    assert cache["resid_pre", -2] is cache["blocks.0.hook_resid_pre"]
    assert cache["k1"] is cache["blocks.1.attn.hook_k"]
    assert cache["z0"] is cache["blocks.0.attn.hook_z"]
    assert cache["scale0ln2"] is cache["blocks.0.ln2.hook_scale"]
    assert cache["post", 0] is cache["blocks.0.mlp.hook_post"]
    assert cache["embed"] is cache["hook_embed"]
    assert cache["scale"] is cache["ln_final.hook_scale"]
    assert cache[("embed",)] is cache["hook_embed"]
    with pytest.raises(TypeError):
        cache[3]  # type: ignore[index]


def test_cache_membership_and_mapping(model: anatomist.HookedTransformer) -> None:
    _, cache = model.run_with_cache(tokens(), names_filter=lambda n: n.startswith("blocks.0.attn"))
    assert "blocks.0.attn.hook_pattern" in cache
    assert ("pattern", 0) in cache and "pattern0" in cache
    assert ("pattern", 1) not in cache and ("pattern", -2) in cache
    assert "hook_embed" not in cache and "embed" not in cache
    assert 3 not in cache and None not in cache
    names = {"blocks.0.attn.hook_" + s for s in ("q", "k", "v", "attn_scores", "pattern", "z")}
    assert set(cache.keys()) == names and len(cache) == 6
    assert set(iter(cache)) == names
    assert dict(cache.items()) == {k: cache[k] for k in names}
    assert all(any(v is w for w in cache.values()) for v in dict(cache.items()).values())
    assert "blocks.0.attn.hook_z" in repr(cache)


def test_cache_missing_key_lists_close_names(model: anatomist.HookedTransformer) -> None:
    _, cache = model.run_with_cache(tokens(), names_filter=lambda n: n.startswith("blocks.0.attn"))
    with pytest.raises(KeyError) as info:
        cache["blocks.0.attn.hook_patern"]
    msg = str(info.value)
    assert "blocks.0.attn.hook_pattern" in msg and "blocks.0.attn.hook_patern" in msg
    assert msg == info.value.args[0]  # shown plainly, not repr-quoted a second time
    with pytest.raises(KeyError, match="names_filter"):
        cache["resid_pre", 0]


def test_cache_to_device(model: anatomist.HookedTransformer) -> None:
    _, cache = model.run_with_cache(tokens(), names_filter=lambda n: "resid" in n)
    same = cache.to("meta")
    assert same is cache
    assert all(v.device.type == "meta" for v in cache.values())
    assert model.W_E.device.type == "cpu"


def test_cache_remove_batch_dim(any_model: anatomist.HookedTransformer) -> None:
    _, cache = any_model.run_with_cache(tokens(batch=1))
    full = dict(cache.items())
    assert cache.remove_batch_dim() is cache
    assert not cache.has_batch_dim
    for name, value in full.items():
        assert torch.equal(cache[name], value[0])
    assert cache.remove_batch_dim() is cache  # no batch dim left: a no-op
    assert cache["blocks.0.hook_resid_pre"].shape == (7, 32)

    _, batched = any_model.run_with_cache(tokens(batch=2), names_filter=lambda n: "resid" in n)
    with pytest.raises(ValueError, match="batch"):
        batched.remove_batch_dim()
    assert batched.has_batch_dim and batched["blocks.0.hook_resid_pre"].shape == (2, 7, 32)


def test_cache_apply_slice_to_batch_dim(any_model: anatomist.HookedTransformer) -> None:
    _, cache = any_model.run_with_cache(
        tokens(batch=3), names_filter=lambda n: "pos_embed" not in n
    )
    one = cache.apply_slice_to_batch_dim(1)
    assert isinstance(one, ActivationCache) and one is not cache
    assert not one.has_batch_dim and cache.has_batch_dim
    for name in cache:
        assert torch.equal(one[name], cache[name][1]), name
    assert one["blocks.0.attn.hook_pattern"].shape == (any_model.cfg.n_heads, 7, 7)
    with pytest.raises(ValueError):
        one.apply_slice_to_batch_dim(0)

    two = cache.apply_slice_to_batch_dim((1, 3))
    assert two.has_batch_dim
    for name in cache:
        assert torch.equal(two[name], cache[name][1:3]), name
    also = cache.apply_slice_to_batch_dim(slice(0, 1))
    assert also["resid_post", -1].shape == (1, 7, 32)
    picked = cache.apply_slice_to_batch_dim([2, 0])
    assert torch.equal(picked["blocks.1.hook_mlp_out"], cache["blocks.1.hook_mlp_out"][[2, 0]])
    # A batch of one can then drop its batch axis.
    assert also.remove_batch_dim()["resid_post", -1].shape == (7, 32)


def test_pos_embed_has_batch_dim(model: anatomist.HookedTransformer) -> None:
    _, cache = model.run_with_cache(tokens(batch=3))
    assert cache["hook_pos_embed"].shape == (3, 7, 32)
    assert cache.apply_slice_to_batch_dim(2)["hook_pos_embed"].shape == (7, 32)


def test_stack_activation(any_model: anatomist.HookedTransformer) -> None:
    _, cache = any_model.run_with_cache(tokens())
    stacked = cache.stack_activation("resid_post")
    assert stacked.shape == (2, 2, 7, 32)
    assert torch.equal(stacked[0], cache["blocks.0.hook_resid_post"])
    assert torch.equal(stacked[1], cache["blocks.1.hook_resid_post"])
    assert cache.stack_activation("pattern", layer=1).shape == (1, 2, any_model.cfg.n_heads, 7, 7)
    scales = cache.stack_activation("scale", sublayer_type="ln2")
    assert torch.equal(scales[1], cache["blocks.1.ln2.hook_scale"])


def test_cache_of_plain_dict() -> None:
    """ActivationCache works on a hand-made dict (the model is needed only for negative layers)."""
    store = {"blocks.0.hook_resid_pre": torch.ones(1, 2, 3), "hook_embed": torch.zeros(1, 2, 3)}
    cache = ActivationCache(store, model=None)
    assert cache.has_embed and not cache.has_pos_embed
    assert cache["resid_pre", 0] is store["blocks.0.hook_resid_pre"]
    assert cache.remove_batch_dim()["embed"].shape == (2, 3)


def test_disabled_filter_error_mentions_setter(model: anatomist.HookedTransformer) -> None:
    with pytest.raises(HookDisabledError, match=r"set_use_attn_result\(True\)"):
        model.run_with_cache(tokens(), names_filter=["blocks.1.attn.hook_result"])
    # Predicates silently skip opt-in hooks that are off.
    _, cache = model.run_with_cache(tokens(), names_filter=lambda n: n.endswith("hook_result"))
    assert len(cache) == 0
