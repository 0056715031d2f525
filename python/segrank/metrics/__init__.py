"""Consistency metrics over the C++ core (segrank._metrics).

- `binary_consistency` -> `BinaryCounts`: NHD, 1 - NHD and EI of two probability maps or masks.
- `contingency_table` -> `ContingencyTable`: exact pair counts between two label images.
- `adapted_rand`, `variation_of_information`, `iou_matrix`: scores from a table.

Every result merges exactly (``a + b``), so large volumes are scored block by block.
"""
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
    "simd_level",
    "set_simd_level",
]
