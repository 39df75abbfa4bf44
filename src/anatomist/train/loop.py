"""The training loop, its settings, and its checkpoints.

`train(model, config, dataset)` trains in place and returns the model. The batches of epoch `e`
are a permutation of the rows drawn from ``config.seed`` and `e` alone, so a run is a function
of its settings: deterministic on the CPU, and resumable exactly. Every ``save_every`` steps
(and at the end) it writes, under ``save_dir``::

    config.json                          the model's config (the classic HookedTransformerConfig
                                         fields), read by from_pretrained
    checkpoints/model_<step>.safetensors the weights at that step
    checkpoints/state_<step>.pt          optimizer, scheduler and RNG state (written last: a
                                         checkpoint without it is incomplete and ignored)
    model.safetensors                    the final weights

so ``HookedTransformer.from_pretrained(save_dir, checkpoint_index=i)`` (or ``checkpoint_value=
step``) loads checkpoint `i`, and ``train(..., resume=True)`` continues from the latest complete
checkpoint: the final weights equal an uninterrupted run's, bit for bit on the CPU. Every file is
written under a temporary name, fsynced and renamed (`anatomist.files`). State files are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from anatomist.files import write_atomically, write_json_atomically

OPTIMIZERS = ("Adam", "AdamW", "SGD")
_STATE = re.compile(r"state_(\d+)\.pt")


class TrainingError(ValueError):
    """Settings or data `train` cannot use, or a save folder it cannot resume from."""


@dataclass
class TrainingConfig:
    """The classic ``HookedTransformerTrainConfig`` fields, plus logging.

    Training runs ``num_epochs`` passes over the data, or stops at ``max_steps`` optimizer steps
    if that comes first. ``warmup_steps`` ramps the learning rate linearly from lr/warmup to
    lr. ``weight_decay`` (None: the optimizer's default; AdamW's is 0.01), ``betas`` (Adam and
    AdamW; None: torch's 0.9, 0.999) and ``momentum`` (SGD) go to the optimizer;
    ``max_grad_norm`` clips the gradients' total norm. Logging: every step's record (step,
    epoch, loss, lr) goes to ``callback``, to ``log_file`` (.csv or .jsonl, appended to on
    resume) and, with ``wandb=True`` and the package installed, to a wandb run; every
    ``print_every`` steps it is printed. ``progress`` shows a bar with the loss.
    ``deterministic`` turns on torch's deterministic algorithms while training (restored after;
    ops without one warn): with several CPU threads some backward kernels otherwise sum in a
    varying order, and two runs of the same settings drift apart.
    """

    num_epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    momentum: float = 0.0
    max_grad_norm: float | None = None
    weight_decay: float | None = None
    optimizer_name: str = "Adam"
    device: str | None = None
    warmup_steps: int = 0
    save_every: int | None = None
    save_dir: str | os.PathLike[str] | None = None
    wandb: bool = False
    wandb_project_name: str | None = None
    print_every: int | None = 50
    max_steps: int | None = None
    betas: tuple[float, float] | None = None
    log_file: str | os.PathLike[str] | None = None
    callback: Callable[[dict[str, float]], None] | None = None
    progress: bool = True
    deterministic: bool = True

    def __post_init__(self) -> None:
        for name in ("num_epochs", "batch_size"):
            _positive_int(name, getattr(self, name))
        for name in ("save_every", "print_every", "max_steps"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int):
            raise TrainingError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}.")
        if self.warmup_steps < 0:
            raise TrainingError(f"warmup_steps must be >= 0, got {self.warmup_steps}.")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise TrainingError(f"lr must be a positive number, got {self.lr!r}.")
        if self.optimizer_name not in OPTIMIZERS:
            raise TrainingError(
                f"optimizer_name {self.optimizer_name!r} is not one of {', '.join(OPTIMIZERS)}."
            )
        if self.betas is not None:
            betas = tuple(self.betas) if isinstance(self.betas, list | tuple) else ()
            if len(betas) != 2 or not all(
                isinstance(b, int | float) and not isinstance(b, bool) and 0 <= b < 1 for b in betas
            ):
                raise TrainingError(
                    f"betas must be two numbers in [0, 1) (Adam's beta1, beta2), got {self.betas!r}."
                )
            if self.optimizer_name == "SGD":
                raise TrainingError("betas are Adam's and AdamW's; SGD takes momentum instead.")
            self.betas = (float(betas[0]), float(betas[1]))
        if self.save_every is not None and self.save_dir is None:
            raise TrainingError("save_every needs save_dir: where the checkpoints go.")
        if self.log_file is not None and Path(self.log_file).suffix not in (".csv", ".jsonl"):
            raise TrainingError(f"log_file must end in .csv or .jsonl, got {self.log_file!r}.")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TrainingError(f"{name} must be a positive integer, got {value!r}.")


LossFn = Callable[[Any, Any], Tensor]


def train(
    model: Any,
    config: TrainingConfig,
    dataset: Any,
    loss_fn: LossFn | None = None,
    resume: bool = False,
) -> Any:
    """Train `model` in place on `dataset` and return it (in eval mode).

    `dataset`: token ids ``[rows, pos]`` (a tensor), a `datasets` dataset with a ``tokens``
    column (e.g. `utils.tokenize_and_concatenate`'s output), or, with `loss_fn`, a tensor or a
    tuple of tensors with rows along their first axis. Without `loss_fn` the loss is the
    model's next-token loss on the batch; `loss_fn(model, batch)` computes any other (a batch
    is the rows' tensor, or the tuple of the rows of each tensor). `resume=True` continues from
    the latest complete checkpoint in ``config.save_dir`` (and starts fresh when it has none).
    """
    if resume and config.save_dir is None:
        raise TrainingError("resume=True needs config.save_dir, where the checkpoints are.")
    rows = _Rows(dataset, loss_fn is not None)
    if config.device is not None:
        model.to(config.device)
    device = next(model.parameters()).device
    steps_per_epoch = math.ceil(len(rows) / config.batch_size)
    total = steps_per_epoch * config.num_epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    torch.manual_seed(config.seed)
    optimizer = _optimizer(model, config)
    warmup = config.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
    )
    save_dir = Path(config.save_dir) if config.save_dir is not None else None
    step = _restore(save_dir, model, optimizer, scheduler) if resume and save_dir else 0
    if save_dir is not None:
        write_json_atomically(save_dir / "config.json", _config_dict(model))
    logger = _Logger(config, append=resume and step > 0)
    bar = tqdm(total=total, initial=step, desc="training", disable=not config.progress)
    model.train()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        while step < total:
            epoch, index = divmod(step, steps_per_epoch)
            order = _order(config.seed, epoch, len(rows))
            batch = rows.get(order[index * config.batch_size : (index + 1) * config.batch_size])
            batch = _to(batch, device)
            loss = loss_fn(model, batch) if loss_fn else model(batch, return_type="loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            step += 1
            record = {"step": step, "epoch": epoch, "loss": float(loss.item()), "lr": float(lr)}
            logger.log(record, bar)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            if save_dir is not None and (
                step == total or (config.save_every is not None and step % config.save_every == 0)
            ):
                _save(save_dir, step, model, optimizer, scheduler)
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
        bar.close()
        logger.close()
    if save_dir is not None:
        _save_weights(save_dir / "model.safetensors", model)
    return model.eval()


# --- data ----------------------------------------------------------------------------------------


class _Rows:
    """Row access for the kinds of dataset `train` takes."""

    def __init__(self, dataset: Any, custom_loss: bool) -> None:
        self.tensors: tuple[Tensor, ...] | None = None
        self.table: Any = None
        if isinstance(dataset, Tensor):
            self.tensors = (dataset,)
        elif isinstance(dataset, tuple | list) and dataset and custom_loss:
            if not all(isinstance(t, Tensor) for t in dataset):
                raise TrainingError("A tuple dataset must hold tensors (rows along dim 0).")
            if len({t.shape[0] for t in dataset}) != 1:
                shapes = [tuple(t.shape) for t in dataset]
                raise TrainingError(f"The dataset's tensors differ in rows: {shapes}.")
            self.tensors = tuple(dataset)
        elif "tokens" in getattr(dataset, "column_names", ()):
            self.table = dataset.with_format("torch", columns=["tokens"])
        else:
            raise TrainingError(
                f"dataset must be token ids [rows, pos] (a tensor), a datasets dataset with a "
                f"'tokens' column, or with loss_fn a tuple of tensors; got "
                f"{type(dataset).__name__}."
            )
        if self.tensors is not None and not custom_loss:
            tokens = self.tensors[0]
            if tokens.dim() != 2 or tokens.is_floating_point():
                raise TrainingError(
                    f"dataset must be integer token ids [rows, pos], got a {tokens.dtype} "
                    f"tensor of shape {tuple(tokens.shape)} (pass loss_fn for other data)."
                )
        if len(self) == 0:
            raise TrainingError("The dataset has no rows.")

    def __len__(self) -> int:
        if self.tensors is not None:
            return int(self.tensors[0].shape[0])
        return len(self.table)

    def get(self, index: Tensor) -> Any:
        if self.tensors is None:
            return self.table[index.tolist()]["tokens"]
        picked = tuple(t[index] for t in self.tensors)
        return picked[0] if len(picked) == 1 else picked


def _order(seed: int, epoch: int, n: int) -> Tensor:
    """Epoch `epoch`'s row order: from the seed and the epoch only (so a resumed run has it)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, tuple):
        return tuple(t.to(device) for t in batch)
    return batch.to(device)


def _optimizer(model: Any, config: TrainingConfig) -> torch.optim.Optimizer:
    decay: dict[str, Any] = {}
    if config.weight_decay is not None:
        decay["weight_decay"] = config.weight_decay
    if config.betas is not None:
        decay["betas"] = config.betas
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer_name == "Adam":
        return torch.optim.Adam(params, lr=config.lr, **decay)
    if config.optimizer_name == "AdamW":
        return torch.optim.AdamW(params, lr=config.lr, **decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, **decay)


# --- logging -------------------------------------------------------------------------------------


class _Logger:
    def __init__(self, config: TrainingConfig, append: bool) -> None:
        self.config = config
        self.file: Any = None
        self.writer: Any = None
        if config.log_file is not None:
            path = Path(config.log_file)
            self.csv = path.suffix == ".csv"
            fresh = not (append and path.exists())
            self.file = open(path, "w" if fresh else "a", newline="")  # noqa: SIM115
            if self.csv:
                self.writer = csv.DictWriter(self.file, ["step", "epoch", "loss", "lr"])
                if fresh:
                    self.writer.writeheader()
        self.run: Any = None
        if config.wandb:
            try:
                import wandb
            except ImportError:
                warnings.warn(
                    "wandb=True but wandb is not installed; not logging to it.", stacklevel=3
                )
            else:
                self.run = wandb.init(project=config.wandb_project_name, config=_plain(config))

    def log(self, record: dict[str, float], bar: Any) -> None:
        if self.config.callback is not None:
            self.config.callback(dict(record))
        if self.writer is not None:
            self.writer.writerow(record)
        elif self.file is not None:
            self.file.write(json.dumps(record) + "\n")
        if self.run is not None:
            self.run.log(record)
        every = self.config.print_every
        if every is not None and int(record["step"]) % every == 0:
            bar.write(f"step {record['step']}, epoch {record['epoch']}: loss {record['loss']:.4f}")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.run is not None:
            self.run.finish()


def _plain(config: TrainingConfig) -> dict[str, Any]:
    return {k: v for k, v in vars(config).items() if isinstance(v, int | float | str | None)}


# --- checkpoints ---------------------------------------------------------------------------------


def _config_dict(model: Any) -> dict[str, Any]:
    values = model.cfg.to_dict()
    values.pop("device", None)  # where it trained is not part of the model
    return json.loads(json.dumps(values, default=str))


def _save(save_dir: Path, step: int, model: Any, optimizer: Any, scheduler: Any) -> None:
    folder = save_dir / "checkpoints"
    _save_weights(folder / f"model_{step}.safetensors", model)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
    }
    write_atomically(folder / f"state_{step}.pt", lambda path: torch.save(state, path))


def _save_weights(path: Path, model: Any) -> None:
    from safetensors.torch import save_file

    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomically(path, lambda target: save_file(weights, str(target)))


def _restore(save_dir: Path, model: Any, optimizer: Any, scheduler: Any) -> int:
    """Load the latest complete checkpoint; its step (0 when there is none)."""
    from safetensors.torch import load_file

    folder = save_dir / "checkpoints"
    steps = checkpoint_steps(save_dir)
    if not steps:
        return 0
    step = steps[-1]
    state = torch.load(folder / f"state_{step}.pt", weights_only=True)
    if state.get("step") != step:
        raise TrainingError(f"{folder}/state_{step}.pt says step {state.get('step')}.")
    weights = load_file(str(folder / f"model_{step}.safetensors"))
    try:  # all-or-nothing for anatomist's models: names and shapes checked before any copy
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise TrainingError(
            f"Checkpoint {step} in {save_dir} is of another model ({error}); give a new "
            "save_dir or the same model."
        ) from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return step


def checkpoint_steps(save_dir: str | os.PathLike[str]) -> Sequence[int]:
    """The steps of the complete checkpoints in `save_dir`, in order."""
    folder = Path(save_dir) / "checkpoints"
    return sorted(
        int(m[1])
        for p in folder.glob("state_*.pt")
        if (m := _STATE.fullmatch(p.name)) and (folder / f"model_{m[1]}.safetensors").is_file()
    )
