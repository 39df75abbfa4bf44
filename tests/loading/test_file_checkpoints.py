"""Training checkpoints published as files (the classic toy models): `checkpoints/*_<N>.pth`.

Each fake repo holds a classic config.json, a final state dict, and a few checkpoint state dicts
saved from differently seeded random-init native models, so loading the wrong file shows.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import anatomist
import anatomist.loading.hub as hub_module
from anatomist.loading.checkpoints import (
    PYTHIA_V0,
    checkpoint_revision,
    file_checkpoints,
    label_type,
    training_checkpoint,
)
from anatomist.loading.errors import UnknownModelError

CLASSIC_CONFIG: dict[str, Any] = {
    "n_layers": 1, "d_model": 16, "d_head": 4, "n_heads": 4, "d_mlp": 32, "d_vocab": 40,
    "n_ctx": 16, "act_fn": "gelu", "normalization_type": "LN",
    "positional_embedding_type": "standard", "dtype": "torch.float32",
    "model_name": "GELU_1L512W_C4_Code", "checkpoint_index": None, "checkpoint_value": None,
}  # fmt: skip
# Not zero-padded, as published: file-name order ("_1000" before "_200") is not step order.
STEPS = (0, 200, 1000, 30000)
REPO = "NeelNanda/GELU_1L512W_C4_Code"  # registry alias "gelu-1l"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def _state(seed: int) -> dict[str, torch.Tensor]:
    from anatomist.families.lens import build_config

    torch.manual_seed(seed)
    model = anatomist.HookedTransformer(build_config(dict(CLASSIC_CONFIG)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["blocks.0.attn.IGNORE"] = torch.tensor(-1e5)  # a buffer the classic model saved
    return state


def _write_repo(folder: Path, labels: tuple[int, ...] = STEPS) -> dict[int, dict[str, Any]]:
    """A classic toy-model repo; returns the state dict saved for each label."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(CLASSIC_CONFIG))
    torch.save(_state(999), folder / "GELU_1L512W_C4_Code_final.pth")
    saved = {}
    for seed, label in enumerate(labels):
        saved[label] = _state(seed)
        torch.save(saved[label], folder / "checkpoints" / f"GELU_1L512W_C4_Code_{label}.pth")
    (folder / "checkpoints" / "notes.txt").write_text("not a checkpoint")
    return saved


def _assert_weights(model: anatomist.HookedTransformer, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    assert params, "no parameters"
    for name, param in params.items():
        assert torch.equal(param.detach(), state[name]), name


def _load(name: str | Path, **kwargs: Any) -> anatomist.HookedTransformer:
    return anatomist.HookedTransformer.from_pretrained_no_processing(name, progress=False, **kwargs)


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, dict[int, dict[str, Any]]]:
    folder = tmp_path / "gelu-1l"
    return folder, _write_repo(folder)


# --- listing ----------------------------------------------------------------------------------


def test_listing_is_sorted_by_number_and_skips_other_files() -> None:
    names = [
        "config.json",
        "GELU_final.pth",
        "checkpoints/GELU_1000.pth",
        "checkpoints/GELU_200.pth",
        "checkpoints/GELU_0.pth",
        "checkpoints/GELU_.pth",
        "checkpoints/sub/GELU_5.pth",
        "checkpoints/GELU_7.pt",
        "other/GELU_3.pth",
    ]
    assert [c.label for c in file_checkpoints(names)] == [0, 200, 1000]
    assert file_checkpoints(names)[1].filename == "checkpoints/GELU_200.pth"
    with pytest.raises(UnknownModelError, match="Two checkpoint files carry the label 5"):
        file_checkpoints(["checkpoints/a_5.pth", "checkpoints/b_5.pth"])


def test_labels_above_a_billion_are_tokens() -> None:
    assert label_type([0, 200, 30000]) == "step"
    assert label_type([0, 1_000_000_000]) == "step"
    assert label_type([0, 21_990_000_000]) == "token"


# --- a local folder ---------------------------------------------------------------------------


@pytest.mark.parametrize(("index", "step"), [(0, 0), (1, 200), (2, 1000), (-1, 30000), (-4, 0)])
def test_index_loads_that_checkpoint(
    repo: tuple[Path, dict[int, dict[str, Any]]], index: int, step: int
) -> None:
    folder, saved = repo
    model = _load(folder, checkpoint_index=index)
    _assert_weights(model, saved[step])
    assert model.cfg.checkpoint_index == STEPS.index(step)
    assert model.cfg.checkpoint_value == step
    assert model.cfg.checkpoint_label_type == "step"


def test_value_loads_that_checkpoint(repo: tuple[Path, dict[int, dict[str, Any]]]) -> None:
    folder, saved = repo
    model = _load(str(folder), checkpoint_value=1000)
    _assert_weights(model, saved[1000])
    assert model.cfg.checkpoint_index == 2
    # Sanity: the final model and another checkpoint differ from it.
    final = _load(folder)
    assert not torch.equal(final.W_E, model.W_E)
    assert not torch.equal(saved[200]["embed.W_E"], model.W_E)


def test_processed_checkpoint_computes_the_same(
    repo: tuple[Path, dict[int, dict[str, Any]]],
) -> None:
    folder, _ = repo
    raw = _load(folder, checkpoint_value=200)
    processed = anatomist.HookedTransformer.from_pretrained(
        folder, checkpoint_value=200, progress=False
    )
    tokens = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(0))
    diff = (processed(tokens).log_softmax(-1) - raw(tokens).log_softmax(-1)).abs().max()
    assert diff <= 1e-4


def test_token_labels(tmp_path: Path) -> None:
    labels = (0, 500_000_000, 2_000_000_000)
    saved = _write_repo(tmp_path / "solu", labels)
    model = _load(tmp_path / "solu", checkpoint_value=2_000_000_000)
    _assert_weights(model, saved[2_000_000_000])
    assert model.cfg.checkpoint_label_type == "token"
    with pytest.raises(ValueError, match="no checkpoint at token 3"):
        _load(tmp_path / "solu", checkpoint_value=3)


def test_folder_errors(repo: tuple[Path, dict[int, dict[str, Any]]], tmp_path: Path) -> None:
    folder, _ = repo
    with pytest.raises(ValueError, match=r"out of range: .* has 4 checkpoints \(0\.\.3"):
        _load(folder, checkpoint_index=4)
    with pytest.raises(ValueError, match="out of range"):
        _load(folder, checkpoint_index=-5)
    with pytest.raises(ValueError, match="no checkpoint at step 500; nearest: 200, 1000"):
        _load(folder, checkpoint_value=500)
    with pytest.raises(ValueError, match="nearest: 30000"):
        _load(folder, checkpoint_value=99999)
    with pytest.raises(ValueError, match="exactly one"):
        training_checkpoint(folder, 1, 200)
    with pytest.raises(TypeError, match="checkpoint_index must be an int"):
        training_checkpoint(folder, "1", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="revision or a training checkpoint"):
        _load(folder, checkpoint_index=0, revision="main")

    bare = tmp_path / "no-checkpoints"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps(CLASSIC_CONFIG))
    torch.save(_state(0), bare / "model_final.pth")
    with pytest.raises(ValueError, match="publishes no training checkpoints"):
        _load(bare, checkpoint_index=0)
    with pytest.raises(UnknownModelError, match="does not exist"):
        _load(tmp_path / "missing", checkpoint_index=0)


# --- by name, through a fake Hugging Face cache -----------------------------------------------


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An HF cache in tmp_path; the Hub must not be called unless a test replaces these."""
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(variable, raising=False)
    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args: object, **kwargs: object) -> Any:
        raise AssertionError("the Hub was consulted")

    monkeypatch.setattr(hub_module, "_hub_repo_files", no_network)
    monkeypatch.setattr(hub_module, "_hub_download", no_network)
    return root


def _cached_repo(cache: Path, labels: tuple[int, ...]) -> tuple[Path, dict[int, dict[str, Any]]]:
    """Lay out REPO in huggingface_hub's cache format, holding only the checkpoints `labels`."""
    repo_folder = cache / ("models--" + REPO.replace("/", "--"))
    snapshot = repo_folder / "snapshots" / COMMIT
    saved = _write_repo(snapshot, labels)
    (repo_folder / "refs").mkdir()
    (repo_folder / "refs" / "main").write_text(COMMIT)
    return snapshot, saved


def test_offline_value_from_the_cache_by_alias(cache: Path) -> None:
    _, saved = _cached_repo(cache, (200, 1000))
    model = _load("gelu-1l", checkpoint_value=1000)
    _assert_weights(model, saved[1000])
    assert model.cfg.model_name == REPO


def test_offline_index_counts_the_cached_checkpoints_and_warns(cache: Path) -> None:
    _, saved = _cached_repo(cache, (200, 1000, 30000))
    with pytest.warns(UserWarning, match=r"counts the 3 checkpoints in the local Hugging Face"):
        model = _load(REPO, checkpoint_index=-1)
    _assert_weights(model, saved[30000])
    with pytest.raises(ValueError, match="has 3 checkpoints"):
        _load(REPO, checkpoint_index=3)


def test_offline_missing_checkpoint_says_what_to_download(cache: Path) -> None:
    _cached_repo(cache, (200, 1000))
    with pytest.raises(UnknownModelError) as info:
        _load("gelu-1l", checkpoint_value=500)
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message
    assert "HF_HUB_OFFLINE" in message
    assert "nearest: 200, 1000" in message
    assert f'hf download {REPO} --include "config.json" "checkpoints/*_500.pth"' in message


def test_offline_repo_not_cached(cache: Path) -> None:
    with pytest.raises(UnknownModelError, match=r"not in the local Hugging Face cache.*hf down"):
        _load("gelu-1l", checkpoint_index=0)
    with pytest.raises(UnknownModelError, match="local_files_only=True"):
        training_checkpoint("gelu-1l", 0, None, local_files_only=True)


def test_offline_cache_without_checkpoints(cache: Path) -> None:
    _cached_repo(cache, ())
    with pytest.raises(UnknownModelError, match="holds no training checkpoints"):
        _load("gelu-1l", checkpoint_index=0)


def test_online_index_counts_the_hubs_listing_and_downloads(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    snapshot, _ = _cached_repo(cache, (200,))
    downloaded = tmp_path / "downloaded"
    saved = _write_repo(downloaded)
    listing = ["config.json", "GELU_1L512W_C4_Code_final.pth"] + [
        f"checkpoints/GELU_1L512W_C4_Code_{step}.pth" for step in STEPS
    ]
    asked: list[list[str]] = []

    def fake_files(repo_id: str, revision: str | None) -> list[str]:
        assert repo_id == REPO
        return listing

    def fake_download(repo_id: str, revision: str | None, cache_dir: Path, patterns: list[str]):  # type: ignore[no-untyped-def]
        asked.append(patterns)
        return downloaded

    monkeypatch.setattr(hub_module, "_hub_repo_files", fake_files)
    monkeypatch.setattr(hub_module, "_hub_download", fake_download)
    # Index 1 is step 200 on the Hub: already cached, nothing downloaded.
    picked = training_checkpoint("gelu-1l", 1, None)
    assert picked.weights == snapshot / "checkpoints/GELU_1L512W_C4_Code_200.pth"
    assert not asked
    # Index -1 is step 30000, which only the Hub has.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = _load("gelu-1l", checkpoint_index=-1)
    _assert_weights(model, saved[30000])
    assert model.cfg.checkpoint_index == 3
    (patterns,) = asked
    assert "checkpoints/GELU_1L512W_C4_Code_30000.pth" in patterns
    assert "config.json" in patterns
    assert not any("final" in p for p in patterns)


def test_online_hub_without_checkpoints(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub_module, "_hub_repo_files", lambda *a: ["config.json", "x_final.pth"])
    with pytest.raises(ValueError, match="publishes no training checkpoints: its files on the"):
        training_checkpoint("someone/toy-model", 0, None)


def test_unreachable_hub_falls_back_to_the_cache(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(*args: object, **kwargs: object) -> Any:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(hub_module, "_hub_repo_files", unreachable)
    with pytest.raises(hub_module.HubUnreachableError, match="could not be reached"):
        training_checkpoint("gelu-1l", 0, None)  # nothing cached to fall back on
    snapshot, _ = _cached_repo(cache, (200, 1000))
    with pytest.warns(UserWarning, match="could not be reached"):
        picked = training_checkpoint("gelu-1l", 0, None)
    assert picked.weights == snapshot / "checkpoints/GELU_1L512W_C4_Code_200.pth"
    # A cached value needs no Hub at all.
    assert training_checkpoint("gelu-1l", None, 1000).index == 1
    with pytest.raises(UnknownModelError, match=r"checkpoints/\*_500\.pth"):
        training_checkpoint("gelu-1l", None, 500)


# --- which models publish checkpoints ---------------------------------------------------------


def test_models_without_checkpoints_say_so(cache: Path) -> None:
    with pytest.raises(ValueError, match="'gpt2' publishes no training checkpoints"):
        _load("gpt2", checkpoint_index=0)
    with pytest.raises(ValueError, match="publishes no training checkpoints"):
        training_checkpoint("smollm2-135m-instruct", 0, None)
    with pytest.raises(UnknownModelError, match="Closest known names"):
        training_checkpoint("gelu-1", 0, None)


def test_revision_schedules() -> None:
    assert len(PYTHIA_V0.steps) == 143
    assert checkpoint_revision("EleutherAI/pythia-1.4b-v0", checkpoint_index=0) == "step1000"
    assert checkpoint_revision("EleutherAI/pythia-1.4b", checkpoint_index=1) == "step1"
    picked = training_checkpoint("pythia-70m", -1, None)
    assert (picked.revision, picked.index, picked.value) == ("step143000", 153, 143000)
    assert training_checkpoint("stanford-gpt2-small-a", None, 100).revision == "checkpoint-100"


def test_final_toy_model_is_fetched_without_its_checkpoints(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    downloaded = tmp_path / "downloaded"
    _write_repo(downloaded)
    listing = ["config.json", "GELU_1L512W_C4_Code_final.pth", "checkpoints/GELU_0.pth"]
    asked: list[list[str]] = []

    def fake_download(repo_id: str, revision: str | None, cache_dir: Path, patterns: list[str]):  # type: ignore[no-untyped-def]
        asked.append(patterns)
        return downloaded

    monkeypatch.setattr(hub_module, "_hub_repo_files", lambda *a: listing)
    monkeypatch.setattr(hub_module, "_hub_download", fake_download)
    model = _load("gelu-1l")
    _assert_weights(model, _state(999))
    (patterns,) = asked
    assert "GELU_1L512W_C4_Code_final.pth" in patterns
    assert not any(p.startswith("checkpoints") for p in patterns)
