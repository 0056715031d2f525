"""Faults that must not lose work: full disks, two runs in one folder, damaged run files."""
from __future__ import annotations

import errno
import json
import os

import pytest
from click.testing import CliRunner

import segrank.io.files as files
import segrank.io.zarr_store as zarr_store
from segrank.cli import main
from segrank.errors import SegrankError
from segrank.job import RunDirectory, rank
from segrank.job.rundir import RowFile

KW = dict(progress=False, n_boot=50, perturbations=["noise:0.1-0.2"], device="cpu")


def _scores(ranking) -> list[tuple]:
    return [(r["name"], r["score"], r["ci_low"]) for r in ranking.rows]


def test_a_full_out_disk_keeps_finished_units_and_a_rerun_finishes(noise_bank, blob_target, tmp_path, monkeypatch):
    reference = rank(noise_bank, blob_target, out=tmp_path / "ref", **KW)
    real = RowFile.append
    calls = []

    def fills_up(self, rows):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        real(self, rows)

    monkeypatch.setattr(RowFile, "append", fills_up)
    with pytest.raises(SegrankError) as err:
        rank(noise_bank, blob_target, out=tmp_path / "run", **KW)
    message = str(err.value)
    assert "disk full" in message and "per_image.csv" in message and "MiB free" in message and "\n" not in message
    kept = (tmp_path / "run" / "per_image.csv").read_text().splitlines()
    assert len(kept) == 1 + 3  # the three finished tasks
    monkeypatch.setattr(RowFile, "append", real)
    again = rank(noise_bank, blob_target, out=tmp_path / "run", **KW)
    assert _scores(again) == _scores(reference)


def test_outputs_are_replaced_whole_or_not_at_all(noise_bank, blob_target, tmp_path, monkeypatch):
    out = tmp_path / "run"
    rank(noise_bank, blob_target, out=out, **KW)
    before = {name: (out / name).read_bytes() for name in ("report.html", "ranking.csv", "settings.json")}
    real = os.replace

    def full(src, dst):
        if str(dst).endswith("report.html"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", full)
    with pytest.raises(SegrankError, match="report.html: disk full"):
        rank(noise_bank, blob_target, out=out, **dict(KW, n_boot=60))
    assert (out / "report.html").read_bytes() == before["report.html"]  # the old page, not a truncated one
    assert not list(out.glob(".*.tmp"))


def test_a_full_optional_cache_warns_once_and_the_run_goes_on(noise_bank, blob_target, tmp_path, monkeypatch, capsys):
    reference = rank(noise_bank, blob_target, out=tmp_path / "ref", **KW)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(zarr_store, "_put_file", full)
    ranking = rank(noise_bank, blob_target, out=tmp_path / "run", cache=tmp_path / "cache", **KW)
    assert _scores(ranking) == _scores(reference)
    err = capsys.readouterr().err
    assert err.count("going on without the cache") == 1


def test_a_second_run_into_the_same_folder_says_who_holds_it(tmp_path):
    run = RunDirectory(tmp_path / "run")
    with run.lock():
        with pytest.raises(SegrankError, match=r"in use by another segrank run \(pid \d+ on .* since"):
            with RunDirectory(tmp_path / "run").lock():
                pass
    with RunDirectory(tmp_path / "run").lock():  # released
        pass


def test_damaged_run_files_are_one_line_errors(noise_bank, blob_target, tmp_path):
    out = tmp_path / "run"
    rank(noise_bank, blob_target, out=out, **KW)
    settings = (out / "settings.json").read_text()
    (out / "settings.json").write_text(settings[: len(settings) // 2])
    with pytest.raises(SegrankError, match="settings.json: damaged .* delete it"):
        rank(noise_bank, blob_target, out=out, **KW)
    (out / "settings.json").write_text(settings)
    lines = (out / "per_image.csv").read_text().splitlines()
    lines[2] = "smooth,noise:0.1-0.2"  # a short row in the middle: not a torn last line
    (out / "per_image.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SegrankError, match="per_image.csv line 3: garbled row"):
        rank(noise_bank, blob_target, out=out, **KW)
    lines[2] = "smooth,noise:0.1-0.2,img1,zero,0.5,ok"
    (out / "per_image.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SegrankError, match="per_image.csv line 3: garbled row"):
        rank(noise_bank, blob_target, out=out, **KW)


def test_out_that_is_a_file_and_validate_mismatches_are_one_line(noise_bank, blob_target, tmp_path):
    (tmp_path / "file").write_text("x")
    res = CliRunner().invoke(main, ["rank", str(noise_bank), str(blob_target), "--out", str(tmp_path / "file"),
                                    "--no-progress"])
    assert res.exit_code == 2 and "exists and is not a folder" in res.output and "Traceback" not in res.output
    ranking = tmp_path / "ranking.json"
    ranking.write_text(json.dumps({"models": [{"name": "a", "score": 0.5}, {"name": "b", "score": 0.4}]}))
    perf = tmp_path / "performance.json"
    perf.write_text(json.dumps({"models": [{"name": "a", "score": 0.9}, {"name": "b", "score": 0.8}]}))
    res = CliRunner().invoke(main, ["validate", str(ranking), str(perf)])
    assert res.exit_code == 2 and "at least 3" in res.output and str(ranking) in res.output
    assert res.output.count("\n") == 1
    perf.write_text(json.dumps({"models": [{"name": "x", "score": 0.9}]}))
    res = CliRunner().invoke(main, ["validate", str(ranking), str(perf)])
    assert res.exit_code == 2 and "no true score for a, b" in res.output
