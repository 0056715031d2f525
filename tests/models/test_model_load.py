"""Loading bare ONNX files and ONNX + sidecar: inferred values, declared values, bad files."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from unet_graphs import make_model, unet

from segrank.errors import ModelError
from segrank.models import ModelAssumptionWarning, load_model
from segrank.models.onnx_graph import runtime_max_ir_version, runtime_max_opset
from segrank.models.sidecar import write_sidecar
from segrank.models.untrusted import sha256_file


def test_bare_2d_unet_inferred_and_warned(unet2d):
    with pytest.warns(ModelAssumptionWarning) as caught:
        model = load_model(unet2d)
    assert model.name == "unet2d" and model.source == "onnx"
    assert (model.axes, model.in_channels, model.out_channels) == ("bcyx", 1, 1)
    assert model.input_name == "input" and model.output_name == "output"
    assert model.activation == "none"  # the graph ends in Sigmoid
    assert model.preprocessing.kind == "percentile"
    assert (model.preprocessing.low, model.preprocessing.high) == (1.0, 99.8)
    # two MaxPools: total downsampling 4 per axis
    assert model.tiling.multiple_of == (4, 4) and model.tiling.fixed is None
    assert model.sha256 == sha256_file(unet2d)
    texts = [str(w.message) for w in caught]
    assert len(texts) == len(model.assumptions) and all(t.startswith("unet2d: assumed ") for t in texts)
    assert {"axes", "activation", "task", "output_space", "preprocessing", "tiling"} <= set(model.assumed_fields)


def test_activation_and_foreground_from_the_graph(tmp_path):
    raw = load_model(unet(tmp_path / "raw.onnx", final=None) and tmp_path / "raw.onnx")
    assert raw.activation == "sigmoid"
    soft = load_model(unet(tmp_path / "soft.onnx", final="softmax", out_channels=2) and tmp_path / "soft.onnx")
    assert soft.activation == "none" and soft.out_channels == 2 and soft.foreground_channel == 1
    multi = load_model(unet(tmp_path / "three.onnx", final=None, out_channels=3) and tmp_path / "three.onnx")
    assert multi.foreground_channel == 0 and "foreground_channel" in multi.assumed_fields


def test_bare_3d_fixed_and_dynamic_shapes(tmp_path, unet3d):
    dynamic = load_model(unet3d)
    assert dynamic.axes == "bczyx" and dynamic.ndim == 3 and dynamic.tiling.multiple_of == (4, 4, 4)
    fixed_path = tmp_path / "fixed3d.onnx"
    unet(fixed_path, ndim=3, dynamic=False, size=16, in_channels=2)
    fixed = load_model(fixed_path)
    assert fixed.tiling.fixed == (16, 16, 16) and fixed.in_channels == 2


def test_dynamic_channel_axis_assumes_one_channel(tmp_path):
    proto = unet(None)
    dim = proto.graph.input[0].type.tensor_type.shape.dim[1]
    dim.Clear()
    dim.dim_param = "C"
    onnx.save(proto, tmp_path / "dync.onnx")
    model = load_model(tmp_path / "dync.onnx")
    assert model.in_channels == 1 and "in_channels" in model.assumed_fields


def test_sidecar_declares_fields(tmp_path, unet2d):
    sidecar = {
        "name": "dsb-unet-a",
        "axes": "bcyx",
        "task": "instance",
        "activation": "none",
        "output_space": "nuclei-foreground",
        "preprocessing": {"kind": "zero_mean_unit_variance"},
        "postprocessing": {"kind": "components", "threshold": 0.5, "min_size": 10},
        "tiling": {"multiple_of": [16, 16], "minimum": [16, 16], "halo": [8, 8]},
        "card": {"source_data": "synthetic"},
    }
    unet2d.with_suffix(".yaml").write_text(yaml.safe_dump(sidecar))
    model = load_model(unet2d)
    assert model.source == "sidecar" and model.name == "dsb-unet-a"
    assert model.task == "instance" and model.postprocessing.min_size == 10
    assert model.tiling.halo == (8, 8) and model.preprocessing.kind == "zero_mean_unit_variance"
    assert model.card == {"source_data": "synthetic"}
    assert model.assumptions == ()  # everything that matters was declared
    # the sidecar itself can be named, and an explicit name wins
    assert load_model(unet2d.with_suffix(".yaml"), name="other").name == "other"


def test_sidecar_round_trip(tmp_path, unet2d):
    model = load_model(unet2d)
    write_sidecar(model.with_(name="copy", output_space="cells"), unet2d.with_suffix(".yaml"))
    again = load_model(unet2d)
    assert again.name == "copy" and again.output_space == "cells"
    assert again.tiling == model.tiling and again.preprocessing == model.preprocessing


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("name: a\ncolour: red\n", "unknown key 'colour'"),
        ("tiling: {stride: [2, 2]}\n", "unknown key 'tiling.stride'"),
        ("activation: relu\n", "unknown activation"),
        ("axes: bcx\n", "axes 'bcx'"),
        ("foreground_channel: 3\n", "foreground_channel 3"),
        ("in_channels: 2\n", "in_channels 2"),
        ("name: [unclosed\n", "not a readable YAML sidecar"),
        ("- a list\n", "must be a mapping"),
        ("test_inputs: [../outside.npy]\n", "contains '..'"),
    ],
)
def test_bad_sidecars(unet2d, text, fragment):
    unet2d.with_suffix(".yaml").write_text(text)
    with pytest.raises(ModelError) as err:
        load_model(unet2d)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_corrupt_and_missing_files(tmp_path, unet2d):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(ModelError, match="junk.onnx: not a readable ONNX file"):
        load_model(junk)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(unet2d.read_bytes()[:300])
    with pytest.raises(ModelError, match="truncated.onnx"):
        load_model(truncated)
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "absent.onnx")
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(ModelError, match="segrank convert"):
        load_model(tmp_path / "weights.pt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="not a model"):
        load_model(tmp_path / "notes.txt")


def _identity_model(path, opset):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "y", "x"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "y", "x"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets) if opset <= onnx.defs.onnx_opset_version() else onnx.IR_VERSION
    onnx.save(model, path)
    return path


def test_opsets(tmp_path):
    assert load_model(_identity_model(tmp_path / "ok.onnx", 13)).in_channels == 1
    with pytest.raises(ModelError, match="opset 5 is older than ONNX Runtime runs"):
        load_model(_identity_model(tmp_path / "old.onnx", 5))
    newest = onnx.defs.onnx_opset_version()
    with pytest.raises(ModelError, match=f"opset {newest + 1} is newer than the installed onnx"):
        load_model(_identity_model(tmp_path / "future.onnx", newest + 1))
    too_new = onnx.load(tmp_path / "ok.onnx")
    too_new.ir_version = runtime_max_ir_version() + 1
    onnx.save(too_new, tmp_path / "ir.onnx")
    with pytest.raises(ModelError, match=f"IR version {too_new.ir_version} is newer than the installed"):
        load_model(tmp_path / "ir.onnx")
    runtime = runtime_max_opset()
    if runtime < newest:  # this onnx knows opsets the installed runtime cannot run
        with pytest.raises(ModelError, match="newer than the installed ONNX Runtime"):
            load_model(_identity_model(tmp_path / "ahead.onnx", runtime + 1))


def test_multi_input_and_multi_output(tmp_path):
    a = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "y", "x"])
    b = helper.make_tensor_value_info("hint", TensorProto.FLOAT, ["N", 1, "y", "x"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "y", "x"])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 1, "y", "x"])
    two_in = make_model(helper.make_graph([helper.make_node("Add", ["image", "hint"], ["y"])], "g", [a, b], [y]),
                               opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(two_in, tmp_path / "two_in.onnx")
    with pytest.raises(ModelError, match=r"2 inputs \(image, hint\)"):
        load_model(tmp_path / "two_in.onnx")
    nodes = [helper.make_node("Relu", ["image"], ["y"]), helper.make_node("Sigmoid", ["image"], ["z"])]
    two_out = make_model(helper.make_graph(nodes, "g", [a], [y, z]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(two_out, tmp_path / "two_out.onnx")
    first = load_model(tmp_path / "two_out.onnx")
    assert first.output_name == "y" and "output_name" in first.assumed_fields and first.activation == "sigmoid"
    (tmp_path / "two_out.yaml").write_text("output_name: z\n")
    second = load_model(tmp_path / "two_out.onnx")
    assert second.output_name == "z" and second.activation == "none"
    (tmp_path / "two_out.yaml").write_text("output_name: w\n")
    with pytest.raises(ModelError, match="output_name 'w'"):
        load_model(tmp_path / "two_out.onnx")


def test_rank3_input_needs_axes(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "y", "x"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "y", "x"])
    proto = make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(proto, tmp_path / "r3.onnx")
    with pytest.raises(ModelError, match="rank 3; give its axes"):
        load_model(tmp_path / "r3.onnx")
    (tmp_path / "r3.yaml").write_text("axes: byx\n")
    model = load_model(tmp_path / "r3.onnx")
    assert model.axes == "byx" and model.ndim == 2


def _external(tmp_path, location):
    proto = unet(None)
    for tensor in proto.graph.initializer:
        if tensor.name == "bottleneck_w":
            data = numpy_helper.to_array(tensor).tobytes()
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", "0"), ("length", str(len(data)))):
                tensor.external_data.add(key=key, value=value)
            return proto, data
    raise AssertionError


def test_external_data_must_stay_beside_the_model(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    proto, data = _external(tmp_path, "weights.bin")
    (folder / "weights.bin").write_bytes(data)
    onnx.save(proto, folder / "ok.onnx")
    assert load_model(folder / "ok.onnx").out_channels == 1

    proto, data = _external(tmp_path, "../weights.bin")
    (tmp_path / "weights.bin").write_bytes(data)
    onnx.save(proto, folder / "escape.onnx")
    with pytest.raises(ModelError, match=r"ONNX external data '\.\./weights\.bin' contains '\.\.'"):
        load_model(folder / "escape.onnx")

    proto, data = _external(tmp_path, "/etc/passwd")
    onnx.save(proto, folder / "absolute.onnx")
    with pytest.raises(ModelError, match="is an absolute path"):
        load_model(folder / "absolute.onnx")

    proto, _ = _external(tmp_path, "linked.bin")
    os.symlink(tmp_path / "weights.bin", folder / "linked.bin")
    onnx.save(proto, folder / "link.onnx")
    with pytest.raises(ModelError, match="linked.bin: ONNX external data is a symbolic link"):
        load_model(folder / "link.onnx")


def test_loaded_model_runs_like_the_graph(unet2d):
    """The description's names are the graph's: feeding by them reproduces the raw run."""
    from unet_graphs import run

    model = load_model(unet2d)
    x = np.random.default_rng(1).standard_normal((1, 1, 32, 32)).astype(np.float32)
    y = run(model.path, {model.input_name: x}, [model.output_name])[0]
    assert y.shape == (1, model.out_channels, 32, 32) and 0 <= y.min() and y.max() <= 1
