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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ModelError
from .description import Model
from .onnx_graph import (
    FLOAT_TYPES,
    consumers,
    default_opset,
    globally_pooled,
    graph_inputs,
    producers,
    read_onnx,
    tensor_shapes,
    value_dims,
)
from .onnx_model import META_DROPOUT_INPUT, META_DROPOUT_LEVELS, META_DROPOUT_TENSORS, probe_shape
from .untrusted import cache_dir, sha256_file

UPSAMPLING_OPS = ("Resize", "Upsample", "ConvTranspose", "DepthToSpace")
MASK_INPUT = "segrank_dropout_mask"
_EXTERNAL_ABOVE = 1_800_000_000  # bytes; protobuf cannot serialize a model over 2 GiB


@dataclass(frozen=True)
class Candidate:
    """A 4D/5D float tensor of the graph (node output), with its shape at the probe input.

    side: "encoder" (feeds an upsampling op, none before it), "decoder" (after an upsampling
    op) or "other".
    """

    name: str
    shape: tuple[int, ...]
    op: str
    side: str
    index: int
    elem_type: int = TensorProto.FLOAT

    @property
    def channels(self) -> int:
        return self.shape[1]

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.shape[2:]


@dataclass(frozen=True)
class Analysis:
    """Everything `segrank inspect` shows about where dropout can go."""

    model: str
    input_shape: tuple[int, ...]
    candidates: tuple[Candidate, ...]
    bottleneck: str | None
    levels: tuple[str, ...]
    problem: str | None  # why there is no bottleneck
    probed: bool  # whether shapes needed a run of the graph


def _spatial_size(shape) -> int:
    return int(np.prod(shape[2:])) if len(shape) > 2 else 0


def analyse(model: Model) -> Analysis:
    """Candidate tensors, the bottleneck and the every-level tensors of `model`."""
    proto = read_onnx(model.path)
    if not model.axes.startswith("bc"):
        shape = ()
        return Analysis(model.name, shape, (), None, (), f"{model.name}: grey-box dropout needs channels-first axes (b, c, ...), not {model.axes!r}; use an input perturbation", False)
    shape = probe_shape(model.axes, model.in_channels, model.tiling)
    feeds = {model.input_name: shape}
    for vi in graph_inputs(proto):
        if vi.name == model.dropout_input:
            feeds[vi.name] = tuple(d if isinstance(d, int) else 1 for d in (value_dims(vi) or ()))
    try:
        infos, probed = tensor_shapes(proto, model.path.parent, feeds, want_rank=len(shape))
    except Exception as err:
        problem = f"{model.name}: cannot determine tensor shapes at input {list(shape)} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); name the tensor with --tensor"
        return Analysis(model.name, shape, (), None, (), problem, True)

    graph = proto.graph
    uses = consumers(graph)
    made_by = producers(graph)

    def is_upsampling(node) -> bool:
        if node.op_type not in UPSAMPLING_OPS:
            return False
        if node.op_type in ("Resize", "Upsample"):  # Resize also downsamples
            before, after = infos.get(node.input[0]), infos.get(node.output[0])
            if before is not None and after is not None and before.shape and after.shape:
                return _spatial_size(after.shape) > _spatial_size(before.shape)
        return True

    ups = [i for i, node in enumerate(graph.node) if is_upsampling(node)]
    after_up: set[str] = set()
    stack = [o for i in ups for o in graph.node[i].output]
    while stack:
        name = stack.pop()
        if name in after_up:
            continue
        after_up.add(name)
        for j in uses.get(name, []):
            stack.extend(o for o in graph.node[j].output if o)
    feeds_up: set[str] = set()
    stack = [graph.node[i].input[0] for i in ups if graph.node[i].input]
    while stack:
        name = stack.pop()
        if name in feeds_up:
            continue
        feeds_up.add(name)
        j = made_by.get(name)
        if j is not None:
            stack.extend(n for n in graph.node[j].input if n)

    pooled = globally_pooled(graph, infos, len(shape))
    candidates = []
    for i, node in enumerate(graph.node):
        for out in node.output:
            info = infos.get(out)
            if not out or info is None or info.shape is None or len(info.shape) != len(shape) or out in pooled:
                continue
            if info.elem_type not in FLOAT_TYPES:
                continue
            side = "decoder" if out in after_up else "encoder" if out in feeds_up else "other"
            candidates.append(Candidate(out, info.shape, node.op_type, side, i, info.elem_type))
    candidates_t = tuple(candidates)

    hint = "name the tensor to perturb with --tensor (see `segrank inspect`), or use an input perturbation"
    if not ups:
        problem = f"{model.name}: no upsampling ({'/'.join(UPSAMPLING_OPS)}) in the graph, so no bottleneck; {hint}"
        return Analysis(model.name, shape, candidates_t, None, (), problem, probed)
    encoder = [c for c in candidates if c.side == "encoder"]
    if not encoder:
        problem = f"{model.name}: no 4D/5D tensor before the first upsampling; {hint}"
        return Analysis(model.name, shape, candidates_t, None, (), problem, probed)
    coarsest = min(_spatial_size(c.shape) for c in encoder)
    if coarsest >= _spatial_size(shape):
        problem = f"{model.name}: no spatial downsampling before the first upsampling, so no bottleneck; {hint}"
        return Analysis(model.name, shape, candidates_t, None, (), problem, probed)
    bottleneck = max((c for c in encoder if _spatial_size(c.shape) == coarsest), key=lambda c: c.index)

    # Every level: the last encoder tensor at each resolution, then the input of each
    # further upsampling op (the decoder's features before it upsamples again).
    by_name = {c.name: c for c in candidates}
    last_at: dict[tuple[int, ...], Candidate] = {}
    for c in encoder:
        if c.spatial not in last_at or c.index > last_at[c.spatial].index:
            last_at[c.spatial] = c
    levels = {c.name: c for c in last_at.values()}
    for i in ups:
        src = graph.node[i].input[0]
        if src in by_name and by_name[src].side == "decoder":
            levels[src] = by_name[src]
    ordered = tuple(c.name for c in sorted(levels.values(), key=lambda c: c.index))
    return Analysis(model.name, shape, candidates_t, bottleneck.name, ordered, None, probed)


def find_bottleneck(model: Model) -> tuple[str, list[Candidate]]:
    """The tensor `--tensor auto` picks, and every candidate tensor with its shape.

    Raises
    ------
    ModelError
        Naming the model and suggesting --tensor, when there is no bottleneck (no spatial
        downsampling, no upsampling op, shapes that cannot be determined).
    """
    result = analyse(model)
    if result.bottleneck is None:
        raise ModelError(result.problem)
    return result.bottleneck, list(result.candidates)


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
    if tensor == "auto":
        if result.bottleneck is None:
            raise ModelError(result.problem)
        names = result.levels if every_level else (result.bottleneck,)
    else:
        if every_level:
            raise ModelError(f"{model.name}: --every-level picks the tensors itself; use it with --tensor auto")
        names = tuple(t.strip() for t in str(tensor).split(",") if t.strip())
        if not names:
            raise ModelError(f"{model.name}: empty --tensor")
    by_name = {c.name: c for c in result.candidates}
    proto = read_onnx(model.path, load_data=True)
    graph = proto.graph
    made_by = producers(graph)
    for name in names:
        if name not in by_name:
            if name not in made_by:
                raise ModelError(f"{model.path}: {model.name} has no intermediate tensor named {name!r} (see `segrank inspect`)")
            raise ModelError(
                f"{model.path}: tensor {name!r} of {model.name} is not a {len(result.input_shape)}D float tensor of known shape; pick another (see `segrank inspect`)"
            )
    if len(set(names)) != len(names):
        raise ModelError(f"{model.name}: tensor listed twice in {','.join(names)}")
    levels = tuple(by_name[n].channels for n in names)
    ndim = len(result.input_shape) - 2

    taken = {o for node in graph.node for o in node.output} | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    mask_name = _unique(MASK_INPUT, taken)
    taken.add(mask_name)
    image = next(vi for vi in graph.input if vi.name == model.input_name)
    batch = (value_dims(image) or ("N",))[0]
    batch = batch if batch is not None else "N"
    graph.input.append(helper.make_tensor_value_info(mask_name, TensorProto.FLOAT, [batch, sum(levels)] + [1] * ndim))

    opset = default_opset(proto)
    # Insert from the last producer backwards so earlier indices stay valid.
    plan = sorted(zip(names, levels, np.cumsum((0,) + levels[:-1])), key=lambda t: made_by[t[0]], reverse=True)
    for name, channels, start in plan:
        node_index = made_by[name]
        producer = graph.node[node_index]
        pre = _unique(f"{name}__segrank_pre_dropout", taken)
        taken.add(pre)
        for k, o in enumerate(producer.output):
            if o == name:
                producer.output[k] = pre
        new_nodes = []
        factor = mask_name
        if len(names) > 1:
            factor = _unique(f"{mask_name}__{name}", taken)
            taken.add(factor)
            bounds = [(f"{factor}_starts", int(start)), (f"{factor}_ends", int(start + channels)), (f"{factor}_axes", 1)]
            if opset >= 10:
                for const, value in bounds:
                    new_nodes.append(helper.make_node("Constant", [], [const], value=helper.make_tensor(const, TensorProto.INT64, [1], [value])))
                new_nodes.append(helper.make_node("Slice", [mask_name] + [b for b, _ in bounds], [factor]))
            else:
                new_nodes.append(helper.make_node("Slice", [mask_name], [factor], starts=[int(start)], ends=[int(start + channels)], axes=[1]))
        elem = by_name[name].elem_type
        if elem != TensorProto.FLOAT:
            cast = _unique(f"{factor}__cast", taken)
            taken.add(cast)
            new_nodes.append(helper.make_node("Cast", [factor], [cast], to=elem))
            factor = cast
        new_nodes.append(helper.make_node("Mul", [pre, factor], [name], name=_unique(f"segrank_dropout_{name}", taken)))
        for offset, node in enumerate(new_nodes, start=1):
            graph.node.insert(node_index + offset, node)

    meta = {p.key: p.value for p in proto.metadata_props}
    meta.update({
        META_DROPOUT_INPUT: mask_name,
        META_DROPOUT_TENSORS: ",".join(names),
        META_DROPOUT_LEVELS: ",".join(str(c) for c in levels),
        "segrank.source_sha256": model.sha256 or sha256_file(model.path),
    })
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    try:
        onnx.checker.check_model(proto)
    except Exception as err:
        raise ModelError(f"{model.path}: rewritten graph of {model.name} fails the ONNX checker ({str(err).splitlines()[0]})") from None

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
        try:
            error, scale = _max_identity_error(model, rewritten, result.input_shape)
        except Exception as err:
            raise ModelError(
                f"{target}: cannot run {model.name} to verify the rewrite ({type(err).__name__}: {str(err).splitlines()[0]})"
            ) from None
        if not error <= 1e-4 * max(1.0, scale):
            if out is None:
                target.unlink(missing_ok=True)
            raise ModelError(
                f"{target}: rewritten {model.name} with an all-ones mask differs from the original by {error:.3g} "
                f"(output magnitude {scale:.3g}); not used"
            )
    if out is not None:
        from .sidecar import write_sidecar

        write_sidecar(rewritten, target.with_suffix(".yaml"))
    return rewritten
