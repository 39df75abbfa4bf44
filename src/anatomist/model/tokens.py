"""Tokenizer helpers of the classic interface, as mixins for the models.

BOS handling: with ``prepend_bos`` the BOS id is put in front of each row unless the row already
starts with it, so it is never doubled, whether or not the tokenizer adds BOS on its own.
Padded batches come with an attention mask that the model uses for positions, attention and loss.
Encoders and encoder-decoders (`SpecialTokensMixin`) let the tokenizer add its own special
tokens instead (``[CLS] ... [SEP]``, ``... </s>``).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import numpy as np
import torch
from torch import Tensor

TextInput = str | list[str]


class NoTokenizerError(ValueError, AssertionError):
    """Text was given (or decoding asked for) but the model has no tokenizer. Also an
    AssertionError, which the classic library raised."""


class TokenizerLoadError(ValueError, OSError):
    """``cfg.tokenizer_name`` names no tokenizer that can be loaded here (not a local folder, not
    in the Hugging Face cache while offline, ...). Also an OSError, which transformers raised."""


def load_tokenizer(name: str, trust_remote_code: bool = False) -> Any:
    """The Hugging Face tokenizer `name` (a local folder or a repo id: the local cache first,
    the Hub when online), for ``HookedTransformer(cfg)`` with ``cfg.tokenizer_name`` set."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise TokenizerLoadError(
            f"cfg.tokenizer_name={name!r}: cannot load this tokenizer ({type(error).__name__}: "
            f"{error}). Give a local folder holding the tokenizer files, a repo id in the local "
            "Hugging Face cache (or go online), or pass tokenizer=... to HookedTransformer."
        ) from error


class SampleDatasetError(ValueError):
    """`sample_datapoint` has no texts to sample from: ``model.dataset`` is unset (anatomist
    never downloads the classic sample datasets)."""


class TokenizerMixin:
    tokenizer: Any
    cfg: Any
    dataset: Any = None  # texts `sample_datapoint` draws from (a list, or rows with "text")

    def set_tokenizer(self, tokenizer: Any, default_padding_side: str | None = None) -> None:
        """Attach a Hugging Face tokenizer; records whether it adds BOS by itself.

        As in the classic library, a tokenizer without a pad token gets its EOS token as pad
        token (the tokenizer object is changed), and ``cfg.d_vocab = -1`` (with
        ``d_vocab_out = -1``) takes the tokenizer's vocabulary size. `default_padding_side`
        ("left" or "right") becomes ``cfg.default_padding_side``; None keeps it.
        """
        if default_padding_side not in ("left", "right", None):
            from anatomist.config import ConfigError

            raise ConfigError(
                f"default_padding_side must be 'left', 'right' or None, got "
                f"{default_padding_side!r}.",
                "default_padding_side",
                default_padding_side,
            )
        self.tokenizer = tokenizer
        if tokenizer is None:
            return
        if default_padding_side is not None:
            self.cfg.default_padding_side = default_padding_side
        if getattr(tokenizer, "pad_token", None) is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        bos = tokenizer.bos_token_id
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.cfg.tokenizer_prepends_bos = bos is not None and len(ids) > 0 and ids[0] == bos
        if self.cfg.tokenizer_name is None:
            self.cfg.tokenizer_name = getattr(tokenizer, "name_or_path", None)
        if self.cfg.d_vocab == -1:
            self.cfg.d_vocab = max(tokenizer.get_vocab().values()) + 1
        if self.cfg.d_vocab_out == -1:
            self.cfg.d_vocab_out = self.cfg.d_vocab

    def load_sample_training_dataset(self, **kwargs: Any) -> Any:
        """Classic: download a sample of the model's training data into ``model.dataset``.
        anatomist never downloads, so this only returns ``model.dataset`` once you have set it
        (a list of texts, or a ``datasets.Dataset`` with a "text" column)."""
        if self.dataset is None:
            raise SampleDatasetError(
                "model.dataset is not set and anatomist does not download sample datasets; set "
                "model.dataset = [text, ...] (or a datasets.Dataset with a 'text' column), e.g. "
                "datasets.load_dataset(...)['train'] from a local copy."
            )
        return self.dataset

    def sample_datapoint(
        self,
        tokenize: bool = False,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
    ) -> str | Tensor:
        """A random text from ``model.dataset`` (numpy's global generator picks it, as in the
        classic library), or its tokens ``[1, pos]`` (truncated to n_ctx) with `tokenize`."""
        dataset = self.load_sample_training_dataset()
        if len(dataset) == 0:
            raise SampleDatasetError("model.dataset is empty; give it at least one text.")
        row = dataset[int(np.random.randint(0, len(dataset)))]
        text = row if isinstance(row, str) else row["text"]
        if not tokenize:
            return str(text)
        return self.to_tokens(text, prepend_bos=prepend_bos, padding_side=padding_side)

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise NoTokenizerError(
                "This model has no tokenizer; pass token ids, or attach one with "
                "model.set_tokenizer(tokenizer)."
            )
        return self.tokenizer

    @property
    def _pad_token_id(self) -> int:
        tok = self._require_tokenizer()
        for candidate in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    def tokenize_with_mask(
        self,
        input: TextInput,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        truncate: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Token ids ``[batch, pos]`` and the attention mask (None when nothing is padded)."""
        tok = self._require_tokenizer()
        texts = _texts(input)
        prepend = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        side = self._padding_side(padding_side)
        bos = tok.bos_token_id
        rows: list[list[int]] = []
        for text in texts:
            ids = list(tok(text, add_special_tokens=False)["input_ids"])
            if prepend and bos is not None and (not ids or ids[0] != bos):
                ids = [bos, *ids]
            if truncate and len(ids) > self.cfg.n_ctx:
                ids = ids[: self.cfg.n_ctx]
            rows.append(ids)
        tokens, mask = _pad_rows(rows, self._pad_token_id, side)
        return tokens, (None if bool(mask.all()) else mask)

    def _padding_side(self, padding_side: str | None) -> str:
        side = padding_side or self.cfg.default_padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
        return str(side)

    def to_tokens(
        self,
        input: TextInput,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> Tensor:
        """Token ids ``[batch, pos]`` for a string or list of strings."""
        tokens, _ = self.tokenize_with_mask(input, prepend_bos, padding_side, truncate)
        return tokens.to(self.cfg.device) if move_to_device and self.cfg.device else tokens

    def to_string(self, tokens: Tensor | list[int] | Any) -> str | list[str]:
        """Decode ids: ``[pos]`` -> str, ``[batch, pos]`` -> list of str."""
        tok = self._require_tokenizer()
        tokens = torch.as_tensor(tokens)
        self._check_ids(tokens, "tokens")
        if tokens.dim() == 0:
            tokens = tokens[None]
        if tokens.dim() == 1:
            return tok.decode(tokens.tolist(), clean_up_tokenization_spaces=False)
        return [tok.decode(row.tolist(), clean_up_tokenization_spaces=False) for row in tokens]

    def to_str_tokens(
        self,
        input: TextInput | Tensor | list[int],
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
    ) -> list[str] | list[list[str]]:
        """Each token as its own string. A list of strings or a 2-D batch gives a list per row."""
        tok = self._require_tokenizer()
        if isinstance(input, list) and input and isinstance(input[0], str):
            return [self.to_str_tokens(s, prepend_bos, padding_side) for s in input]  # type: ignore[misc,return-value]
        if isinstance(input, str):
            ids = self.tokenize_with_mask(input, prepend_bos, padding_side)[0][0]
        else:
            ids = torch.as_tensor(input)
            self._check_ids(ids, "input")
            if ids.dim() == 2 and ids.shape[0] > 1:
                return [self.to_str_tokens(row) for row in ids]  # type: ignore[misc,return-value]
            ids = ids.reshape(-1)
        return [tok.decode([t], clean_up_tokenization_spaces=False) for t in ids.tolist()]

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (error otherwise)."""
        ids = self.tokenize_with_mask(string, prepend_bos=False)[0][0]
        if ids.numel() != 1:
            pieces = self.to_str_tokens(ids)
            raise ValueError(f"{string!r} is {ids.numel()} tokens, not one: {pieces}.")
        return int(ids[0])

    def to_single_str_token(self, int_token: int) -> str:
        tok = self._require_tokenizer()
        self._check_ids(torch.as_tensor(int(int_token)), "int_token")
        return tok.decode([int(int_token)], clean_up_tokenization_spaces=False)  # type: ignore[no-any-return]

    def _check_ids(self, ids: Tensor, name: str) -> None:
        """Refuse ids outside ``[0, d_vocab)`` (a tokenizer would decode them into an error of
        its own, or into nothing)."""
        if ids.numel() and not (ids.is_floating_point() or ids.dtype == torch.bool):
            check_token_ids(ids, self.cfg.d_vocab, name)

    def get_token_position(
        self,
        single_token: str | int,
        input: str | Tensor,
        mode: str = "first",
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
    ) -> int:
        """Index of `single_token` in `input` (a string or one row of ids), first or last match."""
        if mode not in ("first", "last"):
            raise ValueError(f"mode must be 'first' or 'last', got {mode!r}.")
        if isinstance(input, str):
            tokens = self.tokenize_with_mask(input, prepend_bos, padding_side)[0]
        else:
            tokens = torch.as_tensor(input)
        if tokens.dim() == 2:
            if tokens.shape[0] != 1:
                raise ValueError(f"Expected one row of tokens, got a batch of {tokens.shape[0]}.")
            tokens = tokens[0]
        token = (
            self.to_single_token(single_token) if isinstance(single_token, str) else single_token
        )
        hits = (tokens.cpu() == int(token)).nonzero().flatten()
        if hits.numel() == 0:
            raise ValueError(f"Token {single_token!r} does not occur in the input.")
        return int(hits[0] if mode == "first" else hits[-1])


class SpecialTokensMixin(TokenizerMixin):
    """Tokenizing the way the tokenizer does by itself, special tokens included (BERT, T5):
    ``prepend_bos`` here means "add the tokenizer's special tokens"."""

    def _encode(
        self,
        input: TextInput,
        add_special_tokens: bool | None = None,
        padding_side: str | None = None,
        truncate: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Token ids, token types and attention mask, each ``[batch, pos]``.

        `add_special_tokens` (default ``cfg.default_prepend_bos``) wraps each text the way the
        tokenizer does (BERT: ``[CLS] text [SEP]``, T5: ``text </s>``); rows are padded on
        `padding_side` (default right, which keeps absolute positions the same as for the row
        alone). Token types are all 0 when the tokenizer gives none.
        """
        tok = self._require_tokenizer()
        special = self.cfg.default_prepend_bos if add_special_tokens is None else add_special_tokens
        side = self._padding_side(padding_side)
        rows, type_rows = [], []
        for text in _texts(input):
            enc = tok(
                text,
                add_special_tokens=special,
                truncation=truncate,
                max_length=self.cfg.n_ctx if truncate else None,
            )
            ids = list(enc["input_ids"])
            rows.append(ids)
            type_rows.append(list(enc.get("token_type_ids") or [0] * len(ids)))
        tokens, mask = _pad_rows(rows, self._pad_token_id, side)
        types, _ = _pad_rows(type_rows, 0, side)
        return tokens, types, mask

    def tokenize_with_mask(
        self,
        input: TextInput,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        truncate: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Token ids and the attention mask (None when nothing is padded); `prepend_bos` means
        adding the tokenizer's own special tokens."""
        tokens, _, mask = self._encode(input, prepend_bos, padding_side, truncate)
        return tokens, (None if bool(mask.all()) else mask)


# --- checks on token ids and masks ---------------------------------------------------------------
# Every entry point that takes ids or a mask goes through these, so a bad value fails here with its
# name, and never as a bare IndexError deep in the model or, worse, as a silently different answer
# (-1 indexes the last row of W_E; a mask value of 2 shifts every later position by one).


class TokenIdError(ValueError, IndexError):
    """A token id outside ``[0, d_vocab)``. Also an IndexError, which indexing the embedding
    with it raised before, so code that caught that keeps working."""


def token_batch(tokens: Tensor, name: str = "input") -> Tensor:
    """Token ids as a ``[batch, pos]`` tensor of int64 or int32 (what indexing accepts as ids).

    A 1-D tensor is one row, as in the classic library. Anything else is refused, naming `name`:
    other shapes (a 3-D tensor used to be flattened into one long row), empty tensors, and
    bool, float or complex tensors (uint8 would index the embedding as a boolean mask).
    """
    if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
        raise ValueError(
            f"{name} must be integer token ids, got a {tokens.dtype} tensor of shape "
            f"{tuple(tokens.shape)}."
        )
    if tokens.dim() not in (1, 2):
        raise ValueError(
            f"{name} must be token ids [batch, pos] (or one row [pos]), got shape "
            f"{tuple(tokens.shape)}; reshape it to [batch, pos] yourself if the rows are meant "
            "to be concatenated or stacked."
        )
    if tokens.numel() == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(tokens.shape)}): it needs at least one row and one "
            "position."
        )
    if tokens.dim() == 1:
        tokens = tokens[None]
    return tokens if tokens.dtype in (torch.int64, torch.int32) else tokens.long()


def check_token_ids(
    ids: Tensor, limit: int, name: str = "input", limit_name: str = "d_vocab"
) -> None:
    """Raise `TokenIdError` unless every id is in ``[0, limit)``.

    One reduction when all is well (its two results read back as Python numbers: ~2 us on a
    CPU, cheaper than comparing them as tensors); the offending id and its position are looked
    up only after a failure.
    """
    low, high = torch.aminmax(ids)
    if low.item() < 0 or high.item() >= limit:
        raise TokenIdError(_token_id_message(ids, limit, name, limit_name))


def _token_id_message(ids: Tensor, limit: int, name: str, limit_name: str) -> str:
    bad = ((ids < 0) | (ids >= limit)).nonzero()
    index = bad[0].tolist()
    value = int(ids[tuple(index)])
    if len(index) == 2:
        where = f"(batch {index[0]}, pos {index[1]})"
    else:
        where = f"index {tuple(index)}" if index else "(a scalar)"
    count = f"; {len(bad)} ids in all are out of range" if len(bad) > 1 else ""
    if value < 0:
        hint = (
            " Negative ids are often padding or ignore markers: put the pad token id there and "
            "0 in attention_mask."
        )
    else:
        hint = " Were these ids made by another model's tokenizer?"
    return (
        f"{name} holds token id {value} at {where}, outside [0, {limit_name}={limit}){count}.{hint}"
    )


def check_attention_mask(
    mask: Tensor, shape: tuple[int, ...], name: str = "attention_mask", note: str = ""
) -> Tensor | None:
    """A 0/1 mask of exactly `shape` as int64, or None when nothing is masked.

    Integer, bool and float masks are accepted when every value is 0 (padding) or 1 (a real
    token); anything else is refused, naming `name`, the expected and given shape or the bad
    values. An integer mask costs one reduction, which also answers "is anything masked".
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a tensor [batch, pos] of 0 and 1, got {type(mask)}.")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have the tokens' shape {tuple(shape)} (one 0/1 per token: 1 = real "
            f"token, 0 = padding){note}, got shape {tuple(mask.shape)}."
        )
    # Float masks are checked before the cast below, which would truncate 0.5 to 0.
    floating = mask.is_floating_point() or mask.is_complex()
    if floating and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError(_mask_values_message(mask, name))
    mask = mask.long()
    low, high = torch.aminmax(mask)
    if low.item() < 0 or high.item() > 1:
        raise ValueError(_mask_values_message(mask, name))
    return None if low.item() == 1 else mask


def _mask_values_message(mask: Tensor, name: str) -> str:
    values = mask[(mask != 0) & (mask != 1)].unique()
    shown = ", ".join(str(v) for v in values[:5].tolist())
    return (
        f"{name} must hold only 0 (padding) and 1 (real token), got {shown}"
        f"{' ...' if len(values) > 5 else ''}: positions count the 1s, so other values would "
        "shift them."
    )


def leading_pad_mask(tokens: Tensor, pad_id: int, keep_last_pad: bool = False) -> Tensor:
    """The mask of left-padded ids given without one: 0 on each row's leading run of `pad_id`,
    1 from the first other id on, so a pad id inside the text (often the EOS) stays a token.

    `keep_last_pad`: the last leading pad is the row's BOS (when BOS and pad share an id and BOS
    is prepended) and stays unmasked. This is how the classic library read left-padded ids.
    """
    mask = (tokens != pad_id).cumsum(-1).clamp(max=1)  # [b, p]
    if keep_last_pad:
        last_pad = ((mask == 0).sum(-1) - 1).clamp(min=0)  # [b]; 0 for rows with no padding
        mask = mask.scatter(1, last_pad[:, None], 1)
    return mask


def _texts(input: TextInput) -> list[str]:
    texts = [input] if isinstance(input, str) else list(input)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError("Expected a string or a non-empty list of strings.")
    return texts


def _pad_rows(rows: list[list[int]], pad: int, side: str) -> tuple[Tensor, Tensor]:
    """Rows of ids padded to one length on `side`: ``(ids, mask)``, each ``[batch, pos]``."""
    length = max(len(r) for r in rows)
    tokens = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, ids in enumerate(rows):
        span = slice(length - len(ids), length) if side == "left" else slice(0, len(ids))
        tokens[i, span] = torch.tensor(ids, dtype=torch.long)
        mask[i, span] = 1
    return tokens, mask


# --- the classic module-level tokenizer helpers (utils.get_attention_mask, ...) -------------------


def get_attention_mask(tokenizer: Any, tokens: Tensor, prepend_bos: bool) -> Tensor:
    """The 0/1 mask of ids padded by `tokenizer` on its ``padding_side``, like `tokens`.

    Only the padding run at the padded end counts (trailing pads for ``"right"``, leading pads
    otherwise), so a pad id inside the text, often the EOS, stays a token. When BOS and pad share
    an id and `prepend_bos`, a left-padded row's last leading pad is its BOS and stays unmasked.
    Without a tokenizer, or a pad token, every token counts.
    """
    pad = None if tokenizer is None else tokenizer.pad_token_id
    if pad is None:
        return torch.ones_like(tokens)
    if tokenizer.padding_side == "right":
        return leading_pad_mask(tokens.flip(-1), pad).flip(-1).to(tokens.dtype)
    keep_bos = bool(prepend_bos) and tokenizer.bos_token_id == pad
    return leading_pad_mask(tokens, pad, keep_last_pad=keep_bos).to(tokens.dtype)


def get_input_with_manually_prepended_bos(bos_token: str, input: TextInput) -> TextInput:
    """`input` (a string or a list of strings) with `bos_token` written in front of each text."""
    if isinstance(input, str):
        return bos_token + input
    return [bos_token + text for text in input]


def get_tokens_with_bos_removed(tokenizer: Any, tokens: Tensor) -> Tensor:
    """`tokens` ``[..., pos]`` without each row's BOS, one position shorter.

    With ``tokenizer.padding_side == "right"`` the BOS is the first token of each row. Left
    padded, it is the first BOS id of the row or, when BOS and pad share an id, the last of the
    row's leading pads. A left-padded row without a BOS is an error (the classic removed its first
    token instead).
    """
    if tokenizer.padding_side == "right":
        return tokens[..., 1:]
    rows = tokens.reshape(-1, tokens.shape[-1])  # [rows, pos]
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    if bos == pad:
        position = (rows != pad).cumsum(-1).eq(0).sum(-1) - 1  # [rows]: the last leading pad
        missing = position < 0
    else:
        is_bos = rows == bos
        position, missing = is_bos.int().argmax(-1), ~is_bos.any(-1)
    if bool(missing.any()):
        row = int(missing.nonzero()[0])
        raise ValueError(
            f"tokens row {row} holds no BOS (id {bos}) to remove; were they tokenized with "
            "prepend_bos=False, or padded on the right (set tokenizer.padding_side)?"
        )
    keep = torch.ones_like(rows, dtype=torch.bool).scatter(-1, position[:, None], False)
    return rows[keep].reshape(*tokens.shape[:-1], tokens.shape[-1] - 1)


def get_tokenizer_with_bos(tokenizer: Any) -> Any:
    """A copy of `tokenizer` that adds BOS itself (Llama-style ``add_bos_token=True``), or
    `tokenizer` when it already does or has no BOS token.

    anatomist's models prepend BOS themselves and never twice, so they do not need this; it is
    kept for code that tokenizes with the tokenizer directly. A tokenizer that cannot be switched
    (``add_bos_token`` has no effect on it) is an error rather than a silent no-op.
    """
    if tokenizer.bos_token_id is None or _adds_bos(tokenizer):
        return tokenizer
    switched = copy.deepcopy(tokenizer)
    with contextlib.suppress(AttributeError):  # a read-only attribute: checked just below
        switched.add_bos_token = True
    if not _adds_bos(switched):
        raise ValueError(
            f"{type(tokenizer).__name__} does not add BOS even with add_bos_token=True; prepend "
            "it yourself (get_input_with_manually_prepended_bos) or let the model do it "
            "(prepend_bos=True)."
        )
    return switched


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == tokenizer.bos_token_id
