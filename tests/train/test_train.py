"""anatomist.train: deterministic runs, exact resume, checkpoints that from_pretrained loads,
custom losses, the dataset kinds, logging, and refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import anatomist
from anatomist.train import TrainingConfig, TrainingError, train
from anatomist.train.loop import checkpoint_steps

CFG = dict(
    n_layers=2, d_model=32, d_head=8, n_ctx=16, d_vocab=20, act_fn="gelu",
    normalization_type="LN", seed=1,
)  # fmt: skip


def model() -> anatomist.HookedTransformer:
    return anatomist.HookedTransformer(anatomist.TransformerConfig(**CFG))  # type: ignore[arg-type]


def tokens(rows: int = 100, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 20, (rows, 16), generator=torch.Generator().manual_seed(seed))


def settings(**overrides: Any) -> TrainingConfig:
    values: dict[str, Any] = dict(num_epochs=2, batch_size=16, progress=False, print_every=None)
    values.update(overrides)
    return TrainingConfig(**values)


def weights(m: anatomist.HookedTransformer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_training_lowers_the_loss_and_is_deterministic_for_a_seed() -> None:
    losses: list[float] = []
    first = train(model(), settings(callback=lambda r: losses.append(r["loss"])), tokens())
    second = train(model(), settings(), tokens())
    assert_equal(weights(first), weights(second))
    other_order = train(model(), settings(seed=5), tokens())
    assert not torch.equal(other_order.W_E, first.W_E)
    assert len(losses) == 14  # ceil(100 / 16) = 7 steps per epoch, 2 epochs
    assert sum(losses[-3:]) < sum(losses[:3])
    assert not first.training  # returned in eval mode


def test_a_crashed_run_resumes_to_the_uninterrupted_weights_bit_for_bit(tmp_path: Path) -> None:
    whole = train(model(), settings(save_every=3, save_dir=tmp_path / "a"), tokens())

    def crash(record: dict[str, float]) -> None:
        if record["step"] == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(model(), settings(save_every=3, save_dir=tmp_path / "b", callback=crash), tokens())
    folder = tmp_path / "b" / "checkpoints"
    assert checkpoint_steps(tmp_path / "b") == [3, 6]
    (folder / "model_7.safetensors").write_bytes(b"half")  # a checkpoint without its state
    (folder / ".model_9.safetensors.tmp1").write_bytes(b"x")  # a write cut short
    steps: list[float] = []
    resumed = train(
        model(),
        settings(save_every=3, save_dir=tmp_path / "b", callback=lambda r: steps.append(r["step"])),
        tokens(),
        resume=True,
    )
    assert steps[0] == 7  # continued after checkpoint 6
    assert_equal(weights(resumed), weights(whole))


def test_checkpoints_load_back_with_from_pretrained(tmp_path: Path) -> None:
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    m = model()

    def snapshot(record: dict[str, float]) -> None:
        if record["step"] % 5 == 0:
            snapshots[int(record["step"])] = weights(m)

    train(m, settings(save_every=5, save_dir=tmp_path, callback=snapshot), tokens())
    assert checkpoint_steps(tmp_path) == [5, 10, 14]
    for index, step in enumerate([5, 10]):
        loaded = anatomist.HookedTransformer.from_pretrained_no_processing(
            tmp_path, checkpoint_index=index, progress=False
        )
        assert loaded.cfg.checkpoint_value == step
        assert_equal(weights(loaded), snapshots[step])
    by_value = anatomist.HookedTransformer.from_pretrained(
        tmp_path, checkpoint_value=10, progress=False
    )
    reference = model()
    reference.load_state_dict(snapshots[10])
    x = tokens(4, seed=3)
    torch.testing.assert_close(  # processed (fold_ln, centering): the same log-probs
        by_value(x).log_softmax(-1), reference(x).log_softmax(-1), atol=1e-4, rtol=0
    )
    final = anatomist.HookedTransformer.from_pretrained_no_processing(tmp_path, progress=False)
    assert_equal(weights(final), weights(m))


def test_a_custom_loss_trains_an_algorithmic_task() -> None:
    """Addition mod 7 read at the last position: (a, b, =) -> a + b mod 7."""
    p = 7
    pairs = torch.cartesian_prod(torch.arange(p), torch.arange(p))
    inputs = torch.cat([pairs, torch.full((p * p, 1), p)], dim=1)  # token p is "="
    labels = pairs.sum(1) % p
    cfg = dict(CFG, d_vocab=p + 1, n_ctx=3, d_model=64, d_head=16)
    m = anatomist.HookedTransformer(anatomist.TransformerConfig(**cfg))  # type: ignore[arg-type]
    seen: list[Any] = []

    def loss_fn(model: Any, batch: Any) -> torch.Tensor:
        seen.append(batch)
        x, y = batch
        logits = model(x)[:, -1, :p]
        return torch.nn.functional.cross_entropy(logits, y)

    config = settings(num_epochs=150, batch_size=49, lr=3e-3, optimizer_name="AdamW")
    train(m, config, (inputs, labels), loss_fn=loss_fn)
    assert isinstance(seen[0], tuple) and seen[0][0].shape == (49, 3)
    with torch.no_grad():
        accuracy = (m(inputs)[:, -1, :p].argmax(-1) == labels).float().mean()
    assert accuracy > 0.9  # memorised the table


def test_a_tokenized_datasets_dataset_trains_like_its_tensor() -> None:
    datasets = pytest.importorskip("datasets")
    rows = tokens(40)
    table = datasets.Dataset.from_dict({"tokens": rows.tolist()})
    from_table = train(model(), settings(), table)
    from_tensor = train(model(), settings(), rows)
    assert_equal(weights(from_table), weights(from_tensor))


def test_logging_to_files_callback_and_the_warmup_schedule(tmp_path: Path, capsys: Any) -> None:
    capsys.readouterr()
    records: list[dict[str, float]] = []
    config = settings(
        max_steps=6, warmup_steps=4, print_every=3, log_file=tmp_path / "log.jsonl",
        callback=records.append, optimizer_name="SGD", momentum=0.9, max_grad_norm=1.0,
    )  # fmt: skip
    train(model(), config, tokens())
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == ["step 3, epoch 0", "step 6, epoch 0"]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # max_steps stops it
    assert [r["lr"] for r in records] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines == records
    train(model(), settings(max_steps=2, log_file=tmp_path / "log.csv"), tokens())
    csv_lines = (tmp_path / "log.csv").read_text().splitlines()
    assert csv_lines[0] == "step,epoch,loss,lr" and len(csv_lines) == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"optimizer_name": "Lion"}, "optimizer_name 'Lion' is not one of Adam, AdamW, SGD"),
        ({"save_every": 5}, "save_every needs save_dir"),
        ({"log_file": "log.txt"}, r"log_file must end in \.csv or \.jsonl"),
        ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
        ({"betas": (0.9,)}, r"betas must be two numbers in \[0, 1\)"),
        ({"betas": (0.9, 1.0)}, r"betas must be two numbers in \[0, 1\)"),
        ({"betas": (0.9, 0.98), "optimizer_name": "SGD"}, "SGD takes momentum instead"),
    ],
)
def test_bad_settings_are_refused_by_name(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        settings(**overrides)


def test_betas_reach_adam_and_are_saved_with_its_state(tmp_path: Path) -> None:
    config = settings(optimizer_name="AdamW", betas=[0.9, 0.98], save_every=7, save_dir=tmp_path)
    trained = train(model(), config, tokens())
    state = torch.load(tmp_path / "checkpoints" / "state_14.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.98)
    default = train(model(), settings(optimizer_name="AdamW"), tokens())
    assert not torch.equal(trained.W_E, default.W_E)


def test_resuming_another_models_run_is_refused_and_leaves_the_model_alone(tmp_path: Path) -> None:
    train(model(), settings(save_every=7, save_dir=tmp_path), tokens())
    wider = anatomist.HookedTransformer(anatomist.TransformerConfig(**{**CFG, "d_mlp": 48}))  # type: ignore[arg-type]
    before = weights(wider)
    with pytest.raises(TrainingError, match="is of another model"):
        train(wider, settings(save_every=7, save_dir=tmp_path), tokens(), resume=True)
    assert_equal(weights(wider), before)


def test_bad_data_and_resume_without_a_folder_are_refused() -> None:
    with pytest.raises(TrainingError, match="integer token ids"):
        train(model(), settings(), torch.randn(10, 16))
    with pytest.raises(TrainingError, match="no rows"):
        train(model(), settings(), torch.zeros(0, 16, dtype=torch.long))
    with pytest.raises(TrainingError, match="resume=True needs config.save_dir"):
        train(model(), settings(), tokens(), resume=True)
    with pytest.raises(TrainingError, match="got list"):
        train(model(), settings(), [[1, 2, 3]])


# --- metrics over checkpoints ------------------------------------------------------------------


def test_a_metric_over_every_checkpoint_is_the_metric_of_each_saved_model(tmp_path: Path) -> None:
    from anatomist.train import metrics_over_checkpoints

    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    m = model()

    def snapshot(record: dict[str, float]) -> None:
        if record["step"] % 4 == 0 or record["step"] == 14:
            snapshots[int(record["step"])] = weights(m)

    train(m, settings(save_every=4, save_dir=tmp_path, callback=snapshot), tokens())
    x = tokens(8, seed=9)

    def metric(loaded: Any) -> dict[str, Any]:
        return {"loss": loaded(x, return_type="loss"), "norm": float(loaded.W_E.norm())}

    table = metrics_over_checkpoints(tmp_path, metric, progress=False)
    assert list(table.columns) == ["step", "loss", "norm"]
    assert table["step"].tolist() == [4, 8, 12, 14]
    for step, loss, norm in table.itertuples(index=False):
        reference = model()
        reference.load_state_dict(snapshots[step])
        with torch.no_grad():
            assert loss == pytest.approx(reference(x, return_type="loss").item(), abs=1e-6)
        assert norm == pytest.approx(float(reference.W_E.detach().norm()), rel=1e-6)
    single = metrics_over_checkpoints(tmp_path, lambda mm: mm.W_E.norm(), progress=False)
    assert single["metric"].tolist() == pytest.approx(table["norm"].tolist(), rel=1e-6)
    with pytest.raises(TrainingError, match="gave a tensor of shape"):
        metrics_over_checkpoints(tmp_path, lambda mm: mm.W_E, progress=False)
    with pytest.raises(TrainingError, match="holds no complete training checkpoint"):
        metrics_over_checkpoints(tmp_path / "nothing", metric, progress=False)

    from anatomist import viz

    html = viz.line(table[["step", "loss"]], x="step", title="loss").html
    assert html.count("class='anat-line'") == 1
    assert html.count("class='anat-point'") == 4
    first = table.iloc[0]
    assert f"loss at 4: {first['loss']:.3g}"[:12] in html


def test_wandb_logs_when_installed_and_warns_when_not(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    logged: list[dict[str, float]] = []
    calls: list[str] = []

    class Run:
        def log(self, record: dict[str, float]) -> None:
            logged.append(record)

        def finish(self) -> None:
            calls.append("finish")

    stub = types.ModuleType("wandb")
    stub.init = lambda project=None, config=None: calls.append(f"init {project}") or Run()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", stub)
    train(model(), settings(max_steps=3, wandb=True, wandb_project_name="toy"), tokens())
    assert calls == ["init toy", "finish"] and [r["step"] for r in logged] == [1, 2, 3]
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.warns(UserWarning, match="wandb is not installed"):
        train(model(), settings(max_steps=1, wandb=True), tokens())


def test_runs_agree_with_several_threads_where_the_embedding_backward_would_not() -> None:
    """Full-batch modular addition (many rows per embedding row): with 2 threads torch's default
    embedding backward sums in a varying order; `deterministic` (the default) fixes it."""
    p = 23
    pairs = torch.cartesian_prod(torch.arange(p), torch.arange(p))
    data = (torch.cat([pairs, torch.full((p * p, 1), p)], dim=1), pairs.sum(1) % p)
    cfg = dict(CFG, n_layers=1, d_vocab=p + 1, n_ctx=3, d_model=64, d_head=16, act_fn="relu")

    def run(deterministic: bool) -> torch.Tensor:
        m = anatomist.HookedTransformer(anatomist.TransformerConfig(**cfg))  # type: ignore[arg-type]
        config = settings(num_epochs=60, batch_size=p * p, lr=3e-3, deterministic=deterministic)
        train(m, config, data, loss_fn=lambda mm, b: mm(b[0])[:, -1, :p].log_softmax(-1)
              .gather(1, b[1][:, None]).mean().neg())  # fmt: skip
        return m.W_E.detach().clone()

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = run(True)
        assert all(torch.equal(first, run(True)) for _ in range(2))
        assert not torch.are_deterministic_algorithms_enabled()  # restored afterwards
    finally:
        torch.set_num_threads(threads)
