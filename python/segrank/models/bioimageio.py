"""bioimage.io model packages (spec 0.4 and 0.5): folder, zip, or the description file itself.

What is read from the description: the input and output axes and channels, the input's
preprocessing, the output's postprocessing (sigmoid / softmax become the activation),
shape constraints and halo, test tensors, and weights. ONNX weights are used directly;
TorchScript and pytorch_state_dict weights are converted to ONNX (torch needed) into the
cache. A state dict's architecture is Python code and is run only with ``trust_code=True``.
Segrank-specific fields (task, output_space, ...) may be declared under ``config: segrank:``
with the sidecar keys. Nothing is fetched: a URL where a file is needed is refused.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from ..errors import ModelError
from .description import Model, Preprocessing, Tiling
from .onnx_model import load_onnx
from .package_tensors import PackageTensor, tensors_v04, tensors_v05
from .sidecar import parse_declared
from .untrusted import cache_dir, check_sha256, resolve_inside, safe_extract_zip, sha256_file

DESCRIPTION_NAMES = ("rdf.yaml", "bioimageio.yaml")
WEIGHT_PRIORITY = ("onnx", "torchscript", "pytorch_state_dict")


def find_description(folder: Path) -> Path | None:
    """The description file of a package folder (rdf.yaml, bioimageio.yaml or *.bioimageio.yaml).

    A symbolic link is found too (even a dangling one), so that opening the package refuses
    it (`_checked_description`) rather than following it or calling the folder no package.
    """
    for name in DESCRIPTION_NAMES:
        if (folder / name).is_file() or (folder / name).is_symlink():
            return folder / name
    found = sorted(folder.glob("*.bioimageio.yaml"))
    return found[0] if len(found) == 1 else None


def _checked_description(root: Path, rdf: Path) -> tuple[Path, Path]:
    """(root, rdf) once the description is a regular file in `root` itself, not a link out of it."""
    return root, resolve_inside(root, rdf.name, what="description file")


def is_package(path: Path) -> bool:
    """Whether `path` looks like a bioimage.io package (folder, zip or description file)."""
    path = Path(path)
    if path.is_dir():
        return find_description(path) is not None
    if path.suffix.lower() == ".zip":
        return True
    if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except Exception:
            return False
        return isinstance(data, dict) and data.get("type") == "model" and "format_version" in data
    return False


def _open(path: Path) -> tuple[Path, Path]:
    """(package root, description file), extracting a zip into the cache."""
    path = Path(path)
    if path.is_dir():
        rdf = find_description(path)
        if rdf is None:
            raise ModelError(f"{path}: no rdf.yaml or bioimageio.yaml in the folder")
        return _checked_description(path, rdf)
    if path.suffix.lower() == ".zip":
        if not path.is_file():
            raise ModelError(f"{path}: no such file")
        dest = cache_dir() / "packages" / sha256_file(path)[:24]
        if not dest.is_dir():
            dest.parent.mkdir(parents=True, exist_ok=True)
            safe_extract_zip(path, dest)
        rdf = find_description(dest)
        if rdf is None:  # packages zipped with their folder
            subs = [p for p in dest.iterdir() if p.is_dir() and not p.is_symlink()]
            if len(subs) == 1 and find_description(subs[0]) is not None:
                return _checked_description(subs[0], find_description(subs[0]))
            raise ModelError(f"{path}: the zip holds no rdf.yaml or bioimageio.yaml")
        return _checked_description(dest, rdf)
    if not path.is_file() and not path.is_symlink():
        raise ModelError(f"{path}: no such file or folder")
    return _checked_description(path.parent, path)


def _version(rdf: Path, data: dict) -> tuple[int, int]:
    text = str(data.get("format_version", ""))
    try:
        major, minor = (int(p) for p in text.split(".")[:2])
    except ValueError:
        raise ModelError(f"{rdf}: missing or bad format_version {text!r}") from None
    if (major, minor) not in ((0, 4), (0, 5)):
        raise ModelError(f"{rdf}: format_version {text} is not supported (0.4.x and 0.5.x are)")
    return major, minor


def _scalar(rdf: Path, step: str, key: str, value, default=None):
    """A per-channel parameter that must be one number for segrank's normalisation."""
    if value is None:
        return default
    values = np.ravel(np.asarray(value, dtype=np.float64))
    if values.size == 0:
        return default
    if not np.all(values == values[0]):
        raise ModelError(f"{rdf}: {step} with per-channel {key} {values.tolist()} is not supported (one value for all channels)")
    return float(values[0])


def _preprocessing(rdf: Path, steps: list[dict] | None, notes: list) -> Preprocessing:
    """The first normalising step as a `Preprocessing`; the rest are noted as ignored."""
    chosen = None
    for step in steps or []:
        op = step.get("id") or step.get("name")
        kw = step.get("kwargs") or {}
        if op == "ensure_dtype":
            continue
        if chosen is not None:
            notes.append(("preprocessing", f"preprocessing step {op!r} after {chosen.kind!r} ignored"))
            continue
        if op == "scale_range":
            chosen = Preprocessing(
                kind="percentile",
                low=float(kw.get("min_percentile", 0.0)),
                high=float(kw.get("max_percentile", 100.0)),
                eps=float(kw.get("eps", 1e-6)),
            )
        elif op == "fixed_zero_mean_unit_variance" or (op == "zero_mean_unit_variance" and kw.get("mode") == "fixed"):
            chosen = Preprocessing(
                kind="zero_mean_unit_variance",
                mean=_scalar(rdf, op, "mean", kw.get("mean")),
                std=_scalar(rdf, op, "std", kw.get("std")),
                eps=float(kw.get("eps", 1e-6)),
            )
        elif op == "zero_mean_unit_variance":
            if kw.get("mode") == "per_dataset":
                notes.append(("preprocessing", "zero_mean_unit_variance per_dataset computed per image"))
            chosen = Preprocessing(kind="zero_mean_unit_variance", eps=float(kw.get("eps", 1e-6)))
        elif op == "scale_linear":
            chosen = Preprocessing(
                kind="scale_linear",
                gain=_scalar(rdf, op, "gain", kw.get("gain"), 1.0),
                offset=_scalar(rdf, op, "offset", kw.get("offset"), 0.0),
            )
        else:
            notes.append(("preprocessing", f"preprocessing step {op!r} ignored (not supported)"))
    return chosen or Preprocessing(kind="none")


def _activation(steps: list[dict] | None, data_range, notes: list) -> str | None:
    activation = None
    for step in steps or []:
        op = step.get("id") or step.get("name")
        if op in ("sigmoid", "softmax") and activation is None:
            activation = op
        elif op != "ensure_dtype":
            notes.append(("activation", f"output postprocessing step {op!r} ignored"))
    if activation is None and data_range is not None:
        try:
            low, high = (float(v) for v in data_range)
        except (TypeError, ValueError):
            return None
        if 0.0 <= low and high <= 1.0:
            return "none"  # the package declares probabilities
    return activation


def _tiling(rdf: Path, tensor: PackageTensor, out: PackageTensor, notes: list) -> Tiling:
    spatial = [(a, s) for a, s in zip(tensor.axes, tensor.sizes) if a in "zyx"]
    if not spatial or any(s is None for _, s in spatial):
        return None  # nothing declared: inferred from the graph
    halo = tuple(out.halo.get(a, 0) for a, _ in spatial)
    mins = [s if isinstance(s, int) else s["min"] for _, s in spatial]
    steps = [0 if isinstance(s, int) else s["step"] for _, s in spatial]
    if all(step == 0 for step in steps):
        return Tiling(fixed=tuple(mins), halo=halo)
    if any(step == 0 for step in steps) or any(m % step for m, step in zip(mins, steps) if step):
        notes.append(("tiling", f"tiling: the declared shape (min {mins}, step {steps}) is not a multiple-of rule; using the fixed shape {mins}"))
        return Tiling(fixed=tuple(mins), halo=halo)
    return Tiling(minimum=tuple(mins), multiple_of=tuple(steps), halo=halo)


def _spatial_of(shape, axes: str) -> list[int]:
    return [n for a, n in zip(axes, shape) if a in "zyx"]


def _weights(
    rdf: Path, root: Path, data: dict, *, trust_code: bool, example_shape, axes: str, tiling: Tiling | None
) -> tuple[Path, Path, list]:
    """(onnx path, folder its external data lies in, notes) from the first usable weights entry."""
    weights = data.get("weights") or {}
    if not isinstance(weights, dict) or not weights:
        raise ModelError(f"{rdf}: the description lists no weights")
    present = [k for k in WEIGHT_PRIORITY if k in weights]
    if not present:
        raise ModelError(f"{rdf}: no usable weights ({', '.join(weights)}); segrank reads onnx, torchscript, pytorch_state_dict")
    kind = present[0]
    entry = weights[kind] or {}
    source = resolve_inside(root, str(entry.get("source", "")), what=f"weights.{kind}.source")
    check_sha256(source, entry.get("sha256"))
    notes: list = []
    if kind == "onnx":
        external = entry.get("external_data")
        if isinstance(external, dict) and external.get("source"):
            check_sha256(resolve_inside(root, str(external["source"]), what="weights.onnx.external_data"), external.get("sha256"))
        return source, root, notes
    from .convert import require_torch, torch_to_onnx

    if kind == "pytorch_state_dict" and not trust_code:
        raise ModelError(
            f"{rdf}: pytorch_state_dict weights need the package's Python architecture; pass --trust-code (trust_code=True) to run it"
        )
    require_torch(str(rdf))
    if example_shape is None:
        raise ModelError(f"{rdf}: cannot convert {kind} weights without a test input or a declared input shape")
    architecture, kwargs = None, None
    if kind == "pytorch_state_dict":
        arch = entry.get("architecture")
        if isinstance(arch, dict):  # 0.5
            callable_name = arch.get("callable")
            if arch.get("source"):
                file = resolve_inside(root, str(arch["source"]), what="weights.pytorch_state_dict.architecture.source")
                check_sha256(file, arch.get("sha256"))
                architecture = f"{file}:{callable_name}"
            else:
                architecture = f"{arch.get('import_from')}:{callable_name}"
            kwargs = arch.get("kwargs") or {}
        else:  # 0.4: "file.py:Name" or "module.Name"
            text = str(arch or "")
            if ".py:" in text:
                file_name, callable_name = text.rsplit(":", 1)
                file = resolve_inside(root, file_name, what="weights.pytorch_state_dict.architecture")
                check_sha256(file, entry.get("architecture_sha256"))
                architecture = f"{file}:{callable_name}"
            else:
                architecture = text
            kwargs = entry.get("kwargs") or {}
    key = sha256_file(source)[:16]
    out = cache_dir() / "converted" / f"{key}-{'x'.join(map(str, example_shape))}.onnx"
    if not out.is_file():
        # Second verification shape: batch 2 and the next valid spatial size (no check when fixed).
        check_dynamic, dynamic_shape = tiling is None or tiling.fixed is None, None
        if tiling is not None and tiling.multiple_of:
            spatial = iter(s + step for s, step in zip(_spatial_of(example_shape, axes), tiling.multiple_of))
            dynamic_shape = tuple(2 if a == "b" else n if a == "c" else next(spatial) for a, n in zip(axes, example_shape))
        torch_to_onnx(source, out, example_shape=example_shape, architecture=architecture, kwargs=kwargs, base=root,
                      check_dynamic=check_dynamic, dynamic_shape=dynamic_shape)
    notes.append(("source", f"{kind} weights converted to ONNX ({out})"))
    return out, out.parent, notes


def load_package(path: Path, *, name: str | None = None, trust_code: bool = False) -> Model:
    """Describe a bioimage.io model package; see the module docstring."""
    root, rdf = _open(Path(path))
    data = _read_description(rdf)
    tin, outputs = _image_tensors(rdf, data)

    config = (data.get("config") or {}).get("segrank") if isinstance(data.get("config"), dict) else None
    declared = parse_declared(config or {}, rdf, base=root)
    notes: list = []
    tout = _chosen_output(outputs, declared, notes)
    _check_axes(rdf, tin, tout)
    _declare_from_tensors(rdf, declared, tin, tout, notes)
    _declare_test_tensors(root, declared, tin, tout)

    example = _example_shape(declared, tin.axes)
    onnx_path, base, weight_notes = _weights(
        rdf, root, data, trust_code=trust_code, example_shape=example, axes=tin.axes, tiling=declared.get("tiling")
    )
    notes += weight_notes
    if "card" not in declared:
        declared["card"] = _card(data)
    source_note = [n for n in notes if n[0] == "source"]
    notes = [n for n in notes if n[0] != "source"]
    model = load_onnx(
        onnx_path,
        name=name or declared.pop("name", None) or str(data.get("name") or root.name),
        declared=declared,
        source="bioimageio",
        root=base,
        package=root,
        notes=tuple(notes),
    )
    if source_note:
        model = model.with_(card={**(model.card or {}), "converted": source_note[0][1]})
    return model


def _read_description(rdf: Path) -> dict:
    """The parsed description file, which must describe a model."""
    try:
        data = yaml.safe_load(rdf.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{rdf}: not a readable YAML description ({first})") from None
    if not isinstance(data, dict) or data.get("type") != "model":
        raise ModelError(f"{rdf}: not a bioimage.io model description (type must be 'model')")
    return data


def _image_tensors(rdf: Path, data: dict) -> tuple[PackageTensor, list[PackageTensor]]:
    """(the one input tensor, the output tensors), read as the description's spec version says."""
    version = _version(rdf, data)
    inputs, outputs = (tensors_v04 if version == (0, 4) else tensors_v05)(rdf, data)
    if len(inputs) != 1:
        raise ModelError(f"{rdf}: the model has {len(inputs)} inputs; segrank feeds exactly one image input")
    if not outputs:
        raise ModelError(f"{rdf}: the model declares no output")
    return inputs[0], outputs


def _chosen_output(outputs: list[PackageTensor], declared: dict, notes: list) -> PackageTensor:
    """The output tensor segrank reads: the declared output_name's, else the first.

    With several outputs and none declared, the first is noted and declared as output_name.
    """
    out_index = 0
    if declared.get("output_name") is None and len(outputs) > 1:
        notes.append(("output_name", f"uses output {outputs[0].id!r}, the first of {len(outputs)}"))
        declared["output_name"] = outputs[0].id
    elif declared.get("output_name") is not None:
        ids = [t.id for t in outputs]
        if declared["output_name"] in ids:
            out_index = ids.index(declared["output_name"])
    return outputs[out_index]


def _check_axes(rdf: Path, tin: PackageTensor, tout: PackageTensor) -> None:
    """The input axes must be letters from 'bczyx', and the output's the same letters."""
    if set(tin.axes) - set("bczyx"):
        raise ModelError(f"{rdf}: input axes {tin.axes!r} are not supported (letters from 'bczyx')")
    if sorted(tout.axes) != sorted(tin.axes):
        raise ModelError(f"{rdf}: output axes {tout.axes!r} differ from input axes {tin.axes!r}")


def _declare_from_tensors(rdf: Path, declared: dict, tin: PackageTensor, tout: PackageTensor, notes: list) -> None:
    """Fill the fields the segrank config leaves open from the tensor descriptions: axes,
    channels, preprocessing, activation and tiling (what they cannot tell is left to the graph)."""
    declared.setdefault("axes", tin.axes)
    if tin.channels is not None:
        declared.setdefault("in_channels", int(tin.channels))
    if tout.channels is not None:
        declared.setdefault("out_channels", int(tout.channels))
    if "preprocessing" not in declared:
        declared["preprocessing"] = _preprocessing(rdf, tin.pre, notes)
    if "activation" not in declared:
        activation = _activation(tout.post, tout.data_range, notes)
        if activation is not None:
            declared["activation"] = activation
    if "tiling" not in declared:
        tiling = _tiling(rdf, tin, tout, notes)
        if tiling is not None:
            declared["tiling"] = tiling
        elif tout.halo:
            notes.append(("tiling", f"tiling: declared halo {tout.halo} kept, shape rules inferred"))


def _declare_test_tensors(root: Path, declared: dict, tin: PackageTensor, tout: PackageTensor) -> None:
    """Declare the test input and output: the config's, else the description's (checked against their sha256)."""
    tests_in, tests_out = declared.get("test_inputs"), declared.get("test_outputs")
    if tests_in is None and tin.test:
        tests_in = (resolve_inside(root, str(tin.test), what="test input"),)
        check_sha256(tests_in[0], tin.test_sha)
    if tests_out is None and tout.test:
        tests_out = (resolve_inside(root, str(tout.test), what="test output"),)
        check_sha256(tests_out[0], tout.test_sha)
    declared["test_inputs"], declared["test_outputs"] = tuple(tests_in or ()), tuple(tests_out or ())


def _example_shape(declared: dict, axes: str) -> tuple[int, ...] | None:
    """An input shape to convert torch weights with: the test input's, else the smallest the tiling allows."""
    if declared["test_inputs"]:
        try:
            return tuple(np.load(declared["test_inputs"][0], mmap_mode="r", allow_pickle=False).shape)
        except Exception as err:
            raise ModelError(f"{declared['test_inputs'][0]}: not a readable .npy test tensor ({err})") from None
    if "tiling" in declared:
        t = declared["tiling"]
        spatial = iter(t.fixed or t.minimum)
        return tuple(1 if a == "b" else declared.get("in_channels", 1) if a == "c" else next(spatial) for a in axes)
    return None


def _card(data: dict) -> dict:
    """The model card: the description's name, id, description, license, tags, training data and version."""
    return {k: data[k] for k in ("name", "id", "description", "license", "tags", "training_data", "format_version") if k in data}
