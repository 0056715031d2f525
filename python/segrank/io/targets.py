"""Targets: the unlabelled images or volumes to predict, opened lazily as dask arrays.

`open_target` accepts a folder of images (tif, tiff, png), a single tif (image or stack), a
Zarr array or group (format 2 or 3; OME-Zarr 0.4 and 0.5, whose full-resolution level is
used), an HDF5 file and an N5 container (with `key` naming the dataset when there are several).
Nothing is read but metadata until a pixel is needed, and every array can be pickled to a
dask.distributed worker (readers reopen their file there).

Each image's axes are read from the file's metadata (or given by the caller) and brought into
canonical order by `segrank.io.images`, whose `TargetImage`, `Target`, `canonical_axes` and
`DirectRegions` are importable from here too.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from .images import AXIS_ALIASES, DirectRegions, Target, TargetImage, canonical_axes, canonical_image, guess_axes

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


# --- single files -------------------------------------------------------------------------


def _read_tif_page(path: str, key: int) -> np.ndarray:
    import tifffile

    return tifffile.imread(path, key=key)


def _read_tif(path: str) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)


def _read_png(path: str) -> np.ndarray:
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))


def _open_tif(path: Path, axes: str | None) -> TargetImage:
    import dask
    import dask.array as da
    import tifffile

    where = str(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype, meta_axes = tuple(series.shape), np.dtype(series.dtype), series.axes
            n_pages = len(series.pages)
            page_shape = tuple(series.pages[0].shape) if n_pages else shape
    except Exception as err:
        raise InputError(f"{where}: cannot read as TIFF ({err})") from None
    if n_pages > 1 and math.prod(page_shape) * n_pages == math.prod(shape):
        # one chunk per page: a stack is read slice by slice, never whole
        pages = [
            da.from_delayed(dask.delayed(_read_tif_page)(str(path), i), page_shape, dtype) for i in range(n_pages)
        ]
        data = da.stack(pages).reshape(shape)
    else:
        data = da.from_delayed(dask.delayed(_read_tif)(str(path)), shape, dtype)
    if axes is None:
        meta_axes = meta_axes.lower()
        axes = meta_axes if set(meta_axes) <= set(AXIS_ALIASES) else guess_axes(len(shape), where)
    return canonical_image(path.stem, data, axes, path, where)


def _open_png(path: Path, axes: str | None) -> TargetImage:
    import dask
    import dask.array as da
    import imageio.v3 as iio

    where = str(path)
    try:
        props = iio.improps(path)
    except Exception as err:
        raise InputError(f"{where}: cannot read as PNG ({err})") from None
    shape, dtype = tuple(props.shape), np.dtype(props.dtype)
    data = da.from_delayed(dask.delayed(_read_png)(str(path)), shape, dtype)
    if axes is None:
        axes = "yx" if len(shape) == 2 else "yxc"
    return canonical_image(path.stem, data, axes, path, where)


# --- chunked stores -----------------------------------------------------------------------


class _H5Dataset:
    """Picklable, lazily opened HDF5 dataset (h5py handles cannot travel to workers)."""

    def __init__(self, path: str, key: str):
        import h5py

        self.path, self.key = path, key
        with h5py.File(path, "r") as f:
            ds = f[key]
            self.shape, self.dtype, self.chunks = tuple(ds.shape), ds.dtype, ds.chunks
            self.attrs = {k: ds.attrs[k] for k in ds.attrs}
        self.ndim = len(self.shape)
        self._file = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_file"} | {"_file": None}

    def __getitem__(self, index):
        import h5py

        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file[self.key][index]


def _h5_datasets(path: Path) -> list[str]:
    import h5py

    names = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def _open_hdf5(path: Path, axes: str | None, key: str | None) -> TargetImage:
    import dask.array as da

    where = str(path)
    try:
        names = _h5_datasets(path)
    except Exception as err:
        raise InputError(f"{where}: cannot read as HDF5 ({err})") from None
    if key is None:
        if len(names) != 1:
            raise InputError(f"{where}: holds {len(names)} datasets ({', '.join(names[:8])}); choose one with --key")
        key = names[0]
    elif key.strip("/") not in names:
        raise InputError(f"{where}: no dataset {key!r} (datasets: {', '.join(names[:8])})")
    ds = _H5Dataset(str(path), key.strip("/"))
    data = da.from_array(ds, chunks=ds.chunks or "auto", asarray=True, lock=False, inline_array=True)
    axes = axes or _axes_attr(ds.attrs) or guess_axes(ds.ndim, f"{where}:{key}")
    return canonical_image(key.strip("/").replace("/", "_"), data, axes, path, f"{where}:{key}", stored=ds)


def _axes_attr(attrs) -> str | None:
    for name in ("axes", "_ARRAY_DIMENSIONS", "dimension_names"):
        value = attrs.get(name) if hasattr(attrs, "get") else None
        if value is None:
            continue
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str):
            return value.replace(",", "").replace(" ", "")
        try:
            return "".join(str(v.decode() if isinstance(v, bytes) else v)[0] for v in value)
        except (TypeError, IndexError):
            return None
    return None


class _N5Dataset:
    """Picklable N5 dataset read through tensorstore, dimensions reversed to C order.

    N5 lists dimensions fastest-first (x, y, z); like z5py and zarr-python's N5 store, segrank
    presents them in C order (z, y, x).
    """

    def __init__(self, path: str, key: str):
        self.path, self.key = path, key
        attrs = json.loads((Path(path) / key / "attributes.json").read_text())
        self.shape = tuple(int(d) for d in reversed(attrs["dimensions"]))
        self.chunks = tuple(int(b) for b in reversed(attrs["blockSize"]))
        self.dtype = np.dtype(attrs["dataType"])
        self.ndim = len(self.shape)
        axes = attrs.get("axes")
        self.axes = "".join(str(a)[0] for a in reversed(axes)).lower() if axes else None
        self._store = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_store"} | {"_store": None}

    def __getitem__(self, index):
        if self._store is None:
            import tensorstore as ts

            spec = {"driver": "n5", "kvstore": {"driver": "file", "path": str(Path(self.path) / self.key)}}
            self._store = ts.open(spec, read=True).result().T
        return np.asarray(self._store[index].read().result())


def _open_n5(path: Path, axes: str | None, key: str | None) -> TargetImage:
    import dask.array as da

    where = str(path)
    datasets = sorted(
        str(p.parent.relative_to(path)) for p in path.rglob("attributes.json") if "dimensions" in p.read_text()
    )
    if key is None:
        if len(datasets) != 1:
            raise InputError(f"{where}: holds {len(datasets)} N5 datasets ({', '.join(datasets[:8])}); choose one with --key")
        key = datasets[0]
    key = key.strip("/") or "."
    if key not in datasets:
        raise InputError(f"{where}: no N5 dataset {key!r} (datasets: {', '.join(datasets[:8])})")
    try:
        import tensorstore  # noqa: F401
    except ImportError:
        raise InputError(f"{where}: reading N5 needs the tensorstore package (pip install 'segrank[n5]')") from None
    ds = _N5Dataset(str(path), key)
    data = da.from_array(ds, chunks=ds.chunks, asarray=True, lock=False, inline_array=True)
    axes = axes or ds.axes or guess_axes(ds.ndim, f"{where}:{key}")
    name = path.stem if key == "." else key.replace("/", "_")
    return canonical_image(name, data, axes, path, f"{where}:{key}", stored=ds)


def _ome_multiscales(attrs: dict) -> list | None:
    if "ome" in attrs and isinstance(attrs["ome"], dict) and "multiscales" in attrs["ome"]:
        return attrs["ome"]["multiscales"]  # OME-Zarr 0.5
    return attrs.get("multiscales")  # OME-Zarr 0.4


def _zarr_array_image(arr, name: str, axes: str | None, source: Path, where: str, meta_axes: str | None = None):
    import dask.array as da

    if axes is None:
        axes = meta_axes
    if axes is None:
        names = getattr(arr.metadata, "dimension_names", None)
        if names and all(names):
            axes = "".join(str(n)[0] for n in names)
    if axes is None:
        axes = _axes_attr(dict(arr.attrs))
    axes = axes or guess_axes(arr.ndim, where)
    data = da.from_zarr(arr, inline_array=True)
    return canonical_image(name, data, axes, source, where, stored=arr)


def _open_zarr(path: Path, axes: str | None, key: str | None) -> TargetImage:
    import zarr

    where = str(path)
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:
        raise InputError(f"{where}: cannot open as Zarr ({err})") from None
    name = path.name.removesuffix(".zarr").removesuffix(".ome") or "image"
    if key is not None:
        if not isinstance(node, zarr.Group):
            raise InputError(f"{where}: --key {key!r} given but this is a Zarr array, not a group")
        try:
            node = node[key.strip("/")]
        except KeyError:
            raise InputError(f"{where}: no array or group {key!r}") from None
        where = f"{where}:{key}"
        name = key.strip("/").replace("/", "_")
    if isinstance(node, zarr.Array):
        return _zarr_array_image(node, name, axes, path, where)
    multiscales = _ome_multiscales(dict(node.attrs))
    if multiscales:
        ms = multiscales[0]
        level = ms["datasets"][0]["path"]  # the first dataset is the full resolution
        meta = ms.get("axes")
        meta_axes = None
        if meta:  # 0.4+: list of {name, type}; 0.3: list of names
            meta_axes = "".join((a["name"] if isinstance(a, dict) else str(a))[0] for a in meta)
        return _zarr_array_image(node[level], name, axes, path, f"{where}/{level}", meta_axes)
    arrays = sorted(k for k, _ in node.arrays())
    if len(arrays) == 1:
        return _zarr_array_image(node[arrays[0]], arrays[0], axes, path, f"{where}/{arrays[0]}")
    raise InputError(
        f"{where}: a Zarr group with {len(arrays)} arrays ({', '.join(arrays[:8])}) and no OME-Zarr metadata; choose one with --key"
    )


def _is_zarr(path: Path) -> bool:
    return any((path / f).exists() for f in ("zarr.json", ".zarray", ".zgroup"))


def _is_n5(path: Path) -> bool:
    return path.suffix == ".n5" or ((path / "attributes.json").exists() and not _is_zarr(path))


def open_target(path, *, axes: str | None = None, key: str | None = None) -> Target:
    """Open a target lazily.

    Parameters
    ----------
    path : str or Path
        A folder of tif/png images, a tif file, a Zarr array or group, an HDF5 file or an N5
        container.
    axes : str, optional
        Axes of every image (letters from "tczyx"; "s" = samples = channels), e.g. "zyx";
        overrides metadata.
    key : str, optional
        Dataset inside an HDF5 file, N5 container or Zarr group.

    Returns
    -------
    Target
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: target not found")
    if path.is_dir():
        if _is_zarr(path):
            images = [_open_zarr(path, axes, key)]
        elif _is_n5(path):
            images = [_open_n5(path, axes, key)]
        else:
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise InputError(f"{path}: no tif/png image and no Zarr/N5 metadata in this folder")
            images = [_open_file(p, axes, key) for p in files]
            names = [im.name for im in images]
            if len(set(names)) != len(names):
                raise InputError(f"{path}: image names repeat once extensions are removed")
    else:
        images = [_open_file(path, axes, key)]
    return Target(path, tuple(images))


def _open_file(path: Path, axes: str | None, key: str | None) -> TargetImage:
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _open_tif(path, axes)
    if suffix == ".png":
        return _open_png(path, axes)
    if suffix in HDF5_SUFFIXES:
        return _open_hdf5(path, axes, key)
    raise InputError(f"{path}: unsupported file type {suffix!r} (tif, png, Zarr, HDF5 or N5)")


__all__ = ["DirectRegions", "Target", "TargetImage", "canonical_axes", "open_target"]
