"""The content key of a prediction: everything that decides its values, hashed."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from ..models.description import Model
from ..models.untrusted import sha256_file
from .blocks import Blocking
from .normalize import Normalization

# Bump when a change alters stored predictions, so that old caches are not reused.
FORMAT_VERSION = 1
# Model fields that decide predicted values (the cache key ignores names, cards, paths).
PREDICTION_FIELDS = (
    "input_name", "output_name", "axes", "in_channels", "out_channels", "activation",
    "preprocessing", "dropout_input", "dropout_channels",
)



def prediction_key(
    model: Model,
    input_digest: str,
    norm: Normalization,
    blocking: Blocking,
    *,
    perturb_key: str | None = None,
    seed: int | None = None,
    dropout_mask: np.ndarray | None = None,
    tiles_per_run: int = 1,
) -> str:
    """Content hash of everything that decides a prediction's values.

    The model file's bytes and its description (activation, preprocessing, ...), the input
    pixels (all of them for images up to `normalize.MAX_SAMPLES` values per channel, the
    sampled chunks for larger volumes), the normalisation, tile and halo, the perturbation
    identity and seed, and the dropout mask, and the tiles per run when above one (a batched
    run may round differently on some providers). The device is left out on purpose:
    providers agree to rounding.
    """
    description = {f: getattr(model, f) for f in PREDICTION_FIELDS}
    payload = {
        "format": FORMAT_VERSION,
        "model_file": sha256_file(model.path),
        "model": {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in description.items()},
        "input": input_digest,
        "normalization": [list(norm.scale), list(norm.offset)],
        "tile": list(blocking.tile),
        "halo": list(blocking.halo),
        "perturbation": perturb_key,
        "seed": seed,
        "dropout_mask": None
        if dropout_mask is None
        else hashlib.sha256(np.ascontiguousarray(dropout_mask, dtype=np.float32).tobytes() + repr(np.shape(dropout_mask)).encode()).hexdigest(),
    }
    if tiles_per_run != 1:  # absent by default: keys of unbatched runs stay as they were
        payload["tiles_per_run"] = int(tiles_per_run)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

__all__ = ["FORMAT_VERSION", "PREDICTION_FIELDS", "prediction_key"]
