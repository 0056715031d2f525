"""Consistency metrics over the C++ core (segrank._metrics).

- `binary_consistency` -> `BinaryCounts`: NHD, 1 - NHD and EI of two probability maps or masks.
- `contingency_table` -> `ContingencyTable`: exact pair counts between two label images.
- `adapted_rand`, `variation_of_information`, `iou_matrix`: scores from a table.
- `pairwise_agreement` -> `PairwiseSums`, `consensus_agreement` -> `ConsensusSums`: agreement
  across a bank of models (every pair, and each model against the others' weighted mean).

Every result merges (``a + b``), so large volumes are scored block by block: exactly, except the
agreement sums' EI terms (float64 sums, equal to rounding).
"""
from .agreement import ConsensusSums, PairwiseSums, consensus_agreement, pairwise_agreement
from .binary import BinaryCounts, binary_consistency
from .contingency import ContingencyTable, contingency_table
from .rand import RAND_CONVENTIONS, RandScores, VIScores, adapted_rand, iou_matrix, variation_of_information
from .simd import set_simd_level, simd_level

__all__ = [
    "BinaryCounts",
    "binary_consistency",
    "ContingencyTable",
    "contingency_table",
    "RandScores",
    "VIScores",
    "RAND_CONVENTIONS",
    "adapted_rand",
    "variation_of_information",
    "iou_matrix",
    "PairwiseSums",
    "pairwise_agreement",
    "ConsensusSums",
    "consensus_agreement",
    "simd_level",
    "set_simd_level",
]
