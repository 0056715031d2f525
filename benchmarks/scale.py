"""Scale (issue 4): `segrank rank` over a large EM volume, block by block, on dask.distributed.

Questions, each measured in fresh processes on volumes built by make_em_volume.py from real EM:

* throughput -- Mvox/s of the whole `rank` call (LocalCluster start, whole-volume normalisation
  sample, every scoring block predicted unperturbed and perturbed, scored, written) for 1 and 2
  workers: volume voxels / wall seconds, one model;
* memory -- peak RSS of the largest process (the main process or any worker; `ru_maxrss` of
  itself and of its waited-for children) as the volume grows; goal: flat, under 2 GiB;
* the in-memory path (`rank(..., in_memory=True)`: each volume predicted whole) on the small
  sizes, to show what blockwise scoring saves;
* exactness -- the blockwise and the in-memory path on a volume small enough for both, with a
  bank of three models: every per-block score and the ranking must be identical.

Rows go to benchmarks/results/scale.json (``--out``) under "rows", each with "volume_gib",
"workers" (0 = in this process), "mvox_s", "peak_rss_mb", "path" ("blocks" or "in-memory").

Usage (the 2-core shared development box; volumes first)::

    nice python benchmarks/make_em_volume.py --gib 0.0625 0.125 0.25 0.5 1
    nice python benchmarks/scale.py --sizes 0.25 0.5 1 --workers 1 2 --memory-sizes 0.0625 0.125

The model is deliberately light (a 2-layer, 4-channel same-padded 2D conv net applied
slice-wise, about 150 FLOP per voxel): the figures measure segrank's own machinery (reads,
normalisation, noise, tiling, scoring, scheduling), not a network's arithmetic.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

PERTURBATION = "noise:0.1-0.2"  # the default for black-box models (method.md's EM range is 0.10-0.15)


def write_bank(folder: Path, specs: list[dict]) -> Path:
    """A bank folder of same-padded 2D conv nets (ONNX + sidecar), built here."""
    import yaml
    from conv_nets import conv_net

    folder.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        path = folder / f"{spec['name']}.onnx"
        conv_net(path, ndim=2, hidden=spec["hidden"], layers=spec["layers"], seed=spec["seed"])
        path.with_suffix(".yaml").write_text(yaml.safe_dump({
            "name": spec["name"], "axes": "bcyx", "input_name": "input", "output_name": "output",
            "task": "semantic", "activation": "sigmoid", "output_space": "mitochondria",
            "preprocessing": {"kind": "percentile", "low": 1.0, "high": 99.8},
            "tiling": {"halo": [8, 8]},
        }, sort_keys=False))
    return folder


LIGHT = [{"name": "conv4x2", "hidden": 4, "layers": 2, "seed": 0}]
TRIO = [
    {"name": "conv4x2", "hidden": 4, "layers": 2, "seed": 0},
    {"name": "conv8x3", "hidden": 8, "layers": 3, "seed": 1},
    {"name": "conv4x3", "hidden": 4, "layers": 3, "seed": 2},
]


# --- one measured run, in a fresh process -------------------------------------------------------


def child(args: dict) -> dict:
    """Run `rank` once in this (fresh) process and measure it."""
    from segrank.job import rank

    return measured(lambda: rank(
        args["bank"], args["target"], out=args["out"], perturbations=[PERTURBATION], device="cpu",
        workers=args["workers"] or None, in_memory=args["path"] == "in-memory", block=tuple(args["block"]),
        report=False, progress=False, n_boot=200,
    ))


def measured(call) -> dict:
    """Wall seconds and peak RSS of ``call()`` (a `rank`) in this fresh process and its workers,
    with the ranking's failures and (name, rank, score) rows; "ranking" holds the Ranking."""
    import psutil

    peak_tree = [0]
    stop = threading.Event()

    def sample():  # a cross-check of ru_maxrss: the largest process of the tree, every 0.2 s
        me = psutil.Process()
        while not stop.wait(0.2):
            try:
                procs = [me] + me.children(recursive=True)
                peak_tree[0] = max([peak_tree[0]] + [p.memory_info().rss for p in procs if p.is_running()])
            except psutil.Error:
                pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    ranking = call()
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    # VmHWM, not ru_maxrss: after fork + exec, ru_maxrss keeps the parent's size at the fork
    rss_self = _vm_hwm()
    # workers (and their nannies' children) once waited for; each may carry this process's size
    # at its fork (see above), which never exceeds rss_self, so the maximum stays exact
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {
        "seconds": seconds,
        "peak_rss_mb": round(max(rss_self, rss_children) / 1e6, 1),
        "rss_main_mb": round(rss_self / 1e6, 1),
        "rss_largest_child_mb": round(rss_children / 1e6, 1),
        "rss_sampled_mb": round(peak_tree[0] / 1e6, 1),
        "failures": ranking.failures,
        "models": [(r["name"], r["rank"], r["score"]) for r in ranking.rows],
        "ranking": ranking,
    }


def _vm_hwm() -> int:
    """Peak resident set of this process's current image, in bytes (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(volume: Path, *, gib: float, workers: int, path: str, bank: Path, block, workdir: Path) -> dict:
    import zarr

    shape = zarr.open_array(str(volume)).shape
    voxels = shape[0] * shape[1] * shape[2]
    args = {"bank": str(bank), "target": str(volume), "out": str(workdir / f"run-{gib:g}-{workers}-{path}"),
            "workers": workers, "path": path, "block": list(block)}
    res = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"run {args} failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    row = {
        # which code on which machine: rows of several sessions share one file (--append)
        "commit": _commit(), "cpu": _cpu(), "cores": os.cpu_count(),
        "volume_gib": round(voxels / (1 << 30), 4),
        "workers": workers,
        "mvox_s": round(voxels / out["seconds"] / 1e6, 2),
        "peak_rss_mb": out["peak_rss_mb"],
        "path": path,
        "seconds": round(out["seconds"], 1),
        "shape": list(shape),
        "rss_main_mb": out["rss_main_mb"],
        "rss_largest_child_mb": out["rss_largest_child_mb"],
        "rss_sampled_mb": out["rss_sampled_mb"],
    }
    if out["failures"]:
        row["failures"] = out["failures"]
    print(json.dumps(row), flush=True)
    return row


def same_ranking(volume: Path, *, bank: Path, block, workdir: Path) -> dict:
    """Both paths on one volume in this process: per-block scores and rankings compared."""
    from segrank.job import rank

    kw = dict(perturbations=[PERTURBATION], device="cpu", block=tuple(block), report=False, progress=False, n_boot=200)
    runs = {}
    for path in ("blocks", "in-memory"):
        t0 = time.perf_counter()
        ranking = rank(bank, volume, out=workdir / f"check-{path}", in_memory=path == "in-memory", **kw)
        with open(ranking.out / "per_image.csv", newline="") as f:
            scores = {(r["model"], r["unit"]): r["score"] for r in csv.DictReader(f)}
        runs[path] = {"seconds": time.perf_counter() - t0, "scores": scores,
                      "ranking": [(r["name"], r["score"]) for r in ranking.rows]}
    a, b = runs["blocks"], runs["in-memory"]
    result = {
        "volume": volume.name,
        "models": len(a["ranking"]),
        "units": len(a["scores"]) // max(1, len(a["ranking"])),
        "identical_block_scores": a["scores"] == b["scores"],
        "same_ranking": [n for n, _ in a["ranking"]] == [n for n, _ in b["ranking"]],
        "ranking_blocks": a["ranking"],
        "ranking_in_memory": b["ranking"],
        "seconds": {p: round(r["seconds"], 1) for p, r in runs.items()},
    }
    print(json.dumps(result), flush=True)
    return result


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE)
    return out.stdout.strip() or "unknown"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=float, nargs="*", default=[0.25, 0.5, 1.0], help="volumes (GiB) for the blockwise runs")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="LocalCluster workers (0 = in process)")
    parser.add_argument("--memory-sizes", type=float, nargs="*", default=[0.0625, 0.125],
                        help="small volumes run on both paths, in this process (in-memory vs blocks)")
    parser.add_argument("--check-size", type=float, default=0.0625,
                        help="volume for the exactness check (3 models, both paths); 0 skips it")
    parser.add_argument("--block", default="64,256,256")
    parser.add_argument("--data", type=Path, default=HERE / "data", help="where make_em_volume.py wrote the volumes")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scale.json")
    parser.add_argument("--append", action="store_true", help="add rows to an existing --out instead of replacing it")
    args = parser.parse_args(argv)
    if args.child:
        out = child(json.loads(args.child))
        out.pop("ranking")
        print(json.dumps(out, default=str))
        return
    block = [int(b) for b in args.block.split(",")]

    def volume(gib: float) -> Path:
        path = args.data / f"em-{gib:g}gib.zarr"
        if not path.exists():
            raise SystemExit(f"{path}: missing; run: python benchmarks/make_em_volume.py --gib {gib:g}")
        return path

    doc = {
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "note": "2 cores shared with other jobs while measured: wall times are noisy"},
        "command": "python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": "conv4x2: 2 same-padded 3x3 conv layers, 4 hidden channels, 2D slice-wise, halo 8",
        "perturbation": PERTURBATION,
        "block": block,
        "rows": [],
    }
    if args.append and args.out.exists():
        old = json.loads(args.out.read_text())
        doc["rows"] = old.get("rows", [])
        doc["command"] = old.get("command", "") + " ; " + doc["command"]
        if "exactness" in old:
            doc["exactness"] = old["exactness"]
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after every row: a run cut short keeps what it measured
        args.out.write_text(json.dumps(doc, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="segrank-scale-") as tmp:
        work = Path(tmp)
        light = write_bank(work / "light", LIGHT)
        for gib in args.memory_sizes:
            for path in ("in-memory", "blocks"):
                doc["rows"].append(measure(volume(gib), gib=gib, workers=0, path=path, bank=light, block=block,
                                           workdir=work))
                save()
        for gib in args.sizes:
            for workers in args.workers:
                doc["rows"].append(measure(volume(gib), gib=gib, workers=workers, path="blocks", bank=light,
                                           block=block, workdir=work))
                save()
        if args.check_size:
            doc["exactness"] = same_ranking(volume(args.check_size), bank=write_bank(work / "trio", TRIO),
                                            block=block, workdir=work)
            save()


if __name__ == "__main__":
    main()
