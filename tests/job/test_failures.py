"""Bad paths that must not look right: failed models are not ranked, a run that scored nothing
fails with one line saying why (the input when every model failed alike), few units give no
intervals."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from model_factory import nan_model, write_sidecar

from segrank.cli import main
from segrank.errors import SegrankError
from segrank.job import rank

KW = dict(progress=False, n_boot=50, perturbations=["noise:0.1-0.2"])


def _ranking_csv(out) -> list[dict]:
    with (out / "ranking.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_failed_models_are_unranked_and_listed_after_the_others(noise_bank, blob_target, tmp_path):
    write_sidecar(nan_model(noise_bank / "aaa_broken.onnx"))  # sorts first by name
    ranking = rank(noise_bank, blob_target, out=tmp_path / "run", score=["cte", "consensus"], **KW)
    for setting in ("noise:0.1-0.2", "consensus"):
        block = [r for r in ranking.rows if r["perturbation"] == setting]
        assert [r["name"] for r in block][-1] == "aaa_broken" and block[-1]["rank"] is None
        assert [r["rank"] for r in block[:-1]] == [1, 2]
    doc = json.loads((tmp_path / "run" / "ranking.json").read_text())
    assert all("aaa_broken" not in p["ranking"] for p in doc["perturbations"])
    rows = _ranking_csv(tmp_path / "run")
    assert rows[0]["name"] != "aaa_broken" and [r["rank"] for r in rows if r["name"] == "aaa_broken"] == ["", ""]


def test_every_model_failing_on_nan_pixels_names_the_input(noise_bank, tmp_path):
    images = tmp_path / "nan"
    images.mkdir()
    for i in range(3):
        img = np.random.default_rng(i).random((40, 40)).astype(np.float32)
        img[5, 5] = np.nan
        tifffile.imwrite(images / f"im{i}.tif", img)
    with pytest.raises(SegrankError, match="every model failed the same way.*NaN or infinite pixels"):
        rank(noise_bank, images, out=tmp_path / "run", **KW)
    assert (tmp_path / "run" / "ranking.json").exists()  # what was found is still written
    res = CliRunner().invoke(main, ["rank", str(noise_bank), str(images), "--out", str(tmp_path / "run2"),
                                    "--perturbation", "noise:0.1", "--no-progress"])
    assert res.exit_code == 2 and res.output.count("segrank: error:") == 1
    error = next(line for line in res.output.splitlines() if line.startswith("segrank: error:"))
    assert "NaN or infinite pixels" in error and "im0.tif" in error or "im" in error


def test_rgb_images_for_one_channel_models_name_the_file_and_the_fix(noise_bank, tmp_path):
    from skimage.io import imsave

    images = tmp_path / "rgb"
    images.mkdir()
    for i in range(2):
        imsave(images / f"photo{i}.png", (np.random.default_rng(i).random((32, 32, 3)) * 255).astype(np.uint8),
               check_contrast=False)
    with pytest.raises(SegrankError) as err:
        rank(noise_bank, images, out=tmp_path / "run", **KW)
    text = str(err.value)
    assert "every model failed the same way" in text and "photo" in text and "3 channel(s)" in text
    assert "convert the images to 1 channel(s)" in text


def test_cuda_on_a_machine_without_it_fails_the_run(noise_bank, blob_target, tmp_path):
    from segrank.inference.session import create_session
    from segrank.models import load_model

    try:
        create_session(load_model(noise_bank / "smooth.onnx"), device="cuda")
        pytest.skip("this machine runs CUDA")  # the failure under test needs a machine without a GPU
    except SegrankError:
        pass
    with pytest.raises(SegrankError, match="every model failed the same way.*--device cuda"):
        rank(noise_bank, blob_target, out=tmp_path / "run", device="cuda", **KW)


def test_one_image_gives_no_intervals_and_says_why(noise_bank, blob_target, tmp_path):
    ranking = rank(noise_bank, blob_target, out=tmp_path / "run", max_images=1, **KW)
    assert all(r["ci_low"] is None and r["p_best"] is None for r in ranking.rows)
    assert ranking.rows[0]["top_two_separated"] is None
    res = CliRunner().invoke(main, ["rank", str(noise_bank), str(blob_target), "--out", str(tmp_path / "run"),
                                    "--perturbation", "noise:0.1-0.2", "--max-images", "1", "--no-progress"])
    assert res.exit_code == 0 and "intervals and p_best need at least 5 units" in res.output
    assert "cannot be told apart" not in res.output


def test_a_small_volume_is_split_into_enough_blocks_by_default(tmp_path):
    from volume_factory import volume_bank, write_volume

    from segrank.job.plan import DEFAULT_BLOCK, MIN_BLOCKS

    bank = volume_bank(tmp_path, "3d")
    volume = write_volume(tmp_path / "vol.zarr")  # 14 x 36 x 44: one block of the default 64 x 256 x 256
    ranking = rank(bank, volume, out=tmp_path / "run", **dict(KW, report=False))
    block = tuple(ranking.settings["block"])
    assert block != DEFAULT_BLOCK and all(r["n_units"] >= MIN_BLOCKS for r in ranking.rows)
    assert all(r["ci_low"] is not None and r["p_best"] is not None for r in ranking.rows)
    given = rank(bank, volume, out=tmp_path / "given", block=DEFAULT_BLOCK, **dict(KW, report=False))
    assert all(r["n_units"] == 1 and r["ci_low"] is None for r in given.rows)  # the user's block is kept
