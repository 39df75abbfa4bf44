"""The benchmark harness's bookkeeping (not timings): targets, tables, files, byte counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.__main__ import check_targets, main
from benchmarks.harness import Measurement, interleaved, markdown, tensor_bytes, write_results


def _rows() -> list[Measurement]:
    m = "tiny"
    return [
        Measurement("forward", "forward 1x8", m, "anatomist", 0.9),
        Measurement("forward", "forward 1x8", m, "HF sdpa", 1.0),
        Measurement("hooks", "no-op hook per layer 1x8", m, "anatomist", 1.0),
        Measurement("cache", "run_with_cache all 1x8", m, "anatomist", 0.5, extra={"cache_mb": 10}),
        Measurement("cache", "run_with_cache all 1x8", m, "TL bridge", 1.0, extra={"cache_mb": 20}),
        Measurement(
            "load", "load -", m, "baseline", 0.1, "s", extra={"peak_mb": 300, "weights_mb": 100}
        ),
        Measurement(
            "load",
            "load safetensors",
            m,
            "anatomist",
            2.0,
            "s",
            extra={"peak_mb": 440, "weights_mb": 100},
        ),
        Measurement(
            "load", "load safetensors", m, "HF", 1.0, "s", extra={"peak_mb": 500, "weights_mb": 100}
        ),
        Measurement("import", "import on top of torch", "-", "anatomist", 0.2, "s"),
        Measurement("generate", "greedy generate 8 tokens", m, "anatomist", 20.0, "tokens/s"),
        Measurement("generate", "greedy generate 8 tokens", m, "HF sdpa", 10.0, "tokens/s"),
    ]


def test_targets_are_the_contract_on_the_measured_ratios() -> None:
    targets = {t.name: t for t in check_targets(_rows())}
    assert targets["forward, no hooks vs HF sdpa"].measured == pytest.approx(0.9)
    hooks = targets["no-op hook on every layer vs our own plain forward"]
    assert hooks.measured == pytest.approx(1.0 / 0.9) and not hooks.holds  # 1.11 > 1.05
    assert targets["run_with_cache all vs TL bridge, time"].measured == pytest.approx(0.5)
    assert targets["run_with_cache all vs TL bridge, cache bytes"].measured == pytest.approx(0.5)
    memory = targets["load peak RSS above baseline / weights"]
    assert memory.measured == pytest.approx(1.4) and not memory.holds  # (440 - 300) / 100
    assert targets["load time vs HF"].measured == pytest.approx(2.0)
    assert targets["import anatomist on top of torch, seconds"].holds
    # tokens/s: twice HF's rate is half its time.
    assert targets["generation time vs HF sdpa"].measured == pytest.approx(0.5)


def test_results_files(tmp_path: Path) -> None:
    rows = _rows()
    env = {"device": "cpu", "date": "today", "torch": torch.__version__}
    page = write_results(tmp_path, rows, check_targets(rows), env, "python -m benchmarks")
    text = page.read_text()
    assert "| forward | forward 1x8 | tiny | HF sdpa | 1000.0 | ms | 0.90 |" in text
    assert "**no**" in text  # the failing hooks target is shown as failing
    data = json.loads(page.with_suffix(".json").read_text())
    assert len(data["measurements"]) == len(rows)
    assert {t["holds"] for t in data["targets"]} == {True, False}
    # every row, plus the two tables' header lines
    assert markdown(rows, [], env, "x").count("\n| ") == len(rows) + 2


def test_tensor_bytes_walks_containers_once() -> None:
    a = torch.zeros(10)  # 40 bytes
    assert tensor_bytes({"x": a, "y": [a, (torch.zeros(2, dtype=torch.float16),)]}) == 44


def test_interleaved_calls_each_function_round_robin() -> None:
    calls: list[str] = []
    medians = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b"] * 4 and set(medians) == {"a", "b"}


def test_unknown_section_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--sections", "forward,speed"])
    assert "unknown section(s) ['speed']" in capsys.readouterr().err
