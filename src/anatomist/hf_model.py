"""`HookedHFModel`: hook points on any Hugging Face causal language model, for architectures
anatomist has not ported natively (a new release, CodeGen, MPT, Mamba, ...).

It *is* the ``transformers`` model (``model.hf_model``), run as transformers runs it; anatomist
only watches module boundaries with torch forward hooks that hand each output to a `HookPoint`:

- the classic names every decoder has: ``hook_embed`` (the token embedding's output),
  ``blocks.{i}.hook_resid_pre`` / ``hook_resid_post`` (each layer's input and output),
  ``blocks.{i}.hook_attn_out`` / ``hook_mlp_out`` (where the layer has an attention / MLP module
  under a usual name), ``ln_final.hook_normalized`` (the final norm's output) and
  ``hook_logits`` (the head's output); ``blocks.{i}.attn.hook_z`` (each head's output,
  ``[batch, pos, head, d_head]``: the input of the attention's output projection, where it has
  one named o_proj/out_proj/c_proj/dense/wo);
- every submodule's output under its Hugging Face path (``model.layers.3.self_attn.o_proj``);
  a module that returns a tuple shows its first element;
- ``blocks.{i}.attn.hook_pattern`` (read-only): the attention weights, only when a hook or the
  cache asks for them; the model then runs with eager attention for that call (a warning says
  so once), since fused attention never forms the weights.

So the hook API works unchanged: run_with_hooks, run_with_cache (names_filter, incl_bwd),
hooks(), reset_hooks, activation patching on these hook points, the logit lens (through the
model's own final norm and head), generate (transformers' generate, hooks firing each step).
What needs anatomist's own implementation (weight views such as W_Q, FactoredMatrix circuits,
weight processing, per-head hooks) raises `NeedsNativeFamilyError`.

Nothing from a model folder is ever executed (``trust_remote_code=False``), and loading never
goes online (``local_files_only=True``).
"""

from __future__ import annotations

import copy
import inspect
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from anatomist.hooks import HookedRootModule, HookPoint, UnknownHookError
from anatomist.model.generate import _resolve_return_type
from anatomist.model.tokens import TokenizerMixin, check_token_ids, token_batch
from anatomist.model.transformer import RETURN_TYPES, Output
from anatomist.utils import lm_cross_entropy_loss

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention", "mixer_attn")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "ffn_layer")
# The attention module's output projection: its input is the heads' outputs side by side.
OUT_PROJECTION_NAMES = ("o_proj", "out_proj", "c_proj", "dense", "wo")
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "norm_f", "final_layer_norm", "ln_out")

# Attributes and methods that read or rewrite anatomist's own weight layout.
NATIVE_ONLY = frozenset(
    {
        *(f"W_{n}" for n in ("Q", "K", "V", "O", "E", "U", "pos", "in", "out", "gate", "E_pos")),
        *(f"b_{n}" for n in ("Q", "K", "V", "O", "U", "in", "out")),
        "QK",
        "OV",
        "process_weights_",
        "fold_layer_norm",
        "center_writing_weights",
        "center_unembed",
        "fold_value_biases",
        "refactor_factored_attn_matrices",
        "set_use_attn_result",
        "set_use_split_qkv_input",
        "set_use_hook_mlp_in",
        "set_use_attn_in",
        "tokens_to_residual_directions",
        "blocks",
        "embed",
        "unembed",
        "ln_final",
    }
)
# Hook names of the native model that need its own attention and MLP code.
_NATIVE_HOOKS = (
    "hook_q",
    "hook_k",
    "hook_v",
    "hook_result",
    "hook_attn_scores",
    "hook_rot_q",
    "hook_rot_k",
    "hook_pre",
    "hook_post",
    "hook_scale",
    "hook_resid_mid",
    "hook_pos_embed",
    "hook_attn_in",
    "hook_mlp_in",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
)


class NeedsNativeFamilyError(NotImplementedError, AttributeError):
    """What a wrapped Hugging Face model cannot do: it needs anatomist's own implementation of
    the architecture (a native family). An AttributeError too, so ``hasattr`` answers False."""


class HookedHFModel(TokenizerMixin, HookedRootModule):
    """Hook points on a ``transformers`` causal LM (see the module docstring).

    ``HookedHFModel(hf_model, tokenizer=None)`` wraps a model you built; `from_pretrained` loads
    one offline by name or path, as `HookedTransformer.from_pretrained` finds it.
    """

    hf_model: Any  # a transformers PreTrainedModel

    def __init__(self, hf_model: nn.Module, tokenizer: Any = None) -> None:
        super().__init__()
        from anatomist.config import TransformerConfig

        self.hf_model = hf_model
        hf_config: Any = hf_model.config
        text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
        layers_path, layers = _find_layers(hf_model, text)
        # Plain attributes, not submodules: they are hf_model's own modules.
        object.__setattr__(self, "_layers_path", layers_path)
        object.__setattr__(self, "_layers", layers)
        d_model = int(_first(text, ("hidden_size", "d_model", "n_embd", "n_embed")))
        n_heads = int(_first(text, ("num_attention_heads", "n_head", "n_heads"), 1) or 1)
        param = next(hf_model.parameters(), None)
        self.cfg = TransformerConfig(
            n_layers=len(self._layers),
            d_model=d_model,
            n_heads=n_heads,
            d_head=max(1, d_model // n_heads),
            d_vocab=int(_first(text, ("vocab_size",))),
            n_ctx=int(_first(text, ("max_position_embeddings", "n_positions", "n_ctx"), 2048)),
            act_fn="gelu",
            model_name=str(getattr(hf_config, "_name_or_path", "") or type(hf_model).__name__),
            original_architecture=type(hf_model).__name__,
            device=str(param.device) if param is not None else None,
            dtype=param.dtype if param is not None else torch.float32,
        )
        self._handles: list[Any] = []
        self._takes_position_ids = "position_ids" in inspect.signature(hf_model.forward).parameters
        self._warned_eager = False
        self.setup()
        self.set_tokenizer(tokenizer)

    # --- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        tokenizer: Any = None,
        revision: str | None = None,
        **hf_kwargs: Any,
    ) -> HookedHFModel:
        """Load a causal LM with ``AutoModelForCausalLM``, offline: whatever
        `HookedTransformer.from_pretrained` finds (a local folder, a ``.gguf`` file, a packaged
        model's name, a registry name or a repo id in the Hugging Face cache;
        `anatomist.loading.resolve`). Never runs code from the folder (``trust_remote_code`` is
        refused). The tokenizer beside the weights is loaded when there is one (or pass
        `tokenizer`); `hf_kwargs` go to transformers' ``from_pretrained``."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from anatomist.loading.resolve import resolve_checkpoint

        if hf_kwargs.pop("trust_remote_code", False):
            raise ValueError(
                "trust_remote_code=True is refused: anatomist never executes code from a model "
                "folder. A custom architecture needs its modeling code installed as a package."
            )
        if hf_kwargs.pop("local_files_only", True) is False:
            raise ValueError(
                "local_files_only=False is refused: HookedHFModel loads offline (a local folder, "
                "a .gguf file, a packaged model, or a repo id already in the Hugging Face cache)."
            )
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"dtype {dtype!r} is not a torch dtype (e.g. 'bfloat16').")
            dtype = getattr(torch, dtype)
        found = resolve_checkpoint(name_or_path, revision=revision, local_files_only=True)
        source = found.path.parent if found.kind == "gguf" else found.path
        settings: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
        if found.kind == "gguf":
            settings["gguf_file"] = found.path.name
        try:
            hf_model: Any = AutoModelForCausalLM.from_pretrained(
                source, **settings, **({"dtype": dtype} if dtype is not None else {}), **hf_kwargs
            )
        except (OSError, ValueError) as error:
            raise ValueError(
                f"transformers could not load {str(name_or_path)!r} ({found.path}) as a causal "
                f"LM ({type(error).__name__}: {error})."
            ) from error
        if device is not None:
            hf_model = hf_model.to(device)
        hf_model.eval()
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(source, **settings)
            except (OSError, ValueError, TypeError):
                tokenizer = None  # weights without tokenizer files: token ids only
        return cls(hf_model, tokenizer)

    # --- hook points ------------------------------------------------------------------------------
    def setup(self) -> None:
        """Build the hook points and attach one torch forward hook per watched module."""
        for handle in getattr(self, "_handles", []):
            handle.remove()
        self._handles = []
        self._pattern_points: list[HookPoint] = []
        self.hook_dict = {}
        self.mod_dict = {}
        hf = self.hf_model
        embed, head = hf.get_input_embeddings(), hf.get_output_embeddings()
        if embed is not None:
            self._watch(embed, "hook_embed")
        for i, layer in enumerate(self._layers):
            self._watch_input(layer, f"blocks.{i}.hook_resid_pre")
            self._watch(layer, f"blocks.{i}.hook_resid_post")
            attn = _child(layer, ATTENTION_NAMES)
            if attn is not None:
                self._watch(attn, f"blocks.{i}.hook_attn_out")
                self._watch_pattern(attn, f"blocks.{i}.attn.hook_pattern")
                projection = _child(attn, OUT_PROJECTION_NAMES)
                if projection is not None:
                    point = self._point(f"blocks.{i}.attn.hook_z")
                    hook = _heads_hook(point, self.cfg.n_heads)
                    self._handles.append(projection.register_forward_pre_hook(hook))
            mlp = _child(layer, MLP_NAMES)
            if mlp is not None:
                self._watch(mlp, f"blocks.{i}.hook_mlp_out")
        object.__setattr__(self, "_final_norm", _final_norm(hf, self._layers_path))
        if self._final_norm is not None:
            self._watch(self._final_norm, "ln_final.hook_normalized")
        if head is not None:
            self._watch(head, "hook_logits")
        for path, module in hf.named_modules():
            if path:
                self.mod_dict[path] = module
                self._watch(module, path)

    def unwrap(self) -> Any:
        """Remove the wrapper's torch hooks from ``hf_model`` and return it, as it was before
        wrapping (this wrapper's hook points stop firing)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return self.hf_model

    def hooked_modules(self) -> list[str]:
        """The hook points with hooks attached. Patching's fast path asks this instead of
        scanning the modules for torch hooks: the wrapper's own watchers and transformers' hooks
        are there on every run. Raw torch hooks you add to ``hf_model``'s modules are not seen:
        pass ``reuse=False`` to a patching sweep then."""
        return [name for name, point in self.hook_dict.items() if point.hooked_here()]

    def _point(self, name: str) -> HookPoint:
        point = HookPoint()
        point.name = name
        self.hook_dict[name] = point
        return point

    def _watch(self, module: nn.Module, name: str) -> None:
        point = self._point(name)
        self._handles.append(module.register_forward_hook(_output_hook(point)))

    def _watch_input(self, module: nn.Module, name: str) -> None:
        point = self._point(name)
        self._handles.append(module.register_forward_pre_hook(_input_hook(point), with_kwargs=True))

    def _watch_pattern(self, module: nn.Module, name: str) -> None:
        point = self._point(name)
        self._pattern_points.append(point)  # forward checks these for hooks (eager attention)
        self._handles.append(module.register_forward_hook(_pattern_hook(point)))

    def _unknown_hook(self, name: str) -> UnknownHookError:
        base = name.rsplit(".", 1)[-1]
        inside = name.startswith("blocks.") and any(p in name for p in (".attn.", ".mlp.", ".ln"))
        if base in _NATIVE_HOOKS or inside:
            return UnknownHookError(
                f"Hook {name!r} needs anatomist's own implementation of the architecture (a "
                f"native family); this HookedHFModel wraps {self.cfg.original_architecture}, "
                "whose hook points are the layer boundaries (blocks.{i}.hook_resid_pre/post, "
                "hook_attn_out, hook_mlp_out, attn.hook_pattern, attn.hook_z) and every "
                "submodule's output by its Hugging Face path (model.hook_dict lists them)."
            )
        return super()._unknown_hook(name)

    # --- what only a native family has ------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name in NATIVE_ONLY:
            raise NeedsNativeFamilyError(
                f"model.{name} needs anatomist's own implementation of the architecture (a native "
                f"family); {self.cfg.original_architecture} runs here as Hugging Face's module "
                "tree, whose weights are model.hf_model's parameters. docs/models.md lists the "
                "native families."
            )
        return super().__getattr__(name)

    # --- running ----------------------------------------------------------------------------------
    def forward(
        self,
        input: str | list[str] | Tensor,
        return_type: str | None = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        attention_mask: Tensor | None = None,
        **hf_kwargs: Any,
    ) -> Any:
        """Logits ``[batch, pos, d_vocab]`` (the Hugging Face model's own), or the next-token
        loss (``return_type="loss"``, mean or per token), both (an `Output`, as the native
        model's), or None."""
        if return_type not in RETURN_TYPES:
            raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}.")
        tokens, attention_mask = self._tokens(input, prepend_bos, padding_side, attention_mask)
        if (
            attention_mask is not None
            and "position_ids" not in hf_kwargs
            and self._takes_position_ids
            and not bool(attention_mask.all())
        ):
            # As transformers' generate does: padded rows count positions from their first
            # real token, so a left-padded row computes what it computes alone.
            hf_kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        with self._patterns() as extra:
            hf_kwargs.setdefault("use_cache", False)
            output = self.hf_model(
                input_ids=tokens, attention_mask=attention_mask, **extra, **hf_kwargs
            )
        logits = output.logits
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = lm_cross_entropy_loss(logits, tokens, attention_mask, per_token=loss_per_token)
        return loss if return_type == "loss" else Output(logits, loss)

    def _tokens(
        self,
        input: str | list[str] | Tensor,
        prepend_bos: bool | None,
        padding_side: str | None,
        attention_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor | None]:
        if isinstance(input, str | list):
            tokens, mask = self.tokenize_with_mask(input, prepend_bos, padding_side)
            attention_mask = mask if attention_mask is None else attention_mask
        else:
            tokens = token_batch(input)
            check_token_ids(tokens, self.cfg.d_vocab)
        # Where the embedding is now (the model may have moved since it was wrapped).
        param = next(self.hf_model.parameters(), None)
        if param is not None:
            self.cfg.device = str(param.device)
            tokens = tokens.to(param.device)
            if attention_mask is not None:
                attention_mask = attention_mask.to(param.device)
        return tokens, attention_mask

    @contextmanager
    def _patterns(self) -> Iterator[dict[str, Any]]:
        """Eager attention, and the weights returned, while a hook wants a pattern."""
        if not any(point.hooked_here() for point in self._pattern_points):
            yield {}
            return
        config = self.hf_model.config
        before = getattr(config, "_attn_implementation", None)
        if before != "eager":
            if not self._warned_eager:
                warnings.warn(
                    f"attn.hook_pattern needs the attention weights, which {before} attention "
                    "never forms: this call runs the model with eager attention (same results "
                    "up to float rounding, slower).",
                    stacklevel=4,
                )
                self._warned_eager = True
            self.hf_model.set_attn_implementation("eager")
        try:
            yield {"output_attentions": True}
        finally:
            if before != "eager" and before is not None:
                self.hf_model.set_attn_implementation(before)

    def logit_lens(
        self,
        input: str | list[str] | Tensor,
        answer_tokens: Any = None,
        pos_slice: Any = -1,
        *,
        return_type: str = "logits",
        return_labels: bool = False,
        **forward_kwargs: Any,
    ) -> Any:
        """`anatomist.analysis.logit_lens.logit_lens` on this model: the stream before every
        layer and after the last, through the model's own final norm and head (rows
        ``"{l}_pre"`` and ``"final_post"``; the last row is the model's output when the head
        reads the final norm directly)."""
        from anatomist.analysis.logit_lens import logit_lens

        return logit_lens(
            self,
            input,
            answer_tokens,
            pos_slice,
            return_type=return_type,
            return_labels=return_labels,
            **forward_kwargs,
        )

    def lens_rows(
        self, input: str | list[str] | Tensor, pos_slice: Any = -1, **forward_kwargs: Any
    ) -> tuple[Tensor, list[str]]:
        """The logit lens's logits ``[n_layers + 1, batch, *pos, d_vocab]`` and row labels; the
        final norm and head run outside their hooks (as the native lens reads its unembedding)."""
        if self._final_norm is None:
            raise NeedsNativeFamilyError(
                f"the logit lens needs the final norm, and no child named "
                f"{', '.join(FINAL_NORM_NAMES)} sits beside {self._layers_path}."
            )
        n = self.cfg.n_layers
        names = [f"blocks.{i}.hook_resid_pre" for i in range(n)]
        names.append(f"blocks.{n - 1}.hook_resid_post")
        _, cache = self.run_with_cache(
            input, names_filter=names, return_type=None, **forward_kwargs
        )
        stack = torch.stack([cache[name] for name in names])
        if pos_slice is not None:
            stack = stack[:, :, pos_slice]
        head = self.hf_model.get_output_embeddings()
        logits = head.forward(self._final_norm.forward(stack))
        return logits, [f"{i}_pre" for i in range(n)] + ["final_post"]

    @torch.no_grad()
    def generate(
        self,
        input: str | list[str] | Tensor = "",
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: int | list[int] | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        repetition_penalty: float = 1.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        return_type: str | None = "input",
        verbose: bool = True,
    ) -> Any:
        """transformers' ``generate`` with the classic arguments; hooks fire at every step.
        Returns text for text input (``return_type`` "input" or "str"), else token ids
        (``"tokens"``). ``stop_at_eos=False`` generates past EOS (the EOS token is not masked).
        `verbose` is accepted for the classic signature (transformers shows no bar)."""
        output_type = _resolve_return_type(return_type, input)
        side = padding_side or ("left" if isinstance(input, list) else None)
        tokens, mask = self._tokens(input, prepend_bos, side, None)
        settings: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "use_cache": use_past_kv_cache,
            "attention_mask": mask if mask is not None else torch.ones_like(tokens),
        }
        if do_sample:
            settings.update(temperature=temperature, top_k=top_k, top_p=top_p)
        if repetition_penalty != 1.0:
            settings["repetition_penalty"] = repetition_penalty
        if not stop_at_eos:
            generation_config = copy.deepcopy(self.hf_model.generation_config)
            generation_config.eos_token_id = None
            settings["generation_config"] = generation_config
        elif eos_token_id is not None:
            settings["eos_token_id"] = eos_token_id
        pad = getattr(self.tokenizer, "pad_token_id", None) if self.tokenizer else None
        settings["pad_token_id"] = pad if pad is not None else 0
        with self._patterns() as extra:  # hook_pattern hooks see every step's weights
            out = self.hf_model.generate(tokens, **settings, **extra)
        if output_type == "str":
            texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
            return texts[0] if isinstance(input, str) else texts
        return out


def _first(config: Any, names: tuple[str, ...], default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    if default is None:
        raise ValueError(f"the model's config has none of {', '.join(names)}.")
    return default


def _find_layers(hf_model: nn.Module, config: Any) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder layers: the one with as many entries as the config's layer
    count (the longest, if the config does not say)."""
    want = _first(config, ("num_hidden_layers", "n_layer", "num_layers", "n_layers"), -1)
    lists = [(p, m) for p, m in hf_model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    matching = [(p, m) for p, m in lists if len(m) == want] or sorted(
        lists, key=lambda pm: -len(pm[1])
    )
    if not matching:
        raise NeedsNativeFamilyError(
            f"{type(hf_model).__name__} has no list of layers (an nn.ModuleList) to hook."
        )
    return matching[0]


def _child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return child
    return None


def _final_norm(hf_model: nn.Module, layers_path: str) -> nn.Module | None:
    parent_path = layers_path.rsplit(".", 1)[0] if "." in layers_path else ""
    parent = hf_model.get_submodule(parent_path)
    return _child(parent, FINAL_NORM_NAMES)


def _output_hook(point: HookPoint) -> Callable[..., Any]:
    def run(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, Tensor):
            new = point(output)
            return None if new is output else new
        if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
            new = point(output[0])
            return None if new is output[0] else (new, *output[1:])
        if hasattr(output, "to_tuple") and hasattr(output, "keys"):  # a ModelOutput
            keys = list(output.keys())
            if keys and isinstance(output[keys[0]], Tensor):
                new = point(output[keys[0]])
                if new is not output[keys[0]]:
                    output[keys[0]] = new
                    return output
        return None

    return run


def _input_hook(point: HookPoint) -> Callable[..., Any]:
    def run(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args and isinstance(args[0], Tensor):
            new = point(args[0])
            return None if new is args[0] else ((new, *args[1:]), kwargs)
        hidden = kwargs.get("hidden_states")
        if isinstance(hidden, Tensor):
            new = point(hidden)
            if new is not hidden:
                return args, {**kwargs, "hidden_states": new}
        return None

    return run


def _heads_hook(point: HookPoint, n_heads: int) -> Callable[..., Any]:
    """The output projection's input ``[batch, pos, n_heads * d_head]`` as ``hook_z``
    ``[batch, pos, n_heads, d_head]`` (editable; the projection reads the edit)."""

    def run(module: nn.Module, args: tuple[Any, ...]) -> Any:
        if not args or not isinstance(args[0], Tensor) or args[0].shape[-1] % n_heads:
            return None
        heads = args[0]
        z = heads.unflatten(-1, (n_heads, heads.shape[-1] // n_heads))
        new = point(z)
        # (the hook point has checked a replacement's shape, dtype and device)
        return None if new is z else (new.flatten(-2), *args[1:])

    return run


def _pattern_hook(point: HookPoint) -> Callable[..., Any]:
    def run(module: nn.Module, args: Any, output: Any) -> None:
        if not point.hooked_here() or not isinstance(output, tuple):
            return
        pattern = next((t for t in output[1:] if isinstance(t, Tensor) and t.dim() == 4), None)
        if pattern is None:
            return
        if point(pattern) is not pattern:
            raise NeedsNativeFamilyError(
                f"{point.name} is read-only on a wrapped Hugging Face model (the attention "
                "output is already computed from it); editing attention patterns needs a "
                "native family."
            )

    return run
