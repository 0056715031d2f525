"""The run directory of a ranking: settings.json, result rows appended as they come (CSV), resume."""
from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

from ..errors import SegrankError
from ..io.files import atomic_write

PER_UNIT_FIELDS = ("model", "perturbation", "unit", "repeat", "score", "status")
# Settings whose change alters results: a run directory refuses to resume under other values.
# (Repeats are not among them: repeat r is drawn the same whatever K is, so a larger K extends.)
RESULT_SETTINGS = ("perturbations", "metric", "seed", "threshold", "units", "block", "tile", "halo")


class RowFile:
    """A CSV file of result rows, appended one finished task at a time (a kill tears at most the
    last line, which the next read cuts off so that its task is simply done again)."""

    def __init__(self, path: Path, fields: tuple[str, ...]):
        self.path, self.fields = Path(path), fields

    def read(self) -> list[dict]:
        """The rows written so far. A torn last line is cut off; a garbled row elsewhere (one that
        cannot come from a kill) is an error naming its line."""
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            with self.path.open("r+b") as f:
                f.truncate(raw.rfind(b"\n") + 1)
        with self.path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is not None and tuple(reader.fieldnames) != self.fields:
                raise SegrankError(f"{self.path}: header {','.join(reader.fieldnames)} is not segrank's "
                                   f"({','.join(self.fields)}); delete the file (its results are computed again)")
            rows = list(reader)
        for number, row in enumerate(rows, start=2):
            if None in row or any(row.get(k) is None for k in self.fields):
                raise SegrankError(f"{self.path} line {number}: garbled row (not {len(self.fields)} fields); delete "
                                   "that line (its unit is computed again) or choose another --out")
        return rows

    def append(self, rows: list[dict]) -> None:
        """Append the rows of one finished task in a single write."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.fields)
        if not self.path.exists() or self.path.stat().st_size == 0:
            writer.writeheader()
        writer.writerows(rows)
        with self.path.open("a", newline="") as f:
            f.write(buffer.getvalue())
            f.flush()


class RunDirectory:
    """DIR of a ranking: settings.json, per_image.csv (one row per unit and repeat, appended as
    results come), agreement.csv (consensus: one row per unit and pair of models) and the outputs."""

    def __init__(self, out: Path):
        from ..scoring.consensus import AGREEMENT_FIELDS

        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise SegrankError(f"{self.out}: exists and is not a folder; --out needs a folder (new or a run's)")
        self.out.mkdir(parents=True, exist_ok=True)
        self.per_unit = self.out / "per_image.csv"
        self._rows = RowFile(self.per_unit, PER_UNIT_FIELDS)
        self.agreement = RowFile(self.out / "agreement.csv", AGREEMENT_FIELDS)

    def check_settings(self, settings: dict) -> None:
        """Refuse to resume a ranking made with other result settings, then record `settings`.

        More repeats than before extend the ranking (the repeats done are kept); fewer are
        refused, since the folder's per-image scores would mix both.
        """
        path = self.out / "settings.json"
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise SegrankError(f"{path}: damaged ({err}); delete it to go on with these settings, or choose "
                                   "another --out") from None
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
        atomic_write(path, json.dumps(settings, indent=2))

    def done(self) -> dict[tuple[str, str, str, int], dict]:
        """Rows already written, keyed by (model, perturbation, unit, repeat)."""
        rows = {}
        for number, r in enumerate(self._rows.read(), start=2):
            try:
                rows[(r["model"], r["perturbation"], r["unit"], int(r["repeat"]))] = r
                float(r["score"] or 0)
            except ValueError:
                raise SegrankError(f"{self.per_unit} line {number}: garbled row (repeat {r['repeat']!r}, score "
                                   f"{r['score']!r}); delete that line (its unit is computed again)") from None
        return rows

    @contextlib.contextmanager
    def lock(self):
        """Hold the folder for this run: a second run into it at once stops with who holds it."""
        import fcntl
        import os
        import socket
        import time

        path = self.out / ".lock"
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise SegrankError(f"{self.out}: in use by another segrank run ({holder}); wait for it to finish or "
                               "choose another --out") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
            handle.flush()
            yield self
        finally:
            handle.close()  # releases the lock

    def append(self, rows: list[dict]) -> None:
        """Append the rows of one finished task in a single write (a kill tears at most it)."""
        self._rows.append(rows)


def record_result(task, result, *, run: "RunDirectory", done: dict, failures: list, predictions: dict) -> dict:
    """Take one finished task's outcome into the run: its rows appended to per_image.csv (and
    `done`; `run` None: no rows to keep), its prediction counts added, or its failure recorded (an
    exception that ended the task on a cluster becomes the task's failure). Returns the result as a
    dict; the caller handles the rest of it (stored arrays, agreement rows)."""
    import sys

    if isinstance(result, BaseException):  # the task ended its workers (killed, out of memory)
        first = str(result).splitlines()[0] if str(result) else ""
        result = {"failure": task.failure(f"{type(result).__name__}: {first}")}
    if "failure" in result:
        failures.append(result["failure"])
        print(f"segrank: {result['failure'].error}", file=sys.stderr)
        return result
    for k, n in result.get("predictions", {}).items():
        predictions[k] += n
    if "rows" in result and run is not None:
        run.append(result["rows"])
        for row in result["rows"]:
            done[(row["model"], row["perturbation"], row["unit"], int(row["repeat"]))] = row
    return result


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


__all__ = ["PER_UNIT_FIELDS", "RESULT_SETTINGS", "RowFile", "RunDirectory", "file_digest", "record_result", "unit_row"]
