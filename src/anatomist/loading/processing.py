"""Weight processing: rewrite weights so they are easier to interpret, computing the same function.

- `fold_layer_norm`: fold each norm's weight (and LayerNorm bias) into the layer that reads it;
  norms become ``LNPre``/``RMSPre``. With LayerNorm, reading weights are also centered along
  d_model, since their input has zero mean.
- `center_writing_weights`: remove the mean along d_model of everything written to the residual
  stream (LayerNorm models only: LayerNorm removes that mean anyway; RMSNorm does not).
- `center_unembed`: make each row of ``W_U`` (and ``b_U``) zero-mean over the vocabulary;
  log-probabilities are unchanged because softmax ignores a constant shift.
- `fold_value_biases`: move ``b_V`` into ``b_O`` (each pattern row sums to 1, so the value bias
  contributes ``sum_h b_V[h] @ W_O[h]`` at every position). Not with attention sinks
  (``cfg.attn_sinks``, GPT-OSS): there a row sums to 1 minus the sink's share, which varies with
  the position, so ``b_V`` stays where it is.
- `refactor_factored_attn_matrices` (opt-in): new factors of each head's ``W_Q W_K^T`` and
  ``W_V W_O`` from their SVD, the products unchanged; its docstring says what it does under
  grouped-query attention, rotary, sinks and QK norms (tests/analysis/test_refactor.py).

Logits change only by a per-position constant (log-probs are identical up to float error);
tests/loading/test_processing.py proves it on every family.

Post-LN blocks (``cfg.post_layer_norm``, OPT-350m) normalize the residual stream itself: each
norm's output is both read by the next layer and added back into the stream, so its weights have
no single reader to fold into, and the embeddings reach the first attention layer without a norm,
so centering them would change it. `process_weights` skips `fold_layer_norm` and
`center_writing_weights` for them (as for every step that is not valid for a model) and records
``cfg.processing[step] = False``; centering the unembedding and folding value biases stay valid. Embedding projections (``cfg.d_embed``) take part:
``ln_final`` folds into ``W_proj_out`` (its bias through ``W_proj_out @ W_U`` into ``b_U``), and
centering the embeddings centers ``W_proj_in``, which is what writes them to the stream.

Shortformer models add their position embeddings to ln1's output, after its weight and bias:
folding that weight into ``W_Q``/``W_K`` would scale the positions too, and centering those
matrices would change what the (not zero-mean) positions contribute. So `fold_layer_norm` is
skipped for them, as the classic library skipped it; ``W_pos`` is never written to their residual
stream, so `center_writing_weights` leaves it alone. Models with ``cfg.final_rms`` (a final RMSNorm
after LayerNorm blocks) fold ``ln_final`` as an RMSNorm (no bias, no centering of ``W_U``), and
skip `center_writing_weights`: the final RMSNorm does not remove the mean.

`process_weights` runs group by group: the embeddings (``embed``, ``pos_embed``), each block,
then ``ln_final`` with the unembedding. Every step asked for runs on one group, in the order
above, before the next group starts; no step reads another group's weights (``ln_final`` folds
into the unembedding, and both are in the last group), so the result is the same as running the
steps one after the other over the whole model. Each step's arithmetic runs on the device of its
group's weights. A half-precision model (bfloat16, float16) has each group's parameters in
float32 while its steps run and rounded back after, so folding loses no bits and the peak is the
model in its dtype plus one group (a block, or the unembedding) in float32. The public step
functions (`fold_layer_norm`, ...) run in the model's dtype, as they always did.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anatomist.analysis.factored_matrix import FactoredMatrix
from anatomist.model.moe import MoE

_LAYER_NORMS = ("LN", "LNPre")
_HALF = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class _Step:
    """One processing step, split by the groups it changes. Each part reads and writes only its
    own group's weights; `finish` runs once after every group (norm types, ``cfg.processing``)."""

    finish: Callable[[], None]
    embed: Callable[[], None] | None = None  # embed, pos_embed
    block: Callable[[Any], None] | None = None  # called with each block
    final: Callable[[], None] | None = None  # ln_final, unembed


@torch.no_grad()
def process_weights(
    model: Any,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    refactor_factored_attn_matrices: bool = False,
) -> None:
    """Apply the classic processing steps in their classic order, group by group (a
    half-precision model's group in float32 while it is processed; see the module docstring).

    Steps that are not valid for the model are skipped, and ``cfg.processing[step]`` records
    False for each: folding when there is nothing to fold, the blocks are Post-LN or positions
    are added after ln1 (shortformer), centering the writing weights unless every reader of the
    residual stream normalizes it with a LayerNorm, centering the unembedding when the logits are
    soft-capped, folding the value biases when attention has sinks.
    """
    # The arguments shadow the step functions' names, hence the _STEPS table.
    cfg = model.cfg
    valid = {
        "fold_ln": cfg.normalization_type in ("LN", "RMS") and _unfoldable(cfg) is None,
        "center_writing_weights": cfg.normalization_type in _LAYER_NORMS
        and _mean_sensitive_reader(cfg) is None,
        "center_unembed": cfg.output_logits_soft_cap is None,
        "fold_value_biases": _value_bias_reach(cfg) is None,
        "refactor_factored_attn_matrices": True,
    }
    asked = {
        "fold_ln": fold_ln,
        "center_writing_weights": center_writing_weights,
        "center_unembed": center_unembed,
        "fold_value_biases": fold_value_biases,
        "refactor_factored_attn_matrices": refactor_factored_attn_matrices,
    }
    steps = {step: _STEPS[step](model) for step in asked if asked[step] and valid[step]}
    half = any(p.dtype in _HALF for p in model.parameters())
    _run_by_group(model, list(steps.values()), in_float32=half)
    for step in asked:  # records in the classic order
        if step in steps:
            steps[step].finish()
        elif asked[step]:
            cfg.processing[step] = False


def _run_by_group(model: Any, steps: list[_Step], in_float32: bool) -> None:
    """Run the steps' parts group by group, each group's parts in the steps' order; with
    `in_float32`, a group's half-precision parameters are float32 while its parts run."""
    positions = [model.pos_embed] if hasattr(model, "pos_embed") else []
    embed = [step.embed for step in steps if step.embed is not None]
    _run_group([model.embed, *positions], embed, in_float32)
    for block in model.blocks:
        parts = [partial(step.block, block) for step in steps if step.block is not None]
        _run_group([block], parts, in_float32)
    final = [step.final for step in steps if step.final is not None]
    _run_group([model.ln_final, model.unembed], final, in_float32)


def _run_group(
    modules: list[nn.Module], parts: Sequence[Callable[[], None]], in_float32: bool
) -> None:
    if not parts:
        return
    with _parameters_in_float32(modules) if in_float32 else nullcontext():
        for part in parts:
            part()


@contextmanager
def _parameters_in_float32(modules: Iterable[nn.Module]) -> Iterator[None]:
    """The modules' half-precision parameters as float32 (on their own device), rounded back to
    their dtype on exit. Buffers (rotary frequencies) are left alone."""
    halves = [(p, p.dtype) for m in modules for p in m.parameters() if p.dtype in _HALF]
    for p, _ in halves:
        p.data = p.data.float()
    try:
        yield
    finally:
        for p, dtype in halves:
            p.data = p.data.to(dtype)


def _mean_sensitive_reader(cfg: Any) -> str | None:
    """Which layer reads the residual stream without first removing its mean (None: every reader
    does), the condition for centering what is written to it."""
    if cfg.post_layer_norm:
        return "the first block's attention reads the embeddings as they are (Post-LN blocks)"
    if not cfg.pre_norm:
        return "attention and MLPs read the residual stream without a norm (pre_norm=False)"
    if not cfg.final_norm:
        return "the unembedding reads the residual stream without a final norm"
    if cfg.final_rms:
        return "the final norm is an RMSNorm (cfg.final_rms), which keeps the mean"
    return None


def _value_bias_reach(cfg: Any) -> str | None:
    """Why b_V does not reach the output as a constant (None: it does, pattern rows sum to 1)."""
    if cfg.attn_sinks:
        return (
            "with attention sinks a pattern row sums to 1 minus the sink's share, so b_V's "
            "contribution varies with the position"
        )
    return None


def _unfoldable(cfg: Any) -> str | None:
    """Why the norms' weights cannot move into the layers that read them (None: they can)."""
    if cfg.post_layer_norm:
        return (
            "each norm's output is added back into the residual stream (Post-LN blocks, "
            "cfg.post_layer_norm), so its weights cannot move into one reader"
        )
    if cfg.positional_embedding_type == "shortformer":
        return (
            "shortformer position embeddings are added to ln1's output after its weight, so "
            "folding the weight into W_Q and W_K would scale them too"
        )
    return None


# --- fold_ln ---------------------------------------------------------------------------------
@torch.no_grad()
def fold_layer_norm(model: Any, fold_biases: bool = True, center_weights: bool = True) -> None:
    """Fold norm weights into the next layer's weights; norms become weightless (LNPre/RMSPre)."""
    _run_alone(model, _fold_layer_norm_step(model, fold_biases, center_weights))


def _run_alone(model: Any, step: _Step) -> None:
    """A public step function: its parts over every group in the model's dtype, then finish."""
    _run_by_group(model, [step], in_float32=False)
    step.finish()


def _fold_layer_norm_step(
    model: Any, fold_biases: bool = True, center_weights: bool = True
) -> _Step:
    cfg = model.cfg
    reason = _unfoldable(cfg)
    if reason is not None:
        raise ValueError(f"fold_layer_norm is not valid for this model: {reason}.")
    if cfg.normalization_type not in ("LN", "RMS"):
        raise ValueError(
            f"Nothing to fold: normalization_type is {cfg.normalization_type!r} "
            "(folding needs LN or RMS)."
        )
    is_ln = cfg.normalization_type == "LN"
    fold_bias, center = is_ln and fold_biases, center_weights and is_ln
    if fold_bias and cfg.pre_norm and not cfg.attn_only:  # before any weight changes
        for block in model.blocks:
            if isinstance(block.mlp, MoE):
                _refuse_router_bias(block.mlp, block.ln2)
    final_is_ln = is_ln and not cfg.final_rms  # with cfg.final_rms: no bias, not zero-mean

    def finish() -> None:
        model.set_layer_norm_type("LNPre" if is_ln else "RMSPre")
        cfg.processing["fold_ln"] = True

    return _Step(
        finish,
        # no pre-norms: only ln_final folds
        block=partial(_fold_block_norms, fold_bias=fold_bias, center=center)
        if cfg.pre_norm
        else None,
        final=partial(
            _fold_into_unembed,
            model.unembed,
            model.ln_final,
            final_is_ln and fold_biases,
            center and final_is_ln,
        )
        if cfg.final_norm
        else None,
    )


def _fold_block_norms(block: Any, fold_bias: bool, center: bool) -> None:
    """Fold ln1 into the queries, keys and values, and ln2 into the MLP (and router)."""
    attn = block.attn
    W_K, b_K, W_V, b_V = attn.kv_weights
    for W, b in ((attn.W_Q, attn.b_Q), (W_K, b_K), (W_V, b_V)):
        _fold_into_heads(W, b, block.ln1, fold_bias, center)
    if block.cfg.attn_only:
        return
    if isinstance(block.mlp, MoE):
        _fold_into_router(block.mlp, block.ln2, fold_bias, center)
    for mlp in _dense_mlps(block.mlp):
        _fold_into_matrix(mlp.W_in, mlp.b_in, block.ln2, fold_bias, center)
        if block.cfg.gated_mlp:
            _fold_into_matrix(mlp.W_gate, mlp.b_gate, block.ln2, fold_bias, center)


def _fold_into_unembed(unembed: Any, norm: Any, fold_bias: bool, center: bool) -> None:
    """Fold the final norm into whatever reads it: W_U, or W_proj_out ahead of W_U (d_embed)."""
    if unembed.cfg.d_embed is None:
        _fold_into_matrix(unembed.W_U, unembed.b_U, norm, fold_bias, center)
        return
    if fold_bias:  # the projection has no bias: the norm's bias reaches the logits as a constant
        unembed.b_U += norm.b @ unembed.W_proj_out @ unembed.W_U
    _fold_into_matrix(unembed.W_proj_out, None, norm, False, center)


def _dense_mlps(mlp: Any) -> list[Any]:
    """The MLP itself, or every expert (and the shared expert) of a mixture of experts."""
    if not isinstance(mlp, MoE):
        return [mlp]
    return [*mlp.experts, *([mlp.shared_expert] if mlp.shared_expert is not None else [])]


def _refuse_router_bias(moe: MoE, norm: Any) -> None:
    """A LayerNorm bias folds into the router's bias (and the shared gate's): refuse it where
    there is no slot for it."""
    no_slot = not moe.cfg.router_bias or moe.shared_expert is not None  # the shared gate has none
    if no_slot and bool(norm.b.any()):
        raise NotImplementedError(
            "Folding a LayerNorm bias into a mixture of experts needs a router bias (and a "
            "shared-expert gate bias), which this model has no slot for; load with fold_ln=False."
        )


def _fold_into_router(moe: MoE, norm: Any, fold_bias: bool, center: bool) -> None:
    """Fold the norm into the router (and the shared expert's gate), which read it too."""
    router_bias = moe.b_router if moe.cfg.router_bias else None
    _fold_into_matrix(moe.W_router, router_bias, norm, fold_bias, center)
    if moe.shared_expert is not None:
        _fold_into_matrix(moe.W_shared_gate, None, norm, False, center)


def _fold_into_heads(W: Tensor, b: Tensor, norm: Any, fold_bias: bool, center: bool) -> None:
    # W: [heads, d_model, d_head], b: [heads, d_head]; the norm is in W's group (its device)
    if fold_bias:
        b += torch.einsum("d,hde->he", norm.b, W)
    W *= norm.multiplier[None, :, None]
    if center:
        W -= W.mean(dim=1, keepdim=True)


def _fold_into_matrix(
    W: Tensor, b: Tensor | None, norm: Any, fold_bias: bool, center: bool
) -> None:
    # W: [d_model, out], b: [out]; the norm is in W's group (its device)
    if fold_bias and b is not None:
        b += norm.b @ W
    W *= norm.multiplier[:, None]
    if center:
        W -= W.mean(dim=0, keepdim=True)


# --- centering -------------------------------------------------------------------------------
@torch.no_grad()
def center_writing_weights(model: Any) -> None:
    """Make every write to the residual stream zero-mean along d_model (LayerNorm models)."""
    _run_alone(model, _center_writing_weights_step(model))


def _center_writing_weights_step(model: Any) -> _Step:
    cfg = model.cfg
    reader = _mean_sensitive_reader(cfg)
    if reader is not None:
        raise ValueError(
            f"center_writing_weights would change this model's output: {reader}, so the mean "
            "of the residual stream matters."
        )
    if cfg.normalization_type not in _LAYER_NORMS:
        raise ValueError(
            "center_writing_weights is only valid for LayerNorm models: RMSNorm does not remove "
            f"the mean (normalization_type is {cfg.normalization_type!r})."
        )
    return _Step(
        partial(_record, cfg, "center_writing_weights"),
        embed=partial(_center_embeddings, model),
        block=_center_block_writes,
    )


def _center_embeddings(model: Any) -> None:
    # The tokens' write to the stream: W_E, or W_proj_in when embeddings are d_embed wide.
    _center_last(model.embed.W_proj_in if model.cfg.d_embed is not None else model.embed.W_E)
    if model.cfg.positional_embedding_type == "standard":  # shortformer: not in the stream
        _center_last(model.pos_embed.W_pos)


def _center_block_writes(block: Any) -> None:
    _center_last(block.attn.W_O)
    _center_last(block.attn.b_O)
    if not block.cfg.attn_only:
        for mlp in _dense_mlps(block.mlp):
            _center_last(mlp.W_out)
            _center_last(mlp.b_out)


def _center_last(t: Tensor) -> None:
    t -= t.mean(dim=-1, keepdim=True)


def _record(cfg: Any, step: str) -> None:
    cfg.processing[step] = True


@torch.no_grad()
def center_unembed(model: Any) -> None:
    """Zero-mean ``W_U`` rows and ``b_U`` over the vocabulary (softmax is shift-invariant)."""
    _run_alone(model, _center_unembed_step(model))


def _center_unembed_step(model: Any) -> _Step:
    if model.cfg.output_logits_soft_cap is not None:
        raise ValueError(
            "center_unembed is not valid with soft-capped logits: tanh is not shift-invariant."
        )
    return _Step(
        partial(_record, model.cfg, "center_unembed"), final=partial(_center_unembed, model.unembed)
    )


def _center_unembed(unembed: Any) -> None:
    _center_last(unembed.W_U)
    _center_last(unembed.b_U)


# --- value biases ----------------------------------------------------------------------------
@torch.no_grad()
def fold_value_biases(model: Any) -> None:
    """Move each layer's value bias into its output bias: ``b_O += sum_h b_V[h] @ W_O[h]``."""
    _run_alone(model, _fold_value_biases_step(model))


def _fold_value_biases_step(model: Any) -> _Step:
    reason = _value_bias_reach(model.cfg)
    if reason is not None:
        raise ValueError(f"fold_value_biases is not valid for this model: {reason}.")
    return _Step(partial(_record, model.cfg, "fold_value_biases"), block=_fold_block_value_bias)


def _fold_block_value_bias(block: Any) -> None:
    attn = block.attn
    _, _, _, b_V_kv = attn.kv_weights
    b_V = attn.b_V  # [n_heads, d_head], repeated per query head under GQA
    attn.b_O += torch.einsum("he,hed->d", b_V, attn.W_O)
    b_V_kv.zero_()


# --- refactoring -----------------------------------------------------------------------------
@torch.no_grad()
def refactor_factored_attn_matrices(model: Any) -> None:
    """Re-factor each head's ``W_Q, W_K`` and ``W_V, W_O`` by SVD, keeping ``W_Q W_K^T`` and
    ``W_V W_O`` (and so the model's output) unchanged, as the classic step did.

    Elhage et al. (2021, "A Mathematical Framework for Transformer Circuits") note that only the
    products matter; this picks the factorization the singular value decomposition gives:

    - OV: ``W_V W_O = U S V^T``, so ``W_V = U S`` (orthogonal columns) and ``W_O = V^T``
      (orthonormal rows: a rotation into the residual stream, so ``z`` has the norm of the head's
      output). ``b_V`` first moves into ``b_O`` as in `fold_value_biases`.
    - QK: ``W_Q W_K^T = U S V^T``, so ``W_Q = U S^1/2`` and ``W_K = V S^1/2`` (column n of each
      has the same norm). The biases join as an extra input row, ``[W_Q; b_Q] [W_K; b_K]^T``
      (an input whose last coordinate is 1), so the full bilinear form of the scores is kept.

    Where the classic step stopped, this one goes on (docs/differences.md):

    - Grouped-query attention: a key/value head is shared by a group of query heads, so one
      change of basis per group is all there is. The SVD is taken of the group's stacked
      products, ``[W_Q[h1]; W_Q[h2]; ...] W_K^T`` and ``W_V [W_O[h1], W_O[h2], ...]``; for groups
      of one (multi-head attention) this is exactly the classic refactor.
    - Rotary layers: scores are ``q R(i - j) k^T``, so a change of basis ``M`` of ``d_head``
      must commute with every rotation: plane by plane, a rotation and a scale (all there is
      when the planes' frequencies differ). The SVD is taken over the features rotary leaves
      alone (``rotary_dim < d_head``), and each rotated plane is scaled so that its query and
      key weights have the same norm, the rotary analogue of ``S^1/2`` on each side. OV is
      refactored in full (rotary does not touch values). NoPE layers get the full refactor.
    - Attention sinks: a pattern row does not sum to 1, so ``b_V`` stays a value bias and joins
      the OV SVD as an extra input row, like the QK biases.
    - Norms of the queries and keys (``cfg.qk_norm``) are not linear, so QK is left as it is (a
      warning says so) and only OV is refactored.

    Folding the norms first is not needed for the output to be unchanged (the refactor acts on
    whatever the attention reads), but without it the SVD is of the norm-scaled matrices.
    Computed in float64. Records ``cfg.processing["refactor_factored_attn_matrices"]``, and
    ``"fold_value_biases"`` where ``b_V`` moved into ``b_O``.
    """
    _run_alone(model, _refactor_step(model))


def _refactor_step(model: Any) -> _Step:
    cfg = model.cfg
    if cfg.qk_norm:
        warnings.warn(
            "refactor_factored_attn_matrices refactors only OV for this model: its queries and "
            "keys are normalized (cfg.qk_norm) before the scores, which a change of basis of W_Q "
            "and W_K does not survive, so they are left as they are.",
            stacklevel=4,  # whoever called refactor_factored_attn_matrices, past no_grad's wrapper
        )
    fold_b_V = _value_bias_reach(cfg) is None

    def refactor_block(block: Any) -> None:
        if not cfg.qk_norm:
            _refactor_qk(block.attn)
        _refactor_ov(block.attn, fold_b_V)

    def finish() -> None:
        cfg.processing["refactor_factored_attn_matrices"] = True
        if fold_b_V:
            cfg.processing["fold_value_biases"] = True

    return _Step(finish, block=refactor_block)


def _refactor_qk(attn: Any) -> None:
    """Make each group's ``[W_Q; b_Q]`` and ``[W_K; b_K]`` even (see the docstring above)."""
    W_K, b_K, _, _ = attn.kv_weights
    kv, d, dh = W_K.shape
    group = attn.W_Q.shape[0] // kv
    Q = torch.cat([attn.W_Q, attn.b_Q[:, None]], dim=1).double()  # [h, d + 1, dh]
    Q = Q.reshape(kv, group * (d + 1), dh)  # each group's query heads stacked
    K = torch.cat([W_K, b_K[:, None]], dim=1).double()  # [kv, d + 1, dh]
    rotary = attn.rotary
    rotated = rotary.rotary_dim if rotary is not None else 0
    if rotated:
        first, second = _rotary_planes(rotated, rotary.adjacent, Q.device)
        q_norm = (Q[..., first].square() + Q[..., second].square()).sum(1).sqrt()  # [kv, planes]
        k_norm = (K[..., first].square() + K[..., second].square()).sum(1).sqrt()
        scale = torch.where((q_norm > 0) & (k_norm > 0), (k_norm / q_norm).sqrt(), 1.0)
        for cols in (first, second):
            Q[..., cols] *= scale[:, None, :]
            K[..., cols] /= scale[:, None, :]
    if rotated < dh:  # features rotary leaves alone: any change of basis of them is allowed
        U, S, V = _svd_of_product(Q[..., rotated:], K[..., rotated:])
        Q[..., rotated:] = U * S.sqrt()[:, None, :]
        K[..., rotated:] = V * S.sqrt()[:, None, :]
    Q = Q.reshape(kv * group, d + 1, dh)
    attn.W_Q.copy_(Q[:, :-1])
    attn.b_Q.copy_(Q[:, -1])
    W_K.copy_(K[:, :-1])
    b_K.copy_(K[:, -1])


def _refactor_ov(attn: Any, fold_b_V: bool) -> None:
    """SVD each group's ``W_V [W_O[h1], W_O[h2], ...]``: ``W_V = U S``, ``W_O = V^T``."""
    _, _, W_V, b_V = attn.kv_weights
    kv, d, dh = W_V.shape
    group = attn.W_O.shape[0] // kv
    if fold_b_V:  # b_V reaches the output as a constant: move it into b_O
        attn.b_O += torch.einsum("he,hed->d", attn.b_V, attn.W_O)
        b_V.zero_()
        V_in = W_V.double()  # [kv, d, dh]
    else:  # keep b_V, refactored with W_V as an extra input row
        V_in = torch.cat([W_V, b_V[:, None]], dim=1).double()  # [kv, d + 1, dh]
    # [h, dh, d] -> [kv, dh, group * d]: each group's output maps side by side
    W_O = attn.W_O.double().reshape(kv, group, dh, d).transpose(1, 2).reshape(kv, dh, group * d)
    U, S, V = _svd_of_product(V_in, W_O.mT)
    V_in = U * S[:, None, :]
    W_V.copy_(V_in[:, :d])
    if not fold_b_V:
        b_V.copy_(V_in[:, d])
    W_O = V.mT.reshape(kv, dh, group, d).transpose(1, 2).reshape(kv * group, dh, d)
    attn.W_O.copy_(W_O)


def _rotary_planes(
    rotary_dim: int, adjacent: bool, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """The two feature indices of each plane rotary rotates (see `model.positions.Rotary`)."""
    if adjacent:  # GPT-J: (0, 1), (2, 3), ...
        first = torch.arange(0, rotary_dim, 2, device=device)
        return first, first + 1
    first = torch.arange(rotary_dim // 2, device=device)  # halves: (i, i + rotary_dim / 2)
    return first, first + rotary_dim // 2


def _svd_of_product(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``A @ B^T = U diag(S) V^T`` for ``A [..., m, r]``, ``B [..., n, r]`` (float64, computed
    in the r-wide space): ``U [..., m, r]``, ``S [..., r]`` descending, ``V [..., n, r]``, with
    zero columns where the product has fewer than r nonzero singular values."""
    U, S, V = FactoredMatrix(A, B.mT).svd(rtol=0)
    missing = A.shape[-1] - S.shape[-1]
    if missing:
        U, V, S = F.pad(U, (0, missing)), F.pad(V, (0, missing)), F.pad(S, (0, missing))
    return U, S, V


_STEPS: dict[str, Callable[[Any], _Step]] = {
    "fold_ln": _fold_layer_norm_step,
    "center_writing_weights": _center_writing_weights_step,
    "center_unembed": _center_unembed_step,
    "fold_value_biases": _fold_value_biases_step,
    "refactor_factored_attn_matrices": _refactor_step,
}
