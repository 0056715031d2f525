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


__all__ = ["Failure", "Stage"]
