"""CUDA path check (issue 4): the CUDA provider is really used, its results match the CPU path,
and how fast it is against the CPU on the same model and tiles.

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.json] [--dry-run]

`--dry-run` runs the "CUDA" side on the CPU too, to check the script itself on a machine
without a GPU. Uses the bundled example bank and images (no dask or zarr needed).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "none"


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up: CUDA kernels, arenas
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_check.json"))
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--size", type=int, default=2048, help="side of the throughput image")
    args = parser.parse_args()

    import onnxruntime as ort
    import tifffile

    from segrank.examples import example_paths
    from segrank.inference.predict import predict_image
    from segrank.inference.session import create_session
    from segrank.metrics import binary_consistency
    from segrank.models import load_bank
    from segrank.models.greybox import rewrite
    from segrank.perturb.dropout import channel_mask
    from segrank.perturb.input import PerturbationSpec, make_input_perturbation
    from segrank.perturb.seeds import rng

    if hasattr(ort, "preload_dlls") and not args.dry_run:
        ort.preload_dlls()  # CUDA / cuDNN from the nvidia-* Python packages, when present
    gpu = "cpu" if args.dry_run else "cuda"
    bank_dir, target_dir = example_paths()
    models, problems = load_bank(bank_dir)
    images = {p.stem: tifffile.imread(p) for p in sorted(target_dir.glob("*.tif"))}
    report = {"gpu": _gpu_name(), "cpu": platform.processor() or platform.machine(), "onnxruntime": ort.__version__,
              "available_providers": ort.get_available_providers(), "dry_run": args.dry_run, "models": []}
    failures = []
    noise = PerturbationSpec.parse("noise:0.1-0.2")
    for model in models:
        greybox = rewrite(model, tensor="auto")
        cpu_sess, cpu_provider = create_session(greybox, device="cpu")
        gpu_sess, gpu_provider = create_session(greybox, device=gpu)
        if not args.dry_run and gpu_provider != "CUDAExecutionProvider":
            failures.append(f"{model.name}: CUDA requested, got {gpu_provider}")
        entry = {"name": model.name, "provider": gpu_provider, "max_abs_diff": 0.0, "mask_agreement_min": 1.0,
                 "cte": {}}
        for label, sess in (("cpu", cpu_sess), ("gpu", gpu_sess)):
            scores = {"dropout:0.2": [], str(noise): []}
            for name, img in images.items():
                base = predict_image(greybox, img, axes="yx", session=sess)
                mask = channel_mask(greybox.dropout_channels, 0.2, rng(0, model.name, name, 0, "dropout"), ndim=2)
                drop = predict_image(greybox, img, axes="yx", session=sess, dropout_mask=mask)
                pert = make_input_perturbation(noise, seed=0, model=model.name, unit=name, repeat=0)
                noisy = predict_image(greybox, img, axes="yx", session=sess, perturb=pert)
                scores["dropout:0.2"].append(binary_consistency(base[0], drop[0]).consistency)
                scores[str(noise)].append(binary_consistency(base[0], noisy[0]).consistency)
                if label == "cpu":
                    entry.setdefault("_cpu", {})[name] = base
                else:
                    ref = entry["_cpu"][name]
                    entry["max_abs_diff"] = max(entry["max_abs_diff"], float(np.abs(ref - base).max()))
                    entry["mask_agreement_min"] = min(entry["mask_agreement_min"],
                                                      float(binary_consistency(ref[0], base[0]).consistency))
            entry["cte"][label] = {k: float(np.median(v)) for k, v in scores.items()}
        entry.pop("_cpu")
        report["models"].append(entry)
        print(f"{model.name}: provider {gpu_provider}, max |p_cpu - p_gpu| = {entry['max_abs_diff']:.2e}, "
              f"CTE cpu {entry['cte']['cpu']} gpu {entry['cte']['gpu']}", flush=True)
        if entry["max_abs_diff"] > 1e-3:
            failures.append(f"{model.name}: CPU and CUDA probabilities differ by {entry['max_abs_diff']:.2e}")

    # Same ranking on both providers, for each perturbation.
    for pert in ("dropout:0.2", str(noise)):
        orders = {side: [m["name"] for m in sorted(report["models"], key=lambda m: -m["cte"][side][pert])]
                  for side in ("cpu", "gpu")}
        report.setdefault("same_ranking", {})[pert] = orders["cpu"] == orders["gpu"]
        if orders["cpu"] != orders["gpu"]:
            failures.append(f"{pert}: ranking differs, cpu {orders['cpu']} vs gpu {orders['gpu']}")

    # The default score (consensus) and a race through the job on both providers: same ranking.
    import tempfile

    from segrank.job import rank

    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in (("consensus", {}), ("consensus race", dict(budget=0.5, keep_top=2))):
            rows = {}
            for device in ("cpu", gpu):
                t0 = time.perf_counter()
                r = rank(bank_dir, target_dir, out=Path(tmp) / f"{label}-{device}", device=device, progress=False,
                         report=False, **extra)
                rows[device] = {x["name"]: x["score"] for x in r.rows}
                report.setdefault("job", {}).setdefault(label, {})[device] = {
                    "seconds": time.perf_counter() - t0, "order": [x["name"] for x in r.rows],
                    "providers": sorted(set(r.settings["provider"].values()))}
            worst = max(abs(rows["cpu"][n] - rows[gpu][n]) for n in rows["cpu"] if rows["cpu"][n] is not None)
            report["job"][label]["max_score_diff"] = worst
            print(f"{label}: max |score_cpu - score_gpu| = {worst:.2e}", flush=True)
            if worst > 1e-3 or report["job"][label]["cpu"]["order"] != report["job"][label][gpu]["order"]:
                failures.append(f"{label}: CPU and CUDA rankings differ (max score difference {worst:.2e})")

    # Throughput of the same model and tiles on both providers.
    gen = np.random.default_rng(0)
    big = np.tile(next(iter(images.values())), (args.size // 360 + 1,) * 2)[: args.size, : args.size]
    big = np.clip(big.astype(np.int16) + gen.integers(-3, 4, big.shape), 0, 255).astype(np.uint8)
    model = models[0]
    report["throughput"] = []
    for device in ("cpu", gpu):
        sess, provider = create_session(model, device=device)
        for tile in (256, 512, 1024):
            seconds = _timed(lambda: predict_image(model, big, axes="yx", session=sess, tile=tile), repeats=2)
            row = {"device": device, "provider": provider, "tile": tile, "image": [args.size, args.size],
                   "mvox_s": big.size / seconds / 1e6, "seconds": seconds}
            report["throughput"].append(row)
            print(f"throughput {provider} tile {tile}: {row['mvox_s']:.1f} Mvox/s", flush=True)
    cpu_best = max(r["mvox_s"] for r in report["throughput"] if r["device"] == "cpu")
    gpu_best = max(r["mvox_s"] for r in report["throughput"] if r["device"] == gpu)
    report["speedup_best_tile"] = gpu_best / cpu_best
    report["failures"] = failures
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{'GPU' if not args.dry_run else 'dry run'} ({report['gpu']}): speedup {report['speedup_best_tile']:.2f}x "
          f"(best tile), failures: {len(failures)}")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
