"""The grey-box graph analysis: candidate tensors for dropout, the bottleneck and the every-level tensors."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import ModelError
from .description import Model
from .onnx_graph import (
    FLOAT_TYPES,
    consumers,
    globally_pooled,
    graph_inputs,
    producers,
    read_onnx,
    tensor_shapes,
    value_dims,
)
from .onnx_model import probe_shape

UPSAMPLING_OPS = ("Resize", "Upsample", "ConvTranspose", "DepthToSpace")


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
    feeds = _probe_feeds(proto, model, shape)
    try:
        infos, probed = tensor_shapes(proto, model.path.parent, feeds, want_rank=len(shape))
    except Exception as err:
        problem = f"{model.name}: cannot determine tensor shapes at input {list(shape)} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); name the tensor with --tensor"
        return Analysis(model.name, shape, (), None, (), problem, True)

    graph = proto.graph
    ups = [i for i, node in enumerate(graph.node) if _is_upsampling(node, infos)]
    candidates = _candidates(graph, infos, ups, rank=len(shape))
    bottleneck, problem = _bottleneck(model.name, shape, candidates, ups)
    if bottleneck is None:
        return Analysis(model.name, shape, tuple(candidates), None, (), problem, probed)
    levels = _every_level(graph, candidates, ups)
    return Analysis(model.name, shape, tuple(candidates), bottleneck.name, levels, None, probed)


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


def _probe_feeds(proto: onnx.ModelProto, model: Model, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Input shapes to probe with: the image at `shape`, an existing mask input all ones."""
    feeds = {model.input_name: shape}
    for vi in graph_inputs(proto):
        if vi.name == model.dropout_input:
            feeds[vi.name] = tuple(d if isinstance(d, int) else 1 for d in (value_dims(vi) or ()))
    return feeds


def _is_upsampling(node: onnx.NodeProto, infos: dict) -> bool:
    """Whether `node` upsamples: an upsampling op, a Resize/Upsample only if it enlarges (when known)."""
    if node.op_type not in UPSAMPLING_OPS:
        return False
    if node.op_type in ("Resize", "Upsample"):  # Resize also downsamples
        before, after = infos.get(node.input[0]), infos.get(node.output[0])
        if before is not None and after is not None and before.shape and after.shape:
            return _spatial_size(after.shape) > _spatial_size(before.shape)
    return True


def _reachable(starts: Iterable[str], step: Callable[[str], Iterable[str]]) -> set[str]:
    """The tensor names `starts` and all reached from them by repeated `step`."""
    seen: set[str] = set()
    stack = list(starts)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(step(name))
    return seen


def _after_upsampling(graph: onnx.GraphProto, ups: list[int]) -> set[str]:
    """The outputs of the upsampling nodes `ups` and every tensor computed from them."""
    uses = consumers(graph)
    return _reachable(
        (o for i in ups for o in graph.node[i].output),
        lambda name: (o for j in uses.get(name, []) for o in graph.node[j].output if o),
    )


def _feeding_upsampling(graph: onnx.GraphProto, ups: list[int]) -> set[str]:
    """The data inputs of the upsampling nodes `ups` and every tensor they are computed from."""
    made_by = producers(graph)

    def inputs_of_producer(name: str) -> Iterable[str]:
        j = made_by.get(name)
        return (n for n in graph.node[j].input if n) if j is not None else ()

    return _reachable((graph.node[i].input[0] for i in ups if graph.node[i].input), inputs_of_producer)


def _candidates(graph: onnx.GraphProto, infos: dict, ups: list[int], *, rank: int) -> list[Candidate]:
    """The float node outputs of rank `rank` and known shape (global-pooling gates left out), each with its side."""
    after_up = _after_upsampling(graph, ups)
    feeds_up = _feeding_upsampling(graph, ups)
    pooled = globally_pooled(graph, infos, rank)
    candidates = []
    for i, node in enumerate(graph.node):
        for out in node.output:
            info = infos.get(out)
            if not out or info is None or info.shape is None or len(info.shape) != rank or out in pooled:
                continue
            if info.elem_type not in FLOAT_TYPES:
                continue
            side = "decoder" if out in after_up else "encoder" if out in feeds_up else "other"
            candidates.append(Candidate(out, info.shape, node.op_type, side, i, info.elem_type))
    return candidates


def _bottleneck(
    model_name: str, shape: tuple[int, ...], candidates: list[Candidate], ups: list[int]
) -> tuple[Candidate | None, str | None]:
    """(the last encoder tensor at the coarsest resolution, None), or (None, why there is none)."""
    hint = "name the tensor to perturb with --tensor (see `segrank inspect`), or use an input perturbation"
    if not ups:
        return None, f"{model_name}: no upsampling ({'/'.join(UPSAMPLING_OPS)}) in the graph, so no bottleneck; {hint}"
    encoder = [c for c in candidates if c.side == "encoder"]
    if not encoder:
        return None, f"{model_name}: no 4D/5D tensor before the first upsampling; {hint}"
    coarsest = min(_spatial_size(c.shape) for c in encoder)
    if coarsest >= _spatial_size(shape):
        return None, f"{model_name}: no spatial downsampling before the first upsampling, so no bottleneck; {hint}"
    return max((c for c in encoder if _spatial_size(c.shape) == coarsest), key=lambda c: c.index), None


def _every_level(graph: onnx.GraphProto, candidates: list[Candidate], ups: list[int]) -> tuple[str, ...]:
    """The tensors `every_level` masks, in graph order.

    The last encoder tensor at each resolution, then the input of each further upsampling op
    (the decoder's features before it upsamples again).
    """
    by_name = {c.name: c for c in candidates}
    last_at: dict[tuple[int, ...], Candidate] = {}
    for c in candidates:
        if c.side == "encoder" and (c.spatial not in last_at or c.index > last_at[c.spatial].index):
            last_at[c.spatial] = c
    levels = {c.name: c for c in last_at.values()}
    for i in ups:
        src = graph.node[i].input[0]
        if src in by_name and by_name[src].side == "decoder":
            levels[src] = by_name[src]
    return tuple(c.name for c in sorted(levels.values(), key=lambda c: c.index))
