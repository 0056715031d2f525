"""How early can a race answer? Racing replayed on the consensus benchmark's stored statistics.

For every target of `consensus_quality.py` (its run folders must exist: run that first), the
race's own decision code (`segrank.job.race`: visiting order, RaceState's bootstrap, elimination
and stopping) is replayed over the per-unit agreement rows the full run stored, so no inference
is repeated: a unit costs one task per model still in the race (its unperturbed prediction), as
in `rank(score="consensus", budget=..., until_separated=...)` run in this process. Compared with
the full run on the same targets: tasks used, whether the top pick and the top 3 are the same,
and the regret against the full run's pick and against the true best (labels).

    python benchmarks/racing.py                       # the main targets (n10, seed 0)
    python benchmarks/racing.py --max-images 20 --seed 1 --report racing_replicate
    python benchmarks/racing.py --pool leave keep     # both consensus-pool rules (default)
    python benchmarks/racing.py --max-images 120 --seed 3 --consensus consensus_quality_all_splits \
        --report racing_all_splits --pool keep --elimination E0 E1 E2 E3 E4   # nuclei targets of every split
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ranking_quality as rq  # noqa: E402

SETTINGS = {  # declared before the first run
    "until separated (keep top 3)": dict(until_separated=True, keep_top=3),
    "budget 1/3 (keep top 3)": dict(budget=1 / 3, keep_top=3),
    "budget 1/3 + until separated": dict(budget=1 / 3, until_separated=True, keep_top=3),
    "every unit (keep top 3)": dict(budget=1.0, keep_top=3),  # declared in session 5
}
POOLS = ("leave", "keep")
ELIMINATION = {  # declared in session 5 (README "When to eliminate"); n = the target's units
    "E0": lambda n: {"drop_below": 0.01},
    "E1": lambda n: {"drop_below": 0.01, "eliminate_from": max(20, math.ceil(0.1 * n))},
    "E2": lambda n: {"drop_below": 0.001},
    # declared in session 6 (README "large targets, and when to eliminate on them")
    "E3": lambda n: {"drop_below": 0.001, "eliminate_from": 20},
    "E4": lambda n: {"drop_below": 0.001, "eliminate_from": max(20, math.ceil(0.1 * n))},
}


def run_race(names: list[str], units: list[str], settings, evaluate, *, seed: int, n_boot: int, on_visit=None):
    """The race's decisions over stored per-unit scores: (RaceState, tasks used, units visited).
    `evaluate(visited)` gives the (models x visited units) scores at the end of a round;
    `on_visit(unit, remaining)` hears of each unit as it is visited."""
    from segrank.job.race import RaceState

    state = RaceState(list(names), set(names))
    budget = settings.budget_units(len(units))
    checkpoints = settings.checkpoints(len(units))
    tasks, visited = 0, []
    for unit in units[:budget]:
        tasks += len(state.remaining)
        visited.append(unit)
        if on_visit:
            on_visit(unit, set(state.remaining))
        state.visited = len(visited)
        if settings.active and (len(visited) in checkpoints or len(visited) == budget):
            state.evaluate(evaluate(visited), settings, n_boot=n_boot, seed=seed)
            if state.stop:
                break
    return state, tasks, visited


def final_order(state, names: list[str], per_unit: np.ndarray) -> list[str]:
    """The remaining models by their median per-unit score (NaN last)."""
    keep = [n for n in names if n in state.remaining]
    with np.errstate(all="ignore"):
        score = {n: float(np.nanmedian(per_unit[names.index(n)])) for n in keep}
    return sorted(keep, key=lambda n: -score[n] if np.isfinite(score[n]) else np.inf)


def replay(rows: list[dict], names: list[str], units: list[str], task: str, settings, seed: int, n_boot: int,
           pool: str = "leave", round_score: str = "job"):
    """(order of the final ranking, tasks used, units visited) of one consensus race over stored rows.

    pool "leave": the remaining models are scored among themselves on every visited unit;
    "keep": each unit's pool is the models in the race when it was visited. round_score "job":
    rounds are decided on the job's score (re-weighted); "plain": on the unweighted consensus
    (sessions 4-5, before the fix)."""
    from segrank.scoring.consensus import pairwise_scores, resolve_rounds, resolve_similarity, similarity_matrices

    similarity = resolve_similarity("auto", task)
    by_unit: dict[str, list[dict]] = {}
    for r in rows:
        by_unit.setdefault(r["unit"], []).append(r)
    alive: dict[str, set] = {}  # unit -> the models in the race when it was visited

    def per_unit(visited, remaining, rounds: int = 0) -> np.ndarray:
        per = np.full((len(names), len(visited)), np.nan)
        if pool == "leave":
            keep = [n for n in names if n in remaining]
            sim, _ = similarity_matrices([r for u in visited for r in by_unit.get(u, [])], keep, visited, similarity)
            per[[names.index(n) for n in keep]] = pairwise_scores(sim, rounds=rounds).per_unit
        else:
            pooled = [r for u in visited for r in by_unit.get(u, []) if r["model"] in alive[u] and r["other"] in alive[u]]
            sim, _ = similarity_matrices(pooled, names, visited, similarity)
            per[:] = pairwise_scores(sim, rounds=rounds).per_unit
        return per

    # a round ends right after its last visit, so the models in the race are those it was handed to
    rounds = resolve_rounds(None, task)
    state, tasks, visited = run_race(names, units, settings,
                                     lambda v: per_unit(v, alive[v[-1]], rounds if round_score == "job" else 0),
                                     seed=seed, n_boot=n_boot, on_visit=alive.__setitem__)
    final = per_unit(visited, state.remaining, rounds)
    return final_order(state, names, final), tasks, len(visited), final


def replay_cte(per_unit: dict[str, dict[str, float]], names: list[str], units: list[str], settings, seed: int,
               n_boot: int):
    """As `replay`, over CTE's stored per-unit scores ({model: {unit: score}}): each model's score
    is its own, so no pool."""
    matrix = np.array([[per_unit.get(n, {}).get(u, np.nan) for u in units] for n in names], dtype=float)
    state, tasks, visited = run_race(names, units, settings, lambda v: matrix[:, :len(v)], seed=seed, n_boot=n_boot)
    return final_order(state, names, matrix[:, :len(visited)]), tasks, len(visited), matrix[:, :len(visited)]


def leader_p_best(per_unit: np.ndarray, seed: int, n_boot: int) -> float:
    """The bootstrap P(best) of the model with the highest median (the job's own bootstrap)."""
    from segrank.scoring.aggregate import bootstrap_medians, top_k_probability

    return float(top_k_probability(bootstrap_medians(per_unit, n_boot=n_boot, seed=seed, label="full"), 1).max())


def cte_per_unit(task: str, folder: Path, names: list[str], images_dir: Path, seed: int) -> dict:
    """CTE's per-unit scores of the target's models: one `rank(score="cte")` with the default
    perturbation, kept in the target's work folder (a rerun reads it back)."""
    from segrank.job import rank

    models, _ = rq.load_models({"path": HERE / "bank" / task})
    models = [m for m in models if m.name in names]
    out = folder / "rank-cte"
    rank(models, images_dir, out=out, score="cte", device="cpu", report=False, progress=False, seed=seed)
    (setting, per), = rq.per_unit_scores(out).items()
    return per


def summarise(targets: list[dict]) -> dict:
    keys = ("same_top1", "top3_overlap", "regret_vs_full", "regret_vs_true")

    def mean(group):
        return {k: float(np.mean([x[k] for x in group])) for k in keys} | {
            "tasks_fraction": float(sum(x["tasks"] for x in group) / sum(x["tasks_full"] for x in group)),
            "targets": len(group)} if group else None
    from segrank.job.race import SEPARATED  # the full run's pick is separated as a race's leader is

    known = [x for x in targets if "full_p_best" in x]  # reports before session 6 lack it
    return {"targets": targets, "mean": mean(targets),
            "full_pick_separated": mean([x for x in known if x["full_p_best"] >= SEPARATED]),
            "full_pick_not_separated": mean([x for x in known if x["full_p_best"] < SEPARATED])}


def split_by_separation(r: dict) -> str:
    """"same top-1 (n)" where the full run's pick is separated / where it is not."""
    return " / ".join("-" if m is None else f"{m['same_top1']:.2f} ({m['targets']})"
                      for m in (r["full_pick_separated"], r["full_pick_not_separated"]))


def pooled_table(results: list[dict]) -> list[str]:
    """Markdown rows pooled over tasks (and reports): per setting label, and per variant over all
    settings; `results` are {task: {label: summary}} dicts. Races, not targets, are the unit."""
    pooled: dict[str, list[dict]] = {}
    for by_task in results:
        for by_setting in by_task.values():
            for name, r in by_setting.items():
                pooled.setdefault(name, []).extend(r["targets"])
                variant = name[name.find(" ["):] if " [" in name else ""
                pooled.setdefault("all settings" + variant, []).extend(r["targets"])
    lines = ["| setting | races | tasks vs full | same top-1 | top-3 overlap | regret vs full | regret vs true best "
             "| same top-1 where the full pick is separated / not (races) |", "|---|---|---|---|---|---|---|---|"]
    for name, found in sorted(pooled.items(), key=lambda kv: kv[0].startswith("all settings")):
        r = summarise(found)
        m = r["mean"]
        lines.append(f"| {name} | {len(found)} | {m['tasks_fraction']:.3f} | {m['same_top1']:.3f} | {m['top3_overlap']:.3f}"
                     f" | {m['regret_vs_full']:.4f} | {m['regret_vs_true']:.4f} | {split_by_separation(r)} |")
    return lines


def main(argv=None) -> int:
    from segrank.job.race import RaceSettings, visiting_order
    from segrank.job.rundir import RunDirectory
    from segrank.io.targets import open_target

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-images", type=int, default=10)
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--report", default="racing")
    p.add_argument("--consensus", default="consensus_quality", help="consensus_quality results with the truth")
    p.add_argument("--pool", nargs="+", choices=POOLS, default=list(POOLS),
                   help="what an eliminated model does to the consensus pool (README: P0 leave, P1 keep)")
    p.add_argument("--elimination", nargs="+", choices=list(ELIMINATION), default=["E0"],
                   help="elimination-rule variants (README: When to eliminate)")
    p.add_argument("--round-score", nargs="+", choices=("job", "plain"), default=["job"],
                   help="the consensus score rounds are decided on: the job's (re-weighted, as reported) or the "
                        "plain unweighted one (before session 6's fix)")
    p.add_argument("--score", choices=("consensus", "cte"), default="consensus",
                   help="cte: run the default CTE once per target (kept in its work folder) and race over it")
    cfg = p.parse_args(argv)
    # (pool rule, score the rounds decide on)
    pools = [(p, r) for p in cfg.pool for r in cfg.round_score] if cfg.score == "consensus" else [("cte", "job")]

    def label(name: str, pool: tuple[str, str], elimination: str) -> str:  # "setting [pool]", "... [Ek]" for variants
        return (f"{name} [{pool[0]}{', plain rounds' if pool[1] == 'plain' else ''}]"
                + ("" if cfg.elimination == ["E0"] else f" [{elimination}]"))
    truth_doc = json.loads((rq.RESULTS / f"{cfg.consensus}.json").read_text())["tasks"]
    results = {}
    for task, res in truth_doc.items():
        kind = "instance" if task.endswith("instance") else "semantic"
        per_setting = {(name, pool, e): [] for name in SETTINGS for pool in pools for e in cfg.elimination}
        for t in res["targets"]:
            folder = next((rq.WORK / task).glob(f"{t['name']}*-n{cfg.max_images}-c{cfg.crop}-s{cfg.seed}"))
            images_dir = rq.WORK / "targets" / folder.name / "images"
            units = [u.name for u in visiting_order(open_target(images_dir).images, (64, 256, 256), cfg.seed)]
            names, truth = t["models"], t["true"]
            if cfg.score == "consensus":
                rows = RunDirectory(folder / "rank-consensus").agreement.read()

                def race(settings, pool):
                    return replay(rows, names, units, kind, settings, cfg.seed, cfg.n_boot, pool=pool[0],
                                  round_score=pool[1])
            else:
                per = cte_per_unit(task, folder, names, images_dir, cfg.seed)

                def race(settings, pool):
                    return replay_cte(per, names, units, settings, cfg.seed, cfg.n_boot)
            full, full_tasks, _, full_scores = race(RaceSettings(), ("keep", "job"))  # no race: no pool, no rounds
            full_p_best = leader_p_best(full_scores, cfg.seed, cfg.n_boot)
            for (name, pool, e), found in per_setting.items():
                settings = RaceSettings(**SETTINGS[name], **ELIMINATION[e](len(units)))
                order, tasks, visited, _ = race(settings, pool)
                found.append({
                    "target": t["name"], "tasks": tasks, "tasks_full": full_tasks, "units": visited,
                    "units_full": len(units), "same_top1": order[0] == full[0],
                    "top3_overlap": len(set(order[:3]) & set(full[:3])) / 3,
                    "regret_vs_full": truth[full[0]] - truth[order[0]],
                    "regret_vs_true": max(truth.values()) - truth[order[0]], "full_p_best": full_p_best,
                })
        results[task] = {label(*key): summarise(v) for key, v in per_setting.items()}
    lines = [f"# Racing replayed on the {cfg.score} runs ({cfg.report})", "",
             f"Targets of `{cfg.consensus}` (`--max-images {cfg.max_images} --seed {cfg.seed}`); a task = one model's "
             "prediction of one unit. Means over targets.", "",
             "| task | setting | tasks vs full | same top-1 | top-3 overlap | regret vs full | regret vs true best "
             "| same top-1 where the full pick is separated / not (targets) |",
             "|---|---|---|---|---|---|---|---|"]

    for task, by_setting in results.items():
        for name, r in by_setting.items():
            m = r["mean"]
            lines.append(f"| {task} | {name} | {m['tasks_fraction']:.2f} | {m['same_top1']:.2f} | {m['top3_overlap']:.2f}"
                         f" | {m['regret_vs_full']:.3f} | {m['regret_vs_true']:.3f} | {split_by_separation(r)} |")
    # pooled over tasks (and over settings, per variant): the figures the declared choices use
    lines += ["", "Pooled over the tasks (races, not targets, are the unit):", ""] + pooled_table([results])
    (rq.RESULTS / f"{cfg.report}.md").write_text("\n".join(lines) + "\n")
    (rq.RESULTS / f"{cfg.report}.json").write_text(json.dumps({"config": vars(cfg), "tasks": results}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
