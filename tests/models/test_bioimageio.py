"""bioimage.io packages: spec 0.4 and 0.5, folder / description file / zip, test tensors, refusals."""
from __future__ import annotations

import os
import stat
import zipfile

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from packages import onnx_package, sha, torch_package, zip_folder

from segrank.cli import main
from segrank.errors import ModelError
from segrank.models import load_model
from segrank.models.check import check_test_tensors
from segrank.models.untrusted import safe_extract_zip


def _edit(folder, change):
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    change(rdf)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))


def test_spec_05_package_round_trips(tmp_path):
    folder = onnx_package(tmp_path / "pkg05", config={"output_space": "nuclei-foreground"})
    model = load_model(folder)
    assert model.source == "bioimageio" and model.name == "pkg-05" and model.package == folder
    assert (model.axes, model.in_channels, model.out_channels) == ("bcyx", 1, 1)
    assert model.preprocessing.kind == "zero_mean_unit_variance" and model.preprocessing.mean is None
    assert model.activation == "sigmoid" and "activation" not in model.assumed_fields
    assert model.tiling.minimum == (16, 16) and model.tiling.multiple_of == (8, 8) and model.tiling.halo == (8, 8)
    assert model.output_space == "nuclei-foreground"
    assert model.test_inputs == (folder / "test_input.npy",) and model.test_outputs == (folder / "test_output.npy",)
    [result] = check_test_tensors(model)
    assert result.ok and result.max_abs_diff < 1e-4
    # the description file itself and a zip give the same description
    for other in (load_model(folder / "rdf.yaml"), load_model(zip_folder(folder, tmp_path / "pkg05.zip"))):
        assert (other.name, other.axes, other.preprocessing, other.tiling, other.activation) == (
            model.name, model.axes, model.preprocessing, model.tiling, model.activation)
        assert check_test_tensors(other)[0].ok


def test_spec_04_package_round_trips(tmp_path):
    folder = onnx_package(tmp_path / "pkg04", version="0.4")
    model = load_model(folder)
    assert model.name == "pkg-04" and model.out_channels == 1  # from scale 0, offset 0.5
    assert model.preprocessing.kind == "percentile" and (model.preprocessing.low, model.preprocessing.high) == (1.0, 99.8)
    assert model.tiling.multiple_of == (8, 8) and model.tiling.halo == (8, 8)
    assert check_test_tensors(model)[0].ok
    assert check_test_tensors(load_model(zip_folder(folder, tmp_path / "pkg04.zip")))[0].ok


def test_check_reports_a_mismatch_and_the_cli_exits_non_zero(tmp_path):
    folder = onnx_package(tmp_path / "pkg")
    runner = CliRunner()
    ok = runner.invoke(main, ["inspect", str(folder), "--check", "--json"])
    assert ok.exit_code == 0, ok.output
    import json

    data = json.loads(ok.stdout)
    assert data["check"][0]["ok"] and data["bottleneck"] == "bottleneck"
    expected = np.load(folder / "test_output.npy")
    np.save(folder / "test_output.npy", expected * 0.9)
    _edit(folder, lambda r: r["outputs"][0]["test_tensor"].update(sha256=sha(folder / "test_output.npy")))
    bad = runner.invoke(main, ["inspect", str(folder), "--check"])
    assert bad.exit_code == 1 and "MISMATCH" in bad.output and "differs from the test output" in bad.output


def test_sha256_mismatch_is_refused(tmp_path):
    folder = onnx_package(tmp_path / "pkg")
    _edit(folder, lambda r: r["weights"]["onnx"].update(sha256="0" * 64))
    with pytest.raises(ModelError, match=r"weights\.onnx: sha256 mismatch"):
        load_model(folder)
    folder = onnx_package(tmp_path / "pkg2")
    _edit(folder, lambda r: r["inputs"][0]["test_tensor"].update(sha256="f" * 64))
    with pytest.raises(ModelError, match=r"test_input\.npy: sha256 mismatch"):
        load_model(folder)


@pytest.mark.parametrize(
    "source, fragment",
    [
        ("../outside.onnx", "contains '..'"),
        ("https://example.org/weights.onnx", "is a URL; segrank loads models offline only"),
        ("/tmp/weights.onnx", "is an absolute path"),
        ("missing.onnx", "does not exist"),
    ],
)
def test_files_named_by_the_description_must_lie_inside(tmp_path, source, fragment):
    folder = onnx_package(tmp_path / "pkg")
    (tmp_path / "outside.onnx").write_bytes((folder / "weights.onnx").read_bytes())
    _edit(folder, lambda r: r["weights"]["onnx"].update(source=source))
    with pytest.raises(ModelError) as err:
        load_model(folder)
    assert fragment in str(err.value) and "weights.onnx.source" in str(err.value)


def test_symlinked_weights_are_refused(tmp_path):
    folder = onnx_package(tmp_path / "pkg")
    (folder / "weights.onnx").rename(tmp_path / "real.onnx")
    os.symlink(tmp_path / "real.onnx", folder / "weights.onnx")
    with pytest.raises(ModelError, match="weights.onnx: weights.onnx.source is a symbolic link"):
        load_model(folder)


def _zip_with(path, entries):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path


def test_zip_guards(tmp_path):
    regular = stat.S_IFREG | 0o644
    cases = {
        "traversal": ([("../evil.txt", b"x", regular)], "contains '..'"),
        "absolute": ([("/etc/evil.txt", b"x", regular)], "is an absolute path"),
        "link": ([("rdf.yaml", b"/etc/passwd", stat.S_IFLNK | 0o777)], "is a symbolic link"),
        "ratio": ([("zeros.bin", b"\0" * (1 << 20), regular)], "zip bomb guard"),
    }
    for label, (entries, fragment) in cases.items():
        archive = _zip_with(tmp_path / f"{label}.zip", entries)
        dest = tmp_path / f"out-{label}"
        with pytest.raises(ModelError) as err:
            safe_extract_zip(archive, dest, max_ratio=100)
        assert fragment in str(err.value) and f"{label}.zip" in str(err.value)
        assert not dest.exists() and not list(tmp_path.glob(f"out-{label}.partial*"))
        assert not (tmp_path / "evil.txt").exists()
    big = _zip_with(tmp_path / "big.zip", [("a.bin", os.urandom(4096), regular)])
    with pytest.raises(ModelError, match="exceed the limit"):
        safe_extract_zip(big, tmp_path / "out-big", max_bytes=1000)
    many = _zip_with(tmp_path / "many.zip", [(f"f{i}", b"x", regular) for i in range(5)])
    with pytest.raises(ModelError, match="5 entries exceed the limit of 3"):
        safe_extract_zip(many, tmp_path / "out-many", max_files=3)
    # through load_model, with the default limits
    with pytest.raises(ModelError, match=r"traversal\.zip: zip entry '\.\./evil\.txt'"):
        load_model(tmp_path / "traversal.zip")
    (tmp_path / "corrupt.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ModelError, match="corrupt.zip: not a readable zip file"):
        load_model(tmp_path / "corrupt.zip")


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda r: r.update(format_version="0.3.6"), "format_version 0.3.6 is not supported"),
        (lambda r: r.update(type="dataset"), "not a bioimage.io model description"),
        (lambda r: r["inputs"].append(dict(r["inputs"][0], id="second")), "2 inputs"),
        (lambda r: r["inputs"][0]["axes"].insert(0, {"type": "time"}), "axis type 'time'"),
        (lambda r: r.update(weights={"tensorflow_saved_model_bundle": {"source": "x.zip"}}), "no usable weights"),
        (lambda r: r["inputs"][0]["preprocessing"].__setitem__(1, {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": [1, 2], "std": [1, 1]}}),
         "per-channel mean"),
        (lambda r: r.update(config={"segrank": {"colour": "red"}}), "unknown key 'colour'"),
    ],
)
def test_unsupported_descriptions(tmp_path, change, fragment):
    folder = onnx_package(tmp_path / "pkg")
    _edit(folder, change)
    with pytest.raises(ModelError, match=fragment):
        load_model(folder)


def test_fixed_mean_std_and_scale_linear_are_read(tmp_path):
    folder = onnx_package(tmp_path / "pkg")
    _edit(folder, lambda r: r["inputs"][0].update(preprocessing=[{"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": 100.0, "std": 50.0}}]))
    model = load_model(folder)
    assert (model.preprocessing.kind, model.preprocessing.mean, model.preprocessing.std) == ("zero_mean_unit_variance", 100.0, 50.0)
    _edit(folder, lambda r: r["inputs"][0].update(preprocessing=[{"id": "scale_linear", "kwargs": {"gain": [2.0], "offset": 1.0}}, {"id": "clip", "kwargs": {"min": 0, "max": 1}}]))
    model = load_model(folder)
    assert (model.preprocessing.kind, model.preprocessing.gain, model.preprocessing.offset) == ("scale_linear", 2.0, 1.0)
    assert any("'clip'" in a for a in model.assumptions)


def test_state_dict_needs_trust_code(tmp_path):
    folder = onnx_package(tmp_path / "pkg")
    (folder / "arch.py").write_text("raise SystemExit('must not run')\n")
    _edit(folder, lambda r: r.update(weights={"pytorch_state_dict": {
        "source": "weights.onnx", "architecture": {"source": "arch.py", "callable": "Net"}}}))
    with pytest.raises(ModelError, match="--trust-code"):
        load_model(folder)


def test_torchscript_package_is_converted(tmp_path, private_cache):
    pytest.importorskip("torch")
    folder = torch_package(tmp_path / "ts", kind="torchscript")
    model = load_model(folder)
    assert model.path.is_relative_to(private_cache) and model.path.suffix == ".onnx"
    assert "converted" in model.card and check_test_tensors(model)[0].ok
    assert load_model(folder).path == model.path  # converted once, then reused from the cache


def test_state_dict_package_is_converted_with_trust(tmp_path):
    pytest.importorskip("torch")
    folder = torch_package(tmp_path / "sd", kind="pytorch_state_dict")
    with pytest.raises(ModelError, match="--trust-code"):
        load_model(folder)
    model = load_model(folder, trust_code=True)
    assert check_test_tensors(model)[0].ok
    _edit(folder, lambda r: r["weights"]["pytorch_state_dict"]["architecture"].update(sha256="1" * 64))
    with pytest.raises(ModelError, match=r"tiny_unet\.py: sha256 mismatch"):
        load_model(folder, trust_code=True)
