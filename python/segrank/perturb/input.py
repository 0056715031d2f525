"""Seeded input-space perturbations, applied after the model's own normalisation.

Each perturbation is parsed from a short spec (``noise:0.1-0.2``, ``gamma:1.1-1.2``,
``brightness:-0.1-0.1``, ``contrast:0.8-0.9``), draws its strength once per
(seed, model, unit, repeat) and is then applied tile by tile. Gaussian noise is generated as a
function of global pixel coordinates (in fixed cells, each seeded by its own index), so the
perturbed image does not depend on how it was tiled or chunked.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .seeds import rng

INPUT_KINDS = ("noise", "gamma", "brightness", "contrast")
PERTURBATION_KINDS = INPUT_KINDS + ("dropout",)

# Side of the cubic cells in which noise is drawn; any tile is assembled from whole cells.
NOISE_CELL = 64

_RANGE = re.compile(r"^\s*(-?\d+(?:\.\d*)?(?:e-?\d+)?)\s*(?:-\s*(-?\d+(?:\.\d*)?(?:e-?\d+)?))?\s*$")


@dataclass(frozen=True)
class PerturbationSpec:
    """One perturbation setting: a kind and a range [low, high] the strength is drawn from.

    For ``dropout`` the range is a single rate p (low == high).
    """

    kind: str
    low: float
    high: float

    @classmethod
    def parse(cls, text: str) -> "PerturbationSpec":
        """Parse ``KIND:LO-HI`` or ``KIND:VALUE`` (e.g. ``noise:0.1-0.2``, ``dropout:0.2``)."""
        kind, sep, rest = text.partition(":")
        kind = kind.strip().lower()
        if not sep or kind not in PERTURBATION_KINDS:
            raise ValueError(
                f"perturbation {text!r}: expected KIND:LO-HI with KIND one of {', '.join(PERTURBATION_KINDS)}"
            )
        m = _RANGE.match(rest)
        if not m:
            raise ValueError(f"perturbation {text!r}: cannot read the range {rest!r} (e.g. 0.1-0.2)")
        low = float(m.group(1))
        high = float(m.group(2)) if m.group(2) is not None else low
        if high < low:
            raise ValueError(f"perturbation {text!r}: range high {high} is below low {low}")
        if kind == "dropout" and not (0.0 <= low < 1.0 and low == high):
            raise ValueError(f"perturbation {text!r}: dropout takes one rate p in [0, 1)")
        if kind == "noise" and low < 0:
            raise ValueError(f"perturbation {text!r}: noise sigma must be >= 0")
        if kind == "gamma" and low <= 0:
            raise ValueError(f"perturbation {text!r}: gamma must be > 0")
        return cls(kind, low, high)

    def __str__(self) -> str:
        if self.low == self.high:
            return f"{self.kind}:{self.low:g}"
        return f"{self.kind}:{self.low:g}-{self.high:g}"

    @property
    def is_dropout(self) -> bool:
        return self.kind == "dropout"

    def draw(self, *, seed: int, model: str, unit: str, repeat: int) -> float:
        """The strength for one (model, unit, repeat): uniform in [low, high]."""
        if self.low == self.high:
            return self.low
        return float(rng(seed, model, unit, repeat, f"{self.kind}/strength").uniform(self.low, self.high))


@dataclass(frozen=True)
class InputPerturbation:
    """A drawn input perturbation, callable on normalised tiles as ``f(tile, origin)``.

    tile has shape (C, *spatial); origin is the global coordinate of its first pixel (it may be
    negative inside border padding). `center` is the mean of the normalised image, used by
    ``contrast`` so that tiles agree with each other.
    """

    kind: str
    strength: float
    seed: int
    model: str
    unit: str
    repeat: int
    center: float = 0.0

    def __call__(self, tile: np.ndarray, origin: tuple[int, ...]) -> np.ndarray:
        x = np.asarray(tile, dtype=np.float32)
        if self.kind == "noise":
            return x + np.float32(self.strength) * self.noise(x.shape, origin)
        if self.kind == "gamma":
            return (np.sign(x) * np.abs(x) ** np.float32(self.strength)).astype(np.float32)
        if self.kind == "brightness":
            return x + np.float32(self.strength)
        if self.kind == "contrast":
            c = np.float32(self.center)
            return c + np.float32(self.strength) * (x - c)
        raise ValueError(f"unknown input perturbation {self.kind!r}")

    def noise(self, shape: tuple[int, ...], origin: tuple[int, ...]) -> np.ndarray:
        """Standard normal noise for the region [origin, origin + shape[1:]) of every channel."""
        channels, spatial = shape[0], tuple(shape[1:])
        if len(origin) != len(spatial):
            raise ValueError(f"origin {origin} does not match tile shape {shape}")
        out = np.empty((channels,) + spatial, dtype=np.float32)
        first = [o // NOISE_CELL for o in origin]
        last = [(o + s - 1) // NOISE_CELL for o, s in zip(origin, spatial)]
        for cell in np.ndindex(*[b - a + 1 for a, b in zip(first, last)]):
            index = tuple(a + c for a, c in zip(first, cell))
            start = [i * NOISE_CELL for i in index]
            gen = rng(self.seed, self.model, self.unit, self.repeat, "noise/" + ",".join(map(str, index)))
            block = gen.standard_normal((channels,) + (NOISE_CELL,) * len(spatial), dtype=np.float32)
            # Overlap of this cell with the tile, in cell and in tile coordinates.
            lo = [max(s, o) for s, o in zip(start, origin)]
            hi = [min(s + NOISE_CELL, o + n) for s, o, n in zip(start, origin, spatial)]
            src = (slice(None),) + tuple(slice(l - s, h - s) for l, h, s in zip(lo, hi, start))
            dst = (slice(None),) + tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, origin))
            out[dst] = block[src]
        return out


def make_input_perturbation(
    spec: PerturbationSpec, *, seed: int, model: str, unit: str, repeat: int, center: float = 0.0
) -> InputPerturbation:
    """Draw the strength of `spec` for (seed, model, unit, repeat) and bind it."""
    if spec.is_dropout:
        raise ValueError("dropout is a feature-space perturbation; use segrank.perturb.dropout")
    strength = spec.draw(seed=seed, model=model, unit=unit, repeat=repeat)
    return InputPerturbation(spec.kind, strength, seed, model, unit, repeat, float(center))


def default_perturbation(*, dropout_possible: bool) -> PerturbationSpec:
    """method.md's defaults: bottleneck dropout where every model allows it, else input noise."""
    if dropout_possible:
        return PerturbationSpec("dropout", 0.2, 0.2)
    return PerturbationSpec("noise", 0.1, 0.2)


__all__ = [
    "INPUT_KINDS",
    "NOISE_CELL",
    "PERTURBATION_KINDS",
    "InputPerturbation",
    "PerturbationSpec",
    "default_perturbation",
    "make_input_perturbation",
]
