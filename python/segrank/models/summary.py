"""What `segrank inspect` prints: a model's description, its graph and its dropout candidates."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from onnx import helper

from .description import Model
from .greybox import Analysis, analyse
from .onnx_graph import default_opset, graph_inputs, read_onnx, value_dims


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    return value


def _tensor(vi) -> dict:
    t = vi.type.tensor_type
    try:
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name
    except Exception:
        dtype = str(t.elem_type)
    dims = value_dims(vi)
    return {"name": vi.name, "shape": list(dims) if dims is not None else None, "dtype": dtype}


def describe(model: Model, analysis: Analysis | None = None) -> dict:
    """A JSON-ready mapping: the description fields plus inputs, outputs, bottleneck, candidates."""
    proto = read_onnx(model.path)
    analysis = analysis if analysis is not None else analyse(model)
    data = {f.name: _plain(getattr(model, f.name)) for f in fields(model)}
    data["ndim"] = model.ndim
    data["opset"] = default_opset(proto)
    data["inputs"] = [_tensor(vi) for vi in graph_inputs(proto)]
    data["outputs"] = [_tensor(vi) for vi in proto.graph.output]
    data["probe_input_shape"] = list(analysis.input_shape)
    data["bottleneck"] = analysis.bottleneck
    data["bottleneck_problem"] = analysis.problem
    data["every_level"] = list(analysis.levels)
    data["candidates"] = [
        {
            "name": c.name,
            "shape": list(c.shape),
            "channels": c.channels,
            "op": c.op,
            "side": c.side,
            "bottleneck": c.name == analysis.bottleneck,
            "level": c.name in analysis.levels,
        }
        for c in analysis.candidates
    ]
    return data


def format_text(data: dict) -> str:
    """The human-readable form of `describe`'s mapping."""
    lines = [f"model        {data['name']}  ({data['source']}, {data['path']})"]
    lines.append(f"axes         {data['axes']}  in {data['in_channels']} ch -> out {data['out_channels']} ch, opset {data['opset']}")
    for key in ("inputs", "outputs"):
        for t in data[key]:
            lines.append(f"{key[:-1]:<12} {t['name']}  {t['shape']}  {t['dtype']}")
    pre = data["preprocessing"]
    pre_text = {
        "percentile": f"percentile {pre['low']} / {pre['high']}",
        "zero_mean_unit_variance": "zero mean, unit variance" + (f" (mean {pre['mean']}, std {pre['std']})" if pre["mean"] is not None else ""),
        "scale_linear": f"x * {pre['gain']} + {pre['offset']}",
        "none": "none",
    }.get(pre["kind"], pre["kind"])
    lines.append(f"preprocess   {pre_text}")
    lines.append(f"activation   {data['activation']}, foreground channel {data['foreground_channel']}")
    post = data["postprocessing"]
    lines.append(f"task         {data['task']}, output space {data['output_space']!r}, post-processing {post['kind']}"
                 + (f" (threshold {post['threshold']}, min size {post['min_size']})" if post["kind"] != "none" else ""))
    t = data["tiling"]
    tiling = f"fixed {t['fixed']}" if t["fixed"] else f"multiple of {t['multiple_of']}, minimum {t['minimum']}"
    lines.append(f"tiling       {tiling}, halo {t['halo']}")
    if data.get("dropout_input"):
        lines.append(f"grey-box     mask input {data['dropout_input']!r} on {data['dropout_tensor']} ({data['dropout_levels']} channels)")
    for text in data["assumptions"]:
        lines.append(f"assumed      {text}")
    lines.append(f"candidates   at probe input {data['probe_input_shape']} ('*' = auto's bottleneck, '+' = every-level)")
    for c in data["candidates"]:
        mark = "*" if c["bottleneck"] else "+" if c["level"] else " "
        lines.append(f"  {mark} {c['name']:<40} {str(c['shape']):<22} {c['op']:<16} {c['side']}")
    if data["bottleneck"]:
        lines.append(f"bottleneck   {data['bottleneck']}")
    else:
        lines.append(f"bottleneck   none: {data['bottleneck_problem']}")
    return "\n".join(lines)
