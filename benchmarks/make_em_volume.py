"""Build a large EM-like uint8 Zarr v3 volume (and its mitochondria labels) from real EM slices.

Source: ../shared/data/em/vnc_drosophila (20 consecutive 1024x1024 ssTEM sections of a
Drosophila ventral nerve cord, with mitochondria masks; CC BY-NC-SA 3.0, never committed) or
epfl_hippocampus (32 FIB-SEM slices of 768x1024). The real stack is extended without seams:
along z it is played back and forth (0, 1, ..., 19, 18, ..., 1, 0, 1, ...), so neighbouring
slices are always neighbouring sections; in y and x it is mirrored at its edges (reflect tiling)
when the requested plane is larger than a section. Labels go through the same mapping.

The volume is written slab by slab (bounded memory) to::

    OUT/em-<size>gib.zarr          uint8, dimension_names z, y, x
    OUT/em-<size>gib-labels.zarr   uint8, 1 = mitochondrion

Usage (OUT defaults to benchmarks/data/, which git ignores)::

    python benchmarks/make_em_volume.py --gib 0.25 0.5 1 2
    python benchmarks/make_em_volume.py --gib 1 --plane 2048 --chunks 32,256,256
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "em"


def load_stack(source: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, mito labels) of a source folder as (n, y, x) uint8 arrays, in slice order."""
    import tifffile

    folder = DATA / source
    files = sorted((folder / "images").glob("*.tif"))
    if not files:
        raise SystemExit(f"{folder}/images: no tif slices found")
    images = np.stack([tifffile.imread(f) for f in files]).astype(np.uint8)
    labels = np.stack([tifffile.imread(folder / "labels_mito" / f.name) for f in files])
    return images, (labels > 0).astype(np.uint8)


def z_index(z: np.ndarray, n: int) -> np.ndarray:
    """Back-and-forth playback of n sections: 0..n-1, n-2..1, 0.. (period 2n - 2)."""
    period = max(1, 2 * n - 2)
    k = z % period
    return np.where(k < n, k, period - k)


def reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """Mirror tiling of an axis of length n (numpy's 'symmetric' padding, repeated)."""
    k = i % (2 * n)
    return np.where(k < n, k, 2 * n - 1 - k)


def build(out: Path, *, gib: float, plane: int, chunks: tuple[int, int, int], images: np.ndarray,
          labels: np.ndarray, source: str = "vnc_drosophila") -> dict:
    import zarr

    depth = max(1, round(gib * (1 << 30) / (plane * plane)))
    shape = (depth, plane, plane)
    name = f"em-{gib:g}gib"
    raw_path, lab_path = out / f"{name}.zarr", out / f"{name}-labels.zarr"
    meta = {"source": source, "shape": list(shape), "chunks": list(chunks), "gib": depth * plane * plane / (1 << 30)}
    done = out / f"{name}.json"
    if done.exists() and json.loads(done.read_text()) == meta and raw_path.exists() and lab_path.exists():
        print(f"{raw_path}: exists, kept", file=sys.stderr)
        return meta
    n, ny, nx = images.shape
    yi, xi = reflect_index(np.arange(plane), ny), reflect_index(np.arange(plane), nx)
    raw = zarr.create_array(str(raw_path), shape=shape, chunks=chunks, dtype="uint8", dimension_names=["z", "y", "x"],
                            overwrite=True)
    lab = zarr.create_array(str(lab_path), shape=shape, chunks=chunks, dtype="uint8", dimension_names=["z", "y", "x"],
                            overwrite=True)
    t0 = time.perf_counter()
    for z0 in range(0, depth, chunks[0]):  # whole chunks per write: one slab of chunks at a time
        zs = z_index(np.arange(z0, min(z0 + chunks[0], depth)), n)
        raw[z0 : z0 + len(zs)] = images[zs][:, yi][:, :, xi]
        lab[z0 : z0 + len(zs)] = labels[zs][:, yi][:, :, xi]
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    done.write_text(json.dumps({k: v for k, v in meta.items() if k != "seconds"}))
    print(f"{raw_path}: {shape} uint8 in {meta['seconds']} s", file=sys.stderr)
    return meta


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="sizes in GiB (uint8 voxels)")
    parser.add_argument("--plane", type=int, default=1024, help="y and x size (the depth follows from the size)")
    parser.add_argument("--chunks", default="16,128,128", help="Zarr chunk shape z,y,x")
    parser.add_argument("--source", default="vnc_drosophila", choices=["vnc_drosophila", "epfl_hippocampus"])
    parser.add_argument("--out", type=Path, default=HERE / "data")
    args = parser.parse_args(argv)
    chunks = tuple(int(c) for c in args.chunks.split(","))
    if len(chunks) != 3:
        raise SystemExit(f"--chunks {args.chunks}: expected z,y,x")
    args.out.mkdir(parents=True, exist_ok=True)
    images, labels = load_stack(args.source)
    for gib in args.gib:
        build(args.out, gib=gib, plane=args.plane, chunks=chunks, images=images, labels=labels, source=args.source)


if __name__ == "__main__":
    main()


__all__ = ["build", "load_stack", "reflect_index", "z_index"]
