"""Tiny ONNX models with known behaviour and small synthetic images, built inside the tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import tifffile
import yaml
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(nodes, inits, path: Path, *, ndim: int = 2, out_channels: int = 1) -> Path:
    spatial = ["h", "w"] if ndim == 2 else ["d", "h", "w"]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1] + spatial)
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", out_channels] + spatial)
    graph = helper.make_graph(nodes, path.stem, [x], [y], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return path


def smooth_threshold_model(path: Path, *, level: float = 0.5, gain: float = 20.0, size: int = 5, ndim: int = 2) -> Path:
    """logits = gain * (mean over a size^ndim window of x - level): averaging makes it robust to noise."""
    k = np.full((1, 1) + (size,) * ndim, 1.0 / size**ndim, np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "k"], ["avg"], pads=[size // 2] * (2 * ndim)),
        helper.make_node("Sub", ["avg", "level"], ["centered"]),
        helper.make_node("Mul", ["centered", "gain"], ["logits"]),
    ]
    inits = {"k": k, "level": np.array(level, np.float32), "gain": np.array(gain, np.float32)}
    return _save(nodes, inits, path, ndim=ndim)


def pixel_threshold_model(path: Path, *, level: float = 0.05, gain: float = 50.0) -> Path:
    """logits = gain * (x - level) per pixel, with the threshold near background: noise flips it."""
    nodes = [helper.make_node("Sub", ["input", "level"], ["c"]), helper.make_node("Mul", ["c", "gain"], ["logits"])]
    return _save(nodes, {"level": np.array(level, np.float32), "gain": np.array(gain, np.float32)}, path)


def bottleneck_model(path: Path, *, weights: np.ndarray, bias: float = -10.0) -> Path:
    """A 2-level U-Net-like graph: C identical averaged channels -> MaxPool -> bottleneck Relu ->
    nearest Resize x2 -> 1x1 Conv with the given per-channel weights. Equal weights make channel
    dropout (with 1/(1-p) rescaling) an exact no-op; alternating large weights make it fragile."""
    channels = len(weights)
    k = np.full((channels, 1, 3, 3), 1.0 / 9, np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "k"], ["enc"], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["enc"], ["down"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["down"], ["bottleneck"]),
        helper.make_node("Resize", ["bottleneck", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Conv", ["up", "w", "b"], ["logits"]),
    ]
    inits = {
        "k": k,
        "scales": np.array([1, 1, 2, 2], np.float32),
        "w": np.asarray(weights, np.float32).reshape(1, channels, 1, 1),
        "b": np.array([bias], np.float32),
    }
    return _save(nodes, inits, path)


def nan_model(path: Path) -> Path:
    """Sqrt of a negative number: NaN everywhere."""
    nodes = [helper.make_node("Sub", ["input", "big"], ["neg"]), helper.make_node("Sqrt", ["neg"], ["logits"])]
    return _save(nodes, {"big": np.array(100.0, np.float32)}, path)


def write_sidecar(onnx_path: Path, **fields) -> None:
    doc = {
        "name": onnx_path.stem,
        "axes": "bcyx",
        "task": "semantic",
        "activation": "sigmoid",
        "output_space": "blobs",
        "preprocessing": {"kind": "percentile", "low": 1.0, "high": 99.8},
        "tiling": {"multiple_of": [2, 2], "minimum": [2, 2], "halo": [8, 8]},
    }
    doc.update(fields)
    onnx_path.with_suffix(".yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def blob_image(seed: int, shape=(96, 96), n=6, radius=(5, 10)) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image of bright disks on a dark background and its instance labels."""
    gen = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint16)
    grid = np.indices(shape)
    for i in range(1, n + 1):
        c = gen.uniform(12, np.array(shape) - 12)
        r = gen.uniform(*radius)
        inside = sum((g - ci) ** 2 for g, ci in zip(grid, c)) <= r * r
        labels[inside & (labels == 0)] = i
    image = np.where(labels > 0, 180, 20) + gen.normal(0, 4, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


