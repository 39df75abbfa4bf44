"""Analysis tools over models and their caches (weight-space circuits, evals, logit lens)."""

from anatomist.analysis.factored_matrix import FactoredMatrix
from anatomist.analysis.svd import SVDInterpreter

__all__ = ["FactoredMatrix", "SVDInterpreter"]
