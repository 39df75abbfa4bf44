"""Path patching: the effect of sender heads on the output *through* chosen receivers only.

Activation patching measures an activation's total effect. Path patching (Wang et al. 2022,
"Interpretability in the Wild", section 3; Goldowsky-Dill et al. 2023, "Localizing Model Behavior
with Path Patching") isolates one path: sender heads -> receiver components -> output.

Both functions here follow the convention of `anatomist.analysis.patching`: the model runs on the
*corrupted* tokens and the senders get their *clean* values (swap the two inputs to measure the
opposite direction). Two forward passes per measurement:

1. Corrupted run with every attention head's output (``hook_z``) frozen to its corrupted value,
   except the senders, which get their clean value. MLPs are recomputed (unless
   ``freeze_mlps=True``: then ``hook_mlp_out`` is frozen too), and so are norms. The activations
   at the receivers are recorded: they now differ from the corrupted run only through paths
   sender -> (MLPs) -> receiver.
2. Corrupted run with only the receivers replaced by the values recorded in pass 1. The metric of
   its logits is the result.

A receiver is a hook name (full, or a shorthand with its layer such as ``"q3"`` or
``"resid_pre2"``), optionally with a head index: ``("blocks.2.attn.hook_q", 1)`` patches head 1's
queries only (for k and v under grouped-query attention the index is the key/value head). The
default receiver, the final residual stream ``blocks.{n_layers-1}.hook_resid_post``, measures the
senders' direct effect on the logits (plus their paths through MLPs when these are not frozen).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from anatomist.analysis.patching import (
    PatchingMetric,
    PatchRunner,
    _as_tokens,
    _check_clean_cache,
    _device,
    _scalar,
    layer_of_hook,
)
from anatomist.utils import get_act_name

Head = tuple[int, int]  # (layer, head)
Receiver = str | tuple[str, int]  # hook name, or (hook name, head index)

# Hooks whose head axis is 1 ([batch, head, query_pos, key_pos]); every other head-shaped hook
# is [batch, pos, head, d].
_HEAD_FIRST = ("hook_attn_scores", "hook_pattern")


def path_patch(
    model: Any,
    corrupted_tokens: Tensor,
    clean_cache: Mapping[str, Tensor] | Any,
    patching_metric: PatchingMetric,
    senders: Head | Sequence[Head],
    receivers: Receiver | Sequence[Receiver] | None = None,
    *,
    corrupted_cache: Mapping[str, Tensor] | Any = None,
    freeze_mlps: bool = False,
    reuse: bool = True,
) -> float:
    """The metric after patching the path from `senders` (together) to `receivers`.

    Args:
        model: a `HookedTransformer`.
        corrupted_tokens: ``[batch, pos]`` tokens of the run being patched.
        clean_cache: clean-run activations holding ``hook_z`` of every sender's layer.
        patching_metric: ``metric(logits [batch, pos, d_vocab]) -> scalar``.
        senders: a ``(layer, head)`` pair or a list of them, patched together at every position.
        receivers: a receiver or a list of them (see the module docstring); default the final
            residual stream.
        corrupted_cache: the corrupted run's ``hook_z`` (and ``hook_mlp_out`` with
            `freeze_mlps`) for every layer; computed when not given.
        freeze_mlps: also freeze every MLP output, so only head -> head paths count.
        reuse: skip what equals the corrupted run: pass 1 starts at the first sender's block
            and stops after the last receiver's, pass 2 starts at the first receiver's block,
            both from the corrupted run's residual stream. False (or hooks attached to the
            model, with a warning) runs both passes in full, as the classic recipe does.

    Returns:
        The metric of the pass-2 logits.
    """
    if isinstance(senders, tuple) and len(senders) == 2 and isinstance(senders[0], int):
        senders = [senders]  # type: ignore[list-item]
    group = [(int(layer), int(head)) for layer, head in senders]  # type: ignore[misc]
    tokens = _as_tokens(model, corrupted_tokens)
    runner = PatchRunner(model, tokens, batch_size=1, reuse=reuse, what="path_patch")
    return _path_patch_groups(
        runner, clean_cache, patching_metric, [group], receivers, corrupted_cache, freeze_mlps
    )[0]


def path_patch_heads(
    model: Any,
    corrupted_tokens: Tensor,
    clean_cache: Mapping[str, Tensor] | Any,
    patching_metric: PatchingMetric,
    receivers: Receiver | Sequence[Receiver] | None = None,
    *,
    corrupted_cache: Mapping[str, Tensor] | Any = None,
    freeze_mlps: bool = False,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    reuse: bool = True,
    progress: bool = True,
) -> Tensor:
    """`path_patch` with each head of the model as the only sender, in turn.

    The corrupted batch is replicated k times and k senders are measured per pair of forward
    passes (k from `memory_budget` unless `batch_size` is given; ``batch_size=1`` is the classic
    loop); the metric is called on each replica's logits ``[batch, pos, d_vocab]``, in head
    order, as with one sender at a time. `reuse` as in `path_patch`.

    Returns:
        ``[n_layers, n_heads]``: the metric with head (layer, head) as the sender. A head that
        no receiver reads from (a receiver's q/k/v in its own layer or earlier) gives the
        corrupted metric.
    """
    from tqdm.auto import tqdm

    tokens = _as_tokens(model, corrupted_tokens)
    runner = PatchRunner(
        model, tokens, batch_size=batch_size, memory_budget=memory_budget, reuse=reuse,
        what="path_patch_heads",
    )  # fmt: skip
    cfg = model.cfg
    if corrupted_cache is None:
        corrupted_cache = _corrupted_cache(model, tokens, freeze_mlps)
    heads = [[(layer, head)] for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
    runner.prepare(range(cfg.n_layers))
    values: list[float] = []
    with tqdm(total=len(heads), disable=not progress, desc="path patching") as bar:
        for start in range(0, len(heads), runner.batch_size):
            chunk = heads[start : start + runner.batch_size]
            values += _path_patch_groups(
                runner, clean_cache, patching_metric, chunk, receivers, corrupted_cache,
                freeze_mlps,
            )  # fmt: skip
            bar.update(len(chunk))
    return torch.tensor(values, device=_device(model)).reshape(cfg.n_layers, cfg.n_heads)


def _corrupted_cache(model: Any, tokens: Tensor, freeze_mlps: bool) -> dict[str, Tensor]:
    wanted = ("hook_z", "hook_mlp_out") if freeze_mlps else ("hook_z",)
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens, names_filter=lambda n: n.endswith(wanted), return_cache_object=False
        )
    return dict(cache)


def _resolve_receivers(
    model: Any, receivers: Receiver | Sequence[Receiver] | None, freeze_mlps: bool
) -> list[tuple[str, int | None]]:
    if receivers is None:
        receivers = [f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    elif isinstance(receivers, str) or (
        isinstance(receivers, tuple) and len(receivers) == 2 and isinstance(receivers[1], int)
    ):
        receivers = [receivers]  # type: ignore[list-item]
    resolved: list[tuple[str, int | None]] = []
    for receiver in receivers:  # type: ignore[union-attr]
        name, head = (receiver, None) if isinstance(receiver, str) else receiver
        full = get_act_name(name)
        if full not in model.hook_dict:
            raise model._unknown_hook(name)
        frozen = full.endswith("hook_z") or (freeze_mlps and full.endswith("hook_mlp_out"))
        if frozen:
            raise ValueError(
                f"Receiver {full!r} is frozen in path patching's first pass, so no path reaches "
                "it; name what the receiving component reads instead (a head's hook_q/hook_k/"
                "hook_v, a block's hook_resid_pre/resid_mid, or mlp.hook_pre)."
            )
        resolved.append((full, head))
    return resolved


def _path_patch_groups(
    runner: PatchRunner,
    clean_cache: Any,
    metric: PatchingMetric,
    groups: list[list[Head]],
    receivers: Receiver | Sequence[Receiver] | None,
    corrupted_cache: Any,
    freeze_mlps: bool,
) -> list[float]:
    """Path patch each sender group in its own replica of the corrupted batch: two forwards."""
    model, tokens = runner.model, runner.tokens
    cfg = model.cfg
    for layer, head in (sender for group in groups for sender in group):
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise ValueError(
                f"senders names head ({layer}, {head}), outside this model's "
                f"{cfg.n_layers} layers x {cfg.n_heads} heads."
            )
    _check_clean_cache(tokens, clean_cache, "z", {layer for g in groups for layer, _ in g})
    n_batch, n_rep = tokens.shape[0], len(groups)
    if corrupted_cache is None:
        corrupted_cache = _corrupted_cache(model, tokens, freeze_mlps)
    targets = _resolve_receivers(model, receivers, freeze_mlps)

    def frozen(name: str, senders: dict[int, list[int]] | None) -> Callable[..., Tensor]:
        """Replace an activation by its corrupted value; sender heads (per replica) by clean."""
        corrupted = corrupted_cache[name]

        def hook(activation: Tensor, hook: Any) -> Tensor:
            out = corrupted.to(activation.device, activation.dtype).repeat(
                n_rep, *([1] * (corrupted.dim() - 1))
            )
            for replica, heads in (senders or {}).items():
                rows = slice(replica * n_batch, (replica + 1) * n_batch)
                out[rows, :, heads] = clean_cache[name][:, :, heads].to(out.device, out.dtype)
            return out

        return hook

    pass1_hooks: list[tuple[str, Callable[..., Any]]] = []
    for layer in range(cfg.n_layers):
        senders = {
            r: [h for (sl, h) in group if sl == layer]
            for r, group in enumerate(groups)
            if any(sl == layer for sl, _ in group)
        }
        z_name = f"blocks.{layer}.attn.hook_z"
        pass1_hooks.append((z_name, frozen(z_name, senders)))
        if freeze_mlps:
            name = f"blocks.{layer}.hook_mlp_out"
            pass1_hooks.append((name, frozen(name, None)))

    recorded: dict[str, Tensor] = {}

    def record(activation: Tensor, hook: Any) -> None:
        recorded[hook.name] = activation.detach().clone()

    names = list(dict.fromkeys(name for name, _ in targets))
    # Below the first sender's block pass 1 is the corrupted run, and nothing after the last
    # receiver's block is read; pass 2 is the corrupted run below the first receiver's block.
    first_sender = min(layer for group in groups for layer, _ in group)
    receiver_layers = [layer_of_hook(n) for n in names]
    in_blocks = None not in receiver_layers
    known = [layer for layer in receiver_layers if layer is not None]
    first_receiver = min(known) if in_blocks else None
    last_receiver = max(known) if in_blocks else None
    if last_receiver is not None and first_sender > last_receiver:
        first_sender = last_receiver  # no sender reaches a receiver; pass 1 stays corrupted
    runner.prepare([first_sender, first_receiver])
    # Recording hooks run after the freezing ones (added later), so a recorded value is final.
    runner.run(
        n_rep,
        pass1_hooks + [(n, record) for n in names],
        start_layer=first_sender,
        stop_layer=None if last_receiver is None else last_receiver + 1,
        return_type=None,
    )

    def replace(name: str, heads: list[int | None]) -> Callable[..., Tensor]:
        def hook(activation: Tensor, hook: Any) -> Tensor:
            if None in heads:
                return recorded[name]
            out = activation.clone()
            axis = 1 if name.endswith(_HEAD_FIRST) else 2
            index: list[Any] = [slice(None)] * out.dim()
            index[axis] = [h for h in heads if h is not None]
            out[tuple(index)] = recorded[name][tuple(index)]
            return out

        return hook

    pass2_hooks = [(n, replace(n, [h for m, h in targets if m == n])) for n in names]
    logits = runner.run(n_rep, pass2_hooks, start_layer=first_receiver)
    return [_scalar(metric(logits[r * n_batch : (r + 1) * n_batch])) for r in range(n_rep)]


__all__ = ["Head", "Receiver", "path_patch", "path_patch_heads"]
