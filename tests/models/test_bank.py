"""Model banks: folders and list files; problems reported by name, good models kept."""
from __future__ import annotations

import pytest
from packages import onnx_package, zip_folder
from unet_graphs import unet

from segrank.models import BankError, load_bank


def _sidecar(path, **fields):
    text = "".join(f"{k}: {v}\n" for k, v in fields.items())
    path.with_suffix(".yaml").write_text(text)


@pytest.fixture
def bank(tmp_path):
    folder = tmp_path / "bank"
    folder.mkdir()
    for i, name in enumerate(["alpha", "beta"]):
        unet(folder / f"{name}.onnx", seed=i)
        _sidecar(folder / f"{name}.onnx", name=name, output_space="nuclei")
    onnx_package(tmp_path / "pkg", config={"output_space": "nuclei", "name": "gamma"})
    zip_folder(tmp_path / "pkg", folder / "gamma.zip")
    (folder / "broken.onnx").write_bytes(b"\x00not onnx")
    unet(folder / "twin.onnx", seed=5)
    _sidecar(folder / "twin.onnx", name="alpha", output_space="nuclei")  # duplicate name
    unet(folder / "cells.onnx", seed=6)
    _sidecar(folder / "cells.onnx", name="cells", output_space="cell-boundaries")
    unet(folder / "vol.onnx", ndim=3, seed=7)
    _sidecar(folder / "vol.onnx", name="vol", output_space="nuclei")  # 3D among 2D models
    (folder / "README.md").write_text("not a model")
    (folder / ".hidden.onnx").write_bytes(b"junk")
    return folder


def test_folder_bank_keeps_good_models_and_names_every_problem(bank):
    models, problems = load_bank(bank)
    assert [m.name for m in models] == ["alpha", "beta", "gamma"]
    by_name = {p.name: p.message for p in problems}
    assert set(by_name) == {"broken", "alpha", "cells", "vol"}
    assert "not a readable ONNX file" in by_name["broken"]
    assert "twin.onnx: name 'alpha' is already used by" in by_name["alpha"]
    assert "output space (cell-boundaries, semantic, 2D) differs from the rest (nuclei, semantic, 2D)" in by_name["cells"]
    assert "(nuclei, semantic, 3D) differs" in by_name["vol"]
    assert all("\n" not in p.message for p in problems)


def test_strict_bank_raises_one_line_listing_every_problem(bank):
    with pytest.raises(BankError) as err:
        load_bank(bank, strict=True)
    message = str(err.value)
    assert "4 problem(s)" in message and "\n" not in message
    for name in ("broken", "alpha", "cells", "vol"):
        assert f"{name}: " in message
    assert [m.name for m in err.value.bank.models] == ["alpha", "beta", "gamma"]


def test_list_file_bank(tmp_path, bank):
    listing = tmp_path / "models.txt"
    listing.write_text("# candidates\nbank/alpha.onnx\n\nbank/gamma.zip  # a package\nbank/absent.onnx\n")
    models, problems = load_bank(listing)
    assert [m.name for m in models] == ["alpha", "gamma"]
    assert [p.name for p in problems] == ["absent"] and "no such file" in problems[0].message


def test_missing_bank_and_package_as_bank(tmp_path):
    from segrank.errors import ModelError

    with pytest.raises(ModelError, match="no such bank"):
        load_bank(tmp_path / "nowhere")
    onnx_package(tmp_path / "pkg")
    with pytest.raises(ModelError, match="is one bioimage.io package"):
        load_bank(tmp_path / "pkg")


def test_a_package_with_an_assumed_space_is_kept_once_the_user_declares_it(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, name in enumerate(["alpha", "beta"]):
        unet(folder / f"{name}.onnx", seed=i)
        _sidecar(folder / f"{name}.onnx", name=name, output_space="nuclei-foreground")
    onnx_package(tmp_path / "pkg", config={"name": "gamma"})  # declares no output space: assumed
    zip_folder(tmp_path / "pkg", folder / "gamma.zip")
    models, problems = load_bank(folder)
    assert [m.name for m in models] == ["alpha", "beta"]
    (problem,) = problems
    assert problem.name == "gamma" and "assumed" in problem.message
    assert "--output-space nuclei-foreground" in problem.message and "bank.yaml" in problem.message
    models, problems = load_bank(folder, output_space="nuclei-foreground")
    assert sorted(m.name for m in models) == ["alpha", "beta", "gamma"] and not problems
    (folder / "bank.yaml").write_text("output_space: nuclei-foreground\n")
    models, problems = load_bank(folder)
    assert len(models) == 3 and not problems
