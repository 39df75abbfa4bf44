"""`ActivationCache`: the activations one forward pass stored, by hook name.

Index by full name (``cache["blocks.0.attn.hook_pattern"]``) or by the classic shorthands
(``cache["pattern", 0]``, ``cache["scale", 4, "ln1"]``, ``cache["resid_post", -1]``); negative
layers count from the end.

The analysis methods (the classic ones: `accumulated_resid`, `decompose_resid`,
`stack_head_results`, `get_full_resid_decomposition`, `apply_ln_to_stack`, `logit_attrs`, ...)
split the residual stream into what wrote to it; docs/hooks.md ("Analysing a cache") describes
them and how they handle each architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anatomist.model.norm import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre, rms_normalize
from anatomist.model.tokens import check_token_ids
from anatomist.utils import Slice, get_act_name


class MissingActivationError(KeyError):
    """A cache lookup named an activation this cache does not hold."""

    def __str__(self) -> str:  # KeyError repr-quotes its message; show it plainly.
        return str(self.args[0])


class CacheBatchDimError(ValueError, AssertionError):
    """The batch axis cannot be removed or sliced (batch size above 1, or no batch axis).
    An AssertionError too, as the classic library raised."""


class ActivationCache:
    def __init__(
        self, cache_dict: dict[str, Tensor], model: Any, has_batch_dim: bool = True
    ) -> None:
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim
        self.has_embed = "hook_embed" in cache_dict
        self.has_pos_embed = "hook_pos_embed" in cache_dict

    # --- mapping ---------------------------------------------------------------------------------
    def _key(self, key: str | tuple[Any, ...]) -> str:
        if isinstance(key, str):
            if key in self.cache_dict:
                return key
            return get_act_name(key)
        if isinstance(key, tuple):
            name, *rest = key
            layer = rest[0] if rest else None
            layer_type = rest[1] if len(rest) > 1 else None
            if isinstance(layer, int) and layer < 0:
                layer += self.model.cfg.n_layers
            return get_act_name(name, layer, layer_type)
        raise TypeError(f"Cache keys are names or (name, layer[, layer_type]) tuples, not {key!r}.")

    def __getitem__(self, key: str | tuple[Any, ...]) -> Tensor:
        name = self._key(key)
        if name not in self.cache_dict:
            import difflib

            close = difflib.get_close_matches(name, list(self.cache_dict), n=5, cutoff=0.5)
            hint = f" Closest cached names: {', '.join(close)}." if close else ""
            raise MissingActivationError(
                f"{name!r} is not in this cache.{hint} (Was it excluded by names_filter, or is it "
                "an opt-in hook that was off?)"
            )
        return self.cache_dict[name]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str | tuple):
            return False
        try:
            return self._key(key) in self.cache_dict
        except (TypeError, ValueError):
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def keys(self) -> Any:
        return self.cache_dict.keys()

    def values(self) -> Any:
        return self.cache_dict.values()

    def items(self) -> Any:
        return self.cache_dict.items()

    def __repr__(self) -> str:
        return f"ActivationCache with keys {list(self.cache_dict)}"

    # --- transforms ------------------------------------------------------------------------------
    def to(self, device: str | torch.device, move_model: bool = False) -> ActivationCache:
        """Move every activation (and optionally the model) to `device`; returns self."""
        self.cache_dict = {k: v.to(device) for k, v in self.cache_dict.items()}
        if move_model:
            self.model.to(device)
        return self

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch axis (the batch must have size 1); returns self."""
        if not self.has_batch_dim:
            logging.warning("remove_batch_dim: this cache has no batch dim (removed already).")
            return self
        for name, value in self.cache_dict.items():
            if value.shape[0] != 1:
                raise CacheBatchDimError(
                    f"Cannot remove the batch dim: {name} has batch size {value.shape[0]}. "
                    "Select one row first: cache.apply_slice_to_batch_dim(i)."
                )
        self.cache_dict = {k: v[0] for k, v in self.cache_dict.items()}
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice: Any) -> ActivationCache:
        """A new cache holding only the selected batch rows (an int drops the batch axis; None
        keeps every row, also in a cache without a batch axis)."""
        sl = Slice(batch_slice)
        if not self.has_batch_dim:
            if sl.mode == "identity":
                return ActivationCache(dict(self.cache_dict), self.model, has_batch_dim=False)
            raise CacheBatchDimError(
                f"This cache has no batch dim to slice with {batch_slice!r} (remove_batch_dim "
                "or run_with_cache(remove_batch_dim=True) dropped it)."
            )
        sliced = {k: sl.apply(v, dim=0) for k, v in self.cache_dict.items()}
        return ActivationCache(sliced, self.model, has_batch_dim=not isinstance(sl.slice, int))

    def toggle_autodiff(self, mode: bool = False) -> None:
        """``torch.set_grad_enabled(mode)``: global state, for every model in the process (as
        classic). ``torch.inference_mode()`` does the same for one block."""
        logging.warning("Changed the global state, set autodiff to %s", mode)
        torch.set_grad_enabled(mode)

    def stack_activation(
        self, activation_name: str, layer: int | None = -1, sublayer_type: str | None = None
    ) -> Tensor:
        """One activation from every block before `layer` (-1 or None: every block), stacked on
        a new leading axis: ``[layers, *shape]``."""
        layer = self._resolve_layer(layer)
        return _stack([self[(activation_name, i, sublayer_type)] for i in range(layer)])

    # --- the residual stream as a sum ------------------------------------------------------------
    # The stream that block `layer` reads is a sum of what wrote to it: the embeddings, each
    # attention and MLP output, or more finely each head, each neuron and the biases. The methods
    # below stack such summands as ``[components, *batch_and_pos, d_model]`` (rows add up to the
    # cached stream) and can put each through the norm that reads the stream.

    def _resolve_layer(self, layer: int | None) -> int:
        """`layer` in 0..n_layers; None and -1 mean n_layers (the input to the final norm)."""
        n = int(self.model.cfg.n_layers)
        if layer is None or layer == -1:
            return n
        if not 0 <= layer <= n:
            raise ValueError(
                f"layer must be in 0..{n} (n_layers: the input to the final norm and unembedding), "
                f"or -1/None for n_layers; got {layer}."
            )
        return layer

    def _check_mlp_input(self, layer: int) -> None:
        if layer == self.model.cfg.n_layers:
            raise ValueError("mlp_input=True needs layer < n_layers: the final norm reads no MLP.")
        if self.model.cfg.attn_only:
            raise ValueError(
                "mlp_input=True: this model is attention-only; its blocks have no MLP."
            )

    def _require_additive_stream(self, method: str) -> None:
        if self.model.cfg.post_layer_norm:
            raise ValueError(
                f"{method} needs a residual stream that is a sum of earlier outputs, but this is "
                "a Post-LN model (cfg.post_layer_norm): every block normalizes the stream after "
                "attention and after the MLP (ln1(resid_pre + attn_out), ln2(resid_post)), so no "
                "earlier output survives in it as a summand. Use accumulated_resid / logit_lens, "
                "or read one block's attn_out and mlp_out directly."
            )

    def _block_output(self, layer: int) -> Tensor:
        """What block `layer` passes on: resid_post, or a Post-LN block's normalized_resid_post."""
        if self.model.cfg.post_layer_norm:
            return self[f"blocks.{layer}.hook_normalized_resid_post"]
        return self[("resid_post", layer)]

    def _stream_into(self, layer: int, mlp_input: bool = False) -> Tensor:
        """The cached stream that block `layer`'s attention (`mlp_input`: its MLP) reads before
        its norm; layer == n_layers: the input to the final norm."""
        if layer == self.model.cfg.n_layers:
            return self._block_output(layer - 1)
        if mlp_input and not self.model.cfg.parallel_attn_mlp:
            return self[("resid_mid", layer)]
        return self[("resid_pre", layer)]  # (a parallel block's MLP reads resid_pre too)

    def _empty_stack(self, pos_slice: Slice) -> Tensor:
        """``[0, *batch_and_pos, d_model]``: a stack with no rows, shaped like a residual row."""
        for name in ("hook_embed", "blocks.0.hook_resid_pre"):
            if name in self.cache_dict:
                row = pos_slice.apply(self.cache_dict[name], dim=-2)
                return row.new_zeros(0, *row.shape)
        raise MissingActivationError(
            "An empty stack takes its shape from hook_embed or blocks.0.hook_resid_pre, and this "
            "cache holds neither."
        )

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: Any = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """The residual stream before each block up to `layer`, stacked: the logit lens's input.

        Rows are ``resid_pre`` of blocks ``0..layer`` (labels ``"{l}_pre"``); with `incl_mid`
        also each earlier block's ``resid_mid`` (``"{l}_mid"``), with `mlp_input` block `layer`'s
        MLP input. layer == n_layers (also None, -1) ends on the stream the final norm reads
        (``"final_post"``; a Post-LN model's last ``normalized_resid_post``). Shape
        ``[rows, *batch_and_pos, d_model]``; `pos_slice` selects positions.

        With `apply_ln` every row is normalized by the norm that reads the stream at `layer`
        (``ln_final`` by default) with the row's own statistics, weights and bias, as the logit
        lens does (`apply_ln_to_stack` with ``recompute_ln=True``): ``model.unembed(rows)`` are
        then logits, and the last row's are the model's.
        """
        pos_slice = Slice(pos_slice)
        layer = self._resolve_layer(layer)
        cfg = self.model.cfg
        if mlp_input:
            self._check_mlp_input(layer)
        if incl_mid and (cfg.parallel_attn_mlp or cfg.attn_only):
            raise ValueError(
                "incl_mid=True: this model's blocks have no resid_mid ("
                + (
                    "attention and MLP both read resid_pre)."
                    if cfg.parallel_attn_mlp
                    else "they are attention-only)."
                )
            )
        rows, labels = [], []
        for index in range(layer + 1):
            if index == cfg.n_layers:
                rows.append(self._stream_into(index))
                labels.append("final_post")
                break
            rows.append(self[("resid_pre", index)])
            labels.append(f"{index}_pre")
            wants_mid = (incl_mid and index < layer) or (mlp_input and index == layer)
            if wants_mid and not cfg.parallel_attn_mlp:
                rows.append(self[("resid_mid", index)])
                labels.append(f"{index}_mid")
        stack = _stack([pos_slice.apply(row, dim=-2) for row in rows])
        if apply_ln:
            stack = self.apply_ln_to_stack(
                stack, layer, mlp_input=mlp_input, pos_slice=pos_slice, recompute_ln=True
            )
        return (stack, labels) if return_labels else stack

    def _embedding_rows(self, pos_slice: Slice) -> list[tuple[str, Tensor]]:
        """What the embeddings write to the stream: ``embed`` and (learned positions that are
        added to the stream) ``pos_embed``."""
        cfg = self.model.cfg
        # Shortformer positions go into attention's queries and keys, never into the stream.
        adds_pos = self.has_pos_embed and cfg.positional_embedding_type == "standard"
        rows = []
        if self.has_embed:
            embed = self["hook_embed"]
            if cfg.post_embedding_norm:  # BLOOM: the stream starts at ln_embed(embed)
                embed = self[("resid_pre", 0)]
                embed = embed - self["hook_pos_embed"] if adds_pos else embed
            rows.append(("embed", embed))
        if adds_pos:
            rows.append(("pos_embed", self["hook_pos_embed"]))
        return [(label, pos_slice.apply(row, dim=-2)) for label, row in rows]

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: Any = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """The stream into block `layer` as a stack of what wrote to it; the rows sum to it.

        Rows: ``embed`` and ``pos_embed`` (learned positions only; with `incl_embeds`), then each
        earlier block's ``"{l}_attn_out"`` and ``"{l}_mlp_out"`` (`mode` "all", "attn" or "mlp");
        with `mlp_input` (the stream block `layer`'s MLP reads) also its ``"{layer}_attn_out"``,
        except in parallel blocks, whose MLP reads ``resid_pre``. Post norms (Gemma) are inside
        ``attn_out``/``mlp_out``. With `apply_ln` each row goes through the norm at `layer` at its
        cached scale (`apply_ln_to_stack`). Shape ``[rows, *batch_and_pos, d_model]``.
        """
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}.")
        self._require_additive_stream("decompose_resid")
        pos_slice = Slice(pos_slice)
        layer = self._resolve_layer(layer)
        cfg = self.model.cfg
        if mlp_input:
            self._check_mlp_input(layer)
        incl_attn, incl_mlp = mode != "mlp", mode != "attn" and not cfg.attn_only
        rows = self._embedding_rows(pos_slice) if incl_embeds else []
        names = []
        for index in range(layer):
            if incl_attn:
                names.append((f"{index}_attn_out", ("attn_out", index)))
            if incl_mlp:
                names.append((f"{index}_mlp_out", ("mlp_out", index)))
        if mlp_input and incl_attn and not cfg.parallel_attn_mlp:
            names.append((f"{layer}_attn_out", ("attn_out", layer)))
        rows += [(label, pos_slice.apply(self[key], dim=-2)) for label, key in names]
        labels = [label for label, _ in rows]
        stack = _stack([row for _, row in rows]) if rows else self._empty_stack(pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    # --- heads and neurons -----------------------------------------------------------------------
    def compute_head_results(self) -> None:
        """Cache ``blocks.{l}.attn.hook_result`` ``[*batch_and_pos, n_heads, d_model]`` for every
        block from the cached ``hook_z`` and ``W_O`` (one ``W_O`` slice per query head, also under
        grouped-query attention): what the opt-in ``use_attn_result`` hook would have held. Layers
        whose result is cached already are left alone."""
        for layer in range(self.model.cfg.n_layers):
            name = f"blocks.{layer}.attn.hook_result"
            if name in self.cache_dict:
                continue
            z = self[("z", layer)]  # [..., n_heads, d_head]
            W_O = self.model.blocks[layer].attn.W_O.to(z.device, z.dtype)  # [h, d_head, d_model]
            self.cache_dict[name] = torch.einsum("...he,hed->...hd", z, W_O)

    def _through_post_norm(self, layer: int, which: str, x: Tensor, pos_slice: Slice) -> Tensor:
        """`x` ``[*batch_and_pos, parts, d_model]``: summands of block `layer`'s attention
        (`which` = "ln1_post") or MLP ("ln2_post") output, as they reach the stream through that
        output's norm (Gemma 2/3, OLMo 2) at its cached scale. Unchanged without post norms."""
        if self.model.cfg.post_norm_type is None:
            return x
        norm = getattr(self.model.blocks[layer], which)
        scale = pos_slice.apply(self[f"blocks.{layer}.{which}.hook_scale"], dim=-2)
        return _linear_part(norm, x, scale.unsqueeze(-2))

    def _post_norm_bias(self, layer: int, which: str, bias: Tensor, pos_slice: Slice) -> Tensor:
        """A sublayer's output bias as it reaches the stream (through its post norm, whose own
        bias is added here), broadcastable to ``[*batch_and_pos, d_model]``."""
        if self.model.cfg.post_norm_type is None:
            return bias
        norm = getattr(self.model.blocks[layer], which)
        out = self._through_post_norm(layer, which, bias.expand(1, -1), pos_slice)[..., 0, :]
        return out + norm.b.to(out) if isinstance(norm, LayerNorm) else out

    def _head_results(self, layer: int, pos_slice: Slice) -> Tensor:
        """Each head's write to the stream, ``[*batch_and_pos, n_heads, d_model]``."""
        if f"blocks.{layer}.attn.hook_result" not in self.cache_dict:
            self.compute_head_results()
        result = pos_slice.apply(self[("result", layer)], dim=-3)
        return self._through_post_norm(layer, "ln1_post", result, pos_slice)

    def stack_head_results(
        self,
        layer: int | None = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: Any = None,
        apply_ln: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """Every head's write to the stream in the blocks before `layer`:
        ``[layer * n_heads, *batch_and_pos, d_model]``, labels ``"L{l}H{h}"``.

        A head's write is ``z[h] @ W_O[h]`` (``hook_result``, computed from ``hook_z`` when it was
        not cached), through the attention's post norm (``ln1_post``) at its cached scale where
        the model has one. `incl_remainder` adds the rest of the stream into `layer` as a last row
        (``"remainder"``: embeddings, MLPs, biases), so the rows sum to that stream. `apply_ln`:
        see `apply_ln_to_stack`.
        """
        self._require_additive_stream("stack_head_results")
        pos_slice = Slice(pos_slice)
        layer = self._resolve_layer(layer)
        parts = [self._head_results(index, pos_slice) for index in range(layer)]
        labels = [f"L{index}H{h}" for index in range(layer) for h in range(self.model.cfg.n_heads)]
        stack = self._components_first(parts, pos_slice)
        if incl_remainder:
            stack, labels = self._with_remainder(stack, labels, layer, pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def _components_first(self, parts: list[Tensor], pos_slice: Slice) -> Tensor:
        """``[*batch_and_pos, k_i, d_model]`` pieces -> ``[sum k_i, *batch_and_pos, d_model]``."""
        if not parts:
            return self._empty_stack(pos_slice)
        return _cat(parts, dim=-2).movedim(-2, 0)

    def _with_remainder(
        self, stack: Tensor, labels: list[str], layer: int, pos_slice: Slice
    ) -> tuple[Tensor, list[str]]:
        stream = pos_slice.apply(self._stream_into(layer), dim=-2)
        remainder = stream.to(stack.device) - stack.sum(dim=0)
        return torch.cat([stack, remainder[None]], dim=0), [*labels, "remainder"]

    def _dense_mlp(self, layer: int) -> Any:
        cfg = self.model.cfg
        if cfg.attn_only:
            raise ValueError("This model is attention-only: it has no MLP neurons.")
        if cfg.is_moe_layer(layer):
            raise ValueError(
                f"Block {layer}'s MLP is a mixture of experts: an expert's neuron runs only on the "
                "tokens routed to it, weighted by the router, so per-neuron results over every "
                "(batch, pos) are not defined. Use whole MLP outputs (decompose_resid, or "
                "get_full_resid_decomposition(expand_neurons=False)), or read an expert's hooks "
                f"(blocks.{layer}.mlp.experts.{{e}}.hook_post)."
            )
        return self.model.blocks[layer].mlp

    def get_neuron_results(
        self,
        layer: int,
        neuron_slice: Any = None,
        pos_slice: Any = None,
        project_output_onto: Tensor | None = None,
    ) -> Tensor:
        """Each neuron's write to the stream in block `layer`'s MLP,
        ``[*batch_and_pos, neurons, d_model]``: its activation (``mlp.hook_post``) times its row of
        ``W_out``, through the MLP's post norm (``ln2_post``) at its cached scale where the model
        has one. An int `neuron_slice` drops the neuron axis. Computed, not cached (large, cheap).

        `project_output_onto` (``[d_model]`` or ``[d_model, k]``) returns each write's projection
        instead (last axis dropped or ``k``), without building the ``d_model`` writes where the
        model has no post norm."""
        project, squeeze = _projection_2d(project_output_onto, self.model.cfg.d_model)
        layer = layer + self.model.cfg.n_layers if layer < 0 else layer
        pos_slice, neuron_slice = Slice(pos_slice), Slice(neuron_slice)
        W_out = self._dense_mlp(layer).W_out  # [d_mlp, d_model]
        one = isinstance(neuron_slice.slice, int)
        if one:  # keep the axis through the post norm, drop it at the end
            neuron_slice = Slice([neuron_slice.slice])
        post = neuron_slice.apply(pos_slice.apply(self[("post", layer)], dim=-2), dim=-1)
        W_out = neuron_slice.apply(W_out, dim=0).to(post.device, post.dtype)
        if project is not None and self.model.cfg.post_norm_type is None:
            results = post[..., None] * (W_out @ project.to(W_out))  # [..., neurons, k]
        else:
            results = post[..., None] * W_out  # [..., neurons, d_model]
            results = self._through_post_norm(layer, "ln2_post", results, pos_slice)
            if project is not None:
                results = results @ project.to(results)
        results = results[..., 0, :] if one else results
        return results.squeeze(-1) if squeeze else results

    def stack_neuron_results(
        self,
        layer: int | None,
        pos_slice: Any = None,
        neuron_slice: Any = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
        project_output_onto: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """Every neuron's write to the stream in the blocks before `layer`,
        ``[neurons, *batch_and_pos, d_model]``, labels ``"L{l}N{n}"`` (see `get_neuron_results`);
        `incl_remainder` and `apply_ln` as in `stack_head_results`. Memory grows with
        ``layers * d_mlp * batch * pos * d_model``: slice neurons or positions on large models,
        or pass `project_output_onto` (``[d_model]`` or ``[d_model, k]``) to get each row's
        projection (after `apply_ln`) with ``k`` (or no) values per row instead of ``d_model``."""
        self._require_additive_stream("stack_neuron_results")
        project, squeeze = _projection_2d(project_output_onto, self.model.cfg.d_model)
        pos_slice, neuron_slice = Slice(pos_slice), Slice(neuron_slice)
        if isinstance(neuron_slice.slice, int):
            neuron_slice = Slice([neuron_slice.slice])
        layer = self._resolve_layer(layer)
        if project is None:
            stack, labels = self._neuron_stack(layer, pos_slice, neuron_slice, None)
            if incl_remainder:
                stack, labels = self._with_remainder(stack, labels, layer, pos_slice)
            if apply_ln:
                stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
            return (stack, labels) if return_labels else stack
        # The norm's linear part (centre, * w, / scale) folded into the projection: the rows are
        # projected before they are normalized, so no row ever has d_model values.
        reading = self._norm_reading(layer, mlp_input=False) if apply_ln else None
        if reading is not None:
            project = _fold_norm_into_projection(reading[0], project)
        stack, labels = self._neuron_stack(layer, pos_slice, neuron_slice, project)
        if incl_remainder:
            stream = pos_slice.apply(self._stream_into(layer), dim=-2)
            stream = stream.to(stack.device)
            remainder = stream @ project.to(stream) - stack.sum(dim=0)
            stack, labels = torch.cat([stack, remainder[None]], dim=0), [*labels, "remainder"]
        if reading is not None:
            scale = pos_slice.apply(self[reading[1]], dim=-2)
            stack = (stack / scale.to(stack.device)).to(stack.dtype)
        stack = stack.squeeze(-1) if squeeze else stack
        return (stack, labels) if return_labels else stack

    def _neuron_stack(
        self, layer: int, pos_slice: Slice, neuron_slice: Slice, project: Tensor | None
    ) -> tuple[Tensor, list[str]]:
        """``[neurons, *batch_and_pos, d_model or k]`` of the blocks before `layer`, labels."""
        parts, labels = [], []
        for index in range(layer):
            width = self._dense_mlp(index).W_out.shape[0]
            parts.append(self.get_neuron_results(index, neuron_slice, pos_slice, project))
            labels += [f"L{index}N{n}" for n in neuron_slice.indices(width).tolist()]
        if parts:
            return _cat(parts, dim=-2).movedim(-2, 0), labels
        empty = self._empty_stack(pos_slice)
        if project is not None:
            empty = empty.new_zeros(*empty.shape[:-1], project.shape[-1])
        return empty, labels

    # --- norms -----------------------------------------------------------------------------------
    def _norm_reading(self, layer: int, mlp_input: bool) -> tuple[AnyNorm, str] | None:
        """The norm that reads the stream into block `layer`'s attention (or MLP; layer ==
        n_layers: ``ln_final``) and its scale hook, or None where the stream is read as it is."""
        cfg = self.model.cfg
        if layer == cfg.n_layers:
            norm, name = self.model.ln_final, "ln_final.hook_scale"
        elif cfg.post_layer_norm:  # attention reads resid_pre as it is; the MLP reads ln1(mid)
            if not mlp_input:
                return None
            norm, name = self.model.blocks[layer].ln1, f"blocks.{layer}.ln1.hook_scale"
        else:
            which = "ln2" if mlp_input else "ln1"
            norm, name = (
                getattr(self.model.blocks[layer], which),
                f"blocks.{layer}.{which}.hook_scale",
            )
            if not mlp_input and (cfg.use_split_qkv_input or cfg.use_attn_in):
                raise ValueError(
                    f"blocks.{layer}.ln1 runs over per-head inputs in this model "
                    "(use_split_qkv_input / use_attn_in), so its cached scale has one value per "
                    "head input, and a residual stack has no head axis. Turn those off when "
                    "caching, or normalize for the MLP (mlp_input=True) or the final norm."
                )
        if isinstance(norm, nn.Identity):  # no norm here (OLMo 2 blocks, Post-LN's ln_final)
            return None
        if not isinstance(norm, _NORMS):
            raise TypeError(
                f"apply_ln_to_stack knows LN, LNPre, RMS and RMSPre norms, not {type(norm).__name__}."
            )
        return norm, name

    def apply_ln_to_stack(
        self,
        residual_stack: Tensor,
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Tensor:
        """Put each row of `residual_stack` ``[rows, *batch_and_pos, d_model]`` through the norm
        that reads the stream at `layer` (``ln_final`` for n_layers, None, -1; ``ln2`` with
        `mlp_input`, else ``ln1``).

        By default the rows are summands of one stream, and each gets that stream's cached scale
        (``hook_scale``): centred (LayerNorm), divided by the scale, times the norm's weight (an
        unfolded model's ``w``). The rows then sum to the norm's output minus its bias (an
        unfolded LayerNorm's ``b``, which belongs to no summand; folded models have none). With
        `recompute_ln` every row is a whole stream and is normalized with its own statistics,
        weights and bias, exactly as the norm would (the logit lens); no scale is read.

        `pos_slice` and `batch_slice` select the cached scale's positions and rows (`pos_slice`
        is assumed applied to the stack already; `batch_slice` is applied to the stack's axis 1
        when `has_batch_dim`). Where nothing normalizes the stream (no norm, or a Post-LN block's
        attention), the stack comes back unchanged.
        """
        layer = self._resolve_layer(layer)
        if mlp_input:
            self._check_mlp_input(layer)
        pos_slice, batch_slice = Slice(pos_slice), Slice(batch_slice)
        if has_batch_dim:
            residual_stack = batch_slice.apply(residual_stack, dim=1)
        reading = self._norm_reading(layer, mlp_input)
        if reading is None:
            return residual_stack
        norm, scale_name = reading
        if recompute_ln:
            return _normalize(norm, residual_stack)
        scale = pos_slice.apply(self[scale_name], dim=-2)
        if self.has_batch_dim:
            scale = batch_slice.apply(scale, dim=0)
        # Each summand must meet the scale of its own token: a stack sliced differently from the
        # scale would broadcast into plausible numbers for the wrong positions.
        lead = scale.shape[:-1]  # [batch, pos] (or fewer after slicing)
        if residual_stack.shape[-1 - len(lead) : -1] != lead or residual_stack.dim() <= len(lead):
            raise ValueError(
                f"residual_stack {tuple(residual_stack.shape)} does not match the cached norm "
                f"scale {scale_name!r} {tuple(scale.shape)} after pos_slice/batch_slice: its "
                f"dims before d_model must end in {tuple(lead)}. Slice the stack and pass the "
                "same pos_slice (e.g. pos_slice=-1 for a stack of last positions)."
            )
        return _linear_part(norm, residual_stack, scale)

    def _accumulated_bias(
        self, layer: int, mlp_input: bool, include_mlp_biases: bool, pos_slice: Slice
    ) -> Tensor:
        """The output biases of every sublayer before block `layer`'s attention (or MLP), as they
        reach the stream (through post norms, with theirs), broadcastable to a residual row."""
        cfg, blocks = self.model.cfg, self.model.blocks
        total: Tensor = torch.zeros(cfg.d_model, dtype=blocks[0].attn.b_O.dtype)
        total = total.to(self._empty_stack(pos_slice).device)
        attn_layers = list(range(layer))
        if mlp_input and not cfg.parallel_attn_mlp:
            attn_layers.append(layer)
        for index in attn_layers:
            b_O = blocks[index].attn.b_O.to(total)
            total = total + self._post_norm_bias(index, "ln1_post", b_O, pos_slice)
        if include_mlp_biases and not cfg.attn_only:
            for index in range(layer):
                b_out = self._dense_mlp(index).b_out.to(total)
                total = total + self._post_norm_bias(index, "ln2_post", b_out, pos_slice)
        return total

    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: Any = None,
        return_labels: bool = False,
        project_output_onto: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """The stream into block `layer` (its MLP with `mlp_input`; n_layers, None, -1: the final
        norm's input) split into every head (``"L{l}H{h}"``), every neuron (``"L{l}N{n}"``; with
        ``expand_neurons=False`` each MLP output, ``"{l}_mlp_out"``), ``embed``, ``pos_embed``
        and ``bias`` (attention output biases, and MLP output biases when neurons are expanded),
        in that order. The rows sum to the cached stream.

        With `apply_ln` the rows go through the norm at `layer` at its cached scale
        (`apply_ln_to_stack`), and an unfolded LayerNorm's bias joins the ``bias`` row, so the
        rows sum to the norm's output. Mixture-of-experts MLPs have no per-neuron results: use
        ``expand_neurons=False``. `project_output_onto` (``[d_model]`` or ``[d_model, k]``)
        returns every row's projection onto it (last axis dropped, or ``k``).
        """
        self._require_additive_stream("get_full_resid_decomposition")
        project, squeeze = _projection_2d(project_output_onto, self.model.cfg.d_model)
        pos_slice = Slice(pos_slice)
        layer = self._resolve_layer(layer)
        cfg = self.model.cfg
        if mlp_input:
            self._check_mlp_input(layer)
        heads_before = layer + 1 if mlp_input and not cfg.parallel_attn_mlp else layer
        heads, labels = self.stack_head_results(heads_before, True, pos_slice=pos_slice)
        parts = [heads]
        if not cfg.attn_only and layer > 0:
            if expand_neurons:
                mlps, mlp_labels = self.stack_neuron_results(layer, pos_slice, return_labels=True)
            else:
                mlps, mlp_labels = self.decompose_resid(
                    layer, mode="mlp", pos_slice=pos_slice, incl_embeds=False, return_labels=True
                )
            parts.append(mlps)
            labels = labels + mlp_labels
        for label, row in self._embedding_rows(pos_slice):
            parts.append(row[None])
            labels.append(label)
        row_shape = heads.shape[1:]
        bias = self._accumulated_bias(layer, mlp_input, expand_neurons, pos_slice)
        parts.append(bias.expand(row_shape)[None].to(heads.dtype))
        labels.append("bias")
        stack = _cat(parts, dim=0)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
            reading = self._norm_reading(layer, mlp_input)
            if reading is not None and isinstance(reading[0], LayerNorm):
                stack[-1] += reading[0].b.to(stack)
        if project is not None:
            stack = stack @ project.to(stack)
            stack = stack.squeeze(-1) if squeeze else stack
        return (stack, labels) if return_labels else stack

    def logit_attrs(
        self,
        residual_stack: Tensor,
        tokens: str | int | Tensor,
        incorrect_tokens: str | int | Tensor | None = None,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool = True,
    ) -> Tensor:
        """Direct logit attribution: each row of `residual_stack` ``[rows, *batch_and_pos,
        d_model]``, put through the final norm at its cached scale (`apply_ln_to_stack`), dotted
        with the unembedding direction of `tokens` (a string, an id, or ids ``[batch]`` /
        ``[batch, pos]``), minus that of `incorrect_tokens` when given (same shape). Returns
        ``[rows, *batch_and_pos]``.

        The attributions of a decomposition of the final stream sum to the logit (difference)
        less the terms no summand owns: ``b_U`` (``b_U[t] - b_U[t']``) and an unfolded final
        LayerNorm's bias. A final logit soft cap (Gemma 2) is not linear and is not applied.
        """
        directions = self._token_directions(tokens)
        if incorrect_tokens is not None:
            wrong = self._token_directions(incorrect_tokens, "incorrect_tokens")
            if wrong.shape != directions.shape:
                raise ValueError(
                    "tokens and incorrect_tokens must have the same shape, got "
                    f"{tuple(directions.shape[:-1])} and {tuple(wrong.shape[:-1])}."
                )
            directions = directions - wrong
        scaled = self.apply_ln_to_stack(
            residual_stack,
            layer=-1,
            pos_slice=pos_slice,
            batch_slice=batch_slice,
            has_batch_dim=has_batch_dim,
        )
        rows = scaled.shape[1:-1]  # [*batch_and_pos] of each row of the stack
        # One id (the same everywhere) or one per batch (and pos) entry: anything else would
        # broadcast ids [batch] along pos.
        if directions.dim() > 1 and directions.shape[:-1] != rows:
            raise ValueError(
                f"tokens {tuple(directions.shape[:-1])} must be one id, or one id per entry of "
                f"the stack's batch (and pos) dims {tuple(rows)}: ids [batch] for a stack "
                "[rows, batch, d_model], [batch, pos] for [rows, batch, pos, d_model]."
            )
        return (scaled * directions.to(scaled)).sum(dim=-1)

    def _token_directions(self, tokens: str | int | Tensor, argument: str = "tokens") -> Tensor:
        if isinstance(tokens, str):
            tokens = self.model.to_single_token(tokens)
        ids = torch.as_tensor(tokens)
        if ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
            raise TypeError(f"{argument} must be token ids (ints) or a string, got {ids.dtype}.")
        if ids.numel():  # named here: tokens_to_residual_directions would say "tokens"
            check_token_ids(ids, self.model.cfg.d_vocab, argument)
        return self.model.tokens_to_residual_directions(ids)  # [..., d_model]


_NORMS = (LayerNorm, LayerNormPre, RMSNorm, RMSNormPre)


def _projection_2d(project: Tensor | None, d_model: int) -> tuple[Tensor | None, bool]:
    """`project_output_onto` as ``[d_model, k]``, and whether it was one direction (then the
    caller drops the last axis of its result)."""
    if project is None:
        return None, False
    if (
        not isinstance(project, Tensor)
        or project.dim() not in (1, 2)
        or project.shape[0] != d_model
    ):
        shape = tuple(project.shape) if isinstance(project, Tensor) else type(project).__name__
        raise ValueError(
            f"project_output_onto must be a tensor [d_model] or [d_model, k] with d_model = "
            f"{d_model}, got {shape}."
        )
    return (project[:, None], True) if project.dim() == 1 else (project, False)


def _fold_norm_into_projection(norm: AnyNorm, project: Tensor) -> Tensor:
    """`q` with ``_linear_part(norm, x, s) @ project == (x @ q) / s`` for every `x`: the norm's
    weight scales each row of the projection and LayerNorm's centring subtracts their mean,
    since ``(x - mean(x)) @ p == x @ (p - mean over rows of p)``."""
    if isinstance(norm, LayerNorm | RMSNorm):
        project = norm.multiplier.to(project)[:, None] * project
    if isinstance(norm, LayerNorm | LayerNormPre):
        project = project - project.mean(dim=0, keepdim=True)
    return project


AnyNorm = LayerNorm | LayerNormPre | RMSNorm | RMSNormPre


def _linear_part(norm: AnyNorm, x: Tensor, scale: Tensor) -> Tensor:
    """What `x`, one summand of a stream whose norm scale was `scale`, contributes to the
    norm's output: centred (LayerNorm), divided by the scale, times the weight; no bias."""
    if isinstance(norm, LayerNorm | LayerNormPre):
        x = x - x.mean(dim=-1, keepdim=True)
    out = (x / scale.to(x.device)).to(x.dtype)
    if isinstance(norm, LayerNorm | RMSNorm):
        out = out * norm.multiplier.to(out)
    return out


def _normalize(norm: AnyNorm, x: Tensor) -> Tensor:
    """`norm` applied to `x` with x's own statistics, without firing its hooks."""
    if isinstance(norm, LayerNorm | LayerNormPre):
        w = norm.w.to(x) if isinstance(norm, LayerNorm) else None
        b = norm.b.to(x) if isinstance(norm, LayerNorm) else None
        return F.layer_norm(x, (x.shape[-1],), w, b, norm.eps)
    out = rms_normalize(x, norm.eps)  # in float32, then cast back, as the model computes it
    return out * norm.multiplier.to(out) if isinstance(norm, RMSNorm) else out


def _stack(tensors: list[Tensor], dim: int = 0) -> Tensor:
    """`torch.stack`, gathering onto the first tensor's device (a split model's activations
    are on their blocks' devices)."""
    return torch.stack(_on_first_device(tensors), dim=dim)


def _cat(tensors: list[Tensor], dim: int = 0) -> Tensor:
    """`torch.cat`, gathering onto the first tensor's device like `_stack`."""
    return torch.cat(_on_first_device(tensors), dim=dim)


def _on_first_device(tensors: list[Tensor]) -> list[Tensor]:
    device = tensors[0].device
    return [t if t.device == device else t.to(device) for t in tensors]
