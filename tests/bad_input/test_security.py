"""Nothing from a model folder is ever executed.

A folder whose config.json points at its own Python (``auto_map``) is refused before anything of
it is read, the tokenizer above all: transformers used to offer to run the folder's code at a
``[y/N]`` prompt. A supported architecture whose tokenizer is custom code is refused with a
clear error (pass ``tokenizer=``) instead of being swapped silently for a generic tokenizer. And
every transformers call that could run code is told ``trust_remote_code=False``.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import transformers

import anatomist
from anatomist import CheckpointError
from anatomist.families.registry import UnsupportedArchitectureError
from tests.helpers import load, tiny_gpt2, tiny_tokenizer

MODULES = ("evil_config", "evil_model", "evil_tokenizer")


def _evil_code(marker: Path) -> str:
    """Python that leaves a marker file and fails when imported: proof that it ran."""
    return f"open({str(marker)!r}, 'w').write('ran')\nraise RuntimeError('remote code ran')\n"


@pytest.fixture(scope="module")
def gpt2_with_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpt2")
    tiny_gpt2(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _with_code(source: Path, folder: Path, marker: Path) -> Path:
    """A copy of `source` with Python files beside the weights (none of it to be run)."""
    folder.mkdir()
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    for module in MODULES:
        (folder / f"{module}.py").write_text(_evil_code(marker))
    return folder


def _edit(path: Path, **changes: Any) -> None:
    settings = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            settings.pop(key, None)
        else:
            settings[key] = value
    path.write_text(json.dumps(settings))


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def no_prompt(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail any attempt to ask the user (transformers' trust_remote_code prompt); stdin is empty
    as in a script. Returns the prompts that were attempted."""
    asked: list[str] = []

    def refuse(prompt: str = "") -> str:
        asked.append(prompt)
        raise AssertionError(f"the loader prompted the user: {prompt!r}")

    monkeypatch.setattr(builtins, "input", refuse)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    return asked


CUSTOM_AUTO_MAP = {
    "AutoConfig": "evil_config.EvilConfig",
    "AutoModel": "evil_model.EvilModel",
    "AutoModelForCausalLM": "evil_model.EvilForCausalLM",
    "AutoModelForMaskedLM": "evil_model.EvilForMaskedLM",
    "AutoTokenizer": ["evil_tokenizer.EvilTokenizer", None],
}

LOADERS = {
    "HookedTransformer": anatomist.HookedTransformer.from_pretrained,
    "HookedEncoder": anatomist.HookedEncoder.from_pretrained,
    "HookedEncoderDecoder": anatomist.HookedEncoderDecoder.from_pretrained,
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize(
    "config",
    [
        {"architectures": ["EvilForCausalLM"], "model_type": "evil"},
        # A model_type we know does not make custom code ours: the architecture is the code's.
        {"architectures": ["EvilForCausalLM"], "model_type": "gpt2"},
        {"architectures": ..., "model_type": "evil"},
    ],
    ids=["unknown-type", "known-type", "no-architectures"],
)
def test_custom_code_architecture_is_refused_before_anything_is_read(
    loader: str,
    config: dict[str, Any],
    gpt2_with_tokenizer: Path,
    tmp_path: Path,
    no_prompt: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = tmp_path / "MARKER"
    folder = _with_code(gpt2_with_tokenizer, tmp_path / "evil", marker)
    _edit(folder / "config.json", auto_map=CUSTOM_AUTO_MAP, **config)
    _edit(folder / "tokenizer_config.json", tokenizer_class=..., auto_map=CUSTOM_AUTO_MAP)
    tokenizer_calls: list[Any] = []
    monkeypatch.setattr(
        transformers.AutoTokenizer,
        "from_pretrained",
        lambda *a, **k: tokenizer_calls.append((a, k)),
    )
    before = _hashes(folder)
    with pytest.raises(UnsupportedArchitectureError, match="custom code.*never runs"):
        LOADERS[loader](folder, progress=False)
    assert tokenizer_calls == [], "the tokenizer was read before the architecture was checked"
    assert no_prompt == []
    assert not marker.exists(), "code from the model folder ran"
    assert not [m for m in sys.modules if m.split(".")[-1] in MODULES]
    assert _hashes(folder) == before


def test_custom_code_tokenizer_is_refused_not_swapped(
    gpt2_with_tokenizer: Path, tmp_path: Path, no_prompt: list[str]
) -> None:
    """A supported architecture with a tokenizer that only the folder's code builds: transformers
    (told not to trust the code) would fall back to a generic tokenizer from tokenizer.json that
    may tokenize differently. Refused, saying how to pass a tokenizer; with one, it loads."""
    marker = tmp_path / "MARKER"
    folder = _with_code(gpt2_with_tokenizer, tmp_path / "evil", marker)
    _edit(
        folder / "tokenizer_config.json",
        tokenizer_class="EvilTokenizer",
        auto_map={"AutoTokenizer": [None, "evil_tokenizer.EvilTokenizerFast"]},
    )
    with pytest.raises(CheckpointError, match="tokenizer is custom code.*tokenizer="):
        load(folder)
    assert no_prompt == [] and not marker.exists()
    assert not [m for m in sys.modules if m.split(".")[-1] in MODULES]
    model = load(folder, tokenizer=tiny_tokenizer())
    assert model.to_str_tokens("the cat", prepend_bos=False) == ["the", "cat"]


def test_a_leftover_auto_map_beside_a_native_architecture_loads_natively(
    gpt2_with_tokenizer: Path, tmp_path: Path, no_prompt: list[str]
) -> None:
    """Checkpoints converted to a transformers architecture often keep their old auto_map
    (transformers then uses its own class): loaded with our native model, nothing run."""
    marker = tmp_path / "MARKER"
    folder = _with_code(gpt2_with_tokenizer, tmp_path / "converted", marker)
    _edit(folder / "config.json", auto_map=CUSTOM_AUTO_MAP)
    _edit(
        folder / "tokenizer_config.json",
        tokenizer_class="GPT2Tokenizer",
        auto_map={"AutoTokenizer": ["evil_tokenizer.EvilTokenizer", None]},
    )
    model = load(folder)
    assert model.tokenizer is not None
    assert no_prompt == [] and not marker.exists()


def test_the_folder_tokenizer_is_loaded_without_trusting_remote_code(
    gpt2_with_tokenizer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    original = transformers.AutoTokenizer.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy)
    load(gpt2_with_tokenizer)
    assert calls and all(call.get("trust_remote_code") is False for call in calls)


def test_the_gguf_tokenizer_fallback_does_not_trust_remote_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a transformers whose GGUF code is laid out otherwise, the GGUF tokenizer comes from
    ``PreTrainedTokenizerFast.from_pretrained``; it too is told not to trust code."""
    from anatomist.loading import gguf

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(gguf, "_gguf_tokenizer_converter", lambda: None)
    monkeypatch.setattr(
        transformers.PreTrainedTokenizerFast,
        "from_pretrained",
        lambda *args, **kwargs: calls.append(kwargs),
    )
    gguf.GGUFCheckpoint(path=tmp_path / "model.gguf", hf_config={}).tokenizer()
    assert calls and calls[0].get("trust_remote_code") is False
