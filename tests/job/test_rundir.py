"""The run directory: rows appended per task, a torn last line cut, settings guard resumes."""
from __future__ import annotations

import pytest

from segrank.errors import SegrankError
from segrank.job.rundir import RunDirectory


def test_run_directory_cuts_a_torn_last_line(tmp_path):
    run = RunDirectory(tmp_path)
    row = {"model": "m", "perturbation": "noise:0.1", "unit": "u1", "repeat": 0, "score": "0.5", "status": "ok"}
    run.append([row])
    with run.per_unit.open("a") as f:
        f.write("m,noise:0.1,u2,0,0.")
    assert list(run.done()) == [("m", "noise:0.1", "u1", 0)]
    run.append([dict(row, unit="u2")])
    assert [k[2] for k in run.done()] == ["u1", "u2"]


def test_settings_that_change_results_refuse_a_resume(tmp_path):
    run = RunDirectory(tmp_path)
    settings = {"perturbations": ["noise:0.1"], "metric": "auto", "seed": 0, "repeats": 2, "models": {}}
    run.check_settings(settings)
    run.check_settings(dict(settings, repeats=3))  # more repeats extend
    with pytest.raises(SegrankError, match="seed"):
        run.check_settings(dict(settings, seed=1, repeats=3))
    with pytest.raises(SegrankError, match="repeats 3 > 1"):
        run.check_settings(dict(settings, repeats=1))
