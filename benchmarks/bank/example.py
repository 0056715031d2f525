"""Build the bundled example's target and measure each example model's true performance.

Usage (from the repository root)::

    python benchmarks/bank/example.py target    # copy the chosen DSB2018 test images + labels
    python benchmarks/bank/example.py truth     # true F1 per model -> performance.json + table

The target is N_IMAGES images drawn (seeded) from the TEST split of the DSB2018 360x360 size
group, a domain that no example model was trained on (see MODELS in train.py). DSB2018 is CC0.
True performance = median over images of the foreground F1 (Dice) at p > 0.5, computed here
with plain ONNX Runtime on the whole image (reflect-padded to the model's multiple), so that it
does not depend on segrank's own inference code that it is meant to check.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tifffile
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train as T  # noqa: E402

EXAMPLE = T.REPO / "python/segrank/examples/nuclei"
GROUP = "360x360"
N_IMAGES = 8


def chosen_ids() -> list[str]:
    from segrank.perturb.seeds import rng

    test = T.split_ids("dsb2018_fluo", GROUP, "test")
    pick = rng(T.SPLIT_SEED, "bank-example", GROUP, 0, "choose").choice(len(test), N_IMAGES, replace=False)
    return sorted(test[i] for i in pick)


def make_target() -> None:
    src = T.DATA / T.DATASETS["dsb2018_fluo"][0]
    for sub in ("images", "labels"):
        (EXAMPLE / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for image_id in chosen_ids():
        short = f"dsb-{image_id[:10]}.tif"
        image = tifffile.imread(src / "images" / f"{image_id}.tif")
        labels = tifffile.imread(src / "labels" / f"{image_id}.tif")
        tifffile.imwrite(EXAMPLE / "images" / short, image, compression="zlib")
        tifffile.imwrite(EXAMPLE / "labels" / short, labels.astype(np.uint16), compression="zlib")
        rows.append((short, image_id, image.shape, int(labels.max())))
    for r in rows:
        print(*r)


def predict(session, image: np.ndarray, multiple: int) -> np.ndarray:
    x = T.percentile_normalise(image)
    h, w = x.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    x = np.pad(x, ((0, ph), (0, pw)), mode="reflect")
    logits = session.run(None, {"input": x[None, None]})[0][0, 0, :h, :w]
    return 1 / (1 + np.exp(-logits))


def truth() -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    images = sorted((EXAMPLE / "images").glob("*.tif"))
    rows = []
    for sidecar in sorted((EXAMPLE / "bank").glob("*.yaml")):
        meta = yaml.safe_load(sidecar.read_text())
        sess = ort.InferenceSession(str(sidecar.with_suffix(".onnx")), opts, providers=["CPUExecutionProvider"])
        scores = []
        for path in images:
            p = predict(sess, tifffile.imread(path), meta["tiling"]["multiple_of"][0])
            truth_mask = tifffile.imread(EXAMPLE / "labels" / path.name) > 0
            scores.append(T.dice(p > 0.5, truth_mask))
        rows.append({"name": meta["name"], "score": float(np.median(scores)), "metric": "f1",
                     "n_images": len(scores), "per_image": dict(zip([p.name for p in images], scores)),
                     "val_dice_source": meta["card"]["validation"]["score"],
                     "source": "; ".join(meta["card"]["source_data"]),
                     "regime": meta["card"]["training"]["regime_note"]})
    rows.sort(key=lambda r: -r["score"])
    (EXAMPLE / "performance.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("| rank | model | true F1 (median Dice) | min..max per image | val Dice (own source) | source |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        v = list(r["per_image"].values())
        print(f"| {i} | {r['name']} | {r['score']:.3f} | {min(v):.3f}..{max(v):.3f} | "
              f"{r['val_dice_source']:.3f} | {r['source']} |")


if __name__ == "__main__":
    {"target": make_target, "truth": truth}[sys.argv[1]]()
