"""The classic ``utils`` namespace: hook-name shorthands, slices, losses, tensor helpers,
overridable defaults, devices.

Names of the classic module that belong elsewhere are imported here under the same names:
tokenizer helpers (model/tokens.py), sampling (model/generate.py), weight init (model/init.py),
corpora (corpus.py) and hub files (loading/hub_files.py). ``__all__`` lists the public names.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anatomist.analysis.factored_matrix import FactoredMatrix
from anatomist.corpus import (
    DATASET_ALIASES,
    StreamedTokenDataset,
    TokenDataset,
    get_dataset,
    keep_single_column,
    tokenize_and_concatenate,
)
from anatomist.loading.hub_files import (
    CACHE_DIR,
    HubFileUnavailableError,
    call_hf_with_retry,
    clear_huggingface_cache,
    download_file_from_hf,
    enable_hf_retry,
    get_rotary_pct_from_config,
    select_compatible_kwargs,
)
from anatomist.model.devices import get_device_for_block_index
from anatomist.model.generate import sample_logits
from anatomist.model.init import (
    NonlinearityType,
    calc_fan_in_and_fan_out,
    init_kaiming_normal_,
    init_kaiming_uniform_,
    init_xavier_normal_,
    init_xavier_uniform_,
)
from anatomist.model.mlp import XIELU_ALPHA_INIT, XIELU_BETA
from anatomist.model.mlp import xielu as _xielu
from anatomist.model.tokens import (
    check_token_ids,
    get_attention_mask,
    get_input_with_manually_prepended_bos,
    get_tokenizer_with_bos,
    get_tokens_with_bos_removed,
)

_LAYER_TYPE_ALIASES = {
    "a": "attn",
    "m": "mlp",
    "b": "",
    "block": "",
    "blocks": "",
    "attention": "attn",
}
_ACT_NAME_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_ATTN_ACTS = {"k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores"}
_MLP_ACTS = {"pre", "post", "mid", "pre_linear"}
_NORM_ACTS = {"scale", "normalized"}


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """Full hook name from a shorthand, as the classic library builds it.

    ``get_act_name("k", 6) == "blocks.6.attn.hook_k"``; ``get_act_name("k6")`` likewise;
    ``get_act_name("scale", 4, "ln1") == "blocks.4.ln1.hook_scale"``; ``"attn"`` means the
    pattern and ``"attn_logits"`` the scores; ``get_act_name("scale")`` is the final norm's scale.
    A name that is already full (contains a dot or starts with ``hook_``) is returned unchanged.
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    match = re.fullmatch(r"([a-z_]+?)(\d+)([a-z][a-z0-9_]*)?", name)
    if match is not None and layer is None:
        name, layer, layer_type = match.group(1), int(match.group(2)), match.group(3) or None
    name = _ACT_NAME_ALIASES.get(name, name)
    full = "" if layer is None else f"blocks.{layer}."
    if name in _ATTN_ACTS:
        layer_type = "attn"
    elif name in _MLP_ACTS:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPE_ALIASES:
        layer_type = _LAYER_TYPE_ALIASES[layer_type]
    if layer_type:
        full += f"{layer_type}."
    full += f"hook_{name}"
    if name in _NORM_ACTS and layer is None:
        full = f"ln_final.{full}"
    return full


class SliceInputError(TypeError, ValueError):
    """A `Slice` built from something that is not an index. Also a ValueError, which the classic
    raised, so code that caught that keeps working."""


# What `Slice` accepts (the classic type alias): None, an int, a (start, stop[, step]) tuple, a
# list of ints, or an array/tensor of indices (or a boolean mask).
SliceInput = (
    int
    | tuple[int]
    | tuple[int, int]
    | tuple[int, int, int]
    | list[int]
    | Tensor
    | np.ndarray
    | None
)


class Slice:
    """An index along one axis: None (everything), an int (selects and drops the axis), a
    ``(start, stop[, step])`` tuple, a slice, or a list/array/tensor of indices."""

    def __init__(self, input_slice: Any = None) -> None:
        if isinstance(input_slice, Slice):
            input_slice = input_slice.slice
        if isinstance(input_slice, np.integer) or (
            isinstance(input_slice, Tensor) and input_slice.dim() == 0
        ):
            input_slice = int(input_slice)  # a numpy or 0-d tensor index selects like an int
        if isinstance(input_slice, tuple):
            input_slice = slice(*input_slice)
        elif isinstance(input_slice, list | np.ndarray):
            input_slice = torch.as_tensor(np.asarray(input_slice), dtype=torch.long)
        elif input_slice is not None and not isinstance(input_slice, int | slice | Tensor):
            raise SliceInputError(
                f"Cannot build a Slice from {type(input_slice).__name__}: pass None, an int, a "
                "(start, stop[, step]) tuple, a slice, or a list/array/tensor of indices."
            )
        self.slice: int | slice | Tensor | None = input_slice

    @property
    def mode(self) -> str:
        """The classic name of the kind of index: "int", "slice", "array" or "identity"."""
        if self.slice is None:
            return "identity"
        if isinstance(self.slice, int):
            return "int"
        return "slice" if isinstance(self.slice, slice) else "array"

    def apply(self, tensor: Tensor, dim: int = 0) -> Tensor:
        if self.slice is None:
            return tensor
        index: list[Any] = [slice(None)] * tensor.dim()
        index[dim] = self.slice
        return tensor[tuple(index)]

    def indices(self, max_ctx: int | None = None) -> np.ndarray:
        """The integer indices this slice selects out of ``range(max_ctx)``.

        Only an int slice knows them without `max_ctx` (as in the classic library); a list of
        indices is checked against `max_ctx` and its negative entries counted from the end.
        """
        if isinstance(self.slice, int):
            return np.array([self.slice])
        if max_ctx is None:
            raise ValueError(
                f"{self!r}.indices() needs max_ctx, the length of the axis it indexes; only an "
                "int slice has indices without it."
            )
        positions = np.arange(max_ctx)
        if isinstance(self.slice, Tensor):
            return positions[self.slice.cpu().numpy()]
        return positions[self.slice if self.slice is not None else slice(None)]

    def __repr__(self) -> str:
        return f"Slice({self.slice!r})"

    @classmethod
    def unwrap(cls, slice_input: Any) -> Slice:
        """A Slice from a Slice or its input; an int becomes ``[int]``, so it keeps its axis."""
        if isinstance(slice_input, Slice):
            return slice_input
        if isinstance(slice_input, int):
            slice_input = [slice_input]
        return cls(slice_input)


def lm_cross_entropy_loss(
    logits: Tensor,
    tokens: Tensor,
    attention_mask: Tensor | None = None,
    per_token: bool = False,
) -> Tensor:
    """Next-token cross-entropy. With a mask, predictions to or from padding are ignored.

    Per token it returns ``[batch, pos - 1]`` (zero where masked); otherwise the mean over the
    predictions that count.
    """
    _check_logits_and_tokens(logits, tokens, attention_mask)
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = tokens[:, 1:].to(logits.device)
    nll = -log_probs.gather(-1, targets[..., None])[..., 0]  # [b, p - 1]
    if attention_mask is None:
        return nll if per_token else nll.mean()
    mask = attention_mask.to(logits.device).bool()
    valid = mask[:, 1:] & mask[:, :-1]
    nll = torch.where(valid, nll, torch.zeros_like(nll))  # not nll * valid: NaN * 0 is NaN
    return nll if per_token else nll.sum() / valid.sum().clamp(min=1)


def _check_logits_and_tokens(logits: Tensor, tokens: Tensor, mask: Tensor | None) -> None:
    """Logits ``[b, p, d_vocab]`` and the tokens ``[b, p]`` they were computed from: anything
    else would be gathered or broadcast into a loss over the wrong positions."""
    if logits.dim() != 3 or tokens.dim() != 2 or tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be [batch, pos, d_vocab] and tokens [batch, pos] of the same batch and "
            f"pos; got logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)}."
        )
    if tokens.is_floating_point():
        raise TypeError(f"tokens must be token ids (ints), got {tokens.dtype}.")
    if mask is not None and mask.shape != tokens.shape:
        raise ValueError(
            f"attention_mask must have the tokens' shape {tuple(tokens.shape)}, got "
            f"{tuple(mask.shape)}."
        )
    if tokens.numel():
        check_token_ids(tokens, logits.shape[-1], "tokens", "the logits' d_vocab")


def lm_accuracy(logits: Tensor, tokens: Tensor, per_token: bool = False) -> Tensor:
    """Fraction of positions where the argmax prediction is the next token."""
    _check_logits_and_tokens(logits, tokens, None)
    correct = logits[:, :-1].argmax(-1) == tokens[:, 1:].to(logits.device)
    return correct if per_token else correct.float().mean()


class ShapeMismatchError(ValueError, AssertionError):
    """Two operands whose shapes do not fit together (`composition_scores`, `check_structure`).
    Also an AssertionError, which the classic raised."""


class ToNumpyTypeError(TypeError, ValueError):
    """`to_numpy` got something it cannot convert. Also a ValueError, which the classic raised."""


def to_numpy(tensor: Any) -> np.ndarray:
    """A numpy array from a tensor (detached, on the CPU; bfloat16, which numpy lacks, becomes
    float32), an array (returned as is), a list, a tuple or a Python scalar."""
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, list | tuple):
        return np.array(tensor)
    if isinstance(tensor, Tensor):
        tensor = tensor.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    if isinstance(tensor, int | float | bool | str):
        return np.array(tensor)
    raise ToNumpyTypeError(
        f"to_numpy got an invalid type: {type(tensor).__name__}; pass a tensor, a numpy array, a "
        "list, a tuple or a Python scalar."
    )


def remove_batch_dim(tensor: Tensor) -> Tensor:
    """Drop a leading batch axis of size 1 (returns other tensors unchanged)."""
    return tensor[0] if tensor.dim() > 0 and tensor.shape[0] == 1 else tensor


def get_corner(tensor: Any, n: int = 3) -> Any:
    """The top-left ``n x n x ...`` corner of a tensor (or FactoredMatrix), for quick looks."""
    if hasattr(tensor, "get_corner"):
        return tensor.get_corner(n)
    return tensor[tuple(slice(n) for _ in range(tensor.dim()))]


def is_square(x: Tensor) -> bool:
    """Whether `x` is a square matrix."""
    return x.dim() == 2 and x.shape[0] == x.shape[1]


def is_lower_triangular(x: Tensor) -> bool:
    """Whether `x` is a square matrix with nothing above the diagonal."""
    return is_square(x) and bool(torch.equal(x, x.tril()))


def test_prompt(
    prompt: str,
    answer: str | list[str],
    model: Any,
    prepend_space_to_answer: bool = True,
    print_details: bool = True,
    prepend_bos: bool | None = None,
    top_k: int = 10,
) -> list[tuple[str, float, int]]:
    """Print (and return) the answer tokens' ranks and probabilities, and the top-k predictions.

    Returns, per answer token, ``(token, probability, rank)``. With a list of answers (as the
    classic), only the next token is compared: one entry per answer, its first token.
    """
    answers = [answer] if isinstance(answer, str) else list(answer)
    if prepend_space_to_answer:
        answers = [a if a.startswith(" ") else " " + a for a in answers]
    prompt_tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
    start = prompt_tokens.shape[1] - 1
    answer_ids = [model.to_tokens(text, prepend_bos=False) for text in answers]
    if len(answers) > 1:
        answer_ids = [ids[:, :1] for ids in answer_ids]
    if print_details:
        print("Tokenized prompt:", model.to_str_tokens(prompt_tokens))
        if len(answers) > 1:
            print("Tokenized answers:", [model.to_str_tokens(ids) for ids in answer_ids])
        else:
            print("Tokenized answer:", model.to_str_tokens(answer_ids[0]))
    results = []
    for answer_tokens in answer_ids:
        tokens = torch.cat((prompt_tokens, answer_tokens.to(prompt_tokens.device)), dim=1)
        with torch.no_grad():
            logits = model(tokens)
        probs = logits.float().softmax(-1)[0]
        for i, token in enumerate(answer_tokens[0].tolist()):
            row = probs[start + i]
            rank = int((row > row[token]).sum())
            token_text = model.to_single_str_token(token)
            results.append((token_text, float(row[token]), rank))
            if print_details:
                print(
                    f"Performance on answer token {token_text!r}: rank {rank}, "
                    f"logit {float(logits[0, start + i, token]):.2f}, prob {float(row[token]):.2%}"
                )
                top = row.topk(min(top_k, row.shape[-1]))
                for r, (p, t) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                    print(f"  top {r}: {model.to_single_str_token(t)!r} {p:.2%}")
    if print_details:
        print("Ranks of the answer tokens:", [(t, rank) for t, _, rank in results])
    return results


test_prompt.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def composition_scores(
    left: FactoredMatrix, right: FactoredMatrix, broadcast_dims: bool = True
) -> Tensor:
    """How much ``left`` feeds ``right``: ``||L R||_F / (||L||_F ||R||_F)``, in ``[0, 1]``.

    ``L = left.AB`` and ``R = right.AB`` in the row-vector convention (``x @ L @ R``), so for
    heads in layers ``i < j`` the classic calls are ``composition_scores(OV_i, QK_j)`` (Q
    composition), ``(OV_i, QK_j.T)`` (K) and ``(OV_i, OV_j)`` (V) (Elhage et al. 2021, "A
    Mathematical Framework for Transformer Circuits", section on composition).

    With ``broadcast_dims`` the result is ``[*left_leading, *right_leading]`` (every left
    matrix against every right one); otherwise the leading dims broadcast against each other.
    Computed in float64 from the factors (no ``d_model x d_model`` product) and returned as
    float64. A zero matrix on either side gives NaN (0 / 0).
    """
    if broadcast_dims:
        n_left, n_right = left.ndim - 2, right.ndim - 2
        for i in range(n_left):
            right = right.unsqueeze(i)
        for i in range(n_right):
            left = left.unsqueeze(n_left + i)
    if left.rdim != right.ldim:
        raise ShapeMismatchError(
            "composition_scores needs left.rdim == right.ldim; shapes were left "
            f"{tuple(left.shape)}, right {tuple(right.shape)}"
        )
    left = FactoredMatrix(left.A.double(), left.B.double())
    right = FactoredMatrix(right.A.double(), right.B.double())
    product = left @ right
    assert isinstance(product, FactoredMatrix)
    return product.norm() / (left.norm() * right.norm())


def get_matrix_corner(matrix: FactoredMatrix, n: int = 3) -> Tensor:
    """The top-left ``n x n x ...`` corner of a FactoredMatrix's product, as a tensor."""
    return matrix.get_corner(n)


# --- tensors -----------------------------------------------------------------------------------


def transpose(tensor: Tensor) -> Tensor:
    """`tensor` with its last two axes swapped, whatever its leading axes."""
    return tensor.transpose(-1, -2)


def check_structure(t1: Tensor, t2: Tensor, *, verbose: bool = False) -> None:
    """Print whether two matrices order their neighbouring entries alike (a debugging aid).

    For each pair of consecutive rows (then columns) it compares ``t[i] >= t[i + 1]``
    elementwise in both matrices and prints ``PASSED`` or the first kind of mismatch found
    (row indices, else column indices); `verbose` prints every mismatching pair.
    """
    if t1.dim() != 2 or t1.shape != t2.shape:
        raise ShapeMismatchError(
            f"check_structure compares two matrices of one shape, got {tuple(t1.shape)} and "
            f"{tuple(t2.shape)}."
        )
    mismatches = {}
    for axis, label in ((0, "rows"), (1, "columns")):
        a, b = t1.movedim(axis, 0), t2.movedim(axis, 0)
        if verbose:
            print(f"Checking {label}")
        found = []
        for i in range(a.shape[0] - 1):
            order1, order2 = a[i].ge(a[i + 1]), b[i].ge(b[i + 1])
            if bool((order1 != order2).any()):
                found.append(i)
                if verbose:
                    print(
                        f"\t{label} {i}:{i + 1}\n\tt1: {order1.tolist()}\n\tt2: {order2.tolist()}"
                    )
        mismatches[label] = found
    if mismatches["rows"]:
        print(f"row mismatch: {mismatches['rows']}")
    elif mismatches["columns"]:
        print(f"column mismatch: {mismatches['columns']}")
    else:
        print("PASSED")


def get_offset_position_ids(past_kv_pos_offset: int, attention_mask: Tensor) -> Tensor:
    """Positions ``[batch, pos]`` of the tokens after the first `past_kv_pos_offset`, counting
    only real tokens: a row's first real token is position 0 (its leading padding gets 0 too).

    `attention_mask` ``[batch, offset + pos]`` covers the cached tokens and the new ones.
    """
    positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # [batch, offset + pos]
    return positions[:, past_kv_pos_offset:]


def get_cumsum_along_dim(tensor: Tensor, dim: int, reverse: bool = False) -> Tensor:
    """Cumulative sum along `dim`; with `reverse`, summed from the end (suffix sums)."""
    if not reverse:
        return tensor.cumsum(dim=dim)
    return tensor.flip(dims=(dim,)).cumsum(dim=dim).flip(dims=(dim,))


def repeat_along_head_dimension(tensor: Tensor, n_heads: int, clone_tensor: bool = True) -> Tensor:
    """``[batch, pos, d_model] -> [batch, pos, n_heads, d_model]``, one copy per head.

    Without `clone_tensor` the result is an expanded view: every head shares the input's memory.
    """
    repeated = tensor.unsqueeze(-2).expand(*tensor.shape[:-1], n_heads, tensor.shape[-1])
    return repeated.clone() if clone_tensor else repeated


def filter_dict_by_prefix(dictionary: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries whose key starts with ``prefix + "."`` (the dot is added when missing), with
    that prefix stripped: ``{"a.b.c": 1, "a.bc": 2}`` and ``"a.b"`` give ``{"c": 1}``."""
    start = prefix if prefix.endswith(".") else prefix + "."
    return {key[len(start) :]: value for key, value in dictionary.items() if key.startswith(start)}


# --- activation functions ----------------------------------------------------------------------


def gelu_new(input: Tensor) -> Tensor:
    """GPT-2's GELU, the tanh approximation ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    return F.gelu(input, approximate="tanh")


def gelu_fast(input: Tensor) -> Tensor:
    """The same tanh approximation of GELU as `gelu_new` (the name some checkpoints use)."""
    return F.gelu(input, approximate="tanh")


def gelu_pytorch_tanh(input: Tensor) -> Tensor:
    """The tanh approximation of GELU, under Hugging Face's name for it."""
    return F.gelu(input, approximate="tanh")


def solu(input: Tensor) -> Tensor:
    """SoLU, ``x * softmax(x)`` over the last axis (Elhage et al. 2022, "Softmax Linear Units");
    the MLP applies its LayerNorm afterwards."""
    return input * F.softmax(input, dim=-1)


def xielu(input: Tensor) -> Tensor:
    """xIELU (Huang et al. 2024, arXiv:2411.13010) with its initial parameters, ``alpha_p =
    alpha_n = 0.8``, ``beta = 0.5``; the MLP's own xIELU learns its alphas."""
    raw_p = math.log(math.expm1(XIELU_ALPHA_INIT))  # softplus(raw_p) == 0.8
    raw_n = math.log(math.expm1(XIELU_ALPHA_INIT - XIELU_BETA))  # beta + softplus(raw_n) == 0.8
    return _xielu(input, input.new_tensor(raw_p), input.new_tensor(raw_n))


ActivationFunction = Callable[..., Tensor]

# Activation name -> function, the classic table (`ACTIVATION_FN_DICT` in 2.x).
SUPPORTED_ACTIVATIONS: dict[str, ActivationFunction] = {
    "solu": solu,
    "solu_ln": solu,
    "gelu_new": gelu_new,
    "gelu_fast": gelu_fast,
    "silu": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": gelu_pytorch_tanh,
    "xielu": xielu,
}
ACTIVATION_FN_DICT = SUPPORTED_ACTIVATIONS


# --- defaults that a call can override ---------------------------------------------------------

USE_DEFAULT_VALUE = None  # what an argument holds when the model's default should apply


def override_or_use_default_value(default_flag: Any, override: Any | None = None) -> Any:
    """`override` unless it is None (`USE_DEFAULT_VALUE`), else `default_flag`."""
    return default_flag if override is None else override


def get_nested_attr(obj: Any, attr_str: str) -> Any:
    """``obj.a.b.c`` for ``attr_str="a.b.c"``."""
    for attr in attr_str.split("."):
        obj = getattr(obj, attr)
    return obj


def set_nested_attr(obj: Any, attr_str: str, value: Any) -> None:
    """Set ``obj.a.b.c = value`` for ``attr_str="a.b.c"``."""
    *path, last = attr_str.split(".")
    setattr(get_nested_attr(obj, ".".join(path)) if path else obj, last, value)


class InvalidOverrideError(ValueError, AssertionError):
    """`LocallyOverridenDefaults` got an unknown setting or a value it cannot take. Also an
    AssertionError, which the classic raised."""


class LocallyOverridenDefaults:
    """Within ``with LocallyOverridenDefaults(model, prepend_bos=..., padding_side=...):`` the
    model's defaults are the given values (None keeps a default); on exit they are restored.

    ``prepend_bos`` sets ``model.cfg.default_prepend_bos``; ``padding_side`` sets
    ``model.cfg.default_padding_side`` (which anatomist's tokenizer helpers read) and, when the
    model has a tokenizer, ``model.tokenizer.padding_side`` (which the classic read).
    """

    _VALID: ClassVar[dict[str, tuple[Any, ...]]] = {
        "prepend_bos": (USE_DEFAULT_VALUE, True, False),
        "padding_side": (USE_DEFAULT_VALUE, "left", "right"),
    }

    def __init__(self, model: Any, **overrides: Any) -> None:
        for name, value in overrides.items():
            if name not in self._VALID:
                raise InvalidOverrideError(
                    f"{name!r} is not a default that can be overridden; the ones that can are "
                    f"{sorted(self._VALID)}."
                )
            if not any(value is v or (v is not None and value == v) for v in self._VALID[name]):
                raise InvalidOverrideError(
                    f"{name} must be one of {list(self._VALID[name])}, got {value!r}."
                )
        self.model = model
        self.overrides = overrides
        self._saved: list[tuple[str, Any]] = []

    def _locations(self, name: str) -> list[str]:
        if name == "prepend_bos":
            return ["cfg.default_prepend_bos"]
        locations = ["cfg.default_padding_side"]
        if getattr(self.model, "tokenizer", None) is not None:
            locations.append("tokenizer.padding_side")
        return locations

    def __enter__(self) -> LocallyOverridenDefaults:
        for name, value in self.overrides.items():
            for location in self._locations(name):
                current = get_nested_attr(self.model, location)
                self._saved.append((location, current))
                set_nested_attr(self.model, location, override_or_use_default_value(current, value))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for location, value in reversed(self._saved):
            set_nested_attr(self.model, location, value)
        self._saved = []


# --- environment: libraries, devices, memory --------------------------------------------------


def is_library_available(name: str) -> bool:
    """Whether module `name` is imported or importable, without importing it."""
    return name in sys.modules or importlib.util.find_spec(name) is not None


# The classic library's switch for choosing Apple's MPS backend automatically.
_ALLOW_MPS_ENV = "TRANSFORMERLENS_ALLOW_MPS"
_mps_warned = False


def get_device() -> str:
    """The best device available: ``"cuda"``, else ``"mps"`` when the environment variable
    ``TRANSFORMERLENS_ALLOW_MPS=1`` opts in (MPS has given silently wrong results), else
    ``"cpu"``."""
    if torch.cuda.is_available():
        return "cuda"
    mps = torch.backends.mps
    if mps.is_available() and mps.is_built() and os.environ.get(_ALLOW_MPS_ENV) == "1":
        return "mps"
    return "cpu"


def warn_if_mps(device: str | torch.device) -> None:
    """Warn once per process when `device` is MPS and ``TRANSFORMERLENS_ALLOW_MPS=1`` is unset."""
    global _mps_warned
    if torch.device(device).type != "mps" or _mps_warned or os.environ.get(_ALLOW_MPS_ENV) == "1":
        return
    _mps_warned = True
    warnings.warn(
        f"MPS backend may produce silently incorrect results (PyTorch {torch.__version__}): "
        f"compare against the CPU, and set {_ALLOW_MPS_ENV}=1 to silence this warning.",
        UserWarning,
        stacklevel=2,
    )


@runtime_checkable
class ModelWithCfg(Protocol):
    """A module with a ``cfg`` that records its device and dtype."""

    cfg: Any

    def state_dict(self) -> Any: ...

    def to(self, device_or_dtype: Any) -> Any: ...


def move_to_and_update_config(
    model: Any, device_or_dtype: str | torch.device | torch.dtype, print_details: bool = True
) -> Any:
    """``nn.Module.to(model, device_or_dtype)`` with ``model.cfg.device`` (the device type) or
    ``model.cfg.dtype`` (when the config has one) updated to match."""
    if isinstance(device_or_dtype, torch.dtype):
        if hasattr(model.cfg, "dtype"):
            model.cfg.dtype = device_or_dtype
        message = f"Changing model dtype to {device_or_dtype}"
    else:
        warn_if_mps(device_or_dtype)
        model.cfg.device = torch.device(device_or_dtype).type
        message = f"Moving model to device: {model.cfg.device}"
    if print_details:
        print(message)
    # nn.Module's own `to`: a model's `to` may itself be built on this function.
    return nn.Module.to(model, device_or_dtype)


def print_gpu_mem(step_name: str = "") -> None:
    """Print the GPU memory torch has allocated, in GiB (the classic divided by 2e30, not 2**30,
    so it always printed 0.0)."""
    print(f"{step_name} ~ {torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated on GPU.")


# --- logits and caches -------------------------------------------------------------------------


def logits_to_df(logits: Tensor, tokenizer: Any = None, top_k: int | None = None) -> Any:
    """A pandas DataFrame of one position's logits ``[d_vocab]``, most probable first: columns
    ``token_index``, ``token_string`` (with a tokenizer), ``logit``, ``log_prob``,
    ``probability``; `top_k` keeps that many rows."""
    import pandas as pd

    if logits.dim() != 1:
        raise ValueError(
            f"logits_to_df takes one position's logits [d_vocab], got shape "
            f"{tuple(logits.shape)}; index the batch and position first (logits[0, -1])."
        )
    log_probs = F.log_softmax(logits.detach().float(), dim=-1)
    order = log_probs.argsort(descending=True)[:top_k]
    data: dict[str, list[Any]] = {"token_index": order.tolist()}
    if tokenizer is not None:
        data["token_string"] = [tokenizer.decode([i]) for i in data["token_index"]]
    data["logit"] = logits.detach()[order].cpu().tolist()
    data["log_prob"] = log_probs[order].cpu().tolist()
    data["probability"] = log_probs[order].exp().cpu().tolist()
    return pd.DataFrame(data)


def get_pos_offset(past_kv_cache: Any, batch_size: int) -> int:
    """How many positions `past_kv_cache` already holds: the length of its mask (a
    sliding-window layer keeps fewer keys), else its first layer's key count (0 without a
    cache); `batch_size` is accepted for the classic signature and unused."""
    if past_kv_cache is None:
        return 0
    if hasattr(past_kv_cache, "length"):
        return int(past_kv_cache.length)
    return int(past_kv_cache.entries[0].past_keys.shape[1])


ModuleT = TypeVar("ModuleT", bound=nn.Module)


class TypedModuleList(nn.ModuleList, Generic[ModuleT]):
    """An ``nn.ModuleList`` whose type names what it holds (``TypedModuleList[nn.Linear]``); at
    run time exactly an ``nn.ModuleList`` (slicing gives a TypedModuleList)."""


__all__ = [
    "ACTIVATION_FN_DICT",
    "ActivationFunction",
    "CACHE_DIR",
    "DATASET_ALIASES",
    "HubFileUnavailableError",
    "InvalidOverrideError",
    "LocallyOverridenDefaults",
    "ModelWithCfg",
    "NonlinearityType",
    "SUPPORTED_ACTIVATIONS",
    "ShapeMismatchError",
    "Slice",
    "SliceInput",
    "SliceInputError",
    "StreamedTokenDataset",
    "ToNumpyTypeError",
    "TokenDataset",
    "TypedModuleList",
    "USE_DEFAULT_VALUE",
    "calc_fan_in_and_fan_out",
    "call_hf_with_retry",
    "check_structure",
    "clear_huggingface_cache",
    "composition_scores",
    "download_file_from_hf",
    "enable_hf_retry",
    "filter_dict_by_prefix",
    "gelu_fast",
    "gelu_new",
    "gelu_pytorch_tanh",
    "get_act_name",
    "get_attention_mask",
    "get_corner",
    "get_cumsum_along_dim",
    "get_dataset",
    "get_device",
    "get_device_for_block_index",
    "get_input_with_manually_prepended_bos",
    "get_matrix_corner",
    "get_nested_attr",
    "get_offset_position_ids",
    "get_pos_offset",
    "get_rotary_pct_from_config",
    "get_tokenizer_with_bos",
    "get_tokens_with_bos_removed",
    "init_kaiming_normal_",
    "init_kaiming_uniform_",
    "init_xavier_normal_",
    "init_xavier_uniform_",
    "is_library_available",
    "is_lower_triangular",
    "is_square",
    "keep_single_column",
    "lm_accuracy",
    "lm_cross_entropy_loss",
    "logits_to_df",
    "move_to_and_update_config",
    "override_or_use_default_value",
    "print_gpu_mem",
    "remove_batch_dim",
    "repeat_along_head_dimension",
    "sample_logits",
    "select_compatible_kwargs",
    "set_nested_attr",
    "solu",
    "test_prompt",
    "to_numpy",
    "tokenize_and_concatenate",
    "transpose",
    "warn_if_mps",
    "xielu",
]
