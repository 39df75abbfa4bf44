"""Text generation: choosing the next token from logits (`sample_logits`, the classic
``utils.sample_logits``) and the decoder-only models' `generate` / `generate_stream`
(`GenerationMixin`). The encoder-decoder's ``generate`` lives in encoder_decoder.py.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm


class SamplingSettingError(ValueError, AssertionError):
    """A generation setting out of its range. Also an AssertionError, which the classic
    ``sample_logits`` raised, so code that caught that keeps working."""


class StopTokenError(ValueError, AssertionError):
    """``stop_at_eos=True`` with no end-of-sequence token to stop at. Also an AssertionError,
    which the classic library raised."""


def sample_logits(
    final_logits: Tensor,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    tokens: Tensor | None = None,
    repetition_penalty: float = 1.0,
) -> Tensor:
    """One sampled token id per row of `final_logits` ``[b, d_vocab]`` -> ``[b]``.

    Each token already in `tokens` ``[b, p]`` first has its logit divided by
    `repetition_penalty` (multiplied, when negative). ``temperature == 0`` is then greedy.
    Otherwise the logits are divided by `temperature`, each token in `tokens` loses
    ``freq_penalty`` per occurrence, and sampling is restricted to the `top_k` most likely
    tokens and/or the smallest set whose probability reaches `top_p` (the most likely token is
    always kept). `repetition_penalty` comes after `tokens`, so the 2.x positional order holds.
    """
    check_sampling_args(
        top_k=top_k,
        top_p=top_p,
        temperature=temperature,
        freq_penalty=freq_penalty,
        repetition_penalty=repetition_penalty,
    )
    if tokens is None and (freq_penalty or repetition_penalty != 1.0):
        raise SamplingSettingError(
            "freq_penalty and repetition_penalty need tokens=, the ids generated so far [b, p]."
        )
    if tokens is not None:
        final_logits = apply_repetition_penalty(final_logits, tokens, repetition_penalty)
    if temperature == 0.0:
        return final_logits.argmax(-1)
    logits = final_logits.float()
    # Shift each row so its best logit is 0 and divide in float64: the same distribution, but a
    # tiny temperature (below float32's range) then sends the others to -inf instead of making
    # every logit 0/0 or inf - inf (NaN).
    shifted = (logits - logits.amax(-1, keepdim=True)).double()
    logits = (shifted / temperature).float()
    if freq_penalty and tokens is not None:
        counts = torch.zeros_like(logits)
        counts.scatter_add_(
            -1, tokens.to(logits.device), torch.ones_like(tokens, dtype=counts.dtype)
        )
        logits = logits - freq_penalty * counts
    if top_k is not None and top_k < logits.shape[-1]:
        # Only the k best can be drawn: top-p and the draw run over those k (sorted by topk),
        # not over the whole vocabulary. The same distribution as masking the rest to -inf
        # (but not the same draw for a given seed as that, nor keeping ties with the k-th).
        best, ids = logits.topk(top_k, dim=-1)  # [b, k], descending
        if top_p is not None:
            best = best.masked_fill(_outside_top_p(best, top_p), float("-inf"))
        choice = torch.multinomial(best.softmax(-1), 1)  # [b, 1]
        return ids.gather(-1, choice).squeeze(-1)
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        ordered, order = logits.sort(dim=-1, descending=True)
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(
            -1, order, _outside_top_p(ordered, top_p)
        )
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.distributions.Categorical(logits=logits).sample()


def _outside_top_p(ordered: Tensor, top_p: float) -> Tensor:
    """Of logits sorted best first ``[b, n]``, those after the smallest prefix whose probability
    reaches `top_p` (the best token always stays, even when top_p rounds to 0)."""
    probs = ordered.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass of better tokens
    drop = before >= top_p
    drop[..., 0] = False
    return drop


def check_sampling_args(
    max_new_tokens: int = 0,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    repetition_penalty: float = 1.0,
    eos_token_id: int | list[int] | None = None,
    d_vocab: int | None = None,
) -> None:
    """Refuse generation settings that would otherwise give some plausible output: a negative
    step count (an empty range), a NaN temperature (NaN probabilities that `Categorical`
    may or may not catch), an end token outside the vocabulary (never emitted, so never
    stops). Each error names the argument, the value and what is allowed."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral):
        raise TypeError(f"max_new_tokens must be an int, got {max_new_tokens!r}.")
    if max_new_tokens < 0:
        raise SamplingSettingError(f"max_new_tokens must be >= 0, got {max_new_tokens}.")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1
    ):
        raise SamplingSettingError(f"top_k must be None or an int >= 1, got {top_k!r}.")
    if top_p is not None and not (_real(top_p) and 0.0 < top_p <= 1.0):
        raise SamplingSettingError(f"top_p must be None or a number in (0, 1], got {top_p!r}.")
    if not (_real(temperature) and temperature >= 0):
        raise SamplingSettingError(
            f"temperature must be a finite number >= 0 (0 is greedy), got {temperature!r}."
        )
    if not _real(freq_penalty):
        raise SamplingSettingError(f"freq_penalty must be a finite number, got {freq_penalty!r}.")
    if not (_real(repetition_penalty) and repetition_penalty > 0):
        raise SamplingSettingError(
            f"repetition_penalty must be a finite number > 0 (1 is none), got "
            f"{repetition_penalty!r}."
        )
    if eos_token_id is not None:
        ids = eos_token_id if isinstance(eos_token_id, list | tuple) else [eos_token_id]
        if not ids:
            raise SamplingSettingError(
                "eos_token_id must be an id or a non-empty list of ids, got []."
            )
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise TypeError(f"eos_token_id must hold token ids (ints), got {i!r}.")
            if i < 0 or (d_vocab is not None and i >= d_vocab):
                raise SamplingSettingError(
                    f"eos_token_id {i} is not a token of this model (ids are 0 .. "
                    f"{'d_vocab - 1' if d_vocab is None else d_vocab - 1})."
                )


def _real(x: Any) -> bool:
    """A finite real number (not a bool, not NaN or infinite)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


# --- HookedTransformer.generate ---------------------------------------------------------------
RETURN_TYPES = ("input", "str", "tokens")


@dataclass
class _Generation:
    """The state of one generation run, updated in place by `GenerationMixin._steps`."""

    tokens: Tensor  # [b, p + steps] left-padded prompt followed by the new tokens
    mask: Tensor  # [b, p + steps] 1 for real tokens (new tokens are always real)
    prompt_len: int  # p, the padded prompt length
    finished: Tensor  # [b] bool: the row emitted EOS or completed a stop string
    new_lengths: Tensor  # [b] new tokens up to and including the one that finished the row
    pad_id: int
    strip_bos: bool  # the prompt is text that tokenization prefixed with BOS


class GenerationMixin:
    """`generate` and `generate_stream` for decoder-only models (`HookedTransformer`)."""

    cfg: Any
    tokenizer: Any

    if TYPE_CHECKING:

        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
        def tokenize_with_mask(
            self, input: str | list[str], prepend_bos: bool | None, padding_side: str | None
        ) -> tuple[Tensor, Tensor | None]: ...
        def run_with_cache(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]: ...
        def _require_tokenizer(self) -> Any: ...

    @torch.no_grad()
    def generate(
        self,
        input: str | list[str] | Tensor = "",
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: int | list[int] | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        repetition_penalty: float = 1.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        return_type: str | None = "input",
        verbose: bool = True,
        stop_strings: str | list[str] | None = None,
        return_cache: bool = False,
        attention_mask: Tensor | None = None,
    ) -> Any:
        """Extend `input` by up to `max_new_tokens` tokens; hooks added with ``model.hooks(...)``
        fire at every step.

        `input` is a string, a list of strings, or token ids ``[b, p]`` (with an optional
        `attention_mask` ``[b, p]`` marking padding). Prompts of different lengths are
        left-padded and masked, so each row comes out exactly as it would alone; `padding_side`
        only affects tokenization (right-padded prompts are moved to the left).

        Each step picks the next token from the last position's logits: ``repetition_penalty``
        first (Hugging Face's definition: the logit of every token already in the row, prompt
        included, is divided by the penalty when positive and multiplied when negative), then
        greedy argmax when ``do_sample=False``, else `sample_logits` (temperature,
        ``freq_penalty`` per occurrence, `top_k`, `top_p`). A row finishes when it emits an
        `eos_token_id` (default: the tokenizer's; several allowed) with `stop_at_eos`, or when
        its new text contains one of `stop_strings`; later positions of a finished row hold the
        pad token, and generation ends when every row has finished.

        Returns token ids ``[b, p + new]`` (left-padded prompt included) for
        ``return_type="tokens"``, or text (a str for a str input, else a list) for ``"str"``:
        each row's prompt and new tokens up to the one that finished it, without padding and
        without a BOS the model prepended. ``"input"`` means str for text and tokens for ids.
        With ``return_cache=True`` returns ``(output, ActivationCache)``, the activations of one
        forward pass over the final sequence (prompt + new tokens, padding masked) with the
        hooks then in place; their positions are those of the returned tokens.

        ``use_past_kv_cache`` runs each step on the new token only, reusing the keys and values
        of earlier positions; without it every step re-runs the whole sequence (same tokens,
        logits equal to float error). `verbose` shows a progress bar.
        """
        output_type = _resolve_return_type(return_type, input)
        run = self._start(input, attention_mask, prepend_bos, padding_side, eos_token_id)
        steps = self._steps(
            run,
            max_new_tokens,
            stop_at_eos,
            eos_token_id,
            do_sample,
            top_k,
            top_p,
            temperature,
            freq_penalty,
            repetition_penalty,
            use_past_kv_cache,
            stop_strings,
        )
        with tqdm(total=max_new_tokens, disable=not verbose, leave=False) as bar:
            for _ in steps:
                bar.update(1)
        output: Any = run.tokens
        if output_type == "str":
            texts = [self._row_text(run, i, with_prompt=True) for i in range(run.tokens.shape[0])]
            output = texts[0] if isinstance(input, str) else texts
        if not return_cache:
            return output
        # Always the mask, even all ones: without one, a left-padding model would take a prompt
        # that starts with the pad id for padding.
        _, cache = self.run_with_cache(run.tokens, attention_mask=run.mask)
        return output, cache

    @torch.no_grad()
    def generate_stream(
        self,
        input: str | list[str] | Tensor = "",
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: int | list[int] | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        repetition_penalty: float = 1.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        return_type: str | None = "input",
        stop_strings: str | list[str] | None = None,
        attention_mask: Tensor | None = None,
    ) -> Iterator[Any]:
        """`generate`, one step at a time: yields as each token is chosen.

        For ``return_type="tokens"`` (the ``"input"`` default for token ids) each item is the
        ``[b]`` tensor of new token ids (the pad token for finished rows). For ``"str"`` (the
        default for text) each item is the new text of that step: a str for a str input, a list
        with one piece per row for a list input. A piece is "" while a row's bytes do not yet
        form a whole character, or once the row has finished. Stops after `max_new_tokens`
        steps or when every row has finished. Arguments as in `generate`.
        """
        output_type = _resolve_return_type(return_type, input)
        run = self._start(input, attention_mask, prepend_bos, padding_side, eos_token_id)
        steps = self._steps(
            run,
            max_new_tokens,
            stop_at_eos,
            eos_token_id,
            do_sample,
            top_k,
            top_p,
            temperature,
            freq_penalty,
            repetition_penalty,
            use_past_kv_cache,
            stop_strings,
        )
        if output_type == "tokens":
            yield from steps
            return
        batch = run.tokens.shape[0]
        shown = [""] * batch
        for _ in steps:
            pieces = []
            for i in range(batch):
                text = self._row_text(run, i, with_prompt=False)
                complete = text if not text.endswith("\ufffd") else shown[i]
                pieces.append(complete[len(shown[i]) :])
                shown[i] = complete
            yield pieces[0] if isinstance(input, str) else pieces

    # --- the loop ------------------------------------------------------------------------------
    def _start(
        self,
        input: str | list[str] | Tensor,
        attention_mask: Tensor | None,
        prepend_bos: bool | None,
        padding_side: str | None,
        eos_token_id: int | list[int] | None,
    ) -> _Generation:
        """The left-aligned prompt: real tokens at the right end of each row, padding masked.

        Token ids and masks are read (and checked) as `forward` reads them, so left-padded ids
        without a mask have their leading pads masked here too."""
        if isinstance(input, Tensor) and input.is_floating_point():
            raise ValueError(
                f"generate takes text or token ids, got a float tensor of shape "
                f"{tuple(input.shape)}."
            )
        tokens, given_mask = self._tokens_and_mask(  # type: ignore[attr-defined]
            input, prepend_bos, padding_side, attention_mask
        )
        device = tokens.device
        mask = torch.ones_like(tokens) if given_mask is None else given_mask.long()
        if not bool(mask.any(-1).all()):
            raise ValueError("Every prompt needs at least one real (unmasked) token.")
        pad_id = self._generation_pad_id(eos_token_id)
        # A stable sort puts each row's padding first and keeps its real tokens in order.
        order = torch.sort(mask, dim=1, stable=True).indices
        mask = mask.gather(1, order)
        tokens = tokens.gather(1, order).masked_fill(mask == 0, pad_id)
        batch = tokens.shape[0]
        return _Generation(
            tokens=tokens,
            mask=mask,
            prompt_len=tokens.shape[1],
            finished=torch.zeros(batch, dtype=torch.bool, device=device),
            new_lengths=torch.zeros(batch, dtype=torch.long, device=device),
            pad_id=pad_id,
            strip_bos=isinstance(input, str | list)
            and (self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos),
        )

    def _steps(
        self,
        run: _Generation,
        max_new_tokens: int,
        stop_at_eos: bool,
        eos_token_id: int | list[int] | None,
        do_sample: bool,
        top_k: int | None,
        top_p: float | None,
        temperature: float,
        freq_penalty: float,
        repetition_penalty: float,
        use_past_kv_cache: bool,
        stop_strings: str | list[str] | None,
    ) -> Iterator[Tensor]:
        """Choose and append one token per step, yielding the ``[b]`` new ids. The settings are
        checked first, before the first forward pass."""
        check_sampling_args(
            max_new_tokens,
            top_k,
            top_p,
            temperature,
            freq_penalty,
            repetition_penalty,
            eos_token_id,
            self.cfg.d_vocab,
        )
        stops = self._stop_tokens(stop_at_eos, eos_token_id)
        stop_ids = torch.tensor(stops, dtype=torch.long, device=run.tokens.device)
        strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings or [])
        if strings:
            self._require_tokenizer()
        next_logits = self._next_logits_fn(run, use_past_kv_cache)
        for _ in range(max_new_tokens):
            # [b, d_vocab], scored in float32 as Hugging Face does, where the tokens are (a
            # split model's logits come from its last device)
            logits = next_logits().float().to(run.tokens.device)
            logits = _penalize_repetition(logits, run.tokens, run.mask, repetition_penalty)
            if do_sample:
                if freq_penalty:
                    # sample_logits would count padding too; subtract the masked counts here,
                    # scaled so that after its division by temperature they weigh freq_penalty.
                    scale = freq_penalty * (temperature if temperature > 0 else 1.0)
                    logits = logits - scale * _token_counts(logits, run.tokens, run.mask)
                new = sample_logits(logits, top_k, top_p, temperature)
            else:
                new = logits.argmax(-1)
            new = torch.where(run.finished, run.pad_id, new)  # [b]
            run.new_lengths += (~run.finished).long()
            run.tokens = torch.cat([run.tokens, new[:, None]], dim=1)
            run.mask = torch.cat([run.mask, torch.ones_like(new[:, None])], dim=1)
            if stops:
                run.finished |= torch.isin(new, stop_ids)
            if strings:
                for i in torch.nonzero(~run.finished).flatten().tolist():
                    text = self._row_text(run, i, with_prompt=False)
                    if any(s in text for s in strings):
                        run.finished[i] = True
            yield new
            if bool(run.finished.all()):
                return

    def _next_logits_fn(self, run: _Generation, use_past_kv_cache: bool) -> Any:
        """A function giving the ``[b, d_vocab]`` logits after the sequence in `run`."""

        def full_sequence() -> Tensor:
            return self(run.tokens, attention_mask=run.mask)[:, -1]  # type: ignore[no-any-return]

        if not use_past_kv_cache:
            return full_sequence
        from anatomist.model.kv_cache import KVCache

        split = getattr(self, "output_device", None) is not None
        cache = KVCache.init_cache(  # a split model's layers keep their cache on their device
            self.cfg,
            run.tokens.device,
            run.tokens.shape[0],
            layer_devices=[block.placed_on for block in self.blocks] if split else None,  # type: ignore[attr-defined]
        )
        fed = 0  # how many positions of run.tokens the cache holds

        def incremental() -> Tensor:
            # The first call runs the prompt; later ones only the token chosen last.
            nonlocal fed
            new, mask = run.tokens[:, fed:], run.mask[:, fed:]
            fed = run.tokens.shape[1]
            logits = self(new, past_kv_cache=cache, attention_mask=mask)
            return logits[:, -1]  # type: ignore[no-any-return]

        return incremental

    # --- helpers -------------------------------------------------------------------------------
    def _row_text(self, run: _Generation, row: int, with_prompt: bool) -> str:
        """Row `row` decoded: (prompt and) new tokens up to the one that finished it."""
        tok = self._require_tokenizer()
        new = run.tokens[row, run.prompt_len : run.prompt_len + int(run.new_lengths[row])]
        ids = new.tolist()
        if with_prompt:
            prompt = run.tokens[row, : run.prompt_len][run.mask[row, : run.prompt_len].bool()]
            prompt_ids = prompt.tolist()
            if run.strip_bos and prompt_ids and prompt_ids[0] == tok.bos_token_id:
                prompt_ids = prompt_ids[1:]  # the BOS tokenization put there
            ids = prompt_ids + ids
        return str(tok.decode(ids, clean_up_tokenization_spaces=False))

    def _generation_pad_id(self, eos_token_id: int | list[int] | None) -> int:
        """The id written after a row finishes (and into prompt padding): the tokenizer's pad
        token, else its EOS, else the first `eos_token_id`, else 0."""
        tok = self.tokenizer
        for candidate in (
            None if tok is None else tok.pad_token_id,
            None if tok is None else tok.eos_token_id,
            eos_token_id if not isinstance(eos_token_id, list) else next(iter(eos_token_id), None),
        ):
            if candidate is not None:
                return int(candidate)
        return 0

    def _stop_tokens(self, stop_at_eos: bool, eos_token_id: int | list[int] | None) -> list[int]:
        return stop_token_ids(self.tokenizer, stop_at_eos, eos_token_id)


def _resolve_return_type(return_type: str | None, input: Any) -> str:
    if return_type == "tensor":  # the classic spelling
        return_type = "tokens"
    if return_type not in RETURN_TYPES:
        raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}.")
    if return_type == "input":
        return "str" if isinstance(input, str | list) else "tokens"
    return return_type


def _token_counts(logits: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
    """``[b, d_vocab]``: how often each token occurs among the real tokens of each row."""
    counts = torch.zeros_like(logits)
    return counts.scatter_add_(-1, tokens, mask.to(counts.dtype))


def _penalize_repetition(logits: Tensor, tokens: Tensor, mask: Tensor, penalty: float) -> Tensor:
    """Hugging Face's ``RepetitionPenaltyLogitsProcessor`` (CTRL, Keskar et al. 2019) over the
    real tokens of each row: a seen token's logit is divided by `penalty` when positive and
    multiplied by it when negative."""
    if penalty == 1.0:
        return logits
    seen = _token_counts(logits, tokens, mask) > 0
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def apply_repetition_penalty(logits: Tensor, tokens: Tensor, penalty: float) -> Tensor:
    """`_penalize_repetition` over every token of `tokens` ``[b, p]`` (a new tensor; the
    classic ``_apply_repetition_penalty``)."""
    tokens = tokens.to(logits.device)
    return _penalize_repetition(logits, tokens, torch.ones_like(tokens), penalty)


def stop_token_ids(
    tokenizer: Any, stop_at_eos: bool, eos_token_id: int | list[int] | None
) -> list[int]:
    """The token ids that end a sequence: `eos_token_id` (one or several), else the tokenizer's
    end-of-sequence token; none without `stop_at_eos`."""
    if not stop_at_eos:
        return []
    if eos_token_id is None:
        if tokenizer is None or tokenizer.eos_token_id is None:
            raise StopTokenError(
                "stop_at_eos needs an end-of-sequence token: pass eos_token_id=..., attach "
                "a tokenizer that has one, or set stop_at_eos=False."
            )
        eos_token_id = int(tokenizer.eos_token_id)
    return [eos_token_id] if isinstance(eos_token_id, int) else [int(t) for t in eos_token_id]
