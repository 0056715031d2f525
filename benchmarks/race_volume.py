"""Racing on an EM volume (issue 15): time to the answer vs the full run, 14 models, 2 workers.

The 14-model EM mitochondria bank (benchmarks/bank/em-mito) ranks EM volumes built by
make_em_volume.py by the default consensus score on a LocalCluster, each run in a fresh process
(scale.py's measurement: wall seconds, peak RSS of the process tree). Runs per volume:

* full -- every model on every scoring block (today's ranking);
* until-separated -- ``--until-separated --keep-top 3``;
* budget-0.2 -- ``--budget 0.2 --until-separated --keep-top 3``.

On volumes listed in ``--full-sizes`` the full run is measured; on the others its time is
estimated as the measured full run's seconds per task (the smallest full size) times this
volume's task count, and marked "estimate" (the small run's start-up, reported as
"first_task_s", is scaled with it, so the estimate errs high by at most that share). The top
pick and the top 3 are compared with the full run of the same volume, else with the smallest
measured full run ("reference"): make_em_volume.py plays the same 20 real sections back and
forth, so a 64-slice volume holds every section the 4 GiB one does.

    python benchmarks/make_em_volume.py --gib 0.0625 4
    python benchmarks/race_volume.py --sizes 0.0625 4 --full-sizes 0.0625
    python benchmarks/race_volume.py --append --sizes 4 --settings until-separated   # a rerun of one race

Rows go to benchmarks/results/race_volume.json (after every run: a cut-short run keeps its rows)
and a table to race_volume.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import scale  # noqa: E402

BANK = HERE / "bank" / "em-mito"
SETTINGS = {  # declared in benchmarks/README.md before the first run
    "full": {},
    "until-separated": dict(until_separated=True, keep_top=3),
    "budget-0.2": dict(budget=0.2, until_separated=True, keep_top=3),
}


def child(args: dict) -> dict:
    """One measured `rank` in this fresh process."""
    from segrank.job import rank

    start = time.time()
    out = scale.measured(lambda: rank(
        args["bank"], args["target"], out=args["out"], device="cpu", workers=args["workers"],
        block=tuple(args["block"]), report=False, progress=False, **SETTINGS[args["setting"]]))
    ranking = out.pop("ranking")
    race = (ranking.race or {}).get("consensus")
    out["race"] = None if race is None else {k: race[k] for k in ("stop", "units_visited", "units_total", "tasks",
                                                                   "tasks_full_run")}
    out["order"] = [r["name"] for r in ranking.rows]
    # start-up: from the call to the first stored prediction (the store's completion markers)
    done = Path(args["out"]) / "predictions" / "_done"
    stamps = [f.stat().st_mtime for f in done.rglob("*") if f.is_file() and f.name != "zarr.json"]
    out["first_task_s"] = round(min(stamps) - start, 1) if stamps else None
    return out


def run_one(volume: Path, setting: str, *, workers: int, block, work: Path) -> dict:
    args = {"bank": str(BANK), "target": str(volume), "out": str(work / f"{volume.stem}-{setting}"),
            "workers": workers, "block": list(block), "setting": setting}
    res = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"run {args} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--sizes", type=float, nargs="+", default=[0.0625, 4.0])
    p.add_argument("--full-sizes", type=float, nargs="*", default=[0.0625])
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--block", default="64,256,256")
    p.add_argument("--data", type=Path, default=HERE / "data")
    p.add_argument("--work", type=Path, default=None, help="run folders (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "race_volume.json")
    p.add_argument("--append", action="store_true",
                   help="keep --out's rows and use its smallest full run as the reference (same machine)")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child)), default=str))
        return 0
    from segrank.job.race import RaceSettings

    block = [int(b) for b in args.block.split(",")]
    commit = scale._commit()
    doc = {"machine": {"cpu": scale._cpu(), "cores": os.cpu_count(), "python": platform.python_version()},
           "commit": commit, "command": "python benchmarks/race_volume.py " + " ".join(argv or sys.argv[1:]),
           "bank": "benchmarks/bank/em-mito (14 models)", "workers": args.workers, "block": block, "rows": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="segrank-race-volume-"))
    per_task = reference = None  # seconds per task and the row of the smallest measured full run
    if args.append and args.out.exists():
        old = json.loads(args.out.read_text())
        doc["rows"], doc["command"] = old["rows"], old["command"] + " ; " + doc["command"]
        doc["commit"] = f"{old.get('commit')} ; {commit}"
        fulls = sorted((r for r in doc["rows"] if r["setting"] == "full"), key=lambda r: r["volume_gib"])
        if fulls:
            reference = fulls[0]
            per_task = reference["seconds"] / reference["tasks"]
    for gib in sorted(args.sizes):
        volume = args.data / f"em-{gib:g}gib.zarr"
        if not volume.exists():
            raise SystemExit(f"{volume}: missing; run: python benchmarks/make_em_volume.py --gib {gib:g}")
        full = None
        for setting in args.settings:
            if setting == "full" and gib not in args.full_sizes:
                continue
            r = run_one(volume, setting, workers=args.workers, block=block, work=work)
            row = {"volume_gib": gib, "setting": setting, "seconds": round(r["seconds"], 1),
                   "peak_rss_mb": r["peak_rss_mb"], "first_task_s": r["first_task_s"], "race": r["race"],
                   "order": r["order"], "failures": r["failures"]}
            if setting == "full":
                full = row
                row["tasks"] = row["tasks_full_run"] = len(r["order"]) * _units(volume, block)
                if per_task is None:
                    per_task, reference = row["seconds"] / row["tasks"], row
            else:
                row["drop_below"] = RaceSettings().drop_below
                row["tasks"], row["tasks_full_run"] = r["race"]["tasks"], r["race"]["tasks_full_run"]
                if full is not None:
                    row["full_seconds"], row["full_is"] = full["seconds"], "measured"
                elif per_task is not None:
                    row["full_seconds"], row["full_is"] = round(per_task * row["tasks_full_run"], 1), "estimate"
                compare = full or reference
                if compare is not None:
                    row["reference"] = f"full run, {compare['volume_gib']:g} GiB"
                    row["same_top1"] = row["order"][0] == compare["order"][0]
                    row["top3_overlap"] = len(set(row["order"][:3]) & set(compare["order"][:3])) / 3
                if "full_seconds" in row:
                    row["time_vs_full"] = round(row["seconds"] / row["full_seconds"], 3)
                row["tasks_vs_full"] = round(row["tasks"] / row["tasks_full_run"], 3)
            doc["rows"].append(row)
            print(json.dumps(row), flush=True)
            args.out.write_text(json.dumps(doc, indent=1) + "\n")
    lines = ["# Racing on EM volumes (`benchmarks/race_volume.py`)", "",
             f"{doc['bank']}, default consensus score, {args.workers} local workers, block {args.block}; "
             f"{doc['machine']['cpu']}, {doc['machine']['cores']} cores; commit {commit}.", "",
             "| volume | setting | drop below | seconds | full run (s) | time vs full | tasks vs full | stop | same top-1 | top-3 overlap | vs | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in doc["rows"]:
        full_s = f"{row['full_seconds']:.0f} ({row['full_is']})" if "full_seconds" in row else "-"
        lines.append(
            f"| {row['volume_gib']:g} GiB | {row['setting']} | {row.get('drop_below', '-')} | {row['seconds']:.0f} | {full_s} | "
            f"{row.get('time_vs_full', '-')} | {row.get('tasks_vs_full', '-')} | {(row['race'] or {}).get('stop', '-')} | "
            f"{row.get('same_top1', '-')} | {_fmt(row.get('top3_overlap'))} | {row.get('reference', '-')} | "
            f"{row['peak_rss_mb']:.0f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _units(volume: Path, block) -> int:
    """Scoring blocks of the volume, as the job counts them."""
    from segrank.io.targets import open_target
    from segrank.job.units import units_of

    return sum(len(units_of(im, tuple(block))) for im in open_target(volume).images)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
