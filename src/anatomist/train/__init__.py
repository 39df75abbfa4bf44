"""Training toy models: `TrainingConfig`, `train`, and checkpoints that load back with
``HookedTransformer.from_pretrained(save_dir, checkpoint_index=i)``.

    model = HookedTransformer(cfg)
    train(model, TrainingConfig(max_steps=2000, batch_size=64, lr=1e-3, save_every=100,
                                save_dir="runs/toy"), tokens)
    train(model, config, tokens, resume=True)   # continues a killed run exactly
    table = metrics_over_checkpoints("runs/toy", lambda m: m(x, return_type="loss"))

See docs/training.md.
"""

from anatomist.train.dynamics import metrics_over_checkpoints
from anatomist.train.loop import TrainingConfig, TrainingError, checkpoint_steps, train

HookedTransformerTrainConfig = TrainingConfig  # the classic name (transformer_lens.train)

__all__ = [
    "HookedTransformerTrainConfig",
    "TrainingConfig",
    "TrainingError",
    "checkpoint_steps",
    "metrics_over_checkpoints",
    "train",
]
