"""The sidecar description of an ONNX model: ``NAME.yaml`` beside ``NAME.onnx``.

Keys are the `Model` field names; preprocessing, postprocessing and tiling are nested
mappings with their dataclass field names; lists become tuples. Every key is optional: what
is missing is inferred from the graph (and reported as an assumption). Example::

    name: dsb-unet-a
    axes: bcyx
    task: semantic            # or instance
    activation: sigmoid       # applied by segrank to the raw output: none|sigmoid|softmax
    foreground_channel: 0
    output_space: nuclei-foreground
    preprocessing: {kind: percentile, low: 1.0, high: 99.8}
    postprocessing: {kind: components, threshold: 0.5, min_size: 10}
    tiling: {multiple_of: [16, 16], minimum: [16, 16], halo: [16, 16]}
    test_inputs: [test_input.npy]     # optional, for `segrank inspect --check`
    test_outputs: [test_output.npy]
    card: {source_data: DSB2018 stage 1, split: train, validation_f1: 0.87}
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import yaml

from ..errors import ModelError
from .description import Model, Postprocessing, Preprocessing, Tiling
from .untrusted import resolve_inside

# Keys a sidecar may set; the rest of Model (path, sha256, dropout_*, ...) comes from files.
SIDECAR_KEYS = (
    "name", "axes", "input_name", "output_name", "in_channels", "out_channels", "task", "activation",
    "foreground_channel", "output_space", "preprocessing", "postprocessing", "tiling",
    "test_inputs", "test_outputs", "card",
)
_NESTED = {"preprocessing": Preprocessing, "postprocessing": Postprocessing, "tiling": Tiling}


def sidecar_path(onnx_path: Path) -> Path | None:
    """The sidecar of an ONNX file (NAME.yaml, or NAME.yml), if there is one."""
    for suffix in (".yaml", ".yml"):
        candidate = Path(onnx_path).with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _nested(path: Path, key: str, value) -> object:
    cls = _NESTED[key]
    if not isinstance(value, dict):
        raise ModelError(f"{path}: '{key}' must be a mapping of {', '.join(f.name for f in fields(cls))}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ModelError(f"{path}: unknown key '{key}.{unknown[0]}' (known: {', '.join(sorted(known))})")
    try:
        return cls(**{k: _tuples(v) for k, v in value.items()})
    except (TypeError, ValueError) as err:
        raise ModelError(f"{path}: bad '{key}' ({err})") from None


def read_sidecar(path: Path) -> dict:
    """The fields a sidecar declares, validated and converted (nested dataclasses, tuples, Paths)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path}: not a readable YAML sidecar ({first})") from None
    return parse_declared(data, path, base=path.parent)


def parse_declared(data, path: Path, *, base: Path) -> dict:
    """Validate a mapping of sidecar keys (from a sidecar file or a package's config)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ModelError(f"{path}: a sidecar must be a mapping of Model fields, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SIDECAR_KEYS))
    if unknown:
        raise ModelError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(SIDECAR_KEYS)})")
    out = {}
    for key, value in data.items():
        if key in _NESTED:
            out[key] = _nested(path, key, value)
        elif key in ("test_inputs", "test_outputs"):
            names = value if isinstance(value, list) else [value]
            out[key] = tuple(resolve_inside(base, str(n), what=key) for n in names)
        elif key == "card":
            out[key] = value
        elif key in ("in_channels", "out_channels", "foreground_channel"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ModelError(f"{path}: '{key}' must be an integer, got {value!r}")
            out[key] = value
        else:
            out[key] = str(value)
    return out


def sidecar_dict(model: Model) -> dict:
    """A model's description as a sidecar mapping (plain YAML types)."""
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    data = {}
    for key in SIDECAR_KEYS:
        value = getattr(model, key)
        if key in _NESTED:
            value = {f.name: plain(getattr(value, f.name)) for f in fields(value)}
        elif key in ("test_inputs", "test_outputs"):
            if not value:
                continue
            value = [str(p) for p in value]
        elif key == "card" and value is None:
            continue
        data[key] = plain(value)
    return data


def write_sidecar(model: Model, path: Path) -> Path:
    """Write `model`'s description as a sidecar; test tensors are written relative to it when possible."""
    path = Path(path)
    data = sidecar_dict(model)
    for key in ("test_inputs", "test_outputs"):
        if key in data:
            # A sidecar may only name files inside its folder; others are left out.
            names = [_relative(Path(p), path.parent) for p in data[key]]
            if all(n is not None for n in names):
                data[key] = names
            else:
                del data[key]
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _relative(p: Path, base: Path) -> str | None:
    try:
        return p.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return None
