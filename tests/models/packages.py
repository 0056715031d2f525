"""bioimage.io packages (spec 0.4 and 0.5) built inside the tests, with honest test tensors."""
from __future__ import annotations

import hashlib
import warnings
import zipfile
from pathlib import Path

import numpy as np
import yaml
from unet_graphs import run, unet


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def raw_image(shape=(1, 1, 32, 32), seed=0) -> np.ndarray:
    gen = np.random.default_rng(seed)
    return (gen.uniform(0, 200, shape) + 20).astype(np.float32)


def zmuv(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return ((x64 - x64.mean()) / (x64.std() + 1e-6)).astype(np.float32)


def percentile(x: np.ndarray, low=1.0, high=99.8) -> np.ndarray:
    lo, hi = np.percentile(x.astype(np.float64), [low, high])
    return ((x - lo) / (hi - lo + 1e-6)).astype(np.float32)


def sigmoid(y):
    return 1.0 / (1.0 + np.exp(-y.astype(np.float64)))


def write_tests(folder: Path, x: np.ndarray, expected: np.ndarray) -> None:
    np.save(folder / "test_input.npy", x)
    np.save(folder / "test_output.npy", expected)


def rdf_v05(folder: Path, *, weights: dict, preprocessing: list, name="pkg-05", config=None, test_sha=True) -> dict:
    def axes(out: bool):
        space = []
        for a in ("y", "x"):
            axis = {"type": "space", "id": a}
            if out:
                axis.update(size={"tensor_id": "raw", "axis_id": a}, halo=8)
            else:
                axis.update(size={"min": 16, "step": 8})
            space.append(axis)
        return [{"type": "batch"}, {"type": "channel", "channel_names": ["c0"]}] + space

    def test(name):
        entry = {"source": name}
        if test_sha:
            entry["sha256"] = sha(folder / name)
        return entry

    rdf = {
        "format_version": "0.5.3",
        "type": "model",
        "name": name,
        "description": "a test U-Net",
        "inputs": [{"id": "raw", "axes": axes(False), "test_tensor": test("test_input.npy"), "preprocessing": preprocessing}],
        "outputs": [{"id": "probability", "axes": axes(True), "test_tensor": test("test_output.npy"), "postprocessing": [{"id": "sigmoid"}]}],
        "weights": weights,
    }
    if config:
        rdf["config"] = {"segrank": config}
    return rdf


def rdf_v04(folder: Path, *, weights: dict, name="pkg-04") -> dict:
    return {
        "format_version": "0.4.10",
        "type": "model",
        "name": name,
        "inputs": [{
            "name": "raw", "axes": "bcyx", "data_type": "float32", "data_range": [float("-inf"), float("inf")],
            "shape": {"min": [1, 1, 16, 16], "step": [0, 0, 8, 8]},
            "preprocessing": [{"name": "scale_range", "kwargs": {"mode": "per_sample", "axes": "xy", "min_percentile": 1.0, "max_percentile": 99.8}}],
        }],
        "outputs": [{
            "name": "probability", "axes": "bcyx", "data_type": "float32",
            "shape": {"reference_tensor": "raw", "scale": [1, 0, 1, 1], "offset": [0, 0.5, 0, 0]},
            "halo": [0, 0, 8, 8], "postprocessing": [{"name": "sigmoid"}],
        }],
        "test_inputs": ["test_input.npy"],
        "test_outputs": ["test_output.npy"],
        "weights": weights,
    }


def onnx_package(folder: Path, *, version: str = "0.5", config=None) -> Path:
    """A package with ONNX weights (raw logits; sigmoid as declared postprocessing)."""
    folder.mkdir(parents=True, exist_ok=True)
    unet(folder / "weights.onnx", final=None)
    x = raw_image()
    norm = zmuv(x) if version == "0.5" else percentile(x)
    expected = sigmoid(run(folder / "weights.onnx", {"input": norm})[0]).astype(np.float32)
    write_tests(folder, x, expected)
    weights = {"onnx": {"source": "weights.onnx", "sha256": sha(folder / "weights.onnx"), "opset_version": 17}}
    if version == "0.5":
        pre = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}, {"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"]}}]
        rdf = rdf_v05(folder, weights=weights, preprocessing=pre, config=config)
        (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    else:
        (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf_v04(folder, weights=weights), sort_keys=False))
    return folder


def torch_package(folder: Path, *, kind: str) -> Path:
    """A 0.5 package with torchscript or pytorch_state_dict weights of the tiny torch U-Net."""
    import torch
    from torch_unets import SOURCE, tiny_unet

    folder.mkdir(parents=True, exist_ok=True)
    module = tiny_unet()
    x = raw_image()
    with torch.no_grad():
        expected = torch.sigmoid(module(torch.from_numpy(zmuv(x)))).numpy()
    write_tests(folder, x, expected)
    if kind == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.trace(module, torch.zeros(1, 1, 32, 32)).save(str(folder / "weights.pt"))
        weights = {"torchscript": {"source": "weights.pt", "sha256": sha(folder / "weights.pt")}}
    else:
        torch.save(module.state_dict(), folder / "weights.pt")
        (folder / "tiny_unet.py").write_text(SOURCE)
        weights = {"pytorch_state_dict": {
            "source": "weights.pt", "sha256": sha(folder / "weights.pt"),
            "architecture": {"source": "tiny_unet.py", "sha256": sha(folder / "tiny_unet.py"), "callable": "TinyUNet",
                             "kwargs": {"in_channels": 1, "out_channels": 1}},
        }}
    pre = [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"]}}]
    rdf = rdf_v05(folder, weights=weights, preprocessing=pre, name=f"torch-{kind}")
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return folder


def zip_folder(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return out


def zip_folder_plain(folder: Path, out: Path) -> Path:
    """Like `zip_folder`, but written as `ZipFile.writestr(name, data)` writes: no file-type mode bits."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.writestr(path.relative_to(folder).as_posix(), path.read_bytes())
    return out
