"""Tiny fully convolutional ONNX models with a known receptive field, built with onnx.helper."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from segrank.models.description import Model, Preprocessing, Tiling


def conv_net(
    path: Path,
    *,
    ndim: int = 2,
    in_channels: int = 1,
    out_channels: int = 1,
    hidden: int = 4,
    layers: int = 2,
    dropout: bool = False,
    fixed_batch: int | None = None,
    seed: int = 0,
) -> Path:
    """`layers` same-padded 3^ndim convolutions with ReLU between: receptive radius = `layers`.

    With `dropout`, a second input "mask" [N, hidden, 1, ...] multiplies the first hidden
    features (the grey-box channel mask).
    """
    gen = np.random.default_rng(seed)
    batch = fixed_batch if fixed_batch is not None else "N"
    spatial = ["Z", "Y", "X"][-ndim:]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, in_channels, *spatial])]
    nodes, inits = [], []
    current, channels = "input", in_channels
    for i in range(layers):
        out_c = out_channels if i == layers - 1 else hidden
        w = gen.normal(0, 0.5, size=(out_c, channels) + (3,) * ndim).astype(np.float32)
        b = gen.normal(0, 0.1, size=out_c).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        name = f"conv{i}"
        nodes.append(helper.make_node("Conv", [current, f"w{i}", f"b{i}"], [name], pads=[1] * (2 * ndim)))
        current = name
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [current], [f"relu{i}"]))
            current = f"relu{i}"
            if dropout and i == 0:
                inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [batch, hidden] + [1] * ndim))
                nodes.append(helper.make_node("Mul", [current, "mask"], ["masked"]))
                current = "masked"
        channels = out_c
    nodes.append(helper.make_node("Identity", [current], ["output"]))
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, out_channels, *spatial])]
    graph = helper.make_graph(nodes, "conv_net", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def conv_model(path: Path, *, ndim: int = 2, name: str = "conv", activation: str = "sigmoid",
               preprocessing: Preprocessing | None = None, tiling: Tiling | None = None, **net) -> Model:
    """A `Model` description of `conv_net(path, ...)`."""
    conv_net(path, ndim=ndim, **net)
    return Model(
        name=name,
        path=Path(path),
        input_name="input",
        output_name="output",
        axes="bcyx" if ndim == 2 else "bczyx",
        in_channels=net.get("in_channels", 1),
        out_channels=net.get("out_channels", 1),
        activation=activation,
        preprocessing=preprocessing or Preprocessing(kind="percentile", low=1.0, high=99.8),
        tiling=tiling or Tiling(),
        dropout_input="mask" if net.get("dropout") else None,
        dropout_channels=net.get("hidden", 4) if net.get("dropout") else None,
    )


def reference_prediction(model: Model, image: np.ndarray, *, pad: int, activation=True) -> np.ndarray:
    """Whole-image prediction computed independently of segrank's blocking.

    `image` is channel-first and already normalised; it is reflect-padded by `pad` on every
    spatial side, run in one go and cropped.
    """
    import onnxruntime as ort
    from scipy.special import expit, softmax

    sess = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    nd = image.ndim - 1
    x = np.pad(image, [(0, 0)] + [(pad, pad)] * nd, mode="reflect")[None].astype(np.float32)
    feeds = {"input": x}
    if model.dropout_input:
        feeds["mask"] = np.ones((1, model.dropout_channels) + (1,) * nd, np.float32)
    y = sess.run(["output"], feeds)[0][0]
    y = y[(slice(None),) + (slice(pad, -pad if pad else None),) * nd]
    if not activation or model.activation == "none":
        return y
    return expit(y) if model.activation == "sigmoid" else softmax(y, axis=0)
