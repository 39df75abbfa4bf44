"""`HookedEncoderDecoder`: a T5-style encoder-decoder with the classic interface and hook names.

Layout (classic names)::

    embed.W_E                                 shared by encoder and decoder
    hook_embed [b, p, d]                      the encoder's input embeddings
    hook_decoder_embed [b, q, d]              the decoder's input embeddings
    encoder.{i}: pre-RMSNorm blocks
        hook_resid_pre -> ln1 -> attn -> hook_attn_out
        hook_resid_mid        = resid_pre + attn_out
        ln2 -> mlp -> hook_mlp_out
        hook_resid_post       = resid_mid + mlp_out
    encoder_final_ln                          RMSNorm: the encoder output the decoder reads
    decoder.{i}: as the encoder, with cross-attention between self-attention and the MLP
        hook_resid_mid -> ln2 -> cross_attn (keys/values: encoder output) -> hook_cross_attn_out
        hook_resid_mid_cross  = resid_mid + cross_attn_out
        ln3 -> mlp -> hook_mlp_out
        hook_resid_post       = resid_mid_cross + mlp_out
    decoder_final_ln, then unembed (after multiplying by d_model ** -0.5 when
    ``cfg.tie_word_embeddings``, as the original T5 does)

Attention scores are not divided by sqrt(d_head). Positions enter only through a learned
relative position bias: ``encoder.0.attn`` and ``decoder.0.attn`` own a table of one bias per
head for each bucket of query-key distance (bidirectional buckets in the encoder, causal in the
decoder), computed once per forward pass (``attn.hook_rel_pos_bias``, ``[1, h, q, k]``) and added
to the scores of every self-attention layer of that stack. Cross-attention has no position bias.

Generation (`generate`) runs the encoder once. By default the decoder then runs on the newest
token only, with a key-value cache (`DecoderKVCache`): each self-attention layer's keys and
values grow by one position per step, cross-attention's keys and values are projected from the
encoder output at the first step and reused, and the position bias is the new query's row of
the full table (query position = cached length, keys 0..cached), so every step computes the
logits a full run would. ``use_past_kv_cache=False`` re-runs the decoder over the whole output
at each step instead.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from anatomist.config import TransformerConfig
from anatomist.hooks import HookedRootModule, HookPoint
from anatomist.model.attention import Attention, _project, causal_mask
from anatomist.model.block import TransformerBlock
from anatomist.model.embed import Embed, Unembed
from anatomist.model.encoder import _key_mask
from anatomist.model.generate import check_sampling_args, sample_logits, stop_token_ids
from anatomist.model.kv_cache import KVCacheEntry
from anatomist.model.mlp import make_mlp, matmul_bias
from anatomist.model.norm import make_norm
from anatomist.model.positions import relative_position_bucket
from anatomist.model.tokens import SpecialTokensMixin, TextInput, check_token_ids, token_batch
from anatomist.model.weights import StackedWeightsMixin

RETURN_TYPES = ("logits", None)


class DecoderKVCache:
    """What an incremental decoder run keeps between steps, per decoder layer: the
    self-attention keys and values of every decoder position so far (a `KVCacheEntry`, extended
    by each run), and the cross-attention keys and values of the encoder output (``[b, h,
    p_enc, d_head]``, projected by the first run, None before it). Valid for one encoder output
    only: a new input needs a new cache."""

    def __init__(self, cfg: TransformerConfig, device: torch.device, batch_size: int) -> None:
        assert cfg.n_decoder_layers is not None
        layers = range(cfg.n_decoder_layers)
        self.self_attn = [KVCacheEntry.init_cache_entry(cfg, device, batch_size) for _ in layers]
        self.cross_attn: list[tuple[Tensor, Tensor] | None] = [None for _ in layers]

    @property
    def length(self) -> int:
        """How many decoder positions the cache holds."""
        return self.self_attn[0].length


class RelativeAttention(Attention):
    """T5 attention: unscaled scores plus an additive position bias (self-attention), or keys
    and values from the encoder output (cross-attention).

    The first self-attention layer of each stack owns ``rel_pos_bias`` (``[buckets, n_heads]``,
    an ``nn.Embedding``) and computes the bias every layer of its stack adds.
    """

    def __init__(
        self,
        cfg: TransformerConfig,
        layer_idx: int,
        has_relative_attention_bias: bool = False,
        bidirectional: bool = True,
    ) -> None:
        super().__init__(cfg, layer_idx)
        self.bidirectional = bidirectional
        if has_relative_attention_bias:
            self.rel_pos_bias = nn.Embedding(
                cfg.relative_attention_num_buckets, cfg.n_heads, dtype=cfg.dtype
            )
            self.hook_rel_pos_bias = HookPoint()  # [1, n_heads, q_pos, k_pos]

    def compute_relative_attention_bias(
        self,
        query_length: int,
        key_length: int,
        device: torch.device | None = None,
        query_offset: int = 0,
    ) -> Tensor:
        """The position bias ``[1, n_heads, query_length, key_length]`` of this stack, for
        queries at positions ``query_offset ..`` (the new tokens of a cached run) and keys at
        ``0 .. key_length - 1``."""
        table = self.rel_pos_bias.weight
        device = table.device if device is None else device
        query_positions = torch.arange(query_offset, query_offset + query_length, device=device)
        relative = torch.arange(key_length, device=device)[None, :] - query_positions[:, None]
        buckets = relative_position_bucket(
            relative,
            bidirectional=self.bidirectional,
            num_buckets=self.cfg.relative_attention_num_buckets,
            max_distance=self.cfg.relative_attention_max_distance,
        )
        bias = F.embedding(buckets, table).permute(2, 0, 1)[None]
        return self.hook_rel_pos_bias(bias)

    def keys_values(self, key_input: Tensor, value_input: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``[b, h, k, d_head]`` (the kernel's layout), through ``hook_k`` and
        ``hook_v`` (``[b, k, h, d_head]``)."""
        W_K, b_K, W_V, b_V = self.kv_weights
        k = self.hook_k(_project(key_input, W_K, b_K))
        v = self.hook_v(_project(value_input, W_V, b_V))
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(  # type: ignore[override]
        self,
        query_input: Tensor,
        key_input: Tensor,
        value_input: Tensor,
        position_bias: Tensor | None,
        mask: Tensor | None,
        past_kv: KVCacheEntry | None = None,
        cross_kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Inputs ``[b, p, d_model]`` (or per head); `mask` boolean ``[b, 1, q, k]`` (True = may
        attend) or None; `position_bias` ``[1, h, q, k]`` or None (cross-attention).

        Self-attention with `past_kv`: the new keys and values join the cached ones (the queries
        are the last q of the k positions). Cross-attention with `cross_kv`: these keys and
        values ``[b, h, p_enc, d_head]`` are used as they are (`key_input` and `value_input` are
        not projected, so ``hook_k``/``hook_v`` do not fire).
        """
        q = self.hook_q(_project(query_input, self.W_Q, self.b_Q))
        qh = q.transpose(1, 2)  # [b, h, q, dh]
        if cross_kv is not None:
            kh, vh = cross_kv
        else:
            kh, vh = self.keys_values(key_input, value_input)
            if past_kv is not None:  # cached keys first: [b, h, cached + k, dh]
                kh, vh = past_kv.extend(kh, vh)
        bias = None if position_bias is None else position_bias.to(qh.dtype)
        if self.needs_pattern:
            z = self._explicit_attention(qh, kh, vh, mask, bias)
        else:
            attn_mask = bias
            if mask is not None:
                base = torch.zeros((), dtype=qh.dtype, device=qh.device) if bias is None else bias
                attn_mask = base.masked_fill(~mask, float("-inf"))
            z = F.scaled_dot_product_attention(
                qh, kh, vh, attn_mask=attn_mask, scale=1.0 / self.scale
            )
        z = self.hook_z(z.transpose(1, 2))  # [b, q, h, dh]
        if self.cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bphe,hed->bphd", z, self.W_O))
            return result.sum(-2) + self.b_O
        b, p, h, dh = z.shape  # one [b*p, h*dh] @ [h*dh, d] product: einsum is slow at p = 1
        out = matmul_bias(z.reshape(b * p, h * dh), self.W_O.reshape(h * dh, -1), self.b_O)
        return out.view(b, p, -1)


class EncoderDecoderBlock(nn.Module):
    """A pre-RMSNorm T5 block; decoder blocks add cross-attention (``ln2``/``cross_attn``) and
    normalize the MLP input with ``ln3``."""

    def __init__(self, cfg: TransformerConfig, layer_idx: int, is_decoder: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.is_decoder = is_decoder
        self.ln1 = make_norm(cfg)
        self.attn = RelativeAttention(
            cfg, layer_idx, has_relative_attention_bias=layer_idx == 0, bidirectional=not is_decoder
        )
        self.ln2 = make_norm(cfg)
        if is_decoder:
            self.cross_attn = RelativeAttention(cfg, layer_idx)
            self.ln3 = make_norm(cfg)
        self.mlp = make_mlp(cfg)

        self.hook_resid_pre = HookPoint()  # [b, p, d_model]
        self.hook_attn_in = HookPoint("use_attn_in")  # [b, p, n_heads, d_model]
        self.hook_q_input = HookPoint("use_split_qkv_input")  # [b, p, n_heads, d_model]
        self.hook_k_input = HookPoint("use_split_qkv_input")
        self.hook_v_input = HookPoint("use_split_qkv_input")
        self.hook_attn_out = HookPoint()  # [b, p, d_model]
        self.hook_resid_mid = HookPoint()  # [b, p, d_model]
        if is_decoder:
            self.hook_cross_attn_in = HookPoint("use_attn_in")  # [b, p, d_model], before ln2
            self.hook_cross_attn_out = HookPoint()  # [b, p, d_model]
            self.hook_resid_mid_cross = HookPoint()  # [b, p, d_model]
        self.hook_mlp_in = HookPoint("use_hook_mlp_in")  # [b, p, d_model], before its norm
        self.hook_mlp_out = HookPoint()  # [b, p, d_model]
        self.hook_resid_post = HookPoint()  # [b, p, d_model]

    def _attention_inputs(self, resid_pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Query/key/value inputs with the opt-in per-head hooks, normalized by ln1: the
        decoder-only block's logic, which needs only the attributes both blocks share."""
        return TransformerBlock._attention_inputs(self, resid_pre)  # type: ignore[arg-type]

    def forward(
        self,
        resid_pre: Tensor,
        position_bias: Tensor,
        mask: Tensor | None,
        encoder_output: Tensor | None = None,
        encoder_mask: Tensor | None = None,
        cache: DecoderKVCache | None = None,
    ) -> Tensor:
        """`cache` (decoder blocks): run incrementally, `resid_pre` being the new positions."""
        cfg = self.cfg
        layer = self.attn.layer_idx
        resid_pre = self.hook_resid_pre(resid_pre)
        past_kv = None if cache is None else cache.self_attn[layer]
        attn_out = self.attn(*self._attention_inputs(resid_pre), position_bias, mask, past_kv)
        resid = self.hook_resid_mid(resid_pre + self.hook_attn_out(attn_out))
        if self.is_decoder:
            if encoder_output is None:
                raise ValueError("A decoder block needs the encoder output for cross-attention.")
            cross_in = self.hook_cross_attn_in(resid.clone()) if cfg.use_attn_in else resid
            cross_kv = None if cache is None else cache.cross_attn[layer]
            if cache is not None and cross_kv is None:  # the first cached run projects them
                cross_kv = self.cross_attn.keys_values(encoder_output, encoder_output)
                cache.cross_attn[layer] = cross_kv
            cross_out = self.cross_attn(
                self.ln2(cross_in),
                encoder_output,
                encoder_output,
                None,
                encoder_mask,
                None,
                cross_kv,
            )
            resid = self.hook_resid_mid_cross(resid + self.hook_cross_attn_out(cross_out))
        mlp_in = self.hook_mlp_in(resid.clone()) if cfg.use_hook_mlp_in else resid
        mlp_norm = self.ln3 if self.is_decoder else self.ln2
        mlp_out = self.hook_mlp_out(self.mlp(mlp_norm(mlp_in)))
        return self.hook_resid_post(resid + mlp_out)


class HookedEncoderDecoder(StackedWeightsMixin, SpecialTokensMixin, HookedRootModule):
    """A T5-style encoder-decoder whose every activation has a named hook point.

    ``HookedEncoderDecoder(cfg)`` builds a randomly initialised model;
    ``HookedEncoderDecoder.from_pretrained`` loads a T5 checkpoint
    (``T5ForConditionalGeneration``). ``cfg.n_layers`` counts encoder blocks and
    ``cfg.n_decoder_layers`` decoder blocks (default: as many). `decoder_start_token_id` is the
    token every decoder sequence starts with (T5: the pad token, 0).
    """

    def __init__(
        self,
        cfg: TransformerConfig | dict[str, Any],
        tokenizer: Any = None,
        move_to_device: bool = True,
        init_weights: bool = True,
        decoder_start_token_id: int = 0,
    ) -> None:
        super().__init__()
        self.cfg = cfg = TransformerConfig.unwrap(cfg)
        cfg.causal = False  # the encoder attends both ways; decoder masks are built per call
        if cfg.positional_embedding_type != "relative_positional_bias" or cfg.attn_only:
            raise ValueError(
                "HookedEncoderDecoder needs positional_embedding_type='relative_positional_bias' "
                "and MLPs (attn_only=False)."
            )
        if cfg.is_grouped_query:
            raise ValueError("HookedEncoderDecoder does not support grouped-query attention.")
        if cfg.n_decoder_layers is None:
            cfg.n_decoder_layers = cfg.n_layers
        self.decoder_start_token_id = decoder_start_token_id
        self.tokenizer = None
        self.set_tokenizer(tokenizer)

        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [b, p, d_model], encoder input embeddings
        self.hook_decoder_embed = HookPoint()  # [b, q, d_model], decoder input embeddings
        self.encoder = nn.ModuleList(
            EncoderDecoderBlock(cfg, i, is_decoder=False) for i in range(cfg.n_layers)
        )
        self.encoder_final_ln = make_norm(cfg)
        self.decoder = nn.ModuleList(
            EncoderDecoderBlock(cfg, i, is_decoder=True) for i in range(cfg.n_decoder_layers)
        )
        self.decoder_final_ln = make_norm(cfg)
        self.unembed = Unembed(cfg)

        self._finish_construction(init_weights, move_to_device)

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_name: str | os.PathLike[str],
        hf_model: Any = None,
        device: str | torch.device | None = None,
        tokenizer: Any = None,
        move_to_device: bool = True,
        dtype: str | torch.dtype = "float32",
        revision: str | None = None,
        local_files_only: bool | None = None,
        progress: bool = True,
    ) -> HookedEncoderDecoder:
        """Load a T5 checkpoint: a local folder, a cached repo id, a registry name (``t5-small``),
        or an instantiated Hugging Face model (`hf_model`). No weight processing is applied."""
        from anatomist.families import t5
        from anatomist.loading.pretrained import (
            config_from,
            fill_and_finish,
            open_family_checkpoint,
            parse_dtype,
            with_tied_tensor,
        )

        source = open_family_checkpoint(
            model_name,
            t5.FAMILY,
            "HookedEncoderDecoder",
            "Load decoder-only models with anatomist.HookedTransformer.from_pretrained, BERT with "
            "anatomist.HookedEncoder.from_pretrained.",
            hf_model,
            revision,
            local_files_only,
            want_tokenizer=tokenizer is None,
        )
        cfg = config_from(t5.build_encoder_decoder_config, source)
        cfg.model_name = source.name
        cfg.dtype = parse_dtype(dtype)
        model = cls(
            cfg,
            move_to_device=False,
            init_weights=False,
            decoder_start_token_id=t5.decoder_start_token_id(source.hf_config),
        )
        tensors = with_tied_tensor(source.tensors, t5.TIED_SOURCE, t5.TIED_TARGET)
        return fill_and_finish(
            model, t5.FAMILY, source, tensors, tokenizer, device, move_to_device, progress
        )  # type: ignore[no-any-return]

    # --- forward -----------------------------------------------------------------------------
    def forward(
        self,
        input: str | list[str] | Tensor,
        decoder_input: Tensor | None = None,
        return_type: str | None = "logits",
        one_zero_attention_mask: Tensor | None = None,
        attention_mask: Tensor | None = None,
        encoder_output: Tensor | None = None,
    ) -> Tensor | None:
        """Run the encoder on `input`, then the decoder on `decoder_input`; logits
        ``[b, q, d_vocab]`` for every decoder position.

        `input` is a string, a list of strings (right-padded, with their mask), or token ids
        ``[b, p]``; `one_zero_attention_mask` (alias `attention_mask`) ``[b, p]`` marks real
        encoder tokens (1) and padding (0). `decoder_input` ``[b, q]`` are decoder token ids,
        starting with `decoder_start_token_id`; for text input it defaults to just that token.
        `encoder_output` (from `encoder_output(...)`) skips running the encoder again.
        """
        if return_type not in RETURN_TYPES:
            raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}.")
        if attention_mask is not None:
            if one_zero_attention_mask is not None:
                raise ValueError("Pass one_zero_attention_mask or attention_mask, not both.")
            one_zero_attention_mask = attention_mask
        tokens, one_zero_attention_mask = self._encoder_tokens(input, one_zero_attention_mask)
        device = self.embed.W_E.device
        if decoder_input is None:
            if not isinstance(input, str | list):
                raise ValueError(
                    "Pass decoder_input (decoder token ids [batch, pos], starting with "
                    f"decoder_start_token_id={self.decoder_start_token_id}) with token input."
                )
            decoder_input = torch.full(
                (tokens.shape[0], 1), self.decoder_start_token_id, dtype=torch.long
            )
        decoder_input = token_batch(decoder_input, "decoder_input").to(device)
        check_token_ids(decoder_input, self.cfg.d_vocab, "decoder_input")
        if encoder_output is None:
            encoder_output = self.encoder_output(tokens, one_zero_attention_mask)
        if decoder_input.shape[0] != encoder_output.shape[0]:
            raise ValueError(
                f"decoder_input has {decoder_input.shape[0]} rows but the encoder input "
                f"{encoder_output.shape[0]}; give one decoder row per encoder row."
            )
        logits = self._decode(decoder_input.to(device), encoder_output, one_zero_attention_mask)
        return logits if return_type == "logits" else None

    def encoder_output(
        self, tokens: Tensor, one_zero_attention_mask: Tensor | None = None
    ) -> Tensor:
        """The encoder's final, normalized residual stream ``[b, p, d_model]`` (what
        cross-attention reads; Hugging Face's ``encoder_last_hidden_state``)."""
        device = self.embed.W_E.device
        tokens = token_batch(tokens, "tokens").to(device)
        check_token_ids(tokens, self.cfg.d_vocab, "tokens")
        resid = self.hook_embed(self.embed(tokens))
        mask = _key_mask(one_zero_attention_mask, tokens.shape, device)
        length = tokens.shape[1]
        bias = _position_bias(self.encoder, length, length, device)
        for block in self.encoder:
            resid = block(resid, bias, mask)
        return self.encoder_final_ln(resid)

    def _decode(
        self,
        decoder_input: Tensor,
        encoder_output: Tensor,
        one_zero_attention_mask: Tensor | None,
        cache: DecoderKVCache | None = None,
    ) -> Tensor:
        """Decoder logits ``[b, q, d_vocab]`` for `decoder_input`: the whole decoder sequence,
        or with `cache` the positions after the cached ones (the cache then holds them too)."""
        device = encoder_output.device
        resid = self.hook_decoder_embed(self.embed(decoder_input))
        new = decoder_input.shape[1]
        cached = 0 if cache is None else cache.length
        bias = _position_bias(self.decoder, new, cached + new, device, query_offset=cached)
        # One new query may attend to every key; T5's decoder has no padding of its own.
        self_mask = None if new == 1 else causal_mask(new, cached + new, device)
        cross_mask = _key_mask(one_zero_attention_mask, encoder_output.shape[:2], device)
        for block in self.decoder:
            resid = block(resid, bias, self_mask, encoder_output, cross_mask, cache)
        resid = self.decoder_final_ln(resid)
        if self.cfg.tie_word_embeddings:  # the original T5 rescales before its tied unembedding
            resid = resid * self.cfg.d_model**-0.5
        return self.unembed(resid)

    def _encoder_tokens(
        self, input: str | list[str] | Tensor, mask: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        if isinstance(input, str | list):
            tokens, _, text_mask = self._encode(input)
            return tokens, (text_mask if mask is None else mask)
        if not isinstance(input, Tensor):
            raise TypeError(
                f"input must be text, a list of texts or token ids [batch, pos], got "
                f"{type(input).__name__}."
            )
        return token_batch(input, "input"), mask

    # --- generation --------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        input: str | list[str] | Tensor = "",
        one_zero_attention_mask: Tensor | None = None,
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: int | list[int] | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        return_type: str | None = "input",
        verbose: bool = True,
        use_past_kv_cache: bool = True,
    ) -> Tensor | str | list[str]:
        """Decode up to `max_new_tokens` tokens after `decoder_start_token_id`.

        Returns the decoder sequence ``[b, 1 + new]`` (start token included, as Hugging Face's
        ``generate`` does) for ``return_type="tokens"``, or the decoded text without special
        tokens for ``"str"``; ``"input"`` means str for text input and tokens otherwise.
        Sequences that finish early are padded with the pad token (the tokenizer's, else
        `decoder_start_token_id`), as Hugging Face does.

        `use_past_kv_cache` (default True) runs the decoder at each step on the newest token
        only, reusing the keys and values of the earlier ones (`DecoderKVCache`); False re-runs
        it over the whole decoder sequence at each step. Both compute the same logits. Hooks
        added with ``model.hooks(...)`` fire at every step: with the cache, decoder hooks see
        the new position only (``[b, 1, ...]``; attention patterns ``[b, h, 1, k]``), as in
        HookedTransformer's cached generation, and the cross-attention ``hook_k``/``hook_v``
        fire at the first step only, their keys and values (edits included) being reused;
        with ``use_past_kv_cache=False`` every decoder hook sees the whole sequence so far.
        Encoder hooks fire once either way.
        """
        if return_type not in ("input", "str", "tokens", "tensor"):
            raise ValueError(
                f"return_type must be 'input', 'str' or 'tokens', got {return_type!r}."
            )
        check_sampling_args(
            max_new_tokens,
            top_k,
            top_p,
            temperature,
            freq_penalty,
            eos_token_id=eos_token_id,
            d_vocab=self.cfg.d_vocab,
        )
        if return_type == "input":
            return_type = "str" if isinstance(input, str | list) else "tokens"
        tokens, mask = self._encoder_tokens(input, one_zero_attention_mask)
        stops = self._stop_tokens(stop_at_eos, eos_token_id)
        encoded = self.encoder_output(tokens, mask)
        batch = tokens.shape[0]
        out = torch.full(
            (batch, 1), self.decoder_start_token_id, dtype=torch.long, device=encoded.device
        )
        finished = torch.zeros(batch, dtype=torch.bool, device=encoded.device)
        cache = DecoderKVCache(self.cfg, encoded.device, batch) if use_past_kv_cache else None
        for _ in tqdm(range(max_new_tokens), disable=not verbose, leave=False):
            if cache is None:
                logits = self._decode(out, encoded, mask)[:, -1]
            else:  # the cache holds every position of `out` but the last
                logits = self._decode(out[:, cache.length :], encoded, mask, cache)[:, -1]
            if do_sample:
                new = sample_logits(logits, top_k, top_p, temperature, freq_penalty, out)
            else:
                new = logits.argmax(-1)
            if stops:
                new = torch.where(finished, self._generation_pad_id, new)
                finished |= torch.isin(new, torch.tensor(stops, device=new.device))
            out = torch.cat([out, new[:, None]], dim=1)
            if stops and bool(finished.all()):
                break
        if return_type == "str":
            tok = self._require_tokenizer()
            texts = tok.batch_decode(out.tolist(), skip_special_tokens=True)
            return texts[0] if isinstance(input, str) else texts
        return out

    @property
    def _generation_pad_id(self) -> int:
        pad = None if self.tokenizer is None else self.tokenizer.pad_token_id
        return self.decoder_start_token_id if pad is None else int(pad)

    def _stop_tokens(self, stop_at_eos: bool, eos_token_id: int | list[int] | None) -> list[int]:
        return stop_token_ids(self.tokenizer, stop_at_eos, eos_token_id)

    # --- tokenizer: the tokenizer's own special tokens (T5 appends </s>) ----------------------
    def to_tokens(  # type: ignore[override]
        self, input: TextInput, move_to_device: bool = True, truncate: bool = True
    ) -> tuple[Tensor, Tensor]:
        """``(tokens, attention_mask)``, each ``[batch, pos]``, right-padded (the classic
        HookedEncoderDecoder return value)."""
        tokens, _, mask = self._encode(input, truncate=truncate)
        if move_to_device and self.cfg.device is not None:
            return tokens.to(self.cfg.device), mask.to(self.cfg.device)
        return tokens, mask

    # --- opt-in hooks ------------------------------------------------------------------------
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Turn on ``attn.hook_result`` / ``cross_attn.hook_result`` (per-head outputs)."""
        self.cfg.use_attn_result = use_attn_result

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Turn on ``hook_{q,k,v}_input`` (a separate self-attention input per head)."""
        self.cfg.use_split_qkv_input = use_split_qkv_input

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """Turn on ``hook_attn_in`` (per head) and, in the decoder, ``hook_cross_attn_in``."""
        self.cfg.use_attn_in = use_attn_in

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Turn on ``hook_mlp_in`` (the residual stream before the MLP's norm)."""
        self.cfg.use_hook_mlp_in = use_hook_mlp_in

    # --- weight views ------------------------------------------------------------------------
    @property
    def blocks(self) -> list[EncoderDecoderBlock]:
        """Encoder blocks, then decoder blocks: the stacked views (``W_Q`` ...) run over both,
        ``[n_layers + n_decoder_layers, ...]``, self-attention only, as the classic class did.
        Cross-attention weights are ``model.decoder[i].cross_attn.W_Q`` etc."""
        return [*self.encoder, *self.decoder]

    def all_head_labels(self) -> list[str]:
        """``EL{layer}H{head}`` for encoder heads, then ``DL{layer}H{head}`` for decoder heads."""
        heads = range(self.cfg.n_heads)
        assert self.cfg.n_decoder_layers is not None
        return [f"EL{i}H{h}" for i in range(self.cfg.n_layers) for h in heads] + [
            f"DL{i}H{h}" for i in range(self.cfg.n_decoder_layers) for h in heads
        ]

    @property
    def W_E(self) -> Tensor:
        return self.embed.W_E

    @property
    def W_U(self) -> Tensor:
        return self.unembed.W_U

    @property
    def b_U(self) -> Tensor:
        return self.unembed.b_U


def _position_bias(
    stack: nn.ModuleList, q_len: int, k_len: int, device: torch.device, query_offset: int = 0
) -> Tensor:
    """The relative position bias ``[1, h, q, k]`` the first block of `stack` computes, for
    queries at positions ``query_offset ..``."""
    first: EncoderDecoderBlock = stack[0]  # type: ignore[assignment]
    attn: RelativeAttention = first.attn  # type: ignore[assignment]
    return attn.compute_relative_attention_bias(q_len, k_len, device, query_offset)
