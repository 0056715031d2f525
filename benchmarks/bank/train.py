"""Train the segrank model banks: small 2D U-Nets on the real data, exported to ONNX + sidecar.

Rerunnable and resumable: every model checkpoints its full training state (weights, optimiser,
iteration, best weights, random states) to benchmarks/bank/.work/<bank>/<model>/state.pt, so a
killed job continues where it stopped; a model whose ONNX file and sidecar exist is skipped.

Usage (from the repository root; torch is an optional extra)::

    python benchmarks/bank/train.py splits                 # (re)write / check splits.json
    nice -n 10 python benchmarks/bank/train.py train --bank example
    nice -n 10 python benchmarks/bank/train.py train --bank nuclei-semantic --only dsb256-long
    python benchmarks/bank/train.py list                   # every bank and model spec

Recipe (the authors'): per-image percentile normalisation (1, 99.8); flips and 90-degree
rotations; intensity augmentation (contrast, brightness, gamma, Gaussian noise) whose strength is
a per-model regime setting; BCE + Dice loss; Adam; validation Dice on the val split every few
iterations, best checkpoint kept, early stopping after `patience` evaluations without gain.
Models differ on purpose in source data and regime (see MODELS); test images are never read.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = Path(os.environ.get("SEGRANK_DATA", "/work/shared/data"))  # override to train elsewhere
SPLITS = HERE / "splits.json"
WORK = HERE / ".work"
SPLIT_SEED = 2018
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)  # train, val, test

# dataset key -> (folder under DATA, label folder, foreground meaning)
DATASETS = {
    "dsb2018_fluo": ("nuclei/dsb2018_fluo", "labels", "nuclei-foreground"),
    "coelho2009_u2os": ("nuclei/coelho2009_u2os", "labels", "nuclei-foreground"),
    "ctc_fluo_n2dh_gowt1": ("nuclei/ctc_fluo_n2dh_gowt1", "labels", "nuclei-foreground"),
    "ctc_fluo_n2dl_hela": ("nuclei/ctc_fluo_n2dl_hela", "labels", "nuclei-foreground"),
    "gonuclear_plantseg_mini": ("nuclei/gonuclear_plantseg_mini", "labels", "nuclei-foreground"),
    "epfl_hippocampus": ("em/epfl_hippocampus", None, None),
    "vnc_drosophila": ("em/vnc_drosophila", None, None),
}
# datasets only ever used as targets (all images in test)
TARGET_ONLY = {"gonuclear_plantseg_mini": "3D crops (100x100 slices of 2 volumes), too small to train on"}

OUTPUT_SPACE = {"nuclei": "nuclei-foreground", "mito": "mitochondria-foreground", "membranes": "membrane-foreground"}
BANK_DIRS = {
    "example": REPO / "python/segrank/examples/nuclei/bank",
    "nuclei-semantic": HERE / "nuclei-semantic",
    "nuclei-instance": HERE / "nuclei-instance",
    "em-mito": HERE / "em-mito",
    "em-membranes": HERE / "em-membranes",
}


# ----------------------------------------------------------------------------- model specs
@dataclass(frozen=True)
class Spec:
    """One model of a bank: its source data and its training regime."""

    name: str
    bank: str
    sources: tuple[tuple[str, str | None], ...]  # (dataset, DSB size_group or None)
    structure: str = "nuclei"  # nuclei | mito | membranes (which labels, which output space)
    head: str = "semantic"  # semantic | components (instance via CC) | boundary (fg + boundary)
    depth: int = 3
    base: int = 16
    dropout: float = 0.0  # spatial dropout before the bottleneck convs during training
    max_iters: int = 1500
    min_iters: int = 0  # no early stop before this
    batch: int = 8
    crop: int = 128
    lr: float = 2e-3
    intensity_aug: float = 1.0  # 0 = none, 1 = the standard ranges (scaled)
    geometric_aug: float = 0.0  # small rotations + elastic deformation (0 = off, 1 = standard)
    eval_every: int = 100
    patience: int = 5
    seed: int = 0
    note: str = ""
    snapshots: tuple[int, ...] = ()  # also export the weights at these iterations as NAME-itN


def _spec_changed(saved: dict, spec: Spec) -> bool:
    """True if `saved` (a checkpoint's spec) differs from `spec`; new fields at their default pass."""
    current, default = asdict(spec), asdict(Spec(spec.name, spec.bank, spec.sources))
    saved = {k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items()}
    return any(current[k] != (saved[k] if k in saved else default[k]) for k in current)


STD = dict(intensity_aug=1.0)
MODELS: list[Spec] = [
    # ---- the bundled example (python/segrank/examples/nuclei): target = DSB 360x360 test images,
    # a size group none of these models sees; sources and regimes chosen so quality spreads.
    # base 8 (121k parameters, 0.5 MB ONNX) keeps the example small and its rank run ~1 min.
    Spec("dsb256-long", "example", (("dsb2018_fluo", "256x256"),), base=8, max_iters=1200, patience=4,
         note="DSB 256x256 group (small nuclei, many labs), full regime"),
    Spec("dsb256-short", "example", (("dsb2018_fluo", "256x256"),), base=8, max_iters=60, eval_every=20,
         intensity_aug=0.0, note="same data as dsb256-long, stopped after 60 iterations, no intensity aug"),
    Spec("dsb520-long", "example", (("dsb2018_fluo", "520x696"),), base=8, max_iters=1200, patience=4,
         note="DSB 520x696 group (BBBC039-like U2OS Hoechst, small dense nuclei)"),
    Spec("hela-long", "example", (("ctc_fluo_n2dl_hela", None),), base=8, max_iters=1200, patience=4,
         note="CTC Fluo-N2DL-HeLa (widefield, small nuclei)"),
    Spec("gowt1-long", "example", (("ctc_fluo_n2dh_gowt1", None),), base=8, max_iters=1200, patience=4,
         note="CTC Fluo-N2DH-GOWT1 (confocal, large nuclei)"),
    Spec("coelho-mid", "example", (("coelho2009_u2os", None),), base=8, max_iters=300, intensity_aug=0.0,
         note="Coelho 2009 U2OS (large nuclei, widefield), medium regime without intensity aug"),
]


GEO = dict(geometric_aug=1.0)  # full regimes: small rotations + elastic too (the authors' recipe)


def _nuclei_bank(bank: str, head: str) -> list[Spec]:
    """The full nuclei bank: every training source x (long, short, no-intensity-aug) regimes."""
    sources = {
        "dsb256": (("dsb2018_fluo", "256x256"),),
        "dsb520": (("dsb2018_fluo", "520x696"),),
        "dsb360": (("dsb2018_fluo", "360x360"),),
        "coelho": (("coelho2009_u2os", None),),
        "hela": (("ctc_fluo_n2dl_hela", None),),
        "gowt1": (("ctc_fluo_n2dh_gowt1", None),),
    }
    out = []
    for key, src in sources.items():
        out.append(Spec(f"{key}-long", bank, src, head=head, max_iters=3000, snapshots=(300,), **GEO,
                        note="long regime (+ checkpoint at 300 iterations)"))
        out.append(Spec(f"{key}-short", bank, src, head=head, max_iters=150, eval_every=50,
                        intensity_aug=0.0, note="short regime, no intensity aug"))
    out.append(Spec("dsb-all-deep", bank, sources["dsb256"] + sources["dsb520"] + sources["dsb360"],
                    head=head, base=8, depth=4, max_iters=3000, dropout=0.1, **GEO,
                    note="all DSB groups, deeper (depth 4, base 8), dropout 0.1 in training"))
    return out


def _em_bank(bank: str, structure: str) -> list[Spec]:
    """EM sources barely transfer to each other, so spread comes from regimes and checkpoints."""
    out = []
    for key, ds in (("epfl", "epfl_hippocampus"), ("vnc", "vnc_drosophila")):
        src = ((ds, None),)
        out += [
            Spec(f"{key}-long", bank, src, structure=structure, max_iters=3000, snapshots=(300,), **GEO,
                 note="long regime (+ checkpoint at 300 iterations)"),
            Spec(f"{key}-wide", bank, src, structure=structure, base=20, max_iters=2000, **GEO,
                 note="wider (base 20)"),
            Spec(f"{key}-mid-noaug", bank, src, structure=structure, max_iters=500, intensity_aug=0.0,
                 note="medium, no intensity aug"),
            Spec(f"{key}-short", bank, src, structure=structure, max_iters=100, eval_every=25,
                 intensity_aug=0.0, note="short"),
            Spec(f"{key}-strongaug", bank, src, structure=structure, max_iters=1500, intensity_aug=2.0, **GEO,
                 note="double-strength intensity aug"),
            Spec(f"{key}-dropout", bank, src, structure=structure, max_iters=1500, dropout=0.2, **GEO,
                 note="dropout 0.2 in training"),
        ]
    return out


MODELS += _nuclei_bank("nuclei-semantic", "semantic")
MODELS += _nuclei_bank("nuclei-instance", "boundary")
MODELS += _em_bank("em-mito", "mito")
MODELS += _em_bank("em-membranes", "membranes")


# ----------------------------------------------------------------------------- splits
def _image_ids(dataset: str) -> list[str]:
    folder = DATA / DATASETS[dataset][0] / "images"
    return sorted(p.stem for p in folder.glob("*.tif"))


def _dsb_groups() -> dict[str, str]:
    with open(DATA / DATASETS["dsb2018_fluo"][0] / "metadata.csv") as fh:
        return {row["id"]: row["size_group"] for row in csv.DictReader(fh)}


def make_splits() -> dict:
    """Seeded train / val / test ids per dataset; DSB is stratified by size_group."""
    from segrank.perturb.seeds import rng

    def split(ids: list[str], unit: str) -> dict[str, list[str]]:
        ids = sorted(ids)
        order = rng(SPLIT_SEED, "bank-splits", unit, 0, "split").permutation(len(ids))
        n_val = max(1, round(SPLIT_FRACTIONS[1] * len(ids)))
        n_test = max(1, round(SPLIT_FRACTIONS[2] * len(ids)))
        shuffled = [ids[i] for i in order]
        return {"test": sorted(shuffled[:n_test]), "val": sorted(shuffled[n_test:n_test + n_val]),
                "train": sorted(shuffled[n_test + n_val:])}

    out: dict = {"seed": SPLIT_SEED, "fractions": dict(zip(("train", "val", "test"), SPLIT_FRACTIONS)),
                 "note": "test images are never trained on or used for model selection", "datasets": {}}
    for dataset in DATASETS:
        ids = _image_ids(dataset)
        if dataset in TARGET_ONLY:
            out["datasets"][dataset] = {"train": [], "val": [], "test": ids, "note": TARGET_ONLY[dataset]}
        elif dataset == "dsb2018_fluo":
            groups = _dsb_groups()
            entry = {"train": [], "val": [], "test": [], "stratified_by": "size_group",
                     "size_group": {}}
            for g in sorted(set(groups.values())):
                part = split([i for i in ids if groups[i] == g], f"{dataset}/{g}")
                entry["size_group"][g] = part
                for k in ("train", "val", "test"):
                    entry[k] += part[k]
            for k in ("train", "val", "test"):
                entry[k] = sorted(entry[k])
            out["datasets"][dataset] = entry
        else:
            out["datasets"][dataset] = split(ids, dataset)
    return out


def load_splits() -> dict:
    if not SPLITS.exists():
        SPLITS.write_text(json.dumps(make_splits(), indent=1) + "\n")
    return json.loads(SPLITS.read_text())


def split_ids(dataset: str, group: str | None, part: str) -> list[str]:
    entry = load_splits()["datasets"][dataset]
    if group is not None:
        return entry["size_group"][group][part]
    return entry[part]


# ----------------------------------------------------------------------------- data
def percentile_normalise(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """(x - P_low) / (P_high - P_low + eps): the sidecar's `percentile` preprocessing."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, (low, high))
    return ((image - lo) / (hi - lo + 1e-6)).astype(np.float32)


def _label_path(dataset: str, structure: str, image_id: str) -> Path:
    root = DATA / DATASETS[dataset][0]
    folder = DATASETS[dataset][1] or f"labels_{structure}"
    return root / folder / f"{image_id}.tif"


def load_pairs(spec: Spec, part: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(normalised image, foreground mask, boundary mask or None) for every id of the split part."""
    from skimage.segmentation import find_boundaries

    pairs = []
    for dataset, group in spec.sources:
        for image_id in split_ids(dataset, group, part):
            image = tifffile.imread(DATA / DATASETS[dataset][0] / "images" / f"{image_id}.tif")
            if image.ndim == 3:  # stray channel axis
                image = image[..., 0] if image.shape[-1] <= 4 else image[0]
            labels = tifffile.imread(_label_path(dataset, spec.structure, image_id))
            fg = (labels > 0).astype(np.float32)
            bd = None
            if spec.head == "boundary":
                bd = find_boundaries(labels, mode="inner").astype(np.float32)
            pairs.append((percentile_normalise(image), fg, bd))
    if not pairs:
        raise SystemExit(f"{spec.name}: no {part} images for {spec.sources}")
    return pairs


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
    py, px = max(0, size - a.shape[0]), max(0, size - a.shape[1])
    if py or px:
        a = np.pad(a, ((0, py), (0, px)), mode="reflect" if min(a.shape) > max(py, px) else "constant")
    return a


def sample_batch(pairs, spec: Spec, gen: np.random.Generator):
    """A batch of augmented crops: x (B,1,S,S), y (B,C,S,S)."""
    xs, ys = [], []
    s = spec.crop
    for _ in range(spec.batch):
        for _attempt in range(4):  # prefer crops that contain foreground
            img, fg, bd = pairs[gen.integers(len(pairs))]
            img, fg = _pad_to(img, s), _pad_to(fg, s)
            bd = _pad_to(bd, s) if bd is not None else None
            y0 = gen.integers(img.shape[0] - s + 1)
            x0 = gen.integers(img.shape[1] - s + 1)
            if fg[y0:y0 + s, x0:x0 + s].mean() > 0.01:
                break
        x = img[y0:y0 + s, x0:x0 + s]
        y = [fg[y0:y0 + s, x0:x0 + s]] + ([bd[y0:y0 + s, x0:x0 + s]] if bd is not None else [])
        if spec.geometric_aug > 0:
            x, y = warp_crop(img, [fg] + ([bd] if bd is not None else []), y0, x0, s,
                             spec.geometric_aug, gen, default=(x, y))
        k, flip = gen.integers(4), gen.integers(2)
        x = np.rot90(x, k)
        y = [np.rot90(c, k) for c in y]
        if flip:
            x, y = x[:, ::-1], [c[:, ::-1] for c in y]
        x = augment_intensity(x, spec.intensity_aug, gen)
        xs.append(np.ascontiguousarray(x)[None])
        ys.append(np.stack([np.ascontiguousarray(c) for c in y]))
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


def warp_crop(img, masks, y0, x0, s, strength, gen, *, default):
    """Small rotation (p = 0.5, +-15 deg x strength) and elastic deformation (p = 0.3, smooth
    displacement with 2 px x strength standard deviation, sigma 8 px) of the s x s crop at
    (y0, x0), sampled from the whole image (mirrored at its border) so the crop has no empty
    corners. Image bilinear, masks nearest. Returns `default` when neither is drawn.
    """
    from scipy.ndimage import gaussian_filter, map_coordinates

    rotate, elastic = gen.random() < 0.5, gen.random() < 0.3
    if not (rotate or elastic):
        return default
    c = (s - 1) / 2
    dy, dx = np.mgrid[0:s, 0:s].astype(np.float32) - c
    if rotate:
        a = math.radians(gen.uniform(-15, 15) * strength)
        dy, dx = math.cos(a) * dy - math.sin(a) * dx, math.sin(a) * dy + math.cos(a) * dx
    if elastic:
        for d in (dy, dx):
            field = gaussian_filter(gen.uniform(-1, 1, (s, s)).astype(np.float32), 8)
            d += field * (2.0 * strength / (field.std() + 1e-6))
    coords = np.stack([dy + y0 + c, dx + x0 + c])
    x = map_coordinates(img, coords, order=1, mode="mirror").astype(np.float32)
    ys = [map_coordinates(m, coords, order=0, mode="mirror") for m in masks]
    return x, ys


def augment_intensity(x: np.ndarray, strength: float, gen: np.random.Generator) -> np.ndarray:
    """Contrast, brightness, gamma and Gaussian noise (the perturbation families), each p=0.5.

    Ranges at strength 1: contrast factor 1 +- 0.3, brightness +- 0.1, gamma exp(+- 0.3),
    noise sigma U(0, 0.08) in normalised units; `strength` scales the half-widths.
    """
    if strength <= 0:
        return x
    x = x.astype(np.float32)
    if gen.random() < 0.5:
        m = x.mean()
        x = m + (1 + strength * gen.uniform(-0.3, 0.3)) * (x - m)
    if gen.random() < 0.5:
        x = x + strength * gen.uniform(-0.1, 0.1)
    if gen.random() < 0.5:
        g = math.exp(strength * gen.uniform(-0.3, 0.3))
        x = np.sign(x) * np.abs(x) ** g
    if gen.random() < 0.5:
        x = x + gen.normal(0, strength * gen.uniform(0, 0.08), x.shape)
    return x.astype(np.float32)


# ----------------------------------------------------------------------------- network
def build_unet(spec: Spec):
    import torch
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class UNet(nn.Module):
        """Plain U-Net; `bottleneck` is the coarsest block (segrank's default dropout site)."""

        def __init__(self):
            super().__init__()
            ch = [spec.base * 2 ** i for i in range(spec.depth + 1)]
            self.encoders = nn.ModuleList([block(1 if i == 0 else ch[i - 1], ch[i]) for i in range(spec.depth)])
            self.pool = nn.MaxPool2d(2)
            self.train_dropout = nn.Dropout2d(spec.dropout) if spec.dropout > 0 else nn.Identity()
            self.bottleneck = block(ch[-2], ch[-1])
            self.ups = nn.ModuleList([nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2)
                                      for i in reversed(range(spec.depth))])
            self.decoders = nn.ModuleList([block(2 * ch[i], ch[i]) for i in reversed(range(spec.depth))])
            self.head = nn.Conv2d(ch[0], 2 if spec.head == "boundary" else 1, 1)

        def forward(self, x):
            skips = []
            for enc in self.encoders:
                x = enc(x)
                skips.append(x)
                x = self.pool(x)
            x = self.bottleneck(self.train_dropout(x))
            for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
                x = dec(torch.cat([up(x), skip], dim=1))
            return self.head(x)

    return UNet()


def receptive_field(depth: int) -> int:
    """Theoretical receptive field (pixels) of the U-Net above: two 3x3 convs per level."""
    rf, jump = 1, 1
    for _ in range(depth):  # encoder: 2 convs then pool
        rf += 4 * jump
        rf += jump
        jump *= 2
    rf += 4 * jump  # bottleneck
    for _ in range(depth):  # decoder: transposed conv (no growth) then 2 convs at finer scale
        jump //= 2
        rf += 4 * jump
    return rf


def loss_fn(logits, target):
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = logits.sigmoid()
    inter = (p * target).sum(dim=(0, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3)) + 1)
    return bce + dice.mean()


def val_crops(pairs, spec: Spec, max_images: int = 12, size: int = 256):
    """Fixed central crops (multiples of 2^depth) of up to `max_images` val images."""
    step = max(1, len(pairs) // max_images)
    m = 2 ** spec.depth
    out = []
    for img, fg, _ in pairs[::step][:max_images]:
        h, w = (min(size, d) // m * m for d in img.shape)
        y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        out.append((img[y0:y0 + h, x0:x0 + w], fg[y0:y0 + h, x0:x0 + w]))
    return out


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground F1 (Dice) of two boolean masks; 1 when both are empty."""
    s = pred.sum() + truth.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(pred, truth).sum() / s)


def evaluate(net, crops) -> float:
    """Median per-image foreground Dice at p > 0.5 (the true-performance definition)."""
    import torch

    net.eval()
    scores = []
    device = next(net.parameters()).device
    with torch.no_grad():
        for img, fg in crops:
            logits = net(torch.from_numpy(img)[None, None].to(device))[0, 0].cpu().numpy()
            scores.append(dice(logits > 0, fg > 0))
    net.train()
    return float(np.median(scores))


# ----------------------------------------------------------------------------- training
def _cpu_copy(state_dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state_dict.items()}


def _facts(st: dict) -> dict:
    facts = {k: st[k] for k in ("best_dice", "best_iteration", "iteration", "history", "seconds",
                                "n_train", "n_val_crops")}
    facts["snapshots"] = st.get("snapshots", {})
    facts["device"] = st.get("device", "cpu")
    return facts


def train(spec: Spec, *, device: str = "cpu", log=print) -> dict:
    """Train (or resume) one model; returns the card facts of its best checkpoint.

    A finished model keeps only `final.pt` (spec, progress with the best and snapshot weights),
    small enough to move between machines; `state.pt` is the full resumable training state.
    """
    import torch

    work = WORK / spec.bank / spec.name
    work.mkdir(parents=True, exist_ok=True)
    state_path, final_path = work / "state.pt", work / "final.pt"
    torch.manual_seed(spec.seed)
    net = build_unet(spec)
    if final_path.exists():
        saved = torch.load(final_path, weights_only=False, map_location="cpu")
        if _spec_changed(saved["spec"], spec):
            raise SystemExit(f"{final_path}: spec changed since this model was trained; delete it to retrain")
        st = saved["progress"]
        net.load_state_dict(st["best_weights"])
        net.eval()
        return _facts(st), net
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=spec.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.max_iters, eta_min=spec.lr * 0.05)
    gen = np.random.default_rng([spec.seed, 7])
    st = {"iteration": 0, "best_dice": -1.0, "best_iteration": 0, "best_weights": None, "history": [],
          "since_best": 0, "done": False, "seconds": 0.0, "snapshots": {}}
    if state_path.exists():
        saved = torch.load(state_path, weights_only=False, map_location=device)
        if _spec_changed(saved["spec"], spec):
            raise SystemExit(f"{state_path}: spec changed since this checkpoint; delete it to retrain")
        net.load_state_dict(saved["weights"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        gen.bit_generator.state = saved["numpy_rng"]
        torch.set_rng_state(saved["torch_rng"].cpu())
        st = saved["progress"]
        log(f"{spec.name}: resumed at iteration {st['iteration']}")

    def save():
        tmp = state_path.with_suffix(".tmp")
        torch.save({"spec": asdict(spec), "weights": net.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "numpy_rng": gen.bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "progress": st}, tmp)
        tmp.replace(state_path)

    if not st["done"]:
        st["device"] = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
        train_pairs = load_pairs(spec, "train")
        crops = val_crops(load_pairs(spec, "val"), spec)
        st["n_train"], st["n_val_crops"] = len(train_pairs), len(crops)
        net.train()
        t0 = time.time()
        running = []
        while st["iteration"] < spec.max_iters:
            x, y = sample_batch(train_pairs, spec, gen)
            x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            loss = loss_fn(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            st["iteration"] += 1
            running.append(loss.item())
            it = st["iteration"]
            if it in spec.snapshots:  # an early checkpoint kept as an extra regime
                d = evaluate(net, crops)
                st.setdefault("snapshots", {})[it] = {
                    "val_dice": d, "weights": _cpu_copy(net.state_dict())}
                log(f"{spec.name}: snapshot at it {it}, val dice {d:.4f}")
            if it % spec.eval_every == 0 or it == spec.max_iters:
                d = evaluate(net, crops)
                st["seconds"] += time.time() - t0
                t0 = time.time()
                st["history"].append({"iteration": it, "loss": float(np.mean(running)), "val_dice": d})
                running = []
                if d > st["best_dice"]:
                    st.update(best_dice=d, best_iteration=it, since_best=0,
                              best_weights=_cpu_copy(net.state_dict()))
                else:
                    st["since_best"] += 1
                log(f"{spec.name}: it {it}/{spec.max_iters} loss {st['history'][-1]['loss']:.4f} "
                    f"val dice {d:.4f} (best {st['best_dice']:.4f} @ {st['best_iteration']}) "
                    f"{st['seconds']:.0f}s")
                if st["since_best"] >= spec.patience and it >= spec.min_iters:
                    log(f"{spec.name}: early stop at {it}")
                    break
                save()
        st["done"] = True
        save()
    tmp = final_path.with_suffix(".tmp")
    torch.save({"spec": asdict(spec), "progress": st}, tmp)
    tmp.replace(final_path)
    state_path.unlink(missing_ok=True)
    net.to("cpu")
    net.load_state_dict(st["best_weights"])
    net.eval()
    return _facts(st), net


def snapshot_models(spec: Spec, net, facts: dict):
    """(spec, net, facts) for each early checkpoint of `spec`, named NAME-itN."""
    for it, snap in sorted(facts["snapshots"].items()):
        net.load_state_dict(snap["weights"])
        net.eval()
        s = replace(spec, name=f"{spec.name}-it{it}", max_iters=int(it), snapshots=(),
                    note=f"checkpoint at iteration {it} of {spec.name} ({spec.note})")
        f = dict(facts, best_dice=snap["val_dice"], best_iteration=int(it), iteration=int(it),
                 seconds=facts["seconds"] * int(it) / max(1, facts["iteration"]))
        yield s, net, f


# ----------------------------------------------------------------------------- export
def export(spec: Spec, net, facts: dict, out_dir: Path) -> Path:
    """ONNX (opset 17, dynamic batch and spatial axes, raw logits) + NAME.yaml sidecar."""
    import torch
    import yaml

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{spec.name}.onnx"
    example = torch.zeros(1, 1, 64, 64)
    how = export_onnx(net, example, onnx_path)
    verify_onnx(net, onnx_path, spec)
    m = 2 ** spec.depth
    rf = receptive_field(spec.depth)
    halo = int(math.ceil(rf / 4 / m) * m)  # effective RF is well below the theoretical one
    output_space = OUTPUT_SPACE[spec.structure]
    sidecar = {
        "name": spec.name,
        "axes": "bcyx",
        "input_name": "input",
        "output_name": "logits",
        "in_channels": 1,
        "out_channels": 2 if spec.head == "boundary" else 1,
        "task": "semantic" if spec.head == "semantic" else "instance",
        "activation": "sigmoid",
        "foreground_channel": 0,
        "output_space": output_space,
        "preprocessing": {"kind": "percentile", "low": 1.0, "high": 99.8},
        "tiling": {"multiple_of": [m, m], "minimum": [m, m], "halo": [halo, halo]},
    }
    if spec.head == "components":
        sidecar["postprocessing"] = {"kind": "components", "threshold": 0.5, "min_size": 16}
    elif spec.head == "boundary":
        sidecar["postprocessing"] = {"kind": "watershed", "threshold": 0.5, "min_size": 16,
                                     "boundary_channel": 1}
    sidecar["card"] = {
        "source_data": [f"{d}" + (f" (size_group {g})" if g else "") for d, g in spec.sources],
        "split": "train ids of benchmarks/bank/splits.json for those sources; model selection on "
                 "val ids; test ids never seen",
        "n_train_images": facts["n_train"],
        "architecture": f"2D U-Net, depth {spec.depth}, base {spec.base} channels, BatchNorm+ReLU, "
                        f"2 convs per level; bottleneck = module 'bottleneck'; receptive field {rf} px",
        "training": {
            "iterations_max": spec.max_iters, "iterations_run": facts["iteration"],
            "best_iteration": facts["best_iteration"], "batch": spec.batch, "crop": spec.crop,
            "optimizer": f"Adam lr {spec.lr}, cosine to {spec.lr * 0.05:g}", "loss": "BCE + Dice",
            "augmentation": "flips, 90-degree rotations" + (
                f"; small rotations (+-{15 * spec.geometric_aug:g} deg) and elastic deformation"
                if spec.geometric_aug > 0 else "") + (
                f"; intensity (contrast, brightness, gamma, Gaussian noise) strength {spec.intensity_aug}"
                if spec.intensity_aug > 0 else "; no intensity augmentation"),
            "dropout_in_training": spec.dropout,
            "early_stopping": f"val Dice every {spec.eval_every} it, patience {spec.patience}",
            "seed": spec.seed, "seconds": round(facts["seconds"]), "device": facts.get("device", "cpu"),
            "regime_note": spec.note,
        },
        "validation": {"metric": "median per-image foreground Dice at p>0.5 on central crops "
                                 f"(<=256 px) of {facts['n_val_crops']} val images",
                       "score": round(facts["best_dice"], 4)},
        "export": how,
        "trained_by": "benchmarks/bank/train.py",
    }
    yaml_path = out_dir / f"{spec.name}.yaml"
    yaml_path.write_text(yaml.safe_dump(sidecar, sort_keys=False, width=100))
    return onnx_path


def export_onnx(net, example, onnx_path: Path) -> str:
    """segrank's converter when it exists, else torch.onnx.export (TorchScript exporter)."""
    import torch

    try:
        from segrank.models.convert import torch_to_onnx  # noqa: F401  (written by another helper)
    except ImportError:
        torch_to_onnx = None
    if torch_to_onnx is not None:
        torch_to_onnx(net, onnx_path, example_shape=tuple(example.shape), input_name="input",
                      output_name="logits", opset=17)
        return "segrank.models.convert.torch_to_onnx, opset 17 (verified against torch)"
    torch.onnx.export(net, example, str(onnx_path), opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamo=False,
                      dynamic_axes={"input": {0: "batch", 2: "y", 3: "x"},
                                    "logits": {0: "batch", 2: "y", 3: "x"}})
    return "torch.onnx.export (TorchScript exporter), opset 17, checked against torch"


def verify_onnx(net, onnx_path: Path, spec: Spec) -> None:
    """onnx.checker + ONNX Runtime output equals torch on random inputs of two shapes."""
    import onnx
    import onnxruntime as ort
    import torch

    onnx.checker.check_model(onnx.load(str(onnx_path)))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    m = 2 ** spec.depth
    gen = np.random.default_rng(0)
    for shape in ((1, 1, 8 * m, 12 * m), (2, 1, 5 * m, 4 * m)):
        x = gen.normal(0.3, 0.3, shape).astype(np.float32)
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        got = sess.run(None, {"input": x})[0]
        err = float(np.abs(got - ref).max())
        if err > 1e-3:
            raise SystemExit(f"{onnx_path}: ONNX output differs from torch by {err:.2e}")


# ----------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("splits", help="write splits.json (or check that it matches the seed)")
    sub.add_parser("list", help="print every bank's model specs")
    t = sub.add_parser("train", help="train, export and write sidecars (resumable)")
    t.add_argument("--bank", required=True, nargs="+", choices=sorted(BANK_DIRS))
    t.add_argument("--only", nargs="*", help="model names (default: all of the bank)")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    t.add_argument("--jobs", type=int, default=1,
                   help="train this many models at once, one process each (logs in .work/<bank>/<model>/)")
    t.add_argument("--no-export", action="store_true",
                   help="train only; export later (e.g. train on a GPU machine, export here)")
    t.add_argument("--out", type=Path, help="bank folder (default: the bank's folder)")
    t.add_argument("--force-export", action="store_true", help="re-export finished models")
    args = p.parse_args(argv)

    if args.cmd == "splits":
        fresh = make_splits()
        if SPLITS.exists() and json.loads(SPLITS.read_text()) != fresh:
            raise SystemExit(f"{SPLITS}: differs from a fresh seeded split; refusing to overwrite")
        SPLITS.write_text(json.dumps(fresh, indent=1) + "\n")
        for d, e in fresh["datasets"].items():
            print(d, {k: len(e[k]) for k in ("train", "val", "test")})
        return 0
    if args.cmd == "list":
        for s in MODELS:
            print(s.bank, s.name, s.sources, f"iters={s.max_iters} aug={s.intensity_aug} "
                  f"drop={s.dropout} base={s.base} depth={s.depth} head={s.head}")
        return 0

    import torch

    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    load_splits()
    if args.out and len(args.bank) > 1:
        raise SystemExit("--out needs a single --bank")
    specs = [s for s in MODELS if s.bank in args.bank and (not args.only or s.name in args.only)]
    if args.only and len({s.name for s in specs}) != len(set(args.only)):
        raise SystemExit(f"unknown model(s) in --only for bank(s) {args.bank}")

    def log(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    def out_dir(spec):
        return args.out or BANK_DIRS[spec.bank]

    def exported(spec, name):
        return (out_dir(spec) / f"{name}.onnx").exists() and (out_dir(spec) / f"{name}.yaml").exists()

    def pending(spec):
        names = [spec.name] + [f"{spec.name}-it{it}" for it in spec.snapshots]
        return args.force_export or not all(exported(spec, n) for n in names)

    if args.jobs > 1:  # one child process per model, at most `jobs` at a time; export below
        todo = [s for s in specs if pending(s) and not (WORK / s.bank / s.name / "final.pt").exists()]
        running: list[tuple[Spec, subprocess.Popen]] = []
        failed = []
        while todo or running:
            while todo and len(running) < args.jobs:
                s = todo.pop(0)
                logfile = WORK / s.bank / s.name / "train.log"
                logfile.parent.mkdir(parents=True, exist_ok=True)
                cmd = [sys.executable, __file__, "train", "--bank", s.bank, "--only", s.name, "--no-export",
                       "--threads", str(args.threads), "--device", args.device]
                running.append((s, subprocess.Popen(cmd, stdout=open(logfile, "a"), stderr=subprocess.STDOUT)))
                log(f"{s.bank}/{s.name}: started")
            time.sleep(1)
            for s, proc in list(running):
                if proc.poll() is not None:
                    running.remove((s, proc))
                    log(f"{s.bank}/{s.name}: " + ("done" if proc.returncode == 0 else f"FAILED ({proc.returncode})"))
                    if proc.returncode:
                        failed.append(s)
        if failed:
            raise SystemExit(f"{len(failed)} model(s) failed: " + ", ".join(f"{s.bank}/{s.name}" for s in failed))

    for spec in specs:
        if not pending(spec):
            log(f"{spec.name}: exported already, skipped")
            continue
        facts, net = train(spec, device=args.device, log=log)
        if args.no_export:
            log(f"{spec.bank}/{spec.name}: trained, val dice {facts['best_dice']:.4f} (not exported)")
            continue
        out_dir_ = out_dir(spec)
        path = export(spec, net, facts, out_dir_)
        log(f"{spec.name}: exported {path} ({path.stat().st_size / 1e6:.2f} MB), "
            f"val dice {facts['best_dice']:.4f}")
        for s, n, f in snapshot_models(spec, net, facts):
            path = export(s, n, f, out_dir_)
            log(f"{s.name}: exported {path}, val dice {f['best_dice']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
