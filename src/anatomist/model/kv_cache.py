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
classic library; `clone` copies it (cheaply: the copies share tensors until one is extended,
and a tensor read from an entry never changes afterwards).

Sliding-window layers (``cfg.window_for_layer(layer)`` not None) keep only the keys the next
token can see, the last ``window - 1``, as Hugging Face's sliding-window cache layers do, so
their memory stays at the window however long the sequence grows. Their keys are the last
``entry.length`` of the cache's ``length`` positions: the mask (kept whole, ``[b, length]``)
and the key positions are sliced to match in `Attention`, and a hook on their scores or pattern
during a cached run sees those keys only. Dynamic-NTK and LongRoPE
frequencies follow each step's largest position, as Hugging Face's DynamicCache: the keys already
cached keep the frequencies they were rotated with, so once a sequence grows past the pretraining
length an incremental run differs from one full forward (whose every key uses the long
frequencies) exactly as it does in Hugging Face.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from anatomist.config import TransformerConfig


class KVCacheEntry:
    """One layer's cached keys and values.

    Stored as ``[b, n_kv_heads, pos, d_head]`` (`keys`, `values`: the layout the attention kernel
    reads, extended by `extend`); `past_keys`/`past_values` are the classic
    ``[b, pos, n_kv_heads, d_head]`` views, extended by the classic `append`. Build an empty one
    with `init_cache_entry`.

    The keys live in a buffer with room to grow, so a step writes its new keys once instead of
    copying the whole cache (``torch.cat``); a full buffer is replaced by a larger one. Only the
    room past the held keys is ever written, so a tensor read from the entry earlier never
    changes. With a `window` (a sliding-window layer) the entry keeps, after each step, only
    the last ``window - 1`` keys, which are all the next query can see (it sees itself too); a
    step of several tokens still gets every key its first query sees, and is trimmed after.
    """

    def __init__(
        self,
        past_keys: Tensor,
        past_values: Tensor,
        frozen: bool = False,
        window: int | None = None,
    ) -> None:
        if past_keys.dim() != 4 or past_keys.shape != past_values.shape:
            raise ValueError(
                "past_keys and past_values must both be [batch, pos, n_kv_heads, d_head], got "
                f"shapes {tuple(past_keys.shape)} and {tuple(past_values.shape)}."
            )
        if window is not None and window < 1:
            raise ValueError(f"window must be None or >= 1, got {window}.")
        self.window = window
        self.frozen = frozen
        self._hold(past_keys.transpose(1, 2), past_values.transpose(1, 2))

    def _hold(self, keys: Tensor, values: Tensor) -> None:
        """Hold `keys`/`values` ``[b, kv, pos, d_head]`` as they are: tensors from outside,
        never written to (the next `extend` moves them to a buffer of its own)."""
        self._k_buf, self._v_buf = keys, values  # [b, kv, capacity, dh]
        self._start, self._end = 0, keys.shape[-2]  # the held keys are buf[..., start:end, :]
        self._owns_buffer = False  # whether the room past `_end` may be written in place

    @classmethod
    def init_cache_entry(
        cls,
        cfg: TransformerConfig,
        device: torch.device | str | None = None,
        batch_size: int = 1,
        window: int | None = None,
    ) -> KVCacheEntry:
        """An empty entry for `batch_size` rows, in the model's dtype (``cfg.dtype``); `window`
        is the layer's sliding window (``cfg.window_for_layer(layer)``), None to keep every key."""
        n_kv_heads = cfg.n_key_value_heads if cfg.n_key_value_heads is not None else cfg.n_heads
        shape = (batch_size, 0, n_kv_heads, cfg.d_head)
        empty = torch.empty(shape, device=device, dtype=cfg.dtype)
        return cls(empty, empty.clone(), window=window)

    @property
    def batch_size(self) -> int:
        return self._k_buf.shape[0]

    @property
    def length(self) -> int:
        """How many keys the entry holds (at most ``window - 1`` on a sliding-window layer)."""
        return self._end - self._start

    @property
    def keys(self) -> Tensor:  # [b, kv, pos, dh]
        return self._k_buf[..., self._start : self._end, :]

    @keys.setter
    def keys(self, value: Tensor) -> None:
        self._hold(value, self.values)

    @property
    def values(self) -> Tensor:  # [b, kv, pos, dh]
        return self._v_buf[..., self._start : self._end, :]

    @values.setter
    def values(self, value: Tensor) -> None:
        self._hold(self.keys, value)

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
        """The held keys and values followed by the new ones ``[b, kv, new, e]`` (the kernel's
        layout); stored unless frozen (then trimmed to the window)."""
        if keys.shape[0] != self.batch_size:
            raise ValueError(
                f"The cache holds {self.batch_size} rows but the input has {keys.shape[0]}."
            )
        if self.frozen or _needs_grad(keys, values, self._k_buf, self._v_buf):
            # No writes into a buffer that autograd may have saved: a new tensor each step.
            all_k = torch.cat([self.keys.to(keys.device, keys.dtype), keys], dim=-2)
            all_v = torch.cat([self.values.to(values.device, values.dtype), values], dim=-2)
            if not self.frozen:
                self._hold(all_k, all_v)
                self._trim()
            return all_k, all_v
        new = keys.shape[-2]
        if not self._has_room(keys, new):
            self._move_to_new_buffer(
                self.keys.to(keys.device, keys.dtype),
                self.values.to(values.device, values.dtype),
                new,
            )
        end = self._end + new
        self._k_buf[..., self._end : end, :] = keys
        self._v_buf[..., self._end : end, :] = values
        self._end = end
        all_k, all_v = self.keys, self.values  # [b, kv, held + new, dh]
        self._trim()
        return all_k, all_v

    def _has_room(self, keys: Tensor, new: int) -> bool:
        """Whether `new` keys like `keys` can be written in place after the held ones."""
        buf = self._k_buf
        return (
            self._owns_buffer
            and self._end + new <= buf.shape[-2]
            and buf.device == keys.device
            and buf.dtype == keys.dtype
            # An inference-mode tensor can be written to only in inference mode.
            and (not buf.is_inference() or torch.is_inference_mode_enabled())
        )

    def _move_to_new_buffer(self, held_k: Tensor, held_v: Tensor, new: int) -> None:
        """Copy the held keys to the front of a new buffer with room for `new` more and some
        slack: half again what it holds (at least 64), so growing costs amortized O(1) copies
        per key; a sliding-window layer's slack is at most its window, its buffer about twice
        the window however long the sequence."""
        held = held_k.shape[-2]
        slack = max(64, (held + new) // 2)
        if self.window is not None:
            slack = min(slack, max(self.window, 1))
        capacity = held + new + slack
        b, kv, _, dh = held_k.shape
        self._k_buf = held_k.new_empty(b, kv, capacity, dh)
        self._v_buf = held_v.new_empty(b, kv, capacity, held_v.shape[-1])
        self._k_buf[..., :held, :] = held_k
        self._v_buf[..., :held, :] = held_v
        self._start, self._end, self._owns_buffer = 0, held, True

    def _trim(self) -> None:
        """Drop the keys the next query can no longer see (sliding-window layers)."""
        if self.window is not None:
            self._start = max(self._start, self._end - (self.window - 1))

    def clone(self) -> KVCacheEntry:
        """An independent copy, sharing the held tensors until either is extended."""
        copy = KVCacheEntry(self.past_keys, self.past_values, self.frozen, self.window)
        self._owns_buffer = False  # both would write to the same room: the next write moves
        return copy

    def append(self, new_keys: Tensor, new_values: Tensor) -> tuple[Tensor, Tensor]:
        """Classic: `extend` in the classic layout, ``[b, new, n_kv_heads, d_head]`` in,
        ``[b, pos + new, n_kv_heads, d_head]`` out."""
        keys, values = self.extend(new_keys.transpose(1, 2), new_values.transpose(1, 2))
        return keys.transpose(1, 2), values.transpose(1, 2)


def _needs_grad(*tensors: Tensor) -> bool:
    return any(t.requires_grad for t in tensors)


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
        layer_devices: Sequence[torch.device | str] | None = None,
    ) -> KVCache:
        """An empty cache for `batch_size` rows of a model with config `cfg`, on `device`
        (the attention mask, and the layers unless `layer_devices` gives each layer its own:
        a model split over devices, ``[block.placed_on for block in model.blocks]``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        device = device if device is not None else cfg.device
        if layer_devices is not None and len(layer_devices) != cfg.n_layers:
            raise ValueError(
                f"layer_devices gives {len(layer_devices)} devices for {cfg.n_layers} layers."
            )
        entries = [
            KVCacheEntry.init_cache_entry(
                cfg,
                device if layer_devices is None else layer_devices[layer],
                batch_size,
                cfg.window_for_layer(layer),
            )
            for layer in range(cfg.n_layers)
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
        return KVCache([e.clone() for e in self.entries], self.attention_mask, self.frozen)

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
