"""Tiny U-Net-like ONNX graphs built with onnx.helper, with named tensors to check against."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def unet(
    path: Path | None = None,
    *,
    ndim: int = 2,
    in_channels: int = 1,
    out_channels: int = 1,
    base: int = 4,
    depth: int = 2,
    up: str = "resize",
    final: str | None = "sigmoid",
    dynamic: bool = True,
    size: int = 32,
    opset: int = 17,
    seed: int = 0,
    se: bool = False,
) -> onnx.ModelProto:
    """A U-Net: per level Conv-Relu (skip "enc{l}"), MaxPool; bottleneck Conv-Relu "bottleneck";
    per level up (Resize x2 or ConvTranspose k2 s2) -> Concat skip -> Conv-Relu "dec{l}";
    1x1 Conv "logits"; optional final Sigmoid/Softmax "probs". Output name "output".

    Channels double each level (base, 2 base, ...). With `se`, each encoder level gets a
    squeeze-and-excitation gate (GlobalAveragePool -> 1x1 Conv -> Sigmoid -> Mul) whose 1x1
    tensors are coarser than the bottleneck. Saved to `path` when given.
    """
    gen = np.random.default_rng(seed)
    inits: list = []
    nodes: list = []
    k = [3] * ndim
    pads = [1] * (2 * ndim)

    def weight(name, shape):
        fan_in = int(np.prod(shape[1:]))
        inits.append(numpy_helper.from_array((gen.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name))
        return name

    def conv_relu(x, cin, cout, name):
        w = weight(f"{name}_w", [cout, cin] + k)
        b = weight(f"{name}_b", [cout])
        nodes.append(helper.make_node("Conv", [x, w, b], [f"{name}_conv"], kernel_shape=k, pads=pads))
        nodes.append(helper.make_node("Relu", [f"{name}_conv"], [name]))
        return name

    x, c = "input", in_channels
    skips = []
    for level in range(depth):
        cout = base * 2**level
        x = conv_relu(x, c, cout, f"enc{level}")
        if se:
            nodes.append(helper.make_node("GlobalAveragePool", [x], [f"se{level}_pool"]))
            w = weight(f"se{level}_w", [cout, cout] + [1] * ndim)
            nodes.append(helper.make_node("Conv", [f"se{level}_pool", w], [f"se{level}_fc"], kernel_shape=[1] * ndim))
            nodes.append(helper.make_node("Sigmoid", [f"se{level}_fc"], [f"se{level}_gate"]))
            nodes.append(helper.make_node("Mul", [x, f"se{level}_gate"], [f"enc{level}_se"]))
            x = f"enc{level}_se"
        skips.append((x, cout))
        nodes.append(helper.make_node("MaxPool", [x], [f"pool{level}"], kernel_shape=[2] * ndim, strides=[2] * ndim))
        x, c = f"pool{level}", cout
    cout = base * 2**depth
    x = conv_relu(x, c, cout, "bottleneck")
    c = cout
    for level in reversed(range(depth)):
        skip, cs = skips[level]
        if up == "resize":
            scales = f"scales{level}"
            inits.append(numpy_helper.from_array(np.array([1, 1] + [2] * ndim, np.float32), scales))
            nodes.append(helper.make_node("Resize", [x, "", scales], [f"up{level}"], mode="nearest"))
            cu = c
        else:
            w = weight(f"up{level}_w", [c, cs] + [2] * ndim)
            nodes.append(helper.make_node("ConvTranspose", [x, w], [f"up{level}"], kernel_shape=[2] * ndim, strides=[2] * ndim))
            cu = cs
        nodes.append(helper.make_node("Concat", [f"up{level}", skip], [f"cat{level}"], axis=1))
        x = conv_relu(f"cat{level}", cu + cs, cs, f"dec{level}")
        c = cs
    w = weight("head_w", [out_channels, c] + [1] * ndim)
    b = weight("head_b", [out_channels])
    last = "output" if final is None else "logits"
    nodes.append(helper.make_node("Conv", [x, w, b], [last], kernel_shape=[1] * ndim))
    if final == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["output"]))
    elif final == "softmax":
        nodes.append(helper.make_node("Softmax", ["logits"], ["output"], axis=1))

    spatial = (["z", "y", "x"][-ndim:] if dynamic else [size] * ndim)
    batch = "N" if dynamic else 1
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, in_channels] + spatial)
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, out_channels] + spatial)
    graph = helper.make_graph(nodes, "unet", [inp], [out], inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, str(path))
    return model


def expose(proto: onnx.ModelProto, names: list[str], elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """A copy with the named intermediate tensors added as graph outputs."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for name in names:
        out.graph.output.append(helper.make_tensor_value_info(name, elem_type, None))
    return out


def run(proto_or_path, feeds: dict, outputs: list[str] | None = None) -> list[np.ndarray]:
    """Run on CPU with one thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    src = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path)
    session = ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
    return session.run(outputs, feeds)


def make_model(graph: onnx.GraphProto, *, opset_imports) -> onnx.ModelProto:
    """helper.make_model with the lowest IR version the opsets need (ONNX Runtime may lag onnx)."""
    model = helper.make_model(graph, opset_imports=opset_imports)
    model.ir_version = helper.find_min_ir_version_for(list(opset_imports))
    return model
