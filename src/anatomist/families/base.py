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

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from anatomist.config import TransformerConfig

# A transform receives the tensor and the config and returns native-shaped tensors, in order,
# for the native names of its rule.
Transform = Callable[[Tensor, TransformerConfig], tuple[Tensor, ...]]


@dataclass(frozen=True)
class WeightRule:
    pattern: str  # regex over the HF tensor name; (?P<i>\d+) captures the layer
    targets: tuple[str, ...]  # native names; "{i}" is the layer, "{kv}" is "" or "_" (GQA)
    transform: Transform

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
        fill = {"i": "", **match.groupdict(), "kv": "_" if cfg.is_grouped_query else ""}
        return {target.format(**fill): v for target, v in zip(rule.targets, values)}


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


# --- transforms shared by families --------------------------------------------------------------
def same(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return (t,)


def transpose(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    """nn.Linear weight [out, in] -> classic [in, out]."""
    return (t.T,)


def _heads_in(t: Tensor, heads: int) -> Tensor:
    """nn.Linear weight [heads * d_head, d_model] -> [heads, d_model, d_head]."""
    return t.view(heads, -1, t.shape[-1]).transpose(1, 2)


def query_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return (_heads_in(t, cfg.n_heads),)


def kv_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return (_heads_in(t, cfg.n_kv_heads),)


def query_bias(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return (t.view(cfg.n_heads, -1),)


def kv_bias(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return (t.view(cfg.n_kv_heads, -1),)


def output_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    """nn.Linear o_proj weight [d_model, heads * d_head] -> W_O [heads, d_head, d_model]."""
    return (t.T.reshape(cfg.n_heads, -1, t.shape[0]),)


def shared_norm(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    """A parallel block's one norm, read by attention and the MLP alike: loaded as ln1 and ln2."""
    return (t, t)


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
) -> tuple[WeightRule, ...]:
    """A projection `hf_name` (regex, without ``.weight``): its weight through `transform` to the
    native `weight`, and, when `bias` is given, its bias through `bias_transform`."""
    rules = (WeightRule(hf_name + r"\.weight", (weight,), transform),)
    if bias is None:
        return rules
    return rules + (WeightRule(hf_name + r"\.bias", (bias,), bias_transform),)


def norm_rules(hf_name: str, *targets: str, transform: Transform = same) -> tuple[WeightRule, ...]:
    """A LayerNorm `hf_name` (regex, without ``.weight``): weight and bias to ``{target}.w`` and
    ``{target}.b`` of each native norm in `targets` (several for a norm shared by a parallel
    block, with `transform` returning one tensor per target)."""
    return tuple(
        WeightRule(hf_name + rf"\.{param}", tuple(f"{t}.{short}" for t in targets), transform)
        for param, short in (("weight", "w"), ("bias", "b"))
    )


def mlp_rules(w_in: str, w_out: str, transform: Transform = transpose) -> tuple[WeightRule, ...]:
    """An ungated MLP's two projections (regexes, without ``.weight``), with biases: `w_in` ->
    W_in/b_in, `w_out` -> W_out/b_out; `transform` turns a stored weight into [in, out]
    (`transpose` for nn.Linear, `same` for GPT-2's Conv1D)."""
    mlp = "blocks.{i}.mlp."
    return linear_rules(w_in, mlp + "W_in", mlp + "b_in", transform) + linear_rules(
        w_out, mlp + "W_out", mlp + "b_out", transform
    )


def qkv_rules(prefix: str, biases: bool = True) -> tuple[WeightRule, ...]:
    """Separate query, key and value projections ``{prefix}q_proj``/``k_proj``/``v_proj``
    (nn.Linear, [heads * d_head, d_model]), with their biases when `biases`; keys and values may
    have fewer heads than queries (grouped-query attention)."""
    a = "blocks.{i}.attn."
    q_bias, k_bias, v_bias = (a + "b_Q", a + "{kv}b_K", a + "{kv}b_V") if biases else (None,) * 3
    return (
        *linear_rules(prefix + "q_proj", a + "W_Q", q_bias, query_weight, query_bias),
        *linear_rules(prefix + "k_proj", a + "{kv}W_K", k_bias, kv_weight, kv_bias),
        *linear_rules(prefix + "v_proj", a + "{kv}W_V", v_bias, kv_weight, kv_bias),
    )


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
