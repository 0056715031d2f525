"""Targets open lazily from every supported format, with axes from metadata or the caller."""
from __future__ import annotations

import pickle

import dask.array as da
import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr

from segrank.errors import InputError
from segrank.io.targets import open_target


def _data(shape, dtype=np.uint8, seed=0):
    return np.random.default_rng(seed).integers(0, 200, size=shape).astype(dtype)


def test_folder_of_tif_and_png(tmp_path):
    a, b, rgb = _data((12, 15)), _data((9, 8), np.uint16, 1), _data((10, 11, 3), seed=2)
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tiff", b)
    iio.imwrite(tmp_path / "c.png", rgb)
    (tmp_path / "notes.txt").write_text("ignored")
    target = open_target(tmp_path)
    assert [im.name for im in target.images] == ["a", "b", "c"]
    assert all(isinstance(im.data, da.Array) for im in target.images)
    assert [im.axes for im in target.images] == ["yx", "yx", "cyx"]
    np.testing.assert_array_equal(target.images[0].data.compute(), a)
    np.testing.assert_array_equal(target.images[1].data.compute(), b)
    np.testing.assert_array_equal(target.images[2].data.compute(), np.moveaxis(rgb, -1, 0))


def test_tif_stack_is_read_page_by_page(tmp_path):
    stack = _data((6, 20, 18))
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    im = open_target(tmp_path / "stack.tif").images[0]
    assert im.axes == "zyx" and im.data.chunks[0] == (1,) * 6
    np.testing.assert_array_equal(im.data[2:4].compute(), stack[2:4])
    # given axes win over metadata; a wrong count is one clear line naming the file
    assert open_target(tmp_path / "stack.tif", axes="cyx").images[0].axes == "cyx"
    with pytest.raises(InputError, match=r"stack\.tif.*2 letters.*3 dimensions"):
        open_target(tmp_path / "stack.tif", axes="yx")


def test_zarr_v2_and_v3_arrays(tmp_path):
    vol = _data((4, 10, 12))
    v2 = zarr.create_array(str(tmp_path / "v2.zarr"), shape=vol.shape, chunks=(2, 5, 6), dtype="uint8", zarr_format=2)
    v2[...] = vol
    v2.attrs["_ARRAY_DIMENSIONS"] = ["y", "x", "z"]  # deliberately unusual order
    v3 = zarr.create_array(str(tmp_path / "v3.zarr"), shape=vol.shape, chunks=(2, 5, 6), dtype="uint8", dimension_names=["c", "y", "x"])
    v3[...] = vol
    im2 = open_target(tmp_path / "v2.zarr").images[0]
    assert im2.axes == "zyx" and im2.data.shape == (12, 4, 10)
    np.testing.assert_array_equal(im2.data.compute(), np.transpose(vol, (2, 0, 1)))
    im3 = open_target(tmp_path / "v3.zarr").images[0]
    assert im3.axes == "cyx" and im3.name == "v3"
    np.testing.assert_array_equal(im3.data.compute(), vol)
    plain = zarr.create_array(str(tmp_path / "plain.zarr"), shape=vol.shape, chunks=(2, 5, 6), dtype="uint8")
    plain[...] = vol
    assert open_target(tmp_path / "plain.zarr").images[0].axes == "zyx"  # 3D without metadata


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_full_resolution_level(tmp_path, version):
    full = _data((1, 1, 4, 16, 16))
    fmt = 2 if version == "0.4" else 3
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=fmt)
    multiscales = [{
        "version": version,
        "axes": [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
        + [{"name": a, "type": "space"} for a in "zyx"],
        "datasets": [{"path": "s0"}, {"path": "s1"}],
    }]
    if version == "0.4":
        group.attrs["multiscales"] = multiscales
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    group.create_array("s0", shape=full.shape, chunks=(1, 1, 2, 8, 8), dtype="uint8")[...] = full
    group.create_array("s1", shape=(1, 1, 4, 8, 8), chunks=(1, 1, 2, 8, 8), dtype="uint8")[...] = full[..., ::2, ::2]
    im = open_target(tmp_path / "img.ome.zarr").images[0]
    assert im.axes == "czyx" and im.data.shape == (1, 4, 16, 16) and im.name == "img"
    np.testing.assert_array_equal(im.data.compute(), full[0])


def test_zarr_group_needs_a_key(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", shape=(8, 8), dtype="uint8")[...] = 3
    group.create_array("labels", shape=(8, 8), dtype="uint8")
    with pytest.raises(InputError, match="--key"):
        open_target(tmp_path / "g.zarr")
    im = open_target(tmp_path / "g.zarr", key="raw").images[0]
    assert im.name == "raw" and int(im.data.sum().compute()) == 3 * 64


def test_hdf5_with_key_is_lazy_and_picklable(tmp_path):
    vol = _data((5, 12, 10))
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("volumes/raw", data=vol, chunks=(1, 12, 10))
        f.create_dataset("volumes/labels", data=vol)
    with pytest.raises(InputError, match="choose one with --key"):
        open_target(tmp_path / "v.h5")
    with pytest.raises(InputError, match="no dataset 'raw'"):
        open_target(tmp_path / "v.h5", key="raw")
    im = open_target(tmp_path / "v.h5", key="volumes/raw").images[0]
    assert im.axes == "zyx" and im.data.chunks[0] == (1,) * 5
    clone = pickle.loads(pickle.dumps(im.data))  # travels to a dask.distributed worker
    np.testing.assert_array_equal(clone[1:3].compute(), vol[1:3])


def test_n5_via_tensorstore(tmp_path):
    ts = pytest.importorskip("tensorstore", reason="N5 support is the optional extra segrank[n5]")
    vol = _data((3, 10, 14), np.uint16)
    spec = {
        "driver": "n5",
        "kvstore": {"driver": "file", "path": str(tmp_path / "c.n5" / "raw")},
        # N5 lists dimensions fastest first: x, y, z
        "metadata": {"dimensions": [14, 10, 3], "blockSize": [8, 8, 2], "dataType": "uint16", "compression": {"type": "gzip"}},
    }
    store = ts.open(spec, create=True).result()
    store[...] = vol.T
    (tmp_path / "c.n5" / "attributes.json").write_text('{"n5": "2.0.0"}')
    im = open_target(tmp_path / "c.n5").images[0]
    assert im.axes == "zyx" and im.data.shape == (3, 10, 14)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(im.data)).compute(), vol)


def test_bad_inputs_are_one_line(tmp_path):
    with pytest.raises(InputError, match="not found"):
        open_target(tmp_path / "missing.tif")
    (tmp_path / "x.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="unsupported file type"):
        open_target(tmp_path / "x.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no tif/png image"):
        open_target(tmp_path / "empty")
    (tmp_path / "broken.tif").write_bytes(b"nope")
    with pytest.raises(InputError, match="broken.tif"):
        open_target(tmp_path / "broken.tif")
    tifffile.imwrite(tmp_path / "t.tif", _data((2, 6, 6)), photometric="minisblack")
    with pytest.raises(InputError, match="time axis"):
        open_target(tmp_path / "t.tif", axes="tyx")
    with pytest.raises(InputError, match="unknown axis"):
        open_target(tmp_path / "t.tif", axes="qwe")


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_direct_regions_equal_the_dask_array(tmp_path, fmt):
    # stored as (t, x, c, y): the time axis is dropped and the rest transposed to c, y, x
    raw = _data((1, 23, 2, 17), seed=4)
    if fmt == "zarr":
        arr = zarr.create_array(str(tmp_path / "v.zarr"), shape=raw.shape, chunks=(1, 8, 1, 8), dtype=raw.dtype)
        arr[...] = raw
        im = open_target(tmp_path / "v.zarr", axes="txcy").images[0]
    else:
        with h5py.File(tmp_path / "v.h5", "w") as f:
            f.create_dataset("raw", data=raw, chunks=(1, 8, 1, 8))
        im = open_target(tmp_path / "v.h5", axes="txcy").images[0]
    assert im.axes == "cyx" and im.direct is not None
    direct = pickle.loads(pickle.dumps(im.direct))  # travels to dask.distributed workers
    gen = np.random.default_rng(0)
    for _ in range(20):
        region = (slice(None),) + tuple(slice(int(a), int(a) + int(gen.integers(1, s - a + 1)))
                                        for s in im.data.shape[1:] for a in [gen.integers(0, s)])
        expected = im.data[region].compute()
        got = direct[region]
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(direct[(slice(None),) * 3], np.transpose(raw[0], (1, 2, 0)))
