"""One prediction run of a unit: which graph, which seeded perturbation, and its stored copy.

A unit (an image, or a scoring block of a volume) is predicted once unperturbed per graph and
once per (perturbation, repeat). Input perturbations (noise, gamma, brightness, contrast) run
through the model itself and are drawn per (seed, model, image, repeat); dropout runs through
the model's grey-box rewrite with a channel mask drawn per (seed, model, unit, repeat). Runs
through the same graph share its unperturbed run, so rounding differences between the two
graphs never count as inconsistency.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..models.description import Model
from ..perturb.dropout import channel_mask
from ..perturb.input import InputPerturbation, PerturbationSpec, make_input_perturbation
from ..perturb.seeds import rng
from .cache import CachedRun, perturbation_key
from .options import ScoringOptions


def dropout_mask(model: Model, spec: PerturbationSpec, *, seed: int, unit: str, repeat: int) -> np.ndarray:
    """The channel mask of a dropout run of `unit` (an image, or a block name)."""
    return channel_mask(
        model.dropout_levels or model.dropout_channels, spec.low, rng(seed, model.name, unit, repeat, "dropout"),
        ndim=model.ndim,
    )


@dataclass
class Run:
    """One prediction run: the graph it goes through, its perturbation, its stored copy.

    Attributes
    ----------
    model : Model
        The model, or its grey-box rewrite for dropout runs.
    graph : str (property)
        The graph's file: runs through the same graph share one unperturbed run (a model that
        is grey-box already is its own rewrite, so then all runs share it).
    perturb : InputPerturbation or None
    mask : ndarray or None
        The dropout mask (None: all ones).
    stored : CachedRun or None
        The run in the prediction cache, when there is one.
    """

    model: Model
    perturb: InputPerturbation | None = None
    mask: np.ndarray | None = None
    stored: CachedRun | None = None

    @property
    def graph(self) -> str:
        return str(self.model.path)


def plan_run(
    model: Model,
    spec: PerturbationSpec | None,
    repeat: int,
    *,
    options: ScoringOptions,
    image: str,
    unit: str,
    center: float,
    norm,
    blocking,
    digest: str,
) -> Run:
    """The run of `spec` (None: unperturbed) and `repeat` for `unit` of `image`, through `model`.

    `norm`, `blocking` and `digest` (the input's identity) are what the run is predicted with;
    they enter its cache key, with the perturbation's identity and the seed.
    """
    perturb = mask = identity = None
    if spec is not None and spec.is_dropout:
        mask = dropout_mask(model, spec, seed=options.seed, unit=unit, repeat=repeat)
        identity = perturbation_key(spec, model=model.name, unit=unit, repeat=repeat)
    elif spec is not None:
        perturb = make_input_perturbation(spec, seed=options.seed, model=model.name, unit=image, repeat=repeat,
                                          center=center)
        identity = perturbation_key(spec, perturb)
    stored = None
    if options.cache is not None:
        stored = options.cache.run(model, digest, norm, blocking, perturbation=identity, seed=options.seed, mask=mask,
                                   attributes={"image": image})
    return Run(model, perturb, mask, stored)


__all__ = ["Run", "dropout_mask", "plan_run"]
