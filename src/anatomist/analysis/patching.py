"""Activation patching: run the corrupted input, put one clean activation back, measure the output.

Activation patching (Meng et al. 2022, "Locating and Editing Factual Associations in GPT"; Wang et
al. 2022, "Interpretability in the Wild") runs a model on a *corrupted* prompt, replaces one
activation (a layer, a position, a head, ...) by its value on the *clean* prompt, and measures with
a metric how far the output moves back towards the clean answer. Sweeping the replaced cell over
every layer / position / head localises the activations that carry the answer.

`generic_activation_patch` does the sweep for any activation and any patch setter; the
``get_act_patch_*`` presets are the classic ones, with the classic output shapes:

=============================================  ===================  =============================
preset                                          activation           result shape
=============================================  ===================  =============================
get_act_patch_resid_pre / resid_mid             resid_pre / mid      [n_layers, pos]
get_act_patch_attn_out / mlp_out                attn_out / mlp_out   [n_layers, pos]
get_act_patch_attn_head_out_by_pos              z                    [n_layers, pos, n_heads]
get_act_patch_attn_head_{q,k,v}_by_pos          q / k / v            [n_layers, pos, n_heads]
get_act_patch_attn_head_out_all_pos             z                    [n_layers, n_heads]
get_act_patch_attn_head_{q,k,v}_all_pos         q / k / v            [n_layers, n_heads]
get_act_patch_attn_head_pattern_by_pos          pattern              [n_layers, n_heads, dest_pos]
get_act_patch_attn_head_pattern_all_pos         pattern              [n_layers, n_heads]
get_act_patch_attn_head_pattern_dest_src_pos    pattern              [n_layers, n_heads, dest, src]
get_act_patch_attn_head_all_pos_every           z, q, k, v, pattern  [5, n_layers, n_heads]
get_act_patch_attn_head_by_pos_every            z, q, k, v, pattern  [5, n_layers, pos, n_heads]
get_act_patch_block_every                       resid_pre, attn/mlp  [3, n_layers, pos]
=============================================  ===================  =============================

Under grouped-query attention the k and v presets sweep the key/value heads (``n_key_value_heads``
of them); the ``_every`` helpers repeat each key/value head's result over the query heads that
read it, so the five rows stack.

Batching (not in the classic library): with ``batch_size=k`` the corrupted batch of B prompts is
replicated k times and replica i gets the i-th patch, so k cells cost one forward pass of k*B
prompts. ``patching_metric`` is then called once per replica, on that replica's logits
``[B, pos, d_vocab]`` -- exactly what it receives in the classic one-cell-per-forward mode, so a
classic metric works unchanged. ``batch_size=1`` (the default) is the classic loop.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from anatomist.utils import get_act_name

AxisName = Literal["layer", "pos", "head_index", "head", "src_pos", "dest_pos"]
AxisNames = AxisName  # the classic name
Logits = Tensor  # [B, pos, d_vocab]
CorruptedActivation = Tensor  # the classic names of a patch setter's tensors
PatchedActivation = Tensor
# (corrupted activation [B, ...], index row (layer first), clean activation [B, ...]) -> patched
PatchSetter = Callable[[Tensor, Sequence[int], Tensor], Tensor]
# logits [B, pos, d_vocab] -> scalar (a float or a 0-d tensor)
PatchingMetric = Callable[[Tensor], Any]

# The classic "_every" helpers' row order.
HEAD_ACT_TYPES = ("z", "q", "k", "v", "pattern")
BLOCK_ACT_TYPES = ("resid_pre", "attn_out", "mlp_out")


def require_pandas(what: str) -> Any:
    """Import pandas, or explain that `what` needs it."""
    try:
        import pandas as pd
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{what} needs pandas, which is not installed: pip install pandas (or install "
            "anatomist's dev extra). Without pandas, pass index_df as a list of index tuples "
            "or an integer tensor [n_patches, n_axes] and leave return_index_df=False."
        ) from err
    return pd


def make_df_from_ranges(column_max_ranges: Sequence[int], column_names: Sequence[str]) -> Any:
    """A DataFrame with one row per combination of ``range(m)`` for each column's `m`, in
    ``itertools.product`` order (the last column varies fastest), as the classic helper made."""
    pd = require_pandas("make_df_from_ranges")
    rows = list(itertools.product(*(range(m) for m in column_max_ranges)))
    return pd.DataFrame(rows, columns=list(column_names))


# --- patch setters: how one index row edits an activation (batch axis first) ---------------------


def layer_pos_patch_setter(corrupted: Tensor, index: Sequence[int], clean: Tensor) -> Tensor:
    """index = (layer, pos); activation [batch, pos, ...]."""
    _, pos = index
    corrupted[:, pos] = clean[:, pos]
    return corrupted


def layer_pos_head_vector_patch_setter(
    corrupted: Tensor, index: Sequence[int], clean: Tensor
) -> Tensor:
    """index = (layer, pos, head); activation [batch, pos, head, ...] (q, k, v, z, result)."""
    _, pos, head = index
    corrupted[:, pos, head] = clean[:, pos, head]
    return corrupted


def layer_head_vector_patch_setter(
    corrupted: Tensor, index: Sequence[int], clean: Tensor
) -> Tensor:
    """index = (layer, head); activation [batch, pos, head, ...]; every position."""
    _, head = index
    corrupted[:, :, head] = clean[:, :, head]
    return corrupted


def layer_head_pattern_patch_setter(
    corrupted: Tensor, index: Sequence[int], clean: Tensor
) -> Tensor:
    """index = (layer, head); activation [batch, head, dest_pos, src_pos] (pattern, scores)."""
    _, head = index
    corrupted[:, head] = clean[:, head]
    return corrupted


def layer_head_pos_pattern_patch_setter(
    corrupted: Tensor, index: Sequence[int], clean: Tensor
) -> Tensor:
    """index = (layer, head, dest_pos); activation [batch, head, dest_pos, src_pos]."""
    _, head, dest = index
    corrupted[:, head, dest] = clean[:, head, dest]
    return corrupted


def layer_head_dest_src_pos_pattern_patch_setter(
    corrupted: Tensor, index: Sequence[int], clean: Tensor
) -> Tensor:
    """index = (layer, head, dest_pos, src_pos); activation [batch, head, dest_pos, src_pos]."""
    _, head, dest, src = index
    corrupted[:, head, dest, src] = clean[:, head, dest, src]
    return corrupted


# --- the sweep ----------------------------------------------------------------------------------


def generic_activation_patch(
    model: Any,
    corrupted_tokens: Tensor,
    clean_cache: Mapping[str, Tensor] | Any,
    patching_metric: PatchingMetric,
    patch_setter: PatchSetter,
    activation_name: str,
    index_axis_names: Sequence[AxisName] | None = None,
    index_df: Any = None,
    return_index_df: bool = False,
    *,
    batch_size: int = 1,
    progress: bool = True,
) -> Tensor | tuple[Tensor, Any]:
    """Patch `activation_name` from `clean_cache` into the corrupted run, once per index row.

    Args:
        model: a `HookedTransformer`.
        corrupted_tokens: ``[batch, pos]`` tokens of the corrupted run (a string or list of
            strings is tokenized with ``model.to_tokens``).
        clean_cache: the clean run's activations (an `ActivationCache` or a dict by hook name),
            same batch and positions as the corrupted tokens.
        patching_metric: ``metric(logits [batch, pos, d_vocab]) -> scalar``.
        patch_setter: ``setter(corrupted_act, index, clean_act) -> patched_act``; `index` is one
            row (layer first). It may edit `corrupted_act` in place (it is a private copy).
        activation_name: a shorthand such as ``"resid_pre"``, ``"z"`` or ``"pattern"``; the hook
            patched for a row is ``get_act_name(activation_name, layer=row[0])``.
        index_axis_names: axes to sweep fully, e.g. ``("layer", "pos", "head")``; sizes come
            from the model (``head`` is ``n_key_value_heads`` for k and v) and the tokens.
        index_df: explicit rows instead of `index_axis_names`: a pandas DataFrame (columns =
            axes, layer first), a list of tuples, or an int tensor ``[n_rows, n_axes]``. The
            result is then flat, one value per row.
        return_index_df: also return the rows as a DataFrame (needs pandas).
        batch_size: cells patched per forward pass. With ``k > 1`` the corrupted batch is
            replicated k times, replica i gets the i-th cell, and the metric is called on each
            replica's ``[batch, pos, d_vocab]`` logits. Same numbers as ``1`` (the classic loop)
            up to float error, for any metric that depends only on the logits it is given.
        progress: show a tqdm progress bar.

    Returns:
        The metric per patch, shaped ``[size of each swept axis]`` (or ``[n_rows]`` for an
        explicit `index_df`), and the index DataFrame when `return_index_df`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    tokens = _as_tokens(model, corrupted_tokens)

    if index_df is None:
        if index_axis_names is None:
            raise ValueError("Pass index_axis_names (axes to sweep) or index_df (explicit rows).")
        sizes = _axis_sizes(model, tokens, activation_name, index_axis_names)
        rows = list(itertools.product(*(range(n) for n in sizes)))
        out_shape: tuple[int, ...] = tuple(sizes)
        if return_index_df:
            index_df = make_df_from_ranges(sizes, index_axis_names)
    else:
        if index_axis_names is not None:
            raise ValueError("Pass either index_axis_names or index_df, not both.")
        rows = _rows_from_index(index_df)
        out_shape = (len(rows),)
        if return_index_df and not _is_dataframe(index_df):
            pd = require_pandas("return_index_df=True")
            index_df = pd.DataFrame(rows)

    _check_clean_cache(tokens, clean_cache, activation_name, {row[0] for row in rows})
    values = _run_patches(
        model, tokens, clean_cache, patching_metric, patch_setter, activation_name, rows,
        batch_size, progress,
    )  # fmt: skip
    result = torch.tensor(values, dtype=torch.float32, device=_device(model)).reshape(out_shape)
    return (result, index_df) if return_index_df else result


def _run_patches(
    model: Any,
    tokens: Tensor,
    clean_cache: Any,
    metric: PatchingMetric,
    setter: PatchSetter,
    activation_name: str,
    rows: list[tuple[int, ...]],
    batch_size: int,
    progress: bool,
) -> list[float]:
    from tqdm.auto import tqdm

    n_batch = tokens.shape[0]
    replicated = tokens.repeat(min(batch_size, max(len(rows), 1)), 1)  # [k*B, pos]
    values: list[float] = []
    with tqdm(total=len(rows), disable=not progress, desc=f"patching {activation_name}") as bar:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            by_hook: dict[str, list[tuple[int, tuple[int, ...]]]] = {}
            for replica, row in enumerate(chunk):
                name = get_act_name(activation_name, layer=row[0])
                by_hook.setdefault(name, []).append((replica, row))
            hooks = [
                (name, _patch_hook(setter, cells, clean_cache[name], n_batch))
                for name, cells in by_hook.items()
            ]
            with torch.no_grad():
                logits = model.run_with_hooks(replicated[: len(chunk) * n_batch], fwd_hooks=hooks)
            if len(chunk) == 1:
                values.append(_scalar(metric(logits)))
            else:
                values.extend(
                    _scalar(metric(logits[i * n_batch : (i + 1) * n_batch]))
                    for i in range(len(chunk))
                )
            bar.update(len(chunk))
    return values


def _patch_hook(
    setter: PatchSetter,
    cells: list[tuple[int, tuple[int, ...]]],
    clean_act: Tensor,
    n_batch: int,
) -> Callable[..., Tensor]:
    """A forward hook giving replica i of the activation the patch of its index row."""

    def hook(activation: Tensor, hook: Any) -> Tensor:
        # A private copy: the hooked tensor can be shared with other activations (resid_pre of
        # layer l+1 is resid_post of layer l), which an in-place patch would also change.
        activation = activation.clone()
        clean = clean_act.to(activation.device, activation.dtype)
        for replica, row in cells:
            part = activation[replica * n_batch : (replica + 1) * n_batch]
            patched = setter(part, list(row), clean)
            if patched is not part:
                activation[replica * n_batch : (replica + 1) * n_batch] = patched
        return activation

    return hook


# --- helpers ------------------------------------------------------------------------------------


def _as_tokens(model: Any, tokens: Any) -> Tensor:
    if not isinstance(tokens, Tensor):
        tokens = model.to_tokens(tokens)
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.dim() != 2:
        raise ValueError(
            f"corrupted_tokens must be [batch, pos] tokens, got {tuple(tokens.shape)}."
        )
    return tokens


def _check_clean_cache(
    tokens: Tensor, clean_cache: Any, activation_name: str, layers: set[int]
) -> None:
    """The clean activations must line up with the corrupted run, batch for batch and position
    for position, before any forward: otherwise a patch lands on other tokens (or fails deep
    inside a setter after part of the sweep has run)."""
    batch, pos = tokens.shape
    for layer in sorted(layers):
        name = get_act_name(activation_name, layer=layer)
        clean = clean_cache[name]  # an ActivationCache names the missing hook and close ones
        # [b, h, q, k] for scores and patterns (both position axes), [b, p, ...] otherwise.
        position_axes = (2, 3) if name.endswith(("hook_pattern", "hook_attn_scores")) else (1,)
        got = [clean.shape[0], *(clean.shape[a] for a in position_axes if a < clean.dim())]
        if clean.dim() <= max(position_axes) or got != [batch] + [pos] * len(position_axes):
            raise ValueError(
                f"clean_cache[{name!r}] has shape {tuple(clean.shape)} but corrupted_tokens are "
                f"{tuple(tokens.shape)} [batch, pos]: patching needs clean and corrupted runs of "
                "the same batch size and length (cache the clean run with the full batch, "
                "without remove_batch_dim or pos_slice)."
            )


def _device(model: Any) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _scalar(value: Any) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"patching_metric must return a scalar, got a tensor of shape "
                f"{tuple(value.shape)}; reduce it (e.g. .mean()) over the batch."
            )
        return float(value.item())
    return float(value)


def head_count(model: Any, activation_name: str) -> int:
    """Heads along an activation's head axis: key/value heads for k and v (grouped-query
    attention), query heads otherwise."""
    leaf = activation_name.rsplit("hook_", 1)[-1]
    if leaf in ("k", "v", "rot_k"):
        return int(model.cfg.n_key_value_heads or model.cfg.n_heads)
    return int(model.cfg.n_heads)


def _axis_sizes(model: Any, tokens: Tensor, activation_name: str, axes: Sequence[str]) -> list[int]:
    n_pos = tokens.shape[-1]
    sizes = {
        "layer": model.cfg.n_layers,
        "pos": n_pos,
        "src_pos": n_pos,
        "dest_pos": n_pos,
        "head": head_count(model, activation_name),
        "head_index": head_count(model, activation_name),
    }
    unknown = [a for a in axes if a not in sizes]
    if unknown:
        raise ValueError(f"Unknown index axes {unknown}; known axes: {', '.join(sizes)}.")
    if not axes or axes[0] != "layer":
        raise ValueError(f"The first index axis must be 'layer', got {list(axes)}.")
    return [sizes[a] for a in axes]


def _is_dataframe(obj: Any) -> bool:
    return hasattr(obj, "itertuples") and hasattr(obj, "columns")


def _rows_from_index(index_df: Any) -> list[tuple[int, ...]]:
    if _is_dataframe(index_df):
        rows = [tuple(int(v) for v in row) for row in index_df.itertuples(index=False)]
    elif isinstance(index_df, Tensor):
        rows = [tuple(int(v) for v in row) for row in index_df.tolist()]
    else:
        rows = [tuple(int(v) for v in row) for row in index_df]
    if not rows:
        raise ValueError("index_df has no rows: nothing to patch.")
    return rows


# --- presets ------------------------------------------------------------------------------------


def _preset(
    name: str,
    activation_name: str,
    setter: PatchSetter,
    axes: tuple[AxisName, ...],
    what: str,
    shape: str,
) -> Callable[..., Any]:
    def preset(
        model: Any,
        corrupted_tokens: Tensor,
        clean_cache: Mapping[str, Tensor] | Any,
        patching_metric: PatchingMetric,
        index_df: Any = None,
        return_index_df: bool = False,
        *,
        batch_size: int = 1,
        progress: bool = True,
    ) -> Any:
        return generic_activation_patch(
            model,
            corrupted_tokens,
            clean_cache,
            patching_metric,
            setter,
            activation_name,
            index_axis_names=None if index_df is not None else axes,
            index_df=index_df,
            return_index_df=return_index_df,
            batch_size=batch_size,
            progress=progress,
        )

    preset.__name__ = preset.__qualname__ = name
    preset.__doc__ = (
        f"Activation patching of {what}: the metric per patch, shaped {shape}.\n\n"
        f"Patches ``{activation_name}`` over the axes {axes}; see `generic_activation_patch` for "
        "the arguments (``batch_size`` patches several cells per forward pass)."
    )
    return preset


# fmt: off
get_act_patch_resid_pre = _preset(
    "get_act_patch_resid_pre", "resid_pre", layer_pos_patch_setter, ("layer", "pos"),
    "the residual stream at the start of each block, by position", "[n_layers, pos]")
get_act_patch_resid_mid = _preset(
    "get_act_patch_resid_mid", "resid_mid", layer_pos_patch_setter, ("layer", "pos"),
    "the residual stream between attention and MLP, by position", "[n_layers, pos]")
get_act_patch_attn_out = _preset(
    "get_act_patch_attn_out", "attn_out", layer_pos_patch_setter, ("layer", "pos"),
    "each attention layer's output, by position", "[n_layers, pos]")
get_act_patch_mlp_out = _preset(
    "get_act_patch_mlp_out", "mlp_out", layer_pos_patch_setter, ("layer", "pos"),
    "each MLP layer's output, by position", "[n_layers, pos]")

get_act_patch_attn_head_out_by_pos = _preset(
    "get_act_patch_attn_head_out_by_pos", "z", layer_pos_head_vector_patch_setter,
    ("layer", "pos", "head"), "each head's output (z), by position", "[n_layers, pos, n_heads]")
get_act_patch_attn_head_q_by_pos = _preset(
    "get_act_patch_attn_head_q_by_pos", "q", layer_pos_head_vector_patch_setter,
    ("layer", "pos", "head"), "each head's queries, by position", "[n_layers, pos, n_heads]")
get_act_patch_attn_head_k_by_pos = _preset(
    "get_act_patch_attn_head_k_by_pos", "k", layer_pos_head_vector_patch_setter,
    ("layer", "pos", "head"), "each (key/value) head's keys, by position",
    "[n_layers, pos, n_key_value_heads]")
get_act_patch_attn_head_v_by_pos = _preset(
    "get_act_patch_attn_head_v_by_pos", "v", layer_pos_head_vector_patch_setter,
    ("layer", "pos", "head"), "each (key/value) head's values, by position",
    "[n_layers, pos, n_key_value_heads]")
get_act_patch_attn_head_pattern_by_pos = _preset(
    "get_act_patch_attn_head_pattern_by_pos", "pattern", layer_head_pos_pattern_patch_setter,
    ("layer", "head_index", "dest_pos"), "each head's attention pattern, by destination position",
    "[n_layers, n_heads, dest_pos]")
get_act_patch_attn_head_pattern_dest_src_pos = _preset(
    "get_act_patch_attn_head_pattern_dest_src_pos", "pattern",
    layer_head_dest_src_pos_pattern_patch_setter, ("layer", "head_index", "dest_pos", "src_pos"),
    "each (destination, source) entry of each head's attention pattern",
    "[n_layers, n_heads, dest_pos, src_pos]")

get_act_patch_attn_head_out_all_pos = _preset(
    "get_act_patch_attn_head_out_all_pos", "z", layer_head_vector_patch_setter,
    ("layer", "head"), "each head's output (z) at every position", "[n_layers, n_heads]")
get_act_patch_attn_head_q_all_pos = _preset(
    "get_act_patch_attn_head_q_all_pos", "q", layer_head_vector_patch_setter,
    ("layer", "head"), "each head's queries at every position", "[n_layers, n_heads]")
get_act_patch_attn_head_k_all_pos = _preset(
    "get_act_patch_attn_head_k_all_pos", "k", layer_head_vector_patch_setter,
    ("layer", "head"), "each (key/value) head's keys at every position",
    "[n_layers, n_key_value_heads]")
get_act_patch_attn_head_v_all_pos = _preset(
    "get_act_patch_attn_head_v_all_pos", "v", layer_head_vector_patch_setter,
    ("layer", "head"), "each (key/value) head's values at every position",
    "[n_layers, n_key_value_heads]")
get_act_patch_attn_head_pattern_all_pos = _preset(
    "get_act_patch_attn_head_pattern_all_pos", "pattern", layer_head_pattern_patch_setter,
    ("layer", "head_index"), "each head's whole attention pattern", "[n_layers, n_heads]")
# fmt: on


def _expand_kv(model: Any, result: Tensor, head_dim: int) -> Tensor:
    """Repeat each key/value head's result over the query heads that read it (GQA)."""
    group = model.cfg.n_heads // head_count(model, "k")
    return result.repeat_interleave(group, dim=head_dim) if group > 1 else result


def get_act_patch_attn_head_all_pos_every(
    model: Any,
    corrupted_tokens: Tensor,
    clean_cache: Mapping[str, Tensor] | Any,
    metric: PatchingMetric,
    *,
    batch_size: int = 1,
    progress: bool = True,
) -> Tensor:
    """Every head, all positions at once, for each of z, q, k, v, pattern (in that order):
    ``[5, n_layers, n_heads]``. Under GQA the k and v rows repeat each key/value head's result
    over its query heads."""
    kw: dict[str, Any] = dict(batch_size=batch_size, progress=progress)
    args = (model, corrupted_tokens, clean_cache, metric)
    return torch.stack(
        [
            get_act_patch_attn_head_out_all_pos(*args, **kw),
            get_act_patch_attn_head_q_all_pos(*args, **kw),
            _expand_kv(model, get_act_patch_attn_head_k_all_pos(*args, **kw), 1),
            _expand_kv(model, get_act_patch_attn_head_v_all_pos(*args, **kw), 1),
            get_act_patch_attn_head_pattern_all_pos(*args, **kw),
        ]
    )


def get_act_patch_attn_head_by_pos_every(
    model: Any,
    corrupted_tokens: Tensor,
    clean_cache: Mapping[str, Tensor] | Any,
    metric: PatchingMetric,
    *,
    batch_size: int = 1,
    progress: bool = True,
) -> Tensor:
    """Every head at every position, for each of z, q, k, v, pattern (by destination position):
    ``[5, n_layers, pos, n_heads]``. Under GQA the k and v rows repeat each key/value head's
    result over its query heads."""
    kw: dict[str, Any] = dict(batch_size=batch_size, progress=progress)
    args = (model, corrupted_tokens, clean_cache, metric)
    pattern = get_act_patch_attn_head_pattern_by_pos(*args, **kw)  # [layer, head, dest_pos]
    return torch.stack(
        [
            get_act_patch_attn_head_out_by_pos(*args, **kw),
            get_act_patch_attn_head_q_by_pos(*args, **kw),
            _expand_kv(model, get_act_patch_attn_head_k_by_pos(*args, **kw), 2),
            _expand_kv(model, get_act_patch_attn_head_v_by_pos(*args, **kw), 2),
            pattern.transpose(1, 2),  # [layer, pos, head]
        ]
    )


def get_act_patch_block_every(
    model: Any,
    corrupted_tokens: Tensor,
    clean_cache: Mapping[str, Tensor] | Any,
    metric: PatchingMetric,
    *,
    batch_size: int = 1,
    progress: bool = True,
) -> Tensor:
    """The residual stream at each block's start, each attention output and each MLP output, by
    position: ``[3, n_layers, pos]``."""
    kw: dict[str, Any] = dict(batch_size=batch_size, progress=progress)
    args = (model, corrupted_tokens, clean_cache, metric)
    return torch.stack(
        [
            get_act_patch_resid_pre(*args, **kw),
            get_act_patch_attn_out(*args, **kw),
            get_act_patch_mlp_out(*args, **kw),
        ]
    )


__all__ = [
    "generic_activation_patch",
    "get_act_patch_attn_head_all_pos_every",
    "get_act_patch_attn_head_by_pos_every",
    "get_act_patch_attn_head_k_all_pos",
    "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_out_by_pos",
    "get_act_patch_attn_head_pattern_all_pos",
    "get_act_patch_attn_head_pattern_by_pos",
    "get_act_patch_attn_head_pattern_dest_src_pos",
    "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_attn_out",
    "get_act_patch_block_every",
    "get_act_patch_mlp_out",
    "get_act_patch_resid_mid",
    "get_act_patch_resid_pre",
    "layer_head_dest_src_pos_pattern_patch_setter",
    "layer_head_pattern_patch_setter",
    "layer_head_pos_pattern_patch_setter",
    "layer_head_vector_patch_setter",
    "layer_pos_head_vector_patch_setter",
    "layer_pos_patch_setter",
    "make_df_from_ranges",
]
