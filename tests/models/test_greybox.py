"""Grey-box rewrite: the bottleneck choice, the mask at the right tensor, identity with all-ones."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from unet_graphs import expose, make_model, run, unet

from segrank.errors import ModelError
from segrank.models import load_model
from segrank.models.greybox import analyse, find_bottleneck, rewrite
from segrank.perturb.dropout import channel_mask
from segrank.perturb.seeds import rng


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("ndim, up", [(2, "resize"), (2, "convtranspose"), (3, "convtranspose"), (3, "resize")])
def test_bottleneck_is_the_coarsest_encoder_tensor(tmp_path, ndim, up):
    path = tmp_path / "u.onnx"
    unet(path, ndim=ndim, up=up, depth=2, base=4)
    name, candidates = find_bottleneck(load_model(path))
    assert name == "bottleneck"
    shapes = {c.name: c.shape for c in candidates}
    probe = 64 if ndim == 2 else 32
    assert shapes["bottleneck"] == (1, 16) + (probe // 4,) * ndim
    sides = {c.name: c.side for c in candidates}
    assert sides["enc0"] == "encoder" and sides["dec0"] == "decoder" and sides["up0"] == "decoder"


def test_fixed_shape_model_uses_its_shape(tmp_path):
    path = tmp_path / "fixed.onnx"
    unet(path, dynamic=False, size=24, depth=3)
    analysis = analyse(load_model(path))
    assert analysis.input_shape == (1, 1, 24, 24) and analysis.bottleneck == "bottleneck"
    assert {c.name: c.shape for c in analysis.candidates}["bottleneck"] == (1, 32, 3, 3)


def _runtime_scales_unet(path):
    """Resize scales computed at run time from shapes (Shape -> Cast -> Div): static shape
    inference cannot size the decoder, so the analysis must run the graph once."""
    proto = unet(None, depth=1)
    graph = proto.graph
    for node in graph.node:
        if node.op_type == "Resize":
            node.input[2] = "dyn_scales"
    new = [
        helper.make_node("Shape", ["enc0"], ["skip_shape"]),
        helper.make_node("Shape", ["bottleneck"], ["deep_shape"]),
        helper.make_node("Cast", ["skip_shape"], ["skip_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["deep_shape"], ["deep_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["skip_f", "deep_f"], ["ratio"]),  # [1, C ratio, 2, 2]
        helper.make_node("Max", ["ratio", "ones4"], ["dyn_scales"]),  # [1, 1, 2, 2]
    ]
    graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "ones4"))
    index = [i for i, n in enumerate(graph.node) if n.op_type == "Resize"][0]
    nodes = list(graph.node)
    graph.ClearField("node")
    graph.node.extend(nodes[:index] + new + nodes[index:])
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return path


def test_falls_back_to_a_run_when_static_inference_leaves_sizes_unknown(tmp_path):
    model = load_model(_runtime_scales_unet(tmp_path / "dyn.onnx"))
    analysis = analyse(model)
    assert analysis.probed
    assert analysis.bottleneck == "bottleneck"
    assert {c.name: c.shape for c in analysis.candidates}["dec0"] == (1, 4, 64, 64)


def _conv_only(path, stride=1):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "y", "x"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "y2", "x2"])
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], strides=[stride, stride])
    proto = make_model(helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(proto, path)
    return path


def test_no_bottleneck_names_the_model_and_suggests_tensor(tmp_path):
    model = load_model(_conv_only(tmp_path / "flat.onnx"), name="flat-net")
    with pytest.raises(ModelError) as err:
        find_bottleneck(model)
    message = str(err.value)
    assert "flat-net" in message and "--tensor" in message and "no upsampling" in message
    # ... but a named tensor still works
    named = rewrite(model, tensor="y", out=tmp_path / "flat_gb.onnx")
    assert named.dropout_channels == 1


def test_upsampling_without_downsampling_has_no_bottleneck(tmp_path):
    proto = unet(None, depth=1)
    for node in proto.graph.node:  # make the pool a no-op 1x1 pooling and the Resize a 1x "upsampling"
        if node.op_type == "MaxPool":
            del node.attribute[:]
            node.attribute.extend([helper.make_attribute("kernel_shape", [1, 1]), helper.make_attribute("strides", [1, 1])])
    for init in proto.graph.initializer:
        if init.name.startswith("scales"):
            init.CopyFrom(numpy_helper.from_array(np.array([1, 1, 1, 1], np.float32), init.name))
    for node in proto.graph.node:  # a ConvTranspose keeps it an upsampling op by type
        if node.op_type == "Resize":
            node.op_type = "ConvTranspose"
            del node.input[1:]
            node.input.append("up_w")
            node.attribute.extend([helper.make_attribute("kernel_shape", [1, 1])])
            del node.attribute[[a.name for a in node.attribute].index("mode")]
    proto.graph.initializer.append(numpy_helper.from_array(np.ones((8, 8, 1, 1), np.float32), "up_w"))
    onnx.save(proto, tmp_path / "nodown.onnx")
    with pytest.raises(ModelError, match="no spatial downsampling"):
        find_bottleneck(load_model(tmp_path / "nodown.onnx"))


def test_mask_is_multiplied_into_the_bottleneck(tmp_path, unet2d):
    model = load_model(unet2d)
    grey = rewrite(model, out=tmp_path / "grey.onnx")
    assert grey.dropout_tensor == "bottleneck" and grey.dropout_channels == 16 and grey.dropout_levels == (16,)
    proto = onnx.load(grey.path)
    mask_input = [i for i in proto.graph.input if i.name == grey.dropout_input][0]
    dims = [d.dim_value or d.dim_param for d in mask_input.type.tensor_type.shape.dim]
    assert dims == ["N", 16, 1, 1]

    x = _x((2, 1, 32, 32))
    mask = channel_mask(16, 0.25, rng(0, "unet2d", "img", 0, "dropout"), batch=2)
    original = run(expose(onnx.load(unet2d), ["bottleneck"]), {"input": x}, ["bottleneck"])[0]
    masked = run(expose(proto, ["bottleneck"]), {"input": x, grey.dropout_input: mask}, ["bottleneck"])[0]
    # the tensor named "bottleneck" now carries the mask; its producer's value is unchanged
    np.testing.assert_allclose(masked, original * mask, rtol=0, atol=0)
    dropped = mask[:, :, 0, 0] == 0
    assert dropped.sum(axis=1).tolist() == [4, 4] and np.all(masked[dropped] == 0)
    # downstream sees it: the output changes under dropout
    y0 = run(unet2d, {"input": x})[0]
    y1 = run(grey.path, {"input": x, grey.dropout_input: mask})[0]
    assert np.abs(y1 - y0).max() > 1e-3


@pytest.mark.parametrize("ndim", [2, 3])
def test_all_ones_reproduces_the_original(tmp_path, ndim):
    path = tmp_path / "u.onnx"
    unet(path, ndim=ndim, up="convtranspose" if ndim == 3 else "resize", final=None)
    model = load_model(path)
    for every in (False, True):
        grey = rewrite(model, every_level=every)
        shape = (1, 1) + (16 if ndim == 3 else 48,) * ndim
        x = _x(shape, seed=3)
        ones = channel_mask(grey.dropout_levels, 0.0, rng(0, "m", "u", 0, "dropout"), ndim=ndim)
        assert ones.shape == (1, grey.dropout_channels) + (1,) * ndim and np.all(ones == 1)
        a = run(path, {"input": x})[0]
        b = run(grey.path, {"input": x, grey.dropout_input: ones})[0]
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


def test_every_level_masks_each_level_with_its_own_block(tmp_path, unet2d):
    grey = rewrite(load_model(unet2d), every_level=True)
    assert grey.dropout_tensors == ("enc0", "enc1", "bottleneck", "dec1")
    assert grey.dropout_levels == (4, 8, 16, 8) and grey.dropout_channels == 36
    mask = channel_mask(grey.dropout_levels, 0.3, rng(1, "u", "img", 0, "dropout"))
    x = _x((1, 1, 32, 32))
    names = list(grey.dropout_tensors)
    original = run(expose(onnx.load(unet2d), names), {"input": x}, names)
    pre = [f"{n}__segrank_pre_dropout" for n in names]
    masked = run(expose(onnx.load(grey.path), names + pre), {"input": x, grey.dropout_input: mask}, names + pre)
    start = 0
    for i, (name, c) in enumerate(zip(names, grey.dropout_levels)):
        block = mask[:, start : start + c]
        assert int((block == 0).sum()) == int(np.ceil(0.3 * c))
        # each level's tensor is its unmasked value (from the masked run: upstream dropout
        # changes it) times its own block of the mask
        np.testing.assert_allclose(masked[i], masked[len(names) + i] * block, rtol=0, atol=0)
        start += c
    # the first level has nothing masked upstream: its pre-mask value is the original
    np.testing.assert_allclose(masked[len(names)], original[0], rtol=0, atol=1e-6)


def test_old_opset_every_level_uses_attribute_slices(tmp_path):
    path = tmp_path / "old.onnx"
    unet(path, up="convtranspose", opset=9, final=None)
    grey = rewrite(load_model(path), every_level=True)
    x = _x((1, 1, 32, 32))
    ones = np.ones((1, grey.dropout_channels, 1, 1), np.float32)
    np.testing.assert_allclose(run(grey.path, {"input": x, grey.dropout_input: ones})[0], run(path, {"input": x})[0], atol=1e-5)


def test_named_tensors_and_errors(tmp_path, unet2d):
    model = load_model(unet2d)
    grey = rewrite(model, tensor="enc1", out=tmp_path / "enc1.onnx")
    assert grey.dropout_tensors == ("enc1",) and grey.dropout_channels == 8
    two = rewrite(model, tensor="enc1,dec1", out=tmp_path / "two.onnx")
    assert two.dropout_levels == (8, 8)
    with pytest.raises(ModelError, match="no intermediate tensor named 'nothing'"):
        rewrite(model, tensor="nothing", out=tmp_path / "x.onnx")
    with pytest.raises(ModelError, match="no intermediate tensor named 'scales0'"):
        rewrite(model, tensor="scales0", out=tmp_path / "x.onnx")
    with pytest.raises(ModelError, match="--every-level"):
        rewrite(model, tensor="enc1", every_level=True, out=tmp_path / "x.onnx")
    with pytest.raises(ModelError, match="already has a dropout input"):
        rewrite(grey, out=tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_rewritten_file_reloads_with_its_description(tmp_path, unet2d):
    unet2d.with_suffix(".yaml").write_text("name: net-a\noutput_space: nuclei\ntask: semantic\n")
    grey = rewrite(load_model(unet2d), out=tmp_path / "out" / "net-a-grey.onnx")
    again = load_model(grey.path)
    assert again.name == "net-a" and again.output_space == "nuclei"
    assert (again.dropout_input, again.dropout_levels, again.dropout_tensors) == (grey.dropout_input, (16,), ("bottleneck",))
    assert again.input_name == "input" and again.greybox
    # analysis still works on the rewritten graph (the mask input is fed ones)
    assert analyse(again).bottleneck == "bottleneck"


def test_cache_is_keyed_by_file_and_tensors(private_cache, unet2d):
    model = load_model(unet2d)
    a, b = rewrite(model), rewrite(model)
    assert a.path == b.path and a.path.is_relative_to(private_cache)
    c = rewrite(model, tensor="enc1")
    assert c.path != a.path and c.path.parent == a.path.parent


def test_float16_graph_gets_a_float32_mask_cast_to_its_type(tmp_path):
    proto = unet(None)
    for t in proto.graph.initializer:
        if not t.name.startswith("scales"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for vi in list(proto.graph.input) + list(proto.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.save(proto, tmp_path / "half.onnx")
    grey = rewrite(load_model(tmp_path / "half.onnx"))
    assert any(n.op_type == "Cast" for n in onnx.load(grey.path).graph.node)
    x = _x((1, 1, 32, 32)).astype(np.float16)
    mask = channel_mask(16, 0.5, rng(0, "half", "x", 0, "dropout"))
    ones = np.ones_like(mask)
    y = run(tmp_path / "half.onnx", {"input": x})[0]
    np.testing.assert_array_equal(run(grey.path, {"input": x, grey.dropout_input: ones})[0], y)
    masked = run(expose(onnx.load(grey.path), ["bottleneck"], TensorProto.FLOAT16), {"input": x, grey.dropout_input: mask}, ["bottleneck"])[0]
    assert masked.dtype == np.float16 and np.all(masked[:, mask[0, :, 0, 0] == 0] == 0)


def test_squeeze_excitation_gates_are_not_the_bottleneck(tmp_path):
    path = tmp_path / "se.onnx"
    unet(path, se=True)
    model = load_model(path)
    assert model.tiling.multiple_of == (4, 4)  # the 1x1 gates are no evidence of downsampling
    analysis = analyse(model)
    assert analysis.bottleneck == "bottleneck"
    names = {c.name for c in analysis.candidates}
    assert "enc1_se" in names and not names & {"se0_pool", "se1_fc", "se1_gate"}
    assert analysis.levels == ("enc0_se", "enc1_se", "bottleneck", "dec1")
