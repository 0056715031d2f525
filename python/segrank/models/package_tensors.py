"""The input and output tensors of a bioimage.io model description, spec 0.4 and 0.5 alike."""
from __future__ import annotations

from pathlib import Path

from ..errors import ModelError


class PackageTensor:
    """One input/output tensor, spec-version independent."""

    def __init__(self, ident, axes, sizes, halo, channels, test, test_sha, pre, post, data_range):
        self.id, self.axes, self.sizes, self.halo = ident, axes, sizes, halo
        self.channels, self.test, self.test_sha = channels, test, test_sha
        self.pre, self.post, self.data_range = pre, post, data_range


def tensors_v04(rdf: Path, data: dict) -> tuple[list[PackageTensor], list[PackageTensor]]:
    """(inputs, outputs) of a spec 0.4 description (an output's shape may refer to an input)."""
    def one(t: dict, index: int, tests: list, inputs: dict) -> PackageTensor:
        axes = str(t.get("axes", ""))
        shape = t.get("shape")
        sizes: list = []
        channels = None
        if isinstance(shape, list):
            sizes = [int(s) for s in shape]
        elif isinstance(shape, dict) and "min" in shape:
            sizes = [{"min": int(m), "step": int(s)} for m, s in zip(shape["min"], shape["step"])]
        elif isinstance(shape, dict) and "reference_tensor" in shape:
            ref = inputs.get(shape["reference_tensor"])
            scale, offset = shape.get("scale", []), shape.get("offset", [])
            if ref is not None and "c" in axes and "c" in ref.axes:
                ci = axes.index("c")
                if ci < len(scale) and ci < len(offset) and ref.channels is not None:
                    channels = int(round(ref.channels * float(scale[ci]) + 2 * float(offset[ci])))
            sizes = [None] * len(axes)
        if "c" in axes and channels is None and sizes:
            s = sizes[axes.index("c")]
            channels = s if isinstance(s, int) else (s["min"] if isinstance(s, dict) and s["step"] == 0 else None)
        halo_list = t.get("halo") or []
        halo = {a: int(h) for a, h in zip(axes, halo_list) if a in "zyx"}
        test = tests[index] if index < len(tests) else None
        data_range = t.get("data_range")
        return PackageTensor(t.get("name"), axes, sizes, halo, channels, test, None, t.get("preprocessing"), t.get("postprocessing"), data_range)

    ins: dict = {}
    inputs = []
    for i, t in enumerate(data.get("inputs") or []):
        tensor = one(t, i, data.get("test_inputs") or [], ins)
        ins[tensor.id] = tensor
        inputs.append(tensor)
    outputs = [one(t, i, data.get("test_outputs") or [], ins) for i, t in enumerate(data.get("outputs") or [])]
    return inputs, outputs


def tensors_v05(rdf: Path, data: dict) -> tuple[list[PackageTensor], list[PackageTensor]]:
    """(inputs, outputs) of a spec 0.5 description (typed axes: batch, channel, space)."""
    def one(t: dict) -> PackageTensor:
        letters, sizes, halo, channels = [], [], {}, None
        for axis in t.get("axes") or []:
            kind = axis.get("type")
            if kind == "batch":
                letters.append("b")
                sizes.append(axis.get("size"))
            elif kind == "channel":
                letters.append("c")
                channels = len(axis.get("channel_names") or [])
                sizes.append(channels)
            elif kind == "space":
                ident = str(axis.get("id", "x"))
                if ident not in ("x", "y", "z"):
                    raise ModelError(f"{rdf}: space axis {ident!r} of tensor {t.get('id')!r} is not x, y or z")
                letters.append(ident)
                size = axis.get("size")
                if isinstance(size, dict) and "min" in size:
                    size = {"min": int(size["min"]), "step": int(size.get("step", 0))}
                elif isinstance(size, dict):
                    size = None  # a reference to another tensor's axis
                sizes.append(size)
                if axis.get("halo"):
                    halo[ident] = int(axis["halo"])
            else:
                raise ModelError(f"{rdf}: axis type {kind!r} of tensor {t.get('id')!r} is not supported (batch, channel, space)")
        test = t.get("test_tensor") or {}
        data_range = (t.get("data") or {}).get("range") if isinstance(t.get("data"), dict) else None
        return PackageTensor(
            t.get("id"), "".join(letters), sizes, halo, channels, test.get("source"), test.get("sha256"),
            t.get("preprocessing"), t.get("postprocessing"), data_range,
        )

    return [one(t) for t in data.get("inputs") or []], [one(t) for t in data.get("outputs") or []]
