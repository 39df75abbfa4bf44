"""A key/value cache for incremental runs: ``model(new_tokens, past_kv_cache=cache)``.

The cache holds, per layer, the keys and values of every token seen so far (after rotary, with
the key/value heads of grouped-query attention, not repeated), and the attention mask of those
tokens, from which the next tokens' positions follow: a row's positions count only its real
tokens, the same rule as a padded forward without a cache. So::

    cache = KVCache.init_cache(model.cfg, model.cfg.device, batch_size=2)
    logits = model(prompt, attention_mask=prompt_mask, past_kv_cache=cache)   # fills the cache
    logits = model(next_tokens, past_kv_cache=cache)                          # [2, 1] more

computes the same logits for the new tokens as one forward over the whole sequence. The
`attention_mask` passed with a cache covers the new tokens only (``[b, new]``); without one the
new tokens are all real. Every run extends the cache unless it is frozen (`freeze`), as in the
classic library; `clone` copies it (cheaply: the tensors are never edited in place).

Sliding-window layers keep every key and mask those outside the window. Dynamic-NTK and LongRoPE
frequencies follow each step's largest position, as Hugging Face's DynamicCache: the keys already
cached keep the frequencies they were rotated with, so once a sequence grows past the pretraining
length an incremental run differs from one full forward (whose every key uses the long
frequencies) exactly as it does in Hugging Face.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from anatomist.config import TransformerConfig


class KVCacheEntry:
    """One layer's cached keys and values.

    Stored as ``[b, n_kv_heads, pos, d_head]`` (`keys`, `values`: the layout the attention kernel
    reads, extended by `extend`); `past_keys`/`past_values` are the classic
    ``[b, pos, n_kv_heads, d_head]`` views, extended by the classic `append`. Build an empty one
    with `init_cache_entry`.
    """

    def __init__(self, past_keys: Tensor, past_values: Tensor, frozen: bool = False) -> None:
        if past_keys.dim() != 4 or past_keys.shape != past_values.shape:
            raise ValueError(
                "past_keys and past_values must both be [batch, pos, n_kv_heads, d_head], got "
                f"shapes {tuple(past_keys.shape)} and {tuple(past_values.shape)}."
            )
        self.keys = past_keys.transpose(1, 2)  # [b, kv, pos, dh]
        self.values = past_values.transpose(1, 2)
        self.frozen = frozen

    @classmethod
    def init_cache_entry(
        cls,
        cfg: TransformerConfig,
        device: torch.device | str | None = None,
        batch_size: int = 1,
    ) -> KVCacheEntry:
        """An empty entry for `batch_size` rows, in the model's dtype (``cfg.dtype``)."""
        n_kv_heads = cfg.n_key_value_heads if cfg.n_key_value_heads is not None else cfg.n_heads
        shape = (batch_size, 0, n_kv_heads, cfg.d_head)
        empty = torch.empty(shape, device=device, dtype=cfg.dtype)
        return cls(empty, empty.clone())

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]

    @property
    def length(self) -> int:
        return self.keys.shape[-2]

    @property
    def past_keys(self) -> Tensor:  # [b, pos, n_kv_heads, d_head]
        return self.keys.transpose(1, 2)

    @past_keys.setter
    def past_keys(self, value: Tensor) -> None:
        self.keys = value.transpose(1, 2)

    @property
    def past_values(self) -> Tensor:  # [b, pos, n_kv_heads, d_head]
        return self.values.transpose(1, 2)

    @past_values.setter
    def past_values(self, value: Tensor) -> None:
        self.values = value.transpose(1, 2)

    def extend(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """The cached keys and values followed by the new ones ``[b, kv, new, e]`` (the kernel's
        layout); stored unless frozen."""
        if keys.shape[0] != self.batch_size:
            raise ValueError(
                f"The cache holds {self.batch_size} rows but the input has {keys.shape[0]}."
            )
        keys = torch.cat([self.keys.to(keys.device, keys.dtype), keys], dim=-2)
        values = torch.cat([self.values.to(values.device, values.dtype), values], dim=-2)
        if not self.frozen:
            self.keys, self.values = keys, values
        return keys, values

    def append(self, new_keys: Tensor, new_values: Tensor) -> tuple[Tensor, Tensor]:
        """Classic: `extend` in the classic layout, ``[b, new, n_kv_heads, d_head]`` in,
        ``[b, pos + new, n_kv_heads, d_head]`` out."""
        keys, values = self.extend(new_keys.transpose(1, 2), new_values.transpose(1, 2))
        return keys.transpose(1, 2), values.transpose(1, 2)


class KVCache:
    """Keys and values of every layer plus the attention mask ``[b, cached]`` of the tokens seen.

    Build one with `init_cache`; pass it to ``forward(..., past_kv_cache=cache)``.
    """

    def __init__(
        self, entries: list[KVCacheEntry], previous_attention_mask: Tensor, frozen: bool = False
    ) -> None:
        self.entries = entries
        self.attention_mask = previous_attention_mask  # [b, cached]: 1 real token, 0 padding
        self.frozen = frozen

    @classmethod
    def init_cache(
        cls,
        cfg: TransformerConfig,
        device: torch.device | str | None = None,
        batch_size: int = 1,
    ) -> KVCache:
        """An empty cache for `batch_size` rows of a model with config `cfg`."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        device = device if device is not None else cfg.device
        entries = [
            KVCacheEntry.init_cache_entry(cfg, device, batch_size) for _ in range(cfg.n_layers)
        ]
        return cls(entries, torch.zeros(batch_size, 0, dtype=torch.long, device=device))

    @property
    def length(self) -> int:
        """How many positions (padding included) the cache holds."""
        return self.attention_mask.shape[1]

    @property
    def batch_size(self) -> int:
        return self.attention_mask.shape[0]

    # Classic name of the mask.
    @property
    def previous_attention_mask(self) -> Tensor:
        return self.attention_mask

    @previous_attention_mask.setter
    def previous_attention_mask(self, value: Tensor) -> None:
        self.attention_mask = value

    def __getitem__(self, layer: int) -> KVCacheEntry:
        return self.entries[layer]

    def __iter__(self) -> Iterator[KVCacheEntry]:
        return iter(self.entries)

    def freeze(self) -> None:
        """Runs read the cache but no longer extend it."""
        self.frozen = True
        for entry in self.entries:
            entry.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False
        for entry in self.entries:
            entry.frozen = False

    def clone(self) -> KVCache:
        """An independent copy: extending one does not extend the other."""
        entries = [KVCacheEntry(e.past_keys, e.past_values, e.frozen) for e in self.entries]
        return KVCache(entries, self.attention_mask, self.frozen)

    def append_attention_mask(self, attention_mask: Tensor) -> Tensor:
        """The mask of the cached tokens followed by `attention_mask` ``[b, new]``; stored unless
        frozen."""
        if attention_mask.dim() != 2 or attention_mask.shape[0] != self.batch_size:
            raise ValueError(
                f"With a cache of {self.batch_size} rows, attention_mask must be "
                f"[{self.batch_size}, new tokens], got shape {tuple(attention_mask.shape)}."
            )
        mask = attention_mask.to(self.attention_mask.device, torch.long)
        full = torch.cat([self.attention_mask, mask], dim=-1)
        if not self.frozen:
            self.attention_mask = full
        return full


# The classic names (2.x, then 3.x).
HookedTransformerKeyValueCache = KVCache
HookedTransformerKeyValueCacheEntry = KVCacheEntry
TransformerLensKeyValueCache = KVCache
TransformerLensKeyValueCacheEntry = KVCacheEntry
