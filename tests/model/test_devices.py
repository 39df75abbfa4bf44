"""One model over several devices: the planner, device-map checks, loading straight to each
part's device, and every code path that moves tensors between blocks.

This machine has one device (the CPU). Two kinds of maps stand in for several:
- ``{"": "cpu", "blocks.1": "cpu:0"}``: two entries the model treats as two devices, so every
  move runs (as a no-op), and every API must give the numbers of the unsplit model;
- ``"cpu"`` then ``"meta"``: a real device boundary, where any tensor a block reads that did not
  move with it fails (torch refuses to mix meta and CPU tensors); outputs are shapes only.
The half-GPU/half-CPU check with real numbers is benchmarks/gpu_split.py (needs a GPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import load, random_tokens, tiny_gpt2, tiny_llama

import anatomist.loading.pretrained as pretrained
import anatomist.model.block as block_module
from anatomist import HookedEncoder, HookedTransformer, TransformerConfig
from anatomist.analysis.patching import get_act_patch_resid_pre
from anatomist.loading.names import get_pretrained_model_config
from anatomist.model.devices import DeviceMapError, model_parts, place, plan_devices
from anatomist.model.kv_cache import KVCacheEntry

TWO_CPUS = {
    "": "cpu",
    "blocks.2": "cpu:0",
    "blocks.3": "cpu:0",
    "ln_final": "cpu:0",
    "unembed": "cpu:0",
}
CPU = torch.device("cpu")
CPU0 = torch.device("cpu", 0)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("llama4")
    tiny_llama(folder, num_hidden_layers=4, num_key_value_heads=2)
    return folder


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpt2")
    tiny_gpt2(folder)  # 2 blocks, tied embeddings
    return folder


def meta_skeleton(n_layers: int = 6, d_model: int = 64, d_vocab: int = 1000) -> HookedTransformer:
    cfg = TransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_ctx=32,
        d_head=16,
        n_heads=4,
        d_vocab=d_vocab,
        act_fn="gelu",
        normalization_type="LN",
    )
    with torch.device("meta"):
        return HookedTransformer(cfg, move_to_device=False)


def small_config(**fields: Any) -> TransformerConfig:
    return TransformerConfig(
        d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=10, act_fn="relu", **fields
    )


def nbytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# --- the planner (accelerate) on the meta device --------------------------------------------


def test_sequential_plan_fills_each_device_in_order_within_its_budget() -> None:
    model = meta_skeleton()
    block = nbytes(model.blocks[0])
    embed = nbytes(model.embed) + nbytes(model.pos_embed)
    # room for the embeddings and 2 blocks on device 0 (plus the largest layer, which
    # accelerate keeps free on every device but the last), the rest on device 1
    first = embed + 2 * block + max(block, nbytes(model.unembed)) + 100
    plan = plan_devices(model, "sequential", max_memory={0: first, 1: 10 * block + 10**6})
    cuda0, cuda1 = torch.device("cuda", 0), torch.device("cuda", 1)
    assert plan["embed"] == plan["pos_embed"] == cuda0
    assert [plan[f"blocks.{i}"] for i in range(6)] == [cuda0] * 2 + [cuda1] * 4
    assert plan["ln_final"] == plan["unembed"] == cuda1
    held = {
        d: sum(nbytes(m) for n, m in model_parts(model) if plan[n] == d) for d in (cuda0, cuda1)
    }
    assert held[cuda0] <= first


def test_balanced_plan_splits_the_blocks_between_devices() -> None:
    model = meta_skeleton()
    plan = plan_devices(model, "balanced", max_memory={0: 10**8, 1: 10**8})
    devices = [plan[f"blocks.{i}"] for i in range(6)]
    assert devices[0] == torch.device("cuda", 0) and devices[-1] == torch.device("cuda", 1)
    assert devices == sorted(devices, key=lambda d: d.index)  # contiguous runs, in order
    assert plan["unembed"] == devices[-1] and plan["embed"] == devices[0]


def test_a_plan_with_a_cpu_share_puts_the_overflow_there() -> None:
    model = meta_skeleton()
    block = nbytes(model.blocks[0])
    plan = plan_devices(model, "sequential", max_memory={0: 3 * block, "cpu": 10**9})
    assert plan["embed"] == torch.device("cuda", 0)
    assert plan["blocks.5"] == plan["unembed"] == CPU


def test_the_planner_reads_sizes_in_the_dtype_given() -> None:
    model = meta_skeleton()  # float32 skeleton
    block = nbytes(model.blocks[0])
    budget = {0: 4 * block, 1: 10**8}
    in_fp32 = plan_devices(model, "sequential", max_memory=dict(budget))
    in_bf16 = plan_devices(model, "sequential", max_memory=dict(budget), dtype=torch.bfloat16)
    on_first = [sum(p[f"blocks.{i}"].index == 0 for i in range(6)) for p in (in_fp32, in_bf16)]
    assert on_first[1] > on_first[0]


def test_a_model_that_does_not_fit_is_refused_with_its_size() -> None:
    model = meta_skeleton()
    with pytest.raises(DeviceMapError, match="does not fit in max_memory.*disk"):
        plan_devices(model, "sequential", max_memory={0: 10_000, 1: 10_000})


# --- explicit maps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device_map", "message"),
    [
        ({"": "cpu", "blocks.9": "cpu"}, r"names no part.*blocks\.0"),
        ({"": "cpu", "blokcs.1": "cpu"}, r"names no part.*Did you mean 'blocks\.1'"),
        ({"": "cpu", "blocks.1.attn": "cpu"}, "inside 'blocks.1'; blocks are never split"),
        ({"embed": "cpu", "blocks": "cpu"}, "does not place pos_embed, ln_final, unembed"),
        ({"": "cpu", "unembed": "meta"}, "ln_final and unembed .* on several devices"),
        ({"": "cpu", "pos_embed": "meta"}, "embedding parts .* on several devices"),
        ({"": "disk"}, "'disk' offloading is not supported"),
        ({"": "nowhere"}, "'nowhere' is not a device"),
        ("fast", "use one of auto, balanced, sequential"),
    ],
)
def test_bad_device_maps_are_refused_by_name(device_map: Any, message: str) -> None:
    with pytest.raises(DeviceMapError, match=message):
        plan_devices(meta_skeleton(n_layers=2), device_map)


def test_max_memory_is_only_for_the_planner(llama_folder: Path) -> None:
    with pytest.raises(ValueError, match="max_memory is read by the planner"):
        load(llama_folder, device_map={"": "cpu"}, max_memory={"cpu": "1GiB"})
    with pytest.raises(ValueError, match="device or device_map, not both"):
        load(llama_folder, device_map={"": "cpu"}, device="cpu")
    with pytest.raises(ValueError, match="device_map or n_devices, not both"):
        load(llama_folder, device_map={"": "cpu"}, n_devices=2)
    for bad in (0, True, 1.5):  # from_pretrained and get_pretrained_model_config alike
        with pytest.raises(ValueError, match="n_devices must be a positive integer"):
            load(llama_folder, n_devices=bad)
        with pytest.raises(ValueError, match="n_devices must be a positive integer"):
            get_pretrained_model_config(llama_folder, n_devices=bad)


def test_n_devices_splits_over_accelerators_and_says_when_there_are_too_few(
    llama_folder: Path,
) -> None:
    with pytest.raises(DeviceMapError, match="not 'cpu'"):
        load(llama_folder, n_devices=2, device="cpu")
    if torch.cuda.device_count() < 2:
        with pytest.raises(DeviceMapError, match=r"n_devices=2 from cuda:0 needs 2 cuda"):
            load(llama_folder, n_devices=2, device="cuda")
    cfg = small_config(n_layers=2, n_devices=2, device="cpu")
    with pytest.raises(DeviceMapError, match="n_devices=2 splits the blocks over accelerators"):
        HookedTransformer(cfg)
    encoder_cfg = TransformerConfig(
        n_layers=2, d_model=16, n_ctx=8, d_head=4, d_vocab=10, act_fn="gelu", n_devices=2
    )
    with pytest.raises(NotImplementedError, match="HookedEncoder runs on one device"):
        HookedEncoder(encoder_cfg)


def test_the_classic_split_gives_each_accelerator_a_run_of_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("anatomist.model.devices._device_count", lambda kind: 3)
    plan = plan_devices(meta_skeleton(n_layers=5), n_devices=3, device="cuda")
    # ceil(5 / 3) = 2 blocks per device, as the classic get_device_for_block_index
    assert [plan[f"blocks.{i}"].index for i in range(5)] == [0, 0, 1, 1, 2]
    assert plan["embed"].index == 0 and plan["unembed"].index == plan["ln_final"].index == 2
    cfg = small_config(n_layers=5, n_devices=3)
    from anatomist.compat.transformer_lens.utilities.devices import get_device_for_block_index

    classic = [get_device_for_block_index(i, cfg, "cuda") for i in range(5)]
    assert classic == [plan[f"blocks.{i}"] for i in range(5)]
    assert get_device_for_block_index(4, cfg, "cpu") == CPU


# --- loading straight to each part's device ---------------------------------------------------


def test_weights_are_converted_onto_their_part_device_as_they_are_read(
    gpt2_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, torch.device] = {}
    assign = pretrained._assign

    def spy(model: Any, key: str, value: torch.Tensor) -> None:
        seen[key] = value.device
        assign(model, key, value)

    monkeypatch.setattr(pretrained, "_assign", spy)
    device_map = {"": "cpu", "blocks.1": "meta", "ln_final": "meta", "unembed": "meta"}
    model = load(gpt2_folder, device_map=device_map)
    assert seen["blocks.0.attn.W_Q"] == CPU and seen["blocks.1.attn.W_Q"].type == "meta"
    assert seen["unembed.W_U"].type == "meta"  # the tied copy of W_E too
    assert seen["embed.W_E"] == CPU
    for name, param in model.named_parameters():
        meta = name.startswith(("blocks.1", "ln_final", "unembed"))
        assert param.device.type == ("meta" if meta else "cpu"), name


# --- every code path across a two-entry CPU map ---------------------------------------------


@pytest.fixture(scope="module")
def pair(llama_folder: Path) -> tuple[HookedTransformer, HookedTransformer]:
    whole = load(llama_folder, processing=True)
    split = load(llama_folder, processing=True, device_map=TWO_CPUS)
    return whole, split


def test_the_map_is_recorded_and_each_block_knows_its_device(
    pair: tuple[HookedTransformer, HookedTransformer],
) -> None:
    _, split = pair
    assert split.device_map is not None
    assert split.device_map["embed"] == "cpu" and split.device_map["blocks.3"] == "cpu:0"
    assert [b.placed_on for b in split.blocks] == [CPU, CPU, CPU0, CPU0]
    assert split.output_device == CPU0 and split.cfg.n_devices == 2 and split.cfg.device == "cpu"


def test_forward_loss_hooks_and_cache_equal_the_unsplit_model(
    pair: tuple[HookedTransformer, HookedTransformer], monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, split = pair
    tokens = random_tokens(whole.cfg.d_vocab, batch=2, pos=10)
    moves: list[torch.device] = []
    to_device = block_module.to_device

    def spy(device: torch.device, *tensors: Any) -> tuple[Any, ...]:
        moves.append(device)
        return to_device(device, *tensors)

    monkeypatch.setattr(block_module, "to_device", spy)
    torch.testing.assert_close(split(tokens), whole(tokens), rtol=0, atol=0)
    assert moves == [CPU, CPU, CPU0, CPU0]  # every block moved what it reads
    torch.testing.assert_close(
        split(tokens, return_type="loss"), whole(tokens, return_type="loss"), rtol=0, atol=0
    )
    seen: list[tuple[str, torch.device]] = []

    def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
        seen.append((hook.name, x.device))
        return x * 0.5

    hooks = [(f"blocks.{i}.hook_resid_pre", hook) for i in (1, 3)]
    edited = split.run_with_hooks(tokens, fwd_hooks=hooks)
    torch.testing.assert_close(edited, whole.run_with_hooks(tokens, fwd_hooks=hooks))
    assert [name for name, _ in seen] == ["blocks.1.hook_resid_pre", "blocks.3.hook_resid_pre"] * 2
    logits, cache = split.run_with_cache(tokens)
    _, reference = whole.run_with_cache(tokens)
    assert cache.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(cache[name], reference[name], rtol=0, atol=0)
    _, gathered = split.run_with_cache(tokens, device="cpu")
    assert all(t.device == CPU for t in gathered.values())
    lens = cache.accumulated_resid(apply_ln=True, pos_slice=-1)
    torch.testing.assert_close(lens, reference.accumulated_resid(apply_ln=True, pos_slice=-1))
    torch.testing.assert_close(
        cache.get_full_resid_decomposition(expand_neurons=True),
        reference.get_full_resid_decomposition(expand_neurons=True),
    )


def test_runs_from_and_to_a_layer_and_patching_equal_the_unsplit_model(
    pair: tuple[HookedTransformer, HookedTransformer],
) -> None:
    whole, split = pair
    clean = random_tokens(whole.cfg.d_vocab, batch=1, pos=8, seed=3)
    corrupted = random_tokens(whole.cfg.d_vocab, batch=1, pos=8, seed=4)
    middle = split(clean, stop_at_layer=2)
    torch.testing.assert_close(middle, whole(clean, stop_at_layer=2), rtol=0, atol=0)
    torch.testing.assert_close(split(middle, start_at_layer=2), whole(clean), rtol=0, atol=0)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[0, -1, 5] - logits[0, -1, 7]

    results = []
    for model in (whole, split):
        _, clean_cache = model.run_with_cache(clean)
        results.append(get_act_patch_resid_pre(model, corrupted, clean_cache, metric))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-6)


def test_generate_keeps_each_layer_cache_on_its_device_and_matches(
    pair: tuple[HookedTransformer, HookedTransformer], monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, split = pair
    prompt = random_tokens(whole.cfg.d_vocab, batch=2, pos=5, seed=5)
    devices: list[Any] = []
    entry = KVCacheEntry.init_cache_entry

    def spy(cfg: Any, device: Any, *args: Any) -> KVCacheEntry:
        devices.append(device)
        return entry(cfg, device, *args)

    monkeypatch.setattr(KVCacheEntry, "init_cache_entry", staticmethod(spy))
    expected = whole.generate(
        prompt, max_new_tokens=6, do_sample=False, verbose=False, eos_token_id=7
    )
    devices.clear()
    got = split.generate(prompt, max_new_tokens=6, do_sample=False, verbose=False, eos_token_id=7)
    assert torch.equal(got, expected)
    assert devices == [CPU, CPU, CPU0, CPU0]
    no_cache = split.generate(
        prompt,
        max_new_tokens=6,
        do_sample=False,
        verbose=False,
        eos_token_id=7,
        use_past_kv_cache=False,
    )
    assert torch.equal(no_cache, expected)


def test_weight_views_gather_and_a_move_to_one_device_ends_the_split(llama_folder: Path) -> None:
    whole = load(llama_folder, processing=True)
    split = load(llama_folder, processing=True, device_map=TWO_CPUS)
    for name in ("W_Q", "W_K", "W_O", "W_in", "W_out", "b_O"):
        torch.testing.assert_close(getattr(split, name), getattr(whole, name), rtol=0, atol=0)
    split.to("cpu")
    assert split.device_map is None and split.output_device is None
    assert all(b.placed_on is None for b in split.blocks) and split.cfg.n_devices == 1
    tokens = random_tokens(whole.cfg.d_vocab)
    torch.testing.assert_close(split(tokens), whole(tokens), rtol=0, atol=0)


# --- a real device boundary: CPU then meta ------------------------------------------------------


def test_every_tensor_a_block_reads_moves_across_a_real_device_boundary(
    llama_folder: Path,
) -> None:
    """Blocks 2-3 and the unembedding on the meta device: a mask, position or residual left on
    the CPU would make torch refuse the mix."""
    model = load(llama_folder, processing=True)
    tail = {
        "": "cpu",
        "blocks.2": "meta",
        "blocks.3": "meta",
        "ln_final": "meta",
        "unembed": "meta",
    }
    place(model, plan_devices(model, tail))
    rotary = [b for n, b in model.named_buffers() if n.startswith("blocks.2")]
    assert rotary and all(b.device.type == "meta" for b in rotary)  # buffers move with blocks
    tokens = random_tokens(model.cfg.d_vocab, batch=2, pos=9)
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0  # left padding: a real mask reaches every block
    logits = model(tokens, attention_mask=mask)
    assert logits.device.type == "meta" and logits.shape == (2, 9, model.cfg.d_vocab)
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    assert cache["blocks.1.hook_resid_post"].device == CPU
    assert cache["blocks.2.attn.hook_pattern"].device.type == "meta"
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    try:
        assert model(tokens).device.type == "meta"
    finally:
        model.set_use_attn_result(False)
        model.set_use_split_qkv_input(False)
    middle = model(tokens, stop_at_layer=2)
    assert model(middle, start_at_layer=2, attention_mask=mask).device.type == "meta"
