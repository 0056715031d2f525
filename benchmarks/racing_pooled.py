"""Pool racing.py reports: per setting label, the races of every report together (races, not
targets, are the unit), and per variant over all settings. Prints a Markdown table.

    python benchmarks/racing_pooled.py racing_s6_main racing_s6_replicate racing_s6_dsb_all racing_s6_n40
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import racing  # noqa: E402
import ranking_quality as rq  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("reports", nargs="+", help="racing.py report names (results/<name>.json)")
    cfg = p.parse_args(argv)
    results = [json.loads((rq.RESULTS / f"{report}.json").read_text())["tasks"] for report in cfg.reports]
    print(f"Pooled over {', '.join(cfg.reports)}:\n")
    print("\n".join(racing.pooled_table(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
