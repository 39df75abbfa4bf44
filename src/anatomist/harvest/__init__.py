"""Activation datasets: a corpus run through a model, the activations of chosen hooks written
to disk in shards (resumable; several processes under torchrun), and read back.

    from anatomist.harvest import harvest, ActivationDataset
    harvest(model, "corpus/", ["blocks.3.hook_resid_post"], "acts/", context_length=128)
    acts = ActivationDataset("acts/")

See docs/scale.md."""

from anatomist.harvest.dataset import ActivationDataset
from anatomist.harvest.run import harvest

__all__ = ["ActivationDataset", "harvest"]
