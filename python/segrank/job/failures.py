"""Failures as values: which model failed, at which stage, on what, and why."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Stage(str, Enum):
    """Where a model failed; the value is what ranking.json and the report show."""

    LOAD = "load"  # the model file or its description
    SESSION = "session"  # ONNX Runtime could not create a session
    GREYBOX = "greybox"  # no grey-box rewrite (dropout runs impossible)
    PREDICT = "predict"  # a prediction (or its scoring) on one image or block

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Failure:
    """One failure of one model; `image` and `unit` name where it happened when it is local."""

    model: str
    stage: Stage
    error: str
    image: str | None = None
    unit: str | None = None

    def to_json(self) -> dict:
        """The dict of ranking.json's "failures" (keys image and unit only when set)."""
        out = {"model": self.model, "stage": self.stage.value, "error": self.error}
        if self.image is not None:
            out["image"] = self.image
        if self.unit is not None:
            out["unit"] = self.unit
        return out

    def __getitem__(self, key: str):  # read like the dicts it replaced (f["stage"], f["error"])
        return self.to_json()[key]

    def get(self, key: str, default=None):
        return self.to_json().get(key, default)


def common_cause(failures: list[Failure], models) -> str | None:
    """An error every model failed with, the model's own name and file taken out (then the input
    or the machine is the problem, not the models); None when there is none. With several such
    errors (e.g. one per bad image), the first, and how many more."""
    by_name = {m.name: m for m in models}
    models_by_cause: dict[str, set] = {}
    for f in failures:
        text = f.error
        model = by_name.get(f.model)
        for own in ((str(model.path), model.name) if model is not None else (f.model,)):
            text = text.replace(own, "<model>")
        models_by_cause.setdefault(text, set()).add(f.model)
    common = [c for c, failed in models_by_cause.items() if failed >= set(by_name)]
    if not common:
        return None
    return common[0] + (f" (and {len(common) - 1} more error(s) like it)" if len(common) > 1 else "")


def nothing_scored(failures: list[Failure], models, rows: list[dict]) -> str:
    """Why a run scored no model at all, in one line."""
    cause = common_cause(failures, models)
    if cause is not None:
        return f"no model was scored: every model failed the same way, so the input or the machine is the problem: {cause}"
    failed = sorted({f.model for f in failures})
    empty = sorted({r["name"] for r in rows if r["status"] == "predicts no foreground"})
    parts = []
    if failed:
        first = next(f for f in failures if f.model == failed[0])
        parts.append(f"{len(failed)} model(s) failed (e.g. {first.model}: {first.error})")
    if empty:
        parts.append(f"{len(empty)} predicted no foreground on any unit ({', '.join(empty[:5])})")
    return "no model was scored: " + "; ".join(parts or ["nothing to score"])


__all__ = ["Failure", "Stage", "common_cause", "nothing_scored"]
