"""The grey-box rewrite: a channel-mask input multiplied into an intermediate tensor.

`find_bottleneck` fixes the input shape, runs shape inference (falling back to one run with
every intermediate exposed), and picks the coarsest-resolution 4D/5D tensor of the encoder:
among the node outputs that feed an upsampling op (Resize, Upsample, ConvTranspose,
DepthToSpace) without coming after one, those with the smallest spatial size, the last in
graph order (the output of the bottleneck block, right before the first upsampling).

`rewrite` adds one float graph input, the mask [N, C, 1, 1] (2D) or [N, C, 1, 1, 1] (3D),
and multiplies it into the chosen tensor: the producer's output is renamed and a Mul writes
the original name, so every downstream use (nodes, graph outputs) sees the masked tensor.
With `every_level`, one mask input covers several tensors (one per encoder resolution, the
bottleneck, and the input of each further upsampling), sliced along the channel axis in
the order of `Model.dropout_tensors` / `Model.dropout_levels`.

An all-ones mask leaves the values unchanged (x * 1 == x); ONNX Runtime may fuse the
rewritten graph differently from the original (about 1e-5 on a real U-Net), so the
unperturbed and perturbed runs of a ranking both go through the rewritten graph.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ModelError
from .bottleneck import UPSAMPLING_OPS, Analysis, Candidate, analyse, find_bottleneck
from .description import Model
from .onnx_graph import default_opset, producers, read_onnx, value_dims
from .onnx_model import META_DROPOUT_INPUT, META_DROPOUT_LEVELS, META_DROPOUT_TENSORS
from .untrusted import cache_dir, sha256_file

__all__ = ["MASK_INPUT", "UPSAMPLING_OPS", "Analysis", "Candidate", "analyse", "find_bottleneck", "rewrite"]

MASK_INPUT = "segrank_dropout_mask"
_EXTERNAL_ABOVE = 1_800_000_000  # bytes; protobuf cannot serialize a model over 2 GiB


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 1
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    return out


def _cached_out(model: Model, tensors: tuple[str, ...]) -> Path:
    digest = model.sha256 or sha256_file(model.path)
    key = hashlib.sha256("\x1f".join(tensors).encode("utf-8")).hexdigest()[:12]
    folder = cache_dir() / "greybox" / digest[:24]
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{model.path.stem}.{key}.onnx"


def _save(proto: onnx.ModelProto, out: Path) -> None:
    """Write atomically; large models keep their weights in OUT.data beside the graph."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    if proto.ByteSize() > _EXTERNAL_ABOVE:
        onnx.save_model(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True, location=out.name + ".data")
    else:
        onnx.save_model(proto, str(tmp))
    os.replace(tmp, out)


def _max_identity_error(original: Model, rewritten: Model, shape: tuple[int, ...]) -> tuple[float, float]:
    """(max |rewritten(all ones) - original|, max |original|) on a seeded random probe input."""
    import onnxruntime as ort

    from ..perturb.seeds import rng

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    x = rng(0, original.name, "greybox-identity", 0, "probe").standard_normal(shape).astype(np.float32)
    a = ort.InferenceSession(str(original.path), options, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(rewritten.path), options, providers=["CPUExecutionProvider"])
    feed_type = {i.name: i.type for i in a.get_inputs()}
    if feed_type.get(original.input_name) == "tensor(float16)":
        x = x.astype(np.float16)
    ones = np.ones((shape[0], rewritten.dropout_channels) + (1,) * (len(shape) - 2), np.float32)
    ya = a.run([original.output_name], {original.input_name: x})[0].astype(np.float64)
    yb = b.run([original.output_name], {original.input_name: x, rewritten.dropout_input: ones})[0].astype(np.float64)
    return float(np.max(np.abs(yb - ya))), float(np.max(np.abs(ya)))


def rewrite(
    model: Model, *, tensor: str = "auto", out=None, every_level: bool = False, verify: bool = True
) -> Model:
    """Insert spatial dropout (a channel-mask input) on intermediate tensor(s) of `model`.

    Parameters
    ----------
    model : Model
        A loaded model (not already rewritten).
    tensor : str
        "auto" (the bottleneck, see `find_bottleneck`), a tensor name, or names joined by ",".
    out : path, optional
        Where to write the rewritten ONNX (plus a sidecar NAME.yaml with the description);
        default: segrank's cache, keyed by the model file's sha256 and the tensors.
    every_level : bool
        With tensor "auto": mask every encoder/decoder level (see the module docstring).
    verify : bool
        Run both graphs once on CPU on a seeded random probe input and require the rewritten
        one with an all-ones mask to match, to 1e-4 of the output's magnitude (fusion
        differences are about 1e-5 on a real U-Net).

    Returns
    -------
    Model
        The same description with `path` at the rewritten graph and the dropout fields set;
        draw its mask with `segrank.perturb.dropout.channel_mask(model.dropout_levels, ...)`.
    """
    if model.dropout_input is not None:
        raise ModelError(f"{model.path}: {model.name} already has a dropout input {model.dropout_input!r}")
    result = analyse(model)
    names = _chosen_tensors(model, result, tensor=tensor, every_level=every_level)
    by_name = {c.name: c for c in result.candidates}
    proto = read_onnx(model.path, load_data=True)
    graph = proto.graph
    made_by = producers(graph)
    _check_tensors(model, names, by_name, made_by, rank=len(result.input_shape))
    levels = tuple(by_name[n].channels for n in names)
    ndim = len(result.input_shape) - 2

    taken = {o for node in graph.node for o in node.output} | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    mask_name = _add_mask_input(graph, model.input_name, channels=sum(levels), ndim=ndim, taken=taken)
    opset = default_opset(proto)
    # Insert from the last producer backwards so earlier indices stay valid.
    plan = sorted(zip(names, levels, np.cumsum((0,) + levels[:-1])), key=lambda t: made_by[t[0]], reverse=True)
    for name, channels, start in plan:
        _mask_tensor(
            graph, made_by[name], name, mask_name=mask_name, block=(int(start), int(start + channels)),
            sliced=len(names) > 1, elem_type=by_name[name].elem_type, opset=opset, taken=taken,
        )
    _set_dropout_metadata(proto, mask_name=mask_name, names=names, levels=levels, source_sha256=model.sha256 or sha256_file(model.path))
    _check_rewritten(proto, model)

    target = Path(out) if out is not None else _cached_out(model, names)
    if out is not None or not target.is_file():
        _save(proto, target)
    rewritten = model.with_(
        path=target,
        sha256=sha256_file(target),
        dropout_input=mask_name,
        dropout_channels=int(sum(levels)),
        dropout_tensor=",".join(names),
        dropout_tensors=names,
        dropout_levels=levels,
    )
    if verify:
        _verify_identity(model, rewritten, result.input_shape, remove_on_failure=out is None)
    if out is not None:
        from .sidecar import write_sidecar

        write_sidecar(rewritten, target.with_suffix(".yaml"))
    return rewritten


def _chosen_tensors(model: Model, result: Analysis, *, tensor: str, every_level: bool) -> tuple[str, ...]:
    """The tensors to mask: for "auto" the bottleneck (or every level), else the names given."""
    if tensor == "auto":
        if result.bottleneck is None:
            raise ModelError(result.problem)
        return result.levels if every_level else (result.bottleneck,)
    if every_level:
        raise ModelError(f"{model.name}: --every-level picks the tensors itself; use it with --tensor auto")
    names = tuple(t.strip() for t in str(tensor).split(",") if t.strip())
    if not names:
        raise ModelError(f"{model.name}: empty --tensor")
    return names


def _check_tensors(model: Model, names: tuple[str, ...], by_name: dict[str, Candidate], made_by: dict[str, int], *, rank: int) -> None:
    """Each name must be a candidate (an intermediate float tensor of the input's rank and known shape), listed once."""
    for name in names:
        if name not in by_name:
            if name not in made_by:
                raise ModelError(f"{model.path}: {model.name} has no intermediate tensor named {name!r} (see `segrank inspect`)")
            raise ModelError(
                f"{model.path}: tensor {name!r} of {model.name} is not a {rank}D float tensor of known shape; pick another (see `segrank inspect`)"
            )
    if len(set(names)) != len(names):
        raise ModelError(f"{model.name}: tensor listed twice in {','.join(names)}")


def _add_mask_input(graph: onnx.GraphProto, input_name: str, *, channels: int, ndim: int, taken: set[str]) -> str:
    """Add the float mask input [N, channels, 1, ...] under a free name (N: the image input's batch size)."""
    mask_name = _unique(MASK_INPUT, taken)
    taken.add(mask_name)
    image = next(vi for vi in graph.input if vi.name == input_name)
    batch = (value_dims(image) or ("N",))[0]
    batch = batch if batch is not None else "N"
    graph.input.append(helper.make_tensor_value_info(mask_name, TensorProto.FLOAT, [batch, channels] + [1] * ndim))
    return mask_name


def _mask_tensor(
    graph: onnx.GraphProto, node_index: int, name: str, *, mask_name: str, block: tuple[int, int],
    sliced: bool, elem_type: int, opset: int, taken: set[str],
) -> None:
    """Multiply tensor `name` by its `block` of mask channels: its producer (node `node_index`)
    now writes a renamed tensor, and nodes inserted right after it write `name`."""
    producer = graph.node[node_index]
    pre = _unique(f"{name}__segrank_pre_dropout", taken)
    taken.add(pre)
    for k, o in enumerate(producer.output):
        if o == name:
            producer.output[k] = pre
    new_nodes = []
    factor = mask_name
    if sliced:
        factor = _unique(f"{mask_name}__{name}", taken)
        taken.add(factor)
        new_nodes += _slice_nodes(mask_name, factor, block, opset=opset)
    if elem_type != TensorProto.FLOAT:
        cast = _unique(f"{factor}__cast", taken)
        taken.add(cast)
        new_nodes.append(helper.make_node("Cast", [factor], [cast], to=elem_type))
        factor = cast
    new_nodes.append(helper.make_node("Mul", [pre, factor], [name], name=_unique(f"segrank_dropout_{name}", taken)))
    for offset, node in enumerate(new_nodes, start=1):
        graph.node.insert(node_index + offset, node)


def _slice_nodes(mask_name: str, factor: str, block: tuple[int, int], *, opset: int) -> list[onnx.NodeProto]:
    """Nodes writing channels block[0]:block[1] of the mask to `factor` (Slice inputs from opset 10, attributes before)."""
    start, end = block
    if opset < 10:
        return [helper.make_node("Slice", [mask_name], [factor], starts=[start], ends=[end], axes=[1])]
    bounds = [(f"{factor}_starts", start), (f"{factor}_ends", end), (f"{factor}_axes", 1)]
    nodes = [helper.make_node("Constant", [], [const], value=helper.make_tensor(const, TensorProto.INT64, [1], [value])) for const, value in bounds]
    return nodes + [helper.make_node("Slice", [mask_name] + [b for b, _ in bounds], [factor])]


def _set_dropout_metadata(
    proto: onnx.ModelProto, *, mask_name: str, names: tuple[str, ...], levels: tuple[int, ...], source_sha256: str
) -> None:
    """Record the mask input, masked tensors and their channel counts (read back by `load_onnx`)."""
    meta = {p.key: p.value for p in proto.metadata_props}
    meta.update({
        META_DROPOUT_INPUT: mask_name,
        META_DROPOUT_TENSORS: ",".join(names),
        META_DROPOUT_LEVELS: ",".join(str(c) for c in levels),
        "segrank.source_sha256": source_sha256,
    })
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)


def _check_rewritten(proto: onnx.ModelProto, model: Model) -> None:
    """The rewritten graph must pass the ONNX checker."""
    try:
        onnx.checker.check_model(proto)
    except Exception as err:
        raise ModelError(f"{model.path}: rewritten graph of {model.name} fails the ONNX checker ({str(err).splitlines()[0]})") from None


def _verify_identity(model: Model, rewritten: Model, shape: tuple[int, ...], *, remove_on_failure: bool) -> None:
    """Require the rewritten graph with an all-ones mask to reproduce `model` (to 1e-4 of its output's
    magnitude); a failing rewritten file is removed when `remove_on_failure` (the cache's)."""
    target = rewritten.path
    try:
        error, scale = _max_identity_error(model, rewritten, shape)
    except Exception as err:
        raise ModelError(
            f"{target}: cannot run {model.name} to verify the rewrite ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None
    if not error <= 1e-4 * max(1.0, scale):
        if remove_on_failure:
            target.unlink(missing_ok=True)
        raise ModelError(
            f"{target}: rewritten {model.name} with an all-ones mask differs from the original by {error:.3g} "
            f"(output magnitude {scale:.3g}); not used"
        )
