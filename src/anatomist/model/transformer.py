"""`HookedTransformer`: the native decoder-only model with the classic interface."""

from __future__ import annotations

import copy
import operator
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from anatomist.config import ConfigError, TransformerConfig
from anatomist.hooks import HookDisabledError, HookedRootModule, HookPoint
from anatomist.model.attention import causal_mask
from anatomist.model.block import TransformerBlock
from anatomist.model.embed import Embed, Unembed
from anatomist.model.generate import GenerationMixin
from anatomist.model.kv_cache import KVCache
from anatomist.model.norm import make_norm
from anatomist.model.positions import PosEmbed, positions_from_mask
from anatomist.model.tokens import (
    TokenizerMixin,
    check_attention_mask,
    check_token_ids,
    leading_pad_mask,
    load_tokenizer,
    token_batch,
)
from anatomist.model.weights import StackedWeightsMixin
from anatomist.utils import lm_cross_entropy_loss

RETURN_TYPES = ("logits", "loss", "both", None)

# The classic type names of what `forward(return_type="loss")` returns.
SingleLoss = Tensor  # a 0-d tensor: the mean loss
LossPerToken = Tensor  # [batch, pos - 1] with loss_per_token=True
Loss = Tensor  # either of the above


# The classic names of the dtypes `from_pretrained(dtype=...)` accepts as strings.
DTYPE_FROM_STRING = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class Output(NamedTuple):
    """What ``forward(return_type="both")`` returns."""

    logits: Tensor
    loss: Tensor


class HookedTransformer(StackedWeightsMixin, TokenizerMixin, GenerationMixin, HookedRootModule):
    """A decoder-only transformer whose every activation has a named hook point.

    ``HookedTransformer(cfg)`` builds a randomly initialised model (for toy models);
    ``HookedTransformer.from_pretrained(name_or_path)`` loads a checkpoint.
    """

    splittable = True
    # Set when the model is split over devices (`anatomist.model.devices.place`): the map of
    # part -> device, and the device of ln_final/unembed, where the residual stream moves last.
    device_map: dict[str, str] | None = None
    output_device: torch.device | None = None

    def __init__(
        self,
        cfg: TransformerConfig | dict[str, Any],
        tokenizer: Any = None,
        move_to_device: bool = True,
        default_padding_side: str = "right",
        init_weights: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(cfg, str):
            raise TypeError(
                f"HookedTransformer(cfg) takes a config (or a dict of its fields), got the string "
                f"{cfg!r}; load a pretrained model with HookedTransformer.from_pretrained(name)."
            )
        self.cfg = cfg = TransformerConfig.unwrap(cfg)
        _check_supported(cfg)
        if tokenizer is None and cfg.tokenizer_name is not None:
            tokenizer = load_tokenizer(cfg.tokenizer_name, cfg.trust_remote_code)
        self.tokenizer = None
        self.set_tokenizer(tokenizer, default_padding_side)
        _set_vocab_size(cfg, tokenizer)

        self.embed = Embed(cfg)
        self.hook_tokens = HookPoint("use_hook_tokens")  # [b, p] token ids
        self.hook_embed = HookPoint()  # [b, p, d_model]
        if cfg.post_embedding_norm:  # BLOOM; keeps its weights through processing
            self.ln_embed = make_norm(cfg, kind=cfg.normalization_type)
        if cfg.positional_embedding_type in _LEARNED_POSITIONS:
            self.pos_embed = PosEmbed(cfg)
            self.hook_pos_embed = HookPoint()  # [b, p, d_model]
        self.blocks = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        # Post-LN models end on a normalized block output; their checkpoints have no final norm.
        self.ln_final = (
            make_norm(cfg, kind=_final_norm_type(cfg)) if cfg.final_norm else nn.Identity()
        )
        self.unembed = Unembed(cfg)

        self._finish_construction(init_weights and cfg.init_weights, move_to_device)

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, model_name: str | os.PathLike[str], **kwargs: Any
    ) -> HookedTransformer:
        """Load a checkpoint by name, alias, local folder, GGUF file or cached repo id.

        Weight processing follows the classic defaults (fold_ln, center_writing_weights,
        center_unembed, fold_value_biases); see `anatomist.loading.pretrained.load_pretrained`
        for every argument.
        """
        from anatomist.loading.pretrained import load_pretrained

        return load_pretrained(cls, model_name, **kwargs)

    @classmethod
    def from_pretrained_no_processing(
        cls, model_name: str | os.PathLike[str], **kwargs: Any
    ) -> HookedTransformer:
        """`from_pretrained` with every weight-processing step off: the checkpoint as it is."""
        for option in ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"):
            kwargs.setdefault(option, False)
        kwargs.setdefault("refactor_factored_attn_matrices", False)
        return cls.from_pretrained(model_name, **kwargs)

    # --- forward -----------------------------------------------------------------------------
    def forward(
        self,
        input: str | list[str] | Tensor | None = None,
        return_type: str | None = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        start_at_layer: int | None = None,
        tokens: Tensor | None = None,
        shortformer_pos_embed: Tensor | None = None,
        attention_mask: Tensor | None = None,
        stop_at_layer: int | None = None,
        past_kv_cache: Any = None,
    ) -> Any:
        """Run the model.

        `input` is a string, a list of strings (padded, with a mask), token ids ``[b, p]``, or,
        with `start_at_layer`, a residual stream ``[b, p, d_model]``. `attention_mask` ``[b, p]``
        marks real tokens (1) and padding (0) for token or residual input. With `stop_at_layer`
        the residual stream before that block is returned and later blocks do not run.

        Token ids without `attention_mask` are read as the classic library read them: with left
        padding (`padding_side="left"`, or the model's ``cfg.default_padding_side``) each row's
        leading run of pad ids is masked (not a pad id inside the text; and where BOS and pad
        share an id and BOS is prepended, the last leading pad is the BOS and stays); otherwise
        nothing is masked. Right padding needs no mask for the real tokens' outputs (causal
        attention never looks right), but the loss counts trailing pads unless a mask says
        they are padding.

        `start_at_layer` and `stop_at_layer` select ``blocks[start_at_layer:stop_at_layer]``;
        each is an int in ``[-n_layers, n_layers]`` (negative counts from the end) and start may
        not come after stop. Values outside are refused rather than clipped as a slice would.

        Shortformer models (``cfg.positional_embedding_type == "shortformer"``) add their learned
        position embeddings to each attention layer's normalized query and key inputs instead of
        the residual stream. A run from `start_at_layer` computes them from the positions (or
        takes `shortformer_pos_embed` ``[b, p, d_model]``); other runs compute their own.
        """
        if return_type not in RETURN_TYPES:
            raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}.")
        first, last = self._layer_range(start_at_layer, stop_at_layer)
        if past_kv_cache is not None:
            return self._forward_with_cache(
                input if input is not None else tokens,
                past_kv_cache,
                return_type,
                loss_per_token,
                prepend_bos,
                padding_side,
                attention_mask,
                start_at_layer,
                stop_at_layer,
            )
        shortformer = self.cfg.positional_embedding_type == "shortformer"
        if shortformer_pos_embed is not None and not (shortformer and start_at_layer is not None):
            raise ValueError(
                "shortformer_pos_embed is read only by a shortformer model run from "
                "start_at_layer"
                + (
                    "; a run from tokens computes its own (hook it with hook_pos_embed)."
                    if shortformer
                    else f"; this model uses {self.cfg.positional_embedding_type} positions."
                )
            )
        if input is None:
            input = tokens
        if input is None:
            raise ValueError("forward needs an input: text, token ids, or a residual stream.")

        if start_at_layer is None:
            tokens, attention_mask = self._tokens_and_mask(
                input, prepend_bos, padding_side, attention_mask
            )
            residual, positions, pos_embed = self._embed(tokens, attention_mask)
        else:
            residual = self._residual_input(input)
            if attention_mask is not None:
                attention_mask = check_attention_mask(attention_mask, tuple(residual.shape[:2]))
                if attention_mask is not None:
                    attention_mask = attention_mask.to(residual.device)
            positions = positions_from_mask(attention_mask, residual.shape[1])
            positions = positions.to(residual.device)
            pos_embed = None
            if shortformer:
                pos_embed = self._shortformer_pos_embed(shortformer_pos_embed, positions, residual)
            if return_type in ("loss", "both") and stop_at_layer is None:
                tokens = self._loss_tokens(tokens, residual)
        if return_type in ("loss", "both") and stop_at_layer is None and not loss_per_token:
            _check_loss_length(residual.shape[1])
        mask = _block_mask(attention_mask, residual.shape[1], residual.device)

        for block in self.blocks[first:last]:
            residual = block(residual, positions, mask, pos_embed)
        if stop_at_layer is not None:
            return residual

        logits = self._unembed(residual)
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        assert tokens is not None  # _loss_tokens made sure
        loss = self._loss(logits, tokens, attention_mask, loss_per_token)
        if return_type == "loss":
            return loss
        return Output(logits, loss)

    def _unembed(self, residual: Tensor) -> Tensor:
        """Logits from the last residual stream, on the output device of a split model."""
        if self.output_device is not None:
            residual = residual.to(self.output_device)
        return self.unembed(self.ln_final(residual))  # type: ignore[no-any-return]

    @staticmethod
    def _loss(
        logits: Tensor, tokens: Tensor, attention_mask: Tensor | None, per_token: bool
    ) -> Tensor:
        if tokens.device != logits.device:  # a split model: logits on the output device
            tokens = tokens.to(logits.device)
            attention_mask = None if attention_mask is None else attention_mask.to(logits.device)
        return lm_cross_entropy_loss(logits, tokens, attention_mask, per_token=per_token)

    def _loss_tokens(self, tokens: Tensor | None, residual: Tensor) -> Tensor:
        """The ids a run from start_at_layer computes its loss against, checked."""
        if tokens is None:
            raise ValueError(
                "Computing the loss from start_at_layer needs the token ids: pass tokens=... "
                "[batch, pos] as well."
            )
        tokens = token_batch(tokens, "tokens").to(residual.device)
        if tokens.shape != residual.shape[:2]:
            raise ValueError(
                f"tokens must be [batch, pos] of the residual stream {tuple(residual.shape)}, "
                f"got shape {tuple(tokens.shape)}."
            )
        check_token_ids(tokens, self.cfg.d_vocab, "tokens")
        return tokens

    def _forward_with_cache(
        self,
        input: str | list[str] | Tensor | None,
        cache: KVCache,
        return_type: str | None,
        loss_per_token: bool,
        prepend_bos: bool | None,
        padding_side: str | None,
        attention_mask: Tensor | None,
        start_at_layer: int | None,
        stop_at_layer: int | None,
    ) -> Any:
        """An incremental run: the new tokens attend to the cached keys and values and to
        themselves, and extend the cache (see `anatomist.model.kv_cache`)."""
        if not isinstance(cache, KVCache):
            raise TypeError(
                f"past_kv_cache must be a KVCache (KVCache.init_cache(cfg, device, batch_size)), "
                f"got {type(cache).__name__}."
            )
        if start_at_layer is not None or stop_at_layer is not None:
            raise NotImplementedError(
                "past_kv_cache runs every layer from the tokens; start_at_layer and "
                "stop_at_layer are not supported with a cache."
            )
        if len(cache.entries) != self.cfg.n_layers:
            raise ValueError(
                f"The cache has {len(cache.entries)} layers, this model {self.cfg.n_layers}."
            )
        if input is None:
            raise ValueError("forward needs an input: text or token ids.")
        if isinstance(input, Tensor) and input.is_floating_point():
            raise ValueError("With past_kv_cache, input must be token ids [batch, pos].")
        # Leading pads are padding only at the start of a sequence; after that a pad id among
        # the new tokens is text (a generated EOS), unless the mask says otherwise.
        tokens, attention_mask = self._tokens_and_mask(
            input,
            prepend_bos,
            padding_side,
            attention_mask,
            derive_padding=cache.length == 0,
            mask_note="; with past_kv_cache it covers the new tokens only",
        )
        device = tokens.device
        b, new = tokens.shape
        if return_type in ("loss", "both") and not loss_per_token:
            _check_loss_length(new)
        if b != cache.batch_size:
            raise ValueError(
                f"The cache holds {cache.batch_size} rows but the input has {b}; build the cache "
                f"with init_cache(cfg, device, batch_size={b})."
            )
        if attention_mask is None:  # no padding among the new tokens
            attention_mask = torch.ones(b, new, dtype=torch.long, device=device)
        cached = cache.length
        residual, positions, key_positions, full_mask, pos_embed = self._embed_after_cache(
            tokens, attention_mask, cache
        )
        mask = _block_mask(full_mask, cached + new, device)
        if mask is not None:
            mask = mask[:, :, cached:]
        elif new > 1 and cached > 0:  # the queries are the last `new` of `total` positions
            mask = causal_mask(new, cached + new, device)
        else:
            mask = None
        for block, entry in zip(self.blocks, cache.entries, strict=True):
            residual = block(residual, positions, mask, pos_embed, entry, key_positions)

        logits = self._unembed(residual)
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = self._loss(logits, tokens, attention_mask, loss_per_token)
        if return_type == "loss":
            return loss
        return Output(logits, loss)

    def _embed_after_cache(
        self, tokens: Tensor, attention_mask: Tensor, cache: KVCache
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """The new tokens' embeddings after the cached ones: the residual stream, their
        positions ``[b, new]``, every key's position ``[b, cached + new]``, the mask of all of
        them (None: no padding; appended to the cache unless it is frozen) and the shortformer
        position embeddings (None unless the model is a shortformer)."""
        device = tokens.device
        b, new = tokens.shape
        cached = cache.length
        total = cached + new
        if self.cfg.positional_embedding_type in _LEARNED_POSITIONS and total > self.cfg.n_ctx:
            raise ValueError(
                f"The cache holds {cached} positions and the input adds {new}: {total} exceeds "
                f"this model's learned positions (n_ctx={self.cfg.n_ctx})."
            )
        full_mask = _normalize_mask(cache.append_attention_mask(attention_mask), device)
        key_positions = positions_from_mask(full_mask, total).to(device)  # [b or 1, k]
        positions = key_positions[:, cached:].expand(b, -1)  # [b, new]
        residual = self.hook_embed(self.embed(self._hooked_tokens(tokens)))
        if self.cfg.post_embedding_norm:
            residual = self.ln_embed(residual)
        pos_embed = None
        if self.cfg.positional_embedding_type in _LEARNED_POSITIONS:
            pos_embed = self.hook_pos_embed(self.pos_embed(positions))
            if self.cfg.positional_embedding_type == "standard":
                residual, pos_embed = residual + pos_embed, None
        return residual, positions, key_positions.expand(b, -1), full_mask, pos_embed

    # --- the classic pieces of forward ------------------------------------------------------
    def input_to_embed(
        self,
        input: str | list[str] | Tensor,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        attention_mask: Tensor | None = None,
        past_kv_cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """``(residual, tokens, shortformer_pos_embed, attention_mask)``: what the first block
        reads, as `forward` computes it (hooks on the embeddings fire).

        ``forward(residual, start_at_layer=0, attention_mask=attention_mask,
        shortformer_pos_embed=shortformer_pos_embed, tokens=tokens)`` then gives the model's
        output. `attention_mask` is None when nothing is padded. With `past_kv_cache` the
        positions continue after the cached tokens, the returned mask covers cached and new
        tokens, and it is appended to the cache (unless the cache is frozen), as in the classic
        library.
        """
        if past_kv_cache is None:
            tokens, mask = self._tokens_and_mask(input, prepend_bos, padding_side, attention_mask)
            residual, _, pos_embed = self._embed(tokens, mask)
            return residual, tokens, pos_embed, mask
        tokens, mask = self._tokens_and_mask(
            input,
            prepend_bos,
            padding_side,
            attention_mask,
            derive_padding=past_kv_cache.length == 0,
            mask_note="; with past_kv_cache it covers the new tokens only",
        )
        self.get_pos_offset(past_kv_cache, tokens.shape[0])  # checks the batch size
        if mask is None:
            mask = torch.ones_like(tokens)
        cached = past_kv_cache.length
        residual, _, _, full_mask, pos_embed = self._embed_after_cache(tokens, mask, past_kv_cache)
        if full_mask is None:  # no padding: the classic returned the all-ones mask
            full_mask = torch.ones(tokens.shape[0], cached + tokens.shape[1], dtype=torch.long)
        return residual, tokens, pos_embed, full_mask.to(tokens.device)

    def get_pos_offset(self, past_kv_cache: KVCache | None, batch_size: int) -> int:
        """How many positions come before new tokens: the cache's length (0 without one)."""
        if past_kv_cache is None:
            return 0
        if past_kv_cache.batch_size != batch_size:
            raise ValueError(
                f"The cache holds {past_kv_cache.batch_size} rows but the input has "
                f"{batch_size}; build the cache with init_cache(cfg, device, "
                f"batch_size={batch_size})."
            )
        return past_kv_cache.length

    def get_residual(
        self,
        embed: Tensor,
        pos_offset: int,
        prepend_bos: bool | None = None,
        attention_mask: Tensor | None = None,
        tokens: Tensor | None = None,
        return_shortformer_pos_embed: bool = True,
        device: torch.device | str | None = None,
    ) -> Any:
        """The residual stream of token embeddings `embed` ``[b, p, d_model]`` (``hook_embed``'s
        output) at positions from `pos_offset`: plus the learned position embeddings
        (``hook_pos_embed`` fires), after the embedding norm where the model has one.

        `attention_mask` ``[b, p]`` (or ``[b, pos_offset + p]``, the cached tokens' mask first)
        makes each row's positions count its real tokens only. Returns ``(residual,
        shortformer_pos_embed)`` (the latter None unless the model is a shortformer), or only the
        residual with ``return_shortformer_pos_embed=False``. `prepend_bos`, `tokens` and `device`
        are accepted for the classic signature; nothing here depends on them."""
        b, p = embed.shape[:2]
        positions = self._offset_positions(attention_mask, pos_offset, p).to(embed.device)
        residual = self.ln_embed(embed) if self.cfg.post_embedding_norm else embed
        pos_embed = None
        if self.cfg.positional_embedding_type in _LEARNED_POSITIONS:
            if pos_offset + p > self.cfg.n_ctx:
                raise ValueError(
                    f"Positions {pos_offset} .. {pos_offset + p - 1} go past this model's learned "
                    f"positions (n_ctx={self.cfg.n_ctx})."
                )
            pos_embed = self.hook_pos_embed(self.pos_embed(positions.expand(b, -1)))
            if self.cfg.positional_embedding_type == "standard":
                residual, pos_embed = residual + pos_embed, None
        return (residual, pos_embed) if return_shortformer_pos_embed else residual

    @staticmethod
    def _offset_positions(attention_mask: Tensor | None, offset: int, length: int) -> Tensor:
        """Positions ``[b or 1, length]`` of tokens after `offset` earlier ones."""
        if attention_mask is None:
            return torch.arange(offset, offset + length)[None]
        if attention_mask.dim() != 2 or attention_mask.shape[1] not in (length, offset + length):
            raise ValueError(
                f"attention_mask must be [batch, {length}] (the new tokens) or [batch, "
                f"{offset + length}] (cached and new), got shape {tuple(attention_mask.shape)}."
            )
        if attention_mask.shape[1] == length:
            return positions_from_mask(attention_mask, length) + offset
        return positions_from_mask(attention_mask, offset + length)[:, offset:]

    def check_hooks_to_add(
        self,
        hook_point: HookPoint,
        hook_point_name: str,
        hook: Any,
        dir: str = "fwd",
        is_permanent: bool = False,
        prepend: bool = False,
    ) -> None:
        """Refuse a hook on an opt-in hook point that is off (it would never fire)."""
        if not self._opt_in_enabled(hook_point):
            raise HookDisabledError(self._disabled_message(hook_point))

    def _tokens_and_mask(
        self,
        input: str | list[str] | Tensor,
        prepend_bos: bool | None,
        padding_side: str | None,
        attention_mask: Tensor | None,
        derive_padding: bool = True,
        mask_note: str = "",
    ) -> tuple[Tensor, Tensor | None]:
        """Checked token ids ``[b, p]`` on the model's device and the mask (None: no padding).

        Ids outside the vocabulary, malformed shapes and masks other than 0/1 of the tokens'
        shape are refused here, before anything runs. Left-padded ids without a mask get the
        mask of their leading pads (`derive_padding`)."""
        device = self.embed.W_E.device
        if isinstance(input, str | list):
            if attention_mask is not None:
                raise ValueError("attention_mask goes with token ids; text input builds its own.")
            tokens, attention_mask = self.tokenize_with_mask(input, prepend_bos, padding_side)
            mask = None if attention_mask is None else attention_mask.to(device)
            return tokens.to(device), mask
        if not isinstance(input, Tensor):
            raise TypeError(
                f"input must be text, a list of texts or token ids [batch, pos], got "
                f"{type(input).__name__}."
            )
        if input.is_floating_point():
            raise ValueError(
                f"Got a float tensor of shape {tuple(input.shape)} as input; pass token ids "
                "[batch, pos], or a residual stream [batch, pos, d_model] together with "
                "start_at_layer."
            )
        tokens = token_batch(input, "input").to(device)
        check_token_ids(tokens, self.cfg.d_vocab, "input")
        if attention_mask is not None:
            mask = check_attention_mask(attention_mask, tuple(tokens.shape), note=mask_note)
            mask = None if mask is None else mask.to(device)
        elif derive_padding and self._padding_side(padding_side) == "left":
            mask = self._leading_padding(tokens, prepend_bos, padding_side)
        else:
            mask = None
        return tokens, mask

    def _leading_padding(
        self, tokens: Tensor, prepend_bos: bool | None, padding_side: str | None
    ) -> Tensor | None:
        """The mask of left-padded ids given without one (None when no row is padded)."""
        if self.tokenizer is None:
            if padding_side is None:
                return None  # the model's default side, but no pad id to look for: no padding
            raise ValueError(
                "padding_side='left' with token ids and no attention_mask: the padding is found "
                "by its pad id, and this model has no tokenizer to say which id that is. Pass "
                "attention_mask (1 = real token, 0 = padding)."
            )
        pad = self._pad_token_id
        prepend = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        keep_bos = bool(prepend) and self.tokenizer.bos_token_id == pad
        mask = leading_pad_mask(tokens, pad, keep_last_pad=keep_bos)
        return None if bool(mask.all()) else mask

    def _residual_input(self, input: Any) -> Tensor:
        """The residual stream a run from start_at_layer reads, checked."""
        if not isinstance(input, Tensor) or input.dim() != 3 or not input.is_floating_point():
            got = (
                f"{input.dtype} tensor of shape {tuple(input.shape)}"
                if isinstance(input, Tensor)
                else type(input).__name__
            )
            raise ValueError(
                f"With start_at_layer, input must be a float residual stream [batch, pos, "
                f"d_model={self.cfg.d_model}], got a {got}."
            )
        if input.shape[-1] != self.cfg.d_model or input.shape[0] == 0 or input.shape[1] == 0:
            raise ValueError(
                f"With start_at_layer, input must be a residual stream [batch, pos, "
                f"d_model={self.cfg.d_model}] with at least one row and position, got shape "
                f"{tuple(input.shape)}."
            )
        return input

    def _layer_range(self, start_at_layer: Any, stop_at_layer: Any) -> tuple[int, int]:
        """``(first, last)``: the blocks ``blocks[first:last]`` a run goes through.

        The classic library sliced ``blocks[start_at_layer:stop_at_layer]``, so 99 or -5 in a
        4-layer model silently ran some other range. Here each bound is an int in
        ``[-n_layers, n_layers]`` (negative counts from the end, n_layers is after the last
        block) and start may not come after stop; anything else is refused."""
        n = self.cfg.n_layers
        first = 0 if start_at_layer is None else _layer_index(start_at_layer, n, "start_at_layer")
        last = n if stop_at_layer is None else _layer_index(stop_at_layer, n, "stop_at_layer")
        if first > last:
            raise ValueError(
                f"start_at_layer={start_at_layer} (block {first}) comes after "
                f"stop_at_layer={stop_at_layer} (block {last}), so no block would run; "
                f"start must be at or before stop (n_layers={n})."
            )
        return first, last

    def _hooked_tokens(self, tokens: Tensor) -> Tensor:
        """`hook_tokens` (opt-in), and a check of ids a hook put there."""
        if not self.cfg.use_hook_tokens:
            return tokens
        hooked = self.hook_tokens(tokens)
        if hooked is not tokens:
            check_token_ids(hooked, self.cfg.d_vocab, "hook_tokens' replacement")
        return hooked  # type: ignore[no-any-return]

    def _embed(
        self, tokens: Tensor, attention_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Token (and learned position) embeddings, the position id of every token, and the
        shortformer position embeddings (None unless the model is a shortformer)."""
        positions = positions_from_mask(attention_mask, tokens.shape[1]).to(tokens.device)
        positions = positions.expand(tokens.shape[0], -1)  # [b, p]: hooks see full batches
        residual = self.hook_embed(self.embed(self._hooked_tokens(tokens)))
        if self.cfg.post_embedding_norm:
            residual = self.ln_embed(residual)
        if self.cfg.positional_embedding_type not in _LEARNED_POSITIONS:
            return residual, positions, None
        pos_embed = self._learned_positions(positions)
        if self.cfg.positional_embedding_type == "shortformer":
            return residual, positions, pos_embed  # read by attention, not added to the stream
        return residual + pos_embed, positions, None

    def _learned_positions(self, positions: Tensor) -> Tensor:
        if positions.shape[1] > self.cfg.n_ctx:
            raise ValueError(
                f"Input has {positions.shape[1]} tokens but this model's learned positions end "
                f"at n_ctx={self.cfg.n_ctx}; shorten the input."
            )
        return self.hook_pos_embed(self.pos_embed(positions))  # [b, p, d_model]

    def _shortformer_pos_embed(
        self, given: Tensor | None, positions: Tensor, residual: Tensor
    ) -> Tensor:
        """A run from start_at_layer: the given shortformer embeddings, or those of the positions
        (the classic library silently ran without positions when none were passed)."""
        if given is None:
            return self._learned_positions(positions.expand(residual.shape[0], -1))
        if given.dim() != 3 or given.shape[1:] != residual.shape[1:]:
            raise ValueError(
                f"shortformer_pos_embed must be [batch, pos, d_model] like the residual stream "
                f"{tuple(residual.shape)}, got {tuple(given.shape)}."
            )
        return given.to(residual.device)

    def loss_fn(
        self,
        logits: Tensor,
        tokens: Tensor,
        attention_mask: Tensor | None = None,
        per_token: bool = False,
    ) -> Tensor:
        return lm_cross_entropy_loss(logits, tokens, attention_mask, per_token)

    # --- opt-in hooks ------------------------------------------------------------------------
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Turn on ``blocks.{i}.attn.hook_result`` (per-head outputs, [b, p, h, d_model])."""
        self.cfg.use_attn_result = use_attn_result

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Turn on ``blocks.{i}.hook_{q,k,v}_input`` (a separate input per head)."""
        self.cfg.use_split_qkv_input = use_split_qkv_input

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """Turn on ``blocks.{i}.hook_attn_in`` (one per-head input shared by q, k and v)."""
        if use_attn_in and self.cfg.is_grouped_query:
            raise ValueError(
                "use_attn_in is undefined for grouped-query attention; use "
                "set_use_split_qkv_input(True)."
            )
        self.cfg.use_attn_in = use_attn_in

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Turn on ``blocks.{i}.hook_mlp_in``."""
        if use_hook_mlp_in and self.cfg.attn_only:
            raise ValueError("This model is attention-only: it has no MLP input to hook.")
        self.cfg.use_hook_mlp_in = use_hook_mlp_in

    def set_use_hook_tokens(self, use_hook_tokens: bool) -> None:
        """Turn on ``hook_tokens`` (the input ids)."""
        self.cfg.use_hook_tokens = use_hook_tokens

    def set_ungroup_grouped_query_attention(self, ungroup_grouped_query_attention: bool) -> None:
        """Classic: give hook_k/hook_v one head per query head. Only models without grouped
        keys and values (where it changes nothing) can turn it on here."""
        if ungroup_grouped_query_attention and self.cfg.is_grouped_query:
            raise NotImplementedError(_UNGROUP_MESSAGE)
        self.cfg.ungroup_grouped_query_attention = ungroup_grouped_query_attention

    # --- weight views (stacked ones: StackedWeightsMixin) -----------------------------------
    @property
    def W_E(self) -> Tensor:  # [d_vocab, d_embed or d_model], the parameter itself
        return self.embed.W_E

    @property
    def W_U(self) -> Tensor:  # [d_embed or d_model, d_vocab], the parameter itself
        return self.unembed.W_U

    @property
    def b_U(self) -> Tensor:  # [d_vocab], the parameter itself
        return self.unembed.b_U

    @property
    def W_pos(self) -> Tensor:  # [n_ctx, d_model], the parameter itself
        if self.cfg.positional_embedding_type not in _LEARNED_POSITIONS:
            raise AttributeError(
                f"This model uses {self.cfg.positional_embedding_type} positions; "
                "it has no learned W_pos."
            )
        return self.pos_embed.W_pos

    @property
    def W_E_pos(self) -> Tensor:
        """Token and position embeddings concatenated, [d_vocab + n_ctx, d_model] (tokens as
        written to the residual stream, i.e. through W_proj_in where cfg.d_embed is set).
        A concatenation is a copy: editing it does not edit the model."""
        return torch.cat([self.embed.W_E_residual, self.W_pos], dim=0)

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Tensor:
        """The constant the layers before `layer` add to the residual stream, ``[d_model]``.

        The sum of each attention layer's ``b_O`` and each MLP's ``b_out`` over layers
        ``0 .. layer - 1`` (`layer` in ``[0, n_layers]``); with `mlp_input`, also layer
        `layer`'s ``b_O``, which the MLP of that layer reads (not in parallel blocks, whose MLP
        reads the block's input). `include_mlp_biases=False` leaves out the MLPs' biases (to
        pair with attention outputs split into heads and MLP outputs kept whole).

        Where a norm follows a sublayer's output (``cfg.post_norm_type``, Gemma 2), the constant
        that sublayer writes is that norm's bias (none for RMSNorm), not ``b_O``/``b_out``.
        Mixture-of-experts layers count only when their experts have no output biases (a
        token's experts vary, so their biases are not a constant).
        """
        cfg = self.cfg
        if not 0 <= layer <= cfg.n_layers:
            raise ValueError(f"layer must be in [0, n_layers={cfg.n_layers}], got {layer}.")
        if mlp_input and layer == cfg.n_layers:
            raise ValueError(
                "mlp_input=True needs a layer below n_layers: there is no MLP after the last."
            )
        if cfg.post_layer_norm:
            raise ValueError(
                "In Post-LN blocks (cfg.post_layer_norm) the residual stream is normalized after "
                "every sublayer, so the layers' biases do not accumulate in it."
            )
        bias = torch.zeros_like(self.blocks[0].attn.b_O)  # [d_model]
        for block in self.blocks[:layer]:
            bias = bias + self._written_bias(block, "attn")
            if include_mlp_biases and not cfg.attn_only:
                bias = bias + self._written_bias(block, "mlp")
        if mlp_input and not cfg.parallel_attn_mlp:
            bias = bias + self._written_bias(self.blocks[layer], "attn")
        return bias

    def _written_bias(self, block: Any, sublayer: str) -> Tensor:
        """The constant a block's attention or MLP adds to the residual stream."""
        if self.cfg.post_norm_type is not None:
            post_norm = block.ln1_post if sublayer == "attn" else block.ln2_post
            b = getattr(post_norm, "b", None)
            return b if b is not None else torch.zeros_like(block.attn.b_O)
        if sublayer == "attn":
            return block.attn.b_O  # type: ignore[no-any-return]
        if not self.cfg.is_moe_layer(block.layer_idx):
            return block.mlp.b_out  # type: ignore[no-any-return]
        moe = block.mlp
        experts = [*moe.experts, *([moe.shared_expert] if moe.shared_expert is not None else [])]
        if any(bool(expert.b_out.any()) for expert in experts):
            raise ValueError(
                f"Layer {block.layer_idx} is a mixture of experts whose experts have output "
                "biases: which experts a token uses varies, so their biases are not a constant. "
                "Pass include_mlp_biases=False, or read the MLP outputs from the cache."
            )
        return torch.zeros_like(block.attn.b_O)

    def all_composition_scores(self, mode: str) -> Tensor:
        """Composition scores of every earlier head into every later head (Elhage et al. 2021),
        ``[n_layers, n_heads, n_layers, n_heads]``: entry ``[l1, h1, l2, h2]`` is
        ``||OV[l1, h1] @ M[l2, h2]||_F / (||OV[l1, h1]||_F ||M[l2, h2]||_F)`` with ``M`` = ``QK``
        (mode "Q": the earlier head writes what the later head's queries read), ``QK^T`` ("K":
        its keys) or ``OV`` ("V": its values). Zero unless ``l1 < l2``."""
        from anatomist.utils import composition_scores

        left = self.OV
        if mode == "Q":
            right = self.QK
        elif mode == "K":
            right = self.QK.T
        elif mode == "V":
            right = self.OV
        else:
            raise ValueError(f"mode must be 'Q', 'K' or 'V', got {mode!r}.")
        scores = composition_scores(left, right, broadcast_dims=True)
        layers = torch.arange(self.cfg.n_layers, device=scores.device)
        earlier = layers[:, None, None, None] < layers[None, None, :, None]
        return torch.where(earlier, scores, torch.zeros_like(scores))

    def tokens_to_residual_directions(self, tokens: str | int | Tensor) -> Tensor:
        """Unembedding directions ``W_U[:, token]``: [d_model] for one token, [..., d_model] else.

        With cfg.d_embed (embeddings projected out of d_model) they are ``W_proj_out @ W_U[:, t]``,
        the directions in the residual stream."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        index = tokens if isinstance(tokens, int) else torch.as_tensor(tokens)
        if isinstance(index, int) or index.numel():  # W_U[:, -1] would be the last token's
            check_token_ids(torch.as_tensor(index), self.cfg.d_vocab, "tokens")
        directions = self.W_U[:, index]  # [d_embed or d_model, ...]
        if self.cfg.d_embed is not None:
            directions = torch.tensordot(self.unembed.W_proj_out, directions, dims=1)
        return directions if isinstance(tokens, int) else directions.movedim(0, -1)

    # --- weight processing -------------------------------------------------------------------
    def process_weights_(
        self,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        fold_value_biases: bool = True,
        refactor_factored_attn_matrices: bool = False,
    ) -> None:
        """Apply the classic weight processing in place (see `anatomist.loading.processing`)."""
        from anatomist.loading import processing

        processing.process_weights(
            self,
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
        )

    def fold_layer_norm(
        self,
        state_dict: dict[str, Tensor] | None = None,
        fold_biases: bool = True,
        center_weights: bool = True,
    ) -> dict[str, Tensor] | None:
        """Fold each norm's weights (and biases) into the layer that reads it, in place; given a
        `state_dict` (the classic form), process that instead and return it (the model is left
        as it is)."""
        from anatomist.loading import processing

        return self._process(
            state_dict,
            lambda m: processing.fold_layer_norm(
                m, fold_biases=fold_biases, center_weights=center_weights
            ),
        )

    def center_writing_weights(
        self, state_dict: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor] | None:
        """Center what each layer writes to the residual stream (in place, or on `state_dict`:
        see `fold_layer_norm`)."""
        from anatomist.loading import processing

        return self._process(state_dict, processing.center_writing_weights)

    def center_unembed(
        self, state_dict: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor] | None:
        """Center the unembedding's logits (in place, or on `state_dict`: see `fold_layer_norm`)."""
        from anatomist.loading import processing

        return self._process(state_dict, processing.center_unembed)

    def fold_value_biases(
        self, state_dict: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor] | None:
        """Move b_V into b_O (in place, or on `state_dict`: see `fold_layer_norm`)."""
        from anatomist.loading import processing

        return self._process(state_dict, processing.fold_value_biases)

    def refactor_factored_attn_matrices(
        self, state_dict: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor] | None:
        """Refactor QK and OV by their SVDs (in place, or on `state_dict`: see
        `fold_layer_norm`)."""
        from anatomist.loading import processing

        return self._process(state_dict, processing.refactor_factored_attn_matrices)

    def _process(
        self, state_dict: dict[str, Tensor] | None, step: Callable[[HookedTransformer], None]
    ) -> dict[str, Tensor] | None:
        """Run a processing step on the model (None), or on a copy holding `state_dict` and
        return the copy's state dict, as the classic methods did."""
        if state_dict is None:
            step(self)
            return None
        model = copy.deepcopy(self)
        model.load_state_dict(state_dict)
        step(model)
        return model.state_dict()  # type: ignore[no-any-return]

    # --- misc --------------------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return self.cfg.n_params

    def set_layer_norm_type(self, normalization_type: str | None) -> None:
        """Swap every norm for the given type (used after folding), keeping hook names."""
        self.cfg.normalization_type = normalization_type
        for block in self.blocks if self.cfg.pre_norm else ():
            device = next(block.parameters()).device  # its own: a split model's blocks differ
            block.ln1 = make_norm(self.cfg).to(device)
            if not self.cfg.attn_only:
                block.ln2 = make_norm(self.cfg).to(device)
        if self.cfg.final_norm:
            final = make_norm(self.cfg, kind=_final_norm_type(self.cfg))
            self.ln_final = final.to(next(self.unembed.parameters()).device)
        self.setup()


_UNGROUP_MESSAGE = (
    "ungroup_grouped_query_attention is not supported: hook_k and hook_v hold the model's "
    "n_key_value_heads heads. Index the group of query head h as h // (n_heads // "
    "n_key_value_heads); model.W_K and model.W_V give the weights repeated per query head."
)


def _check_supported(cfg: TransformerConfig) -> None:
    """Classic config options that this model does not implement, refused by name."""
    if cfg.load_in_4bit:
        raise NotImplementedError("load_in_4bit is not supported; load in a float dtype.")
    if cfg.ungroup_grouped_query_attention and cfg.is_grouped_query:
        raise NotImplementedError(_UNGROUP_MESSAGE)


def _set_vocab_size(cfg: TransformerConfig, tokenizer: Any) -> None:
    """``d_vocab = -1`` (the classic default) takes the size from the tokenizer, as the classic
    library did; without a tokenizer there is nothing to take it from."""
    if cfg.d_vocab != -1:
        return
    if tokenizer is None:
        raise ConfigError(
            "d_vocab is -1 (not set) and there is no tokenizer to take the vocabulary size from: "
            "pass d_vocab=... in the config, or a tokenizer.",
            field="d_vocab",
            value=-1,
        )
    cfg.d_vocab = max(tokenizer.get_vocab().values()) + 1
    if cfg.d_vocab_out == -1:
        cfg.d_vocab_out = cfg.d_vocab


# Position schemes with a learned table W_pos (hook_pos_embed): added to the residual stream, or
# (shortformer) to the normalized query and key inputs of every attention layer.
_LEARNED_POSITIONS = ("standard", "shortformer")


def _final_norm_type(cfg: TransformerConfig) -> str | None:
    """ln_final's type: the blocks' type, or its RMS counterpart with cfg.final_rms (old SoLU
    models end on an RMSNorm although their blocks use LayerNorm)."""
    if cfg.final_rms and cfg.normalization_type in ("LN", "LNPre"):
        return "RMS" if cfg.normalization_type == "LN" else "RMSPre"
    return cfg.normalization_type


def _check_loss_length(length: int) -> None:
    """A mean loss over one position would be the mean of no predictions: NaN."""
    if length < 2:
        raise ValueError(
            f"The loss needs at least two positions (each predicts the next); the input has "
            f"{length}. Pass a longer input, or loss_per_token=True for the per-token losses "
            "[batch, pos - 1]."
        )


def _layer_index(value: Any, n_layers: int, name: str) -> int:
    """`value` as a block index in ``[0, n_layers]``, from an int in ``[-n_layers, n_layers]``."""
    try:
        index = operator.index(value)
    except TypeError:
        index = None
    if index is None or isinstance(value, bool) or not -n_layers <= index <= n_layers:
        raise ValueError(
            f"{name} must be an int in [-{n_layers}, {n_layers}] (n_layers={n_layers}; negative "
            f"counts from the end, {n_layers} is after the last block), got {value!r}."
        )
    return index + n_layers if index < 0 else index


def _normalize_mask(mask: Tensor | None, device: torch.device | None = None) -> Tensor | None:
    """None for no padding; otherwise a long ``[b, p]`` mask on `device`."""
    if mask is None:
        return None
    if mask.dim() != 2:
        raise ValueError(f"attention_mask must be [batch, pos], got shape {tuple(mask.shape)}.")
    mask = mask.to(device) if device is not None else mask
    return None if bool(mask.all()) else mask.long()


def _block_mask(attention_mask: Tensor | None, length: int, device: torch.device) -> Tensor | None:
    """Boolean ``[b, 1, q, k]`` attention mask (causal and padding), or None for plain causal."""
    if attention_mask is None:
        return None
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
    # A padding query with no real key to its left would get an all-masked row (NaN in SDPA);
    # let it see everything instead: its output is never read by a real token.
    return mask | ~mask.any(-1, keepdim=True)
