"""Opening untrusted bioimage.io packages: zip entry types, the unpacked-size limit, linked descriptions."""
from __future__ import annotations

import io
import os
import shutil
import stat
import struct
import zipfile

import pytest
from packages import onnx_package, zip_folder, zip_folder_plain

from segrank.errors import ModelError
from segrank.models import load_model
from segrank.models.bioimageio import is_package
from segrank.models.check import check_test_tensors
from segrank.models.untrusted import MAX_PACKAGE_BYTES, max_package_bytes, safe_extract_zip

ENV = "SEGRANK_MAX_PACKAGE_BYTES"
REG = stat.S_IFREG | 0o644


def _zip_with(path, entries, *, level=None):
    """A zip of (name, data, mode) entries; mode None: the entry is written by name only."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for name, data, mode in entries:
            if mode is None:
                zf.writestr(name, data)
            else:
                info = zipfile.ZipInfo(name)
                info.external_attr = mode << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data, compresslevel=level)
    return path


def _nothing_left(parent, name):
    return not (parent / name).exists() and not list(parent.glob(f"{name}.partial*"))


# 1. entries without file-type mode bits are regular files; links and devices are still refused


def test_entries_without_file_type_bits_are_regular_files(tmp_path):
    archive = _zip_with(tmp_path / "plain.zip", [
        ("by-name.txt", b"written by name", None),          # writestr(name): mode 0o600, no type bits
        ("zero.txt", b"external_attr 0", 0),                # no mode at all (e.g. written on Windows)
        ("sub/", b"", None),                                # a folder entry
        ("sub/regular.txt", b"typed", stat.S_IFREG | 0o644),
    ])
    assert stat.S_IFMT(zipfile.ZipFile(archive).getinfo("by-name.txt").external_attr >> 16) == 0
    out = safe_extract_zip(archive, tmp_path / "out")
    assert (out / "by-name.txt").read_bytes() == b"written by name"
    assert (out / "zero.txt").read_bytes() == b"external_attr 0"
    assert (out / "sub" / "regular.txt").read_bytes() == b"typed"


def test_a_package_zipped_by_name_loads(tmp_path):
    folder = onnx_package(tmp_path / "pkg")
    model = load_model(zip_folder_plain(folder, tmp_path / "plain.zip"))
    assert model.name == "pkg-05" and check_test_tensors(model)[0].ok


@pytest.mark.parametrize(
    "mode, fragment",
    [
        (stat.S_IFLNK | 0o777, "is a symbolic link; links are refused"),
        (stat.S_IFCHR | 0o644, "is not a regular file"),
        (stat.S_IFBLK | 0o644, "is not a regular file"),
        (stat.S_IFIFO | 0o644, "is not a regular file"),
        (stat.S_IFSOCK | 0o644, "is not a regular file"),
    ],
)
def test_links_and_special_entries_are_still_refused(tmp_path, mode, fragment):
    archive = _zip_with(tmp_path / "special.zip", [("ok.txt", b"x", REG), ("rdf.yaml", b"/etc/passwd", mode)])
    with pytest.raises(ModelError) as err:
        safe_extract_zip(archive, tmp_path / "out")
    message = str(err.value)
    assert "special.zip" in message and "'rdf.yaml'" in message and fragment in message and "\n" not in message
    assert _nothing_left(tmp_path, "out")


# 2. the total unpacked size is bounded (declared and while extracting), configurable, cleaned up


def test_a_compressed_bomb_over_the_limit_is_refused_and_nothing_is_left(tmp_path, private_cache, monkeypatch):
    # the reported bomb in small: zeros at deflate level 1 compress ~230:1, under the per-entry ratio guard
    monkeypatch.setenv(ENV, str(1 << 20))
    bomb = _zip_with(tmp_path / "bomb.zip", [("rdf.yaml", b"type: model\n", REG), ("zeros.bin", bytes(4 << 20), REG)], level=1)
    info = zipfile.ZipFile(bomb).getinfo("zeros.bin")
    assert 100 < info.file_size / info.compress_size < 1000
    with pytest.raises(ModelError) as err:
        load_model(bomb)
    message = str(err.value)
    assert "bomb.zip" in message and str(1 << 20) in message and ENV in message and "\n" not in message
    packages = private_cache / "packages"
    assert not packages.exists() or not any(packages.iterdir())


def test_a_package_over_the_limit_is_refused_until_the_limit_is_raised(tmp_path, private_cache, monkeypatch):
    folder = onnx_package(tmp_path / "pkg")
    archive = zip_folder(folder, tmp_path / "pkg.zip")
    unpacked = sum(i.file_size for i in zipfile.ZipFile(archive).infolist())
    monkeypatch.setenv(ENV, str(unpacked - 1))
    with pytest.raises(ModelError, match=rf"pkg\.zip: .*limit of {unpacked - 1} bytes.*{ENV}"):
        load_model(archive)
    packages = private_cache / "packages"
    assert not packages.exists() or not any(packages.iterdir())
    monkeypatch.setenv(ENV, str(unpacked))
    assert check_test_tensors(load_model(archive))[0].ok


def test_understated_sizes_in_the_headers_are_refused(tmp_path):
    """Sizes in the central directory understate what the entries inflate to: refused, cleaned up."""
    data = os.urandom(40_000)
    archive = _zip_with(tmp_path / "liar.zip", [("a.bin", data, REG), ("b.bin", data, REG)])
    raw = bytearray(archive.read_bytes())
    at = 0
    while (at := raw.find(b"PK\x01\x02", at)) >= 0:  # central directory headers: uncompressed size at +24
        struct.pack_into("<I", raw, at + 24, 1000)
        at += 4
    archive.write_bytes(bytes(raw))
    assert sum(i.file_size for i in zipfile.ZipFile(archive).infolist()) == 2000
    with pytest.raises(ModelError, match="liar.zip"):
        safe_extract_zip(archive, tmp_path / "out", max_bytes=50_000)
    assert _nothing_left(tmp_path, "out")


def test_sizes_are_enforced_while_decompressing(tmp_path, monkeypatch):
    """Were the decompressor to yield more than an entry declares, extraction stops there and cleans up."""
    archive = _zip_with(tmp_path / "grows.zip", [("a.bin", os.urandom(1000), REG), ("b.bin", os.urandom(1000), REG)])
    real_open = zipfile.ZipFile.open

    def generous_open(self, info, *args, **kwargs):
        if getattr(info, "filename", info) == "b.bin":
            return io.BytesIO(bytes(3 << 20))  # 3 MiB where 1000 bytes are declared
        return real_open(self, info, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", generous_open)
    with pytest.raises(ModelError, match=r"grows\.zip: zip entry 'b\.bin' inflates beyond its declared size"):
        safe_extract_zip(archive, tmp_path / "out", max_bytes=1 << 30)
    assert _nothing_left(tmp_path, "out")


def test_the_limit_setting(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert max_package_bytes() == MAX_PACKAGE_BYTES == 3 << 29  # 1.5 GiB: a 2 GB bomb is refused by default
    for text, value in (("123", 123), ("8G", 8 << 30), ("512M", 512 << 20), ("2GiB", 2 << 30), (" 64k ", 64 << 10)):
        monkeypatch.setenv(ENV, text)
        assert max_package_bytes() == value
    for bad in ("lots", "-1", "0", "1.5G"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ModelError, match=ENV):
            max_package_bytes()


# 3. a description file that is a symbolic link is refused


@pytest.mark.parametrize("name", ["rdf.yaml", "bioimageio.yaml"])
def test_a_linked_description_is_refused(tmp_path, name):
    folder = onnx_package(tmp_path / "pkg")
    outside = tmp_path / "elsewhere" / "description.yaml"
    outside.parent.mkdir()
    shutil.move(folder / "rdf.yaml", outside)
    os.symlink(outside, folder / name)
    assert is_package(folder)  # found, so that opening it refuses it with a reason
    for path in (folder, folder / name):
        with pytest.raises(ModelError) as err:
            load_model(path)
        message = str(err.value)
        assert message.startswith(str(folder / name)) and "symbolic link" in message and "\n" not in message


def test_a_dangling_linked_description_is_refused(tmp_path):
    folder = onnx_package(tmp_path / "pkg")
    (folder / "rdf.yaml").unlink()
    os.symlink("/nonexistent/rdf.yaml", folder / "rdf.yaml")
    with pytest.raises(ModelError, match=r"rdf\.yaml: description file is a symbolic link"):
        load_model(folder)
