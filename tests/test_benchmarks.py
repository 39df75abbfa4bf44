"""The benchmark harness's bookkeeping (not timings): targets, tables, files, byte counts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks.__main__ import GPU_PRESET, check_targets, main, parse_args
from benchmarks.flops import forward_flops, gemm_rate
from benchmarks.harness import (
    Measurement,
    Target,
    interleaved,
    markdown,
    tensor_bytes,
    write_results,
)
from benchmarks.patching import SWEEPS, Task, classic_loop, patching_rows, sweep_cells
from benchmarks.workloads import sampled_generation
from tests.helpers import load, tiny_gpt2, tiny_llama, tiny_tokenizer


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


# ------------------------------------------------------------------- the rows added for issue 15


def by_name(targets: list[Target], prefix: str) -> Target:
    (found,) = [t for t in targets if t.name.startswith(prefix)]
    return found


def test_new_targets_directions_and_guards() -> None:
    m = "tiny"
    rows = [
        Measurement("forward", "forward 1x8", m, "anatomist", 0.30),
        Measurement("forward", "forward 1x8", m, "TL bridge", 0.40),
        Measurement("cache", "run_with_cache all 1x8", m, "anatomist", 0.33, extra={"cache_mb": 1, "added_ms": 30}),
        Measurement("cache", "run_with_cache all 1x8", m, "TL bridge", 0.50, extra={"cache_mb": 2, "added_ms": 100}),
        Measurement("flops", "FLOP rate, forward 1x8", m, "anatomist", 50, "GFLOP/s", extra={"of_gemm": 0.5}),
        Measurement("flops", "FLOP rate, forward 2x64", m, "anatomist", 90, "GFLOP/s", extra={"of_gemm": 0.9}),
        Measurement("patching", "resid_pre sweep 2x5", m, "anatomist", 1.0, "s", extra={"max_abs_diff": 2e-6}),
        Measurement("patching", "resid_pre sweep 2x5", m, "anatomist loop", 4.0, "s", extra={"max_abs_diff": 0}),
        Measurement("patching", "resid_pre sweep every 2th layer 1x5", m, "anatomist", 1.0, "s", extra={"max_abs_diff": 3e-5}),
        Measurement("patching", "resid_pre sweep every 2th layer 1x5", m, "anatomist loop", 2.0, "s", extra={"max_abs_diff": 0}),
        Measurement("generate", "sampled generate 4x8 tokens", m, "anatomist", 30.0, "tokens/s"),
        Measurement("generate", "sampled generate 4x8 tokens", m, "HF sdpa", 40.0, "tokens/s"),
    ]  # fmt: skip
    targets = check_targets(rows)
    by = {(t.name, t.detail): t for t in targets}
    added = by[
        (
            "run_with_cache all, time added to the forward, vs TL bridge",
            f"{m}, run_with_cache all 1x8",
        )
    ]
    assert added.measured == pytest.approx(0.03 / 0.10) and added.holds
    # The FLOP-rate target is on the biggest forward only, and higher is better.
    flops = [t for t in targets if t.name.startswith("forward FLOP/s")]
    assert len(flops) == 1 and flops[0].detail.endswith("2x64") and flops[0].holds
    assert not Target("x", 0.7, 0.8, "-", higher_is_better=True).holds
    # Speed on the full sweep only; agreement on every sweep, in float32 only.
    speed = [t for t in targets if t.name == "patching, default call vs the classic loop"]
    assert [t.measured for t in speed] == [pytest.approx(0.25)]
    diffs = [t for t in targets if t.name.endswith("max |difference|")]
    assert [t.holds for t in diffs] == [True, False]
    assert not [t for t in check_targets(rows, "bfloat16") if t.name.endswith("|difference|")]
    sampled = by[("sampled generation tokens/s vs HF sdpa", f"{m}, sampled generate 4x8 tokens")]
    assert sampled.measured == pytest.approx(0.75) and not sampled.holds
    # The added time is the paired one from the cache rows, not a difference of best times.
    rows[2].extra["added_ms"] = 60
    assert by_name(check_targets(rows), "run_with_cache all, time added").measured == 0.6
    # A peer whose caching adds nothing leaves the ratio undefined: shown, never held.
    rows[3].extra["added_ms"] = 0.0
    nan = [t for t in check_targets(rows) if t.name.startswith("run_with_cache all, time added")]
    assert nan and nan[0].measured != nan[0].measured and not nan[0].holds
    text = markdown(rows, targets, {"device": "cpu", "date": "today"}, "x")
    assert "| >= 0.80 | yes |" in text and "| 2.0e-06 | <= 1.0e-05 | yes |" in text


def test_gpu_preset_and_its_overrides() -> None:
    args = parse_args(["--gpu", "--device", "cpu", "--quick"])
    assert (args.device, args.dtype, args.sections) == (
        "cpu",
        GPU_PRESET["dtype"],
        GPU_PRESET["sections"],
    )
    assert parse_args([]).device == "cpu" and parse_args([]).dtype == "float32"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0


def test_cuda_device_without_cuda_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit):
        parse_args(["--gpu"])
    assert "no CUDA device" in capsys.readouterr().err


def test_forward_flops_by_hand() -> None:
    # 1 layer, d_model 8, 2 heads of 4, 1 key/value head, gated MLP of 16, vocab 10; 1 x 3 tokens.
    cfg = SimpleNamespace(
        n_layers=1, d_model=8, n_heads=2, d_head=4, n_key_value_heads=1, d_mlp=16,
        gated_mlp=True, attn_only=False, d_vocab=10, d_vocab_out=-1,
    )  # fmt: skip
    q_o, k_v = 2 * 3 * 8 * 8, 2 * 3 * 8 * 4
    scores_mix = 2 * (2 * 3 * 3 * 4)  # full square, both heads
    mlp = 3 * 3 * 8 * 16
    unembed = 3 * 8 * 10
    assert forward_flops(cfg, 1, 3) == 2 * (q_o + k_v + scores_mix + mlp + unembed)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_forward_flops_match_torch_flop_counter(tmp_path: Path, family: str) -> None:
    """torch's FlopCounterMode counts every matmul of a forward whose attention runs explicitly
    (a hook on hook_pattern): the config count must be the same number."""
    from torch.utils.flop_counter import FlopCounterMode

    if family == "llama":
        tiny_llama(tmp_path, num_key_value_heads=2)  # grouped-query attention, gated MLP
    else:
        tiny_gpt2(tmp_path)
    model = load(tmp_path)
    hooks = [(f"blocks.{i}.attn.hook_pattern", lambda x, hook: None) for i in range(2)]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.run_with_hooks(torch.randint(0, 100, (2, 9)), fwd_hooks=hooks)
    assert counter.get_total_flops() == forward_flops(model.cfg, 2, 9)


def test_gemm_rate_is_a_rate() -> None:
    rate = gemm_rate("cpu", torch.float32, size=64, repeats=2)
    assert rate["size"] == 64 and rate["best"] >= rate["median"] > 0


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Task]:
    folder = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama(folder, num_hidden_layers=4, num_key_value_heads=2)
    model = load(folder)
    clean = torch.tensor([[1, 5, 9, 13, 17, 21]])
    corrupted = clean.clone()
    corrupted[0, 3] = 40
    return model, Task(clean, corrupted, right=13, wrong=40)


def test_classic_loop_patches_one_cell(tiny_pair: tuple[object, Task]) -> None:
    model, task = tiny_pair
    sweep = SWEEPS[0]  # resid_pre
    _, cache = model.run_with_cache(task.clean)
    n_pos = task.corrupted.shape[1]
    cells = sweep_cells(sweep, [0], n_pos, model.cfg.n_heads)
    values, seconds = classic_loop(
        model.run_with_hooks, task.corrupted, cache, task.metric, sweep, cells
    )
    assert len(values) == len(seconds) == n_pos
    # Patching the one differing position's whole residual stream at layer 0 is the clean run.
    with torch.no_grad():
        assert values[3] == pytest.approx(float(task.metric(model(task.clean))), abs=1e-5)
        assert values[0] == pytest.approx(float(task.metric(model(task.corrupted))), abs=1e-5)


def test_patching_rows_default_call_agrees_with_the_loop(tiny_pair: tuple[object, Task]) -> None:
    model, task = tiny_pair
    # A second anatomist model stands in for the bridge: same hook names, same numbers.
    rows = patching_rows("tiny", model, task, bridge=model, bridge_step=2)
    by = {(r.workload, r.library): r for r in rows}
    assert set(by) == {
        ("resid_pre sweep 4x6", "anatomist"),
        ("resid_pre sweep 4x6", "anatomist loop"),
        ("resid_pre sweep every 2th layer 2x6", "anatomist"),
        ("resid_pre sweep every 2th layer 2x6", "anatomist loop"),
        ("resid_pre sweep every 2th layer 2x6", "TL bridge loop"),
        ("head out sweep 4x4", "anatomist"),
        ("head out sweep 4x4", "anatomist loop"),
        ("head out sweep every 2th layer 2x4", "anatomist"),
        ("head out sweep every 2th layer 2x4", "anatomist loop"),
        ("head out sweep every 2th layer 2x4", "TL bridge loop"),
    }
    for row in rows:
        assert row.extra["max_abs_diff"] <= 1e-5, row
        layers, width = (int(x) for x in row.workload.rsplit(" ", 1)[-1].split("x"))
        assert row.extra["cells"] == layers * width


def test_sampled_generation_rows(tmp_path: Path) -> None:
    import transformers

    tiny_llama(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    ours = load(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    prompts = ("the cat", "the cat sat", "a dog sat on the mat")
    rows = sampled_generation("tiny", ours, hf, new_tokens=3, repeats=1, prompts=prompts)
    assert [r.library for r in rows] == ["anatomist", "HF sdpa"]
    for row in rows:  # no early stop: every row ran its 3 new tokens
        assert row.workload == "sampled generate 3x3 tokens" and row.extra["new_tokens"] == 3
        assert row.unit == "tokens/s" and row.value > 0


def test_harvest_targets() -> None:
    """Throughput is higher-is-better against the hand loop; the peak must stay flat as the
    corpus doubles."""
    m, w = "tiny", "harvest 100 tokens, 3 hooks"
    rows = [
        Measurement("harvest", w, m, "anatomist", 120.0, "tokens/s", extra={"peak_mb": 1050, "peak_mb_half": 1000}),
        Measurement("harvest", w, m, "HF hand loop", 100.0, "tokens/s", extra={"peak_mb": 900, "peak_mb_half": 600}),
        Measurement("harvest", w, m, "anatomist 2 ranks x 1 thread", 90.0, "tokens/s", extra={"peak_mb": 1}),
    ]  # fmt: skip
    targets = check_targets(rows)
    speed = by_name(targets, "harvest tokens/s")
    flat = by_name(targets, "harvest peak RSS")
    assert speed.measured == pytest.approx(1.2) and speed.holds
    assert flat.measured == pytest.approx(1.05) and flat.holds
    rows[0].extra["peak_mb"] = 2000
    assert not by_name(check_targets(rows), "harvest peak RSS").holds


def test_hf_wrapper_bench_times_the_same_model_both_ways(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import hf_wrapper

    tiny_llama(tmp_path)
    hf_wrapper.main(["--model", str(tmp_path), "--batch", "1", "--pos", "4", "--repeats", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert "hook points" in lines[0] and len(lines) == 4
    assert lines[1].split()[0] == "transformers" and lines[1].endswith("1.000x transformers")
    assert all("x transformers" in line for line in lines[2:])
