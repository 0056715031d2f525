"""Volumes scored block by block (scoring/volume.py through rank): exact, bounded, resumable, distributed."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from segrank.job import RunDirectory, rank
from segrank.scoring.grid import block_regions

from volume_factory import BLOCK, N_BLOCKS, SHAPE, volume_bank, write_volume

_bank = volume_bank


@pytest.fixture
def volume(tmp_path) -> Path:
    return write_volume(tmp_path / "vol.zarr")


def _per_unit(out: Path) -> dict[tuple, str]:
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    table = {(r["model"], r["perturbation"], r["unit"], r["repeat"]): r["score"] for r in rows}
    assert len(table) == len(rows), "a unit was written twice"
    return table


def _ranked(ranking) -> list[tuple]:
    return [(r["name"], r["perturbation"], r["rank"], r["score"], r["n_scored"]) for r in ranking.rows]


KW = dict(block=BLOCK, progress=False, n_boot=50, report=False, device="cpu")

CASES = {
    "3d-noise-contrast": ("3d", ["noise:0.1-0.2", "contrast:0.7-0.8"], "nhd"),
    "2d-slicewise-gamma-ei": ("2d", ["gamma:1.5-2", "noise:0.2"], "ei"),
    "instance-rand": ("instance", ["noise:0.15-0.25"], "rand"),
    "dropout": ("dropout", ["dropout:0.3"], "nhd"),
}


# tiles nested in the blocks (the default), or given: several per block, crossing block borders
STRADDLING = {"3d": (7, 16, 20), "2d": (3, 16, 18), "instance": (7, 16, 20)}


@pytest.mark.parametrize(
    "case, tile", [(case, None) for case in CASES] + [(c, "straddling") for c in CASES if CASES[c][0] in STRADDLING]
)
def test_blockwise_equals_whole_volume_in_memory(tmp_path, volume, case, tile):
    kind, perts, metric = CASES[case]
    bank = _bank(tmp_path, kind)
    if tile == "straddling":
        tile = STRADDLING[kind]
    # nested tiles: two repeats of each perturbation; straddling (many small tiles): one run
    straddle_perts = {"instance": ["gamma:1.5-2"]}.get(kind, perts[:1])  # noise cells cost per tile: keep it cheap
    kw = dict(KW, perturbations=perts if tile is None else straddle_perts, metric=metric,
              repeats=2 if tile is None else 1, tile=tile)
    memory = rank(bank, volume, out=tmp_path / "memory", in_memory=True, **kw)
    blocks = rank(bank, volume, out=tmp_path / "blocks", **kw)
    a, b = _per_unit(tmp_path / "memory"), _per_unit(tmp_path / "blocks")
    n_models = 2
    assert len(a) == N_BLOCKS * len(kw["perturbations"]) * kw["repeats"] * n_models
    assert a == b  # every unit's score, as written (repr of the float)
    assert _ranked(memory) == _ranked(blocks)
    scored = [s for s in a.values() if s]
    assert len(scored) > len(a) // 2 and len(set(scored)) > len(a) // 2  # real, varied scores
    assert {r["n_units"] for r in blocks.rows} == {N_BLOCKS}


def test_scores_do_not_depend_on_storage_chunks_or_tiles(tmp_path):
    bank = _bank(tmp_path, "3d")
    kw = dict(KW, perturbations=["noise:0.1-0.2"], metric="nhd")
    # the same volume (same name: input noise is seeded by it) stored with other chunks
    (tmp_path / "small").mkdir(), (tmp_path / "whole").mkdir()
    small = write_volume(tmp_path / "small" / "vol.zarr", chunks=(4, 12, 16))
    whole = write_volume(tmp_path / "whole" / "vol.zarr", chunks=SHAPE)
    reference = _per_unit_scores(rank(bank, small, out=tmp_path / "a", **kw))
    # other storage chunks and other prediction tiles at once (tiles nested in the blocks by
    # default; here smaller ones crossing block borders): exactly the same scores
    other = rank(bank, whole, out=tmp_path / "b", tile=(7, 17, 21), **kw)
    assert _per_unit_scores(other) == reference
    assert len(reference) == 2 * N_BLOCKS and len(set(reference.values())) > N_BLOCKS


def _per_unit_scores(ranking) -> dict:
    return _per_unit(ranking.out)


def test_block_task_reads_only_its_block_and_halo(tmp_path, volume, monkeypatch):
    import segrank.inference.source as source

    reads = []
    original = source.read_region

    def spy(data, region):
        if hasattr(data, "dask"):  # reads of the lazy volume (not of the block's own buffer)
            reads.append(region[1:])
        return original(data, region)

    monkeypatch.setattr(source, "read_region", spy)
    bank = _bank(tmp_path, "3d")
    rank(bank, volume, out=tmp_path / "run", perturbations=["noise:0.1"], **KW)
    halo = (2, 3, 3)
    block_reads = [r for r in reads if tuple(s.stop - s.start for s in r) != SHAPE]  # the normalisation sample is whole here
    assert len(block_reads) == 2 * N_BLOCKS  # one read per (model, block)
    regions = block_regions(SHAPE, BLOCK)
    for read in block_reads:
        size = [s.stop - s.start for s in read]
        assert any(
            all(r.start - h <= s.start <= r.start and r.stop <= s.stop <= r.stop + h for s, r, h in zip(read, reg, halo))
            for reg in regions
        ), f"read {read} is more than a block plus its halo ({size})"


def test_threads_and_two_worker_cluster_agree(tmp_path, volume):
    bank = _bank(tmp_path, "2d")
    kw = dict(KW, perturbations=["noise:0.1-0.2", "gamma:1.5-2"])
    local = rank(bank, volume, out=tmp_path / "here", **kw)
    cluster = rank(bank, volume, out=tmp_path / "cluster", workers=2, **kw)
    assert _per_unit(tmp_path / "here") == _per_unit(tmp_path / "cluster")
    assert _ranked(local) == _ranked(cluster)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import segrank.job as R
    original = R.RunDirectory.append
    calls = []
    def append(self, rows):
        original(self, rows)
        calls.append(1)
        if len(calls) == 3:  # killed while writing the 4th block's rows: a torn line
            with self.per_unit.open("a") as f:
                f.write("smooth3d,noise:0.1-0.2,vol[8:14")
            os.kill(os.getpid(), signal.SIGKILL)
    R.RunDirectory.append = append
    R.rank(sys.argv[1], sys.argv[2], out=sys.argv[3], perturbations=["noise:0.1-0.2"], block=BLOCK,
           progress=False, report=False, device="cpu", n_boot=50)
    """
).replace("BLOCK", repr(BLOCK))


def test_killed_run_resumes_without_redoing_finished_blocks(tmp_path, volume):
    bank = _bank(tmp_path, "3d")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(bank), str(volume), str(out)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    text = (out / "per_image.csv").read_text()
    assert not text.endswith("\n")  # the torn line is there
    finished = text.splitlines()[1:4]
    resumed = rank(bank, volume, out=out, perturbations=["noise:0.1-0.2"], **KW)
    lines = (out / "per_image.csv").read_text().splitlines()
    assert lines[1:4] == finished  # finished blocks kept as written, not redone
    assert len(lines) == 1 + 2 * N_BLOCKS
    clean = rank(bank, volume, out=tmp_path / "clean", perturbations=["noise:0.1-0.2"], **KW)
    assert _per_unit(out) == _per_unit(tmp_path / "clean")
    assert _ranked(resumed) == _ranked(clean)


def test_killing_a_gpu_worker_mid_run_loses_no_finished_block(tmp_path):
    from distributed import Client

    from segrank.job.execute import GPU, gpu_cluster

    shape, block = (24, 36, 48), (6, 12, 16)  # 36 blocks: the run outlives the kill
    n_blocks = 36
    volume = write_volume(tmp_path / "vol.zarr", shape=shape)
    bank = _bank(tmp_path, "2d")
    (bank / "sharp2d.onnx").unlink(), (bank / "sharp2d.yaml").unlink()  # one model is enough here
    kw = dict(KW, block=block, perturbations=["noise:0.1-0.2"])
    reference = _per_unit(rank(bank, volume, out=tmp_path / "reference", **kw).out)

    out = tmp_path / "run"
    with gpu_cluster(["0", "1"]) as cluster, Client(cluster) as client:
        # each worker sees one GPU and declares one GPU resource
        assert sorted(client.run(os.getenv, "CUDA_VISIBLE_DEVICES").values()) == ["0", "1"]
        assert [w["resources"] for w in client.scheduler_info()["workers"].values()] == [{GPU: 1}, {GPU: 1}]
        pids = client.run(os.getpid)
        state = {}
        runner = threading.Thread(target=lambda: state.setdefault(
            "ranking", rank(bank, volume, out=out, scheduler=cluster.scheduler_address, gpus=["0", "1"], **kw)))
        runner.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (RunDirectory(out).per_unit.exists() and len(RunDirectory(out).done()) >= 2):
            time.sleep(0.005)
        restrictions = client.run_on_scheduler(
            lambda dask_scheduler: [ts.resource_restrictions for ts in dask_scheduler.tasks.values()])
        busy = [addr for addr, keys in client.processing().items() if keys]
        before = (out / "per_image.csv").read_text().splitlines()
        os.kill(pids[busy[0]], signal.SIGKILL)
        runner.join(300)
    assert restrictions and all(r == {GPU: 1} for r in restrictions)
    assert 2 <= len(before) - 1 < n_blocks, "the kill came after the run had finished"
    after = (out / "per_image.csv").read_text().splitlines()
    assert after[: len(before)] == before  # nothing finished was lost or rewritten
    assert _per_unit(out) == reference
    assert not state["ranking"].failures


def test_cli_block_option(tmp_path, volume):
    import json

    from click.testing import CliRunner

    from segrank.cli import main

    bank = _bank(tmp_path, "3d")
    args = ["rank", str(bank), str(volume), "--out", str(tmp_path / "run"), "--perturbation", "noise:0.1",
            "--device", "cpu", "--block", ",".join(map(str, BLOCK)), "--no-progress", "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {m["n_units"] for m in doc["models"]} == {N_BLOCKS} and doc["settings"]["block"] == list(BLOCK)
    args[args.index("--out") + 1] = str(tmp_path / "other")
    res = CliRunner().invoke(main, args[:-4] + ["--block", "8,20", "--no-progress"])
    assert res.exit_code == 2 and "scoring block" in res.stderr
