"""A `Model` from an ONNX file: declared fields from a sidecar or package, the rest inferred.

Inference from the graph (each inferred value is an assumption, warned once and kept in
`Model.assumptions`):

- axes: rank 4 -> "bcyx", rank 5 -> "bczyx" (channels first);
- channels: the fixed sizes of the input / output channel axis (else 1 in, probed out);
- activation: "none" when the output comes straight from a Sigmoid or Softmax, else "sigmoid";
- foreground channel: 1 for a 2-channel Softmax output (channel 0 = background), else 0;
- preprocessing: percentile 1 / 99.8; task: semantic; output space: "foreground";
- tiling: the fixed spatial input shape if there is one, else multiple-of and minimum = the
  graph's total downsampling factor (found by shape inference), halo = max(16, factor).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import onnx

from ..errors import ModelError
from .description import Model, Postprocessing, Preprocessing, Tiling
from .onnx_graph import (
    FLOAT_TYPES,
    final_activation,
    globally_pooled,
    graph_inputs,
    read_onnx,
    tensor_shapes,
    value_dims,
)
from .untrusted import sha256_file

META_DROPOUT_INPUT = "segrank.dropout_input"
META_DROPOUT_TENSORS = "segrank.dropout_tensors"
META_DROPOUT_LEVELS = "segrank.dropout_levels"
PROBE_SIZE = {2: 64, 3: 32}  # spatial size used to probe shapes when the input is dynamic
DEFAULT_AXES = {4: "bcyx", 5: "bczyx"}


class ModelAssumptionWarning(UserWarning):
    """A description value segrank had to assume (bare ONNX, incomplete sidecar or package)."""


def probe_shape(axes: str, in_channels: int, tiling: Tiling) -> tuple[int, ...]:
    """An input shape the model accepts: batch 1, its channels, a valid spatial size."""
    ndim = sum(a in "zyx" for a in axes)
    if tiling.fixed:
        spatial = list(tiling.fixed)
    else:
        spatial = []
        for i in range(ndim):
            size = PROBE_SIZE.get(ndim, 32)
            if tiling.minimum:
                size = max(size, tiling.minimum[i])
            step = tiling.multiple_of[i] if tiling.multiple_of else 1
            spatial.append(-(-size // step) * step if step > 1 else size)
    shape, s = [], iter(spatial)
    for a in axes:
        shape.append(1 if a == "b" else in_channels if a == "c" else next(s))
    return tuple(shape)


def _metadata(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def _factor(infos, shape: tuple[int, ...], axes: str, pooled: set[str] = frozenset()) -> tuple[int, ...] | None:
    """Total downsampling per spatial axis: input size / smallest size of any same-rank tensor
    (global-pooling gates excluded)."""
    spatial = [i for i, a in enumerate(axes) if a in "zyx"]
    best = [1] * len(spatial)
    seen = False
    for info in infos.values():
        if info.name in pooled or info.shape is None or len(info.shape) != len(shape) or info.elem_type not in FLOAT_TYPES:
            continue
        seen = True
        for k, i in enumerate(spatial):
            size = info.shape[i]
            if 0 < size < shape[i] and shape[i] % size == 0:
                best[k] = max(best[k], shape[i] // size)
    return tuple(best) if seen else None


class _Assumptions:
    """What `load_onnx` had to assume, in order: the texts warned and the fields they fill."""

    def __init__(self, notes: tuple[tuple[str, str], ...]) -> None:
        self.texts: list[str] = [text for _, text in notes]
        self.fields: list[str] = [field for field, _ in notes]

    def add(self, field: str, text: str) -> None:
        self.fields.append(field)
        self.texts.append(text)


def load_onnx(
    path: Path,
    *,
    name: str | None = None,
    declared: dict | None = None,
    source: str = "onnx",
    root: Path | None = None,
    package: Path | None = None,
    notes: tuple[tuple[str, str], ...] = (),
) -> Model:
    """Describe the ONNX file at `path`.

    Parameters
    ----------
    path : Path
        The .onnx file.
    name : str, optional
        Overrides the declared name and the file stem.
    declared : dict, optional
        Model fields declared by a sidecar or package; everything else is inferred.
    source : str
        "onnx", "sidecar" or "bioimageio" (recorded in `Model.source`).
    root : Path, optional
        Folder external-data files must lie in (the package for bioimage.io).
    notes : tuple of (field, text)
        Assumptions the caller already made (warned here with the others).
    """
    path = Path(path)
    declared = dict(declared or {})
    proto = read_onnx(path, root=root)
    name = name or declared.get("name") or path.stem
    assumed = _Assumptions(notes)

    dropout_input = _metadata(proto).get(META_DROPOUT_INPUT) or None
    image_input = _image_input(path, proto, dropout_input, declared_name=declared.get("input_name"))
    output = _output(path, proto, declared.get("output_name"), assumed)
    dims, out_dims = _input_dims(path, image_input), value_dims(output)
    axes = _axes(path, dims, out_dims, declared.get("axes"), assumed, input_name=image_input.name, output_name=output.name)
    in_channels = _in_channels(path, declared.get("in_channels"), dims, axes, assumed)

    fixed = _fixed_spatial(dims, axes)
    tiling = declared.get("tiling")
    out_channels = _graph_out_channels(declared.get("out_channels"), out_dims, axes)
    if out_channels is None or tiling is None:
        shape = probe_shape(axes, in_channels, tiling or Tiling(fixed=fixed))
        infos = _probed_shapes(proto, path, shape, image_name=image_input.name, dropout_input=dropout_input, root=root, assumed=assumed)
        if out_channels is None:
            out_channels = _probed_out_channels(infos, output.name, axes, assumed)
        if tiling is None:
            tiling = _inferred_tiling(proto, infos, shape, axes, fixed=fixed, assumed=assumed)

    ends_in = final_activation(proto, output.name)
    activation = _activation(declared.get("activation"), ends_in, assumed)
    foreground = _foreground_channel(
        path, declared.get("foreground_channel"), ends_in=ends_in, activation=activation, out_channels=out_channels, assumed=assumed
    )
    defaulted = _defaulted_fields(declared, assumed)
    dropout = _dropout_fields(path, proto, dropout_input)

    try:
        model = Model(
            name=str(name),
            path=path,
            input_name=image_input.name,
            output_name=output.name,
            axes=axes,
            in_channels=int(in_channels),
            out_channels=int(out_channels),
            activation=activation,
            foreground_channel=int(foreground),
            tiling=tiling,
            assumptions=tuple(assumed.texts),
            assumed_fields=tuple(dict.fromkeys(assumed.fields)),
            source=source,
            sha256=sha256_file(path),
            package=package,
            test_inputs=tuple(declared.get("test_inputs", ())),
            test_outputs=tuple(declared.get("test_outputs", ())),
            card=declared.get("card"),
            **defaulted,
            **dropout,
        )
    except ValueError as err:
        raise ModelError(f"{path}: {err}") from None
    warn_assumptions(model)
    return model


def _image_input(path: Path, proto: onnx.ModelProto, dropout_input: str | None, *, declared_name: str | None) -> onnx.ValueInfoProto:
    """The one float graph input the image is fed to (a rewritten graph's mask input set aside)."""
    inputs = graph_inputs(proto)
    if dropout_input is not None and dropout_input not in {vi.name for vi in inputs}:
        raise ModelError(f"{path}: metadata names dropout input {dropout_input!r}, which the graph lacks")
    feeds = [vi for vi in inputs if vi.name != dropout_input]
    if not feeds:
        raise ModelError(f"{path}: the graph has no input")
    if len(feeds) > 1:
        names = ", ".join(vi.name for vi in feeds)
        raise ModelError(f"{path}: the graph has {len(feeds)} inputs ({names}); segrank feeds exactly one image input")
    image_input = feeds[0]
    if declared_name not in (None, image_input.name):
        raise ModelError(f"{path}: declared input_name {declared_name!r} is not the graph input {image_input.name!r}")
    if image_input.type.tensor_type.elem_type not in FLOAT_TYPES:
        raise ModelError(f"{path}: input {image_input.name!r} is not a float tensor")
    return image_input


def _output(path: Path, proto: onnx.ModelProto, declared_name: str | None, assumed: _Assumptions) -> onnx.ValueInfoProto:
    """The graph output segrank reads: the declared one, else the first (assumed if there are more)."""
    outputs = list(proto.graph.output)
    if declared_name is not None:
        match = [o for o in outputs if o.name == declared_name]
        if not match:
            raise ModelError(f"{path}: declared output_name {declared_name!r} is not a graph output ({', '.join(o.name for o in outputs)})")
        return match[0]
    output = outputs[0]
    if len(outputs) > 1:
        assumed.add("output_name", f"uses output {output.name!r}, the first of {len(outputs)} ({', '.join(o.name for o in outputs)})")
    return output


def _input_dims(path: Path, image_input: onnx.ValueInfoProto) -> tuple:
    """The image input's dims (ints, or names for dynamic sizes); its rank must be declared."""
    dims = value_dims(image_input)
    if dims is None:
        raise ModelError(f"{path}: input {image_input.name!r} has no declared rank; give axes in a sidecar")
    return dims


def _axes(
    path: Path, dims: tuple, out_dims: tuple | None, declared_axes: str | None, assumed: _Assumptions, *, input_name: str, output_name: str
) -> str:
    """The axes letters, declared or channels first by rank, that the input and output both follow."""
    axes = declared_axes
    if axes is None:
        if len(dims) not in DEFAULT_AXES:
            raise ModelError(f"{path}: input {input_name!r} has rank {len(dims)}; give its axes (e.g. 'bcyx') in a sidecar")
        axes = DEFAULT_AXES[len(dims)]
        assumed.add("axes", f"axes {axes!r} (channels first, from input rank {len(dims)})")
    elif len(axes) != len(dims):
        raise ModelError(f"{path}: declared axes {axes!r} do not match the input rank {len(dims)}")
    if not set("yx") <= set(axes):
        raise ModelError(f"{path}: axes {axes!r} lack y and x; segrank segments 2D or 3D images")
    if out_dims is not None and len(out_dims) != len(dims):
        raise ModelError(f"{path}: output {output_name!r} has rank {len(out_dims)} but the input has {len(dims)}; segrank needs both on the axes {axes!r}")
    return axes


def _in_channels(path: Path, declared_channels: int | None, dims: tuple, axes: str, assumed: _Assumptions) -> int:
    """Input channels: declared (checked against a fixed channel axis), else the axis size, else 1."""
    c = axes.find("c")
    if declared_channels is None:
        if c >= 0 and isinstance(dims[c], int):
            return dims[c]
        if c >= 0:
            assumed.add("in_channels", "1 input channel (the channel axis is dynamic)")
        return 1
    if c >= 0 and isinstance(dims[c], int) and dims[c] != declared_channels:
        raise ModelError(f"{path}: declared in_channels {declared_channels} but the graph input has {dims[c]}")
    return declared_channels


def _fixed_spatial(dims: tuple, axes: str) -> tuple[int, ...] | None:
    """The input's spatial sizes when all are fixed in the graph, else None."""
    spatial_idx = [i for i, a in enumerate(axes) if a in "zyx"]
    return tuple(dims[i] for i in spatial_idx) if all(isinstance(dims[i], int) for i in spatial_idx) else None


def _graph_out_channels(declared_channels: int | None, out_dims: tuple | None, axes: str) -> int | None:
    """Output channels: declared, else the output's fixed channel axis size, else None (probe)."""
    c = axes.find("c")
    if declared_channels is None and c >= 0 and out_dims is not None and isinstance(out_dims[c], int):
        return out_dims[c]
    return declared_channels


def _probed_shapes(
    proto: onnx.ModelProto, path: Path, shape: tuple[int, ...], *, image_name: str, dropout_input: str | None, root: Path | None, assumed: _Assumptions
) -> dict:
    """Tensor shapes with the image input at `shape` (a mask input all ones); empty, and assumed, when the run fails."""
    base = Path(root) if root is not None else path.parent
    feeds = {image_name: shape, **_dropout_feed(proto, dropout_input)}
    try:
        infos, _ = tensor_shapes(proto, base, feeds, want_rank=len(shape))
    except Exception as err:  # a probe that fails must not stop loading: assume instead
        assumed.add("out_channels", f"could not run the graph on a probe input of shape {shape} ({type(err).__name__})")
        return {}
    return infos


def _probed_out_channels(infos: dict, output_name: str, axes: str, assumed: _Assumptions) -> int:
    """Output channels from the probed output shape, else 1 (assumed)."""
    c = axes.find("c")
    info = infos.get(output_name)
    if c >= 0 and info is not None and info.shape is not None and len(info.shape) == len(axes):
        return info.shape[c]
    assumed.add("out_channels", "1 output channel (could not infer it)")
    return 1


def _inferred_tiling(
    proto: onnx.ModelProto, infos: dict, shape: tuple[int, ...], axes: str, *, fixed: tuple[int, ...] | None, assumed: _Assumptions
) -> Tiling:
    """Tiling from the graph: its fixed shape, else multiples of its total downsampling factor."""
    factor = _factor(infos, shape, axes, globally_pooled(proto.graph, infos, len(shape))) if infos else None
    if fixed is not None:
        halo = tuple(min(max(16, f), s // 4) for f, s in zip(factor or (16,) * len(fixed), fixed))
        assumed.add("tiling", f"tiling: fixed spatial shape {fixed} from the graph input, halo {list(halo)}")
        return Tiling(fixed=fixed, halo=halo)
    if factor is None:
        factor = (16,) * sum(a in "zyx" for a in axes)
        assumed.add("tiling", "tiling: multiple of 16 (could not infer the downsampling factor)")
    halo = tuple(max(16, f) for f in factor)
    assumed.add("tiling", f"tiling: multiple of {list(factor)}, minimum {list(factor)}, halo {list(halo)}")
    return Tiling(minimum=factor, multiple_of=factor, halo=halo)


def _activation(declared_activation: str | None, ends_in: str | None, assumed: _Assumptions) -> str:
    """The activation segrank applies: declared, else none after a final Sigmoid/Softmax, else sigmoid."""
    if declared_activation is not None:
        return declared_activation
    if ends_in is not None:
        assumed.add("activation", f"activation 'none': the graph output already ends in {ends_in.capitalize()}")
        return "none"
    assumed.add("activation", "activation 'sigmoid' on the raw output (the graph does not end in Sigmoid/Softmax)")
    return "sigmoid"


def _foreground_channel(
    path: Path, declared_channel: int | None, *, ends_in: str | None, activation: str, out_channels: int, assumed: _Assumptions
) -> int:
    """The foreground channel: declared, else 1 of a 2-channel softmax (0 = background), else 0."""
    foreground = declared_channel
    if foreground is None:
        foreground = 1 if (ends_in == "softmax" or activation == "softmax") and out_channels == 2 else 0
        if out_channels > 1:
            assumed.add("foreground_channel", f"foreground channel {foreground} of {out_channels}")
    if not 0 <= foreground < out_channels:
        raise ModelError(f"{path}: foreground_channel {foreground} is outside the {out_channels} output channels")
    return foreground


def _defaulted_fields(declared: dict, assumed: _Assumptions) -> dict:
    """Task, output space, pre- and post-processing: declared, else segrank's defaults (assumed)."""
    task = declared.get("task")
    if task is None:
        task = "semantic"
        assumed.add("task", "task 'semantic'")
    output_space = declared.get("output_space")
    if output_space is None:
        output_space = "foreground"
        assumed.add("output_space", "output space 'foreground'")
    preprocessing = declared.get("preprocessing")
    if preprocessing is None:
        preprocessing = Preprocessing()
        assumed.add("preprocessing", "preprocessing: percentile scaling 1 / 99.8")
    postprocessing = declared.get("postprocessing")
    if postprocessing is None:
        postprocessing = Postprocessing(kind="components") if task == "instance" else Postprocessing()
        if task == "instance":
            assumed.add("postprocessing", "post-processing: connected components of p > 0.5")
    return {"task": task, "output_space": output_space, "preprocessing": preprocessing, "postprocessing": postprocessing}


def _dropout_fields(path: Path, proto: onnx.ModelProto, dropout_input: str | None) -> dict:
    """The `Model` dropout fields of a rewritten graph, from segrank's metadata (empty otherwise)."""
    if dropout_input is None:
        return {}
    meta = _metadata(proto)
    tensors = tuple(t for t in meta.get(META_DROPOUT_TENSORS, "").split(",") if t)
    levels = tuple(int(v) for v in meta.get(META_DROPOUT_LEVELS, "").split(",") if v)
    if not tensors or len(levels) != len(tensors):
        raise ModelError(f"{path}: incomplete segrank dropout metadata (tensors {tensors}, levels {levels})")
    return dict(
        dropout_input=dropout_input,
        dropout_tensors=tensors,
        dropout_levels=levels,
        dropout_channels=sum(levels),
        dropout_tensor=",".join(tensors),
    )


def _dropout_feed(proto: onnx.ModelProto, dropout_input: str | None) -> dict[str, tuple[int, ...]]:
    """A shape for an existing mask input (all-ones probe) of a rewritten graph."""
    if dropout_input is None:
        return {}
    vi = next(v for v in proto.graph.input if v.name == dropout_input)
    dims = value_dims(vi) or ()
    return {dropout_input: tuple(d if isinstance(d, int) else 1 for d in dims)}


_WARNED: dict = {}  # warning registry: each assumption text is shown once per process


def warn_assumptions(model: Model) -> None:
    """Warn each assumption once, attributed to the model file rather than to segrank's code."""
    for text in model.assumptions:
        warnings.warn_explicit(
            f"{model.name}: assumed {text}", ModelAssumptionWarning, str(model.path), 0,
            module="segrank.models", registry=_WARNED,
        )
