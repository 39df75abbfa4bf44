"""The `anatomist` command on a tiny local model (the packaged-model run is in test_smollm2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from anatomist.cli import main
from tests.helpers import tiny_llama_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama_folder(tmp_path_factory.mktemp("cli"))


def test_demo_prints_the_three_results(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["demo", "--model", str(folder), "--prompt", "the cat sat on the", "--answer", "mat"]
    report = tmp_path / "report.html"
    assert main([*args, "--seq-len", "8", "--no-progress", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "1. Top next-token predictions" in out
    assert "2. Logit lens" in out and "after L1" in out
    assert "3. Induction heads" in out and "second repeat" in out
    assert "L1H" in out or "L0H" in out
    assert out.rstrip().endswith(f"Report (open in a browser): {report}")
    page = report.read_text()
    assert page.startswith("<!doctype html>") and "The strongest induction head" in page


def test_demo_no_report_writes_nothing(
    folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["demo", "--model", str(folder), "--seq-len", "4", "--no-progress", "--no-report"]
    assert main(args) == 0
    assert "Report" not in capsys.readouterr().out and list(tmp_path.iterdir()) == []


def test_inspect_lists_hooks(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(folder), "--no-progress"]) == 0
    assert "blocks.0.hook_resid_pre" in capsys.readouterr().out


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="Closest known names"):
        main(["demo", "--model", "gpt2-smal", "--no-progress"])


def test_main_leaves_autograd_as_it_was(folder: Path) -> None:
    import torch

    main(["inspect", str(folder), "--no-progress"])
    assert torch.is_grad_enabled()


def test_inspect_loads_encoder_decoders_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.model.test_encoder_decoder import save_t5

    save_t5(tmp_path)
    assert main(["inspect", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "as HookedEncoderDecoder" in out
    assert "decoder.0.hook_cross_attn_out" in out and "decoder.1.hook_cross_attn_out" not in out
