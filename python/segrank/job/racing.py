"""Running a race (`race.RaceSettings`) for the CTE tasks and for the consensus stage.

Both drivers hand the executor one task at a time (`Executor.stream`), unit by unit in the
race's visiting order, only for models still in the race; they append results as they come,
evaluate the race after every round of finished units (`RaceSettings.round_size`), and stop
handing out tasks when the race stops. A rerun replays the same order and evaluations, so it
skips what is done and continues.
"""
from __future__ import annotations

from ..errors import SegrankError
from .race import RaceSettings, RaceState, visiting_order
from .rundir import record_result


class _Driver:
    """Unit-by-unit task hand-out with evaluation checkpoints (shared by both drivers)."""

    def __init__(self, order, names, remaining, settings: RaceSettings, *, evaluate, n_boot: int, seed: int):
        self.order, self.settings = order, settings
        self.state = RaceState(list(names), set(remaining))
        self.budget = settings.budget_units(len(order))
        self.checkpoints = settings.checkpoints(len(order))  # evaluate when this many units are done
        self.position = 0
        self.queue: list = []  # tasks ready to hand out, first served
        self.open: dict[str, int] = {}  # unit -> tasks still running
        self.finished: list[str] = []
        self.units: dict = {}  # unit name -> Unit, for the tasks that follow a unit's first ones
        self._evaluate, self.n_boot, self.seed = evaluate, n_boot, seed

    def next_task(self):
        """The next task to start: a round's units are opened together and their tasks handed
        out model by model (each session runs on consecutive units, as in a full run)."""
        while not self.queue:
            if self.state.stop or self.position >= self.budget:
                return None
            opened = []
            size = self.settings.round_size(len(self.order), self.position)
            while self.position < self.budget and len(opened) < size:
                unit = self.order[self.position]
                self.position += 1
                tasks = self.tasks_for(unit)
                if tasks:
                    self.open[unit.name] = len(tasks)
                    opened += tasks
                else:
                    self.unit_done(unit.name)
                    if self.state.stop:
                        break
            self.queue += sorted(opened, key=self.model_of)  # stable: units stay in order per model
        return self.queue.pop(0)

    def model_of(self, task) -> str:
        return _model(task)

    def tasks_for(self, unit) -> list:
        raise NotImplementedError

    def unit_done(self, name: str) -> None:
        self.finished.append(name)
        self.state.visited = len(self.finished)
        if len(self.finished) in self.checkpoints:
            self._evaluate_now()

    def _evaluate_now(self) -> None:
        self.state.evaluate(self._evaluate(self.finished), self.settings, n_boot=self.n_boot, seed=self.seed)

    def store_done(self, unit: str, agreement_task) -> None:
        """One of a unit's store tasks is back; after the last, its agreement task goes first in
        line (`agreement_task(unit)`, None: the unit is done without one)."""
        self.open[unit] -= 1
        if self.open[unit]:
            return
        task = agreement_task(self.units[unit])
        if task is None:
            del self.open[unit]
            self.unit_done(unit)
        else:
            self.open[unit] = 1
            self.queue.insert(0, task)

    def task_done(self, unit: str) -> None:
        self.open[unit] -= 1
        if self.open[unit] == 0:
            del self.open[unit]
            self.unit_done(unit)

    def finish(self) -> RaceState:
        if self.finished and len(self.finished) not in self.checkpoints:  # units done since the last round
            self._evaluate_now()
        self.state.finish("complete" if self.position >= len(self.order) and not self.state.stop else "budget")
        return self.state


def race_cte(plan, executor, run, done: dict, failures: list, *, models, images, block, spec, repeats: int,
             settings: RaceSettings, n_boot: int, seed: int) -> tuple[RaceState, int, dict]:
    """Race the CTE tasks of `plan` on the first perturbation setting `spec`; (state, tasks run,
    predictions counts)."""
    from .rows import unit_matrix

    by_unit: dict[str, list] = {}
    for task in plan.tasks:
        units = getattr(task, "units", None) or (task.unit,)
        if len(units) != 1:
            raise SegrankError("--budget / --until-separated score volumes block by block; drop --in-memory")
        by_unit.setdefault(units[0].name, []).append(task)
    failed = {f.model for f in plan.failures}
    names = [m.name for m in models]
    ranked = [m for m in models if m.name not in failed]

    class Driver(_Driver):
        def tasks_for(self, unit):
            return [t for t in by_unit.get(unit.name, []) if _model(t) in self.state.remaining]

    driver = Driver(visiting_order(images, block, seed), names, [m.name for m in ranked], settings,
                    evaluate=lambda units: unit_matrix(models, units, str(spec), done, repeats),
                    n_boot=n_boot, seed=seed)
    ran, predictions = 0, {"reused": 0, "computed": 0}
    for task, result in executor.stream(driver.next_task):
        ran += 1
        record_result(task, result, run=run, done=done, failures=failures, predictions=predictions)
        driver.task_done(_unit(task))
    return driver.finish(), ran, predictions


def race_consensus(models, images, sessions, options_of, *, run, executor, store: str, block, tile, halo,
                   threshold: float, failures: list, settings: RaceSettings, similarity: str, rounds: int,
                   n_boot: int, seed: int) -> tuple[RaceState, int, dict]:
    """Race the consensus stage: per unit, every remaining model's store task, then the unit's
    agreement task; (state, inference tasks run, predictions counts). Rounds are decided on the
    score the job reports (`similarity`, re-weighted `rounds` times), not on a plainer one."""
    from ..scoring.consensus import pairwise_scores, similarity_matrices
    from .consensus import AgreementTask, agreement_task, store_tasks

    order = visiting_order(images, block, seed)
    done_units = {r["unit"] for r in run.agreement.read()}
    pending = {}
    for u in order:
        if u.name not in done_units:
            pending.setdefault(u.image, set()).add(u.name)
    tasks, planning = store_tasks(models, images, sessions, options_of, block=block, tile=tile, halo=halo,
                                  pending_images=pending)
    failures += planning
    by_unit: dict[str, list] = {}
    for task in tasks:
        by_unit.setdefault(task.unit.name if task.unit is not None else task.image.name, []).append(task)
    by_name = {m.name: m for m in models}
    instances = all(m.task == "instance" for m in models)
    keys: dict[tuple[str, str], str] = {}
    failed = {f.model for f in planning}
    rows = run.agreement.read()

    def evaluate(units):
        # every model in the pool of the units it was scored on (its agreement rows); the race
        # reads the rows of the remaining models only
        sim, _ = similarity_matrices(rows, list(by_name), units, similarity)
        return pairwise_scores(sim, rounds=rounds).per_unit

    class Driver(_Driver):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.pools: dict[str, list[str]] = {}  # unit -> the models it was handed to: its consensus pool

        def tasks_for(self, unit):
            self.units[unit.name] = unit
            tasks = [t for t in by_unit.get(unit.name, []) if t.model.name in self.state.remaining]
            self.pools[unit.name] = [t.model.name for t in tasks]
            return tasks

    driver = Driver(order, list(by_name), [n for n in by_name if n not in failed], settings, evaluate=evaluate,
                    n_boot=n_boot, seed=seed)
    ran, predictions = 0, {"reused": 0, "computed": 0}
    for task, result in executor.stream(driver.next_task):
        ran += not isinstance(task, AgreementTask)  # inference tasks, as counted for a full run
        result = record_result(task, result, run=run, done={}, failures=failures, predictions=predictions)
        unit = task.unit.name if task.unit is not None else task.image.name
        if "stored" in result:
            model, image, key = result["stored"]
            keys[(model, image)] = key
        elif "agreement" in result:
            run.agreement.append(result["agreement"])
            rows += result["agreement"]
        if isinstance(task, AgreementTask):
            driver.task_done(unit)
        else:
            driver.store_done(unit, lambda u: agreement_task(u, by_name, keys, driver.pools[u.name], store,
                                                             threshold, instances))
    return driver.finish(), ran, predictions



def _model(task) -> str:
    return (task.model if hasattr(task, "model") else task.job.model).name


def _unit(task) -> str:
    units = getattr(task, "units", None) or (task.unit,)
    return units[0].name


__all__ = ["race_consensus", "race_cte"]
