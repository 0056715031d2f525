"""A model bank: a folder of candidates or a text file listing them.

`load_bank` loads what it can and reports the rest by name, so that a ranking can go on with
the good models and record the failures:

- a model that cannot be loaded (unreadable, unsupported, refused);
- a name used twice (the first in listing order is kept);
- a model whose output space (output_space, task, number of spatial dims) differs from the
  rest (the most common one; ties go to the first model listed).

A folder's entries are its ``*.onnx`` files (with their sidecars), ``*.zip`` packages,
sub-folders holding an rdf.yaml / bioimageio.yaml, and stand-alone bioimage.io description
files; hidden files and other files are ignored. A list file names one model path per line
(relative to the list file), ``#`` starts a comment.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import NamedTuple

from ..errors import ModelError, SegrankError
from .bioimageio import find_description, is_package
from .description import Model
from .load import load_model


class BankProblem(NamedTuple):
    """One model the bank could not use: its name (or file) and a one-line reason."""

    name: str
    message: str


class Bank(NamedTuple):
    """The usable models, and the problems found (unpack as ``models, problems = load_bank(...)``)."""

    models: list[Model]
    problems: list[BankProblem]


class BankError(ModelError):
    """Raised by ``load_bank(..., strict=True)``: lists every problem; `.bank` has the rest."""

    def __init__(self, message: str, bank: Bank):
        super().__init__(message)
        self.bank = bank


def bank_entries(path: Path) -> list[Path]:
    """The model paths a bank folder or list file names, in a stable order."""
    path = Path(path)
    if path.is_dir():
        if find_description(path) is not None:
            raise ModelError(f"{path}: is one bioimage.io package, not a bank folder of models")
        entries = []
        for child in sorted(path.iterdir(), key=lambda p: p.name):
            if child.name.startswith("."):
                continue
            suffix = child.suffix.lower()
            if child.is_dir():
                if find_description(child) is not None:
                    entries.append(child)
            elif suffix in (".onnx", ".zip"):
                entries.append(child)
            elif suffix in (".yaml", ".yml") and not child.with_suffix(".onnx").exists() and is_package(child):
                entries.append(child)
        return entries
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ModelError(f"{path}: not a readable bank list file ({err})") from None
        entries = []
        for line in lines:
            text = line.split("#", 1)[0].strip()
            if text:
                entry = Path(text).expanduser()
                entries.append(entry if entry.is_absolute() else path.parent / entry)
        return entries
    raise ModelError(f"{path}: no such bank folder or list file")


def _space(model: Model) -> tuple[str, str, int]:
    return (model.output_space, model.task, model.ndim)


def _describe(space: tuple[str, str, int]) -> str:
    return f"{space[0]}, {space[1]}, {space[2]}D"


def declared_output_space(path: Path) -> str | None:
    """The output space a bank folder declares for all of its models (``output_space:`` in its
    bank.yaml), if any."""
    import yaml

    file = Path(path) / "bank.yaml"
    if not Path(path).is_dir() or not file.is_file():
        return None
    try:
        doc = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ModelError(f"{file}: not a readable bank description ({err})") from None
    space = doc.get("output_space") if isinstance(doc, dict) else None
    if space is not None and not isinstance(space, str):
        raise ModelError(f"{file}: output_space must be a name, got {space!r}")
    return space


def load_bank(path, *, trust_code: bool = False, strict: bool = False, output_space: str | None = None) -> Bank:
    """Load every model of a bank; problems are reported by name, never silently dropped.

    Parameters
    ----------
    path : path
        A folder of models or a text file listing them (see the module docstring).
    trust_code : bool
        Passed to `load_model` for every entry.
    strict : bool
        Raise `BankError` (one line listing every problem) instead of returning problems.
    output_space : str, optional
        Declare that every model predicts this output space (e.g. when a bioimage.io package,
        whose space segrank can only assume, and sidecar models name the same thing
        differently); default: a bank folder's bank.yaml ``output_space``, else each model's own.

    Returns
    -------
    Bank
        ``(models, problems)``: the usable models in listing order and a `BankProblem` per
        model left out.
    """
    entries = bank_entries(Path(path))
    output_space = output_space or declared_output_space(Path(path))
    loaded: list[Model] = []
    problems: list[BankProblem] = []
    by_name: dict[str, Model] = {}
    for entry in entries:
        try:
            model = load_model(entry, trust_code=trust_code)
        except SegrankError as err:
            problems.append(BankProblem(entry.stem if entry.suffix else entry.name, str(err)))
            continue
        except Exception as err:  # an unexpected failure of one model must not stop the bank
            problems.append(BankProblem(entry.name, f"{entry}: cannot be loaded ({type(err).__name__}: {err})"))
            continue
        if model.name in by_name:
            first = by_name[model.name]
            problems.append(BankProblem(model.name, f"{entry}: name {model.name!r} is already used by {first.path}; left out"))
            continue
        if output_space is not None:
            model = model.with_(output_space=output_space)
        by_name[model.name] = model
        loaded.append(model)
    if loaded:
        counts = Counter(_space(m) for m in loaded)
        top = max(counts.values())
        majority = next(_space(m) for m in loaded if counts[_space(m)] == top)
        kept = []
        for model in loaded:
            if _space(model) == majority:
                kept.append(model)
            else:
                assumed = " (assumed: the model does not declare it)" if any(
                    "output space" in a for a in model.assumptions) else ""
                problems.append(
                    BankProblem(
                        model.name,
                        f"{model.path}: output space ({_describe(_space(model))}){assumed} differs from the rest "
                        f"({_describe(majority)}); left out; if they are the same, declare it: --output-space "
                        f"{majority[0]} (or output_space: {majority[0]} in the bank folder's bank.yaml)",
                    )
                )
        loaded = kept
    bank = Bank(loaded, problems)
    if strict and problems:
        listed = "; ".join(f"{p.name}: {p.message}" for p in problems)
        raise BankError(f"{path}: {len(problems)} problem(s) in the bank: {listed}", bank)
    return bank
