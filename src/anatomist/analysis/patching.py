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

How a sweep runs (faster than the classic loop, same numbers):

* **Cells are batched.** The corrupted batch of B prompts is replicated k times and replica i gets
  the i-th cell's patch, so k cells cost one forward pass of k*B prompts. k comes from a memory
  budget (`memory_budget`, 1 GiB by default, at most 64 cells) unless ``batch_size`` is given;
  ``batch_size=1`` is the classic one-forward-per-cell loop.
* **Layers below the patch are not recomputed.** A patch in block l leaves blocks 0..l-1 exactly
  as in the corrupted run, so the patched forward starts at block l from the corrupted run's
  residual stream (computed once per sweep, ``start_at_layer``).
* **The metric keeps the classic contract**: called once per cell, in row order, on that cell's
  logits ``[B, pos, d_vocab]``, as the classic loop calls it. A metric that keeps state (counts
  calls, collects values) sees the same sequence of calls.

Results equal the classic loop's within float error (tested at 1e-5). Both speed-ups change what
hooks already attached to the model would see (a k*B batch; no call for blocks below the patch),
so when any hook is attached (``model.add_hook``, ``model.hooks(...)``, a torch hook on a
submodule or a global one) a sweep runs the classic loop instead, and warns once. ``reuse=False``
asks for the classic loop explicitly. Denoising (run the corrupted prompt, patch clean values)
and noising (run the clean prompt, patch corrupted values: swap the arguments) work alike.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
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

# A sweep's automatic batch: cells per forward from this many bytes of activations, at most
# MAX_AUTO_BATCH (on a CPU the forward's speed per cell stops improving well before that).
DEFAULT_MEMORY_BUDGET = 1 << 30
MAX_AUTO_BATCH = 64

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
    batch_size: int | None = None,
    memory_budget: int | None = None,
    reuse: bool = True,
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
        batch_size: cells patched per forward pass (None: as many as `memory_budget` allows,
            at most 64). With ``k > 1`` the corrupted batch is replicated k times, replica i
            gets the i-th cell, and the metric is called on each replica's
            ``[batch, pos, d_vocab]`` logits, in row order. ``1`` is the classic loop.
        memory_budget: bytes of activations one batched forward may use when `batch_size` is
            None (default 1 GiB).
        reuse: start each patched forward at the patched block from the corrupted run's
            residual stream and batch cells (the default); False runs the classic loop, one
            full forward per cell. With hooks attached to the model the classic loop runs
            anyway (with a warning): the fast path would change what they see.
        progress: show a tqdm progress bar.

    Returns:
        The metric per patch, shaped ``[size of each swept axis]`` (or ``[n_rows]`` for an
        explicit `index_df`), and the index DataFrame when `return_index_df`.
    """
    tokens = _as_tokens(model, corrupted_tokens)
    runner = PatchRunner(
        model, tokens, batch_size=batch_size, memory_budget=memory_budget, reuse=reuse,
        what="generic_activation_patch",
    )  # fmt: skip
    return _sweep(
        runner, clean_cache, patching_metric, patch_setter, activation_name, index_axis_names,
        index_df, return_index_df, progress,
    )  # fmt: skip


def _sweep(
    runner: PatchRunner,
    clean_cache: Any,
    patching_metric: PatchingMetric,
    patch_setter: PatchSetter,
    activation_name: str,
    index_axis_names: Sequence[AxisName] | None,
    index_df: Any,
    return_index_df: bool,
    progress: bool,
) -> Tensor | tuple[Tensor, Any]:
    model, tokens = runner.model, runner.tokens
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
        runner, clean_cache, patching_metric, patch_setter, activation_name, rows, progress
    )
    result = torch.tensor(values, dtype=torch.float32, device=_device(model)).reshape(out_shape)
    return (result, index_df) if return_index_df else result


def _run_patches(
    runner: PatchRunner,
    clean_cache: Any,
    metric: PatchingMetric,
    setter: PatchSetter,
    activation_name: str,
    rows: list[tuple[int, ...]],
    progress: bool,
) -> list[float]:
    from tqdm.auto import tqdm

    n_batch = runner.tokens.shape[0]
    batch_size = runner.batch_size
    names = [get_act_name(activation_name, layer=row[0]) for row in rows]
    runner.prepare({layer_of_hook(name) for name in names})
    values: list[float] = []
    with tqdm(total=len(rows), disable=not progress, desc=f"patching {activation_name}") as bar:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            by_hook: dict[str, list[tuple[int, tuple[int, ...]]]] = {}
            for replica, (row, name) in enumerate(zip(chunk, names[start:], strict=False)):
                by_hook.setdefault(name, []).append((replica, row))
            hooks = [
                (name, _patch_hook(setter, cells, clean_cache[name], n_batch))
                for name, cells in by_hook.items()
            ]
            logits = runner.run(len(chunk), hooks, start_layer=_first_layer(by_hook))
            if len(chunk) == 1:
                values.append(_scalar(metric(logits)))
            else:
                values.extend(
                    _scalar(metric(logits[i * n_batch : (i + 1) * n_batch]))
                    for i in range(len(chunk))
                )
            bar.update(len(chunk))
    return values


def _first_layer(names: Iterable[str]) -> int | None:
    """The first block any of these hooks is in (None: a hook outside the blocks)."""
    layers = [layer_of_hook(name) for name in names]
    return None if None in layers else min(layer for layer in layers if layer is not None)


_BLOCK_HOOK = re.compile(r"blocks\.(\d+)\.")


def layer_of_hook(name: str) -> int | None:
    """The block a hook point is in (``blocks.{i}.``), None for one outside the blocks."""
    match = _BLOCK_HOOK.match(name)
    return int(match.group(1)) if match else None


class PatchRunner:
    """The patched forward passes of one sweep over one corrupted batch.

    `run` runs k cells at once (the corrupted batch replicated k times) and, when every edit of
    the pass lies in block l or later, starts at block l from the corrupted run's residual
    stream (`prepare` computes it once, for the blocks the sweep needs). Hooks already attached
    to the model, or ``reuse=False``, make it the classic loop: one full forward per cell.
    """

    def __init__(
        self,
        model: Any,
        tokens: Tensor,
        *,
        batch_size: int | None = None,
        memory_budget: int | None = None,
        reuse: bool = True,
        what: str = "this sweep",
    ) -> None:
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise ValueError(
                f"batch_size must be an int of at least 1 (or None), got {batch_size}."
            )
        if memory_budget is not None and memory_budget < 1:
            raise ValueError(
                f"memory_budget must be a positive number of bytes, got {memory_budget}."
            )
        self.model, self.tokens = model, tokens
        self.budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
        attached = _attached_hooks(model) if reuse else []
        if attached:
            shown = ", ".join(attached[:3]) + (", ..." if len(attached) > 3 else "")
            warnings.warn(
                f"{what}: hooks are attached to the model ({shown}); batching cells and "
                "starting at the patched block would change what they see, so this sweep runs "
                "the classic loop (one full forward per cell, slower). Remove them "
                "(model.reset_hooks(including_permanent=True)) for the fast path, or pass "
                "reuse=False to choose the classic loop without this warning.",
                stacklevel=3,
            )
        self.fast = reuse and not attached
        if batch_size is None:
            batch_size = self._auto_batch() if self.fast else 1
        self.batch_size = int(batch_size)
        self.starts_at_layer = self.fast and _can_start_at_layer(model)
        self._mask: Tensor | None = None
        self._residual: dict[int, Tensor] = {}

    def _auto_batch(self) -> int:
        """Cells per forward within the memory budget: logits, MLP hidden activations, the
        residual streams and one layer's attention scores of every replica."""
        cfg = self.model.cfg
        batch, pos = self.tokens.shape
        param = next(self.model.parameters(), None)
        itemsize = param.element_size() if param is not None else 4
        d_mlp = getattr(cfg, "d_mlp", None) or 4 * cfg.d_model
        per_token = (
            int(getattr(cfg, "d_vocab_out", None) or cfg.d_vocab)
            + 3 * d_mlp
            + 8 * cfg.d_model
            + 2 * cfg.n_heads * pos
        )
        per_cell = max(1, batch * pos * per_token * itemsize)
        return max(1, min(MAX_AUTO_BATCH, self.budget // per_cell))

    def prepare(self, layers: Iterable[int | None]) -> None:
        """Compute the corrupted residual stream at the start of every block up to the last of
        these (one forward, stopped there), unless holding them would exceed the memory
        budget (then the blocks are recomputed)."""
        last = max((layer for layer in layers if layer), default=0)
        # Every block up to the last one asked for: the same forward, and a later call (another
        # chunk of a sweep) then finds them all.
        wanted = sorted(set(range(1, last + 1)) - set(self._residual))
        if not self.starts_at_layer or not wanted:
            return
        model, tokens = self.model, self.tokens
        param = next(model.parameters(), None)
        per_layer = (
            tokens.numel() * model.cfg.d_model * (param.element_size() if param is not None else 4)
        )
        if per_layer * (len(wanted) + len(self._residual)) > self.budget:
            self.starts_at_layer = False  # too big to keep: recompute the blocks instead
            return
        self._mask = model._tokens_and_mask(tokens, None, None, None)[1]
        # Blocks before the last: their hook_resid_pre; the last: the stream the run stops with.
        names = {f"blocks.{layer}.hook_resid_pre": layer for layer in wanted[:-1]}
        with torch.no_grad():
            residual, cache = model.run_with_cache(
                tokens,
                names_filter=lambda name: name in names,
                stop_at_layer=wanted[-1],
                return_cache_object=False,
            )
        self._residual[wanted[-1]] = residual
        for name, layer in names.items():
            self._residual[layer] = cache[name]

    def run(
        self,
        n_rep: int,
        fwd_hooks: list[tuple[str, Callable[..., Any]]],
        start_layer: int | None = None,
        stop_layer: int | None = None,
        return_type: str | None = "logits",
    ) -> Any:
        """One forward of the corrupted batch replicated `n_rep` times with `fwd_hooks`, from
        block `start_layer` when its residual stream is known (else from the tokens) and, with
        `stop_layer`, only up to that block (the output is then not needed)."""
        kwargs: dict[str, Any] = {}
        if stop_layer is not None and self.starts_at_layer:
            kwargs["stop_at_layer"] = stop_layer
        if start_layer is not None and start_layer in self._residual and self.starts_at_layer:
            residual = self._residual[start_layer]
            model_input = residual.repeat(n_rep, *([1] * (residual.dim() - 1)))
            kwargs["start_at_layer"] = start_layer
            if self._mask is not None:
                kwargs["attention_mask"] = self._mask.repeat(n_rep, 1)
        else:
            model_input = self.tokens.repeat(n_rep, 1) if n_rep > 1 else self.tokens
        with torch.no_grad():
            return self.model.run_with_hooks(
                model_input, fwd_hooks=fwd_hooks, return_type=return_type, **kwargs
            )


def _attached_hooks(model: Any) -> list[str]:
    """Where hooks are attached: hook points (ours or torch's on them), other submodules, or
    torch's global module hooks."""
    from torch.nn.modules import module as torch_module

    found = [
        f"global torch {kind} hooks"
        for kind in ("forward", "forward_pre", "backward", "backward_pre")
        if getattr(torch_module, f"_global_{kind}_hooks", None)
    ]
    own = getattr(model, "hooked_modules", None)  # a model whose modules carry hooks of its own
    if callable(own):
        return found + list(own())
    for name, module in model.named_modules():
        if (
            module._forward_hooks
            or module._forward_pre_hooks
            or module._backward_hooks
            or getattr(module, "_backward_pre_hooks", None)
        ):
            found.append(name or type(model).__name__)
    return found


def _can_start_at_layer(model: Any) -> bool:
    from anatomist.model.transformer import HookedTransformer

    return isinstance(model, HookedTransformer)


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
        batch_size: int | None = None,
        memory_budget: int | None = None,
        reuse: bool = True,
        progress: bool = True,
    ) -> Any:
        tokens = _as_tokens(model, corrupted_tokens)
        runner = PatchRunner(
            model, tokens, batch_size=batch_size, memory_budget=memory_budget, reuse=reuse,
            what=name,
        )  # fmt: skip
        return _run_preset(
            preset, runner, clean_cache, patching_metric, index_df, return_index_df, progress
        )

    preset.__name__ = preset.__qualname__ = name
    preset.__doc__ = (
        f"Activation patching of {what}: the metric per patch, shaped {shape}.\n\n"
        f"Patches ``{activation_name}`` over the axes {axes}; see `generic_activation_patch` for "
        "the arguments (cells are batched and start at the patched block unless "
        "``reuse=False``; ``batch_size=1`` is the classic loop)."
    )
    preset.spec = (activation_name, setter, axes)  # type: ignore[attr-defined]
    return preset


def _run_preset(
    preset: Callable[..., Any],
    runner: PatchRunner,
    clean_cache: Any,
    metric: PatchingMetric,
    index_df: Any = None,
    return_index_df: bool = False,
    progress: bool = True,
) -> Any:
    activation_name, setter, axes = preset.spec  # type: ignore[attr-defined]
    return _sweep(
        runner, clean_cache, metric, setter, activation_name,
        None if index_df is not None else axes, index_df, return_index_df, progress,
    )  # fmt: skip


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


def _shared_sweep(
    model: Any,
    corrupted_tokens: Any,
    clean_cache: Any,
    metric: PatchingMetric,
    batch_size: int | None,
    memory_budget: int | None,
    reuse: bool,
    progress: bool,
    what: str,
) -> Callable[[Callable[..., Any]], Tensor]:
    """Run presets over one corrupted batch with one runner: one corrupted run, one warning."""
    runner = PatchRunner(
        model, _as_tokens(model, corrupted_tokens), batch_size=batch_size,
        memory_budget=memory_budget, reuse=reuse, what=what,
    )  # fmt: skip

    def sweep(preset: Callable[..., Any]) -> Tensor:
        return _run_preset(preset, runner, clean_cache, metric, progress=progress)  # type: ignore[no-any-return]

    return sweep


def get_act_patch_attn_head_all_pos_every(
    model: Any,
    corrupted_tokens: Tensor,
    clean_cache: Mapping[str, Tensor] | Any,
    metric: PatchingMetric,
    *,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    reuse: bool = True,
    progress: bool = True,
) -> Tensor:
    """Every head, all positions at once, for each of z, q, k, v, pattern (in that order):
    ``[5, n_layers, n_heads]``. Under GQA the k and v rows repeat each key/value head's result
    over its query heads."""
    sweep = _shared_sweep(
        model, corrupted_tokens, clean_cache, metric, batch_size, memory_budget, reuse, progress,
        "get_act_patch_attn_head_all_pos_every",
    )  # fmt: skip
    return torch.stack(
        [
            sweep(get_act_patch_attn_head_out_all_pos),
            sweep(get_act_patch_attn_head_q_all_pos),
            _expand_kv(model, sweep(get_act_patch_attn_head_k_all_pos), 1),
            _expand_kv(model, sweep(get_act_patch_attn_head_v_all_pos), 1),
            sweep(get_act_patch_attn_head_pattern_all_pos),
        ]
    )


def get_act_patch_attn_head_by_pos_every(
    model: Any,
    corrupted_tokens: Tensor,
    clean_cache: Mapping[str, Tensor] | Any,
    metric: PatchingMetric,
    *,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    reuse: bool = True,
    progress: bool = True,
) -> Tensor:
    """Every head at every position, for each of z, q, k, v, pattern (by destination position):
    ``[5, n_layers, pos, n_heads]``. Under GQA the k and v rows repeat each key/value head's
    result over its query heads."""
    sweep = _shared_sweep(
        model, corrupted_tokens, clean_cache, metric, batch_size, memory_budget, reuse, progress,
        "get_act_patch_attn_head_by_pos_every",
    )  # fmt: skip
    pattern = sweep(get_act_patch_attn_head_pattern_by_pos)  # [layer, head, dest_pos]
    return torch.stack(
        [
            sweep(get_act_patch_attn_head_out_by_pos),
            sweep(get_act_patch_attn_head_q_by_pos),
            _expand_kv(model, sweep(get_act_patch_attn_head_k_by_pos), 2),
            _expand_kv(model, sweep(get_act_patch_attn_head_v_by_pos), 2),
            pattern.transpose(1, 2),  # [layer, pos, head]
        ]
    )


def get_act_patch_block_every(
    model: Any,
    corrupted_tokens: Tensor,
    clean_cache: Mapping[str, Tensor] | Any,
    metric: PatchingMetric,
    *,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    reuse: bool = True,
    progress: bool = True,
) -> Tensor:
    """The residual stream at each block's start, each attention output and each MLP output, by
    position: ``[3, n_layers, pos]``."""
    sweep = _shared_sweep(
        model, corrupted_tokens, clean_cache, metric, batch_size, memory_budget, reuse, progress,
        "get_act_patch_block_every",
    )  # fmt: skip
    return torch.stack(
        [
            sweep(get_act_patch_resid_pre),
            sweep(get_act_patch_attn_out),
            sweep(get_act_patch_mlp_out),
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
