"""PyTorch to ONNX: TorchScript files, modules, or a Python factory + state dict.

The exported graph has dynamic batch and spatial axes and is verified numerically against
torch on a seeded random input at the example shape and again at twice the batch and
spatial size (which catches sizes frozen into the graph by tracing). torch is an optional
extra: every function here imports it lazily and says how to install it when missing.

Loading a TorchScript file or a state dict (``weights_only=True``) runs no Python from the
file; a factory (the architecture) is Python code and runs only when the caller asks for it.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ModelError
from ..perturb.seeds import rng

DEFAULT_OPSET = 17


def require_torch(what: str):
    try:
        import torch
    except ImportError:
        raise ModelError(f"{what}: needs PyTorch to convert; install it with pip install 'segrank[torch]'") from None
    return torch


def load_callable(spec: str | Callable, *, base: Path | None = None) -> Callable:
    """A factory from "file.py:Name" (relative to `base`), "package.module:Name" or a callable.

    Importing runs Python code: callers decide whether the source is trusted.
    """
    if callable(spec):
        return spec
    text = str(spec)
    if ":" not in text:
        if "." not in text:
            raise ModelError(f"{text}: name the architecture as FILE.py:CALLABLE or MODULE:CALLABLE")
        text = text.rsplit(".", 1)[0] + ":" + text.rsplit(".", 1)[1]
    where, attr = text.rsplit(":", 1)
    if where.endswith(".py"):
        file = Path(where)
        if base is not None and not file.is_absolute():
            file = Path(base) / file
        if not file.is_file():
            raise ModelError(f"{file}: architecture source not found")
        name = f"segrank_architecture_{abs(hash(str(file.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            sys.modules.pop(name, None)
            raise ModelError(f"{file}: architecture source fails to import ({type(err).__name__}: {err})") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ModelError(f"{where}: architecture module cannot be imported ({err})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ModelError(f"{where}: has no callable {attr!r}") from None


def _state_dict(torch, path: Path) -> dict:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelError(f"{path}: not a loadable PyTorch state dict ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    # Common checkpoint wrappers around the actual state dict.
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict) and len(state) <= 4:
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ModelError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def build_module(module_or_path, *, architecture=None, kwargs: dict | None = None, base: Path | None = None):
    """The torch module to export, in eval mode, on CPU."""
    torch = require_torch(str(module_or_path))
    if isinstance(module_or_path, torch.nn.Module):
        module = module_or_path
    else:
        path = Path(module_or_path)
        if not path.is_file():
            raise ModelError(f"{path}: no such file")
        if architecture is None:
            try:
                with warnings.catch_warnings():  # torch marks TorchScript deprecated; still the format zoos ship
                    warnings.simplefilter("ignore", DeprecationWarning)
                    module = torch.jit.load(str(path), map_location="cpu")
            except Exception as err:
                raise ModelError(
                    f"{path}: not a TorchScript file ({type(err).__name__}); for a state dict give its architecture"
                ) from None
        else:
            factory = load_callable(architecture, base=base)
            try:
                module = factory(**(kwargs or {}))
            except Exception as err:
                raise ModelError(f"{architecture}: building the module failed ({type(err).__name__}: {err})") from None
            try:
                module.load_state_dict(_state_dict(torch, path))
            except ModelError:
                raise
            except Exception as err:
                raise ModelError(f"{path}: state dict does not fit {architecture} ({str(err).splitlines()[0]})") from None
    return module.eval().to("cpu")


def _run_torch(torch, module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        y = module(torch.from_numpy(x))
    ys = list(y) if isinstance(y, (tuple, list)) else [y]
    return [t.detach().cpu().numpy() for t in ys]


def verify(module, onnx_path: Path, shapes: list[tuple[int, ...]], *, rtol: float, atol: float, seed: int = 0) -> float:
    """Largest |torch - onnx| over seeded random inputs of the given shapes; raises on mismatch."""
    import onnxruntime as ort

    torch = require_torch(str(onnx_path))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst = 0.0
    for shape in shapes:
        x = rng(seed, "convert", onnx_path.name, 0, f"verify{list(shape)}").standard_normal(shape).astype(np.float32)
        try:
            expected = _run_torch(torch, module, x)
        except Exception as err:
            raise ModelError(
                f"{onnx_path}: the torch model itself fails on input shape {list(shape)} ({type(err).__name__}); "
                "dynamic axes cannot be verified (check_dynamic=False to skip)"
            ) from None
        try:
            got = session.run(None, {name: x})
        except Exception as err:
            raise ModelError(f"{onnx_path}: exported graph fails on input shape {list(shape)} ({str(err).splitlines()[0]})") from None
        for e, g in zip(expected, got):
            if e.shape != g.shape:
                raise ModelError(f"{onnx_path}: output shape {list(g.shape)} differs from torch {list(e.shape)} at input {list(shape)}")
            diff = float(np.max(np.abs(e.astype(np.float64) - g))) if e.size else 0.0
            worst = max(worst, diff)
            if not np.allclose(g, e, rtol=rtol, atol=atol):
                raise ModelError(
                    f"{onnx_path}: ONNX output differs from torch at input {list(shape)} (max abs diff {diff:.3g})"
                )
    return worst


def torch_to_onnx(
    module_or_path,
    out,
    *,
    example_shape: tuple[int, ...],
    architecture: str | Callable | None = None,
    kwargs: dict | None = None,
    base: Path | None = None,
    opset: int = DEFAULT_OPSET,
    input_name: str = "input",
    output_name: str = "output",
    rtol: float = 1e-3,
    atol: float = 1e-4,
    check_dynamic: bool = True,
    dynamic_shape: tuple[int, ...] | None = None,
    seed: int = 0,
) -> Path:
    """Export a PyTorch model to ONNX with dynamic batch and spatial axes, verified against torch.

    Parameters
    ----------
    module_or_path : torch.nn.Module or path
        A module; a TorchScript file; or, with `architecture`, a state-dict file.
    out : path
        The .onnx file to write (removed again if verification fails).
    example_shape : tuple of int
        An input shape the model accepts, batch and channel first, e.g. (1, 1, 64, 64).
    architecture : "file.py:Name", "module:Name" or callable, optional
        Factory of the module for a state dict; called with `kwargs`. This runs Python code.
    rtol, atol : float
        Tolerance of the numerical check, as in `numpy.allclose`.
    check_dynamic : bool
        Also verify at a second shape: `dynamic_shape`, by default batch 2 and twice the
        spatial size.

    Returns
    -------
    Path of the ONNX file.
    """
    torch = require_torch(str(module_or_path))
    module = build_module(module_or_path, architecture=architecture, kwargs=kwargs, base=base)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example_shape = tuple(int(s) for s in example_shape)
    if len(example_shape) not in (4, 5):
        raise ModelError(f"{out}: example shape {list(example_shape)} must be [batch, channel, (z,) y, x]")
    x = torch.zeros(example_shape, dtype=torch.float32)
    spatial = {0: "batch", **{i: "xyz"[len(example_shape) - 1 - i] for i in range(2, len(example_shape))}}
    with torch.no_grad():
        y = module(x)
    n_out = len(y) if isinstance(y, (tuple, list)) else 1
    outputs = [output_name] + [f"{output_name}_{i}" for i in range(1, n_out)]
    dynamic = {input_name: spatial, **{o: spatial for o in outputs}}
    tmp = out.with_name(out.name + ".partial")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (x,),
                str(tmp),
                dynamo=False,  # the TorchScript exporter needs no onnxscript and takes ScriptModules
                input_names=[input_name],
                output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
            )
    except Exception as err:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"{module_or_path}: export to ONNX failed ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    shapes = [example_shape]
    if check_dynamic:
        shapes.append(tuple(dynamic_shape) if dynamic_shape else (2 * example_shape[0], example_shape[1]) + tuple(2 * s for s in example_shape[2:]))
    try:
        verify(module, tmp, shapes, rtol=rtol, atol=atol, seed=seed)
    except ModelError as err:
        tmp.unlink(missing_ok=True)
        raise ModelError(str(err).replace(str(tmp), str(out))) from None
    tmp.replace(out)
    return out
