"""`segrank predict MODEL TARGET --out PRED.zarr`: the command over the Python API."""
from __future__ import annotations

import json

import numpy as np
import tifffile
import yaml
import zarr
from click.testing import CliRunner
from conv_nets import conv_net

from segrank.cli import main
from segrank.inference.predict import predict_image
from segrank.io.targets import open_target
from segrank.models import load_model


def _model(tmp_path):
    path = conv_net(tmp_path / "net.onnx", ndim=2, out_channels=1)
    (tmp_path / "net.yaml").write_text(yaml.safe_dump({
        "name": "net", "axes": "bcyx", "activation": "sigmoid", "task": "semantic", "output_space": "foreground",
        "preprocessing": {"kind": "percentile", "low": 1.0, "high": 99.8},
        "tiling": {"halo": [4, 4]},
    }))
    return path


def test_predict_command_writes_and_resumes(tmp_path):
    model_path = _model(tmp_path)
    stack = np.random.default_rng(0).integers(0, 255, size=(3, 40, 35)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    out = tmp_path / "pred.zarr"
    args = ["predict", str(model_path), str(tmp_path / "stack.tif"), "--out", str(out), "--tile", "2,24,24", "--device", "cpu"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["provider"] == "CPUExecutionProvider" and summary["n_reused"] == 0
    assert summary["n_computed"] == summary["n_blocks"] == 2 * 3 * 3
    expected = predict_image(load_model(model_path), open_target(tmp_path / "stack.tif").images[0], device="cpu", tile=(2, 24, 24))
    np.testing.assert_array_equal(zarr.open_array(str(out), path="stack")[...], expected)
    again = json.loads(CliRunner().invoke(main, args).stdout)
    assert again["n_computed"] == 0 and again["n_reused"] == summary["n_blocks"]


def test_predict_command_reports_axes_mismatch_in_one_line(tmp_path):
    model_path = _model(tmp_path)
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((2, 20, 20), np.uint8), photometric="minisblack")
    result = CliRunner().invoke(main, ["predict", str(model_path), str(tmp_path / "img.tif"), "--out", str(tmp_path / "p.zarr"),
                                       "--axes", "cyx", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'cyx'" in lines[0] and "'bcyx'" in lines[0] and "Traceback" not in result.output
