"""Logit lens: read the residual stream after each layer through the final norm and unembedding.

(nostalgebraist, "interpreting GPT: the logit lens", 2020.) Each row is the stream before a block
(or, last, the stream the final norm reads), normalized with its own statistics by ``ln_final``
and unembedded, so the last row is the model's own output::

    logits = logit_lens(model, "The Eiffel Tower is in the city of")  # [n_layers + 1, 1, d_vocab]
    probs, labels = logit_lens(model, prompts, answer_tokens=answers,   # answers [batch, 2]
                               return_type="probs", return_labels=True)  # [n_layers + 1, batch, 2]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

RETURN_TYPES = ("logits", "probs", "log_probs")


def logit_lens(
    model: Any,
    input: str | list[str] | Tensor,
    answer_tokens: int | str | list[Any] | Tensor | None = None,
    pos_slice: Any = -1,
    *,
    incl_mid: bool = False,
    return_type: str = "logits",
    return_labels: bool = False,
    **forward_kwargs: Any,
) -> Tensor | tuple[Tensor, list[str]]:
    """The model's prediction read off the residual stream before every block, in one call.

    Runs `model` once on `input` (text, a list of texts, or token ids ``[batch, pos]``), caching
    only the residual stream, and returns ``[rows, batch, *pos, out]``: rows are the streams
    ``"{l}_pre"`` before each block (with `incl_mid` also each ``"{l}_mid"``) and ``"final_post"``,
    the stream the final norm reads, whose values are the model's own. `pos_slice` selects
    positions (default -1, the last; an int drops the axis; None keeps all). A list of texts is
    left-padded unless `forward_kwargs` say otherwise, so -1 is each text's last token.

    `return_type` is "logits", "probs" or "log_probs" (the softmax over the whole vocabulary).
    `answer_tokens` keeps only some tokens' values (``out``): an id or a string (the axis is
    dropped), a list or 1-D tensor of them (the same answers for every batch row), or a 2-D
    tensor ``[batch, k]`` of each row's own answers (e.g. correct and incorrect). Without it,
    ``out`` is the vocabulary. `return_labels` also returns the row labels.
    """
    if return_type not in RETURN_TYPES:
        raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}.")
    if isinstance(input, list):
        forward_kwargs.setdefault("padding_side", "left")
    rows = getattr(model, "lens_rows", None)
    if callable(rows):  # a wrapped Hugging Face model: its own final norm and head
        if incl_mid:
            raise ValueError(
                "incl_mid needs blocks.{l}.hook_resid_mid, which a wrapped Hugging Face model "
                "(HookedHFModel) does not have: its hook points are the layer boundaries."
            )
        values, labels = rows(input, pos_slice, **forward_kwargs)
    else:
        values, labels = _native_rows(model, input, pos_slice, incl_mid, forward_kwargs)
    if return_type == "probs":
        values = values.float().softmax(dim=-1)
    elif return_type == "log_probs":
        values = values.float().log_softmax(dim=-1)
    if answer_tokens is not None:
        values = _select_tokens(model, values, answer_tokens)
    return (values, labels) if return_labels else values


def _native_rows(
    model: Any, input: Any, pos_slice: Any, incl_mid: bool, forward_kwargs: dict[str, Any]
) -> tuple[Tensor, list[str]]:
    """The lens's rows on a native model: its cached streams through ln_final and unembed."""
    n = model.cfg.n_layers
    # Only the residual stream is cached (plus the scales the norm hooks compute anyway).
    wanted = {f"blocks.{i}.hook_resid_pre" for i in range(n)}
    last = "hook_normalized_resid_post" if model.cfg.post_layer_norm else "hook_resid_post"
    wanted.add(f"blocks.{n - 1}.{last}")
    if incl_mid:
        wanted |= {f"blocks.{i}.hook_resid_mid" for i in range(n)}
    _, cache = model.run_with_cache(
        input, names_filter=lambda name: name in wanted, return_type=None, **forward_kwargs
    )
    stack, labels = cache.accumulated_resid(
        incl_mid=incl_mid, apply_ln=True, pos_slice=pos_slice, return_labels=True
    )
    return _unembed(model, stack), labels  # [rows, batch, *pos, d_vocab]


def _unembed(model: Any, x: Tensor) -> Tensor:
    """``x @ W_U + b_U`` (through the output projection and logit soft cap where the model has
    them), as the model's unembedding computes it, without firing its hooks."""
    unembed = model.unembed
    logits = x @ unembed.W_U_residual.to(x) + unembed.b_U.to(x)
    cap = model.cfg.output_logits_soft_cap
    return cap * torch.tanh(logits / cap) if cap is not None else logits


def _select_tokens(model: Any, values: Tensor, answer_tokens: Any) -> Tensor:
    """`values` ``[rows, batch, *pos, vocab]`` at `answer_tokens` (see `logit_lens`)."""
    single = isinstance(answer_tokens, int | str)
    if isinstance(answer_tokens, str):
        answer_tokens = model.to_single_token(answer_tokens)
    if isinstance(answer_tokens, list):
        answer_tokens = [
            model.to_single_token(t) if isinstance(t, str) else t for t in answer_tokens
        ]
    ids = torch.as_tensor(answer_tokens, dtype=torch.long, device=values.device)
    single = single or ids.dim() == 0
    if ids.dim() > 2:
        raise ValueError(
            f"answer_tokens must have at most 2 axes [batch, k], got {tuple(ids.shape)}."
        )
    batch, extra = values.shape[1], values.dim() - 3  # extra: 1 with a position axis
    if ids.dim() == 2:
        if ids.shape[0] != batch:
            raise ValueError(
                f"answer_tokens [batch, k] has {ids.shape[0]} rows but the input has {batch}."
            )
        index = ids.view(1, batch, *([1] * extra), -1)
    else:
        index = ids.reshape(*([1] * (values.dim() - 1)), -1)
    index = index.expand(*values.shape[:-1], index.shape[-1])
    selected = values.gather(-1, index)
    return selected[..., 0] if single else selected


def top_predictions(model: Any, prompt: str, k: int = 5) -> list[tuple[str, float]]:
    """The `k` most likely next tokens after `prompt`, with their probabilities."""
    logits = model(prompt)[0, -1]
    probs = logits.float().softmax(-1)
    top = probs.topk(k)
    return [
        (model.to_single_str_token(t), float(p))
        for p, t in zip(top.values.tolist(), top.indices.tolist())
    ]


def layer_logits(model: Any, prompt: str | Tensor, position: int = -1) -> tuple[list[str], Tensor]:
    """Logits ``[n_layers + 1, d_vocab]`` at `position` from the residual stream before each
    block and after the last one, each passed through ``ln_final`` and the unembedding."""
    logits = logit_lens(model, prompt, pos_slice=position)
    assert isinstance(logits, Tensor)
    labels = ["embeddings"] + [f"after L{i}" for i in range(model.cfg.n_layers)]
    return labels, logits[:, 0]


def logit_lens_ranks(model: Any, prompt: str, answer: str) -> list[tuple[str, int]]:
    """Rank of `answer`'s first token among all tokens at the last position, per layer."""
    token = int(model.to_tokens(answer, prepend_bos=False)[0, 0])
    labels, logits = layer_logits(model, prompt)
    ranks = (logits > logits[:, token : token + 1]).sum(-1).tolist()
    return list(zip(labels, (int(r) for r in ranks)))
