"""Device check (not collected by pytest): all-ones mask vs the original graph on CUDA.

Builds a U-Net of realistic width (base 32, depth 4) with onnx.helper, rewrites it at the
bottleneck and at every level, and prints max |rewritten(all ones) - original| per execution
provider, plus the spread between two runs of the same graph. Usage:
    PYTHONPATH=python:tests/models python tests/models/gpu_identity_check.py
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from unet_graphs import unet

from segrank.models import load_model
from segrank.models.greybox import rewrite


def session(path, provider):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=[provider])


def main() -> None:
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    tmp = Path(tempfile.mkdtemp())
    os.environ["SEGRANK_CACHE_DIR"] = str(tmp / "cache")
    results = {"available": ort.get_available_providers(), "ort": ort.__version__, "runs": []}
    for ndim, size in ((2, 256), (3, 64)):
        path = tmp / f"unet{ndim}d.onnx"
        unet(path, ndim=ndim, base=32 if ndim == 2 else 16, depth=4, final=None, up="resize" if ndim == 2 else "convtranspose")
        model = load_model(path)
        x = np.random.default_rng(0).standard_normal((1, 1) + (size,) * ndim).astype(np.float32)
        for every in (False, True):
            grey = rewrite(model, every_level=every)
            ones = np.ones((1, grey.dropout_channels) + (1,) * ndim, np.float32)
            for provider in providers:
                base = session(path, provider)
                new = session(grey.path, provider)
                if base.get_providers()[0] != provider:  # ORT falls back to CPU silently
                    results["runs"].append({"provider": provider, "error": "provider could not be created"})
                    continue
                a = base.run(None, {"input": x})[0]
                a2 = base.run(None, {"input": x})[0]
                b = new.run(None, {"input": x, grey.dropout_input: ones})[0]
                b2 = new.run(None, {"input": x, grey.dropout_input: ones})[0]
                results["runs"].append({
                    "ndim": ndim, "every_level": every, "provider": provider, "tensors": list(grey.dropout_tensors),
                    "max_abs_logit": float(np.abs(a).max()),
                    "ones_vs_original": float(np.abs(b - a).max()),
                    "original_rerun": float(np.abs(a2 - a).max()),
                    "rewritten_rerun": float(np.abs(b2 - b).max()),
                })
    print(json.dumps(results, indent=1))
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_identity.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
