"""What a candidate model is: one frozen description shared by every pipeline stage.

Loaders (bare ONNX, ONNX + sidecar, bioimage.io package) all produce a `Model`; inference,
perturbation and scoring read only this description, never the source format.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

PREPROCESSING_KINDS = ("none", "percentile", "zero_mean_unit_variance", "scale_linear")
ACTIVATIONS = ("none", "sigmoid", "softmax")
TASKS = ("semantic", "instance")
POSTPROCESSING_KINDS = ("none", "components", "watershed")


@dataclass(frozen=True)
class Preprocessing:
    """Input normalisation the model expects, computed over the whole image or volume.

    kind "percentile": (x - P_low) / (P_high - P_low + eps);
    kind "zero_mean_unit_variance": (x - mean) / (std + eps), with mean/std of the image
    unless fixed values are given; kind "scale_linear": x * gain + offset; "none": as is.
    """

    kind: str = "percentile"
    low: float = 1.0
    high: float = 99.8
    mean: float | None = None
    std: float | None = None
    gain: float = 1.0
    offset: float = 0.0
    eps: float = 1e-6


@dataclass(frozen=True)
class Postprocessing:
    """How instance labels are made from the model's probabilities (instance task only).

    kind "components": connected components of p_foreground > threshold;
    kind "watershed": seeded watershed of the foreground, seeds from
    p_foreground - p_boundary > threshold, flooding the boundary map; "none": the model's
    output already holds labels. Objects smaller than min_size pixels are removed.
    """

    kind: str = "none"
    threshold: float = 0.5
    min_size: int = 0
    boundary_channel: int | None = None


@dataclass(frozen=True)
class Tiling:
    """Spatial shape constraints of the model's input, in spatial axis order (z, y, x).

    fixed: the only accepted spatial shape (None: any shape obeying minimum/multiple_of);
    halo: the context each side of a tile that is cropped away after prediction.
    """

    fixed: tuple[int, ...] | None = None
    minimum: tuple[int, ...] = ()
    multiple_of: tuple[int, ...] = ()
    halo: tuple[int, ...] = ()


@dataclass(frozen=True)
class Model:
    """One candidate segmentation model, runnable by ONNX Runtime.

    `axes` are the ONNX input's axes, a string over "bczyx" (e.g. "bcyx" for 2D, "bczyx" for
    3D). The output has the same axes, with `out_channels` channels; `activation` is what
    segrank applies to the raw output to get probabilities ("none" when the graph already
    ends in one). `dropout_input` names the channel-mask input added by the grey-box rewrite.
    """

    name: str
    path: Path
    input_name: str
    output_name: str
    axes: str = "bcyx"
    in_channels: int = 1
    out_channels: int = 1
    task: str = "semantic"
    activation: str = "sigmoid"
    foreground_channel: int = 0
    output_space: str = "foreground"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    postprocessing: Postprocessing = field(default_factory=Postprocessing)
    tiling: Tiling = field(default_factory=Tiling)
    dropout_input: str | None = None
    dropout_channels: int | None = None
    dropout_tensor: str | None = None
    assumptions: tuple[str, ...] = ()
    # Filled in by the loaders; all optional so that hand-made Models stay valid.
    source: str = "onnx"  # where the description came from: onnx | sidecar | bioimageio
    sha256: str | None = None  # of the ONNX file at `path`
    package: Path | None = None  # bioimage.io package folder (extracted when a zip)
    test_inputs: tuple[Path, ...] = ()  # bioimage.io test tensors (.npy), before preprocessing
    test_outputs: tuple[Path, ...] = ()  # ... and after the package's postprocessing
    # Grey-box rewrite at several tensors: one mask input, channel blocks in this order.
    dropout_tensors: tuple[str, ...] = ()
    dropout_levels: tuple[int, ...] = ()  # channels per masked tensor; sum == dropout_channels
    card: dict | None = field(default=None, compare=False, hash=False)  # free-form model card
    assumed_fields: tuple[str, ...] = ()  # fields whose value was assumed, not declared

    def __post_init__(self):
        if self.preprocessing.kind not in PREPROCESSING_KINDS:
            raise ValueError(f"{self.name}: unknown preprocessing {self.preprocessing.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"{self.name}: unknown activation {self.activation!r}")
        if self.task not in TASKS:
            raise ValueError(f"{self.name}: unknown task {self.task!r}")
        if self.postprocessing.kind not in POSTPROCESSING_KINDS:
            raise ValueError(f"{self.name}: unknown post-processing {self.postprocessing.kind!r}")
        if set(self.axes) - set("bczyx") or len(set(self.axes)) != len(self.axes):
            raise ValueError(f"{self.name}: bad axes {self.axes!r} (letters from 'bczyx', once)")

    @property
    def spatial_axes(self) -> str:
        return "".join(a for a in self.axes if a in "zyx")

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return len(self.spatial_axes)

    @property
    def greybox(self) -> bool:
        return self.dropout_input is not None

    def with_(self, **changes) -> "Model":
        return replace(self, **changes)
