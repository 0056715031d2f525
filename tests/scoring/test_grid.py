"""The scoring grid of a volume: nested tiles and the tiles that cover each scoring block."""
from __future__ import annotations

import numpy as np

from segrank.inference.blocks import Blocking
from segrank.scoring.grid import block_name, block_regions, nested_tile, tiles_in

SHAPE, BLOCK = (14, 36, 44), (8, 20, 24)  # 2 x 2 x 2 scoring blocks, cut at the far borders


def test_nested_tiles_and_tiles_in_block():
    class M:  # the few Model fields nested_tile reads
        ndim = 3

        class tiling:
            minimum = (1, 1, 1)
            multiple_of = (1, 4, 4)

    block = (64, 256, 256)
    assert nested_tile(M, Blocking((100, 300, 300), (40, 96, 96), (4, 16, 16)), block, slice_wise=False) is None  # nested
    base = Blocking((100, 300, 300), (40, 100, 100), (4, 16, 16))  # inner 68 straddles 256
    tile = nested_tile(M, base, block, slice_wise=False)
    inner = [t - 2 * h for t, h in zip(tile, base.halo)]
    assert all(b % i == 0 for b, i in zip(block, inner)) and all(t % 4 == 0 for t in tile[1:])
    assert tile == (40, 96, 96)
    M.tiling.multiple_of = (1, 5, 5)  # no tile near 100 whose inner divides 256 is a multiple of 5
    assert nested_tile(M, base, block, slice_wise=False) is None
    # a 2D model slice-wise: slices per run become a divisor of the block depth
    class M2:
        ndim = 2

        class tiling:
            minimum = (1, 1)
            multiple_of = (4, 4)

    sw = nested_tile(M2, Blocking((100, 300, 300), (12, 100, 96), (0, 16, 16)), (16, 256, 256), slice_wise=True)
    assert sw == (8, 96, 96)
    # a graph with a fixed batch keeps it: the tiles may then cross block borders along z
    assert nested_tile(M2, Blocking((100, 300, 300), (12, 96, 96), (0, 16, 16)), (16, 256, 256), slice_wise=True,
                       fixed_batch=True) is None
    blocking = Blocking(SHAPE, (10, 14, 14), (1, 2, 2))
    for region in block_regions(SHAPE, BLOCK):
        covered = np.zeros(SHAPE, int)
        for t in tiles_in(blocking, region):
            covered[t.inner] += 1
        assert (covered[region] == 1).all()


def test_block_regions_cover_the_volume_once_and_name_themselves():
    regions = block_regions(SHAPE, BLOCK)
    covered = np.zeros(SHAPE, int)
    for region in regions:
        covered[region] += 1
    assert (covered == 1).all() and len(regions) == 2 * 2 * 2
    assert block_name("vol", regions[-1]) == "vol[8:14,20:36,24:44]"
