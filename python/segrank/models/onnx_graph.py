"""Reading an ONNX graph safely, and the facts about it that the loaders need.

`read_onnx` never executes anything: it parses the protobuf, checks that every external-data
file lies beside the model (no "..", no links), runs the ONNX checker and checks the opset
against what the installed ONNX Runtime can run. `tensor_shapes` fixes the input shape and
runs static shape inference, falling back to one ONNX Runtime run with every intermediate
tensor exposed when static inference leaves sizes unknown.
"""
from __future__ import annotations

import copy
import functools
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ModelError
from .untrusted import resolve_inside

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)
MIN_RUNTIME_OPSET = 7  # the oldest default-domain opset ONNX Runtime runs
# Ops that only move or reshape values: a Sigmoid/Softmax behind them still ends the graph.
_PASS_THROUGH = {"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Cast", "Slice", "Flatten", "Pad", "Crop"}
_SIZE_LIMIT = 2**31 - 1  # protobuf's limit for one serialized model


def default_opset(proto: onnx.ModelProto) -> int | None:
    for op in proto.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return None


def _runtime_accepts(opset: int, ir_version: int | None = None) -> bool:
    import onnxruntime as ort

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = ir_version if ir_version is not None else helper.find_min_ir_version_for(opsets)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return True
    except Exception:
        return False


def _largest(lo: int, hi: int, ok) -> int:
    """Largest v in [lo, hi] with ok(v), for a property that holds from lo up to some point."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


@functools.lru_cache(maxsize=None)
def runtime_max_opset() -> int:
    """The newest default-domain opset the installed ONNX Runtime accepts (found by trying)."""
    return _largest(MIN_RUNTIME_OPSET, onnx.defs.onnx_opset_version(), _runtime_accepts)


@functools.lru_cache(maxsize=None)
def runtime_max_ir_version() -> int:
    """The newest ONNX IR version the installed ONNX Runtime loads (found by trying)."""
    return _largest(3, onnx.IR_VERSION, lambda v: _runtime_accepts(MIN_RUNTIME_OPSET, v))


def _all_tensors(graph: onnx.GraphProto):
    """Every TensorProto in a graph: initializers, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def external_data_files(proto: onnx.ModelProto) -> list[str]:
    """The file names that external-data tensors of the model refer to."""
    names = []
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            names.append(entries.get("location", ""))
    return names


def read_onnx(path: Path, *, root: Path | None = None, load_data: bool = False) -> onnx.ModelProto:
    """Parse and validate an ONNX file without running it.

    Parameters
    ----------
    path : Path
        The .onnx file.
    root : Path, optional
        Folder every external-data file must lie in (default: the model's folder).
    load_data : bool
        Also read external-data tensors into the returned proto (needed to rewrite or run it).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError or RuntimeWarning-ish errors
        raise ModelError(f"{path}: not a readable ONNX file ({type(err).__name__}: {err})") from None
    if not proto.graph.node or not proto.graph.output:
        raise ModelError(f"{path}: not a readable ONNX file (empty graph)")
    base = Path(root) if root is not None else path.parent
    for location in external_data_files(proto):
        resolve_inside(base, location, what="ONNX external data")
    opset = default_opset(proto)
    if opset is None:
        raise ModelError(f"{path}: the graph imports no default-domain ('ai.onnx') opset")
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ModelError(f"{path}: opset {opset} is newer than the installed onnx supports ({newest}); upgrade onnx")
    if opset < MIN_RUNTIME_OPSET:
        raise ModelError(f"{path}: opset {opset} is older than ONNX Runtime runs (>= {MIN_RUNTIME_OPSET}); convert it with onnx.version_converter")
    if proto.ir_version > onnx.IR_VERSION:
        raise ModelError(f"{path}: IR version {proto.ir_version} is newer than the installed onnx supports ({onnx.IR_VERSION}); upgrade onnx")
    if proto.ir_version > runtime_max_ir_version():
        raise ModelError(
            f"{path}: IR version {proto.ir_version} is newer than the installed ONNX Runtime loads "
            f"({runtime_max_ir_version()}); upgrade onnxruntime or re-save it with a lower ir_version"
        )
    runtime = runtime_max_opset()
    if opset > runtime:
        raise ModelError(f"{path}: opset {opset} is newer than the installed ONNX Runtime runs ({runtime}); upgrade onnxruntime")
    try:
        # With external data the checker must see the file, to find the data beside it.
        onnx.checker.check_model(str(path) if external_data_files(proto) else proto)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path}: fails the ONNX checker ({first})") from None
    if load_data and external_data_files(proto):
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(proto, str(base))
    return proto


def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Inputs that must be fed (old exporters also list initializers as inputs)."""
    inits = {t.name for t in proto.graph.initializer}
    return [vi for vi in proto.graph.input if vi.name not in inits]


def value_dims(vi: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    """Dims of a value: int for fixed, str for a named dynamic dim, None for unknown; None if rank unknown."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def elem_type(vi: onnx.ValueInfoProto) -> int:
    return vi.type.tensor_type.elem_type


def producers(graph: onnx.GraphProto) -> dict[str, int]:
    """Tensor name -> index of the node producing it."""
    return {out: i for i, node in enumerate(graph.node) for out in node.output if out}


def consumers(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """Tensor name -> indices of the nodes reading it (top-level graph)."""
    uses: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name:
                uses.setdefault(name, []).append(i)
    return uses


def final_activation(proto: onnx.ModelProto, output_name: str) -> str | None:
    """"sigmoid" / "softmax" when the output is produced by one (through reshaping ops), else None."""
    graph = proto.graph
    made_by = producers(graph)
    name = output_name
    for _ in range(len(graph.node)):
        idx = made_by.get(name)
        if idx is None:
            return None
        node = graph.node[idx]
        if node.op_type in ("Sigmoid", "HardSigmoid"):
            return "sigmoid"
        if node.op_type == "Softmax":
            return "softmax"
        if node.op_type not in _PASS_THROUGH or not node.input:
            return None
        name = node.input[0]
    return None


@dataclass(frozen=True)
class TensorInfo:
    """A top-level tensor of the graph after shape inference with a fixed input shape."""

    name: str
    dims: tuple[int | str | None, ...] | None  # None when even the rank is unknown
    elem_type: int

    @property
    def shape(self) -> tuple[int, ...] | None:
        """All sizes as ints, or None when any is unknown."""
        if self.dims is None or not all(isinstance(d, int) for d in self.dims):
            return None
        return tuple(self.dims)

    @property
    def rank(self) -> int | None:
        return None if self.dims is None else len(self.dims)


def _fixed_copy(proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    fixed = copy.deepcopy(proto)
    for vi in fixed.graph.input:
        if vi.name in input_shapes:
            shape = vi.type.tensor_type.shape
            shape.ClearField("dim")
            for size in input_shapes[vi.name]:
                shape.dim.add().dim_value = int(size)
    # Stale value_info from an exporter can contradict the fixed shape: infer afresh.
    fixed.graph.ClearField("value_info")
    for out in fixed.graph.output:
        out.type.tensor_type.ClearField("shape")
    return fixed


def _static(info: onnx.ValueInfoProto) -> TensorInfo:
    return TensorInfo(info.name, value_dims(info), elem_type(info))


def infer_static(proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, TensorInfo]:
    """Static shape inference with the inputs fixed; unknown sizes come back as shape None."""
    fixed = _fixed_copy(proto, input_shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception:
        inferred = fixed
    infos = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        infos[vi.name] = _static(vi)
    return infos


def _runnable(proto: onnx.ModelProto, base: Path, tmp: Path) -> str | bytes:
    """Something ONNX Runtime can open: bytes, or a file with its external data beside it."""
    if not external_data_files(proto) and proto.ByteSize() < _SIZE_LIMIT:
        return proto.SerializeToString()
    from onnx.external_data_helper import load_external_data_for_model

    model = copy.deepcopy(proto)
    if external_data_files(model):
        load_external_data_for_model(model, str(base))
    target = tmp / "probe.onnx"
    onnx.save_model(model, str(target), save_as_external_data=True, location="probe.onnx.data")
    return str(target)


def probe_run(
    proto: onnx.ModelProto,
    base: Path,
    feeds: dict[str, np.ndarray],
    names: list[str],
    types: dict[str, int],
) -> dict[str, tuple[int, ...]]:
    """Run the graph once on CPU with the named tensors exposed as outputs; their shapes."""
    import onnxruntime as ort

    model = copy.deepcopy(proto)
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present and name in types:
            model.graph.output.append(helper.make_tensor_value_info(name, types[name], None))
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failing probe is reported by the caller, once
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    # No fusion: every exposed tensor keeps the meaning it has in the source graph.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with tempfile.TemporaryDirectory(prefix="segrank-probe-") as tmp:
        session = ort.InferenceSession(_runnable(model, base, Path(tmp)), options, providers=["CPUExecutionProvider"])
        outs = [o.name for o in session.get_outputs()]
        values = session.run(outs, feeds)
    return {n: tuple(int(s) for s in np.shape(v)) for n, v in zip(outs, values)}


def tensor_shapes(
    proto: onnx.ModelProto,
    base: Path,
    input_shapes: dict[str, tuple[int, ...]],
    *,
    want_rank: int | None = None,
) -> tuple[dict[str, TensorInfo], bool]:
    """Shapes of every node output and graph output for the given input shapes.

    Static inference first; when a graph output, or a node output of rank `want_rank` (or of
    unknown rank), keeps an unknown size, the graph is run once on zeros with those tensors
    exposed. Returns the infos and whether a run was needed.
    """
    infos = infer_static(proto, input_shapes)
    graph = proto.graph
    node_outputs = [o for node in graph.node for o in node.output if o]
    outputs = [o.name for o in graph.output]
    missing = []
    for name in dict.fromkeys(node_outputs + outputs):
        info = infos.get(name)
        if info is None or info.shape is None:
            if name in outputs or want_rank is None or info is None or info.rank in (None, want_rank):
                missing.append(name)
    if not missing:
        return infos, False
    types = {n: i.elem_type for n, i in infos.items() if i.elem_type}
    for o in graph.output:
        types.setdefault(o.name, elem_type(o))
    feeds = {}
    for vi in graph_inputs(proto):
        if vi.name not in input_shapes:
            raise ModelError(f"graph input {vi.name!r} has no shape to probe with")
        dtype = helper.tensor_dtype_to_np_dtype(elem_type(vi))
        feeds[vi.name] = np.zeros(input_shapes[vi.name], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shapes = probe_run(proto, base, feeds, missing, types)
    for name, shape in shapes.items():
        infos[name] = TensorInfo(name, shape, types.get(name, 0))
    return infos, True


GLOBAL_POOLING_OPS = ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "ReduceMean", "ReduceMax", "ReduceSum", "ReduceL2")


def globally_pooled(graph: onnx.GraphProto, infos: dict[str, "TensorInfo"], rank: int) -> set[str]:
    """Tensors computed only from a global pooling (e.g. squeeze-and-excitation gates).

    Their spatial size 1 says nothing about the network's resolution, so they are neither a
    bottleneck nor evidence of downsampling.
    """
    inits = {t.name for t in graph.initializer}
    pooled: set[str] = set()
    for node in graph.node:
        if node.op_type in GLOBAL_POOLING_OPS:
            pooled.update(o for o in node.output if o)
            continue
        feature_inputs = [
            i for i in node.input
            if i and i not in inits and (infos.get(i) is None or infos[i].rank in (None, rank))
        ]
        if feature_inputs and all(i in pooled for i in feature_inputs):
            pooled.update(o for o in node.output if o)
    return pooled
