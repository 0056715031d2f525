"""Run a model on its own test tensors (bioimage.io ``test_inputs`` / ``test_outputs``).

The test input is the raw image; it is normalised as the description says, run through ONNX
Runtime (CPU; an all-ones mask for a rewritten graph), the declared output activation is
applied, and the result is compared with the test output.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .description import Model, Preprocessing


@dataclass(frozen=True)
class CheckResult:
    """Outcome for one test input / output pair."""

    model: str
    test_input: str
    test_output: str
    ok: bool
    max_abs_diff: float | None
    message: str


def normalise(x: np.ndarray, pre: Preprocessing, axes: str) -> np.ndarray:
    """The description's input normalisation, per batch item, with the inference stage's
    statistics (`segrank.inference.normalize`: per channel, over the whole image)."""
    from ..inference.normalize import normalization

    x = np.asarray(x, dtype=np.float32)
    letters = ("b" if "b" in axes else "") + ("c" if "c" in axes else "")
    order = letters + "".join(a for a in axes if a in "zyx")
    moved = np.transpose(x, [axes.index(a) for a in order])
    if "b" not in axes:
        moved = moved[None]
    if "c" not in axes:
        moved = moved[:, None]
    out = np.stack([normalization(pre, item.reshape(item.shape[0], -1)).apply(item) for item in moved])
    if "c" not in axes:
        out = out[:, 0]
    if "b" not in axes:
        out = out[0]
    return np.transpose(out, [order.index(a) for a in axes]).astype(np.float32)


def _activate(y: np.ndarray, activation: str, axes: str) -> np.ndarray:
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-y))
    if activation == "softmax":
        c = axes.index("c")
        e = np.exp(y - y.max(axis=c, keepdims=True))
        return e / e.sum(axis=c, keepdims=True)
    return y


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:
        raise ModelError(f"{path}: not a readable .npy test tensor ({type(err).__name__}: {err})") from None


def check_test_tensors(model: Model, *, rtol: float = 1e-3, atol: float = 1e-4) -> list[CheckResult]:
    """Compare the model's output on each test input with its test output.

    The comparison is ``numpy.allclose(result, expected, rtol, atol)``. The activation is
    applied only when the description declares it (an assumed activation is segrank's, not
    the package's postprocessing).
    """
    import onnxruntime as ort

    if not model.test_inputs or not model.test_outputs:
        raise ModelError(f"{model.path}: {model.name} has no test tensors to check (test_inputs / test_outputs)")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
    activation = model.activation if "activation" not in model.assumed_fields else "none"
    results = []
    for tin, tout in zip(model.test_inputs, model.test_outputs):
        x, expected = _load(tin), _load(tout)
        if x.ndim != len(model.axes):
            raise ModelError(f"{tin}: test input has {x.ndim} dims, the model's axes are {model.axes!r}")
        feeds = {model.input_name: normalise(x, model.preprocessing, model.axes)}
        if model.dropout_input is not None:
            b = x.shape[model.axes.index("b")] if "b" in model.axes else 1
            feeds[model.dropout_input] = np.ones((b, model.dropout_channels) + (1,) * model.ndim, np.float32)
        try:
            y = session.run([model.output_name], feeds)[0]
        except Exception as err:
            results.append(CheckResult(model.name, str(tin), str(tout), False, None, f"{tin}: the model fails on its test input ({str(err).splitlines()[0]})"))
            continue
        y = _activate(y.astype(np.float64), activation, model.axes)
        if y.shape != expected.shape:
            msg = f"{tout}: output shape {list(y.shape)} differs from the test output {list(expected.shape)}"
            results.append(CheckResult(model.name, str(tin), str(tout), False, None, msg))
            continue
        diff = float(np.max(np.abs(y - expected))) if y.size else 0.0
        ok = bool(np.allclose(y, expected, rtol=rtol, atol=atol))
        verdict = "matches" if ok else "differs from"
        msg = f"{tout}: output {verdict} the test output (max abs diff {diff:.3g}, rtol {rtol:g}, atol {atol:g})"
        results.append(CheckResult(model.name, str(tin), str(tout), ok, diff, msg))
    return results
