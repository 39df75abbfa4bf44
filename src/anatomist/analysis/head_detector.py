"""Find attention heads by the pattern they attend with: previous-token, duplicate-token,
induction, or any pattern you write down.

A detection pattern is a ``[pos, pos]`` lower-triangular matrix saying where each query position
should attend. ``detect_head`` compares it with every head's attention pattern on a sequence and
returns one score per head, ``[n_layers, n_heads]``; heads left out by `heads` score ``-1``.

Scores (as the classic ``transformer_lens.head_detector``):

- ``"mul"`` (default): the fraction of the head's attention that lands where the detection
  pattern is 1, ``sum(pattern * detection) / sum(pattern)``. A perfect previous-token head on
  ``n`` positions scores ``(n - 1) / n`` (the first query has no previous token).
- ``"abs"``: ``1 - sum|pattern - detection| / n``, rounded to 3 decimals: 1 is a perfect match,
  -1 a perfect mismatch. Use it when the detection pattern holds fractions (0.2 here, 0.8 there).

``exclude_bos`` ignores attention to position 0 and ``exclude_current_token`` ignores the diagonal
(in both the head's attention and, for ``"abs"``, the difference).

Differences from the classic: a list of sequences passes `heads`, the exclusions and the error
measure on to every sequence (the classic dropped them), the cache's patterns are not modified in
place, token tensors are accepted, and a sequence of exactly ``n_ctx`` tokens is allowed.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import torch
from torch import Tensor

from anatomist.utils import get_act_name, is_lower_triangular

HeadName = Literal["previous_token_head", "duplicate_token_head", "induction_head"]
ErrorMeasure = Literal["mul", "abs"]
HEAD_NAMES: tuple[str, ...] = ("previous_token_head", "duplicate_token_head", "induction_head")
LayerHeadTuple = tuple[int, int]
LayerToHead = dict[int, list[int]]
LayerHeads = Sequence[LayerHeadTuple] | Mapping[int, Sequence[int]]

# The classic error messages; ours start with them and add the numbers that were wrong.
INVALID_HEAD_NAME_ERR = (
    f"detection_pattern must be a Tensor or one of head names: {HEAD_NAMES}; got %s"
)
SEQ_LEN_ERR = "The sequence must be non-empty and must fit within the model's context window."
DET_PAT_NOT_SQUARE_ERR = (
    "The detection pattern must be a lower triangular matrix of shape (sequence_length, "
    "sequence_length); sequence_length=%d; got detection pattern of shape %s"
)


class HeadDetectionError(ValueError, AssertionError):
    """A bad argument to `detect_head` (a sequence, pattern, head or cache that does not fit).
    Also an AssertionError, which the classic function raised."""


def get_previous_token_head_detection_pattern(tokens: Tensor) -> Tensor:
    """``[pos, pos]``: each position attends to the one before it (the first to nothing)."""
    n = tokens.shape[-1]
    return torch.diag(torch.ones(max(n - 1, 0)), diagonal=-1)


def get_duplicate_token_head_detection_pattern(tokens: Tensor) -> Tensor:
    """``[pos, pos]``: each position attends to the earlier positions holding the same token."""
    row = tokens.reshape(-1)
    same = row[:, None] == row[None, :]  # [query, key]
    return torch.tril(same, diagonal=-1).float()


def get_induction_head_detection_pattern(tokens: Tensor) -> Tensor:
    """``[pos, pos]``: each position attends to the token *after* an earlier copy of itself
    (the duplicate-token pattern shifted one key to the right)."""
    duplicate = get_duplicate_token_head_detection_pattern(tokens)
    shifted = torch.zeros_like(duplicate)
    shifted[:, 1:] = duplicate[:, :-1]
    return torch.tril(shifted)


_PATTERN_BUILDERS = {
    "previous_token_head": get_previous_token_head_detection_pattern,
    "duplicate_token_head": get_duplicate_token_head_detection_pattern,
    "induction_head": get_induction_head_detection_pattern,
}


def get_supported_heads() -> tuple[str, ...]:
    """The head names `detect_head` builds a detection pattern for."""
    return HEAD_NAMES


def detect_head(
    model: Any,
    seq: str | Sequence[str] | Tensor,
    detection_pattern: HeadName | str | Tensor,
    heads: LayerHeads | None = None,
    cache: Any = None,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: ErrorMeasure | str = "mul",
) -> Tensor:
    """Score every attention head (or the ones in `heads`) against a detection pattern.

    Args:
        model: a HookedTransformer (anything with ``cfg``, ``to_tokens`` and ``run_with_cache``).
        seq: a string, a list of strings (scored one by one, scores averaged), or token ids
            ``[pos]`` or ``[batch, pos]`` (each row scored, scores averaged). Strings are tokenized
            with ``model.to_tokens`` (BOS as the model's default); token ids are used as given.
        detection_pattern: ``"previous_token_head"``, ``"duplicate_token_head"``,
            ``"induction_head"`` (built from each sequence's tokens), or a lower-triangular
            ``[pos, pos]`` tensor (every sequence must then have ``pos`` tokens).
        heads: score only these heads, as ``[(layer, head), ...]`` or ``{layer: [head, ...]}``;
            every other head scores -1.
        cache: the activations of a run on `seq` (an ActivationCache or a dict holding
            ``blocks.{l}.attn.hook_pattern``, with or without a batch axis of 1) to skip the
            forward pass. Only for a single sequence.
        exclude_bos: ignore attention to position 0.
        exclude_current_token: ignore attention to the query's own position.
        error_measure: ``"mul"`` or ``"abs"`` (module docstring).

    Returns:
        ``[n_layers, n_heads]`` float32 scores.
    """
    if error_measure not in ("mul", "abs"):
        raise HeadDetectionError(f"error_measure must be 'mul' or 'abs', got {error_measure!r}.")
    if isinstance(detection_pattern, str) and detection_pattern not in _PATTERN_BUILDERS:
        raise HeadDetectionError(INVALID_HEAD_NAME_ERR % repr(detection_pattern))
    rows = _token_rows(model, seq)
    if cache is not None and len(rows) != 1:
        raise HeadDetectionError(
            f"A cache holds the run of one sequence, but {len(rows)} sequences were given; "
            "pass them one at a time, or drop the cache."
        )
    layer_heads = _layer_heads(model.cfg, heads)
    scores = [
        _score_sequence(
            model,
            tokens,
            detection_pattern,
            layer_heads,
            cache,
            exclude_bos=exclude_bos,
            exclude_current_token=exclude_current_token,
            error_measure=error_measure,
        )
        for tokens in rows
    ]
    return torch.stack(scores).mean(0)


def compute_head_attention_similarity_score(
    attention_pattern: Tensor,
    detection_pattern: Tensor,
    *,
    exclude_bos: bool,
    exclude_current_token: bool,
    error_measure: ErrorMeasure | str,
) -> Tensor:
    """Scores of attention patterns ``[..., q, k]`` (one head or a stack of heads) against a
    detection pattern ``[q, k]``; returns a tensor of the leading shape (``[]`` for one head)."""
    if attention_pattern.shape[-1] != attention_pattern.shape[-2]:
        raise HeadDetectionError(
            f"Attention pattern is not square: {tuple(attention_pattern.shape)}."
        )
    attention = attention_pattern.float().clone()  # never edit the caller's cache
    detection = detection_pattern.to(attention.device, torch.float32)
    size = attention.shape[-1]
    keep = torch.ones(size, size, dtype=torch.bool, device=attention.device)
    if exclude_bos:
        keep[:, 0] = False
    if exclude_current_token:
        keep.fill_diagonal_(False)
    if error_measure == "mul":
        attention = attention * keep
        return (attention * detection).sum((-2, -1)) / attention.sum((-2, -1))
    # abs: mean |difference| over size**2 entries, times size, i.e. the per-row mean L1 distance.
    abs_diff = (attention - detection).abs() * keep
    return 1 - torch.round(abs_diff.sum((-2, -1)) / size, decimals=3)


# --- internals ------------------------------------------------------------------------------------


def _token_rows(model: Any, seq: str | Sequence[str] | Tensor) -> list[Tensor]:
    """The sequences to score, each as 1-D token ids."""
    if isinstance(seq, Tensor):
        if seq.dim() == 1:
            return [seq]
        if seq.dim() == 2:
            return list(seq)
        raise HeadDetectionError(
            f"Token ids must be [pos] or [batch, pos], got {tuple(seq.shape)}."
        )
    if isinstance(seq, str):
        return [model.to_tokens(seq)[0]]
    if len(seq) == 0:
        raise HeadDetectionError("seq is an empty list: give at least one sequence.")
    return [model.to_tokens(text)[0] for text in seq]


def _layer_heads(cfg: Any, heads: LayerHeads | None) -> dict[int, list[int]]:
    if heads is None:
        return {layer: list(range(cfg.n_heads)) for layer in range(cfg.n_layers)}
    if isinstance(heads, Mapping):
        return {int(layer): [int(h) for h in hs] for layer, hs in heads.items()}
    grouped: dict[int, list[int]] = {}
    for layer, head in heads:
        grouped.setdefault(int(layer), []).append(int(head))
    return grouped


def _score_sequence(
    model: Any,
    tokens: Tensor,
    detection_pattern: str | Tensor,
    layer_heads: dict[int, list[int]],
    cache: Any,
    *,
    exclude_bos: bool,
    exclude_current_token: bool,
    error_measure: str,
) -> Tensor:
    cfg = model.cfg
    seq_len = tokens.shape[-1]
    if not 1 < seq_len <= cfg.n_ctx:
        raise HeadDetectionError(
            f"{SEQ_LEN_ERR} It has {seq_len} tokens (BOS included); it needs 2 to "
            f"n_ctx={cfg.n_ctx}."
        )
    if isinstance(detection_pattern, str):
        detection = _PATTERN_BUILDERS[detection_pattern](tokens.cpu())
    else:
        detection = detection_pattern.detach().cpu().float()
        if not is_lower_triangular(detection) or detection.shape[0] != seq_len:
            raise HeadDetectionError(
                DET_PAT_NOT_SQUARE_ERR % (seq_len, tuple(detection.shape))
                + ("" if is_lower_triangular(detection) else " (not lower triangular)")
            )
    if error_measure == "mul" and not set(detection.unique().tolist()) <= {0.0, 1.0}:
        warnings.warn(
            "The detection pattern holds values other than 0 and 1; error_measure='mul' reads it "
            "as a mask weighting. Use error_measure='abs' to compare fractions.",
            stacklevel=3,
        )
    for layer, layer_head_list in layer_heads.items():
        if not -cfg.n_layers <= layer < cfg.n_layers:
            raise HeadDetectionError(f"Layer {layer} is out of range (n_layers={cfg.n_layers}).")
        for head in layer_head_list:
            if not -cfg.n_heads <= head < cfg.n_heads:
                raise HeadDetectionError(
                    f"heads names head {head} of layer {layer}, out of range "
                    f"(n_heads={cfg.n_heads}: heads 0 .. {cfg.n_heads - 1})."
                )
    if cache is None:
        names = {get_act_name("pattern", layer % cfg.n_layers) for layer in layer_heads}
        with torch.no_grad():
            _, cache = model.run_with_cache(
                tokens[None].to(cfg.device or tokens.device),
                names_filter=lambda name: name in names,
                return_type=None,
            )
    scores = -torch.ones(cfg.n_layers, cfg.n_heads)
    for layer, heads in layer_heads.items():
        pattern = _cached_pattern(cache, layer % cfg.n_layers, seq_len)  # [h, q, k]
        index = torch.tensor(heads, dtype=torch.long)
        layer_scores = compute_head_attention_similarity_score(
            pattern[index.to(pattern.device)],
            detection,
            exclude_bos=exclude_bos,
            exclude_current_token=exclude_current_token,
            error_measure=error_measure,
        )
        scores[layer, index] = layer_scores.cpu()
    return scores


def _cached_pattern(cache: Any, layer: int, seq_len: int) -> Tensor:
    pattern = cast(Tensor, cache[get_act_name("pattern", layer)])
    if pattern.dim() == 4:
        if pattern.shape[0] != 1:
            raise HeadDetectionError(
                f"The cache holds a batch of {pattern.shape[0]} sequences; detect_head scores one "
                "sequence per cache (slice the cache, or pass the sequences without a cache)."
            )
        pattern = pattern[0]
    if pattern.dim() != 3 or pattern.shape[-1] != seq_len or pattern.shape[-2] != seq_len:
        raise HeadDetectionError(
            f"The cached pattern of layer {layer} has shape {tuple(pattern.shape)}, which does not "
            f"fit a sequence of {seq_len} tokens: was the cache computed on this sequence?"
        )
    return pattern
