"""What every scoring task of one model shares: perturbations, metric, repeats, seed, device, cache."""
from __future__ import annotations

from dataclasses import dataclass

from ..perturb.input import PerturbationSpec
from .cache import PredictionCache


@dataclass(frozen=True)
class ScoringOptions:
    """The settings of a model's scoring tasks, whole images and volume blocks alike (picklable).

    Attributes
    ----------
    specs : tuple of PerturbationSpec
        Every perturbation setting; each is scored (and ranked) on its own.
    metric : str
        nhd, ei or rand (already resolved from auto for this model).
    repeats : int
        Perturbed runs per unit (K); repeat r is drawn from (seed, model, unit, r) whatever K is.
    seed : int
    threshold : float
        Foreground threshold on probabilities.
    device : str
    threads : int or None
        ONNX Runtime intra-op threads per session.
    cache : PredictionCache or None
        Where predictions are kept across runs (None: computed every time).
    """

    specs: tuple[PerturbationSpec, ...]
    metric: str
    repeats: int
    seed: int
    threshold: float
    device: str = "auto"
    threads: int | None = None
    cache: PredictionCache | None = None

    def runs(self, todo, *, dropout: bool) -> list[tuple[PerturbationSpec, int]]:
        """(spec, repeat) pairs listed in `todo` (as (str(spec), repeat)), in a fixed order;
        dropout ones only when the model has a grey-box rewrite (`dropout`)."""
        todo = set(todo)
        return [
            (spec, r) for spec in self.specs for r in range(self.repeats)
            if (str(spec), r) in todo and (dropout or not spec.is_dropout)
        ]


__all__ = ["ScoringOptions"]
