"""rank's prediction cache, repeats that extend a run, and perturbations sharing the unperturbed run."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

import segrank.inference.predict as predict_module
from segrank.cli import main
from segrank.inference.session import TileRunner
from segrank.job import rank

from model_factory import pixel_threshold_model, write_sidecar

KW = dict(progress=False, n_boot=100, report=False, device="cpu")
PERTS = ["noise:0.1-0.2", "gamma:1.1-1.3"]
N_MODELS, N_IMAGES = 2, 6


@pytest.fixture
def spy(monkeypatch):
    """Counts ONNX Runtime runs (tiles) and whole-image predictions, unperturbed or perturbed."""
    counts = Counter()
    run, predict_prepared = TileRunner.__call__, predict_module.predict_prepared

    def counting_run(self, x, mask=None):
        counts["session_runs"] += 1
        return run(self, x, mask)

    def counting_predict(image, session, **kw):
        perturbed = kw.get("perturb") is not None or kw.get("dropout_mask") is not None
        counts["perturbed" if perturbed else "unperturbed"] += 1
        return predict_prepared(image, session, **kw)

    monkeypatch.setattr(TileRunner, "__call__", counting_run)
    monkeypatch.setattr(predict_module, "predict_prepared", counting_predict)
    return counts


def _scores(ranking) -> list[tuple]:
    return [(r["name"], r["perturbation"], r["rank"], r["score"], r["ci_low"], r["p_best"]) for r in ranking.rows]


def _per_image(out) -> list[str]:
    return (out / "per_image.csv").read_text().splitlines()


def test_second_run_with_the_cache_runs_no_model(noise_bank, blob_target, tmp_path, spy):
    cache = tmp_path / "cache"
    first = rank(noise_bank, blob_target, out=tmp_path / "a", perturbations=PERTS, repeats=2, cache=cache, **KW)
    runs = N_MODELS * N_IMAGES
    assert spy["unperturbed"] == runs and spy["perturbed"] == runs * len(PERTS) * 2
    assert first.predictions["reused"] == 0 and first.predictions["computed"] > 0
    spy.clear()
    # another --out, and the report's example tiles too: every prediction comes from the cache
    second = rank(noise_bank, blob_target, out=tmp_path / "b", perturbations=PERTS, repeats=2, cache=cache,
                  **dict(KW, report=True))
    assert spy["session_runs"] == 0 and spy["unperturbed"] == spy["perturbed"] == 0
    assert second.predictions == {"reused": first.predictions["computed"], "computed": 0}
    assert _scores(second) == _scores(first)
    assert _per_image(tmp_path / "b") == _per_image(tmp_path / "a")
    assert (tmp_path / "b" / "examples.png").stat().st_size > 0
    # and the cache changes nothing: a run without it gives the same scores
    plain = rank(noise_bank, blob_target, out=tmp_path / "c", perturbations=PERTS, repeats=2, **KW)
    assert _scores(plain) == _scores(first)
    assert _per_image(tmp_path / "c") == _per_image(tmp_path / "a")


def test_changed_seed_perturbation_or_model_misses(noise_bank, blob_target, tmp_path, spy):
    cache = tmp_path / "cache"
    kw = dict(KW, perturbations=["noise:0.1-0.2"], cache=cache)
    base = rank(noise_bank, blob_target, out=tmp_path / "a", **kw)
    spy.clear()
    # another seed: every perturbed run is drawn anew; unperturbed runs do not depend on it
    other_seed = rank(noise_bank, blob_target, out=tmp_path / "b", seed=7, **kw)
    assert spy["perturbed"] == N_MODELS * N_IMAGES and spy["unperturbed"] == 0
    assert _scores(other_seed) != _scores(base)
    spy.clear()
    # another perturbation range: likewise
    rank(noise_bank, blob_target, out=tmp_path / "c", **dict(kw, perturbations=["noise:0.15-0.2"]))
    assert spy["perturbed"] == N_MODELS * N_IMAGES and spy["unperturbed"] == 0
    spy.clear()
    # another model file under the same name: all its runs miss, the other model's hit
    write_sidecar(pixel_threshold_model(noise_bank / "sharp.onnx", level=0.1))
    changed = rank(noise_bank, blob_target, out=tmp_path / "d", **kw)
    assert spy["perturbed"] == N_IMAGES and spy["unperturbed"] == N_IMAGES
    row = {r["name"]: r["score"] for r in changed.rows}
    assert row["smooth"] == {r["name"]: r["score"] for r in base.rows}["smooth"]
    assert row["sharp"] != {r["name"]: r["score"] for r in base.rows}["sharp"]


def test_more_repeats_extend_a_run_into_the_same_out(noise_bank, blob_target, tmp_path, spy):
    out = tmp_path / "run"
    rank(noise_bank, blob_target, out=out, perturbations=PERTS, repeats=1, **KW)
    kept = _per_image(out)
    spy.clear()
    extended = rank(noise_bank, blob_target, out=out, perturbations=PERTS, repeats=3, **KW)
    # only repeats 1 and 2 are new (plus the unperturbed run they compare with: no cache here)
    assert spy["perturbed"] == N_MODELS * N_IMAGES * len(PERTS) * 2
    assert spy["unperturbed"] == N_MODELS * N_IMAGES
    lines = _per_image(out)
    assert lines[: len(kept)] == kept and len(lines) - 1 == 3 * (len(kept) - 1)
    fresh = rank(noise_bank, blob_target, out=tmp_path / "fresh", perturbations=PERTS, repeats=3, **KW)
    assert _scores(extended) == _scores(fresh)
    assert sorted(lines[1:]) == sorted(_per_image(tmp_path / "fresh")[1:])
    assert json.loads((out / "settings.json").read_text())["repeats"] == 3
    with pytest.raises(Exception, match="repeats 3 > 2"):
        rank(noise_bank, blob_target, out=out, perturbations=PERTS, repeats=2, **KW)


def test_more_repeats_with_the_cache_compute_only_the_new_ones(noise_bank, blob_target, tmp_path, spy):
    cache = tmp_path / "cache"
    rank(noise_bank, blob_target, out=tmp_path / "a", perturbations=PERTS, repeats=1, cache=cache, **KW)
    spy.clear()
    more = rank(noise_bank, blob_target, out=tmp_path / "b", perturbations=PERTS, repeats=2, cache=cache, **KW)
    assert spy["perturbed"] == N_MODELS * N_IMAGES * len(PERTS) and spy["unperturbed"] == 0
    fresh = rank(noise_bank, blob_target, out=tmp_path / "c", perturbations=PERTS, repeats=2, **KW)
    assert _scores(more) == _scores(fresh)


def test_perturbations_share_one_unperturbed_run_and_are_ranked_each(noise_bank, blob_target, tmp_path, spy):
    perts = PERTS + ["contrast:0.8-0.9"]
    ranking = rank(noise_bank, blob_target, out=tmp_path / "run", perturbations=perts, repeats=2, **KW)
    assert spy["unperturbed"] == N_MODELS * N_IMAGES  # one per (model, image), whatever was asked
    assert spy["perturbed"] == N_MODELS * N_IMAGES * len(perts) * 2
    doc = json.loads((tmp_path / "run" / "ranking.json").read_text())
    assert doc["settings"]["perturbations"] == perts
    assert [p["perturbation"] for p in doc["perturbations"]] == perts
    for p in doc["perturbations"]:
        rows = [r for r in doc["models"] if r["perturbation"] == p["perturbation"]]
        assert sorted(r["rank"] for r in rows) == [1, 2]  # ranked among the models, per setting
        assert p["ranking"] == [r["name"] for r in sorted(rows, key=lambda r: r["rank"])]
    assert len(ranking.rows) == N_MODELS * len(perts)


def test_dropout_runs_are_cached_too(dropout_bank, blob_target, tmp_path, spy):
    kw = dict(KW, perturbations=["dropout:0.2", "noise:0.1-0.2"], cache=tmp_path / "cache")
    first = rank(dropout_bank, blob_target, out=tmp_path / "a", **kw)
    # the grey-box graph has its own unperturbed run, shared by its dropout repeats
    assert spy["unperturbed"] == 2 * N_MODELS * N_IMAGES
    spy.clear()
    second = rank(dropout_bank, blob_target, out=tmp_path / "b", **kw)
    assert spy["session_runs"] == 0
    assert _scores(second) == _scores(first)


def test_volume_blocks_cached_and_shared_with_the_in_memory_path(tmp_path, spy):
    from volume_factory import BLOCK, write_volume
    from volume_factory import volume_bank as _bank

    bank = _bank(tmp_path, "3d")
    volume = write_volume(tmp_path / "vol.zarr")
    kw = dict(KW, perturbations=["noise:0.1-0.2", "contrast:0.7-0.8"], block=BLOCK, cache=tmp_path / "cache")
    blocks = rank(bank, volume, out=tmp_path / "a", **kw)
    assert spy["session_runs"] > 0
    spy.clear()
    again = rank(bank, volume, out=tmp_path / "b", **kw)
    assert spy["session_runs"] == 0 and _scores(again) == _scores(blocks)
    # the in-memory reference finds every tile stored by the blockwise run: same keys, same values
    memory = rank(bank, volume, out=tmp_path / "c", in_memory=True, **kw)
    assert spy["session_runs"] == 0 and _scores(memory) == _scores(blocks)
    assert sorted(_per_image(tmp_path / "c")) == sorted(_per_image(tmp_path / "a"))


def test_cli_cache_option(noise_bank, blob_target, tmp_path):
    args = ["rank", str(noise_bank), str(blob_target), "--perturbation", "noise:0.1-0.2", "--perturbation",
            "gamma:1.1-1.3", "--device", "cpu", "--cache", str(tmp_path / "cache")]
    first = CliRunner().invoke(main, args + ["--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    assert "2 perturbation settings, each ranked on its own" in first.stdout
    assert "perturbation noise:0.1-0.2" in first.stdout and "perturbation gamma:1.1-1.3" in first.stdout
    second = CliRunner().invoke(main, args + ["--out", str(tmp_path / "b"), "--json"])
    assert second.exit_code == 0, second.output
    assert ", 0 computed" in second.stderr
    doc = json.loads(second.stdout)
    assert doc["settings"]["cache"] == str(tmp_path / "cache")
    not_a_cache = tmp_path / "other"
    not_a_cache.mkdir()
    (not_a_cache / "notes.txt").write_text("x")
    res = CliRunner().invoke(main, args[:-1] + [str(not_a_cache), "--out", str(tmp_path / "c"), "--no-progress"])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "not a prediction cache" in res.stderr


def test_a_killed_write_leaves_no_tile_that_counts(noise_bank, blob_target, tmp_path, monkeypatch):
    """A tile whose values were written but not marked finished is computed again."""
    from segrank.io.zarr_store import PredictionStore

    cache = tmp_path / "cache"
    kw = dict(KW, perturbations=["noise:0.1-0.2"], cache=cache)
    reference = rank(noise_bank, blob_target, out=tmp_path / "a", **kw)
    store = PredictionStore(cache)
    names = [k for k in store.group.array_keys()]
    assert len(names) == N_MODELS * N_IMAGES * 2
    # wipe one array's completion marks and poison its values: they must not be read
    victim = names[0]
    store.array(victim, mode="r+")[...] = np.float32(0.123)
    import shutil

    shutil.rmtree(cache / "_done" / victim / "c")
    again = rank(noise_bank, blob_target, out=tmp_path / "b", **kw)
    assert again.predictions["computed"] > 0
    assert _scores(again) == _scores(reference)


def test_a_grey_box_model_has_one_unperturbed_run_for_all_perturbations(blob_target, tmp_path, spy):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "inference"))
    from conv_nets import conv_model

    models = [conv_model(tmp_path / f"{n}.onnx", name=n, hidden=6, layers=2, dropout=True, seed=s)
              for n, s in (("g1", 1), ("g2", 2))]
    assert all(m.greybox for m in models)
    ranking = rank(models, blob_target, out=tmp_path / "run", perturbations=["dropout:0.3", "noise:0.1-0.2"],
                   repeats=2, **KW)
    # the model is its own rewrite: dropout and noise compare with the same unperturbed run
    assert spy["unperturbed"] == N_MODELS * N_IMAGES
    assert spy["perturbed"] == N_MODELS * N_IMAGES * 2 * 2
    assert {r["status"] for r in ranking.rows} == {"ok"}
