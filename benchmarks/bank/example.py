"""Build the bundled example's target and measure each example model's true performance.

Usage (from the repository root)::

    python benchmarks/bank/example.py target    # copy the chosen DSB2018 test images + labels
    python benchmarks/bank/example.py truth     # true F1 per model -> performance.json + table

The target is DSB2018 TEST-split images from size groups (acquisition sources) that no example
model was trained on (see MODELS in train.py): every test image of the small groups
(256x320, 260x347, 512x640, 603x1272, 1040x1388; larger ones centre-cropped to 512x512) and two
seeded test images of the 360x360 group. DSB2018 is CC0.
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
TRAINED_GROUPS = ("256x256", "520x696")  # the DSB groups the example models train on
EASY_GROUP, N_EASY = "360x360", 2  # large, bright, well separated nuclei
MAX_SIDE = 512  # larger images are centre-cropped to keep the example fast


def chosen_ids() -> list[tuple[str, str]]:
    """(size_group, id): every TEST image of the small DSB groups no example model trains on,
    plus N_EASY seeded TEST images of the 360x360 group."""
    from segrank.perturb.seeds import rng

    groups = T.load_splits()["datasets"]["dsb2018_fluo"]["size_group"]
    out = [(g, i) for g in sorted(groups) if g not in TRAINED_GROUPS + (EASY_GROUP,)
           for i in groups[g]["test"]]
    easy = groups[EASY_GROUP]["test"]
    pick = rng(T.SPLIT_SEED, "bank-example", EASY_GROUP, 0, "choose").choice(len(easy), N_EASY, replace=False)
    return out + sorted((EASY_GROUP, easy[i]) for i in pick)


def make_target() -> None:
    src = T.DATA / T.DATASETS["dsb2018_fluo"][0]
    for sub in ("images", "labels"):
        (EXAMPLE / sub).mkdir(parents=True, exist_ok=True)
        for old in (EXAMPLE / sub).glob("*.tif"):
            old.unlink()
    print("| file | DSB2018 stage1_train id | size group | crop (y0:y1, x0:x1) | nuclei |")
    print("|---|---|---|---|---|")
    for group, image_id in chosen_ids():
        short = f"dsb-{image_id[:10]}.tif"
        image = tifffile.imread(src / "images" / f"{image_id}.tif")
        labels = tifffile.imread(src / "labels" / f"{image_id}.tif")
        h, w = (min(MAX_SIDE, d) for d in image.shape)
        y0, x0 = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
        window = (slice(y0, y0 + h), slice(x0, x0 + w))
        image, labels = image[window], labels[window]
        tifffile.imwrite(EXAMPLE / "images" / short, image, compression="zlib")
        tifffile.imwrite(EXAMPLE / "labels" / short, labels.astype(np.uint16), compression="zlib")
        crop = "whole" if (h, w) == tuple(image.shape) and not (y0 or x0) else f"{y0}:{y0 + h}, {x0}:{x0 + w}"
        print(f"| {short} | {image_id} | {group} | {crop} | {len(np.unique(labels)) - 1} |")


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
    doc = {"models": rows, "target": "images", "labels": "labels",
           "computed_by": "benchmarks/bank/example.py truth (whole-image ONNX Runtime, independent of segrank)"}
    (EXAMPLE / "performance.json").write_text(json.dumps(doc, indent=1) + "\n")
    print("| rank | model | true F1 (median Dice) | min..max per image | val Dice (own source) | source |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        v = list(r["per_image"].values())
        print(f"| {i} | {r['name']} | {r['score']:.3f} | {min(v):.3f}..{max(v):.3f} | "
              f"{r['val_dice_source']:.3f} | {r['source']} |")


if __name__ == "__main__":
    {"target": make_target, "truth": truth}[sys.argv[1]]()
