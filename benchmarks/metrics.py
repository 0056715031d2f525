"""Metric kernels: throughput, peak extra memory, and ratios against baselines of the same run.

Questions (issue 2) and how each is measured:

* binary consistency (NHD counts) on uint8 masks, ~30 % foreground: segrank vs numpy
  (``count_nonzero(a ^ b)``, ``count_nonzero(a | b)``); goal >= 12,000 Mvoxel/s on one thread.
* soft EI sum (+ NHD counts) on float32 probabilities: segrank vs numpy
  (threshold, and/or, ``sqrt(p_u p_p)[A & B].sum()``); goal >= 3,000 Mvoxel/s.
* contingency table + adapted Rand on Voronoi-like label images (a 2D image with ~2,000
  instances, a 3D uint32 volume with ~20,000, the same volume with uint64 ids spread over the
  whole id range), ~60 % foreground, against a perturbed copy (boundaries shifted, ~3 % of
  objects split and ~3 % merged): segrank (1 and 2 threads) vs skimage.metrics.adapted_rand_error,
  sklearn.metrics.cluster.contingency_matrix and elf.evaluation.rand_index; goals >= 600
  Mvoxel/s (uint32) and >= 500 (uint64) on one thread, >= 1,000 with two.
* the machine's read bandwidth (a large numpy reduction, and a copy), printed as the physical
  limit, with each binary kernel's share of it (bytes it must read per second / bandwidth).

Throughput is the best of ``--repeats`` runs by wall-clock time (``mvox_s``); one-thread rows
also give it by process CPU time (``mvox_s_cpu``), less distorted when other jobs share the cores. Peak extra memory is the rise of the process's
peak RSS (VmHWM, reset through /proc/self/clear_refs) over its RSS before the call, inputs
already resident. Each row of benchmarks/results/metrics.json has case, method, threads,
mvox_s, peak_extra_mb and ratio_vs ({baseline: segrank's speed / baseline's speed}, or null).

Usage::

    nice python benchmarks/metrics.py                  # issue sizes (~4 GB RAM, a few minutes)
    nice python benchmarks/metrics.py --preset small   # a quick look (volume 64x512x512)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

PRESETS = {
    "smoke": {"image": (512, 512), "image_objects": 150, "volume": (32, 128, 128), "volume_objects": 600},
    "small": {"image": (2048, 2048), "image_objects": 2000, "volume": (64, 512, 512), "volume_objects": 5000},
    "full": {"image": (2048, 2048), "image_objects": 2000, "volume": (256, 512, 512), "volume_objects": 20000},
}


# ------------------------------------------------------------------------------------------------
# Memory and timing
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_free_heap() -> None:
    # Freed memory that malloc keeps resident would hide a later call's allocations from the
    # RSS peak: hand it back to the OS first (glibc only; elsewhere a no-op).
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Timing:
    """Best wall-clock and best process-CPU seconds over the repeats, and the peak extra MB."""

    def __init__(self, wall, cpu, extra_mb):
        self.wall, self.cpu, self.extra_mb = wall, cpu, extra_mb


def measure(fn, repeats: int):
    """(Timing, result). Peak extra memory from the first run."""
    _release_free_heap()
    can_peak = _reset_peak()
    before = _status_kb("VmRSS")
    walls, cpus = [], []
    for k in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        if k == 0:
            peak = _status_kb("VmHWM") if can_peak else None
            extra_mb = (peak - before) / 1024 if (peak is not None and before is not None) else None
        if k < repeats - 1:
            del result
    return Timing(min(walls), min(cpus), extra_mb), result


# ------------------------------------------------------------------------------------------------
# Data
def voronoi_labels(shape, n_objects, seed, *, fg_fraction=0.6, coarse=1):
    """Voronoi-like cells: nearest-seed labels (EDT on a grid `coarse` times smaller, then
    nearest upsampling), a (1 - fg_fraction) share of cells as background (0)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    small = tuple(s // coarse for s in shape)
    n_cells = int(round(n_objects / fg_fraction))
    seeds = np.stack([rng.integers(0, s, n_cells) for s in small], axis=1)
    labels, keep = _cells_from_seeds(small, seeds, fg_fraction, rng, coarse, shape)
    return labels, keep, seeds


def _cells_from_seeds(small, seeds, fg_fraction, rng, coarse, shape, keep=None):
    from scipy import ndimage

    grid = np.ones(small, bool)
    grid[tuple(seeds.T)] = False
    idx = ndimage.distance_transform_edt(grid, return_distances=False, return_indices=True)
    owner = np.full(small, -1, np.int64)
    owner[tuple(seeds.T)] = np.arange(len(seeds))
    cell = owner[tuple(idx)]
    del idx
    if keep is None:
        keep = rng.random(len(seeds)) < fg_fraction
    ids = np.where(keep, np.arange(1, len(seeds) + 1), 0).astype(np.uint32)
    labels = ids[cell]
    del cell
    if coarse > 1:
        for ax in range(labels.ndim):
            labels = np.repeat(labels, coarse, axis=ax)
        labels = labels[tuple(slice(0, s) for s in shape)]
    return labels, keep


def perturbed_copy(shape, seeds, keep, seed, *, coarse=1, split=0.03, merge=0.03):
    """Same cells from jittered seeds (shifted boundaries), then ~3 % of objects split in two
    and ~3 % merged into another object."""
    rng = np.random.default_rng(seed + 1)
    small = tuple(s // coarse for s in shape)
    jitter = np.rint(rng.normal(0, 1.0, seeds.shape)).astype(np.int64)
    moved = np.clip(seeds + jitter, 0, np.array(small) - 1)
    labels, _ = _cells_from_seeds(small, moved, None, rng, coarse, shape, keep=keep)
    n = int(labels.max())
    # splits: cut an object in two along its last axis at the seed coordinate
    objects = np.flatnonzero(keep) + 1
    n_split = int(split * len(objects))
    for obj in rng.choice(objects, n_split, replace=False):
        cut = moved[obj - 1, -1] * coarse
        view = labels[..., cut:]
        view[view == obj] = n + obj  # a new id for the far half
    # merges: relabel some objects as another object
    n_merge = int(merge * len(objects))
    src = rng.choice(objects, n_merge, replace=False)
    dst = rng.choice(objects, n_merge)
    lut = np.arange(2 * n + 2, dtype=np.uint32)
    lut[src] = dst
    return lut[labels]


def spread_uint64(labels: np.ndarray) -> np.ndarray:
    """The same partition with ids spread over the whole uint64 range (0 stays 0)."""
    ids = labels.astype(np.uint64)
    spread = (ids * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1 << 63)
    return np.where(ids == 0, np.uint64(0), spread)


def mask_and_probabilities(labels_u, labels_p, seed, fg=0.30):
    """uint8 masks with ~30 % foreground (a subset of the cells) and float32 probabilities."""
    rng = np.random.default_rng(seed + 2)
    top = int(max(labels_u.max(), labels_p.max())) + 1
    pick = rng.random(top) < fg / 0.6
    pick[0] = False
    mask_u = pick[labels_u].astype(np.uint8)
    mask_p = pick[np.minimum(labels_p, top - 1)].astype(np.uint8)
    prob_u = np.empty(labels_u.shape, np.float32)
    prob_p = np.empty(labels_u.shape, np.float32)
    for z in range(labels_u.shape[0]):  # slab by slab: bounded temporaries
        noise = rng.random(labels_u.shape[1:], dtype=np.float32)
        prob_u[z] = np.where(mask_u[z] > 0, 0.55 + 0.45 * noise, 0.45 * noise)
        prob_p[z] = np.clip(prob_u[z] + 0.1 * (rng.random(labels_u.shape[1:], dtype=np.float32) - 0.5), 0, 1)
        prob_p[z][mask_p[z] != mask_u[z]] = np.where(mask_p[z] > 0, 0.8, 0.2)[mask_p[z] != mask_u[z]]
    return mask_u, mask_p, prob_u, prob_p


# ------------------------------------------------------------------------------------------------
# Methods
def numpy_binary_masks(a, b):
    return int(np.count_nonzero(a ^ b)), int(np.count_nonzero(a | b))


def numpy_binary_soft(pu, pp, t=0.5):
    A, B = pu > t, pp > t
    both = A & B
    return int(both.sum()), int((A | B).sum()), float(np.sqrt(pu[both] * pp[both], dtype=np.float64).sum())


def read_bandwidth(mb: int):
    """GB/s of a large reduction (the faster of sum and max) and of a copy (bytes read)."""
    a = np.ones(mb * (1 << 20) // 8, np.float64)
    b = np.empty_like(a)
    t_reduce = min(min(_timed(lambda: np.add.reduce(a)), _timed(lambda: a.max())) for _ in range(3))
    t_copy = min(_timed(lambda: np.copyto(b, a)) for _ in range(3))
    return a.nbytes / t_reduce / 1e9, a.nbytes / t_copy / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--repeats", type=int, default=3, help="best of N for segrank (baselines: best of 2)")
    ap.add_argument("--skip-slow-baselines", action="store_true", help="no skimage / sklearn / elf on the 3D volumes")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "metrics.json")
    args = ap.parse_args(argv)
    cfg = PRESETS[args.preset]

    import segrank
    from segrank.metrics import adapted_rand, binary_consistency, contingency_table, simd_level

    rows: list[dict] = []
    load_start = os.getloadavg()  # other jobs on the box skew wall-clock figures: record them

    def row(case, method, threads, voxels, timing, ratio_vs=None, **more):
        seconds, extra_mb = timing.wall, timing.extra_mb
        r = {"case": case, "method": method, "threads": threads, "mvox_s": round(voxels / seconds / 1e6, 1),
             "peak_extra_mb": None if extra_mb is None else round(extra_mb, 1), "ratio_vs": ratio_vs,
             "seconds": round(seconds, 4), **more}
        if threads == 1:  # CPU time: less distorted than wall time when other jobs share the cores
            r["mvox_s_cpu"] = round(voxels / max(timing.cpu, 1e-9) / 1e6, 1)
        rows.append(r)
        ratio = "" if not ratio_vs else "  " + ", ".join(f"{v:.1f}x {k}" for k, v in ratio_vs.items())
        extra = "" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:9.1f} MB"
        share = f"  {more['bandwidth_share']:.0%} of read bandwidth" if "bandwidth_share" in more else ""
        cpu = f" ({r['mvox_s_cpu']:.0f} by CPU time)" if "mvox_s_cpu" in r else ""
        print(f"{case:<26} {method:<28} {threads:>2} thr {r['mvox_s']:>8.1f} Mvox/s{cpu} {extra}{ratio}{share}", flush=True)
        return r

    print(f"segrank {segrank.__version__}, SIMD {simd_level()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
          flush=True)
    bw_sum, bw_copy = read_bandwidth(512 if args.preset != "smoke" else 64)
    print(f"read bandwidth: {bw_sum:.1f} GB/s (numpy reduction), {bw_copy:.1f} GB/s (numpy copy)", flush=True)
    bandwidth = max(bw_sum, bw_copy)

    # --- data -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    img_u, keep, img_seeds = voronoi_labels(cfg["image"], cfg["image_objects"], 0)
    img_p = perturbed_copy(cfg["image"], img_seeds, keep, 0)
    coarse = 2 if args.preset == "full" else 1
    vol_u, vkeep, vol_seeds = voronoi_labels(cfg["volume"], cfg["volume_objects"], 1, coarse=coarse)
    vol_p = perturbed_copy(cfg["volume"], vol_seeds, vkeep, 1, coarse=coarse)
    def voxels_per_run(u, p):  # the table kernel's cost grows with label runs along rows
        changes = sum(int(np.count_nonzero((u[z, ..., 1:] != u[z, ..., :-1]) | (p[z, ..., 1:] != p[z, ..., :-1])))
                      for z in range(u.shape[0])) if u.ndim == 3 else int(
            np.count_nonzero((u[..., 1:] != u[..., :-1]) | (p[..., 1:] != p[..., :-1])))
        return u.size / (changes + u.size // u.shape[-1])

    data_stats = {
        "image": {"shape": list(img_u.shape), "objects": int(len(np.unique(img_u)) - 1),
                  "foreground": round(float(np.mean(img_u > 0)), 3), "voxels_per_run": round(voxels_per_run(img_u, img_p), 2)},
        "volume": {"shape": list(vol_u.shape), "objects": int(len(np.unique(vol_u)) - 1),
                   "foreground": round(float(np.mean(vol_u > 0)), 3), "voxels_per_run": round(voxels_per_run(vol_u, vol_p), 2)},
    }
    print(f"data ({time.perf_counter() - t0:.0f} s): {json.dumps(data_stats)}", flush=True)

    # --- binary consistency ---------------------------------------------------------------
    mask_u, mask_p, prob_u, prob_p = mask_and_probabilities(vol_u, vol_p, 1)
    n = mask_u.size
    print(f"masks: {mask_u.mean():.0%} foreground", flush=True)
    bool_u, bool_p = mask_u.view(bool), mask_p.view(bool)
    base, ref = measure(lambda: numpy_binary_masks(bool_u, bool_p), 2)
    row("binary uint8 masks", "numpy xor/or/count", 1, n, base)
    for threads in (1, 2):
        t, c = measure(lambda: binary_consistency(mask_u, mask_p, threshold=None, threads=threads), args.repeats)
        assert (c.n_xor, c.n_or) == ref
        row("binary uint8 masks", "segrank", threads, n, t, {"numpy": round(base.wall / t.wall, 2)},
            bandwidth_share=round(2 * n / t.wall / 1e9 / bandwidth, 3))
    base, ref = measure(lambda: numpy_binary_soft(prob_u, prob_p), 2)
    row("EI float32 probabilities", "numpy threshold/sqrt/sum", 1, n, base)
    for threads in (1, 2):
        t, c = measure(lambda: binary_consistency(prob_u, prob_p, threshold=0.5, threads=threads), args.repeats)
        assert (c.n_and, c.n_or) == ref[:2] and abs(c.ei_sum - ref[2]) < 1e-6 * ref[2] + 1e-3
        row("EI float32 probabilities", "segrank", threads, n, t, {"numpy": round(base.wall / t.wall, 2)},
            bandwidth_share=round(8 * n / t.wall / 1e9 / bandwidth, 3))
    # The same kernels on a slab that stays in cache (4 planes: 1 MB per uint8 mask, 4 MB per
    # float32 map), called 64 times: their compute rate, without DRAM as the limit.
    hot = (slice(0, min(4, prob_u.shape[0])),)
    n_hot = prob_u[hot].size * 64
    for case, (a, b), kw in (("binary uint8 masks, cache-resident", (mask_u[hot], mask_p[hot]), {"threshold": None}),
                             ("EI float32, cache-resident", (prob_u[hot], prob_p[hot]), {"threshold": 0.5})):
        t, _ = measure(lambda: [binary_consistency(a, b, threads=1, **kw) for _ in range(64)], args.repeats)
        row(case, "segrank", 1, n_hot, t)
    del mask_u, mask_p, prob_u, prob_p, bool_u, bool_p

    # --- contingency tables -------------------------------------------------------------
    from skimage.metrics import adapted_rand_error

    try:
        from sklearn.metrics.cluster import contingency_matrix
    except ImportError:  # pragma: no cover
        contingency_matrix = None
    try:
        from elf.evaluation import rand_index
    except ImportError:  # pragma: no cover
        rand_index = None

    cases = [("table 2D uint32", img_u, img_p, True), ("table 3D uint32", vol_u, vol_p, not args.skip_slow_baselines)]
    vol_u64, vol_p64 = spread_uint64(vol_u), spread_uint64(vol_p)
    cases.append(("table 3D uint64", vol_u64, vol_p64, not args.skip_slow_baselines))
    for case, u, p, baselines in cases:
        n = u.size
        base = {}
        if baselines:
            def skimage_rand():
                return adapted_rand_error(u, p, ignore_labels=())
            try:
                t_b, _ = measure(skimage_rand, 1)
                base["skimage"] = t_b.wall
                row(case, "skimage adapted_rand_error", 1, n, t_b)
            except Exception as exc:  # skimage fails on large ids (sparse index overflow)
                print(f"{case:<26} skimage adapted_rand_error fails: {type(exc).__name__}: {str(exc)[:80]}", flush=True)
                rows.append({"case": case, "method": "skimage adapted_rand_error", "threads": 1, "mvox_s": None,
                             "peak_extra_mb": None, "ratio_vs": None, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            if contingency_matrix is not None:
                t_b, _ = measure(lambda: contingency_matrix(u.ravel(), p.ravel(), sparse=True), 1)
                base["sklearn"] = t_b.wall
                row(case, "sklearn contingency_matrix", 1, n, t_b)
            if rand_index is not None:
                t_b, _ = measure(lambda: rand_index(p, u), 1)
                base["elf"] = t_b.wall
                row(case, "elf rand_index", 1, n, t_b)
        for threads in (1, 2):
            t, table = measure(lambda: contingency_table(u, p, threads=threads), args.repeats)
            ratios = {k: round(v / t.wall, 1) for k, v in base.items()} or None
            row(case, "segrank contingency_table", threads, n, t, ratios, pairs=len(table))
        t, f = measure(lambda: adapted_rand(contingency_table(u, p)).f, args.repeats)
        ratios = {k: round(v / t.wall, 1) for k, v in base.items()} or None
        row(case, "segrank table + adapted_rand", 1, n, t, ratios, rand_f=round(float(f), 6))
        t, _ = measure(lambda: contingency_table(u, p, exclude_boundary=True), args.repeats)
        row(case, "segrank table, boundary band", 1, n, t)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": "python benchmarks/" + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "preset": args.preset,
        "data": data_stats,
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu_name(), "simd": simd_level(),
                    "read_bandwidth_gb_s": {"numpy_reduction": round(bw_sum, 1), "numpy_copy": round(bw_copy, 1)},
                    "load_average_start": load_start, "load_average": os.getloadavg()},
        "rows": rows,
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written: {args.out}")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
