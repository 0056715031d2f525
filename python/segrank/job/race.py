"""Racing: visit units in a seeded, stratified order, stop scoring models that cannot make the top.

Units (images, or scoring blocks of volumes) are visited in a seeded order that takes one unit
of each image (and of each region of a volume) in turn, so that any prefix covers the data.
Tasks are started as workers free up (`Executor.stream`: no batch barrier); after every round of
finished units (`RaceSettings.round_size`: 5 units, widening on large targets) the race is
evaluated: a paired bootstrap over the units scored so far gives each
remaining model P(best) and P(top k); a model whose P(top k) falls below `drop_below` is
eliminated (it gets no further units; tasks already started still finish), while at least
`keep_top` models remain. The race stops when the budget of units is spent, or, with
`until_separated`, when the leader's P(best) reaches 0.95 or every remaining model is separated
from the next (P(#i beats #i+1) >= 0.95); else when every unit is visited (the full ranking).

The consensus score races the same way. Its per-unit statistics are pairwise; a unit's pool is
the models in the race when it was visited, and it stays so: an eliminated model still counts on
the units it was scored on and is absent from the units visited after it. Every remaining model
is scored against the same pool on each unit, so the paired comparisons stay fair, and a unit's
statistics never change once computed (benchmarks/README.md, "the consensus pool": this rule
kept the full run's pick more often than scoring the remaining models among themselves). Rounds
are decided on the score the ranking reports (the re-weighted consensus), so a race over every
unit that eliminates nothing is the full ranking. Once models are eliminated, later units are
scored among the better models: the race's final score is that pool's consensus, which can pick
another model than the full run's whole-bank consensus (measured: as good or better against the
labels; benchmarks/README.md, "session 6").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .units import Unit, units_of

SEPARATED = 0.95


@dataclass(frozen=True)
class RaceSettings:
    """How a race is run (all from the command line)."""

    budget: float | None = None  # a fraction (0, 1] of the units, or a number of units (> 1)
    until_separated: bool = False
    keep_top: int = 3
    # eliminate a model whose P(top keep_top) is below this; .001 rather than .01 by the declared
    # rule of benchmarks/README.md ("When to eliminate": E2 kept the full run's pick more often
    # at the same cost)
    drop_below: float = 0.001
    eliminate_from: int = 5  # units visited before the first elimination (scoring.aggregate.MIN_UNITS)
    round_units: int | None = None  # units between evaluations (default: `round_size`'s schedule)

    @property
    def active(self) -> bool:
        return self.budget is not None or self.until_separated

    def budget_units(self, n_units: int) -> int:
        if self.budget is None:
            return n_units
        if self.budget <= 1:
            return max(1, math.ceil(self.budget * n_units))
        return min(n_units, int(self.budget))

    def round_size(self, n_units: int, visited: int = 0) -> int:
        """Units in the round that follows `visited` units: 5, growing by 10 % of the units
        visited, at most 5 % of all units. A large target is evaluated after its first units
        (a 4 GiB volume has ~1,000 blocks) and then at a widening pace, so the bootstraps stay
        a small part of the run; up to 100 units the rounds are 5 units each."""
        if self.round_units:
            return self.round_units
        return max(5, min(math.ceil(0.1 * visited), math.ceil(0.05 * n_units)))

    def checkpoints(self, n_units: int) -> frozenset[int]:
        """The numbers of finished units after which the race is evaluated (ends of rounds)."""
        out, done = set(), 0
        while done < n_units:
            done += self.round_size(n_units, done)
            out.add(done)
        return frozenset(out)


def parse_budget(text: str | None) -> float | None:
    """--budget 0.25 (a fraction of the units) or --budget 200 (units)."""
    if text is None:
        return None
    from ..errors import SegrankError

    try:
        value = float(text)
    except ValueError:
        raise SegrankError(f"--budget {text}: a fraction of the units (0 < f <= 1) or a number of units") from None
    if value <= 0 or (value > 1 and value != int(value)):
        raise SegrankError(f"--budget {text}: a fraction of the units (0 < f <= 1) or a whole number of units")
    return value


def visiting_order(images, block, seed: int) -> list[Unit]:
    """Every unit once, in a seeded order stratified over images and over the regions (octants)
    of each volume: round-robin over strata, a seeded permutation within each."""
    from ..perturb.seeds import rng

    strata: list[list[Unit]] = []
    for im in images:
        units = units_of(im, block)
        if units[0].region is None:
            strata.append(units)
            continue
        grid = [sorted({u.region[a].start for u in units}) for a in range(3)]
        octant: dict[tuple, list[Unit]] = {}
        for u in units:
            key = tuple(2 * grid[a].index(u.region[a].start) // max(len(grid[a]), 1) for a in range(3))
            octant.setdefault(key, []).append(u)
        strata += [octant[k] for k in sorted(octant)]
    shuffled = []
    for k, stratum in enumerate(strata):
        perm = rng(seed, "race", stratum[0].image, k, "order").permutation(len(stratum))
        shuffled.append([stratum[i] for i in perm])
    order_of_strata = rng(seed, "race", "strata", 0, "order").permutation(len(shuffled))
    out = []
    for depth in range(max((len(s) for s in shuffled), default=0)):
        out += [shuffled[s][depth] for s in order_of_strata if depth < len(shuffled[s])]
    return out


@dataclass
class RaceState:
    """What the race knows after each evaluation (written to ranking.json as "race")."""

    names: list[str]
    remaining: set[str]
    stopped: dict[str, str] = field(default_factory=dict)  # model -> why it stopped
    rounds: list[dict] = field(default_factory=list)
    visited: int = 0
    stop: str | None = None

    def evaluate(self, per_unit: np.ndarray, settings: RaceSettings, *, n_boot: int, seed: int) -> None:
        """Bootstrap the remaining models over the visited units; eliminate, and decide to stop."""
        from ..scoring.aggregate import MIN_UNITS, bootstrap_medians, top_k_probability

        keep = [i for i, n in enumerate(self.names) if n in self.remaining]
        rows = per_unit[keep]
        boot = bootstrap_medians(rows, n_boot=n_boot, seed=seed, label=f"race/{len(self.rounds)}")
        p_best = top_k_probability(boot, 1)
        p_top = top_k_probability(boot, settings.keep_top)
        with np.errstate(all="ignore"):
            medians = [float(np.nanmedian(r)) if np.isfinite(r).any() else None for r in rows]
        record = {"round": len(self.rounds) + 1, "units": self.visited,
                  "p_best": {self.names[i]: float(p) for i, p in zip(keep, p_best)},
                  "p_top": {self.names[i]: float(p) for i, p in zip(keep, p_top)},
                  "score": {self.names[i]: m for i, m in zip(keep, medians)}, "eliminated": []}
        self.rounds.append(record)
        if per_unit.shape[1] and np.isfinite(rows).any(axis=1).sum() and self.visited >= MIN_UNITS:
            order = np.argsort(p_top)
            for j in order if self.visited >= settings.eliminate_from else ():
                if len(self.remaining) <= settings.keep_top or p_top[j] >= settings.drop_below:
                    break
                name = self.names[keep[j]]
                self.remaining.discard(name)
                self.stopped[name] = f"eliminated at round {record['round']}"
                record["eliminated"].append(name)
            if settings.until_separated and _separated(boot, p_best):
                self.stop = "separated"

    def finish(self, reason: str) -> None:
        self.stop = self.stop or reason
        for name in self.remaining:
            self.stopped.setdefault(name, self.stop)

    def to_json(self, *, units_total: int, tasks_done: int, tasks_full: int) -> dict:
        return {"stop": self.stop, "units_visited": self.visited, "units_total": units_total,
                "tasks": tasks_done, "tasks_full_run": tasks_full, "rounds": self.rounds, "models": self.stopped}


def _separated(boot: np.ndarray, p_best: np.ndarray) -> bool:
    """The leader is the best in >= 95 % of resamples, or every model beats the next in >= 95 %."""
    if p_best.size and p_best.max() >= SEPARATED:
        return True
    medians = np.nanmedian(np.where(np.isnan(boot), -np.inf, boot), axis=1)
    order = np.argsort(-medians)
    filled = np.nan_to_num(boot, nan=-np.inf)
    pairs = [np.mean(filled[a] > filled[b]) for a, b in zip(order[:-1], order[1:])]
    return bool(pairs) and min(pairs) >= SEPARATED


def order_by_race(rows: list[dict], state: RaceState) -> list[dict]:
    """Each setting's rows with the models still in the race first (in their order), then the
    eliminated ones, the last eliminated first; ranks renumbered; each row says why the model
    stopped ("eliminated at round r", "separated", "budget" or "complete"). Models eliminated in
    the same round are ordered by their score."""
    from .rows import assign_ranks

    rounds = {n: int(why.rsplit(" ", 1)[1]) for n, why in state.stopped.items() if why.startswith("eliminated")}
    out = []
    for setting in dict.fromkeys(r["perturbation"] for r in rows):
        block = [r for r in rows if r["perturbation"] == setting]
        for r in block:
            r["stopped"] = state.stopped.get(r["name"], "failed")
        head = [r for r in block if r["name"] not in rounds and r["status"] != "failed"]
        tail = sorted((r for r in block if r["name"] in rounds),
                      key=lambda r: (-rounds[r["name"]], r["score"] is None, -(r["score"] or 0.0)))
        rest = [r for r in block if r not in head and r not in tail]
        separated = head[0].get("top_two_separated") if head else None
        for r in block:
            r["rank"], r["top_two_separated"] = None, None
        out += assign_ranks(head + tail + rest, None)
        if head:
            head[0]["top_two_separated"] = separated
    return out


def eliminated_rows(state: RaceState, like: dict) -> list[dict]:
    """Rows for the models the race eliminated from a score computed among the remaining models
    (the consensus): their score and P(best) at the round they were eliminated."""
    out = []
    for record in state.rounds:
        for name in record["eliminated"]:
            out.append(dict(like, name=name, rank=None, score=record["score"].get(name), ci_low=None, ci_high=None,
                            p_best=record["p_best"].get(name), n_scored=record["units"], status="ok",
                            top_two_separated=None))
    return out


__all__ = ["RaceSettings", "RaceState", "eliminated_rows", "order_by_race", "parse_budget", "visiting_order"]
