"""Blockwise inference: tiling overhead, peak memory on large Zarr volumes, throughput vs size.

Questions (issue 3) and how each is measured, every ratio against a baseline of the same run:

* overhead -- wall time of `predict_target` (read the Zarr input, normalise, pad, run, activate,
  crop, write the Zarr output, mark blocks done) over a 2D image and a volume, against plain
  ``session.run`` on exactly the same model inputs (built before timing) with the same session.
  Goal: <= 10 % overhead. Variants: sync (one block at a time, reads/writes overlapped with the
  run), stepwise (sync without overlap), threads (the default threaded scheduler). ``--repeat``
  interleaves the variants and keeps each one's minimum; CPU-time ratios (whole process) are
  printed too, since on a shared machine they say more than wall time about the work added.
* memory -- peak RSS of a fresh process predicting uint8 Zarr volumes of growing size
  (default scheduler); goal: under 1.5 GiB and flat as the volume grows.
* throughput -- voxels per second of those same runs vs volume size; goal: flat (linear time).

Usage::

    nice python benchmarks/inference.py --preset small --threads 1   # fits a shared 2-core box
    python benchmarks/inference.py --preset full --device cuda       # issue sizes (GPU machine)

Figures are printed and appended as one run (machine, commit, label) to
benchmarks/results/inference.json (``--out``); earlier runs in the file are kept.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

# Same-padded conv nets: "light" ~10 kFLOP per pixel, "heavy" ~110 kFLOP per pixel (the order
# of a small 2D U-Net); the share of I/O in the wall time shrinks as the model grows.
MODELS = {"light": {"hidden": 16, "layers": 4, "halo": 8}, "heavy": {"hidden": 32, "layers": 8, "halo": 16}}

PRESETS = {
    # seconds; checks that the script runs
    "smoke": {"image": (512, 512), "volume": (4, 256, 256), "memory_mib": (4, 8)},
    # fits the 2-core development machine shared with other jobs
    "small": {"image": (2048, 2048), "volume": (16, 1024, 1024), "memory_mib": (64, 128, 256)},
    # the sizes named in issue 3
    "full": {"image": (2048, 2048), "volume": (256, 1024, 1024), "memory_mib": (1024, 2048, 4096)},
}


def _model(folder: Path, *, hidden: int, layers: int, halo: int):
    from conv_nets import conv_model

    from segrank.models.description import Tiling

    return conv_model(folder / f"conv_h{hidden}_l{layers}.onnx", ndim=2, hidden=hidden, layers=layers,
                      name=f"conv{hidden}x{layers}", tiling=Tiling(halo=(halo, halo)))


def _write_volume(path: Path, shape, chunks, seed: int = 0) -> Path:
    """A uint8 Zarr v3 array of smooth-ish noise, written slab by slab (bounded memory)."""
    import zarr

    arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint8",
                            dimension_names=["z", "y", "x"][-len(shape):])
    gen = np.random.default_rng(seed)
    if len(shape) == 2:
        arr[...] = gen.integers(0, 256, size=shape, dtype=np.uint8)
        return path
    slab = chunks[0]
    base = gen.integers(0, 256, size=(slab,) + tuple(shape[1:]), dtype=np.uint8)
    for z in range(0, shape[0], slab):
        n = min(slab, shape[0] - z)
        arr[z : z + n] = np.roll(base, z % 97, axis=1)[:n]  # varies along z, costs no new draws
    return path


def overhead(preset: dict, *, device: str, threads: int | None, workdir: Path, sink, model_kind: str = "light",
             repeat: int = 1, machine: str = "") -> list[dict]:
    from segrank.inference.blocks import choose_blocking  # noqa: F401  (documented vocabulary)
    from segrank.inference.axes import channel_first as _channel_first
    from segrank.inference.prepared import blocking_for as _blocking_for, image_normalization
    from segrank.inference.source import read_region as _read
    from segrank.inference.steps import _to_model
    from segrank.inference.to_store import predict_target
    from segrank.inference.session import cached_session
    from segrank.io.targets import open_target

    model = _model(workdir, **MODELS[model_kind])
    rows = []
    for label, shape, chunks in (("image", preset["image"], (512, 512)), ("volume", preset["volume"], (16, 256, 256))):
        src = _write_volume(workdir / f"{label}.zarr", shape, chunks)
        image = open_target(src).images[0]
        threads = threads or os.cpu_count()
        session, provider = cached_session(model, device=device, threads=threads)
        data, spatial_axes, _, _ = _channel_first(image, None, model)
        model_c, blocking = _blocking_for(model, session, data.shape[1:], None, None, None, data)
        slice_wise = len(spatial_axes) > model.ndim
        norm, _ = image_normalization(model, data)
        letters = ("cb" if slice_wise else "bc") + model.spatial_axes

        def feed(block):
            tile = norm.apply(_read(data, (slice(None),) + block.read))
            tile = np.pad(tile, ((0, 0),) + block.padding, mode="reflect")
            return _to_model(tile if slice_wise else tile[None], letters, model.axes)

        from segrank.inference.session import TileRunner

        runner = TileRunner(model_c, session, provider)
        runner(feed(next(iter(blocking))))  # warm-up (CUDA kernels, allocator)

        def plain_run():
            wall = cpu = 0.0
            for block in blocking:
                x = feed(block)  # built outside the timed region
                t0, c0 = time.perf_counter(), time.process_time()
                runner(x)
                wall += time.perf_counter() - t0
                cpu += time.process_time() - c0
            return wall, cpu

        # an older segrank (a baseline measured with this script) has no overlap option
        can_overlap = "overlap" in inspect.signature(predict_target).parameters

        def blockwise(scheduler, workers, ort_threads, overlap):
            out = workdir / f"{label}-{scheduler}.pred.zarr"
            t0, c0 = time.perf_counter(), time.process_time()
            summary = predict_target(model, image, out, device=device, scheduler=scheduler, workers=workers,
                                     threads=ort_threads, progress=False, **({"overlap": overlap} if can_overlap else {}))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert summary.n_computed == len(blocking)
            shutil.rmtree(out)
            return wall, cpu

        # same thread budget: sync = one block at a time on all threads (same session as plain),
        # with and without overlapping reads/writes; threads = the default threaded scheduler
        # (two dask threads each running ORT with half the threads; with 1 thread: 1 each)
        variants = {
            "plain": plain_run,
            "sync": lambda: blockwise("sync", 1, threads, True),
            "stepwise": lambda: blockwise("sync", 1, threads, False),
            "threads": lambda: blockwise("threads", 2, max(1, threads // 2), True),
        }
        if not can_overlap:
            del variants["stepwise"]
        samples = {k: [] for k in variants}
        for _ in range(repeat):  # interleaved, so that a busy spell on a shared box hits all alike
            for k, fn in variants.items():
                samples[k].append(fn())
        best = {k: min(w for w, _ in v) for k, v in samples.items()}
        best_cpu = {k: min(c for _, c in v) for k, v in samples.items()}
        n_vox = math.prod(shape)
        row = {
            "part": "overhead", "machine": machine, "target": label, "shape": list(shape), "tile": list(blocking.tile),
            "halo": list(blocking.halo), "blocks": len(blocking), "provider": provider, "model": model.name,
            "ort_threads": threads, "model_kind": model_kind,
            "kflop_per_px": round(_flops_per_pixel(**MODELS[model_kind]) / 1e3, 1),
            "repeats": repeat, "statistic": "min over repeats",
            "plain_run_s": round(best["plain"], 3),
            "blockwise_sync_s": round(best["sync"], 3),
            "blockwise_stepwise_s": round(best["stepwise"], 3) if can_overlap else None,
            "blockwise_threads_s": round(best["threads"], 3),
            "overhead_sync": round(best["sync"] / best["plain"] - 1, 4),
            "overhead_stepwise": round(best["stepwise"] / best["plain"] - 1, 4) if can_overlap else None,
            "overhead_threads": round(best["threads"] / best["plain"] - 1, 4),
            # CPU seconds of the whole process: the extra work, whatever else runs on the box
            "cpu_overhead_sync": round(best_cpu["sync"] / best_cpu["plain"] - 1, 4),
            "cpu_overhead_stepwise": round(best_cpu["stepwise"] / best_cpu["plain"] - 1, 4) if can_overlap else None,
            "mvox_s_threads": round(n_vox / best["threads"] / 1e6, 3),
            "wall_samples_s": {k: [round(w, 3) for w, _ in v] for k, v in samples.items()},
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        sink(row)
        shutil.rmtree(src)
    return rows


def _flops_per_pixel(hidden: int, layers: int, halo: int) -> float:
    channels = [1] + [hidden] * (layers - 1) + [1]
    return sum(2 * 9 * a * b for a, b in zip(channels[:-1], channels[1:]))


def _memory_child(args) -> None:
    """Predict one volume in this fresh process; print peak RSS and time as JSON."""
    from segrank.inference.to_store import predict_target
    from segrank.io.targets import open_target

    model = _model(Path(args.workdir), hidden=4, layers=2, halo=4)
    image = open_target(args.child_volume).images[0]
    t0 = time.perf_counter()
    summary = predict_target(model, image, args.child_out, device=args.device, workers=args.workers, progress=False)
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_kib / 1024, "blocks": summary.n_computed,
                      "provider": summary.provider}))


def memory(preset: dict, *, device: str, workers: int, workdir: Path, sink, sizes: str | None = None) -> list[dict]:
    rows = []
    _model(workdir, hidden=4, layers=2, halo=4)  # build it once, outside the children
    for mib in [int(v) for v in sizes.split(",")] if sizes else preset["memory_mib"]:
        shape = (mib, 1024, 1024)  # 1 MiB per uint8 slice
        src = _write_volume(workdir / f"mem{mib}.zarr", shape, (16, 256, 256))
        out = workdir / f"mem{mib}.pred.zarr"
        cmd = [sys.executable, __file__, "--child-volume", str(src), "--child-out", str(out), "--workdir", str(workdir),
               "--device", device, "--workers", str(workers)]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        child = json.loads(res.stdout.strip().splitlines()[-1])
        n_vox = math.prod(shape)
        row = {
            "part": "memory", "volume_mib": mib, "shape": list(shape), "provider": child["provider"],
            "peak_rss_mb": round(child["peak_rss_mb"], 1), "seconds": round(child["seconds"], 2),
            "mvox_s": round(n_vox / child["seconds"] / 1e6, 3), "blocks": child["blocks"], "dask_threads": workers,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        sink(row)
        shutil.rmtree(src)
        shutil.rmtree(out)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda; a list (cpu,cuda) repeats the overhead part")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime thread budget in the overhead part (default: all cores)")
    parser.add_argument("--workers", type=int, default=2, help="dask threads in the memory runs")
    parser.add_argument("--parts", default="overhead,memory", help="in this order, e.g. memory,overhead")
    parser.add_argument("--models", default="light", help="overhead models: light, heavy or both (light,heavy)")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repeats of each overhead variant (min is kept)")
    parser.add_argument("--memory-mib", default=None, help="volume sizes of the memory part, e.g. 256,512,1024 (default: the preset's)")
    parser.add_argument("--machine", default=None, help="how to name this machine in the results (default: host, CPUs)")
    parser.add_argument("--label", default=None, help="free text kept with this run, e.g. before/after a change")
    parser.add_argument("--out", default=str(HERE / "results" / "inference.json"), help="results file; earlier runs in it are kept")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--child-volume", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_volume:
        _memory_child(args)
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="segrank-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    preset = PRESETS[args.preset]
    parts = args.parts.split(",")
    devices = args.device.split(",")
    machine = args.machine or f"{platform.node()} ({os.cpu_count()} CPUs, {_cpu_name()})"
    result = {
        "command": " ".join(["python", "benchmarks/inference.py"] + sys.argv[1:]),
        "label": args.label, "commit": _commit(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "preset": args.preset, "machine": machine, "cpus": os.cpu_count(), "cpu": _cpu_name(),
        "rows": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # earlier runs (other machines, before/after a change) are kept; this run is appended
    runs = []
    if out.exists():
        previous = json.loads(out.read_text())
        runs = previous.get("runs", [previous] if "rows" in previous else [])
    runs.append(result)

    def save():
        out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")

    def sink(row):  # written after every row: a run cut short keeps what it measured
        row.setdefault("machine", machine)
        result["rows"].append(row)
        save()

    try:
        for part in parts:
            if part == "overhead":
                for kind in args.models.split(","):
                    for device in devices:
                        overhead(preset, device=device, threads=args.threads, workdir=workdir, sink=sink, model_kind=kind,
                                 repeat=args.repeat, machine=machine)
            elif part == "memory":
                memory_summary(memory(preset, device=devices[0], workers=args.workers, workdir=workdir, sink=sink,
                                      sizes=args.memory_mib), result)
                save()
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def memory_summary(mem: list[dict], result: dict) -> None:
    peaks = [r["peak_rss_mb"] for r in mem]
    vox = np.array([math.prod(r["shape"]) for r in mem], float)
    secs = np.array([r["seconds"] for r in mem])
    slope, intercept = np.polyfit(vox, secs, 1)
    result["memory_growth"] = round(peaks[-1] / peaks[0], 3)  # 1.0 = flat
    # time = intercept + voxels / marginal rate; linear when the fit leaves little residual
    result["time_fit"] = {
        "intercept_s": round(float(intercept), 2),
        "marginal_mvox_s": round(1 / float(slope) / 1e6, 3),
        "max_residual_s": round(float(np.abs(secs - (intercept + slope * vox)).max()), 2),
    }
    print(f"peak RSS {peaks} MB (largest/smallest {result['memory_growth']}); time fit {result['time_fit']}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
