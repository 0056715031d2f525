"""Agreement across a bank of models (issue 14): plain numpy loops vs BLAS matmuls vs the C++ kernels.

For n = 20 models (float32 foreground probabilities) on a 512 x 512 image and on a 64 x 256 x 256
block, times both statistics of `segrank.metrics` three ways:

* pairwise sums (``pairwise_agreement``: |A_i and A_j| and the EI sums, every pair)
  (a) numpy: the obvious loop over pairs i <= j (masks and float64 probabilities made once per
      model; per pair ``count_nonzero(A_i & A_j)`` and ``sqrt(q_i[m] * q_j[m]).sum()``);
  (b) blas: ``method="blas"``, masks M and S = sqrt(q) M per 65,536-pixel block, M @ M.T and
      S @ S.T; BLAS on 1 thread and on every core;
  (c) kernel: the C++ kernel (``method="kernel"``, one thread).
* leave-one-out consensus sums (``consensus_agreement``, uniform weights)
  (a) numpy: the obvious loop over models with the weighted total computed once
      (c_i = (S - w_i q_i) / (W - w_i), then masks, counts and the EI sum);
  (b) blas: ``method="blas"``, every numerator at once as (w_j off the diagonal) @ q per block;
  (c) kernel: the C++ kernel (one pass over the pixels, one thread).

Throughput is pixels x models per second (``mvox_s``), best wall-clock time of ``--repeats``
runs; ``gb_s`` is the input read per second (n N 4 bytes / s); ``x_numpy`` the speed ratio against
(a) on the same case. One-thread rows also give the process-CPU time (``cpu_seconds``), less
distorted when other jobs share the cores. Every method's sums are checked against the kernel's
(``check``: counts equal, EI sums to ``max_rel_ei``). Results go to
benchmarks/results/agreement.json.

The data: a smooth random field (Gaussian-filtered noise, sigma 4 px) thresholded at ~31 %
foreground; each model sees it through its own smooth distortion, a global bias and pixel
noise, squashed by a sigmoid (values in (0, 1), float32).

Usage::

    nice python benchmarks/agreement.py               # ~2 GB RAM, about two minutes
    nice python benchmarks/agreement.py --repeats 5
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
N_MODELS = 20
CASES = {"image 512x512": (512, 512), "block 64x256x256": (64, 256, 256)}
THRESHOLD = 0.5


# ------------------------------------------------------------------------------------------------
# Data
def make_bank(shape, n, seed=0, fg=0.3):
    """n float32 probability maps of one smooth scene, each model with its own errors."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    sigma = 4.0
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    field /= field.std()
    cut = np.quantile(field.ravel()[::7], 1 - fg)
    out = np.empty((n, *shape), np.float32)
    for i in range(n):
        noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
        noise /= noise.std()
        quality = 0.15 + 0.6 * rng.random()  # how far this model strays from the scene
        logit = 4.0 * (field - cut + quality * noise + 0.3 * rng.standard_normal())
        logit += 0.5 * rng.standard_normal(shape, dtype=np.float32)
        out[i] = 1.0 / (1.0 + np.exp(-logit))
    return out


# ------------------------------------------------------------------------------------------------
# (a) plain numpy
def _q_and_masks(probs, threshold):
    q = [np.clip(np.nan_to_num(p.astype(np.float64)), 0.0, 1.0) for p in probs]
    return q, [qi > threshold for qi in q]


def pairwise_numpy(probs, threshold):
    n = probs.shape[0]
    q, a = _q_and_masks(probs, threshold)
    both = np.zeros((n, n), np.int64)
    ei = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            m = a[i] & a[j]
            both[i, j] = both[j, i] = np.count_nonzero(m)
            ei[i, j] = ei[j, i] = np.sqrt(q[i][m] * q[j][m]).sum()
    return both, ei


def consensus_numpy(probs, weights, threshold):
    n = probs.shape[0]
    q, a = _q_and_masks(probs, threshold)
    total_w = float(np.sum(weights))
    total = np.zeros(probs.shape[1:])
    for j in range(n):
        total += weights[j] * q[j]
    out = [np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n)]
    for i in range(n):
        c = (total - weights[i] * q[i]) / (total_w - weights[i])
        cc = c > threshold
        ac = a[i] & cc
        out[0][i] = np.count_nonzero(a[i])
        out[1][i] = np.count_nonzero(cc)
        out[2][i] = np.count_nonzero(ac)
        out[3][i] = np.sqrt(q[i][ac] * c[ac]).sum()
    return tuple(out)


# ------------------------------------------------------------------------------------------------
# Timing
def measure(fn, repeats):
    """(best wall seconds, best process-CPU seconds, last result)."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        result = None
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), result


def _as_tuple(x):
    if isinstance(x, tuple):
        return x
    if hasattr(x, "model_fg"):
        return (x.model_fg, x.cons_fg, x.both, x.ei)
    return (x.both, x.ei)


def compare(got, ref):
    """Counts: the largest absolute difference; EI sums: the largest relative difference."""
    got, ref = _as_tuple(got), _as_tuple(ref)
    count_diff = max(int(np.max(np.abs(np.asarray(g) - np.asarray(r)), initial=0)) for g, r in zip(got[:-1], ref[:-1]))
    ei_g, ei_r = np.asarray(got[-1]), np.asarray(ref[-1])
    rel = float(np.max(np.abs(ei_g - ei_r) / np.maximum(np.abs(ei_r), 1e-300), initial=0.0))
    return count_diff, rel


def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpus": os.cpu_count(), "cpu": cpu, "numpy": np.__version__}
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for d in threadpool_info()
            if d.get("user_api") == "blas"
        ]
    except ImportError:
        info["blas"] = None
    return info


# ------------------------------------------------------------------------------------------------
def run_case(case, shape, repeats, rows):
    """Time every statistic and method on one case; append rows; return the data's description."""
    from segrank.metrics import consensus_agreement, pairwise_agreement

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None

    weights = np.ones(N_MODELS)
    t0 = time.perf_counter()
    probs = make_bank(shape, N_MODELS)
    masks = probs > THRESHOLD
    n_pix = int(np.prod(shape))
    stats_doc = {
        "shape": list(shape),
        "models": N_MODELS,
        "dtype": "float32",
        "foreground": round(float(masks.mean()), 3),
        "background_in_every_model": round(float((~masks.any(axis=0)).mean()), 3),
        "mb": round(probs.nbytes / 1e6, 1),
    }
    del masks
    print(f"{case}: data {time.perf_counter() - t0:.1f} s, {json.dumps(stats_doc)}", flush=True)
    big = n_pix > 1_000_000
    stats = {
        "pairwise": (
            lambda: pairwise_numpy(probs, THRESHOLD),
            lambda: pairwise_agreement(probs, threshold=THRESHOLD, method="blas"),
            lambda: pairwise_agreement(probs, threshold=THRESHOLD),
        ),
        "consensus": (
            lambda: consensus_numpy(probs, weights, THRESHOLD),
            lambda: consensus_agreement(probs, weights, threshold=THRESHOLD, method="blas"),
            lambda: consensus_agreement(probs, weights, threshold=THRESHOLD),
        ),
    }
    for stat, (numpy_fn, blas_fn, kernel_fn) in stats.items():
        runs = []
        k_wall, k_cpu, k_res = measure(kernel_fn, max(repeats, 3))
        runs.append(("kernel", 1, k_wall, k_cpu, k_res))
        if threadpool_limits is not None:
            with threadpool_limits(1, user_api="blas"):
                w, c, r = measure(blas_fn, repeats)
            runs.append(("blas", 1, w, c, r))
        w, c, r = measure(blas_fn, repeats)
        runs.append(("blas", os.cpu_count(), w, None, r))
        w, c, r = measure(numpy_fn, 1 if big else repeats)
        runs.append(("numpy", 1, w, c, r))
        numpy_wall = runs[-1][2]
        for method, threads, wall, cpu, res in sorted(runs, key=lambda x: ("numpy", "blas", "kernel").index(x[0])):
            count_diff, rel_ei = compare(res, k_res)
            row = {
                "case": case,
                "statistic": stat,
                "method": method,
                "threads": threads,
                "seconds": round(wall, 4),
                "cpu_seconds": None if cpu is None else round(cpu, 4),
                "mvox_s": round(N_MODELS * n_pix / wall / 1e6, 1),
                "gb_s": round(N_MODELS * n_pix * 4 / wall / 1e9, 3),
                "x_numpy": round(numpy_wall / wall, 2),
                "check": {"max_count_diff_vs_kernel": count_diff, "max_rel_ei_vs_kernel": float(f"{rel_ei:.3g}")},
            }
            rows.append(row)
            print(
                f"  {stat:9s} {method:6s} {threads} thr  {wall * 1e3:9.1f} ms  {row['mvox_s']:8.1f} Mvox/s  "
                f"{row['gb_s']:6.2f} GB/s  x{row['x_numpy']:<7}  (counts +-{count_diff}, EI rel {rel_ei:.1e})",
                flush=True,
            )
    return stats_doc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs per timing (best kept); numpy on the block runs once")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "agreement.json")
    args = ap.parse_args(argv)

    import segrank
    from segrank.metrics import simd_level

    machine = machine_info()
    machine["simd"] = simd_level()
    machine["load_average_start"] = list(os.getloadavg())
    print(
        f"segrank {segrank.__version__}, SIMD {machine['simd']}, {machine['cpus']} CPUs, {machine['cpu']}, "
        f"load {machine['load_average_start'][0]:.2f}",
        flush=True,
    )
    rows, data_stats = [], {}
    for case, shape in CASES.items():
        data_stats[case] = run_case(case, shape, args.repeats, rows)

    machine["load_average"] = list(os.getloadavg())
    print()
    print(table(rows))
    doc = {
        "command": " ".join(["nice python benchmarks/agreement.py", *(sys.argv[1:] if argv is None else argv)]),
        "n_models": N_MODELS,
        "threshold": THRESHOLD,
        "weights": "uniform",
        "data": data_stats,
        "machine": machine,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out}")


def table(rows):
    """A Markdown table of the rows."""
    lines = [
        "| case | statistic | method | threads | ms | Mvox/s | GB/s read | x numpy |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['statistic']} | {r['method']} | {r['threads']} | {r['seconds'] * 1e3:.1f} | "
            f"{r['mvox_s']:.0f} | {r['gb_s']:.2f} | {r['x_numpy']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
