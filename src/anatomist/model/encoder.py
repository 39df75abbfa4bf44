"""`HookedEncoder`: a BERT-style encoder with the classic interface and hook names.

Layout (classic names)::

    embed.embed.W_E, embed.pos_embed.W_pos, embed.token_type_embed.W_token_type
    embed.hook_embed, embed.hook_pos_embed, embed.hook_token_type_embed   [b, p, d]
    embed.ln.hook_scale / hook_normalized     LayerNorm of their sum
    hook_full_embed                           [b, p, d], what block 0 reads
    blocks.{i}: post-LayerNorm (BertBlock)
        hook_resid_pre -> attn.* -> hook_attn_out
        hook_resid_mid        = resid_pre + attn_out                  (before ln1)
        ln1.hook_normalized   = LN1(resid_mid), what the MLP reads
        mlp.* -> hook_mlp_out
        hook_resid_post       = ln1.hook_normalized + mlp_out         (before ln2)
        hook_normalized_resid_post = LN2(resid_post): the block's output (next resid_pre)
    mlm_head.W, b, ln  ->  unembed.W_U, b_U   (masked-LM head; only when the model has one)
    pooler.W, b -> pooler.hook_pooler_out [b, d]   tanh of the first ([CLS]) position
    nsp_head.W, b -> nsp_head.hook_nsp_out [b, 2]   next-sentence logits (BertNextSentencePrediction)

Attention is bidirectional: a padding mask hides padded keys only. Positions are 0..p-1 in
every row, as in BERT, so padding goes on the right. No weight processing is applied, neither
here nor by `from_pretrained`: a post-LayerNorm block's norms cannot be folded into the next
layer the way a pre-LayerNorm block's can.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from anatomist.config import TransformerConfig
from anatomist.hooks import HookedRootModule, HookPoint
from anatomist.model.attention import make_attention
from anatomist.model.block import _per_head
from anatomist.model.embed import Embed, Unembed
from anatomist.model.mlp import ACTIVATIONS, make_mlp
from anatomist.model.norm import make_norm
from anatomist.model.positions import PosEmbed
from anatomist.model.tokens import (
    SpecialTokensMixin,
    TextInput,
    check_attention_mask,
    check_token_ids,
    token_batch,
)
from anatomist.model.transformer import _set_vocab_size
from anatomist.model.weights import StackedWeightsMixin

RETURN_TYPES = ("logits", "embeddings", "predictions", None)


class TokenTypeEmbed(nn.Module):
    """Learned segment embeddings: row 0 for sentence A, row 1 for sentence B."""

    def __init__(self, cfg: TransformerConfig, n_token_types: int = 2) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_token_type = nn.Parameter(torch.empty(n_token_types, cfg.d_model, dtype=cfg.dtype))

    def forward(self, token_type_ids: Tensor) -> Tensor:  # [b, p] -> [b, p, d_model]
        return self.W_token_type[token_type_ids]


class BertEmbed(nn.Module):
    """Word + position + token-type embeddings, then a LayerNorm (``embed.ln``)."""

    def __init__(self, cfg: TransformerConfig, n_token_types: int = 2) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.pos_embed = PosEmbed(cfg)
        self.token_type_embed = TokenTypeEmbed(cfg, n_token_types)
        self.ln = make_norm(cfg)
        self.hook_embed = HookPoint()  # [b, p, d_model]
        self.hook_pos_embed = HookPoint()  # [b, p, d_model]
        self.hook_token_type_embed = HookPoint()  # [b, p, d_model]

    def forward(self, tokens: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(
                f"Input has {tokens.shape[1]} tokens but this model's learned positions end at "
                f"n_ctx={self.cfg.n_ctx}; shorten the input."
            )
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(tokens)
        words = self.hook_embed(self.embed(tokens))
        places = self.hook_pos_embed(self.pos_embed(positions))
        types = self.hook_token_type_embed(self.token_type_embed(token_type_ids))
        return self.ln(words + places + types)


class BertBlock(nn.Module):
    """A post-LayerNorm block: ``ln1(resid_pre + attn_out)``, then ``ln2(that + mlp_out)``."""

    def __init__(self, cfg: TransformerConfig, layer_idx: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        self.attn = make_attention(cfg, layer_idx)
        self.ln1 = make_norm(cfg)
        self.mlp = make_mlp(cfg)
        self.ln2 = make_norm(cfg)

        self.hook_resid_pre = HookPoint()  # [b, p, d_model]
        self.hook_attn_in = HookPoint("use_attn_in")  # [b, p, n_heads, d_model]
        self.hook_q_input = HookPoint("use_split_qkv_input")  # [b, p, n_heads, d_model]
        self.hook_k_input = HookPoint("use_split_qkv_input")
        self.hook_v_input = HookPoint("use_split_qkv_input")
        self.hook_attn_out = HookPoint()  # [b, p, d_model]
        self.hook_resid_mid = HookPoint()  # [b, p, d_model], resid_pre + attn_out
        self.hook_mlp_in = HookPoint("use_hook_mlp_in")  # [b, p, d_model], before ln1
        self.hook_mlp_out = HookPoint()  # [b, p, d_model]
        self.hook_resid_post = HookPoint()  # [b, p, d_model], ln1(resid_mid) + mlp_out
        self.hook_normalized_resid_post = HookPoint()  # [b, p, d_model], ln2(resid_post)

    def forward(self, resid_pre: Tensor, positions: Tensor, mask: Tensor | None) -> Tensor:
        cfg = self.cfg
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(
            self.attn(*self._attention_inputs(resid_pre), positions, mask)
        )
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if cfg.use_hook_mlp_in else resid_mid
        normalized_resid_mid = self.ln1(mlp_in)
        mlp_out = self.hook_mlp_out(self.mlp(normalized_resid_mid))
        resid_post = self.hook_resid_post(normalized_resid_mid + mlp_out)
        return self.hook_normalized_resid_post(self.ln2(resid_post))

    def _attention_inputs(self, resid_pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Query, key and value inputs (no norm before attention), per head when asked."""
        cfg = self.cfg
        source = resid_pre
        if cfg.use_attn_in:
            source = self.hook_attn_in(_per_head(resid_pre, cfg.n_heads))
        if not cfg.use_split_qkv_input:
            return source, source, source
        q_in = self.hook_q_input(_per_head(source, cfg.n_heads))
        k_in = self.hook_k_input(_per_head(source, cfg.n_kv_heads))
        v_in = self.hook_v_input(_per_head(source, cfg.n_kv_heads))
        return q_in, k_in, v_in


class BertMLMHead(nn.Module):
    """The masked-LM transform: ``ln(act(resid @ W + b))``; the unembedding follows it."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        assert cfg.act_fn is not None
        self.cfg = cfg
        self.W = nn.Parameter(torch.empty(cfg.d_model, cfg.d_model, dtype=cfg.dtype))
        self.b = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.act = ACTIVATIONS[cfg.act_fn]
        self.ln = make_norm(cfg)

    def forward(self, resid: Tensor) -> Tensor:
        return self.ln(self.act(resid @ self.W + self.b))


class BertPooler(nn.Module):
    """The pooled sequence: ``tanh(resid[:, 0] @ W + b)``, from the first ([CLS]) position."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W = nn.Parameter(torch.empty(cfg.d_model, cfg.d_model, dtype=cfg.dtype))
        self.b = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.hook_pooler_out = HookPoint()  # [b, d_model]

    def forward(self, resid: Tensor) -> Tensor:  # [b, p, d_model] -> [b, d_model]
        return self.hook_pooler_out(torch.tanh(resid[:, 0] @ self.W + self.b))


class BertNSPHead(nn.Module):
    """Next-sentence logits ``[b, 2]`` of the pooled sequence: 0 = B follows A, 1 = it does not."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W = nn.Parameter(torch.empty(cfg.d_model, 2, dtype=cfg.dtype))
        self.b = nn.Parameter(torch.zeros(2, dtype=cfg.dtype))
        self.hook_nsp_out = HookPoint()  # [b, 2]

    def forward(self, pooled: Tensor) -> Tensor:  # [b, d_model] -> [b, 2]
        return self.hook_nsp_out(pooled @ self.W + self.b)


class HookedEncoder(StackedWeightsMixin, SpecialTokensMixin, HookedRootModule):
    """A BERT-style encoder whose every activation has a named hook point.

    ``HookedEncoder(cfg)`` builds a randomly initialised model; ``HookedEncoder.from_pretrained``
    loads a BERT checkpoint (``BertModel``, ``BertForMaskedLM``, ``BertForPreTraining``,
    ``BertForNextSentencePrediction``). `n_token_types` is the size of the segment-embedding
    table; `mlm_head` says whether the model has the masked-LM head (``mlm_head`` + ``unembed``),
    without which only the encoder output (``return_type="embeddings"``, `encoder_output`) is
    available; `nsp_head` whether it has the pooler and next-sentence head (``pooler`` +
    ``nsp_head``, run by `BertNextSentencePrediction`, not by `forward`).
    """

    def __init__(
        self,
        cfg: TransformerConfig | dict[str, Any],
        tokenizer: Any = None,
        move_to_device: bool = True,
        init_weights: bool = True,
        n_token_types: int = 2,
        mlm_head: bool = True,
        nsp_head: bool = True,
    ) -> None:
        super().__init__()
        self.cfg = cfg = TransformerConfig.unwrap(cfg)
        if cfg.causal:
            cfg.causal = False  # an encoder attends both ways
        if cfg.attn_only or cfg.positional_embedding_type != "standard":
            raise ValueError(
                "HookedEncoder needs MLPs and learned positions (attn_only=False, "
                "positional_embedding_type='standard')."
            )
        self.n_token_types = n_token_types
        self.has_mlm_head = mlm_head
        self.has_nsp_head = nsp_head
        if tokenizer is None and cfg.tokenizer_name is not None:
            from anatomist.model.tokens import load_tokenizer

            tokenizer = load_tokenizer(cfg.tokenizer_name, cfg.trust_remote_code)
        self.tokenizer = None
        self.set_tokenizer(tokenizer)
        _set_vocab_size(cfg, tokenizer)
        if cfg.d_vocab_out == -1:  # d_vocab set on the config after it was built
            cfg.d_vocab_out = cfg.d_vocab

        self.embed = BertEmbed(cfg, n_token_types)
        self.hook_full_embed = HookPoint()  # [b, p, d_model], the normalized embeddings
        self.blocks = nn.ModuleList(BertBlock(cfg, i) for i in range(cfg.n_layers))
        if mlm_head:
            self.mlm_head = BertMLMHead(cfg)
            self.unembed = Unembed(cfg)
        if nsp_head:
            self.pooler = BertPooler(cfg)
            self.nsp_head = BertNSPHead(cfg)

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
        mlm_head: bool | None = None,
        revision: str | None = None,
        local_files_only: bool | None = None,
        progress: bool = True,
        nsp_head: bool | None = None,
    ) -> HookedEncoder:
        """Load a BERT checkpoint: a local folder, a cached repo id, a registry name, or an
        instantiated Hugging Face model (`hf_model`).

        The weights are loaded as they are: encoders get no weight processing (no LayerNorm
        folding, no centering). `mlm_head` defaults to whether the checkpoint's architecture has
        the masked-LM head (``BertForMaskedLM``, ``BertForPreTraining``).
        """
        from anatomist.families import bert
        from anatomist.loading.pretrained import (
            config_from,
            fill_and_finish,
            open_family_checkpoint,
            parse_dtype,
            with_tied_tensor,
        )

        source = open_family_checkpoint(
            model_name,
            bert.FAMILY,
            "HookedEncoder",
            "Load decoder-only models with anatomist.HookedTransformer.from_pretrained, T5 with "
            "anatomist.HookedEncoderDecoder.from_pretrained.",
            hf_model,
            revision,
            local_files_only,
            want_tokenizer=tokenizer is None,
        )
        cfg = config_from(bert.build_encoder_config, source)
        cfg.model_name = source.name
        cfg.dtype = parse_dtype(dtype)
        with_head = bert.has_mlm_head(source.hf_config) if mlm_head is None else mlm_head
        with_nsp = bert.has_nsp_head(source.hf_config) if nsp_head is None else nsp_head
        model = cls(
            cfg,
            move_to_device=False,
            init_weights=False,
            n_token_types=bert.n_token_types(source.hf_config),
            mlm_head=with_head,
            nsp_head=with_nsp,
        )
        tensors = bert.without_heads(source.tensors, with_head, with_nsp)
        if with_head and cfg.tie_word_embeddings:
            tensors = with_tied_tensor(tensors, bert.TIED_SOURCE, bert.TIED_TARGET)
        return fill_and_finish(
            model, bert.FAMILY, source, tensors, tokenizer, device, move_to_device, progress
        )  # type: ignore[no-any-return]

    # --- forward -----------------------------------------------------------------------------
    def forward(
        self,
        input: str | list[str] | Tensor,
        return_type: str | None = "logits",
        token_type_ids: Tensor | None = None,
        one_zero_attention_mask: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Any:
        """Run the encoder, then the masked-LM head.

        `input` is a string, a list of strings (padded, with their mask and token types), or
        token ids ``[b, p]``. `one_zero_attention_mask` (or its alias `attention_mask`)
        ``[b, p]`` marks real tokens (1) and padding (0). `return_type`: ``"logits"``
        ``[b, p, d_vocab]``, ``"embeddings"`` (the encoder output ``[b, p, d_model]``, without
        the head), ``"predictions"`` (the most likely token at each ``[MASK]``: a string for one
        mask, else a list), or None.
        """
        if return_type not in RETURN_TYPES:
            raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}.")
        if attention_mask is not None:
            if one_zero_attention_mask is not None:
                raise ValueError("Pass one_zero_attention_mask or attention_mask, not both.")
            one_zero_attention_mask = attention_mask
        if isinstance(input, str | list):
            tokens, types, mask = self._encode(input)
            token_type_ids = types if token_type_ids is None else token_type_ids
            one_zero_attention_mask = (
                mask if one_zero_attention_mask is None else one_zero_attention_mask
            )
        elif isinstance(input, Tensor):
            tokens = token_batch(input, "input")
        else:
            raise TypeError(
                f"input must be text, a list of texts or token ids [batch, pos], got "
                f"{type(input).__name__}."
            )

        resid = self.encoder_output(tokens, token_type_ids, one_zero_attention_mask)
        if return_type == "embeddings":
            return resid
        if not self.has_mlm_head:
            if return_type is None:
                return None
            raise ValueError(
                "This model has no masked-LM head (the checkpoint is a bare encoder), so it has "
                "no logits; use return_type='embeddings' or model.encoder_output(...)."
            )
        logits = self.unembed(self.mlm_head(resid))
        if return_type == "logits":
            return logits
        if return_type == "predictions":
            return self._predictions(tokens, logits)
        return None

    def encoder_output(
        self,
        tokens: Tensor,
        token_type_ids: Tensor | None = None,
        one_zero_attention_mask: Tensor | None = None,
    ) -> Tensor:
        """The final residual stream ``[b, p, d_model]`` (Hugging Face's ``last_hidden_state``)."""
        device = self.embed.embed.W_E.device
        tokens = token_batch(tokens, "tokens").to(device)
        check_token_ids(tokens, self.cfg.d_vocab, "tokens")
        if token_type_ids is not None:
            token_type_ids = token_type_ids.to(device)
            if token_type_ids.shape != tokens.shape:
                raise ValueError(
                    f"token_type_ids must have the tokens' shape {tuple(tokens.shape)}, got "
                    f"{tuple(token_type_ids.shape)}."
                )
            types = token_batch(token_type_ids, "token_type_ids")
            check_token_ids(types, self.n_token_types, "token_type_ids", "n_token_types")
        resid = self.hook_full_embed(self.embed(tokens, token_type_ids))
        mask = _key_mask(one_zero_attention_mask, tokens.shape, device)
        positions = torch.arange(tokens.shape[1], device=device)[None]
        for block in self.blocks:
            resid = block(resid, positions, mask)
        return resid

    def _predictions(self, tokens: Tensor, logits: Tensor) -> str | list[str]:
        tok = self._require_tokenizer()
        if tok.mask_token_id is None:
            raise ValueError("This tokenizer has no mask token, so there is nothing to predict.")
        best = logits[tokens.to(logits.device) == tok.mask_token_id].argmax(-1).tolist()
        words = [tok.decode([t], clean_up_tokenization_spaces=False).strip() for t in best]
        if len(words) == 1:
            return words[0]
        return [f"Prediction {i}: {w}" for i, w in enumerate(words)]

    # --- tokenizer: the tokenizer's own special tokens ([CLS] ... [SEP]), see SpecialTokensMixin
    def to_tokens(  # type: ignore[override]
        self,
        input: TextInput,
        move_to_device: bool = True,
        truncate: bool = True,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(tokens, token_type_ids, attention_mask)``, each ``[batch, pos]`` (the classic
        HookedEncoder return value)."""
        tokens, types, mask = self._encode(input, prepend_bos, padding_side, truncate)
        if move_to_device and self.cfg.device is not None:
            return tokens.to(self.cfg.device), types.to(self.cfg.device), mask.to(self.cfg.device)
        return tokens, types, mask

    # --- opt-in hooks ------------------------------------------------------------------------
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Turn on ``blocks.{i}.attn.hook_result`` (per-head outputs, [b, p, h, d_model])."""
        self.cfg.use_attn_result = use_attn_result

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Turn on ``blocks.{i}.hook_{q,k,v}_input`` (a separate input per head)."""
        self.cfg.use_split_qkv_input = use_split_qkv_input

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """Turn on ``blocks.{i}.hook_attn_in`` (one per-head input shared by q, k and v)."""
        self.cfg.use_attn_in = use_attn_in

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Turn on ``blocks.{i}.hook_mlp_in`` (resid_mid as the MLP's LayerNorm reads it)."""
        self.cfg.use_hook_mlp_in = use_hook_mlp_in

    # --- weight views, stacked over layers ---------------------------------------------------
    @property
    def W_E(self) -> Tensor:
        return self.embed.embed.W_E

    @property
    def W_pos(self) -> Tensor:
        return self.embed.pos_embed.W_pos

    @property
    def W_token_type(self) -> Tensor:
        return self.embed.token_type_embed.W_token_type

    @property
    def W_E_pos(self) -> Tensor:
        """Token and position embeddings concatenated, [d_vocab + n_ctx, d_model]."""
        return torch.cat([self.W_E, self.W_pos], dim=0)

    def _require_head(self) -> None:
        if not self.has_mlm_head:
            raise AttributeError(
                "This encoder has no masked-LM head, so no W_U/b_U (load a *ForMaskedLM "
                "checkpoint, or pass mlm_head=True)."
            )

    @property
    def W_U(self) -> Tensor:  # only with the masked-LM head
        self._require_head()
        return self.unembed.W_U

    @property
    def b_U(self) -> Tensor:
        self._require_head()
        return self.unembed.b_U


NSP_RETURN_TYPES = ("logits", "predictions", None)
NSP_PREDICTIONS = ("The sentences are sequential", "The sentences are NOT sequential")


class BertNextSentencePrediction:
    """Next-sentence prediction with a `HookedEncoder` that has the NSP head: does sentence B
    follow sentence A? (Devlin et al. 2019, BERT's second pre-training task.)

    Runs ``encoder_output`` -> ``pooler`` (tanh of the [CLS] position) -> ``nsp_head``, giving
    logits ``[b, 2]``: index 0 means "B follows A", 1 "it does not". The wrapped model's hooks
    are its hooks (``pooler.hook_pooler_out``, ``nsp_head.hook_nsp_out`` included)::

        nsp = BertNextSentencePrediction.from_pretrained("bert-base-cased")
        nsp(["She went to the store.", "She bought an apple."], return_type="predictions")
    """

    def __init__(self, model: HookedEncoder) -> None:
        if getattr(model, "has_nsp_head", True) is False:
            raise ValueError(
                "This HookedEncoder has no next-sentence head (pooler + nsp_head): load a "
                "BertForPreTraining or BertForNextSentencePrediction checkpoint, or pass "
                "nsp_head=True to HookedEncoder.from_pretrained."
            )
        self.model = model

    @classmethod
    def from_pretrained(
        cls, model_name: str | os.PathLike[str], **kwargs: Any
    ) -> BertNextSentencePrediction:
        """Load a BERT checkpoint with its next-sentence head (``BertForPreTraining``,
        ``BertForNextSentencePrediction``); `kwargs` go to `HookedEncoder.from_pretrained`."""
        kwargs.setdefault("nsp_head", True)
        return cls(HookedEncoder.from_pretrained(model_name, **kwargs))

    @property
    def cfg(self) -> TransformerConfig:
        return self.model.cfg  # type: ignore[no-any-return]

    def __call__(
        self,
        input: list[str] | Tensor,
        return_type: str | None = "logits",
        token_type_ids: Tensor | None = None,
        one_zero_attention_mask: Tensor | None = None,
    ) -> Any:
        return self.forward(input, return_type, token_type_ids, one_zero_attention_mask)

    def to_tokens(
        self, input: list[str], move_to_device: bool = True, truncate: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(tokens, token_type_ids, attention_mask)`` ``[1, pos]`` of a sentence pair
        ``[A, B]``, encoded as ``[CLS] A [SEP] B [SEP]`` by the tokenizer (cut to ``n_ctx``
        when `truncate`)."""
        if not isinstance(input, list | tuple) or len(input) != 2:
            raise ValueError(
                "Next sentence prediction task requires exactly two sentences: pass a list "
                f"[sentence_a, sentence_b], got {input!r}."
            )
        if self.model.tokenizer is None:
            raise ValueError(
                "This model has no tokenizer; pass token ids with token_type_ids, or attach "
                "one with model.set_tokenizer(tokenizer)."
            )
        encoded = self.model.tokenizer(
            input[0],
            input[1],
            return_tensors="pt",
            padding=True,
            truncation=truncate,
            max_length=self.model.cfg.n_ctx if truncate else None,
        )
        out = encoded["input_ids"], encoded["token_type_ids"], encoded["attention_mask"]
        if move_to_device and self.model.cfg.device is not None:
            return tuple(t.to(self.model.cfg.device) for t in out)  # type: ignore[return-value]
        return out

    def forward(
        self,
        input: list[str] | Tensor,
        return_type: str | None = "logits",
        token_type_ids: Tensor | None = None,
        one_zero_attention_mask: Tensor | None = None,
    ) -> Any:
        """Next-sentence logits ``[b, 2]`` (`return_type="logits"`), the verdict as text
        (``"predictions"``: one string per row, a single string for one pair), or None.

        `input` is a sentence pair ``[A, B]`` (tokenized with its token types and mask) or token
        ids ``[b, p]``; ids need `token_type_ids` (0 for A's tokens, 1 for B's), without which
        the pair would be read as one sentence.
        """
        if return_type not in NSP_RETURN_TYPES:
            raise ValueError(f"return_type must be one of {NSP_RETURN_TYPES}, got {return_type!r}.")
        if isinstance(input, list | tuple):
            tokens, types, mask = self.to_tokens(list(input))
            token_type_ids = types if token_type_ids is None else token_type_ids
            if one_zero_attention_mask is None:
                one_zero_attention_mask = mask
        elif isinstance(input, Tensor):
            if token_type_ids is None:
                raise ValueError(
                    "You are using the NSP task without specifying token_type_ids: token ids "
                    "alone read as one sentence. Pass token_type_ids (0 for sentence A's "
                    "tokens, 1 for B's), or the pair as a list of two strings."
                )
            tokens = input
        else:
            raise TypeError(
                f"input must be a pair of sentences or token ids [batch, pos], got "
                f"{type(input).__name__}."
            )
        resid = self.model.encoder_output(tokens, token_type_ids, one_zero_attention_mask)
        logits = self.model.nsp_head(self.model.pooler(resid))
        if return_type is None:
            return None
        if return_type == "predictions":
            verdicts = [NSP_PREDICTIONS[i] for i in logits.argmax(dim=-1).tolist()]
            return verdicts[0] if len(verdicts) == 1 else verdicts
        return logits

    def run_with_cache(
        self,
        *model_args: Any,
        return_cache_object: bool = True,
        remove_batch_dim: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, Any]:
        """`forward` with the wrapped model's activations cached: ``(logits, cache)``.
        `kwargs` are `HookedEncoder.run_with_cache`'s (``names_filter``, ``device``, ...) and
        `forward`'s."""
        from anatomist.cache import ActivationCache

        model = self.model
        own = isinstance(model, nn.Module) and "forward" not in vars(model)
        original = model.forward
        model.forward = self.forward  # type: ignore[method-assign, assignment]
        try:
            out, cache_dict = model.run_with_cache(
                *model_args, remove_batch_dim=remove_batch_dim, return_cache_object=False, **kwargs
            )
        finally:
            if own:
                del model.forward
            else:
                model.forward = original  # type: ignore[method-assign]
        if return_cache_object:
            return out, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)
        return out, cache_dict


def _key_mask(
    one_zero_attention_mask: Tensor | None, shape: torch.Size, device: torch.device
) -> Tensor | None:
    """Boolean ``[b, 1, 1, k]`` (True = a real key every query may attend to), or None when
    nothing is padded. The mask must be 0/1 of the tokens' shape."""
    if one_zero_attention_mask is None:
        return None
    mask = check_attention_mask(one_zero_attention_mask, tuple(shape), "one_zero_attention_mask")
    if mask is None:
        return None
    keys = mask.to(device).bool()[:, None, None, :]
    # A row with no real token at all would give an all-masked softmax (NaN in SDPA); let it
    # attend everywhere instead: nothing real reads it.
    return keys | ~keys.any(-1, keepdim=True)
