"""`segrank inspect`, `segrank greybox`, `segrank convert`."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from packages import onnx_package
from unet_graphs import make_model, run

from segrank.cli import main
from segrank.models import load_model


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_inspect_json_and_text(unet2d):
    result = _invoke("inspect", unet2d, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in ("inputs", "outputs", "bottleneck", "candidates", "axes", "preprocessing", "activation", "postprocessing", "tiling", "assumptions"):
        assert key in data
    assert data["inputs"] == [{"name": "input", "shape": ["N", 1, "y", "x"], "dtype": "float32"}]
    assert data["bottleneck"] == "bottleneck"
    marked = [c for c in data["candidates"] if c["bottleneck"]]
    assert [(c["name"], c["shape"]) for c in marked] == [("bottleneck", [1, 16, 16, 16])]
    text = _invoke("inspect", unet2d)
    assert text.exit_code == 0 and "* bottleneck" in text.stdout and "percentile 1.0 / 99.8" in text.stdout


def test_inspect_model_without_bottleneck_still_describes_it(tmp_path):
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "y", "x"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "y", "x"])
    save(make_model(helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "g", [x], [y]),
                           opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "flat.onnx")
    result = _invoke("inspect", tmp_path / "flat.onnx", "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and data["bottleneck"] is None and "--tensor" in data["bottleneck_problem"]


def test_greybox_command_writes_graph_and_sidecar(tmp_path, unet2d):
    out = tmp_path / "out" / "grey.onnx"
    out.parent.mkdir()
    result = _invoke("greybox", unet2d, "--tensor", "auto", "--out", out)
    assert result.exit_code == 0, result.output
    assert "['N', 16, 1, 1]" in result.stdout and out.with_suffix(".yaml").is_file()
    model = load_model(out)
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    ones = np.ones((1, 16, 1, 1), np.float32)
    np.testing.assert_allclose(run(out, {"input": x, model.dropout_input: ones})[0], run(unet2d, {"input": x})[0], atol=1e-5)
    levels = _invoke("greybox", unet2d, "--out", tmp_path / "levels.onnx", "--every-level")
    assert levels.exit_code == 0 and "enc0, enc1, bottleneck, dec1" in levels.stdout


def test_errors_are_one_line_without_traceback(tmp_path, unet2d):
    bad = _invoke("greybox", unet2d, "--tensor", "nope", "--out", tmp_path / "x.onnx")
    assert bad.exit_code == 2
    lines = bad.output.strip().splitlines()
    assert lines[-1].startswith("segrank: error: ") and "'nope'" in lines[-1] and "Traceback" not in bad.output
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    junk = _invoke("inspect", tmp_path / "junk.onnx")
    assert junk.exit_code == 2 and "junk.onnx: not a readable ONNX file" in junk.output


def test_convert_package_to_onnx_with_sidecar(tmp_path):
    folder = onnx_package(tmp_path / "pkg")
    result = _invoke("convert", folder, "--out", tmp_path / "pkg.onnx")
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "pkg.onnx")
    assert model.source == "sidecar" and model.name == "pkg-05" and model.preprocessing.kind == "zero_mean_unit_variance"
    assert model.activation == "sigmoid"


def test_convert_torchscript_command(tmp_path):
    torch = pytest.importorskip("torch")
    from torch_unets import tiny_unet

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(tiny_unet(), torch.zeros(1, 1, 16, 16)).save(str(tmp_path / "net.pt"))
    result = _invoke("convert", tmp_path / "net.pt", "--out", tmp_path / "net.onnx", "--shape", "1,1,32,32")
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "net.onnx").in_channels == 1
    missing = _invoke("convert", tmp_path / "net.pt", "--out", tmp_path / "x.onnx")
    assert missing.exit_code == 2 and "--shape" in missing.output
