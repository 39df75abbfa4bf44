"""One model over several devices: which device holds each part, and the moves between them.

A *device map* gives each part of a `HookedTransformer` a device. The parts are its top-level
modules with the block list opened up: ``embed``, ``pos_embed``, ``ln_embed``, ``blocks.0`` ...
``blocks.{n-1}``, ``ln_final``, ``unembed`` (and the hook points between them, which hold no
weights). A map is written with module-name prefixes: ``{"embed": 0, "blocks.0": 0, "blocks.1":
1, "ln_final": 1, "unembed": 1}``, ``{"": "cpu"}``, ``{"blocks": "cuda:1", "embed": ...}``; a
part takes the device of its longest matching prefix. A block is never split; the embedding
parts share one device (the model's input device, ``cfg.device``), as do ``ln_final`` and
``unembed`` (the output device).

Plans by memory ("auto", "balanced", "sequential") come from accelerate's
``infer_auto_device_map`` with blocks as units it may not split, as Hugging Face plans them;
``n_devices=k`` is the classic even split of the blocks over ``cuda:0 .. cuda:k-1`` with the
embedding on the first device and the unembedding with the last block.

At run time each block moves what it reads (the residual stream, positions, masks) to its own
device when the model is split, and the model moves the residual stream to the output device
before ``ln_final``: a hook sees its tensor on its block's device, and the logits come out on the
output device. Moves of tensors already in place cost nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

DeviceLike = int | str | torch.device
DEVICE_MAP_MODES = ("auto", "balanced", "sequential")


class DeviceMapError(ValueError):
    """A device map that cannot be used: a part it does not place, a prefix that names no part,
    a block split over devices, or a model that does not fit the memory it was given."""


def model_parts(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The parts a device map places, in forward order: top-level modules, blocks one by one."""
    parts: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if name == "blocks":
            parts += [(f"blocks.{i}", block) for i, block in enumerate(child.children())]
        else:
            parts.append((name, child))
    return parts


def check_n_devices(n_devices: Any) -> None:
    """`n_devices` as the loaders take it: a positive int."""
    if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
        raise ValueError(f"n_devices must be a positive integer, got {n_devices!r}.")


def check_splittable(model_class: type) -> None:
    """Refuse a split (device_map, n_devices > 1) for a model class that runs on one device."""
    if not getattr(model_class, "splittable", False):
        raise NotImplementedError(
            f"{model_class.__name__} runs on one device; n_devices > 1 and device maps are "
            "supported by HookedTransformer (decoder-only models)."
        )


def as_device(value: DeviceLike, where: str = "device_map") -> torch.device:
    """A device from a map's value: an int is an accelerator index (accelerate's convention)."""
    if isinstance(value, bool):
        raise DeviceMapError(f"{where}: {value!r} is not a device.")
    if isinstance(value, int):
        return torch.device(_accelerator_type(), value)
    if value == "disk":
        raise DeviceMapError(
            f"{where}: 'disk' offloading is not supported; every part must sit on a device that "
            "computes (a GPU or 'cpu')."
        )
    try:
        return torch.device(value)
    except (RuntimeError, TypeError) as error:
        raise DeviceMapError(f"{where}: {value!r} is not a device ({error}).") from None


def _accelerator_type() -> str:
    accelerator = getattr(torch, "accelerator", None)
    current = accelerator.current_accelerator() if accelerator is not None else None
    return current.type if current is not None else "cuda"


def plan_devices(
    model: nn.Module,
    device_map: str | Mapping[str, DeviceLike] | None = None,
    max_memory: Mapping[int | str, int | str] | None = None,
    n_devices: int = 1,
    device: DeviceLike | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.device]:
    """The device of every part of `model` (see the module docstring), from `device_map` (a
    mode or a prefix map), or from `n_devices` (classic even split) when no map is given.

    The model may be a skeleton (uninitialised or meta weights): only sizes are read, in
    `dtype` (default: the parameters' own), the dtype the weights will be loaded in.
    """
    if device_map is None:
        if n_devices == 1:
            raise DeviceMapError("plan_devices needs a device_map or n_devices > 1.")
        plan: Mapping[str, DeviceLike] = _classic_split(model, n_devices, device)
    elif isinstance(device_map, str):
        if device_map not in DEVICE_MAP_MODES:
            raise DeviceMapError(
                f"device_map={device_map!r}: use one of {', '.join(DEVICE_MAP_MODES)}, or a "
                "dict of module-name prefixes to devices ({'blocks.0': 0, ...})."
            )
        plan = _accelerate_plan(model, device_map, max_memory, dtype)
        return _per_part(model, plan, planned=True)
    elif isinstance(device_map, Mapping):
        if max_memory is not None:
            raise DeviceMapError(
                "max_memory is read by the planner (device_map='auto', 'balanced' or "
                "'sequential'); an explicit device_map places the parts itself."
            )
        plan = device_map
    else:
        raise DeviceMapError(
            f"device_map must be one of {', '.join(DEVICE_MAP_MODES)} or a dict of "
            f"module-name prefixes to devices, got {type(device_map).__name__}."
        )
    return _per_part(model, plan)


def _classic_split(
    model: nn.Module, n_devices: int, device: DeviceLike | None
) -> dict[str, DeviceLike]:
    """The classic library's split: ceil(n_layers / n_devices) blocks per device, from the
    given device's index on; embeddings with the first block, ln_final/unembed with the last."""
    base = torch.device(device if device is not None else _accelerator_type())
    if base.type == "cpu":
        raise DeviceMapError(
            f"n_devices={n_devices} splits the blocks over accelerators ({_accelerator_type()}:0, "
            f"{_accelerator_type()}:1, ...), not 'cpu'; to place parts on any devices pass "
            "device_map={'blocks.0': ..., ...} instead."
        )
    available = _device_count(base.type)
    start = base.index or 0
    if start + n_devices > available:
        raise DeviceMapError(
            f"n_devices={n_devices} from {base.type}:{start} needs {start + n_devices} "
            f"{base.type} device(s); this machine has {available}."
        )
    blocks = [name for name, _ in model_parts(model) if name.startswith("blocks.")]
    per_device = -(-len(blocks) // n_devices)
    plan: dict[str, DeviceLike] = {"": torch.device(base.type, start)}
    for i, name in enumerate(blocks):
        plan[name] = torch.device(base.type, start + i // per_device)
    last = plan[blocks[-1]] if blocks else plan[""]
    plan["ln_final"] = plan["unembed"] = last
    return plan


def get_device_for_block_index(
    index: int, cfg: Any, device: DeviceLike | None = None
) -> torch.device:
    """The classic helper: the device of block `index` under ``cfg.n_devices`` (the split
    `n_devices` loads with; ceil(n_layers / n_devices) blocks per device, so the last device is
    never passed, where the classic floor division was). A CPU device is returned as it is."""
    base = torch.device(device if device is not None else cfg.device)
    if base.type == "cpu" or cfg.n_devices <= 1:
        return base
    per_device = -(-cfg.n_layers // cfg.n_devices)
    return torch.device(base.type, (base.index or 0) + index // per_device)


def _device_count(device_type: str) -> int:
    module = getattr(torch, device_type, None)
    count = getattr(module, "device_count", None)
    return int(count()) if callable(count) else 0


def _accelerate_plan(
    model: nn.Module,
    mode: str,
    max_memory: Mapping[int | str, int | str] | None,
    dtype: torch.dtype | None,
) -> dict[str, DeviceLike]:
    try:
        from accelerate import infer_auto_device_map
        from accelerate.utils import compute_module_sizes, get_balanced_memory, get_max_memory
    except ImportError:
        raise ImportError(
            f"device_map={mode!r} plans with accelerate, which is not installed: pip install "
            "accelerate (or pip install 'anatomist[devices]'), or pass an explicit device_map "
            "dict."
        ) from None
    blocks = getattr(model, "blocks", None)
    no_split = sorted({type(block).__name__ for block in blocks or ()})
    budget = get_max_memory(dict(max_memory) if max_memory is not None else None)
    accelerators = [key for key in budget if isinstance(key, int)]
    if mode in ("auto", "balanced") and len(accelerators) > 1:
        budget = get_balanced_memory(
            model, max_memory=budget, no_split_module_classes=no_split, dtype=dtype
        )
    plan = dict(
        infer_auto_device_map(
            model, max_memory=budget, no_split_module_classes=no_split, dtype=dtype
        )
    )
    spilled = [name for name, where in plan.items() if where == "disk"]
    if spilled:
        sizes = compute_module_sizes(model, dtype=dtype)
        given = ", ".join(f"{key}: {_gib(value)}" for key, value in budget.items())
        raise DeviceMapError(
            f"The model does not fit in max_memory ({given}): it needs {_gib(sizes[''])} of "
            f"weights, and {', '.join(spilled)} ({_gib(sum(sizes[n] for n in spilled))}) would "
            "be left for the disk, which anatomist does not offload to. Give more memory or more "
            "devices (accelerate keeps room for the largest block on every device but the "
            "last), or load in a smaller dtype."
        )
    return plan


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def _per_part(
    model: nn.Module, plan: Mapping[str, DeviceLike], planned: bool = False
) -> dict[str, torch.device]:
    """Each part's device under `plan` (prefix -> device). A `planned` map (accelerate's)
    may split the small parts of a group: they join the group's anchor (embed, unembed)."""
    parts = model_parts(model)
    names = [name for name, _ in parts]
    devices = {key: as_device(value, f"device_map[{key!r}]") for key, value in plan.items()}
    for key in devices:
        if key == "" or any(name == key or name.startswith(key + ".") for name in names):
            continue
        inside = [name for name in names if key.startswith(name + ".")]
        if inside:
            raise DeviceMapError(
                f"device_map[{key!r}]: a map places whole parts, and {key!r} is inside "
                f"{inside[0]!r}; blocks are never split over devices."
            )
        close = difflib.get_close_matches(key, [*names, "blocks"], n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise DeviceMapError(
            f"device_map[{key!r}] names no part of this model.{hint} Its parts are "
            f"{', '.join(_summary(names))}."
        )
    placed: dict[str, torch.device] = {}
    missing: list[str] = []
    previous: torch.device | None = None
    for name, module in parts:
        keys = [k for k in devices if k == "" or name == k or name.startswith(k + ".")]
        if keys:
            previous = placed[name] = devices[max(keys, key=len)]
        elif _holds_tensors(module):
            missing.append(name)
        elif previous is not None:
            placed[name] = previous  # a hook point: where the part before it is
    if missing:
        raise DeviceMapError(
            f"device_map does not place {', '.join(missing)}; give every part a device (a key "
            "'' places everything not named otherwise)."
        )
    for name in names:  # a leading hook point takes the first device
        placed.setdefault(name, next(iter(placed.values())))
    _check_groups(placed, names, planned)
    return {name: placed[name] for name in names}


def _summary(names: list[str]) -> list[str]:
    blocks = [name for name in names if name.startswith("blocks.")]
    rest = [name for name in names if not name.startswith("blocks.")]
    if len(blocks) > 2:
        blocks = [blocks[0], "...", blocks[-1]]
    return [*rest[: len(rest) - 2], *blocks, *rest[len(rest) - 2 :]] if blocks else rest


def _holds_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _check_groups(placed: dict[str, torch.device], names: list[str], join: bool) -> None:
    """The embedding parts on one device, ln_final and unembed on one device (with `join`,
    moved there: the embedding's and the unembedding's devices)."""
    first_block = next((i for i, name in enumerate(names) if name.startswith("blocks.")), None)
    if first_block is None:
        return
    last_block = max(i for i, name in enumerate(names) if name.startswith("blocks."))
    for group, label, anchor in (
        (names[:first_block], "the embedding parts (the model's input device)", "embed"),
        (names[last_block + 1 :], "ln_final and unembed (the output device)", "unembed"),
    ):
        if join and anchor in group:
            for name in group:
                placed[name] = placed[anchor]
        held = {placed[name] for name in group if not name.startswith("hook_")}
        if len(held) > 1:
            where = ", ".join(f"{name}: {placed[name]}" for name in group)
            raise DeviceMapError(
                f"device_map puts {label} on several devices ({where}); give them one."
            )


def is_split(placed: Mapping[str, torch.device]) -> bool:
    return len(set(placed.values())) > 1


def place(model: Any, placed: Mapping[str, torch.device]) -> None:
    """Move each part to its device and tell the blocks and the model where they run.

    Parameters already on their device (loaded straight there) are not copied again."""
    parts: dict[str, Any] = dict(model_parts(model))
    split = is_split(placed)
    for name, device in placed.items():
        parts[name].to(device)
        if name.startswith("blocks."):
            parts[name].placed_on = device if split else None
    names = list(placed)
    model.output_device = placed[names[-1]] if split else None
    model.device_map = {name: str(device) for name, device in placed.items()}
    cfg = model.cfg
    cfg.device = str(placed[names[0]])
    cfg.n_devices = len(set(placed.values()))


def forget_placement(model: Any) -> None:
    """After a move of the whole model to one device: no map, no moves at run time."""
    for module in model.modules():
        if getattr(module, "placed_on", None) is not None:
            module.placed_on = None
    if getattr(model, "device_map", None) is not None:
        model.device_map = None
        model.output_device = None
        model.cfg.n_devices = 1


def to_device(device: torch.device, *tensors: Tensor | None) -> tuple[Any, ...]:
    """Each tensor on `device` (None stays None)."""
    return tuple(None if t is None else t.to(device) for t in tensors)
