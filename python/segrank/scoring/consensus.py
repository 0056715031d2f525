"""Agreement with the bank: each model scored by how well it agrees with the other candidates.

Per unit (an image, or a scoring block of a volume) the unperturbed predictions of every model
are compared pairwise (`unit_agreement`); the per-unit statistics are stored as rows (one per
pair) and merged over the blocks of a unit. From them, `pairwise_scores` gives each model's
weighted mean agreement with the others per unit, re-weighting the bank in rounds from the
models' own target scores; the job then aggregates per-unit scores like CTE's (median over
units, paired bootstrap). Diagnostics: the model x model agreement matrix, groups of models
that agree with each other, the share of the largest group (a bank without a competent majority
agrees with the wrong consensus), and each model's mask size relative to the bank.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIMILARITIES = ("dice", "ei", "map")
AGREEMENT_FIELDS = ("unit", "model", "other", "n_both", "n_union", "ei_sum", "map")


# Defaults chosen by the benchmark (benchmarks/README.md, "Consensus and few labels"): the
# declared variants with the best mean Spearman over the four task banks, run and replicate.
DEFAULT_ROUNDS = {"semantic": 5, "instance": 3}


def resolve_similarity(similarity: str, task: str) -> str:
    """``auto``: mAP between instance labels for instance banks, the EI form for semantic ones."""
    if similarity == "auto":
        return "map" if task == "instance" else "ei"
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; choose from auto, {', '.join(SIMILARITIES)}")
    return similarity


def unit_agreement_rows(unit: str, names: list[str], foreground: list[np.ndarray] | None = None, *,
                        labels: list[np.ndarray] | None = None, threshold: float = 0.5, sums=None) -> list[dict]:
    """The agreement rows of one unit: one per pair of models (and one per model with itself).

    Parameters
    ----------
    unit : str
    names : list of str
        The models whose predictions are given, in order.
    foreground : list of ndarray, optional
        Foreground probabilities of each model over the unit; gives the pixel counts and EI sums.
    labels : list of ndarray, optional
        Instance labels of each model over the unit; gives the pairwise DSB mAP.
    sums : metrics.PairwiseSums, optional
        Already counted (e.g. merged over slabs of a volume block) instead of `foreground`.

    Notes
    -----
    With A_i = p_i > threshold: ``n_both`` = |A_i and A_j|, ``n_union`` = |A_i or A_j|,
    ``ei_sum`` = sum over A_i and A_j of sqrt(p_i p_j), ``map`` the DSB mean average precision
    of the two label images (symmetric). The row of a model with itself holds |A_i|.
    """
    from ..evaluate.performance import average_precision
    from ..metrics import pairwise_agreement

    if sums is None and foreground is not None:
        sums = pairwise_agreement(np.stack([np.asarray(f, np.float32) for f in foreground]), threshold=threshold)
    rows = []
    for i, a in enumerate(names):
        for j in range(i, len(names)):
            row = {"unit": unit, "model": a, "other": names[j], "n_both": "", "n_union": "", "ei_sum": "", "map": ""}
            if sums is not None:
                both = int(sums.both[i, j])
                row.update(n_both=both, n_union=int(sums.both[i, i] + sums.both[j, j] - both) if i != j else both,
                           ei_sum=repr(float(sums.ei[i, j])))
            if labels is not None:
                row["map"] = repr(1.0 if i == j else average_precision(labels[i], labels[j]))
            rows.append(row)
    return rows


def similarity_matrices(rows: list[dict], names: list[str], units: list[str], similarity: str
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(similarity (U, n, n), mask size (U, n)) from agreement rows; NaN where a model has no
    prediction of a unit. Two empty masks agree (similarity 1)."""
    index = {n: k for k, n in enumerate(names)}
    where = {u: k for k, u in enumerate(units)}
    sim = np.full((len(units), len(names), len(names)), np.nan)
    size = np.full((len(units), len(names)), np.nan)
    for row in rows:
        u, i, j = where.get(row["unit"]), index.get(row["model"]), index.get(row["other"])
        if u is None or i is None or j is None:
            continue
        if i == j and row["n_both"] != "":
            size[u, i] = float(row["n_both"])
        value = _similarity(row, similarity)
        sim[u, i, j] = sim[u, j, i] = value
    return sim, size


def _similarity(row: dict, similarity: str) -> float:
    if similarity == "map":
        return float(row["map"]) if row["map"] != "" else np.nan
    if row["n_both"] == "":
        return np.nan
    both, union = float(row["n_both"]), float(row["n_union"])
    if union == 0:
        return 1.0  # neither model predicts foreground: they agree
    if similarity == "dice":
        return 2.0 * both / (union + both)
    return float(row["ei_sum"]) / union


@dataclass(frozen=True)
class ConsensusResult:
    """Per-unit consensus scores of each model and how they came about.

    Attributes
    ----------
    per_unit : ndarray (n, U)
        Weighted mean agreement of each model with the others per unit (NaN: no prediction).
    weights : ndarray (n,)
        The weights of the last round (uniform with no re-weighting).
    matrix : ndarray (n, n)
        Median over units of the pairwise similarity (the agreement heatmap).
    relative_mask_size : ndarray (n,)
        Median over units of |A_i| / median_j |A_j| (NaN for instance similarity without counts).
    """

    per_unit: np.ndarray
    weights: np.ndarray
    matrix: np.ndarray
    relative_mask_size: np.ndarray


def pairwise_scores(sim: np.ndarray, *, rounds: int = 0, size: np.ndarray | None = None) -> ConsensusResult:
    """Each model's weighted mean agreement with the other models, per unit.

    Parameters
    ----------
    sim : ndarray (U, n, n)
        Pairwise similarity per unit (`similarity_matrices`).
    rounds : int
        Re-weighting rounds: round 0 weighs every model alike; each further round gives model j
        the weight exp(z_j), z_j its round score (median over units) standardised across models.

    Notes
    -----
    a_i(u) = sum_{j != i} w_j S_u[i, j] / sum_{j != i} w_j over the models j that predicted u.
    The sum is linear in w, so re-weighting reuses the stored per-unit statistics: no second
    pass over pixels.
    """
    sim = np.asarray(sim, dtype=np.float64)
    n_units, n = sim.shape[0], sim.shape[1]
    off = sim.copy()
    idx = np.arange(n)
    off[:, idx, idx] = np.nan
    weights = np.ones(n)
    per_unit = np.full((n, n_units), np.nan)
    for r in range(int(rounds) + 1):
        per_unit = _weighted_agreement(off, weights)
        if r == rounds:
            break
        with np.errstate(all="ignore"):
            s = np.array([np.nanmedian(row) if np.isfinite(row).any() else np.nan for row in per_unit])
        ok = np.isfinite(s)
        sd = s[ok].std() if ok.sum() > 1 else 0.0
        z = np.where(ok, (s - s[ok].mean()) / sd if sd > 0 else 0.0, 0.0)
        weights = np.where(ok, np.exp(z), 0.0)
    with np.errstate(all="ignore"):
        matrix = np.array([[_nanmedian(sim[:, i, j]) for j in range(n)] for i in range(n)])
        rel = np.full(n, np.nan)
        if size is not None and np.isfinite(size).any():
            bank = np.array([_nanmedian(row) for row in size])  # per unit: the bank's median mask
            ratio = size / np.where(bank > 0, bank, np.nan)[:, None]
            rel = np.array([_nanmedian(ratio[:, i]) for i in range(n)])
    return ConsensusResult(per_unit, weights, matrix, rel)


def _weighted_agreement(off: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n, U): sum_j w_j S[u, i, j] / sum_j w_j over finite S (the diagonal is NaN in `off`)."""
    finite = np.isfinite(off)
    num = np.einsum("uij,j->iu", np.where(finite, off, 0.0), weights)
    den = np.einsum("uij,j->iu", finite.astype(np.float64), weights)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    out[~finite.any(axis=2).T] = np.nan  # a model without a prediction of a unit has no score there
    return out


def _nanmedian(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def agreement_groups(matrix: np.ndarray) -> np.ndarray:
    """Group labels (1, 2, ...) of models that agree with each other: average-linkage clusters of
    the distance 1 - agreement, cut at the bank's median pairwise distance (models that agree
    more than the bank's typical pair, on average, share a group)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    m = np.asarray(matrix, dtype=np.float64)
    n = m.shape[0]
    if n < 2:
        return np.ones(n, dtype=int)
    sym = np.where(np.isfinite(m), m, 0.0)
    sym = (sym + sym.T) / 2
    np.fill_diagonal(sym, 1.0)
    off = sym[~np.eye(n, dtype=bool)]
    cut = 1.0 - float(np.median(off))
    dist = squareform(np.clip(1.0 - sym, 0.0, None), checks=False)
    return fcluster(linkage(dist, method="average"), t=max(cut, 1e-9), criterion="distance")


def majority_share(groups: np.ndarray) -> float:
    """The share of the bank in its largest agreement group: below 1/2 the bank has no agreeing
    majority, and a consensus ranking cannot be trusted."""
    groups = np.asarray(groups)
    if groups.size == 0:
        return 0.0
    return float(np.bincount(groups).max() / groups.size)


def resolve_rounds(rounds: int | None, task: str) -> int:
    """Re-weighting rounds: as given, else `DEFAULT_ROUNDS` for the task."""
    return DEFAULT_ROUNDS[task] if rounds is None else int(rounds)


__all__ = [
    "AGREEMENT_FIELDS", "DEFAULT_ROUNDS", "resolve_rounds", "ConsensusResult", "SIMILARITIES", "agreement_groups", "majority_share", "pairwise_scores",
    "resolve_similarity", "similarity_matrices", "unit_agreement_rows",
]
