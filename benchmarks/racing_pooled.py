"""Pool racing.py reports: per setting label, the races of every report together (races, not
targets, are the unit), and per variant over all settings. Prints a Markdown table.

    python benchmarks/racing_pooled.py racing_s6_main racing_s6_replicate racing_s6_dsb_all racing_s6_n40
"""
from __future__ import annotations

import argparse
import json
import re
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
    pooled: dict[str, list[dict]] = {}
    for report in cfg.reports:
        for by_setting in json.loads((rq.RESULTS / f"{report}.json").read_text())["tasks"].values():
            for name, r in by_setting.items():
                pooled.setdefault(name, []).extend(r["targets"])
                pooled.setdefault("all settings " + " ".join(re.findall(r"\[[^]]*\]", name)), []).extend(r["targets"])
    print(f"Pooled over {', '.join(cfg.reports)}:\n")
    print("| setting | races | tasks vs full | same top-1 | top-3 overlap | regret vs full | regret vs true best |")
    print("|---|---|---|---|---|---|---|")
    for name, found in sorted(pooled.items(), key=lambda kv: kv[0].startswith("all settings")):
        m = racing.summarise(found)["mean"]
        print(f"| {name} | {len(found)} | {m['tasks_fraction']:.3f} | {m['same_top1']:.3f} | {m['top3_overlap']:.3f}"
              f" | {m['regret_vs_full']:.4f} | {m['regret_vs_true']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
