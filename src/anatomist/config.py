"""`TransformerConfig`: everything the native model needs to know about an architecture.

Families (``anatomist.families``) build one from a checkpoint's own config.json; researchers build
one by hand to train toy models. Field names follow the classic ``HookedTransformerConfig`` so
existing code that reads ``model.cfg.d_model`` and friends keeps working.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

NORMALIZATION_TYPES = ("LN", "LNPre", "RMS", "RMSPre", None)
POSITIONAL_EMBEDDING_TYPES = (
    "standard",
    "shortformer",
    "rotary",
    "alibi",
    "relative_positional_bias",
    "none",
)
ACTIVATION_FUNCTIONS = (
    "gelu",
    "gelu_new",
    "gelu_fast",
    "gelu_pytorch_tanh",
    "relu",
    "silu",
    "solu_ln",
    "quick_gelu",  # x * sigmoid(1.702 x) (GPT-OSS experts' gate)
    "xielu",  # learned alphas on each MLP (Apertus)
)


# Classic ``init_mode`` values: how `HookedTransformer.init_weights` draws the weight matrices.
# NORMAL_INIT ("gpt2", the classic name) draws every matrix from N(0, init_range).
NORMAL_INIT = "gpt2"
INIT_MODES = (
    NORMAL_INIT,
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "muP",
)


class ConfigError(ValueError, AssertionError):
    """A model configuration is invalid: a field has a value no model can have (a head count of
    0, a negative epsilon, an unknown activation), or a config.json cannot be read as one.

    `field` is the offending `TransformerConfig` field (or config.json key), `value` its value;
    `source` is the config.json path when the config came from a file. It is also an
    AssertionError, which the classic config raised for the same mistakes.
    """

    def __init__(
        self, message: str, field: str | None = None, value: Any = None, source: str | None = None
    ) -> None:
        super().__init__(message)
        self.field, self.value, self.source = field, value, source


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but True layers or heads is a mistake, not a count.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _invalid(name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{name} must be {allowed}, got {value!r}.", name, value)


@dataclass
class TransformerConfig:
    # Shape of the model.
    n_layers: int  # number of transformer blocks
    d_model: int  # width of the residual stream
    n_ctx: int  # longest sequence the position scheme supports
    d_head: int  # width of one attention head
    n_heads: int = -1  # query heads; -1 means d_model // d_head
    d_mlp: int | None = None  # hidden width of the MLP; None means 4 * d_model (unless attn_only)
    d_vocab: int = -1  # input vocabulary size
    d_vocab_out: int = -1  # output vocabulary size; -1 means d_vocab
    n_key_value_heads: int | None = None  # fewer than n_heads means grouped-query attention
    attn_only: bool = False  # blocks without MLPs (toy models)
    n_decoder_layers: int | None = None  # decoder blocks of an encoder-decoder (None: n_layers)

    # What the blocks compute.
    act_fn: str | None = "gelu_new"  # MLP nonlinearity (see ACTIVATION_FUNCTIONS)
    gated_mlp: bool = False  # SwiGLU-style: act(x W_gate) * (x W_in)
    swiglu_limit: float | None = None  # ... act(min(gate, L)) * (clamp(lin, -L, L) + 1) (GPT-OSS)
    num_experts: int | None = None  # mixture of experts: experts per MLP (None: one dense MLP)
    experts_per_token: int | None = None  # ... experts each token is routed to (top-k)
    norm_topk_prob: bool = False  # ... rescale the top-k routing weights to sum to 1 (Mixtral)
    d_mlp_shared: int | None = None  # ... width of an always-on, sigmoid-gated shared expert
    moe_layers: list[int] | None = None  # ... layers whose MLP has experts (None: every layer) ...
    d_mlp_dense: int | None = None  # ... width of the dense MLP of the others (None: d_mlp)
    router_bias: bool = False  # ... the router has a bias, b_router (GPT-OSS)
    router_softmax_over_topk: bool = False  # ... top-k of the logits, then softmax (GPT-OSS)
    normalization_type: str | None = "LN"  # LN | LNPre | RMS | RMSPre | None (Pre = folded weights)
    eps: float = 1e-5  # normalization epsilon
    parallel_attn_mlp: bool = False  # attention and MLP both read resid_pre (GPT-J, NeoX)
    pre_norm: bool = True  # normalize attention/MLP inputs (ln1, ln2); False: OLMo2
    post_norm_type: str | None = (
        None  # also normalize their outputs (ln1_post, ln2_post): Gemma 2/3
    )
    post_layer_norm: bool = False  # Post-LN: x = ln1(x + attn(x)); x = ln2(x + mlp(x)) (OPT-350m)
    final_norm: bool = True  # ln_final before the unembedding (False: the checkpoint has none)
    final_rms: bool = False  # ln_final is an RMSNorm while the blocks use LayerNorm (old SoLU)
    attn_scores_soft_cap: float | None = None  # scores -> cap * tanh(scores / cap) (Gemma 2)
    attn_sinks: bool = False  # a learned logit per head joins each softmax, valueless (GPT-OSS)
    output_logits_soft_cap: float | None = None  # logits -> cap * tanh(logits / cap) (Gemma 2)
    causal: bool = True  # each position attends only to itself and earlier ones (False: BERT)
    use_attn_scale: bool = True  # divide attention scores by attn_scale
    attn_scale: float = -1.0  # -1 means sqrt(d_head)
    scale_attn_by_inverse_layer_idx: bool = False  # GPT-2 option: scores also / (layer + 1)
    sliding_window: int | None = None  # a query sees only the last `sliding_window` keys ...
    layer_types: list[str] | None = None  # ... in layers marked "sliding_attention" (None: all)
    qk_norm: bool = False  # RMSNorm over d_head on each head's q and k before rotary (Qwen3)
    qk_norm_over_heads: bool = False  # ... over all heads' q (and k) together instead (OLMo2)
    qk_norm_type: str = "RMS"  # ... the norm: RMS (Qwen3, OLMo2) | LN (Cohere, StableLM, Phi)
    qk_norm_per_head_weights: bool = False  # ... each head its own weights, [heads, d_head]
    embed_scale: float = 1.0  # token embeddings are multiplied by this (Gemma: sqrt(d_model))
    embed_scale_in_dtype: bool = False  # ... after rounding it to the model's dtype (Gemma, as HF)
    norm_weight_offset: float = (
        0.0  # RMSNorms multiply by (offset + w), added in float32 (Gemma: 1)
    )
    norm_weight_in_float32: bool = False  # RMSNorm: (x * w).to(dtype), not x.to(dtype) * w (OLMo 2)
    post_embedding_norm: bool = False  # a norm (ln_embed) right after the embedding (BLOOM)
    d_embed: int | None = None  # token embedding width, projected to/from d_model (OPT-350m)

    # Positions.
    positional_embedding_type: str = "standard"  # standard (learned) | rotary | alibi | none
    # ... | shortformer (learned, added to ln1's output for queries and keys, not to the stream)
    # ... | relative_positional_bias (T5: a learned per-head bias for each bucket of distances)
    relative_attention_num_buckets: int = 32  # T5: buckets of query-key distance
    relative_attention_max_distance: int = 128  # T5: distances beyond this share a bucket
    rotary_dim: int | None = None  # rotated width per head; None means d_head
    rotary_base: float = 10000.0  # rope theta
    rope_scaling: dict[str, Any] | None = None  # HF rope_scaling, HF defaults filled in
    rotary_adjacent_pairs: bool = False  # GPT-J pairs features (0,1),(2,3)...; else halves
    rotary_base_local: float | None = (
        None  # rope theta of sliding-window layers, unscaled (Gemma 3)
    )
    nope_layers: list[int] | None = None  # layers of a rotary model without rotary (SmolLM3)
    alibi_scaled_with_scores: bool = False  # ALiBi bias added before / attn_scale (Falcon-RW)
    alibi_bias_bfloat16: bool = False  # ... slope * position rounded to bfloat16 (Falcon-RW)

    # Opt-in hook points (off by default: they cost memory or compute).
    use_attn_result: bool = False  # blocks.i.attn.hook_result, per-head outputs [b, p, h, d]
    use_split_qkv_input: bool = False  # blocks.i.hook_{q,k,v}_input, per-head inputs
    use_attn_in: bool = False  # blocks.i.hook_attn_in, one per-head input for q, k and v
    use_hook_mlp_in: bool = False  # blocks.i.hook_mlp_in
    use_hook_tokens: bool = False  # hook_tokens on the input ids

    # Tokenizer and provenance.
    default_prepend_bos: bool = True  # prepend BOS when tokenizing (never twice)
    tokenizer_prepends_bos: bool | None = None  # set when a tokenizer is attached
    default_padding_side: str = "right"
    tokenizer_name: str | None = None
    model_name: str = "custom"
    original_architecture: str | None = None
    tie_word_embeddings: bool = False  # the checkpoint shares W_E and W_U (we still store both)

    # Numerics and placement.
    dtype: torch.dtype = torch.float32
    device: str | None = None
    seed: int | None = None
    init_range: float = -1.0  # std (gpt2) or gain (others) of the random init; -1: the default
    init_mode: str = "gpt2"  # how init_weights draws matrices (see INIT_MODES)
    init_weights: bool = True  # HookedTransformer(cfg) initialises its weights randomly
    n_devices: int = 1  # > 1: the classic even split of the blocks over accelerators
    trust_remote_code: bool = False  # classic; anatomist never runs a checkpoint's code
    load_in_4bit: bool = False  # classic; not supported (always False)
    decoder_start_token_id: int | None = None  # encoder-decoders: the decoder's first token
    ungroup_grouped_query_attention: bool = False  # hook_k/hook_v show a head per query head

    # Set by weight processing, so analysis code knows what the weights mean.
    from_checkpoint: bool = False
    checkpoint_index: int | None = None  # which training checkpoint was loaded (0 = earliest)
    checkpoint_value: int | None = None  # its label: the training step or tokens seen
    checkpoint_label_type: str | None = None  # "step" or "token"
    processing: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The classic "unset" spellings of fields that are None here.
        for name in ("attn_scores_soft_cap", "output_logits_soft_cap"):
            if getattr(self, name) == -1:
                setattr(self, name, None)
        for name, default in (
            ("relative_attention_num_buckets", 32),
            ("relative_attention_max_distance", 128),
        ):
            if getattr(self, name) is None:
                setattr(self, name, default)
        # Checked before anything is derived from them, so a bad value is reported as itself,
        # not as a ZeroDivisionError or a reshape error much later.
        self._check_shape_fields()
        if self.n_heads == -1:
            if self.d_model % self.d_head:
                raise ConfigError(
                    f"d_model ({self.d_model}) is not a multiple of d_head ({self.d_head}); "
                    "set n_heads explicitly.",
                    "d_head",
                    self.d_head,
                )
            self.n_heads = self.d_model // self.d_head
        if self.n_key_value_heads is None:
            self.n_key_value_heads = self.n_heads
        if self.n_heads % self.n_key_value_heads:
            raise ConfigError(
                f"n_heads ({self.n_heads}) must be a multiple of n_key_value_heads "
                f"({self.n_key_value_heads}): each key/value head serves a whole group of query "
                "heads.",
                "n_key_value_heads",
                self.n_key_value_heads,
            )
        if self.d_mlp is None and not self.attn_only:
            self.d_mlp = 4 * self.d_model
        if self.d_vocab_out == -1:
            self.d_vocab_out = self.d_vocab
        if self.attn_scale == -1.0:
            self.attn_scale = math.sqrt(self.d_head)
        if self.rotary_dim is None:
            self.rotary_dim = self.d_head
        if self.init_mode not in INIT_MODES:
            raise _invalid("init_mode", self.init_mode, f"one of {INIT_MODES}")
        if self.init_range == -1.0:  # GPT-2's 0.02 at d_model 1600; a gain of 1 otherwise
            self.init_range = (
                0.8 / math.sqrt(self.d_model) if self.init_mode == NORMAL_INIT else 1.0
            )
        if self.seed is not None:
            self.set_seed_everywhere(self.seed)
        for name, allowed in (
            ("post_norm_type", NORMALIZATION_TYPES),
            ("normalization_type", NORMALIZATION_TYPES),
            ("positional_embedding_type", POSITIONAL_EMBEDDING_TYPES),
        ):
            if getattr(self, name) not in allowed:
                raise _invalid(name, getattr(self, name), f"one of {allowed}")
        if not self.attn_only and self.act_fn not in ACTIVATION_FUNCTIONS:
            raise _invalid("act_fn", self.act_fn, f"one of {ACTIVATION_FUNCTIONS}")
        if self.post_layer_norm:
            clashes = [
                name
                for name in ("pre_norm", "parallel_attn_mlp", "attn_only", "post_norm_type")
                if getattr(self, name)
            ]
            if clashes:
                raise ConfigError(
                    f"post_layer_norm=True (norms after each residual add) cannot be combined "
                    f"with {', '.join(clashes)}; set pre_norm=False (a Post-LN block has no norm "
                    "before attention or the MLP) and leave the others off."
                )
        if self.moe_layers is not None:
            outside = [i for i in self.moe_layers if not 0 <= i < self.n_layers]
            if self.num_experts is None or outside:
                raise ConfigError(
                    f"moe_layers={self.moe_layers} needs num_experts and layer indices in "
                    f"0..{self.n_layers - 1}."
                )
        if self.norm_weight_offset and "LN" in (self.normalization_type, self.post_norm_type):
            raise ConfigError(
                "norm_weight_offset (multiply by offset + w) applies to RMSNorm weights only; "
                f"this model's norms are LayerNorms (normalization_type={self.normalization_type!r},"
                f" post_norm_type={self.post_norm_type!r})."
            )
        if self.swiglu_limit is not None and not self.gated_mlp:
            raise ConfigError("swiglu_limit clamps a gated MLP's two branches; set gated_mlp=True.")
        self._check_derived_fields()

    def _check_shape_fields(self) -> None:
        """The sizes, counts and numbers every model reads, as given (before defaults)."""
        for name in ("n_layers", "d_model", "n_ctx", "d_head"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise _invalid(name, value, "a positive integer")
        for name in ("n_heads", "d_vocab", "d_vocab_out"):
            value = getattr(self, name)
            if not _is_int(value) or (value < 1 and value != -1):
                raise _invalid(name, value, "a positive integer (or -1 for the default)")
        optional_counts = (
            "d_mlp", "n_key_value_heads", "n_decoder_layers", "num_experts", "experts_per_token",
            "d_mlp_shared", "d_mlp_dense", "sliding_window", "d_embed",
        )  # fmt: skip
        for name in optional_counts:
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise _invalid(name, value, "a positive integer or None")
        if not _is_real(self.eps) or not math.isfinite(self.eps) or self.eps < 0:
            raise _invalid("eps", self.eps, "a finite number >= 0")
        for name in ("attn_scale", "init_range"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or (value <= 0 and value != -1):
                raise _invalid(name, value, "a finite number > 0 (or -1 for the default)")
        if not _is_real(self.rotary_base) or not self.rotary_base > 0:
            raise _invalid("rotary_base", self.rotary_base, "a number > 0")
        capped = ("attn_scores_soft_cap", "output_logits_soft_cap", "swiglu_limit")
        for name in capped:
            value = getattr(self, name)
            if value is not None and (not _is_real(value) or not value > 0):
                raise _invalid(name, value, "a number > 0 or None")
        if not _is_real(self.embed_scale) or not math.isfinite(self.embed_scale):
            raise _invalid("embed_scale", self.embed_scale, "a finite number")
        if self.rotary_dim is not None and (not _is_int(self.rotary_dim) or self.rotary_dim < 0):
            raise _invalid("rotary_dim", self.rotary_dim, "an integer >= 0 or None")
        for name in ("relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise _invalid(name, value, "a positive integer")
        if not _is_int(self.n_devices) or self.n_devices < 1:
            raise _invalid("n_devices", self.n_devices, "a positive integer")
        for name in ("default_prepend_bos", "init_weights", "ungroup_grouped_query_attention"):
            if not isinstance(getattr(self, name), bool):
                raise _invalid(name, getattr(self, name), "True or False")
        if self.default_padding_side not in ("left", "right"):
            raise _invalid("default_padding_side", self.default_padding_side, "'left' or 'right'")
        if isinstance(self.dtype, str):
            dtype = getattr(torch, self.dtype.removeprefix("torch."), None)
            if not isinstance(dtype, torch.dtype):
                raise _invalid("dtype", self.dtype, "a torch dtype or its name ('float32', ...)")
            self.dtype = dtype
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise _invalid("dtype", self.dtype, "a floating-point torch dtype")

    def _check_derived_fields(self) -> None:
        """Fields that must agree with each other, once the defaults are filled in."""
        if self.n_heads < 1:
            raise _invalid("n_heads", self.n_heads, "a positive integer")
        assert self.rotary_dim is not None
        if self.positional_embedding_type == "rotary" and (
            self.rotary_dim > self.d_head or self.rotary_dim % 2
        ):
            raise ConfigError(
                f"rotary_dim must be an even number <= d_head ({self.d_head}), got "
                f"{self.rotary_dim}: rotary turns pairs of features within a head.",
                "rotary_dim",
                self.rotary_dim,
            )
        # (num_experts None with experts_per_token set is one expert's config: dense_config)
        if self.experts_per_token is not None and (
            self.num_experts is not None and self.experts_per_token > self.num_experts
        ):
            raise ConfigError(
                f"experts_per_token ({self.experts_per_token}) needs num_experts >= it, got "
                f"num_experts={self.num_experts}.",
                "experts_per_token",
                self.experts_per_token,
            )
        if self.layer_types is not None and len(self.layer_types) < self.n_layers:
            raise ConfigError(
                f"layer_types names {len(self.layer_types)} layers but the model has "
                f"{self.n_layers}; give one entry per layer.",
                "layer_types",
                self.layer_types,
            )

    def is_moe_layer(self, layer: int) -> bool:
        """Whether `layer`'s MLP is the mixture of experts (else a dense MLP, d_mlp_dense wide)."""
        if self.num_experts is None:
            return False
        return self.moe_layers is None or layer in self.moe_layers

    @property
    def d_mlp_of_dense_layers(self) -> int | None:
        """The hidden width of the dense MLPs (d_mlp_dense in a mixed model, else d_mlp)."""
        return self.d_mlp_dense if self.d_mlp_dense is not None else self.d_mlp

    def window_for_layer(self, layer: int) -> int | None:
        """The sliding-window size of `layer`'s attention, or None for full attention."""
        if self.sliding_window is None:
            return None
        if self.layer_types is None or self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None

    @property
    def n_kv_heads(self) -> int:
        assert self.n_key_value_heads is not None
        return self.n_key_value_heads

    @property
    def is_grouped_query(self) -> bool:
        return self.n_kv_heads != self.n_heads

    @property
    def n_params(self) -> int:
        """Parameters in attention and MLP weight matrices (the classic count: no embeddings)."""
        attn = self.n_heads * self.d_head * self.d_model * 2
        attn += self.n_kv_heads * self.d_head * self.d_model * 2
        per_mlp = (3 if self.gated_mlp else 2) * self.d_model
        dense = 0 if self.attn_only else per_mlp * (self.d_mlp_of_dense_layers or 0)
        moe = 0
        if self.num_experts:  # every expert is an MLP; the router maps d_model to the experts
            moe = (per_mlp * (self.d_mlp or 0) + self.d_model) * self.num_experts
            moe += per_mlp * (self.d_mlp_shared or 0)
        n_moe = sum(self.is_moe_layer(i) for i in range(self.n_layers))
        return self.n_layers * attn + n_moe * moe + (self.n_layers - n_moe) * dense

    def is_layer_norm_activation(self) -> bool:
        """Whether the activation normalizes its output (SoLU's "solu_ln")."""
        return self.act_fn is not None and self.act_fn.endswith("_ln")

    def set_seed_everywhere(self, seed: int) -> None:
        """Seed torch, Python's `random` and numpy (called with ``cfg.seed`` on construction)."""
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (copies); `from_dict` builds the same config from it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TransformerConfig:
        """Build a config from a dict of fields or classic names, ignoring keys this version
        does not know."""
        known = {f.name for f in dataclasses.fields(cls)} | set(CLASSIC_NAMES) | {"n_params"}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def unwrap(cls, config: Any) -> TransformerConfig:
        """`config` itself when it is a config; else a config built from its dict (a dict, or an
        object with ``to_dict()``)."""
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        to_dict = getattr(config, "to_dict", None)
        if callable(to_dict):
            return cls.from_dict(to_dict())
        raise TypeError(
            f"config must be a {cls.__name__} or a dict of its fields, got {type(config).__name__}."
        )

    # --- the classic field names that are spelled differently here ---------------------------
    @property
    def attention_dir(self) -> str:
        """Classic: "causal" or "bidirectional" (here the bool `causal`)."""
        return "causal" if self.causal else "bidirectional"

    @attention_dir.setter
    def attention_dir(self, value: str) -> None:
        self.causal = _attention_dir_to_causal(value)

    @property
    def use_normalization_before_and_after(self) -> bool:
        """Classic: norms after attention and the MLP too (here `post_norm_type`)."""
        return self.post_norm_type is not None

    @property
    def use_local_attn(self) -> bool:
        """Classic: some layers use sliding-window attention (here `sliding_window`)."""
        return self.sliding_window is not None

    @property
    def window_size(self) -> int | None:
        return self.sliding_window

    @property
    def attn_types(self) -> list[str] | None:
        """Classic: "local" or "global" per layer (here `layer_types`)."""
        if self.sliding_window is None:
            return None
        return [
            "local" if self.window_for_layer(i) is not None else "global"
            for i in range(self.n_layers)
        ]

    @property
    def uses_rms_norm(self) -> bool:
        """3.x: the model's norms are RMSNorms."""
        return self.normalization_type in ("RMS", "RMSPre")

    @property
    def layer_norm_folding(self) -> bool:
        """3.x: the norms' weights have been folded into the layers that read them."""
        return bool(self.processing.get("fold_ln", False))

    @property
    def use_NTK_by_parts_rope(self) -> bool:  # noqa: N802 (the classic name)
        return _rope_kind(self.rope_scaling) == "llama3"

    @property
    def use_yarn_rope(self) -> bool:
        return _rope_kind(self.rope_scaling) == "yarn"

    @property
    def rotary_scaling_factor(self) -> float:
        """Classic: linear rope scaling of the global layers (here a "linear" rope_scaling)."""
        if _rope_kind(self.rope_scaling) != "linear":
            return 1.0
        assert self.rope_scaling is not None
        return float(self.rope_scaling["factor"])


def _attention_dir_to_causal(value: Any) -> bool:
    if value not in ("causal", "bidirectional"):
        raise _invalid("attention_dir", value, "'causal' or 'bidirectional'")
    return bool(value == "causal")


def _rope_kind(scaling: dict[str, Any] | None) -> str | None:
    if not scaling:
        return None
    return str(scaling.get("rope_type", scaling.get("type", "default")))


def _field_alias(name: str, doc: str) -> property:
    """A classic name for one of our fields, read and written through."""
    return property(
        lambda self: getattr(self, name), lambda self, v: setattr(self, name, v), doc=doc
    )


def _rope_parameter(kind: str, key: str, default: float) -> property:
    """A classic rope-scaling field, read from `rope_scaling` (its classic default when the
    model does not use that kind of scaling)."""

    def get(self: TransformerConfig) -> float:
        if _rope_kind(self.rope_scaling) != kind:
            return default
        assert self.rope_scaling is not None
        return self.rope_scaling.get(key, default)  # type: ignore[no-any-return]

    return property(get, doc=f"Classic; rope_scaling[{key!r}] of a {kind!r} rope_scaling.")


# Classic rope-scaling fields: (rope_scaling kind, its key, the classic default).
_ROPE_FIELDS: dict[str, tuple[str, str, float]] = {
    "NTK_by_parts_low_freq_factor": ("llama3", "low_freq_factor", 1.0),
    "NTK_by_parts_high_freq_factor": ("llama3", "high_freq_factor", 4.0),
    "NTK_by_parts_factor": ("llama3", "factor", 8.0),
    "NTK_original_ctx_len": ("llama3", "original_max_position_embeddings", 8192),
    "yarn_factor": ("yarn", "factor", 1.0),
    "yarn_attention_factor": ("yarn", "attention_factor", 1.0),
    "yarn_beta_fast": ("yarn", "beta_fast", 32.0),
    "yarn_beta_slow": ("yarn", "beta_slow", 1.0),
    "yarn_original_max_position_embeddings": ("yarn", "original_max_position_embeddings", 4096),
}
# Classic names of fields that are only renamed here.
_RENAMED = {
    "use_qk_norm": "qk_norm",
    "initializer_range": "init_range",
    "post_embedding_ln": "post_embedding_norm",
}
for _name, (_kind, _key, _default) in _ROPE_FIELDS.items():
    setattr(TransformerConfig, _name, _rope_parameter(_kind, _key, _default))
for _classic, _ours in _RENAMED.items():
    setattr(TransformerConfig, _classic, _field_alias(_ours, f"Classic name of `{_ours}`."))

# Every classic keyword the constructor translates (`_from_classic_names`).
CLASSIC_NAMES = (
    *_RENAMED,
    *_ROPE_FIELDS,
    "attention_dir",
    "use_normalization_before_and_after",
    "use_local_attn",
    "window_size",
    "attn_types",
    "use_NTK_by_parts_rope",
    "use_yarn_rope",
    "rotary_scaling_factor",
)


def _from_classic_names(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The constructor's keywords with the classic spellings turned into our fields."""
    classic = {k: kwargs.pop(k) for k in (*CLASSIC_NAMES, "n_params") if k in kwargs}
    classic.pop("n_params", None)  # derived (a property here); the classic recomputed it too
    if not classic:
        return kwargs
    for old, new in _RENAMED.items():
        if old in classic:
            if new in kwargs:
                raise ConfigError(f"Pass {new} or its classic name {old}, not both.", new)
            kwargs[new] = classic[old]
    if "attention_dir" in classic:
        kwargs["causal"] = _attention_dir_to_causal(classic["attention_dir"])
    if classic.get("use_normalization_before_and_after"):
        kwargs.setdefault("post_norm_type", kwargs.get("normalization_type", "LN"))
    if classic.get("use_local_attn"):
        window, types = classic.get("window_size"), classic.get("attn_types")
        if window is None or types is None:
            raise ConfigError(
                "use_local_attn=True needs window_size and attn_types ('local' or 'global' per "
                "layer).",
                "window_size" if window is None else "attn_types",
            )
        if any(t not in ("local", "global") for t in types):
            raise _invalid("attn_types", types, "a list of 'local' or 'global' per layer")
        kwargs["sliding_window"] = window
        kwargs["layer_types"] = [
            "sliding_attention" if t == "local" else "full_attention" for t in types
        ]
    scaling = _classic_rope_scaling(classic)
    if scaling is not None:
        if kwargs.get("rope_scaling"):
            raise ConfigError(
                f"Pass rope_scaling or the classic rope fields ({', '.join(classic)}), not both.",
                "rope_scaling",
            )
        kwargs["rope_scaling"] = scaling
    return kwargs


def _classic_rope_scaling(classic: dict[str, Any]) -> dict[str, Any] | None:
    """The `rope_scaling` of the classic NTK-by-parts, YaRN or linear fields (None: none)."""
    kinds = [
        kind
        for kind, on in (
            ("llama3", classic.get("use_NTK_by_parts_rope")),
            ("yarn", classic.get("use_yarn_rope")),
            ("linear", classic.get("rotary_scaling_factor", 1.0) != 1.0),
        )
        if on
    ]
    if len(kinds) > 1:
        raise ConfigError(f"Only one kind of rope scaling can be on, got {kinds}.", "rope_scaling")
    if not kinds:
        return None
    if kinds[0] == "linear":
        return {"rope_type": "linear", "factor": float(classic["rotary_scaling_factor"])}
    scaling: dict[str, Any] = {"rope_type": kinds[0]}
    for name, (kind, key, default) in _ROPE_FIELDS.items():
        if kind == kinds[0]:
            scaling[key] = classic.get(name, default)
    return scaling


def _init_with_classic_names(init: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(init)
    def __init__(self: TransformerConfig, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **_from_classic_names(kwargs))

    return __init__


# The constructor also takes the classic spellings (attention_dir="bidirectional", ...).
setattr(TransformerConfig, "__init__", _init_with_classic_names(TransformerConfig.__init__))  # noqa: B010


# The classic names (3.x's TransformerLensConfig was the base HookedTransformerConfig extended).
HookedTransformerConfig = TransformerConfig
TransformerLensConfig = TransformerConfig
