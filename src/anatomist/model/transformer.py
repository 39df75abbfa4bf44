"""`HookedTransformer`: the native decoder-only model with the classic interface."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from anatomist.config import TransformerConfig
from anatomist.hooks import HookedRootModule, HookPoint
from anatomist.model.attention import causal_mask
from anatomist.model.block import TransformerBlock
from anatomist.model.embed import Embed, Unembed
from anatomist.model.generate import GenerationMixin
from anatomist.model.kv_cache import KVCache
from anatomist.model.norm import make_norm
from anatomist.model.positions import PosEmbed, positions_from_mask
from anatomist.model.tokens import TokenizerMixin
from anatomist.model.weights import StackedWeightsMixin
from anatomist.utils import lm_cross_entropy_loss

RETURN_TYPES = ("logits", "loss", "both", None)


class Output(NamedTuple):
    """What ``forward(return_type="both")`` returns."""

    logits: Tensor
    loss: Tensor


class HookedTransformer(StackedWeightsMixin, TokenizerMixin, GenerationMixin, HookedRootModule):
    """A decoder-only transformer whose every activation has a named hook point.

    ``HookedTransformer(cfg)`` builds a randomly initialised model (for toy models);
    ``HookedTransformer.from_pretrained(name_or_path)`` loads a checkpoint.
    """

    def __init__(
        self,
        cfg: TransformerConfig | dict[str, Any],
        tokenizer: Any = None,
        move_to_device: bool = True,
        default_padding_side: str = "right",
        init_weights: bool = True,
    ) -> None:
        super().__init__()
        self.cfg = cfg = TransformerConfig.unwrap(cfg)
        self.tokenizer = None
        self.set_tokenizer(tokenizer, default_padding_side)

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

        self._finish_construction(init_weights, move_to_device)

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

        Shortformer models (``cfg.positional_embedding_type == "shortformer"``) add their learned
        position embeddings to each attention layer's normalized query and key inputs instead of
        the residual stream. A run from `start_at_layer` computes them from the positions (or
        takes `shortformer_pos_embed` ``[b, p, d_model]``); other runs compute their own.
        """
        if return_type not in RETURN_TYPES:
            raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}.")
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
            start_at_layer = 0
        else:
            if not isinstance(input, Tensor) or input.dim() != 3:
                raise ValueError(
                    "With start_at_layer, input must be a residual stream [batch, pos, d_model]."
                )
            residual = input
            attention_mask = _normalize_mask(attention_mask)
            positions = positions_from_mask(attention_mask, residual.shape[1])
            positions = positions.to(residual.device)
            pos_embed = None
            if shortformer:
                pos_embed = self._shortformer_pos_embed(shortformer_pos_embed, positions, residual)
        mask = _block_mask(attention_mask, residual.shape[1], residual.device)

        for block in self.blocks[start_at_layer:stop_at_layer]:
            residual = block(residual, positions, mask, pos_embed)
        if stop_at_layer is not None:
            return residual

        logits = self.unembed(self.ln_final(residual))
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        if tokens is None:
            raise ValueError("Computing the loss needs the tokens: pass tokens=... as well.")
        loss = lm_cross_entropy_loss(logits, tokens, attention_mask, per_token=loss_per_token)
        if return_type == "loss":
            return loss
        return Output(logits, loss)

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
        given = attention_mask
        tokens, attention_mask = self._tokens_and_mask(
            input, prepend_bos, padding_side, attention_mask
        )
        device = tokens.device
        b, new = tokens.shape
        if new == 0:
            raise ValueError("An incremental run needs at least one new token.")
        if b != cache.batch_size:
            raise ValueError(
                f"The cache holds {cache.batch_size} rows but the input has {b}; build the cache "
                f"with init_cache(cfg, device, batch_size={b})."
            )
        if given is not None and given.shape != tokens.shape:
            raise ValueError(
                f"With past_kv_cache, attention_mask covers the new tokens only: expected shape "
                f"{tuple(tokens.shape)}, got {tuple(given.shape)}."
            )
        if attention_mask is None:  # no padding among the new tokens
            attention_mask = torch.ones(b, new, dtype=torch.long, device=device)
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
        if self.cfg.use_hook_tokens:
            tokens = self.hook_tokens(tokens)
        residual = self.hook_embed(self.embed(tokens))
        if self.cfg.post_embedding_norm:
            residual = self.ln_embed(residual)
        pos_embed = None
        if self.cfg.positional_embedding_type in _LEARNED_POSITIONS:
            pos_embed = self.hook_pos_embed(self.pos_embed(positions))
            if self.cfg.positional_embedding_type == "standard":
                residual, pos_embed = residual + pos_embed, None

        mask = _block_mask(full_mask, total, device)
        if mask is not None:
            mask = mask[:, :, cached:]
        elif new > 1 and cached > 0:  # the queries are the last `new` of `total` positions
            mask = causal_mask(new, total, device)
        else:
            mask = None
        key_positions = key_positions.expand(b, -1)
        for block, entry in zip(self.blocks, cache.entries, strict=True):
            residual = block(residual, positions, mask, pos_embed, entry, key_positions)

        logits = self.unembed(self.ln_final(residual))
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = lm_cross_entropy_loss(logits, tokens, attention_mask, per_token=loss_per_token)
        if return_type == "loss":
            return loss
        return Output(logits, loss)

    def _tokens_and_mask(
        self,
        input: str | list[str] | Tensor,
        prepend_bos: bool | None,
        padding_side: str | None,
        attention_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor | None]:
        if isinstance(input, str | list):
            if attention_mask is not None:
                raise ValueError("attention_mask goes with token ids; text input builds its own.")
            tokens, attention_mask = self.tokenize_with_mask(input, prepend_bos, padding_side)
        elif isinstance(input, Tensor):
            tokens = input if input.dim() == 2 else input.reshape(1, -1)
            if tokens.is_floating_point():
                raise ValueError(
                    "Got a float tensor as input; pass token ids, or a residual stream together "
                    "with start_at_layer."
                )
        else:
            raise TypeError(f"Unsupported input type {type(input).__name__}.")
        device = self.embed.W_E.device
        return tokens.to(device), _normalize_mask(attention_mask, device)

    def _embed(
        self, tokens: Tensor, attention_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Token (and learned position) embeddings, the position id of every token, and the
        shortformer position embeddings (None unless the model is a shortformer)."""
        positions = positions_from_mask(attention_mask, tokens.shape[1]).to(tokens.device)
        positions = positions.expand(tokens.shape[0], -1)  # [b, p]: hooks see full batches
        if self.cfg.use_hook_tokens:
            tokens = self.hook_tokens(tokens)
        residual = self.hook_embed(self.embed(tokens))
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

    def fold_layer_norm(self, fold_biases: bool = True, center_weights: bool = True) -> None:
        from anatomist.loading import processing

        processing.fold_layer_norm(self, fold_biases=fold_biases, center_weights=center_weights)

    def center_writing_weights(self) -> None:
        from anatomist.loading import processing

        processing.center_writing_weights(self)

    def center_unembed(self) -> None:
        from anatomist.loading import processing

        processing.center_unembed(self)

    def fold_value_biases(self) -> None:
        from anatomist.loading import processing

        processing.fold_value_biases(self)

    def refactor_factored_attn_matrices(self) -> None:
        from anatomist.loading import processing

        processing.refactor_factored_attn_matrices(self)

    # --- misc --------------------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return self.cfg.n_params

    def set_layer_norm_type(self, normalization_type: str | None) -> None:
        """Swap every norm for the given type (used after folding), keeping hook names."""
        self.cfg.normalization_type = normalization_type
        for block in self.blocks if self.cfg.pre_norm else ():
            block.ln1 = make_norm(self.cfg).to(self.embed.W_E.device)
            if not self.cfg.attn_only:
                block.ln2 = make_norm(self.cfg).to(self.embed.W_E.device)
        if self.cfg.final_norm:
            final = make_norm(self.cfg, kind=_final_norm_type(self.cfg))
            self.ln_final = final.to(self.embed.W_E.device)
        self.setup()


# Position schemes with a learned table W_pos (hook_pos_embed): added to the residual stream, or
# (shortformer) to the normalized query and key inputs of every attention layer.
_LEARNED_POSITIONS = ("standard", "shortformer")


def _final_norm_type(cfg: TransformerConfig) -> str | None:
    """ln_final's type: the blocks' type, or its RMS counterpart with cfg.final_rms (old SoLU
    models end on an RMSNorm although their blocks use LayerNorm)."""
    if cfg.final_rms and cfg.normalization_type in ("LN", "LNPre"):
        return "RMS" if cfg.normalization_type == "LN" else "RMSPre"
    return cfg.normalization_type


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
