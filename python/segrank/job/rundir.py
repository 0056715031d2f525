"""The run directory of a ranking: settings.json, per_image.csv rows appended as they come, resume."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import SegrankError

PER_UNIT_FIELDS = ("model", "perturbation", "unit", "repeat", "score", "status")
# Settings whose change alters results: a run directory refuses to resume under other values.
# (Repeats are not among them: repeat r is drawn the same whatever K is, so a larger K extends.)
RESULT_SETTINGS = ("perturbations", "metric", "seed", "threshold", "units", "block", "tile", "halo")


class RunDirectory:
    """DIR of a ranking: settings.json, per_image.csv (one row per unit and repeat, appended as
    results come) and the outputs."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.per_unit = self.out / "per_image.csv"

    def check_settings(self, settings: dict) -> None:
        """Refuse to resume a ranking made with other result settings, then record `settings`.

        More repeats than before extend the ranking (the repeats done are kept); fewer are
        refused, since the folder's per-image scores would mix both.
        """
        path = self.out / "settings.json"
        if path.exists():
            old = json.loads(path.read_text())
            diff = [k for k in RESULT_SETTINGS if old.get(k) != settings.get(k)]
            if old.get("repeats", 1) > settings["repeats"]:
                diff.append(f"repeats {old['repeats']} > {settings['repeats']}")
            changed = [
                name for name, info in settings.get("models", {}).items()
                if name in old.get("models", {}) and old["models"][name].get("sha256") != info.get("sha256")
            ]
            if changed:
                diff.append("model files of " + ", ".join(changed))
            if diff:
                raise SegrankError(
                    f"{self.out}: holds a ranking made with other settings ({', '.join(diff)}); "
                    "choose another --out or delete it"
                )
        path.write_text(json.dumps(settings, indent=2))

    def done(self) -> dict[tuple[str, str, str, int], dict]:
        """Rows already written, keyed by (model, perturbation, unit, repeat).

        A run killed while writing may leave a torn last line: it is cut off here (its unit is
        simply done again), so that the next rows start on a line of their own.
        """
        if not self.per_unit.exists():
            return {}
        raw = self.per_unit.read_bytes()
        if raw and not raw.endswith(b"\n"):
            with self.per_unit.open("r+b") as f:
                f.truncate(raw.rfind(b"\n") + 1)
        rows = {}
        with self.per_unit.open(newline="") as f:
            for row in csv.DictReader(f):
                rows[(row["model"], row["perturbation"], row["unit"], int(row["repeat"]))] = row
        return rows

    def append(self, rows: list[dict]) -> None:
        """Append the rows of one finished task in a single write (a kill tears at most it)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=PER_UNIT_FIELDS)
        if not self.per_unit.exists() or self.per_unit.stat().st_size == 0:
            writer.writeheader()
        writer.writerows(rows)
        with self.per_unit.open("a", newline="") as f:
            f.write(buffer.getvalue())
            f.flush()


def unit_row(model: str, perturbation, unit: str, repeat: int, score: float | None) -> dict:
    """One row of per_image.csv (`PER_UNIT_FIELDS`)."""
    return {
        "model": model,
        "perturbation": str(perturbation),
        "unit": unit,
        "repeat": repeat,
        "score": "" if score is None else repr(score),
        "status": "ok" if score is not None else "no-foreground",
    }


def file_digest(path: Path) -> str:
    """Short sha256 of a model file (settings.json: a resumed run must use the same files)."""
    from ..models.untrusted import sha256_file

    return sha256_file(path)[:16]


__all__ = ["PER_UNIT_FIELDS", "RESULT_SETTINGS", "RunDirectory", "file_digest", "unit_row"]
