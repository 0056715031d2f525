"""The CLI's first-hour surface: help that says what BANK and TARGET are, examples, --debug, --key."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from segrank.cli import main


def test_help_lists_every_command_in_full_with_examples():
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0
    commands = res.output.split("Commands:")[1].split("Examples:")[0]
    assert "..." not in commands and len(commands.strip().splitlines()) == 9
    assert "segrank rank --example --out example-ranking" in res.output
    rank_help = CliRunner().invoke(main, ["rank", "--help"]).output
    for what in ("BANK:", "TARGET:", "sidecar", "bioimage.io", "OME-Zarr", "HDF5", "--key", "--score", "--labels"):
        assert what in rank_help, what


def test_debug_shows_the_traceback_behind_a_one_line_error(tmp_path):
    args = ["rank", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "run"), "--no-progress"]
    plain = CliRunner().invoke(main, args)
    assert plain.exit_code == 2 and "Traceback" not in plain.output and "no usable model" in plain.output
    debug = CliRunner().invoke(main, ["--debug", *args])
    assert debug.exit_code != 0 and debug.exception is not None and "no usable model" in str(debug.exception)


def test_rank_and_evaluate_take_a_dataset_key(noise_bank, tmp_path):
    import h5py
    from model_factory import blob_image

    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = np.stack([blob_image(i)[0] for i in range(6)])
        f["other"] = np.zeros((6, 96, 96), np.uint8)
    res = CliRunner().invoke(main, ["rank", str(noise_bank), str(path), "--out", str(tmp_path / "a"), "--no-progress",
                                    "--perturbation", "noise:0.1"])
    assert res.exit_code == 2 and "--key" in res.output
    res = CliRunner().invoke(main, ["rank", str(noise_bank), str(path), "--key", "raw", "--axes", "zyx",
                                    "--out", str(tmp_path / "b"), "--no-progress", "--perturbation", "noise:0.1"])
    assert res.exit_code == 0, res.output
