"""What do the race's rounds cost? The bundled example ranked in full vs raced over every unit.

Baseline and race run in the same process, alternately, each into a fresh folder with a shared
prediction cache warmed first (so both do the same inference-free work: reading stored
predictions, scoring, aggregating) and then without a cache (inference included). The race visits
every unit with `--keep-top` = the bank size, so it eliminates nothing and ends on the same
ranking; what it adds is the round bookkeeping and a bootstrap per round. Prints the ratio.

    python benchmarks/race_overhead.py [--repeat 3] [--score consensus|cte]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    from segrank.examples import example_paths
    from segrank.job import rank

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--score", default="consensus")
    args = p.parse_args(argv)
    bank, target = example_paths()
    n_models = len(list(Path(bank).glob("*.onnx")))
    work = Path(tempfile.mkdtemp(prefix="segrank-race-overhead-"))
    kw = dict(score=args.score, progress=False, report=False, device="cpu")
    try:
        for cached in (True, False):
            cache = work / "cache" if cached else None
            if cached:
                rank(bank, target, out=work / "warm", cache=cache, **kw)
            times = {"full": [], "race": []}
            for i in range(args.repeat):
                for label, extra in (("full", {}), ("race", dict(budget=1.0, keep_top=n_models))):
                    out = work / f"{label}-{cached}-{i}"
                    t0 = time.perf_counter()
                    r = rank(bank, target, out=out, cache=cache, **kw, **extra)
                    times[label].append(time.perf_counter() - t0)
                    shutil.rmtree(out)
                    if label == "race":
                        assert r.race[args.score]["stop"] == "complete"
            full, race = min(times["full"]), min(times["race"])
            print(f"{'cached predictions' if cached else 'with inference':>20}: full {full:.2f} s, race {race:.2f} s, "
                  f"overhead {100 * (race / full - 1):+.1f} % (min of {args.repeat}; all: full "
                  f"{[round(t, 2) for t in times['full']]}, race {[round(t, 2) for t in times['race']]})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
