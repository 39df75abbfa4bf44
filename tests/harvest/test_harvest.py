"""anatomist.harvest: activations of a corpus on disk, resumable, under torchrun, read back.

The reference is always the model itself: each stored row must equal ``run_with_cache`` on that
row's tokens, and the rows must be ``tokenize_and_concatenate``'s."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import anatomist
from anatomist.cli import main
from anatomist.harvest import ActivationDataset, harvest
from anatomist.harvest import run as harvest_run
from anatomist.utils import tokenize_and_concatenate
from tests.helpers import WORDS, tiny_llama_folder

REPO = Path(__file__).resolve().parents[2]
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.0.attn.hook_pattern"]


def texts(n: int = 120, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 25))) for _ in range(n)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama_folder(tmp_path_factory.mktemp("harvest-model"))


@pytest.fixture(scope="module")
def model(folder: Path) -> anatomist.HookedTransformer:
    return anatomist.HookedTransformer.from_pretrained(str(folder), progress=False)


# The resume and rank tests' runs, in-process and in harvest_script's subprocesses.
SETTINGS: dict[str, Any] = dict(context_length=8, rows_per_shard=4, progress=False)


def stored(path: Path) -> dict[str, np.ndarray]:
    data = ActivationDataset(path)._data.with_format("numpy")
    return {name: np.asarray(data[name]) for name in data.column_names}


# --- what is written --------------------------------------------------------------------------


def test_rows_and_activations_are_the_models(model: Any, tmp_path: Path) -> None:
    out = harvest(
        model, texts(), HOOKS, tmp_path / "acts", context_length=9, batch_size=4,
        rows_per_shard=7, progress=False,
    )  # fmt: skip
    acts = ActivationDataset(out)
    rows = tokenize_and_concatenate(texts(), model.tokenizer, max_length=9)["tokens"]
    assert len(acts) == rows.shape[0] == acts.manifest["rows"] > 14  # several shards
    assert acts.manifest["shards"] == [f"shard_{i:05d}" for i in range(-(-len(acts) // 7))]
    _, cache = model.run_with_cache(rows, names_filter=HOOKS)
    expected = {
        "blocks.0.hook_resid_post": cache["blocks.0.hook_resid_post"],  # [rows, 9, 32]
        "blocks.1.attn.hook_z": cache["blocks.1.attn.hook_z"].flatten(2),  # [rows, 9, 4 * 8]
        "blocks.0.attn.hook_pattern": cache["blocks.0.attn.hook_pattern"].transpose(1, 2).flatten(2),
    }  # fmt: skip
    for index in (0, 8, len(acts) - 1):
        row = acts[index]
        assert int(row["row"]) == index
        assert torch.equal(row["token_ids"].long(), rows[index])
        for name, value in expected.items():
            torch.testing.assert_close(row[name], value[index], atol=1e-5, rtol=0)
    assert acts.manifest["columns"] == {
        "blocks.0.hook_resid_post": [9, 32],
        "blocks.1.attn.hook_z": [9, 32],
        "blocks.0.attn.hook_pattern": [9, 36],
    }
    assert acts.manifest["tokens"] == 9 * len(acts) and acts.manifest["dtype"] == "float32"


def test_the_folder_is_a_sae_lens_cached_activations_dataset(model: Any, tmp_path: Path) -> None:
    """datasets.load_from_disk reads the folder itself: one Array2D column per hook, int32
    token_ids of the same positions (what SAELens' cached-activations loader expects)."""
    import datasets

    out = harvest(model, texts(), HOOKS[:1], tmp_path / "a", context_length=8, progress=False)
    loaded = datasets.load_from_disk(str(out))
    feature = loaded.features[HOOKS[0]]
    assert isinstance(feature, datasets.Array2D) and feature.shape == (8, 32)
    assert loaded.features["token_ids"].feature.dtype == "int32"
    assert len(loaded) == ActivationDataset(out).manifest["rows"]


def test_positions_and_dtype(model: Any, tmp_path: Path) -> None:
    full = harvest(model, texts(), HOOKS[:1], tmp_path / "full", context_length=8, progress=False)
    last = harvest(
        model, texts(), HOOKS[:1], tmp_path / "last", context_length=8, positions="last",
        dtype="float16", progress=False,
    )  # fmt: skip
    middle = harvest(
        model, texts(), HOOKS[:1], tmp_path / "mid", context_length=8, positions=slice(2, 5),
        progress=False,
    )  # fmt: skip
    a, b, c = stored(full), stored(last), stored(middle)
    assert ActivationDataset(last)._data.features[HOOKS[0]].dtype == "float16"
    assert b[HOOKS[0]].shape[1:] == (1, 32)
    np.testing.assert_allclose(b[HOOKS[0]][:, 0], a[HOOKS[0]][:, -1], atol=2e-3, rtol=1e-3)
    np.testing.assert_array_equal(c[HOOKS[0]], a[HOOKS[0]][:, 2:5])
    np.testing.assert_array_equal(c["token_ids"], a["token_ids"][:, 2:5])


def test_max_rows_and_max_tokens(model: Any, tmp_path: Path) -> None:
    a = harvest(model, texts(), HOOKS[:1], tmp_path / "r", context_length=8, max_rows=5,
                rows_per_shard=2, progress=False)  # fmt: skip
    b = harvest(model, texts(), HOOKS[:1], tmp_path / "t", context_length=8, max_tokens=47,
                progress=False)  # fmt: skip
    assert (
        len(ActivationDataset(a)) == 5
        and ActivationDataset(a).manifest["shards"][-1] == "shard_00002"
    )
    assert len(ActivationDataset(b)) == 5  # 47 tokens hold 5 whole rows of 8
    np.testing.assert_array_equal(stored(a)[HOOKS[0]], stored(b)[HOOKS[0]])


def test_every_corpus_source_gives_the_same_rows(model: Any, tmp_path: Path) -> None:
    import datasets

    docs = texts(40)
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    txt = tmp_path / "txt"
    txt.mkdir()
    for i, t in enumerate(docs):
        (txt / f"{i:03d}.txt").write_text(t)
    table = datasets.Dataset.from_dict({"text": docs, "id": list(range(len(docs)))})
    table.save_to_disk(str(tmp_path / "saved"))
    table.to_parquet(str(tmp_path / "corpus.parquet"))
    sources: dict[str, Any] = {
        "list": docs,
        "jsonl": tmp_path / "corpus.jsonl",
        "txt": txt,
        "dataset": table,
        "saved": tmp_path / "saved",
        "parquet": tmp_path / "corpus.parquet",
    }
    results = {
        key: stored(harvest(model, source, HOOKS[:1], tmp_path / f"out-{key}", context_length=8,
                            progress=False))["token_ids"]
        for key, source in sources.items()
    }  # fmt: skip
    for key, tokens in results.items():
        np.testing.assert_array_equal(tokens, results["list"], err_msg=key)


# --- refusals ------------------------------------------------------------------------------------


def test_bad_arguments_are_refused_by_name(model: Any, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="blocks.0.hook_resid_post"):
        harvest(model, texts(), ["blocks.0.hook_resid_pots"], tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="positions"):
        harvest(model, texts(), HOOKS[:1], tmp_path / "x", positions="first", progress=False)
    with pytest.raises(ValueError, match="dtype"):
        harvest(model, texts(), HOOKS[:1], tmp_path / "x", dtype=torch.bfloat16, progress=False)
    with pytest.raises(ValueError, match="max_tokens"):
        harvest(model, texts(), HOOKS[:1], tmp_path / "x", max_tokens=3, progress=False)
    with pytest.raises(ValueError, match="no row"):
        harvest(model, [], HOOKS[:1], tmp_path / "empty", progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        harvest(model, texts(), HOOKS[:1], other, progress=False)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_a_folder_of_another_harvest_is_not_mixed_into(model: Any, tmp_path: Path) -> None:
    harvest(model, texts(), HOOKS[:1], tmp_path / "a", context_length=8, progress=False)
    with pytest.raises(ValueError, match="context_length"):
        harvest(model, texts(), HOOKS[:1], tmp_path / "a", context_length=9, progress=False)


def test_where_the_model_runs_is_not_part_of_the_harvest(model: Any, tmp_path: Path) -> None:
    """Ranks on cuda:0, cuda:1 ... (or a split model) run the same harvest: a finished folder is
    recognised as finished, not refused or redone."""
    out = harvest(model, texts(), HOOKS[:1], tmp_path / "a", context_length=8, progress=False)
    settings = json.loads((out / "harvest.json").read_text())
    device, n_devices = model.cfg.device, model.cfg.n_devices
    try:
        model.cfg.device, model.cfg.n_devices = "cuda:1", 2
        again = harvest_run._settings(
            model, HOOKS[:1], 8, True, None, torch.float32, settings["rows_per_shard"], None, "text"
        )
    finally:
        model.cfg.device, model.cfg.n_devices = device, n_devices
    assert again == settings


def test_reading_an_unfinished_folder_says_how_to_finish_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="same harvest command again"):
        ActivationDataset(tmp_path)


# --- resuming ------------------------------------------------------------------------------------


def test_a_crash_between_shards_resumes_to_the_same_result(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = stored(harvest(model, texts(), HOOKS, tmp_path / "whole", **SETTINGS))
    real = harvest_run._write_shard
    written: list[int] = []

    def crash_after_two(out: Path, index: int, *args: Any) -> None:
        if len(written) == 2:
            (out / f".shard_{index:05d}.tmp999").mkdir()  # what a kill mid-write leaves
            raise KeyboardInterrupt
        written.append(index)
        real(out, index, *args)

    monkeypatch.setattr(harvest_run, "_write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        harvest(model, texts(), HOOKS, tmp_path / "resumed", **SETTINGS)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    with pytest.raises(FileNotFoundError):
        ActivationDataset(tmp_path / "resumed")
    monkeypatch.setattr(harvest_run, "_write_shard", real)
    calls: list[int] = []
    monkeypatch.setattr(
        harvest_run,
        "_write_shard",
        lambda out, index, *a: (calls.append(index), real(out, index, *a)),
    )
    resumed = stored(harvest(model, texts(), HOOKS, tmp_path / "resumed", **SETTINGS))
    assert calls[0] == 2 and 0 not in calls and 1 not in calls  # finished shards kept
    assert not list((tmp_path / "resumed").glob(".shard_*"))
    assert resumed.keys() == whole.keys()
    for name in whole:
        np.testing.assert_array_equal(resumed[name], whole[name], err_msg=name)


def harvest_script(folder: Path, out: Path, patch: str = "") -> str:
    """Python source that harvests `texts()` with the folder's model into `out` (the same
    settings as the in-process runs), after `patch` (which may replace run._write_shard)."""
    return "\n".join([
        "import os, sys, time",
        f"sys.path.insert(0, {str(REPO)!r})",
        "import torch",
        "torch.set_num_threads(1)",
        "from anatomist.harvest import harvest, run",
        "from tests.harvest.test_harvest import texts, HOOKS",
        textwrap.dedent(patch),
        "from tests.harvest.test_harvest import SETTINGS",
        f"harvest({str(folder)!r}, texts(), HOOKS, {str(out)!r}, **SETTINGS)",
    ])  # fmt: skip


SLOW_WRITES = """
slow = run._write_shard
def write_slowly(*args):
    slow(*args)
    time.sleep(0.3)
run._write_shard = write_slowly
"""


def torchrun(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`script` run by 2 ranks of 1 thread under torchrun (gloo)."""
    path = tmp_path / "run.py"
    path.write_text(script)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180, env=env)


def test_sigkill_at_any_moment_then_the_same_command_completes_it(
    folder: Path, model: Any, tmp_path: Path
) -> None:
    whole = stored(harvest(model, texts(), HOOKS, tmp_path / "whole", **SETTINGS))
    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-c", harvest_script(folder, out, SLOW_WRITES)], cwd=REPO
    )
    deadline = time.monotonic() + 120
    while not (out / "shard_00002").exists():
        assert process.poll() is None, "the harvest ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists()
    done = sorted(p.name for p in out.glob("shard_*"))
    assert "shard_00002" in done and len(done) < len(whole["row"]) // 4
    resumed = stored(harvest(str(folder), texts(), HOOKS, out, **SETTINGS))
    for name in whole:
        np.testing.assert_array_equal(resumed[name], whole[name], err_msg=name)


# --- several processes ---------------------------------------------------------------------------


def test_two_processes_under_torchrun_equal_one(folder: Path, model: Any, tmp_path: Path) -> None:
    single = stored(
        harvest(model, texts(), HOOKS, tmp_path / "one", **SETTINGS)
    )  # fmt: skip
    out = tmp_path / "two"
    result = torchrun(harvest_script(folder, out), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    double = stored(out)
    assert double.keys() == single.keys()
    np.testing.assert_array_equal(double["row"], single["row"])
    np.testing.assert_array_equal(double["token_ids"], single["token_ids"])
    for name in HOOKS:
        np.testing.assert_allclose(double[name], single[name], atol=1e-6, rtol=0, err_msg=name)


# --- reading back --------------------------------------------------------------------------------


def test_batches_are_seeded_shuffles_over_every_row(model: Any, tmp_path: Path) -> None:
    out = harvest(model, texts(), HOOKS[:1], tmp_path / "a", context_length=8, rows_per_shard=5,
                  progress=False)  # fmt: skip
    acts = ActivationDataset(out)
    first = [b["row"].tolist() for b in acts.batches(6, seed=3)]
    again = [b["row"].tolist() for b in acts.batches(6, seed=3)]
    other = [b["row"].tolist() for b in acts.batches(6, seed=4)]
    flat = [r for batch in first for r in batch]
    assert first == again and first != other
    assert sorted(flat) == list(range(len(acts))) and flat != sorted(flat)
    ordered = next(acts.batches(4, shuffle=False, columns=[HOOKS[0]]))
    assert list(ordered) == [HOOKS[0]] and ordered[HOOKS[0]].shape == (4, 8, 32)
    torch.testing.assert_close(ordered[HOOKS[0]][2], acts[2][HOOKS[0]])
    loader = torch.utils.data.DataLoader(acts, batch_size=3)
    assert next(iter(loader))[HOOKS[0]].shape == (3, 8, 32)
    with pytest.raises(KeyError, match="columns are"):
        next(acts.batches(2, columns=["blocks.9.hook_resid_post"]))


def test_cli_harvest(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts()))
    out = tmp_path / "acts"
    args = ["harvest", str(folder), str(tmp_path / "corpus.jsonl"), str(out), "--hook", HOOKS[0],
            "--hook", HOOKS[1], "--context-length", "8", "--positions", "1:3", "--max-rows", "6",
            "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert str(out) in capsys.readouterr().out
    acts = ActivationDataset(out)
    assert len(acts) == 6 and acts.hook_names == HOOKS[:2]
    assert acts[0][HOOKS[0]].shape == (2, 32)


RANK_1_DIES = """
write = run._write_shard
def dies_on_rank_1(out, index, *args):
    if os.environ["RANK"] == "1" and index == 5:
        raise RuntimeError("rank 1 dies")
    write(out, index, *args)
run._write_shard = dies_on_rank_1
"""


def test_a_dying_rank_fails_the_run_and_the_same_command_completes_it(
    folder: Path, model: Any, tmp_path: Path
) -> None:
    single = stored(harvest(model, texts(), HOOKS, tmp_path / "one", **SETTINGS))
    out = tmp_path / "two"
    failed = torchrun(harvest_script(folder, out, RANK_1_DIES), tmp_path)
    assert failed.returncode != 0 and "rank 1 dies" in failed.stderr + failed.stdout
    assert not (out / "manifest.json").exists() and not (out / "shard_00005").exists()
    again = torchrun(harvest_script(folder, out), tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = stored(out)
    for name in single:
        np.testing.assert_allclose(resumed[name], single[name], atol=1e-6, rtol=0, err_msg=name)
