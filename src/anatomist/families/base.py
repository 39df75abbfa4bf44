"""What a family is: a config mapping and a weight-name table for one Hugging Face architecture.

A family turns a checkpoint's own config.json into a `TransformerConfig`, and each checkpoint
tensor (by its Hugging Face name) into native tensors (by classic HookedTransformer name). Rules
are regular expressions over tensor names with a small transform each; ``{i}`` in a native name is
the layer index captured from the Hugging Face name.

Some checkpoints store one tensor in several parts (a norm per attention head, a quantized
weight's blocks and scales): a family's `TensorGroup`s say how to join them, and loading joins
each group into one tensor (`Family.assembled`) before converting it like any other.

Shared by the family modules: the transforms below, the rule builders (`linear_rules`,
`qkv_rules`, `mlp_rules`, `norm_rules`: one call per projection or norm, weight and bias
together) and `rope_settings`. Llama's config reader and rules, on which most later families are
a diff, live in `anatomist.families.llama` (`llama_style_config`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from anatomist.config import ConfigError, TransformerConfig

# A transform receives the tensor and the config and returns native-shaped tensors, in order,
# for the native names of its rule.
Transform = Callable[[Tensor, TransformerConfig], tuple[Tensor, ...]]


@dataclass(frozen=True)
class WeightRule:
    pattern: str  # regex over the HF tensor name; (?P<i>\d+) captures the layer
    targets: tuple[str, ...]  # native names; "{i}" is the layer, "{kv}" is "" or "_" (GQA)
    transform: Transform
    # The checkpoint may lack this tensor (in every layer at once): a bias the architecture has
    # only under some config options, such as Llama's attention_bias. Its targets are then zero.
    optional: bool = False

    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.pattern)


@dataclass(frozen=True)
class TensorGroup:
    """Checkpoint tensors that are parts of one tensor, the whole, which is then converted like
    any checkpoint tensor under its own name (e.g. ``q_layernorm.norms.{h}.weight`` for each head
    -> ``q_layernorm.weight``; ``gate_up_proj_blocks`` + ``gate_up_proj_scales`` ->
    ``gate_up_proj``)."""

    pattern: str  # regex over a part's name; (?P<part>...) says which part it is
    whole: str  # the whole's name: a `re.Match.expand` template over the pattern (\g<group>)
    parts: Callable[[re.Match[str], TransformerConfig], tuple[str, ...]]  # all parts, in order
    # the parts (in `parts` order) -> the whole; a ValueError names what is wrong with them
    combine: Callable[[tuple[Tensor, ...], TransformerConfig], Tensor]

    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.pattern)


class TensorPartsError(ValueError):
    """A tensor stored in parts cannot be assembled: a part is missing or malformed."""


class StoredShapeError(ValueError):
    """A checkpoint tensor's stored shape is not the one the config implies for it."""

    def __init__(self, name: str, got: tuple[int, ...], want: tuple[int, ...]) -> None:
        super().__init__(
            f"tensor {name!r} is stored with shape {got}, but the config implies {want}"
        )
        self.name, self.got, self.want = name, got, want


# A stored-shape inverse: the native shapes a transform produced (one per target) and the config
# -> the shape the checkpoint tensor must have had. Transforms that reshape to the config's sizes
# (rather than reading sizes off the tensor) need one: without it, a header that lies about a
# shape but keeps its element count would be reshaped into the right native shape silently.
ShapeInverse = Callable[[tuple[tuple[int, ...], ...], TransformerConfig], tuple[int, ...]]
_STORED_SHAPES: dict[Callable[..., Any], ShapeInverse] = {}


def stored_as(inverse: ShapeInverse) -> Callable[[Transform], Transform]:
    """Declare a transform's stored-shape inverse (see `ShapeInverse`); `Family.convert` checks
    every tensor converted with it against it."""

    def declare(transform: Transform) -> Transform:
        _STORED_SHAPES[transform] = inverse
        return transform

    return declare


def check_stored_shape(
    transform: Transform,
    name: str,
    tensor: Tensor,
    values: tuple[Tensor, ...],
    cfg: TransformerConfig,
) -> None:
    """A `StoredShapeError` when `transform` declares a stored-shape inverse and `tensor`'s
    shape is not the one that gives `values` (the shape the config implies)."""
    inverse = _STORED_SHAPES.get(transform)
    if inverse is None:
        return
    want = tuple(inverse(tuple(tuple(v.shape) for v in values), cfg))
    if tuple(tensor.shape) != want:
        raise StoredShapeError(name, tuple(tensor.shape), want)


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]  # HF architecture class names this family loads
    model_types: tuple[str, ...]  # HF config model_type values
    build_config: Callable[[dict[str, Any]], TransformerConfig]
    rules: tuple[WeightRule, ...]
    ignore: tuple[str, ...] = ()  # regexes of HF tensors that carry no weights we need
    groups: tuple[TensorGroup, ...] = ()  # tensors stored in parts, joined before conversion
    # the quantization methods (config.json's quantization_config.quant_method) whose tensors
    # `groups` dequantize; a checkpoint quantized any other way is refused
    quant_methods: tuple[str, ...] = ()
    _compiled: list[tuple[re.Pattern[str], WeightRule]] = field(default_factory=list, repr=False)
    _targets: list[tuple[re.Pattern[str], WeightRule]] = field(default_factory=list, repr=False)

    def rule_for(self, name: str) -> tuple[WeightRule, re.Match[str]] | None:
        """The first rule whose pattern matches the whole tensor name, and the match."""
        if not self._compiled:
            self._compiled.extend((rule.compiled(), rule) for rule in self.rules)
        for regex, rule in self._compiled:
            match = regex.fullmatch(name)
            if match is not None:
                return rule, match
        return None

    def assembled(
        self, tensors: Iterable[tuple[str, Tensor]], cfg: TransformerConfig
    ) -> Iterator[tuple[str, Tensor]]:
        """`tensors`, with the parts of each `TensorGroup` replaced by their whole, yielded when
        its last part arrives. Parts are held only until then, so a whole is built while its
        parts are still memory-mapped and they are released once it is. A part the group does
        not expect (a head beyond the config's) passes through unchanged, for `convert` to
        refuse; a group still missing parts at the end is a `TensorPartsError`."""
        groups = [(group.compiled(), group) for group in self.groups]
        # whole name -> (a part's match, the parts it needs, the parts so far)
        pending: dict[str, tuple[re.Match[str], tuple[str, ...], dict[str, Tensor]]] = {}
        for name, tensor in tensors:
            found = next(
                ((m, g) for regex, g in groups if (m := regex.fullmatch(name)) is not None), None
            )
            if found is None:
                yield name, tensor
                continue
            match, group = found
            needed = group.parts(match, cfg)
            if match["part"] not in needed:
                yield name, tensor
                continue
            whole = match.expand(group.whole)
            parts = pending.setdefault(whole, (match, needed, {}))[2]
            parts[match["part"]] = tensor
            if len(parts) < len(needed):
                continue
            del parts, tensor  # the generator keeps no reference to parts or whole
            yield whole, _joined(group, whole, pending.pop(whole), cfg)
        if pending:
            lacking = [
                f"{_part_name(match, p)} (a part of {whole})"
                for whole, (match, needed, parts) in pending.items()
                for p in needed
                if p not in parts
            ]
            shown = ", ".join(lacking[:4]) + (" ..." if len(lacking) > 4 else "")
            raise TensorPartsError(
                f"the checkpoint has only some parts of tensors stored in parts; it lacks "
                f"{len(lacking)}: {shown}."
            )

    def convert(self, name: str, tensor: Tensor, cfg: TransformerConfig) -> dict[str, Tensor]:
        """Native tensors for one checkpoint tensor ({} for ignored ones)."""
        found = self.rule_for(name)
        if found is None:
            if any(re.fullmatch(p, name) for p in self.ignore):
                return {}
            raise KeyError(name)
        rule, match = found
        values = rule.transform(tensor, cfg)
        check_stored_shape(rule.transform, name, tensor, values, cfg)
        fill = {"i": "", **match.groupdict(), "kv": "_" if cfg.is_grouped_query else ""}
        return {target.format(**fill): v for target, v in zip(rule.targets, values)}

    def producers(self, native: str) -> list[WeightRule]:
        """The rules with a target that can be the native weight `native` (its ``{...}``
        fields read as wildcards); none when the architecture has no such weight.

        What loading requires follows from them: a weight some rule produces must come from
        the checkpoint, unless every such rule is `optional` (then the checkpoint may lack it
        in all layers); a bias no rule produces is zero.
        """
        if not self._targets:
            for rule in self.rules:
                for target in rule.targets:
                    literal = re.split(r"\{\w+\}", target)
                    regex = ".*".join(re.escape(part) for part in literal)
                    self._targets.append((re.compile(regex), rule))
        return [rule for regex, rule in self._targets if regex.fullmatch(native)]


def _joined(
    group: TensorGroup,
    whole: str,
    entry: tuple[re.Match[str], tuple[str, ...], dict[str, Tensor]],
    cfg: TransformerConfig,
) -> Tensor:
    _, needed, parts = entry
    try:
        return group.combine(tuple(parts.pop(p) for p in needed), cfg)
    except ValueError as error:
        raise TensorPartsError(f"{whole}: {error}") from None


def _part_name(match: re.Match[str], part: str) -> str:
    """The name of another part of the group whose part `match` matched."""
    name = match.string
    return name[: match.start("part")] + part + name[match.end("part") :]


# --- config readers shared by families ----------------------------------------------------------
def head_size(width: Any, heads: Any, width_key: str, heads_key: str, exact: bool = True) -> int:
    """``width // heads`` for a config.json that gives a width and a head count (named
    `width_key` and `heads_key` there): a `ConfigError` naming them when the head count is not
    a positive integer, or, when `exact` (the architecture splits the width evenly into heads,
    as transformers checks for it), when the heads do not divide the width. Without `exact`
    (Llama-style configs, where transformers rounds down), the quotient is rounded down."""
    for key, value in ((width_key, width), (heads_key, heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"config.json's {key} must be a positive integer, got {value!r}.", key, value
            )
    if exact and width % heads:
        raise ConfigError(
            f"config.json's {width_key} ({width}) must be a multiple of {heads_key} ({heads}): "
            "this architecture splits the width evenly into heads.",
            heads_key,
            heads,
        )
    return int(width // heads)


# --- transforms shared by families --------------------------------------------------------------
@stored_as(lambda shapes, cfg: shapes[0])
def same(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return (t,)


@stored_as(lambda shapes, cfg: shapes[0][::-1])
def transpose(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    """nn.Linear weight [out, in] -> classic [in, out]."""
    return (t.T,)


def _heads_in(t: Tensor, heads: int) -> Tensor:
    """nn.Linear weight [heads * d_head, d_model] -> [heads, d_model, d_head]."""
    return t.view(heads, -1, t.shape[-1]).transpose(1, 2)


# [heads, d_model, d_head] <- [heads * d_head, d_model]
_HEADS_IN = stored_as(lambda shapes, cfg: (shapes[0][0] * shapes[0][2], shapes[0][1]))
# [heads, d_head] <- [heads * d_head]
_HEADS_BIAS = stored_as(lambda shapes, cfg: (shapes[0][0] * shapes[0][1],))


@_HEADS_IN
def query_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return (_heads_in(t, cfg.n_heads),)


@_HEADS_IN
def kv_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return (_heads_in(t, cfg.n_kv_heads),)


@_HEADS_BIAS
def query_bias(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return (t.view(cfg.n_heads, -1),)


@_HEADS_BIAS
def kv_bias(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return (t.view(cfg.n_kv_heads, -1),)


@stored_as(lambda shapes, cfg: (shapes[0][2], shapes[0][0] * shapes[0][1]))
def output_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    """nn.Linear o_proj weight [d_model, heads * d_head] -> W_O [heads, d_head, d_model]."""
    return (t.T.reshape(cfg.n_heads, -1, t.shape[0]),)


@stored_as(lambda shapes, cfg: shapes[0])
def shared_norm(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    """A parallel block's one norm, read by attention and the MLP alike: loaded as ln1 and ln2."""
    return (t, t)


@stored_as(lambda shapes, cfg: shapes[0])
def input_norm(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    """A norm that is ln1, and also ln2 when the block is parallel (attention and MLP read it)."""
    return (t, t) if cfg.parallel_attn_mlp else (t,)


# --- rule builders shared by families -----------------------------------------------------------
def linear_rules(
    hf_name: str,
    weight: str,
    bias: str | None = None,
    transform: Transform = transpose,
    bias_transform: Transform = same,
    optional_bias: bool = False,
) -> tuple[WeightRule, ...]:
    """A projection `hf_name` (regex, without ``.weight``): its weight through `transform` to the
    native `weight`, and, when `bias` is given, its bias through `bias_transform` (a bias that
    only some configs have when `optional_bias`)."""
    rules = (WeightRule(hf_name + r"\.weight", (weight,), transform),)
    if bias is None:
        return rules
    return rules + (WeightRule(hf_name + r"\.bias", (bias,), bias_transform, optional_bias),)


def norm_rules(hf_name: str, *targets: str, transform: Transform = same) -> tuple[WeightRule, ...]:
    """A LayerNorm `hf_name` (regex, without ``.weight``): weight and bias to ``{target}.w`` and
    ``{target}.b`` of each native norm in `targets` (several for a norm shared by a parallel
    block, with `transform` returning one tensor per target)."""
    return tuple(
        WeightRule(hf_name + rf"\.{param}", tuple(f"{t}.{short}" for t in targets), transform)
        for param, short in (("weight", "w"), ("bias", "b"))
    )


def mlp_rules(
    w_in: str, w_out: str, transform: Transform = transpose, optional_bias: bool = False
) -> tuple[WeightRule, ...]:
    """An ungated MLP's two projections (regexes, without ``.weight``), with biases: `w_in` ->
    W_in/b_in, `w_out` -> W_out/b_out; `transform` turns a stored weight into [in, out]
    (`transpose` for nn.Linear, `same` for GPT-2's Conv1D). `optional_bias`: only some configs
    have the biases."""
    mlp = "blocks.{i}.mlp."
    return linear_rules(
        w_in, mlp + "W_in", mlp + "b_in", transform, optional_bias=optional_bias
    ) + linear_rules(w_out, mlp + "W_out", mlp + "b_out", transform, optional_bias=optional_bias)


def qkv_rules(
    prefix: str, biases: bool = True, optional_bias: bool = False
) -> tuple[WeightRule, ...]:
    """Separate query, key and value projections ``{prefix}q_proj``/``k_proj``/``v_proj``
    (nn.Linear, [heads * d_head, d_model]), with their biases when `biases` (which only some
    configs have when `optional_bias`); keys and values may have fewer heads than queries
    (grouped-query attention)."""
    a = "blocks.{i}.attn."
    q_bias, k_bias, v_bias = (a + "b_Q", a + "{kv}b_K", a + "{kv}b_V") if biases else (None,) * 3
    o = optional_bias
    return (
        *linear_rules(prefix + "q_proj", a + "W_Q", q_bias, query_weight, query_bias, o),
        *linear_rules(prefix + "k_proj", a + "{kv}W_K", k_bias, kv_weight, kv_bias, o),
        *linear_rules(prefix + "v_proj", a + "{kv}W_V", v_bias, kv_weight, kv_bias, o),
    )


def as_optional(*rules: WeightRule) -> tuple[WeightRule, ...]:
    """`rules` marked optional: the checkpoint may lack their tensors (in every layer at once),
    e.g. biases an architecture has only under some config options."""
    return tuple(dataclasses.replace(rule, optional=True) for rule in rules)


# The rope scaling types the native rotary computes (anatomist.model.positions), as transformers
# names them.
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")


def rope_settings(
    hf: dict[str, Any],
    original_max_positions: int | None = None,
    default_theta: float = 10000.0,
) -> tuple[float, dict[str, Any] | None]:
    """rope theta and scaling from either config style (transformers 5 `rope_parameters`, or
    the older `rope_theta` + `rope_scaling`), the scaling completed with the defaults transformers
    fills in. `original_max_positions` is a config-level pretraining length that overrides the
    scaling's own, as in transformers for config classes that declare one (Phi-3);
    `default_theta` is the config class's theta when the file names none."""
    params = hf.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", default_theta)))
    scaling = hf.get("rope_scaling") or {k: v for k, v in params.items() if k != "rope_theta"}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind == "default":
        return theta, None
    if kind not in ROPE_TYPES:
        raise NotImplementedError(
            f"rope scaling type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})."
        )
    return theta, _completed_scaling(dict(scaling, rope_type=kind), hf, original_max_positions)


def _completed_scaling(
    scaling: dict[str, Any], hf: dict[str, Any], original_max_positions: int | None
) -> dict[str, Any]:
    """Fill in what transformers' `standardize_rope_params` and rope init functions default:
    the pretraining length, YaRN's and LongRoPE's factor, and dynamic NTK's threshold."""
    kind = scaling["rope_type"]

    def max_positions() -> int:
        if "max_position_embeddings" not in hf:
            raise ValueError(f"rope scaling {kind!r} needs max_position_embeddings in config.json.")
        return int(hf["max_position_embeddings"])

    if kind in ("llama3", "yarn", "longrope"):
        if original_max_positions is not None:
            scaling["original_max_position_embeddings"] = original_max_positions
        elif "original_max_position_embeddings" not in scaling:
            scaling["original_max_position_embeddings"] = max_positions()
    if kind in ("yarn", "longrope") and scaling.get("factor") is None:
        # DeepSeek-V3 and Phi-3 give the extended and the pretraining length, not their ratio.
        scaling["factor"] = max_positions() / scaling["original_max_position_embeddings"]
    if kind == "dynamic":  # HF grows the base past max_position_embeddings, not an original one
        scaling["max_position_embeddings"] = max_positions()
    return scaling
