"""`segrank compare`: consistency scores between two saved segmentations or probability maps."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from .binary import binary_consistency
from .contingency import contingency_table
from .rand import adapted_rand, variation_of_information

__all__ = ["COMPARE_METRICS", "compare_arrays", "compare_files", "read_array"]

COMPARE_METRICS = ("nhd", "ei", "rand", "vi", "all")
_KEYS = {
    "nhd": ("nhd_distance",),
    "ei": ("ei",),
    "rand": ("rand_precision", "rand_recall", "rand_f"),
    "vi": ("vi_split", "vi_merge"),
}


def _read_zarr(path: Path) -> np.ndarray:
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return np.asarray(node[...])
    arrays = [name for name, _ in node.arrays()]
    if len(arrays) != 1:
        raise InputError(f"{path}: a Zarr group with {len(arrays)} arrays; give the path of one array inside it")
    return np.asarray(node[arrays[0]][...])


def read_array(path) -> np.ndarray:
    """Read a .npy, .tif/.tiff, .png or .zarr file as a numpy array (InputError naming the file)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            data = tifffile.imread(path)
        elif suffix == ".png":
            import imageio.v3 as iio

            data = iio.imread(path)
            if data.ndim == 3 and data.shape[-1] in (3, 4):
                if not all(np.array_equal(data[..., 0], data[..., k]) for k in range(1, 3)):
                    raise InputError(f"{path}: a colour PNG; save masks, labels or probabilities as one channel")
                data = data[..., 0]
        elif suffix == ".zarr" or (path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zarray", ".zgroup"))):
            data = _read_zarr(path)
        else:
            raise InputError(f"{path}: unsupported file type '{suffix}' (use .tif, .png, .npy or .zarr)")
    except InputError:
        raise
    except Exception as exc:  # a corrupt or unreadable file: one line, naming it
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot read it ({detail})") from None
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise InputError(f"{path}: holds {data.dtype} values, not numbers")
    if data.ndim == 0 or data.size == 0:
        raise InputError(f"{path}: holds no image (shape {data.shape})")
    squeezed = data.squeeze() if data.ndim > 3 else data
    if squeezed.ndim > 3:
        raise InputError(f"{path}: {data.ndim} axes (shape {data.shape}); compare 2D images or 3D volumes")
    return squeezed


def _is_probability(a: np.ndarray) -> bool:
    return a.dtype.kind == "f"


def _nan_to_none(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def compare_arrays(a: np.ndarray, b: np.ndarray, *, metric="all", threshold=0.5, names=("A", "B")) -> dict:
    """Scores between two predictions, keyed nhd_distance, ei, rand_precision, rand_recall, rand_f,
    vi_split, vi_merge (those `metric` asks for); None where a score is undefined.

    ``nhd_distance`` is the normalised Hamming distance |A xor B| / |A or B| (0 = the same
    foreground); `segrank rank`'s "nhd" score is its complement, 1 - NHD (1 = the same), so
    that every ranking score reads higher = more consistent.

    Float arrays are probability maps (foreground p > threshold); bool and integer arrays are
    masks or label images (nonzero = foreground). NHD and EI compare foregrounds (EI with the
    probabilities when both are float, else with p = 1 on masks); rand and vi need integer
    label images and use method.md's convention (pixels foreground in either, background
    pixels there singletons).
    """
    if metric not in COMPARE_METRICS:
        raise ValueError(f"metric must be one of {COMPARE_METRICS}, got {metric!r}")
    if a.shape != b.shape:
        raise InputError(f"{names[0]} and {names[1]} differ in shape: {a.shape} vs {b.shape}")
    wanted = ("nhd", "ei", "rand", "vi") if metric == "all" else (metric,)
    out: dict = {}
    if "nhd" in wanted or "ei" in wanted:
        if _is_probability(a) and _is_probability(b):
            dtype = np.result_type(a.dtype, b.dtype)
            counts = binary_consistency(a.astype(dtype, copy=False), b.astype(dtype, copy=False), threshold=threshold)
        else:
            masks = [x > threshold if _is_probability(x) else x != 0 for x in (a, b)]
            counts = binary_consistency(masks[0], masks[1])
        if "nhd" in wanted:
            out["nhd_distance"] = _nan_to_none(counts.nhd)
        if "ei" in wanted:
            out["ei"] = _nan_to_none(counts.ei)
    if "rand" in wanted or "vi" in wanted:
        floats = [n for n, x in zip(names, (a, b)) if _is_probability(x)]
        if floats and metric != "all":
            which = floats[0]
            raise InputError(f"{which}: {metric} needs integer label images, got {(a if which == names[0] else b).dtype} "
                             "probabilities")
        table = None if floats else contingency_table(a, b)
        if "rand" in wanted:
            scores = adapted_rand(table) if table is not None else (math.nan,) * 3
            out.update({k: _nan_to_none(v) for k, v in zip(_KEYS["rand"], scores)})
        if "vi" in wanted:
            scores = variation_of_information(table) if table is not None else (math.nan,) * 2
            out.update({k: _nan_to_none(v) for k, v in zip(_KEYS["vi"], scores)})
    return out


def compare_files(path_a, path_b, *, metric="all", threshold=0.5) -> dict:
    """`compare_arrays` on two files (see `read_array` for the formats)."""
    a, b = read_array(path_a), read_array(path_b)
    return compare_arrays(a, b, metric=metric, threshold=threshold, names=(str(path_a), str(path_b)))
