"""PyTorch -> ONNX: modules, TorchScript files, factory + state dict; dynamic axes; verification."""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
from unet_graphs import run

from segrank.errors import ModelError
from segrank.models import load_model
from segrank.models.convert import require_torch, torch_to_onnx
from segrank.models.greybox import find_bottleneck


def test_missing_torch_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(ModelError, match=r"weights\.pt: needs PyTorch to convert; install it with pip install 'segrank\[torch\]'"):
        require_torch("weights.pt")


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("ndim", [2, 3])
def test_module_export_has_dynamic_axes_and_matches_torch(tmp_path, torch, ndim):
    from torch_unets import tiny_unet

    module = tiny_unet(ndim=ndim, in_channels=2, out_channels=3)
    example = (1, 2) + (16,) * ndim
    out = torch_to_onnx(module, tmp_path / "m.onnx", example_shape=example)
    model = load_model(out)
    assert (model.in_channels, model.out_channels, model.ndim) == (2, 3, ndim)
    assert find_bottleneck(model)[1]  # the exported graph has candidates
    shape = (3, 2) + (24,) * ndim  # another batch and spatial size than the example
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(out, {"input": x})[0], expected, rtol=1e-4, atol=1e-5)


def test_torchscript_and_state_dict_files(tmp_path, torch):
    from torch_unets import SOURCE, tiny_unet

    module = tiny_unet()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(module, torch.zeros(1, 1, 16, 16)).save(str(tmp_path / "traced.pt"))
    ts = torch_to_onnx(tmp_path / "traced.pt", tmp_path / "ts.onnx", example_shape=(1, 1, 32, 32))
    torch.save(module.state_dict(), tmp_path / "state.pt")
    (tmp_path / "arch.py").write_text(SOURCE)
    sd = torch_to_onnx(tmp_path / "state.pt", tmp_path / "sd.onnx", example_shape=(1, 1, 32, 32),
                       architecture=f"{tmp_path / 'arch.py'}:TinyUNet", kwargs={"base": 4})
    x = np.random.default_rng(1).standard_normal((2, 1, 48, 40)).astype(np.float32)
    a, b = run(ts, {"input": x})[0], run(sd, {"input": x})[0]
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(a, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelError, match="state dict does not fit"):
        torch_to_onnx(tmp_path / "state.pt", tmp_path / "bad.onnx", example_shape=(1, 1, 32, 32),
                      architecture=f"{tmp_path / 'arch.py'}:TinyUNet", kwargs={"base": 8})
    with pytest.raises(ModelError, match="not a TorchScript file"):
        torch_to_onnx(tmp_path / "state.pt", tmp_path / "bad.onnx", example_shape=(1, 1, 32, 32))
    assert not (tmp_path / "bad.onnx").exists()


def test_sizes_frozen_by_tracing_fail_verification(tmp_path, torch):
    class Frozen(torch.nn.Module):
        """Reshapes with the example's sizes as Python ints: only valid at that size."""

        def forward(self, x):
            n, c, h, w = (int(s) for s in x.shape)
            return torch.sigmoid(x.reshape(n, c, h * w).reshape(n, c, h, w))

    with pytest.raises(ModelError) as err:
        torch_to_onnx(Frozen(), tmp_path / "frozen.onnx", example_shape=(1, 1, 16, 16))
    assert "frozen.onnx" in str(err.value) and "[2, 1, 32, 32]" in str(err.value)
    assert not (tmp_path / "frozen.onnx").exists() and not list(tmp_path.glob("*.partial"))
